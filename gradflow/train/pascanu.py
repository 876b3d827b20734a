"""Pascanu et al.'s soft constraint Ω on the back-propagated error, and recurrent-model helpers.

:func:`pascanu_regularizer` is Ω for any recurrent :class:`~gradflow.chain.Chain`;
:func:`with_pascanu_regularizer` adds α Ω to a gradflow recurrent model's task loss;
:func:`final_state_loss` is that loss as a function of the chain's final state (what Ω and
:func:`recurrent_state_grad_fn` differentiate), through the model's public ``readout``.

References:
  Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent neural networks",
  arXiv:1211.5063, §3.3.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gradflow import gradients as _gradients
from gradflow.chain import Chain
from gradflow.train._loop import LossFn

__all__ = [
    "pascanu_regularizer",
    "with_pascanu_regularizer",
    "final_state_loss",
    "recurrent_state_grad_fn",
]


def _rows_norm(tree):
    """Euclidean norm of each example's state: leaves ``(…, n)`` -> ``(…)`` (summed over leaves).

    The gradient at a zero vector is 0, not NaN (√ has an infinite slope at 0): Ω's ratio is a
    norm of a vector that is exactly 0 once every unit saturates, and even α = 0 times a NaN
    gradient would be reported as a divergence.
    """
    sq = sum(jnp.sum(jnp.square(x), axis=-1) for x in jax.tree_util.tree_leaves(tree))
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _rows_normalize(tree):
    norm = _rows_norm(tree)
    safe = jnp.where(norm > 0, norm, 1.0)
    return jax.tree_util.tree_map(lambda x: x / jnp.expand_dims(safe, -1).astype(x.dtype), tree)


def pascanu_regularizer(chain: Chain, final_loss: Callable[[Any], jax.Array]) -> jax.Array:
    """Pascanu's soft constraint Ω on the norm of the back-propagated error, averaged over steps.

    Pascanu, Mikolov & Bengio 2013 (arXiv:1211.5063), §3.3, eq. 9:

        Ω = Σ_k ( ‖(∂E/∂x_{k+1}) ∂x_{k+1}/∂x_k‖ / ‖∂E/∂x_{k+1}‖ − 1 )²

    — the ratio is 1 when a step neither shrinks nor grows the error signal flowing back through
    it. As in the paper, ∂E/∂x_{k+1} is held constant (``stop_gradient``), and so are the states
    x_k: Ω's gradient flows only through the step map's parameters (W, and for LSTM/GRU the
    gates' input drive). Only the *direction* of ∂E/∂x_{k+1} enters Ω, so it is obtained by a
    backward recursion that renormalises at every step — it never underflows, even when the raw
    error signal has vanished below float32's range (the regime Ω is for).

    We return the *mean* over the K steps (and over the examples of a batched state) instead of the
    sum, so one weight α suits every sequence length (α_sum = α_mean / K).

    Args:
      chain: the recurrent chain (e.g. ``model.chain(params, u)``), states ``(n,)`` or ``(B, n)``
        (or pytrees of those, e.g. an LSTM's (c, h)).
      final_loss: E as a function of the final state h_K (a scalar).

    Returns:
      Scalar Ω / (K · B).
    """
    # Only the type: Ω is evaluated inside a traced loss, where the values are not known.
    if not isinstance(chain, Chain):
        raise TypeError(f"chain must be a gradflow.chain.Chain, got {type(chain).__name__}")
    if not chain.shared:
        raise ValueError("pascanu_regularizer needs a recurrent chain (shared parameters)")
    per_step = chain.per_step()
    const = jax.lax.stop_gradient

    def body(h, s):
        h_next = chain.step_at(h, s)
        return h_next, h

    h_last, states = jax.lax.scan(
        body, chain.h0, per_step, length=chain.length
    )  # states: h_0..h_{K-1}
    states, h_last = const(states), const(h_last)
    frozen = const(chain)

    # Unit error directions d_k ∝ ∂E/∂x_k, k = K … 1, by d_k = normalize(d_{k+1} J_k).
    d_last = _rows_normalize(jax.grad(lambda h: final_loss(h))(h_last))

    def back(d_next, hs):
        h, s = hs
        _, vjp = jax.vjp(lambda h_: frozen.step_at(h_, s), h)
        return _rows_normalize(vjp(d_next)[0]), d_next

    _, ds = jax.lax.scan(back, const(d_last), (states, const(per_step)), reverse=True)
    ds = const(ds)  # ds[k] is the unit direction of ∂E/∂x_{k+1}

    def ratio(h, s, d):
        _, vjp = jax.vjp(lambda h_: chain.step_at(h_, s), h)
        return _rows_norm(vjp(d)[0])

    r = jax.vmap(ratio)(states, per_step, ds)  # (K, …)
    return jnp.mean(jnp.square(r - 1.0))


def with_pascanu_regularizer(model, output_loss, alpha) -> LossFn:
    """``loss_fn(params, (u, y)) = E + α Ω`` for a gradflow recurrent model.

    Args:
      model: a ``gradflow.models`` RNN, LSTM or GRU.
      output_loss: ``output_loss(outputs, y) -> scalar``, outputs of shape ``(B, out_features)``.
      alpha: weight α of :func:`pascanu_regularizer` (may be traced; 0 switches it off).

    Returns:
      ``loss_fn(params, batch)`` with ``batch = (u (B, T, d), y)``.
    """
    final_loss = final_state_loss(model, output_loss)

    def loss_fn(params, batch):
        u, y = batch
        task = output_loss(model.apply(params, u), y)
        omega = pascanu_regularizer(model.chain(params, u), lambda h: final_loss(params, h, y))
        return task + alpha * omega

    return loss_fn


def final_state_loss(model, output_loss):
    """The task loss E as a function of a recurrent model's final chain state.

    E(h_T) = ``output_loss(model.readout(params, h_T), y)``: the model's public readout takes the
    chain's final state as it is (for an LSTM the ``(c, h)`` pair, read out from h), so this is
    the ``final_loss`` that :func:`pascanu_regularizer` and
    :func:`gradflow.gradients.state_grad_norms` differentiate.

    Args:
      model: a ``gradflow.models`` RNN, LSTM or GRU.
      output_loss: ``output_loss(outputs (B, out_features), y) -> scalar``.

    Returns:
      ``final_loss(params, h_T, y) -> scalar``, with h_T of shape ``(B, n)`` (a ``(c, h)`` pair
      for an LSTM).
    """

    def final_loss(params, h, y):
        return output_loss(model.readout(params, h), y)

    return final_loss


def recurrent_state_grad_fn(model, output_loss) -> Callable[[Any, Any], jax.Array]:
    """A ``state_grad_fn`` for :func:`fit`: ‖∂E/∂h_t‖ for t = 0 … T of a recurrent model.

    Args:
      model: a ``gradflow.models`` RNN, LSTM or GRU.
      output_loss: ``output_loss(outputs (B, out), y) -> scalar`` (the task loss, no regulariser).

    Returns:
      ``fn(params, (u, y)) -> (T + 1,)``: the norm over the whole batch of ∂E/∂h_t (for an LSTM the
      state is the (c, h) pair).
    """
    final_loss = final_state_loss(model, output_loss)

    def fn(params, batch):
        u, y = batch
        chain = model.chain(params, u)
        return _gradients.state_grad_norms(chain, lambda h: final_loss(params, h, y))

    return fn
