"""Training with gradient monitors: a jitted optax loop that records why training works or fails.

:func:`fit` runs an optax optimiser for S steps inside one ``lax.scan`` and records, every
``monitor_every`` steps, the per-layer gradient norms ‖∂L/∂θ_l‖ (the same numbers as
:func:`gradflow.gradients.layer_grad_norms`), the per-layer update/parameter ratios ‖Δθ_l‖/‖θ_l‖,
the per-layer parameter norms, the global gradient norm, the loss at every step, optional metrics
(``eval_fn``) and, for recurrent models, the per-time-step state-gradient norms ‖∂L/∂h_t‖
(``state_grad_fn``, e.g. from :func:`recurrent_state_grad_fn`). The per-layer records are
:class:`gradflow.monitor.GradStats` from :func:`gradflow.monitor.stats_from_norms`, the code
``monitor.grad_stats`` and the optax monitor run in a hand-written loop.

Batches may be stacked (a pytree with a leading axis of S steps), come from an iterator, or be
generated inside the compiled loop by ``batch_fn(key, step)``; streamed runs go in segments of
one compiled ``lax.scan`` each, so memory does not grow with the number of steps, with an
optional progress bar and a per-monitored-step ``callback(step, StepStats)``.
:meth:`History.to_dataframe` gives the records as a pandas table.

Divergence is detected inside the scan: from the first step whose loss is non-finite or whose
gradient has a non-finite (or, with ``max_grad_norm``, too large) layer norm, no update is applied
and every later loss is recorded as NaN — the loop never trains on NaNs. :func:`fit` then raises
:class:`DivergenceError` naming the step and the layer where it started; :func:`make_fit` returns
the pure, ``vmap``-able loop that reports the same thing in :class:`Divergence` instead of raising.

Mitigations from the literature come as optax pieces: :func:`with_clipping` (Pascanu et al.'s
gradient-norm clipping), :func:`pascanu_regularizer` / :func:`with_pascanu_regularizer` (their
soft constraint that preserves the norm of the back-propagated error), and the optimisers
:func:`sgd`, :func:`adam` and :func:`rprop` (sign-based, immune to the gradient's scale).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradflow import _checks
from gradflow import gradients as _gradients
from gradflow import monitor as _monitor
from gradflow.chain import Chain
from gradflow.monitor import (  # re-exported: gf.train.monitor etc. (DESIGN.md)
    GradStats,
    grad_stats,
    gradient_noise_scale,
    monitor,
    noise_scale,
    read_monitor,
)

__all__ = [
    "GradStats",
    "grad_stats",
    "gradient_noise_scale",
    "monitor",
    "noise_scale",
    "read_monitor",
    "History",
    "LayerNames",
    "StepStats",
    "Divergence",
    "FitResult",
    "DivergenceError",
    "fit",
    "make_fit",
    "with_clipping",
    "sgd",
    "adam",
    "rprop",
    "pascanu_regularizer",
    "with_pascanu_regularizer",
    "recurrent_state_grad_fn",
]

LossFn = Callable[[Any, Any], jax.Array]


class LayerNames(tuple):
    """The L layer names of a :class:`History`'s columns, input layer first: a tuple of str.

    A pytree with no leaves (the names are static metadata, like ``GradStats.names``), so a
    :class:`History` that holds it still passes through ``jit``, ``vmap``, ``lax.scan`` and
    ``jax.device_get``; ``jax.tree.map`` over a History keeps it as it is.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"LayerNames({tuple(self)!r})"


jax.tree_util.register_pytree_node(
    LayerNames, lambda names: ((), tuple(names)), lambda names, _: LayerNames(names)
)


