"""Gradient flossing (Engelken 2023): push the top Lyapunov exponents of an RNN towards a target.

The k largest Lyapunov exponents λ_1 ≥ … ≥ λ_k of a recurrent network's forward dynamics (driven
by its inputs) are the mean log growth rates of the leading singular directions of the long-term
Jacobian ∂h_T/∂h_0; back-propagated errors grow or shrink like exp(λ_i T). Gradient flossing adds

    F = Σ_{i ≤ k} (λ_i − λ_target)²,        λ_target = 0 by default,

to the objective and differentiates it *through* Benettin's QR recursion (J_t Q_t = Q_{t+1} R_{t+1},
λ_i = (1/T) Σ_t log |(R_t)_ii|), so gradient descent on F moves the weights until the top k
directions neither grow nor shrink: the long-term Jacobian is then well conditioned in k
directions and errors reach far back in time.

Differentiability: :func:`gradflow.lyapunov.lyapunov_spectrum` is the differentiable spectrum
(tests/test_flossing.py checks its gradient against central finite differences and against the
closed form ∂λ_i/∂a_i = 1/a_i of a diagonal linear map). Its pieces differentiate correctly:

- JAX's QR rule (reduced QR of the tall n × k matrix J_t Q_t) differentiates the factorisation
  XLA computes; the sign flip that makes diag(R) ≥ 0 is locally constant (zero derivative) and
  log |R_ii| does not depend on it, so λ and its gradient are those of the unique positive QR;
- the Kahan compensation is, in exact arithmetic, a sum, and its derivative is the compensated
  sum of the derivatives; the reset to 0 at a non-finite sum only matters for a singular step
  (log 0 = −inf), where the gradient is not defined anyway;
- nothing is held constant: the gradient flows through the trajectory h_t (the Jacobians depend
  on the states), through the frame Q_t, and through the discarded burn-in steps, as in
  Engelken's Zygote implementation. The frame's adjoint is stable (the frame contracts onto the
  Oseledets subspace at rate λ_k − λ_{k+1}); the trajectory's adjoint grows like exp(λ_1 t) when
  λ_1 > 0 — chaotic dynamics give large flossing gradients, which flossing itself removes.

Memory: reverse mode stores each step's residuals (state, frame, QR factors): O(T n k) per
sequence, where the forward spectrum alone needs O(n k). The cost per step is k Jacobian-vector
products and one n × k QR per sequence, so the regulariser is measured on a few sequences of
each batch (``examples``; Engelken uses one).

Two ways to apply it, as in the paper: before training, minimise F alone for a number of steps
(:func:`make_preflossing`, or :func:`gradflow.train.fit` with :func:`flossing_loss_fn`); during
training, add w·F to the task loss (:func:`with_flossing_regularizer`, which plugs into
:func:`~gradflow.train.fit` / :func:`~gradflow.train.make_fit` as
:func:`~gradflow.train.with_pascanu_regularizer` does). F depends only on the parameters of the
dynamics (input weights, bias, recurrent weights), so the readout gets an exactly zero flossing
gradient and plain SGD or Adam leave it unchanged while pre-flossing — the set Engelken flosses
(``psFlossing = (ws, J, b)`` in his code). Engelken's during-training variant is periodic
flossing episodes; alternating :func:`make_preflossing` and :func:`~gradflow.train.make_fit`
runs does that.

References:
  Engelken 2023, "Gradient flossing: improving gradient descent through dynamic control of
  Jacobians", NeurIPS 2023, arXiv:2312.17306 (code: github.com/RainerEngelken/GradientFlossing,
  whose loss is the *mean* over the k exponents, i.e. F / k).
  Benettin et al. 1980 (Meccanica 15:9–30) for the QR recursion.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from gradflow import _checks
from gradflow.chain import Chain, Segmented
from gradflow.lyapunov import lyapunov_spectrum
from gradflow.train._loop import LossFn

__all__ = [
    "PreFlossing",
    "recurrent_exponents",
    "flossing_regularizer",
    "flossing_loss_fn",
    "with_flossing_regularizer",
    "make_preflossing",
]


class PreFlossing(NamedTuple):
    """The result of a pre-flossing phase (:func:`make_preflossing`).

    Attributes:
      params: the flossed parameters (those before the first divergent step, if any).
      loss: ``(S,)`` the regulariser F at every step (NaN after a divergence).
      exponents_before: ``(E, k)`` the top-k exponents of the first batch's first E sequences
        (E = ``examples``), descending, at the initial parameters.
      exponents_after: ``(E, k)`` the same, at the flossed parameters.
      diverged: bool, whether a step's F, gradient or update was non-finite.
      divergence_step: int, the first such step (its update was not applied), −1 if none.
    """

    params: Any
    loss: jax.Array
    exponents_before: jax.Array
    exponents_after: jax.Array
    diverged: jax.Array
    divergence_step: jax.Array


def _check_k(k) -> int:
    return _checks.positive_int("k", k)


def _check_discard(discard) -> int:
    # The upper bound (discard < T) is checked where T is known: in lyapunov_spectrum.
    return _checks.nonnegative_int("discard", discard)


def _check_examples(examples) -> int | None:
    return None if examples is None else _checks.positive_int("examples", examples)


def _check_model(model) -> None:
    if not callable(getattr(model, "chain", None)):
        raise TypeError(
            "model must be a gradflow recurrent model (RNN, LSTM, GRU: anything with "
            f".chain(params, u)), got {type(model).__name__}"
        )


def _penalty(exponents, target):
    """Σ_i (λ_i − target)² over the last axis ``(…, k) -> (…)``."""
    return jnp.sum(jnp.square(exponents - target), axis=-1)


def recurrent_exponents(model, params, u, k: int, *, key=None, discard: int = 0) -> jax.Array:
    """The top-k Lyapunov exponents of a recurrent model driven by each input sequence.

    Each sequence is its own trajectory from h_0 (``model.chain(params, u_b)``, one
    :func:`gradflow.lyapunov.lyapunov_spectrum` per sequence, ``vmap``-ed). The batched chain
    ``model.chain(params, u)`` would not do: its flattened state (B·n) evolves B independent
    systems side by side, whose spectrum is the union of the B spectra, so its top k mixes
    sequences. Differentiable in ``params`` (module docstring).

    Args:
      model: a ``gradflow.models`` RNN, LSTM or GRU (anything with ``.chain(params, u)``).
      params: the model's parameters.
      u: inputs ``(T, d)`` or a batch ``(B, T, d)``.
      k: how many exponents, 1 ≤ k ≤ n (the state size; 2·width for an LSTM's (c, h)).
      key: PRNG key of the initial orthonormal frame (None: a fixed key), the same for every
        sequence.
      discard: burn-in steps that move the state and the frame but are not averaged,
        0 ≤ discard < T.

    Returns:
      Array ``(k,)`` for ``u`` ``(T, d)``, ``(B, k)`` for a batch; each row descending, in nats
      per step.

    Raises:
      TypeError: for a non-model, a non-integer ``k`` or ``discard``.
      ValueError: for ``k`` outside 1 … n, ``discard`` outside 0 … T − 1, or ``u`` not of rank
        2 or 3.
    """
    _check_model(model)
    k, discard = _check_k(k), _check_discard(discard)
    u = _checks.as_float_array("u", u, (2, 3))

    def one(seq):
        return lyapunov_spectrum(model.chain(params, seq), k, key=key, discard=discard)

    return one(u) if u.ndim == 2 else jax.vmap(one)(u)


def flossing_regularizer(
    chain: Chain, k: int, *, target=0.0, key=None, discard: int = 0
) -> jax.Array:
    """F = Σ_{i ≤ k} (λ_i − λ_target)² of one trajectory (Engelken 2023's flossing loss).

    Args:
      chain: a :class:`~gradflow.chain.Chain` (or a shape-preserving
        :class:`~gradflow.chain.Segmented` chain) of *one* trajectory; for a batch of sequences
        use :func:`flossing_loss_fn` (see :func:`recurrent_exponents` on why).
      k: how many of the top exponents are flossed, 1 ≤ k ≤ n.
      target: λ_target (a scalar, may be traced): 0 makes the top k directions neither grow nor
        shrink.
      key: PRNG key of the initial frame (None: a fixed key).
      discard: burn-in steps not averaged, 0 ≤ discard < K.

    Returns:
      Scalar F, differentiable in the chain's parameters (and inputs and h_0).

    Raises:
      TypeError: for a non-chain or a non-integer ``k`` or ``discard``.
      ValueError: for ``k``, ``discard`` or ``target`` out of range (as above; ``target``
        finite).
    """
    if not isinstance(chain, (Chain, Segmented)):
        raise TypeError(f"chain must be a gradflow.chain.Chain, got {type(chain).__name__}")
    k, discard = _check_k(k), _check_discard(discard)
    target = _checks.as_float("target", target)
    return _penalty(lyapunov_spectrum(chain, k, key=key, discard=discard), target)


def flossing_loss_fn(
    model, k: int, *, target=0.0, discard: int = 0, key=None, examples: int | None = 1
) -> LossFn:
    """The flossing regulariser alone as a ``loss_fn(params, batch)`` for fit/make_fit.

    ``loss_fn(params, batch)`` is the mean over the first ``examples`` sequences of the batch of
    F = Σ_{i ≤ k} (λ_i − λ_target)², each sequence's exponents from its own trajectory
    (:func:`recurrent_exponents`). This is the pre-flossing objective: minimise it for a number
    of steps before training (Engelken 2023; :func:`make_preflossing`).

    Args:
      model: a ``gradflow.models`` RNN, LSTM or GRU.
      k: how many of the top exponents are flossed, 1 ≤ k ≤ n.
      target: λ_target (may be traced).
      discard: burn-in steps per sequence, not averaged (0 ≤ discard < T).
      key: PRNG key of the initial frame (None: a fixed key).
      examples: how many sequences of each batch to measure F on (None: all). Each costs k
        Jacobian-vector products and a QR per step, forward and backward.

    Returns:
      ``loss_fn(params, batch) -> scalar``; ``batch`` is the inputs ``u`` ``(B, T, d)`` (or
      ``(T, d)``) or a pair ``(u, y)`` whose ``y`` is ignored.

    Raises:
      TypeError, ValueError: for a bad ``model``, ``k``, ``discard``, ``target`` or
        ``examples``, before anything is traced.
    """
    _check_model(model)
    k, discard, examples = _check_k(k), _check_discard(discard), _check_examples(examples)
    target = _checks.as_float("target", target)

    def loss_fn(params, batch):
        u = batch[0] if isinstance(batch, (tuple, list)) else batch
        u = jnp.asarray(u)
        if u.ndim == 3 and examples is not None:
            u = u[:examples]
        lam = recurrent_exponents(model, params, u, k, key=key, discard=discard)
        return jnp.mean(_penalty(lam, target))

    return loss_fn


def with_flossing_regularizer(
    model,
    output_loss: Callable[[jax.Array, Any], jax.Array],
    k: int,
    weight,
    *,
    target=0.0,
    discard: int = 0,
    key=None,
    examples: int | None = 1,
) -> LossFn:
    """``loss_fn(params, (u, y)) = E + w · F``: the task loss plus the flossing regulariser.

    Flossing *during* training (Engelken 2023), in the form of
    :func:`~gradflow.train.with_pascanu_regularizer`: F (:func:`flossing_loss_fn`) is measured on
    the first ``examples`` sequences of each batch and added with weight ``w``.

    Args:
      model: a ``gradflow.models`` RNN, LSTM or GRU.
      output_loss: ``output_loss(outputs (B, out_features), y) -> scalar``.
      k: how many of the top exponents are flossed, 1 ≤ k ≤ n.
      weight: w ≥ 0 (may be traced; 0 switches flossing off).
      target, discard, key, examples: as :func:`flossing_loss_fn`.

    Returns:
      ``loss_fn(params, batch)`` with ``batch = (u (B, T, d), y)``.

    Raises:
      TypeError, ValueError: for a bad argument (``weight`` negative or non-finite), before
        anything is traced.
    """
    if not callable(output_loss):
        raise TypeError(f"output_loss must be callable, got {type(output_loss).__name__}")
    weight = _checks.as_float("weight", weight, minimum=0.0)
    floss = flossing_loss_fn(model, k, target=target, discard=discard, key=key, examples=examples)

    def loss_fn(params, batch):
        u, y = batch
        return output_loss(model.apply(params, u), y) + weight * floss(params, u)

    return loss_fn


def make_preflossing(
    model,
    k: int,
    optimizer: optax.GradientTransformation,
    *,
    target=0.0,
    discard: int = 0,
    key=None,
    examples: int | None = 1,
) -> Callable[[Any, jax.Array], PreFlossing]:
    """A pure pre-flossing phase: ``run(params, inputs) -> PreFlossing``, ``vmap``-able.

    One optimiser step on F (:func:`flossing_loss_fn`) per batch of ``inputs`` (S steps, one
    ``lax.scan``), and the exponents of the first batch's sequences before and after. As in
    :func:`~gradflow.train.make_fit`, from the first step whose F, gradient or update is
    non-finite no update is applied and every later loss is NaN. The loop records only F: it is
    the regulariser alone, so ``make_fit``'s per-layer monitors (which would double its compile
    time) have nothing to say here; ``fit(flossing_loss_fn(...), …)`` is the monitored
    alternative. Start the task training that follows with a fresh optimiser state (Engelken
    uses separate optimisers).

    Args:
      model: a ``gradflow.models`` RNN, LSTM or GRU.
      k: how many of the top exponents are flossed.
      optimizer: an optax optimiser (Engelken: Adam with the task's learning rate).
      target, discard, key, examples: as :func:`flossing_loss_fn`.

    Returns:
      ``run(params, inputs)``: ``inputs`` ``(S, B, T, d)`` (task inputs; targets are not used).

    Raises:
      TypeError, ValueError: for a bad argument, before anything is traced; ``run`` raises
        ValueError for inputs not of rank 4.
    """
    if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
        raise TypeError(f"optimizer must be an optax GradientTransformation, got {optimizer!r}")
    value_and_grad = jax.value_and_grad(
        flossing_loss_fn(model, k, target=target, discard=discard, key=key, examples=examples)
    )

    def measure(params, u):
        return recurrent_exponents(model, params, u, k, key=key, discard=discard)

    def step(carry, u):
        params, state, stopped, t = carry
        f, grads = value_and_grad(params, u)
        updates, new_state = optimizer.update(grads, state, params)
        new_params = optax.apply_updates(params, updates)
        # A sum over a tree is finite only if every entry is (and the sum does not overflow).
        finite = jnp.isfinite(otu.tree_sum(grads)) & jnp.isfinite(otu.tree_sum(new_params))
        ok = ~stopped & jnp.isfinite(f) & finite
        # The step whose update was refused is the divergent one; later steps record NaN.
        first_bad = jnp.where(~stopped & ~ok, t, -1)
        carry = (
            otu.tree_where(ok, new_params, params),
            otu.tree_where(ok, new_state, state),
            stopped | ~ok,
            t + 1,
        )
        return carry, (jnp.where(stopped, jnp.nan, f), first_bad)

    def run(params, inputs) -> PreFlossing:
        inputs = _checks.as_float_array("inputs", inputs, (4,))
        probe = inputs[0] if examples is None else inputs[0, :examples]
        carry = (params, optimizer.init(params), jnp.asarray(False), jnp.asarray(0, jnp.int32))
        (flossed, _, stopped, _), (loss, first_bad) = jax.lax.scan(step, carry, inputs)
        return PreFlossing(
            params=flossed,
            loss=loss,
            exponents_before=measure(params, probe),
            exponents_after=measure(flossed, probe),
            diverged=stopped,
            divergence_step=jnp.max(first_bad),
        )

    return run
