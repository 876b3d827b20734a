"""Training with gradient monitors: a jitted optax loop that records why training works or fails.

:func:`fit` runs an optax optimiser for S steps inside one ``lax.scan`` and records, every
``monitor_every`` steps, the per-layer gradient norms ‖∂L/∂θ_l‖ (the same numbers as
:func:`gradflow.gradients.layer_grad_norms`), the per-layer update/parameter ratios ‖Δθ_l‖/‖θ_l‖,
the per-layer parameter norms, the global gradient norm, the loss at every step, optional metrics
(``eval_fn``) and, for recurrent models, the per-time-step state-gradient norms ‖∂L/∂h_t‖
(``state_grad_fn``, e.g. from :func:`recurrent_state_grad_fn`).

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
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradflow import gradients as _gradients
from gradflow.chain import Chain

__all__ = [
    "History",
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
    ``jit``-ed and ``vmap``-ed over seeds, data and traced optimiser hyper-parameters.

    Args: as :func:`fit`.

    Returns:
      ``run(params, batches, opt_state=None) -> FitResult``.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
        raise TypeError(f"optimizer must be an optax GradientTransformation, got {optimizer!r}")
    monitor_every = int(monitor_every)
    if monitor_every < 1:
        raise ValueError(f"monitor_every must be >= 1, got {monitor_every}")
    if max_grad_norm is not None and not float(max_grad_norm) > 0:
        raise ValueError(f"max_grad_norm must be positive or None, got {max_grad_norm!r}")
    limit = np.inf if max_grad_norm is None else float(max_grad_norm)
    value_and_grad = jax.value_and_grad(loss_fn)

    def train_step(order, carry, batch):
        params, opt_state, div, t = carry

        def layer_norms(tree):
            # Log form: a layer whose gradient is 1e-25 in float32 is not reported as 0.
            return _gradients.layer_norms(tree, stacked=stacked, order=order)

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
            shapes = jax.eval_shape(live, None)
            return (
                params,
                opt_state,
                jax.tree_util.tree_map(
                    lambda s: jnp.full(
                        s.shape, jnp.nan if jnp.issubdtype(s.dtype, jnp.inexact) else 0, s.dtype
                    ),
                    shapes[2],
                ),
            )

        new_params, new_state, (loss, bad_now, layer, g_norms, u_norms) = jax.lax.cond(
            div.diverged, dead, live, None
        )
        first = ~div.diverged & bad_now
        ok = ~div.diverged & ~bad_now

        def monitor(_):
            p_norms = layer_norms(params)
            p = p_norms.values
            # ‖Δθ‖/‖θ‖ as a difference of logs: exact even where both norms are tiny.
            ratio = jnp.power(10.0, u_norms.log10 - p_norms.log10)
            rec = {
                "g": g_norms.values,
                "g_log10": g_norms.log10,
                "ratio": jnp.where(p > 0, ratio, u_norms.values),
                "p": p,
                "gnorm": jnp.power(10.0, g_norms.global_log10),
            }
            if state_grad_fn is not None:
                rec["state"] = state_grad_fn(params, batch)
            if eval_fn is not None:
                rec["metrics"] = eval_fn(params)
            return rec

        def skip(_):
            shapes = jax.eval_shape(monitor, None)
            return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

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

    def run(params, batches, opt_state=None) -> FitResult:
        s = _num_steps(batches)
        if opt_state is None:
            opt_state = optimizer.init(params)
        # The layers in the order the forward pass uses them, as gradients.layer_grad_norms.
        order = _gradients.forward_order(loss_fn, params, jax.tree.map(lambda a: a[0], batches))
        n_layers = len(jax.eval_shape(lambda p: _gradients.layer_norms(p, stacked=stacked), params))
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
        div = Divergence(
            diverged=jnp.array(False),
            step=jnp.array(-1, jnp.int32),
            layer=jnp.array(-1, jnp.int32),
            loss_finite=jnp.array(True),
            layer_grad_norms=jnp.zeros((n_layers,), dtype),
        )
        carry = (params, opt_state, div, jnp.array(0, jnp.int32))
        step = functools.partial(train_step, order)
        carry, (losses, rec) = jax.lax.scan(step, carry, batches, length=s)
        rec = jax.tree_util.tree_map(lambda x: x[::monitor_every], rec)
        params, opt_state, div, _ = carry
        history = History(
            loss=losses,
            steps=jnp.arange(0, s, monitor_every),
            layer_grad_norms=rec["g"],
            layer_grad_log10_norms=rec["g_log10"],
            update_ratios=rec["ratio"],
            param_norms=rec["p"],
            global_grad_norm=rec["gnorm"],
            state_grad_norms=rec.get("state"),
            metrics=rec.get("metrics"),
        )
        final = eval_fn(params) if eval_fn is not None else None
        return FitResult(params, opt_state, history, div, final)

    return run


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
) -> FitResult:
    """Trains ``params`` for S steps with an optax optimiser, monitoring the gradients.

    The whole run is one jitted ``lax.scan`` over steps; the monitored quantities are computed
    under a ``lax.cond`` on every ``monitor_every``-th step only. At the first step whose loss
    is non-finite, or whose gradient has a non-finite layer norm (or one above
    ``max_grad_norm``), or whose update is non-finite, the update is skipped and training
    stops; :class:`DivergenceError` is then raised with the step and the layer.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: initial parameters (as from ``model.init``): any pytree of arrays; layers are
        named and ordered as by ``gradients.layer_grad_norms``.
      batches: a pytree whose leaves have a leading axis of S steps; step t gets the t-th slice.
      optimizer: any optax ``GradientTransformation`` (see :func:`sgd`, :func:`adam`,
        :func:`rprop`, :func:`with_clipping`).
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

    Returns:
      :class:`FitResult` with ``.params``, ``.opt_state``, ``.history``, ``.divergence`` and
      ``.final_metrics``.

    Raises:
      DivergenceError: with ``.step``, ``.layer`` and ``.result`` (the run up to that step).
      ValueError, TypeError: for malformed arguments (before anything is traced).
    """
    run = make_fit(
        loss_fn,
        optimizer,
        monitor_every=monitor_every,
        max_grad_norm=max_grad_norm,
        state_grad_fn=state_grad_fn,
        eval_fn=eval_fn,
        stacked=stacked,
    )
    _num_steps(batches)  # validate before tracing
    result = (jax.jit(run) if jit else run)(params, batches, opt_state)
    div = result.divergence
    if bool(div.diverged):
        step, layer, finite = int(div.step), int(div.layer), bool(div.loss_finite)
        norms = np.asarray(div.layer_grad_norms)
        what = (
            "loss is finite"
            if finite
            else "loss itself is non-finite (the forward pass overflowed)"
        )
        where = (
            f"first in back-propagation order at layer {layer} (0 = input layer, "
            f"{norms.shape[0] - 1} = readout)"
            if layer >= 0
            else "no single layer: every gradient is non-finite"
            if not finite
            else "no layer's gradient norm was bad"
        )
        raise DivergenceError(
            f"training diverged at step {step}: {what}; non-finite or exploding gradient "
            f"{where}; per-layer gradient norms there: {np.array2string(norms, precision=3)}. "
            "The returned parameters are those before that step (see .result).",
            step=step,
            layer=layer,
            loss_finite=finite,
            result=result,
        )
    return result