class History(NamedTuple):
    """What :func:`fit` recorded. S steps, M = ⌈S / monitor_every⌉ monitored steps, L layers.

    Monitored quantities are measured at the parameters *before* that step's update, with that
    step's batch, so ``layer_grad_norms[m]`` equals ``gradients.layer_grad_norms(loss_fn,
    params_at(steps[m]), batches[steps[m]])``. Entries from the divergent step on are NaN.

    Attributes:
      loss: ``(S,)`` the loss at every step (NaN after a divergence).
      steps: ``(M,)`` int, the step of each monitored record (0, E, 2E, … for E = monitor_every).
      layer_grad_norms: ``(M, L)`` ‖∂L/∂θ_l‖, layers in forward order, input layer first (as
        ``gradients.layer_grad_norms``; computed in log form, so 0 only for a zero gradient).
      update_ratios: ``(M, L)`` ‖Δθ_l‖ / ‖θ_l‖ for the update the optimiser made at that step.
      param_norms: ``(M, L)`` ‖θ_l‖.
      global_grad_norm: ``(M,)`` ‖∂L/∂θ‖ (before any clipping).
      state_grad_norms: ``(M, K + 1)`` ‖∂L/∂h_k‖ from ``state_grad_fn``, or None.
      metrics: ``eval_fn(params)`` stacked over monitored steps (leaves ``(M, …)``), or None.
      layer_grad_log10_norms: ``(M, L)`` log10 ‖∂L/∂θ_l‖, finite where ``layer_grad_norms``
        would underflow (−inf for a zero gradient).
      layer_names: the L layer names of the ``(M, L)`` columns (:class:`LayerNames`, static, so
        not an array leaf), or None for a History built without them.
    """

    loss: jax.Array
    steps: jax.Array
    layer_grad_norms: jax.Array
    update_ratios: jax.Array
    param_norms: jax.Array
    global_grad_norm: jax.Array
    state_grad_norms: jax.Array | None = None
    metrics: Any = None
    layer_grad_log10_norms: jax.Array | None = None
    layer_names: LayerNames | None = None

    def to_dataframe(self):
        """The monitored steps as a ``pandas.DataFrame``: one row per monitored step.

        The index is ``step`` (``steps``); the columns are ``loss`` (the loss at that step),
        ``global_grad_norm``, then for every layer ``name`` (from ``layer_names``; its index
        ``0 … L−1`` if None) ``grad_norm/<name>``, ``grad_log10_norm/<name>``,
        ``update_ratio/<name>`` and ``param_norm/<name>``; ``state_grad_norm/<k>`` for k = 0 … K
        with ``state_grad_norms``; and ``metrics/<path>`` for every leaf of ``metrics``
        (``metrics/<path>/<i>`` for the entries of a non-scalar one). Values are the History's
        own arrays (same dtype, NaN after a divergence). Select a family with
        ``df.filter(like="grad_norm/")``.

        Returns:
          ``pandas.DataFrame`` of M rows.

        Raises:
          ImportError: without pandas (``pip install 'gradflow[xarray]'``).
          ValueError: for a History with extra leading axes (from ``vmap``): index one run
            first, e.g. ``jax.tree.map(lambda a: a[0], history)``.
        """
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "History.to_dataframe needs pandas: pip install 'gradflow[xarray]'"
            ) from err
        steps = np.asarray(self.steps)
        if steps.ndim != 1:
            raise ValueError(
                f"to_dataframe takes one run's History, got steps of shape {steps.shape} (a "
                "vmapped History?): index one run first, e.g. jax.tree.map(lambda a: a[0], h)"
            )
        grads = np.asarray(self.layer_grad_norms)
        names = self.layer_names
        if names is None:
            names = [str(i) for i in range(grads.shape[-1])]
        columns = {
            "loss": np.asarray(self.loss)[steps],
            "global_grad_norm": np.asarray(self.global_grad_norm),
        }
        per_layer = [
            ("grad_norm", grads),
            ("grad_log10_norm", self.layer_grad_log10_norms),
            ("update_ratio", self.update_ratios),
            ("param_norm", self.param_norms),
        ]
        for prefix, values in per_layer:
            if values is not None:
                values = np.asarray(values)
                columns.update({f"{prefix}/{n}": values[:, i] for i, n in enumerate(names)})
        if self.state_grad_norms is not None:
            state = np.asarray(self.state_grad_norms)
            columns.update({f"state_grad_norm/{k}": state[:, k] for k in range(state.shape[1])})
        for path, leaf in jax.tree_util.tree_leaves_with_path(self.metrics):
            name = "/".join(
                ["metrics"]
                + ([jax.tree_util.keystr(path, simple=True, separator="/")] if path else [])
            )
            leaf = np.asarray(leaf)
            if leaf.ndim == 1:
                columns[name] = leaf
            else:
                flat = leaf.reshape(leaf.shape[0], -1)
                columns.update({f"{name}/{i}": flat[:, i] for i in range(flat.shape[1])})
        return pd.DataFrame(columns, index=pd.Index(steps, name="step"))


class Divergence(NamedTuple):
    """Where training diverged (all fields are arrays, so this passes through ``vmap``).

    Attributes:
      diverged: bool, whether any step diverged.
      step: int, the first divergent step (−1 if none). Its update was not applied.
      layer: int, the layer where it started: the first layer in back-propagation order (readout
        first, input layer last) whose gradient norm was non-finite or above ``max_grad_norm``;
        −1 if none, or if the forward pass overflowed so that every layer's gradient is
        non-finite and none can be singled out.
      loss_finite: bool, whether the loss itself was finite at that step (False means the forward
        pass overflowed, so every gradient is suspect).
      layer_grad_norms: ``(L,)`` the per-layer gradient norms at that step (zeros if none).
    """

    diverged: jax.Array
    step: jax.Array
    layer: jax.Array
    loss_finite: jax.Array
    layer_grad_norms: jax.Array


class FitResult(NamedTuple):
    """The output of :func:`fit`/:func:`make_fit`.

    Attributes:
      params: the parameters after the last step (after the last finite step if it diverged).
      opt_state: the optimiser state that goes with ``params``.
      history: a :class:`History`.
      divergence: a :class:`Divergence`.
      final_metrics: ``eval_fn(params)`` at the returned parameters, or None.
    """

    params: Any
    opt_state: Any
    history: History
    divergence: Divergence
    final_metrics: Any = None


class DivergenceError(FloatingPointError):
    """Raised by :func:`fit` when the loss or a gradient became non-finite or exploded.

    Attributes:
      step: the first divergent step (0-based).
      layer: the layer where it started (see :class:`Divergence`), or −1 when only the loss was
        non-finite.
      loss_finite: whether the loss itself was finite at that step.
      result: the :class:`FitResult` up to that step (parameters before the divergent update).
    """

    def __init__(self, message: str, *, step: int, layer: int, loss_finite: bool, result):
        super().__init__(message)
        self.step = step
        self.layer = layer
        self.loss_finite = loss_finite
        self.result = result


# --------------------------------------------------------------------------------------------
# optimisers and mitigations
# --------------------------------------------------------------------------------------------


def with_clipping(
    optimizer: optax.GradientTransformation, max_norm
) -> optax.GradientTransformation:
    """``optimizer`` applied to gradients rescaled to global norm ≤ ``max_norm``.

    Pascanu, Mikolov & Bengio 2013 (arXiv:1211.5063), §3.2, Algorithm 1: if ‖g‖ ≥ threshold then
    g ← threshold · g/‖g‖. ``max_norm`` may be a traced scalar (``inf`` disables clipping), so
    clipped and unclipped runs can share one ``vmap``.
    """
    if not isinstance(max_norm, jax.Array):
        if not np.isscalar(max_norm) or not float(max_norm) > 0:
            raise ValueError(f"max_norm must be a positive number, got {max_norm!r}")
    return optax.chain(optax.clip_by_global_norm(max_norm), optimizer)


def _maybe_clip(opt, clip_norm):
    return opt if clip_norm is None else with_clipping(opt, clip_norm)


def sgd(learning_rate, *, momentum=None, nesterov=False, clip_norm=None):
    """``optax.sgd``, optionally after :func:`with_clipping`."""
    return _maybe_clip(optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov), clip_norm)


def adam(learning_rate, *, clip_norm=None, **kwargs):
    """``optax.adam``, optionally after :func:`with_clipping`."""
    return _maybe_clip(optax.adam(learning_rate, **kwargs), clip_norm)


def rprop(learning_rate, *, clip_norm=None, **kwargs):
    """Sign-based Rprop (Riedmiller & Braun 1993) — ``optax.rprop``, optionally clipped.

    Each weight's step adapts to the *sign* history of its own gradient, so a layer whose gradient
    has vanished by orders of magnitude still moves at full speed (the remedy Wikipedia's
    "vanishing gradient problem" lists). It is a full-batch method: use large batches.
    """
    return _maybe_clip(optax.rprop(learning_rate, **kwargs), clip_norm)


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
    final_loss = _final_state_loss(model, output_loss)

    def loss_fn(params, batch):
        u, y = batch
        task = output_loss(model.apply(params, u), y)
        omega = pascanu_regularizer(model.chain(params, u), lambda h: final_loss(params, h, y))
        return task + alpha * omega

    return loss_fn


def _final_outputs(model):
    """``outputs(params, h_T)``: a recurrent model's readout of its final chain state."""
    output_state = model._output_state  # (c, h) -> h for an LSTM; identity otherwise

    def outputs(params, h):
        p = params["params"] if set(params) == {"params"} else params
        r = p["readout"]
        z = output_state(h) @ r["kernel"]
        return z + jnp.broadcast_to(r["bias"], z.shape)

    return outputs


def _final_state_loss(model, output_loss):
    """E(h_T) for a recurrent model: readout of the output state, then ``output_loss``."""
    outputs = _final_outputs(model)

    def final_loss(params, h, y):
        return output_loss(outputs(params, h), y)

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
    final_loss = _final_state_loss(model, output_loss)

    def fn(params, batch):
        u, y = batch
        chain = model.chain(params, u)
        return _gradients.state_grad_norms(chain, lambda h: final_loss(params, h, y))

    return fn


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------


def _tree_where(cond, a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.where(cond, x, y), a, b)


def _num_steps(batches) -> int:
    leaves = jax.tree_util.tree_leaves(batches)
    if not leaves:
        raise ValueError("batches must be a pytree of arrays with a leading axis of S steps")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "batches leaves must share a leading axis of S steps, got shapes "
            f"{[np.shape(x) for x in leaves]}"
        )
    (s,) = sizes
    if s < 1:
        raise ValueError("batches must hold at least one step (leading axis S >= 1)")
    return int(s)


def _filled(shapes, value):
    """Arrays of ``shapes`` (a pytree of ``ShapeDtypeStruct``) filled with ``value`` (0 where the
    dtype is not inexact)."""
    return jax.tree_util.tree_map(
        lambda s: jnp.full(s.shape, value if jnp.issubdtype(s.dtype, jnp.inexact) else 0, s.dtype),
        shapes,
    )


class _Loop(NamedTuple):
    """The pieces of the training loop that :func:`make_fit`'s single scan and :func:`fit`'s
    segmented scan share, so that both run the very same step."""

    optimizer: optax.GradientTransformation
    monitor_every: int
    stacked: Sequence[str] | None
    eval_fn: Callable[[Any], Any] | None
    loss_fn: LossFn
    # step(order, carry, batch) -> (carry, (loss, record)); carry = (params, state, div, t)
    step: Callable[..., Any]


def _build_loop(
    loss_fn, optimizer, monitor_every, max_grad_norm, state_grad_fn, eval_fn, stacked
) -> _Loop:
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
        raise TypeError(f"optimizer must be an optax GradientTransformation, got {optimizer!r}")
    monitor_every = int(monitor_every)
    if monitor_every < 1:
        raise ValueError(f"monitor_every must be >= 1, got {monitor_every}")
    if max_grad_norm is not None and not float(max_grad_norm) > 0:
        raise ValueError(f"max_grad_norm must be positive or None, got {max_grad_norm!r}")
    if state_grad_fn is not None and not callable(state_grad_fn):
        raise TypeError(f"state_grad_fn must be callable or None, got {state_grad_fn!r}")
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable or None, got {eval_fn!r}")
    limit = np.inf if max_grad_norm is None else float(max_grad_norm)
    value_and_grad = jax.value_and_grad(loss_fn)

    def train_step(order, carry, batch):
        params, opt_state, div, t = carry

        def layer_norms(tree):
            # Log form: a layer whose gradient is 1e-25 in float32 is not reported as 0. The
            # same call as monitor.grad_stats makes, so fit and a user's own loop agree.
            return _gradients.named_norms(tree, 1, stacked=stacked, order=order)

        def live(_):
            loss, grads = value_and_grad(params, batch)
            g_norms = layer_norms(grads)
            g = g_norms.values
            bad = ~jnp.isfinite(g) | (g > limit)
            updates, new_state = optimizer.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            u_norms = layer_norms(updates)
            u = u_norms.values
            bad_now = ~jnp.isfinite(loss) | jnp.any(bad) | ~jnp.all(jnp.isfinite(u))
            # Back-propagation visits the readout first: the started-layer is the last bad index.
            layer = jnp.max(jnp.where(bad, jnp.arange(g.shape[0], dtype=jnp.int32), -1))
            # A forward overflow poisons every gradient alike: no layer can be singled out, and
            # naming the readout (the last bad index) would point at the wrong end.
            layer = jnp.where(~jnp.isfinite(loss) & jnp.all(bad), -1, layer)
            return new_params, new_state, (loss, bad_now, layer, g_norms, u_norms)

        def dead(_):
            # Once diverged, nothing is computed: the record is NaN and the state is frozen.
            return params, opt_state, _filled(jax.eval_shape(live, None)[2], jnp.nan)

        new_params, new_state, (loss, bad_now, layer, g_norms, u_norms) = jax.lax.cond(
            div.diverged, dead, live, None
        )
        first = ~div.diverged & bad_now
        ok = ~div.diverged & ~bad_now

        def monitor(_):
            stats = _monitor.stats_from_norms(g_norms, u_norms, layer_norms(params))
            # History's plain-number columns are derived here, inside the step, so that a
            # single scan and a segmented one produce them with the same operations.
            rec = {
                "stats": stats,
                "g": stats.grad_norms,
                "ratio": stats.update_ratios,
                "p": stats.param_norms,
                "gnorm": stats.global_grad_norm,
            }
            if state_grad_fn is not None:
                rec["state"] = state_grad_fn(params, batch)
            if eval_fn is not None:
                rec["metrics"] = eval_fn(params)
            return rec

        def skip(_):
            return _filled(jax.eval_shape(monitor, None), 0)

        # t is never batched (it does not depend on the data), so under vmap this stays a cond
        # and the monitored quantities cost nothing on the other steps.
        rec = jax.lax.cond(t % monitor_every == 0, monitor, skip, None)
        keep = ~div.diverged | first  # the divergent step's own record is kept, later ones NaN

        def mask(x):
            return jnp.where(keep, x, jnp.nan) if jnp.issubdtype(x.dtype, jnp.inexact) else x

        rec = jax.tree_util.tree_map(mask, rec)
        params = _tree_where(ok, new_params, params)
        opt_state = _tree_where(ok, new_state, opt_state)
        div = Divergence(
            diverged=div.diverged | bad_now,
            step=jnp.where(first, t, div.step).astype(jnp.int32),
            layer=jnp.where(first, layer, div.layer).astype(jnp.int32),
            loss_finite=jnp.where(first, jnp.isfinite(loss), div.loss_finite),
            layer_grad_norms=jnp.where(first, g_norms.values, div.layer_grad_norms),
        )
        return (params, opt_state, div, t + 1), (jnp.where(keep, loss, jnp.nan), rec)

    return _Loop(optimizer, monitor_every, stacked, eval_fn, loss_fn, train_step)


def _initial_carry(loop: _Loop, params, opt_state):
    if opt_state is None:
        opt_state = loop.optimizer.init(params)
    n_layers = len(
        jax.eval_shape(lambda p: _gradients.layer_norms(p, stacked=loop.stacked), params)
    )
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
    div = Divergence(
        diverged=jnp.array(False),
        step=jnp.array(-1, jnp.int32),
        layer=jnp.array(-1, jnp.int32),
        loss_finite=jnp.array(True),
        layer_grad_norms=jnp.zeros((n_layers,), dtype),
    )
    return (params, opt_state, div, jnp.array(0, jnp.int32))


def _history(losses, rec, steps) -> History:
    """:class:`History` from the per-step losses and the records of the monitored steps."""
    stats = rec["stats"]
    return History(
        loss=losses,
        steps=steps,
        layer_grad_norms=rec["g"],
        update_ratios=rec["ratio"],
        param_norms=rec["p"],
        global_grad_norm=rec["gnorm"],
        state_grad_norms=rec.get("state"),
        metrics=rec.get("metrics"),
        layer_grad_log10_norms=stats.grad_log10,
        layer_names=LayerNames(stats.names),
    )


def _single_scan(loop: _Loop, params, batches, opt_state):
    """The whole run as one ``lax.scan``: ``(FitResult, records of the monitored steps)``."""
    s = _num_steps(batches)
    carry = _initial_carry(loop, params, opt_state)
    # The layers in the order the forward pass uses them, as gradients.layer_grad_norms.
    order = _gradients.forward_order(loop.loss_fn, params, jax.tree.map(lambda a: a[0], batches))
    step = functools.partial(loop.step, order)
    carry, (losses, rec) = jax.lax.scan(step, carry, batches, length=s)
    rec = jax.tree_util.tree_map(lambda x: x[:: loop.monitor_every], rec)
    params, opt_state, div, _ = carry
    history = _history(losses, rec, jnp.arange(0, s, loop.monitor_every))
    final = loop.eval_fn(params) if loop.eval_fn is not None else None
    return FitResult(params, opt_state, history, div, final), rec


def make_fit(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    monitor_every: int = 1,
    max_grad_norm: float | None = None,
    state_grad_fn: Callable[[Any, Any], jax.Array] | None = None,
    eval_fn: Callable[[Any], Any] | None = None,
    stacked: Sequence[str] | None = None,
) -> Callable[..., FitResult]:
    """The pure training loop behind :func:`fit`: ``run(params, batches, opt_state=None)``.

    It never raises on divergence (it reports it in ``FitResult.divergence``), so it can be
    ``jit``-ed and ``vmap``-ed over seeds, data and traced optimiser hyper-parameters. The whole
    run is one ``lax.scan`` over a stacked ``batches`` pytree (leading axis S).

    Args: as :func:`fit`.

    Returns:
      ``run(params, batches, opt_state=None) -> FitResult``.
    """
    loop = _build_loop(
        loss_fn, optimizer, monitor_every, max_grad_norm, state_grad_fn, eval_fn, stacked
    )

    def run(params, batches, opt_state=None) -> FitResult:
        return _single_scan(loop, params, batches, opt_state)[0]

    return run


# --------------------------------------------------------------------------------------------
# fit: stacked, iterated or generated batches, in segments
# --------------------------------------------------------------------------------------------

# Steps per compiled segment for streamed batches: large enough that the per-segment host work
# (stacking the batches, one device round trip) is amortised, small enough that a segment's
# per-step outputs and stacked batches stay small.
_DEFAULT_SEGMENT = 256


class StepStats(NamedTuple):
    """One monitored step, as :func:`fit` passes it to ``callback(step, stats)``.

    All values are NumPy arrays on the host (``GradStats``' arrays included). For example, to
    log every monitored step::

        def log(step, stats):
            g = stats.grad_stats
            print(step, float(stats.loss), dict(zip(g.names, g.grad_norms.tolist())))

        gf.train.fit(loss_fn, params, batches, optimizer, monitor_every=100, callback=log)

    Attributes:
      loss: ``()`` the loss at that step (before its update).
      grad_stats: :class:`gradflow.monitor.GradStats` with arrays ``(L,)`` and ``()``: per-layer
        log10 gradient, update and parameter norms, the global gradient norm and the non-finite
        flag, exactly as ``monitor.grad_stats`` gives them in a hand-written loop; ``.names`` are
        the layer names. ``.grad_log10`` is History's ``layer_grad_log10_norms`` row bit for
        bit; ``.grad_norms``, ``.update_ratios``, ``.param_norms`` and ``.global_grad_norm`` give
        its other columns (recomputed from the logs, so equal to the last ulp).
      state_grad_norms: ``(K + 1,)`` from ``state_grad_fn``, or None.
      metrics: ``eval_fn(params)`` at that step (a pytree of arrays), or None.
    """

    loss: np.ndarray
    grad_stats: _monitor.GradStats
    state_grad_norms: np.ndarray | None = None
    metrics: Any = None


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _source_kind(batches) -> str:
    """``"stacked"`` (a pytree of arrays), ``"fn"`` (batch_fn) or ``"iter"`` (an iterable that is
    not a pytree container: an iterator, a generator, a data loader)."""
    if _is_array(batches):
        return "stacked"
    if callable(batches) and not hasattr(batches, "__next__"):
        return "fn"
    leaves = jax.tree_util.tree_leaves(batches)
    if (
        len(leaves) == 1
        and leaves[0] is batches
        and not isinstance(batches, (str, bytes))
        and (hasattr(batches, "__iter__") or hasattr(batches, "__next__"))
    ):
        return "iter"
    return "stacked"


def _optional_int(name: str, value) -> int | None:
    return None if value is None else _checks.positive_int(name, value)


def _check_key(key) -> None:
    if key is None:
        raise ValueError(
            "key is required with a batch_fn (batches=callable): pass key=jax.random.key(…)"
        )
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    raw = dtype == np.uint32 and np.shape(key) == (2,)
    if not ((typed and np.shape(key) == ()) or raw):
        raise TypeError(
            f"key must be a PRNG key (jax.random.key or jax.random.PRNGKey), got {key!r}"
        )


def _signature(batch):
    leaves, treedef = jax.tree_util.tree_flatten(batch)
    return treedef, tuple((np.shape(x), np.result_type(x)) for x in leaves)


def _describe(signature) -> str:
    treedef, leaves = signature
    shapes = ", ".join(f"{dtype}{list(shape)}" for shape, dtype in leaves)
    return f"{treedef} with leaves [{shapes}]"


def _pull(iterator, want: int, length: int, signature, t0: int):
    """Up to ``want`` batches from ``iterator``, checked against ``signature`` (step 0's) and
    stacked on a leading axis of ``length`` (the last batch repeated as padding).

    Returns:
      ``(count, stacked or None, signature)``.
    """
    batches = []
    for i in range(want):
        try:
            batch = next(iterator)
        except StopIteration:
            break
        sig = _signature(batch)
        if signature is None:
            if not sig[1]:
                raise ValueError(f"batches: the iterator's first batch has no arrays: {batch!r}")
            signature = sig
        elif sig != signature:
            raise ValueError(
                f"batches: the batch at step {t0 + i} is {_describe(sig)}, but step 0's was "
                f"{_describe(signature)}; every batch must have the same structure, shapes and "
                "dtypes"
            )
        batches.append(batch)
    count = len(batches)
    if not count:
        return 0, None, signature
    # Always `length` batches, so that every segment, the last one included, runs the one
    # compiled segment function (the padding steps are skipped inside it).
    batches += [batches[-1]] * (length - count)
    on_device = all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(batches[0]))
    stack = jnp.stack if on_device else np.stack
    return count, jax.tree_util.tree_map(lambda *xs: stack(xs), *batches), signature


def _index(tree, i):
    return jax.tree_util.tree_map(
        lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), tree
    )


def _segment_fn(loop: _Loop, order, length: int, get_batch, jit: bool):
    """``seg(carry, source, n_valid) -> (carry, (losses, records))``: ``length`` steps of the
    loop, batch ``get_batch(source, i, t)`` at position i (global step t); positions
    ``i >= n_valid`` are padding: a ``lax.cond`` skips them, leaving the carry untouched, so one
    compiled function serves every segment, the short last one included."""

    def seg(carry, source, n_valid):
        def body(c, i):
            def real(_):
                return loop.step(order, c, get_batch(source, i, c[3]))

            def pad(_):
                return c, _filled(jax.eval_shape(real, None)[1], 0)

            return jax.lax.cond(i < n_valid, real, pad, None)

        return jax.lax.scan(body, carry, jnp.arange(length, dtype=jnp.int32))

    return jax.jit(seg) if jit else seg


class _Display:
    """The progress bar (rich, on stderr) and the callback, fed once per segment."""

    def __init__(self, progress: bool, total: int | None, callback):
        self.callback = callback
        self.bar = None
        self.loss = self.gnorm = "…"
        if not progress:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("fit"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("‖∇‖ {task.fields[gnorm]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
        )
        self.task = self.bar.add_task("fit", total=total, loss=self.loss, gnorm=self.gnorm)
        self.bar.start()

    def segment(self, t0: int, losses: np.ndarray, steps: np.ndarray, rec, div) -> None:
        """One segment done: ``losses (n,)`` of steps ``t0 … t0 + n − 1``; ``steps (m,)`` and
        ``rec`` (host arrays with leading axis m) of its monitored steps; ``div`` the carry's
        :class:`Divergence` after it."""
        last = int(div.step) if bool(div.diverged) else None
        if self.callback is not None:
            for j, step in enumerate(steps.tolist()):
                if last is not None and step > last:
                    break  # later records are NaN placeholders: no step ran there
                row = jax.tree_util.tree_map(lambda x, j=j: x[j], rec)
                stats = StepStats(
                    losses[step - t0], row["stats"], row.get("state"), row.get("metrics")
                )
                self.callback(step, stats)
        if self.bar is not None:
            finite = losses[np.isfinite(losses)]
            if finite.size:
                self.loss = f"{finite[-1]:.4g}"
            norms = rec["gnorm"][np.isfinite(rec["gnorm"])]
            if norms.size:
                self.gnorm = f"{norms[-1]:.3g}"
            self.bar.update(self.task, advance=losses.shape[0], loss=self.loss, gnorm=self.gnorm)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _to_host(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _run_segments(
    loop: _Loop, params, opt_state, kind, batches, *, steps, key, length, jit, display
):
    """:func:`fit`'s segmented loop: ``length`` steps per call of one compiled segment function;
    only the losses and the monitored records come back to the host, so memory does not grow
    with the number of steps beyond the :class:`History` itself."""
    signature = None
    if kind == "iter":
        iterator = iter(batches)
        want = length if steps is None else min(length, steps)
        count, source, signature = _pull(iterator, want, length, None, 0)
        if not count:
            raise ValueError("batches: the iterator yielded no batch")
        first = jax.tree_util.tree_map(lambda a: a[0], source)
        get_batch = lambda src, i, t: _index(src, i)  # noqa: E731
    elif kind == "fn":
        batch_fn = batches
        try:
            shapes = jax.eval_shape(batch_fn, jax.random.fold_in(key, 0), jnp.int32(0))
        except jax.errors.JAXTypeError as err:
            raise TypeError(
                "batches: batch_fn(key, step) must be jittable (step is a traced int32 scalar)"
            ) from err
        if not jax.tree_util.tree_leaves(shapes):
            raise ValueError(f"batches: batch_fn(key, step) returned no arrays: {shapes!r}")
        # forward_order only traces the loss: zeros of the right shapes name the same layers.
        first = _filled(shapes, 0)

        def get_batch(k, i, t):
            # The barrier keeps XLA from fusing batch_fn's arithmetic into the step's (e.g. a
            # multiply-add across the boundary), so the batch is what jax.jit(batch_fn) gives.
            return jax.lax.optimization_barrier(batch_fn(jax.random.fold_in(k, t), t))
    else:
        batches = jax.tree_util.tree_map(jnp.asarray, batches)
        first = jax.tree_util.tree_map(lambda a: a[0], batches)
        get_batch = lambda src, i, t: _index(src, t)  # noqa: E731

    order = _gradients.forward_order(loop.loss_fn, params, first)
    init = functools.partial(_initial_carry, loop)
    carry = (jax.jit(init) if jit else init)(params, opt_state)
    seg = _segment_fn(loop, order, length, get_batch, jit)
    every = loop.monitor_every
    t0, losses, records = 0, [], []
    while True:
        want = length if steps is None else min(length, steps - t0)
        if want <= 0:
            break
        if kind == "iter":
            if t0:  # the first segment was pulled above, to name the layers
                count, source, signature = _pull(iterator, want, length, signature, t0)
        elif kind == "fn":
            count, source = want, key
        else:
            count, source = want, batches
        if not count:
            break
        carry, (loss, rec) = seg(carry, source, np.int32(count))
        loss = np.asarray(loss)[:count]
        monitored = np.arange((-t0) % every, count, every)
        rec = jax.tree_util.tree_map(lambda x, m=monitored: np.asarray(x)[m], rec)
        div = _to_host(carry[2])
        losses.append(loss)
        records.append(rec)
        display.segment(t0, loss, t0 + monitored, rec, div)
        t0 += count
        if bool(div.diverged) or count < want:
            break
        if kind == "iter":
            source = None  # let the segment's batches go before pulling the next ones

    rec = jax.tree_util.tree_map(lambda *xs: jnp.asarray(np.concatenate(xs)), *records)
    history = _history(jnp.asarray(np.concatenate(losses)), rec, jnp.arange(0, t0, every))
    params, opt_state, div, _ = carry
    final = None
    if loop.eval_fn is not None:
        final = (jax.jit(loop.eval_fn) if jit else loop.eval_fn)(params)
    return FitResult(params, opt_state, history, div, final)


def _divergence_error(result: FitResult) -> DivergenceError:
    div = result.divergence
    step, layer, finite = int(div.step), int(div.layer), bool(div.loss_finite)
    norms = np.asarray(div.layer_grad_norms)
    what = "loss is finite" if finite else "loss itself is non-finite (the forward pass overflowed)"
    where = (
        f"first in back-propagation order at layer {layer} (0 = input layer, "
        f"{norms.shape[0] - 1} = readout)"
        if layer >= 0
        else "no single layer: every gradient is non-finite"
        if not finite
        else "no layer's gradient norm was bad"
    )
    return DivergenceError(
        f"training diverged at step {step}: {what}; non-finite or exploding gradient "
        f"{where}; per-layer gradient norms there: {np.array2string(norms, precision=3)}. "
        "The returned parameters are those before that step (see .result).",
        step=step,
        layer=layer,
        loss_finite=finite,
        result=result,
    )


def fit(
    loss_fn: LossFn,
    params,
    batches,
    optimizer: optax.GradientTransformation,
    *,
    monitor_every: int = 1,
    max_grad_norm: float | None = None,
    state_grad_fn: Callable[[Any, Any], jax.Array] | None = None,
    eval_fn: Callable[[Any], Any] | None = None,
    opt_state=None,
    stacked: Sequence[str] | None = None,
    jit: bool = True,
    steps: int | None = None,
    key: jax.Array | None = None,
    segment: int | None = None,
    progress: bool | None = None,
    callback: Callable[[int, StepStats], Any] | None = None,
) -> FitResult:
    """Trains ``params`` with an optax optimiser, monitoring the gradients.

    Each step computes the loss and gradient of one batch, checks them for divergence, applies
    the optimiser's update and, every ``monitor_every`` steps, records the per-layer statistics
    of :func:`gradflow.monitor.stats_from_norms` (the numbers ``monitor.grad_stats`` gives a
    hand-written loop, from the same code). At the first step whose loss is non-finite, or whose
    gradient has a non-finite layer norm (or one above ``max_grad_norm``), or whose update is
    non-finite, the update is skipped and training stops; :class:`DivergenceError` is then raised
    with the step and the layer.

    Batches come in one of three forms:

    - a **stacked** pytree whose leaves have a leading axis of S steps (step t gets the t-th
      slice). Without ``segment`` the whole run is one jitted ``lax.scan``, as in
      :func:`make_fit`. A list or tuple is a pytree, hence stacked: pass ``iter(list_of_batches)``
      to stream one.
    - an **iterable** that is not a pytree container (an iterator, a generator, a data loader)
      yielding one batch pytree per step, every one with the same structure, shapes and dtypes;
      it runs until exhausted or ``steps``.
    - a **batch_fn** ``batch_fn(key, step) -> batch``, jittable (``step`` is a traced int32
      scalar), called inside the compiled loop with ``jax.random.fold_in(key, step)``, so no
      batch crosses from the host; needs ``steps`` and ``key``.

    Streamed batches (and stacked ones with ``segment``) run in segments of ``segment`` steps:
    one compiled ``lax.scan`` function serves every segment (a short last segment is padded and
    the padding skipped), and after each segment only its losses and monitored records come to
    the host, so memory does not grow with the number of steps beyond the :class:`History`. The
    same data gives bitwise the same parameters and History whatever the form or the segment.
    After a divergence no further batch is pulled; the History then ends with the segment in
    which it diverged (its later steps NaN), where a single scan records all S steps.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: initial parameters (as from ``model.init``): any pytree of arrays; layers are
        named and ordered as by ``gradients.layer_grad_norms``.
      batches: a stacked pytree (leading axis S), an iterable of batch pytrees, or
        ``batch_fn(key, step)`` (see above).
      optimizer: any optax ``GradientTransformation`` (see :func:`sgd`, :func:`adam`,
        :func:`rprop`, :func:`with_clipping`), also one whose state holds a gradient monitor.
      monitor_every: record the monitored quantities every this many steps (the loss is
        recorded at every step).
      max_grad_norm: treat a layer gradient norm above this as an explosion (None: only
        non-finite values count). Clipping does not change this check: it sees raw gradients.
      state_grad_fn: optional ``(params, batch) -> (K + 1,)`` state-gradient norms recorded at
        monitored steps, e.g. :func:`recurrent_state_grad_fn`.
      eval_fn: optional ``params -> pytree`` of metrics recorded at monitored steps and at the end.
      opt_state: optimiser state to resume from (default ``optimizer.init(params)``).
      stacked: parameter groups stacked on a leading layer axis (see ``gradients.named_norms``;
        None: ``hidden`` of gradflow's own models only).
      jit: whether to ``jax.jit`` the loop (False is for debugging).
      steps: the number of steps: required with a ``batch_fn``; with an iterable, stop after this
        many (None: when it is exhausted); with stacked batches, the first ``steps`` ≤ S.
      key: the PRNG key of a ``batch_fn`` (only with one).
      segment: steps per compiled segment, >= 1 (default: 256 for an iterable or a
        ``batch_fn``; None with stacked batches: one scan over all S).
      progress: show a progress bar over steps with the loss and the global gradient norm on
        stderr (rich), updated after each segment; None: only when stderr is a terminal.
      callback: ``callback(step, stats)``, called on the host after each segment (after the whole
        scan without segments), once for every monitored step in it, in order, up to and
        including a divergent step; ``stats`` is a :class:`StepStats` of NumPy values. Its return
        value is ignored; an exception it raises stops training.

    Returns:
      :class:`FitResult` with ``.params``, ``.opt_state``, ``.history``, ``.divergence`` and
      ``.final_metrics``.

    Raises:
      DivergenceError: with ``.step``, ``.layer`` and ``.result`` (the run up to that step).
      ValueError, TypeError: for malformed arguments (before anything is traced), and for an
        iterable whose batches change structure, shape or dtype (naming the step).
    """
    loop = _build_loop(
        loss_fn, optimizer, monitor_every, max_grad_norm, state_grad_fn, eval_fn, stacked
    )
    steps = _optional_int("steps", steps)
    segment = _optional_int("segment", segment)
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None, got {progress!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable(step, stats) or None, got {callback!r}")
    kind = _source_kind(batches)
    if kind == "fn":
        if steps is None:
            raise ValueError("steps is required with a batch_fn (batches=callable)")
        _check_key(key)
    elif key is not None:
        raise ValueError("key is only used with a batch_fn (batches=callable); got a key and data")
    total = steps
    if kind == "stacked":
        s = _num_steps(batches)  # validate before tracing
        if steps is not None and steps > s:
            raise ValueError(f"steps must be <= S = {s} for stacked batches, got {steps}")
        total = s if steps is None else steps
        if total < s:
            batches = jax.tree_util.tree_map(lambda a: a[:total], batches)
    elif segment is None:
        segment = _DEFAULT_SEGMENT
    if progress is None:
        progress = sys.stderr.isatty()

    display = _Display(progress, total, callback)
    try:
        if segment is None:
            run = functools.partial(_single_scan, loop)
            result, rec = (jax.jit(run) if jit else run)(params, batches, opt_state)
            if progress or callback is not None:
                display.segment(
                    0,
                    np.asarray(result.history.loss),
                    np.asarray(result.history.steps),
                    _to_host(rec),
                    _to_host(result.divergence),
                )
        else:
            result = _run_segments(
                loop,
                params,
                opt_state,
                kind,
                batches,
                steps=total,
                key=key,
                length=segment if total is None else min(segment, total),
                jit=jit,
                display=display,
            )
    finally:
        display.close()
    if bool(result.divergence.diverged):
        raise _divergence_error(result)
    return result
