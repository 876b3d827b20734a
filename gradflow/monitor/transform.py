"""The optax transformation :func:`monitor` and its state (:class:`MonitorState`,
:class:`NoiseState`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradflow import _checks, _numerics
from gradflow import gradients as _gradients
from gradflow.monitor._common import as_pure, bad_log10, names_arg
from gradflow.monitor._noise import GradientNoiseScale, ema_noise_scale
from gradflow.monitor.stats import GradStats, grad_stats

__all__ = ["monitor", "MonitorState", "NoiseState"]


@flax.struct.dataclass
class NoiseState:
    """The monitor's running sums for the gradient noise scale (``noise_scale_batch`` set).

    Attributes:
      grad_sum: Σ_t g_t over the current window, shaped as the parameters (float32 or wider).
      log_sq_sum: ``(L,)`` ln Σ_t |g_t,l|² over the current window.
      log_ema_small: ``(L,)`` ln of the (not bias-corrected) EMA over windows of |G_small|².
      log_ema_big: ``(L,)`` ln of the EMA of |G_big|².
      windows: ``()`` int32, number of completed windows.
    """

    grad_sum: Any
    log_sq_sum: jax.Array
    log_ema_small: jax.Array
    log_ema_big: jax.Array
    windows: jax.Array


@flax.struct.dataclass
class MonitorState:
    """The optax state of :func:`monitor`: the latest record, and the wrapped optimiser's state.

    A pytree (static configuration and layer names are metadata), so it passes through ``jit``
    and sharding like any optax state. Read it with :func:`read_monitor` (host numbers) or
    :func:`find_monitor` (inside ``jit``).

    Attributes:
      count: ``()`` int32, number of updates seen (the 0-based index of the next step).
      record_step: ``()`` int32, the step of ``stats`` (−1 before the first monitored step).
      stats: :class:`GradStats` of step ``record_step``, arrays ``(L,)``.
      update_step: ``()`` int32, the step whose update ``stats.update_log10`` describes
        (``record_step`` when wrapping; ``record_step − 1`` in chain mode with
        ``realised_updates``; −1 when unknown, with NaN updates).
      update_param_log10: ``(L,)`` log10 ‖θ_l‖ of the parameters that update was applied to.
      first_nonfinite_step: ``()`` int32, the first step with a NaN/inf gradient (or update,
        when wrapping), −1 if none; checked on every step.
      inner_state: the wrapped optimiser's state (None in chain mode).
      prev_params: chain mode with ``realised_updates``: the parameters of the step before the
        next monitored one; else None.
      noise: :class:`NoiseState`, or None without ``noise_scale_batch``.
      every, noise_scale_batch, noise_ema: the monitor's configuration (static).
    """

    count: jax.Array
    record_step: jax.Array
    stats: GradStats
    update_step: jax.Array
    update_param_log10: jax.Array
    first_nonfinite_step: jax.Array
    inner_state: Any
    prev_params: Any
    noise: NoiseState | None
    every: int = flax.struct.field(pytree_node=False)
    noise_scale_batch: int | None = flax.struct.field(pytree_node=False)
    noise_ema: float = flax.struct.field(pytree_node=False)

    def noise_scale(self) -> GradientNoiseScale | None:
        """The gradient noise scale from the bias-corrected EMAs (jittable; arrays ``(L,)``),
        None without ``noise_scale_batch``; NaN before the first complete window."""
        return ema_noise_scale(self, jnp)


def _any_nonfinite(tree) -> jax.Array:
    bad = [
        ~jnp.all(jnp.isfinite(x))
        for x in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    ]
    return jnp.any(jnp.stack(bad)) if bad else jnp.array(False)


def _fill(shapes):
    """NaN for floats, −1 for ints, False for bools: the "no record yet" value of each leaf."""

    def full(s):
        if jnp.issubdtype(s.dtype, jnp.inexact):
            return jnp.full(s.shape, jnp.nan, s.dtype)
        return jnp.full(s.shape, False if s.dtype == jnp.bool_ else -1, s.dtype)

    return jax.tree_util.tree_map(full, shapes)


def monitor(
    inner: optax.GradientTransformation | None = None,
    *,
    every: int = 1,
    stacked: Sequence[str] | None = None,
    order: Sequence[str] | None = None,
    depth: int = 1,
    realised_updates: bool = False,
    noise_scale_batch: int | None = None,
    noise_ema: float = 0.9,
) -> optax.GradientTransformationExtraArgs:
    """An optax transformation that records per-layer gradient statistics in its state.

    It passes updates through unchanged and keeps, in its :class:`MonitorState`, the
    :class:`GradStats` of the latest monitored step (per-layer named, log-scale gradient norms,
    update/parameter ratios, parameter norms, global gradient norm, non-finite flag) and
    ``first_nonfinite_step``. Read it with :func:`read_monitor`. Two ways to use it:

    **Wrapping** (exact update ratios)::

        tx = gf.train.monitor(optax.adam(1e-3), every=10)

    The monitor calls the inner optimiser and returns *its* updates bit for bit; it sees the
    gradients, the final updates and the parameters of the same step, so the update ratios
    ‖Δθ_l‖/‖θ_l‖ are exactly those of the step recorded.

    **In a chain** (first, so that it sees the raw gradients)::

        tx = optax.chain(gf.train.monitor(every=10), optax.adam(1e-3))
        # nnx: nnx.Optimizer(model, tx, wrt=nnx.Param); read_monitor(optimizer)

    Here the monitor cannot see this step's final update (it is computed after it), and it
    never reports a guess: by default the update norms and ratios are NaN and ``update_step``
    is −1. With ``realised_updates=True`` it keeps a copy of the parameters (1× parameter
    memory) from the step before each monitored step t and reports the *previous* step's
    realised update, ‖θ_t − θ_{t−1}‖ / ‖θ_{t−1}‖ (``update_step = t − 1``; NaN at t = 0), which
    is the update of step t − 1 as applied (including anything done to the parameters outside
    the optimiser). Prefer wrapping when the ratios matter.

    The monitored quantities are computed only on steps 0, ``every``, 2·``every``, … under a
    ``lax.cond`` on the step count (so the other steps pay nothing; under ``vmap`` a cond with
    a batched predicate computes both branches), inside ``jit`` and under sharding: no host
    callbacks, no Python-side state. The non-finite check (one pass over the gradients and
    updates) runs on every step, so a NaN at step k sets ``first_nonfinite_step = k`` for any
    ``every``. In chain mode it checks the gradients only (a NaN update from finite gradients
    shows one step later, in the gradients of the NaN parameters).

    Layer order: a monitor never sees the loss, so it cannot trace which layer the forward pass
    uses first; pass ``order=gf.gradients.forward_order(loss_fn, params, batch)`` for forward
    order, else gradflow's default (``input, hidden, recurrent, readout``, then natural order).

    **Gradient noise scale** (``noise_scale_batch=B``, the per-step batch size): over each
    window of ``every`` steps the monitor sums the gradients and the squared norms |g_t|²;
    at the window's end the mean |g_t|² is |G_small|² (B_small = B) and the squared norm of the
    mean gradient is |G_big|² (B_big = ``every``·B). This assumes the parameters move little
    within a window: drift adds the spread of the true gradient over the window to tr Σ (an
    overestimate). EMAs of the two squared norms (per layer, in log form; weight
    ``noise_ema`` per window, bias-corrected) give tr Σ, |G|² and B_simple by
    :func:`noise_scale`, forming the ratio of the averages as McCandlish et al. recommend.
    Costs one parameter-sized buffer and one pass over the gradients per step. Needs
    ``every >= 2``.

    Args:
      inner: the optimiser to wrap, or None to pass the incoming updates through (chain mode).
      every: monitor every this many steps (step 0 first), >= 1.
      stacked: parameter groups stacked on a leading layer axis (see
        :func:`gradflow.gradients.named_norms`).
      order: layer names in forward order (see above); None: gradflow's default.
      depth: number of path components in a layer name, >= 1.
      realised_updates: chain mode only: report the previous step's realised update (see
        above), at the cost of a copy of the parameters.
      noise_scale_batch: the per-step batch size B to estimate the gradient noise scale, or
        None (off).
      noise_ema: EMA weight of the past per window, in [0, 1).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` (extra arguments go to ``inner``). Its
      ``update`` needs ``params``.

    Raises:
      TypeError: if ``inner`` is not an ``optax.GradientTransformation``, or an option has the
        wrong type.
      ValueError: if ``every`` < 1, ``depth`` < 1, ``noise_scale_batch`` < 1, ``noise_ema`` is
        outside [0, 1), ``noise_scale_batch`` is set with ``every`` < 2, or
        ``realised_updates`` is set with ``inner``.

    References:
      McCandlish, Kaplan, Amodei et al., "An Empirical Model of Large-Batch Training",
      arXiv:1812.06162, Appendix A (the noise scale).
    """
    if inner is not None and not isinstance(inner, optax.GradientTransformation):
        raise TypeError(
            f"inner must be an optax.GradientTransformation or None, got {type(inner).__name__}"
        )
    every = _checks.positive_int("every", every)
    depth = _checks.positive_int("depth", depth)
    stacked, order = names_arg("stacked", stacked), names_arg("order", order)
    if not isinstance(realised_updates, bool):
        raise TypeError(f"realised_updates must be a bool, got {realised_updates!r}")
    if realised_updates and inner is not None:
        raise ValueError(
            "realised_updates is for chain mode (inner=None); a monitor wrapping inner sees "
            "the exact updates of the same step"
        )
    if noise_scale_batch is not None:
        noise_scale_batch = _checks.positive_int("noise_scale_batch", noise_scale_batch)
        if every < 2:
            raise ValueError(
                "noise_scale_batch needs every >= 2 (B_big = every·B must exceed B_small = B), "
                f"got every={every}"
            )
    if isinstance(noise_ema, bool) or not isinstance(noise_ema, (int, float, np.floating)):
        raise TypeError(f"noise_ema must be a number, got {noise_ema!r}")
    if not 0.0 <= noise_ema < 1.0:
        raise ValueError(f"noise_ema must be in [0, 1), got {noise_ema}")
    noise_ema = float(noise_ema)
    inner = None if inner is None else optax.with_extra_args_support(inner)

    def norms(tree):
        return _gradients.named_norms(tree, depth, stacked=stacked, order=order)

    def measure(grads, updates, params, prev_params, count):
        """``(GradStats, update_step, update_param_log10)`` of this step."""
        if inner is not None:
            stats = grad_stats(grads, updates, params, stacked=stacked, order=order, depth=depth)
            return stats, count, stats.param_log10
        g, p = norms(grads), norms(params)
        nan = jnp.full_like(p.log10, jnp.nan)
        update_log10, update_param_log10, update_step = nan, nan, jnp.int32(-1)
        bad = bad_log10(g.log10)
        if prev_params is not None:
            valid = count >= 1
            u = norms(jax.tree_util.tree_map(jnp.subtract, params, prev_params))
            update_log10 = jnp.where(valid, u.log10, nan)
            update_param_log10 = jnp.where(valid, norms(prev_params).log10, nan)
            update_step = jnp.where(valid, count - 1, -1).astype(jnp.int32)
            bad = bad | (valid & bad_log10(u.log10))
        stats = GradStats(
            names=g.names,
            grad_log10=g.log10,
            update_log10=update_log10,
            param_log10=p.log10,
            global_grad_log10=g.global_log10,
            nonfinite=bad,
        )
        return stats, update_step, update_param_log10

    def init_fn(params):
        pure = as_pure(params)
        count = jnp.zeros((), jnp.int32)
        prev = None
        if realised_updates:
            prev = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), pure)
        stats, update_step, update_param_log10 = _fill(
            jax.eval_shape(lambda p, q: measure(p, p, p, q, count), pure, prev)
        )
        noise = None
        if noise_scale_batch is not None:
            minus_inf = jnp.full_like(stats.grad_log10, -jnp.inf)
            noise = NoiseState(
                # zeros_like keeps the parameters' sharding
                grad_sum=jax.tree_util.tree_map(
                    lambda x: jnp.zeros_like(x, jnp.promote_types(x.dtype, jnp.float32)), pure
                ),
                log_sq_sum=minus_inf,
                log_ema_small=minus_inf,
                log_ema_big=minus_inf,
                windows=count,
            )
        return MonitorState(
            count=count,
            record_step=jnp.full((), -1, jnp.int32),
            stats=stats,
            update_step=update_step,
            update_param_log10=update_param_log10,
            first_nonfinite_step=jnp.full((), -1, jnp.int32),
            inner_state=None if inner is None else inner.init(params),
            prev_params=prev,
            noise=noise,
            every=every,
            noise_scale_batch=noise_scale_batch,
            noise_ema=noise_ema,
        )

    def update_noise(noise: NoiseState, grads, count) -> NoiseState:
        log_g = norms(grads).log10 * _numerics.LN10
        grad_sum = jax.tree_util.tree_map(lambda s, g: s + g.astype(s.dtype), noise.grad_sum, grads)
        log_sq_sum = jnp.logaddexp(noise.log_sq_sum, 2 * log_g)

        def close(_):
            # |G_small|² = mean_t |g_t|² (B_small = B); |G_big|² = |mean_t g_t|² (every·B).
            log_small = log_sq_sum - math.log(every)
            log_big = 2 * norms(grad_sum).log10 * _numerics.LN10 - 2 * math.log(every)
            # EMA in log form: ln(β e^a + (1 − β) e^b) never underflows.
            log_beta = math.log(noise_ema) if noise_ema > 0 else -math.inf
            log_1mb = math.log1p(-noise_ema)
            return NoiseState(
                grad_sum=jax.tree_util.tree_map(jnp.zeros_like, grad_sum),
                log_sq_sum=jnp.full_like(log_sq_sum, -jnp.inf),
                log_ema_small=jnp.logaddexp(log_beta + noise.log_ema_small, log_1mb + log_small),
                log_ema_big=jnp.logaddexp(log_beta + noise.log_ema_big, log_1mb + log_big),
                windows=noise.windows + 1,
            )

        def carry(_):
            return noise.replace(grad_sum=grad_sum, log_sq_sum=log_sq_sum)

        return jax.lax.cond(count % every == every - 1, close, carry, None)

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(
                "monitor needs params: call tx.update(grads, opt_state, params) "
                "(nnx.Optimizer passes them)"
            )
        if not isinstance(state, MonitorState):
            raise TypeError(f"state must be the monitor's MonitorState, got {type(state).__name__}")
        grads = updates
        inner_state = state.inner_state
        if inner is not None:
            updates, inner_state = inner.update(grads, inner_state, params, **extra_args)
        count = state.count
        bad = _any_nonfinite(grads)
        if inner is not None:
            bad = bad | _any_nonfinite(updates)
        first = jnp.where((state.first_nonfinite_step < 0) & bad, count, state.first_nonfinite_step)

        def fresh(_):
            return measure(grads, updates, params, state.prev_params, count)

        def keep(_):
            return state.stats, state.update_step, state.update_param_log10

        names = jax.eval_shape(fresh, None)[0].names
        if names != state.stats.names:
            raise ValueError(
                f"the gradients' layers {names} differ from those the monitor was initialised "
                f"with, {state.stats.names}"
            )
        if every == 1:
            stats, update_step, update_param_log10 = fresh(None)
        else:
            stats, update_step, update_param_log10 = jax.lax.cond(
                count % every == 0, fresh, keep, None
            )
        prev = state.prev_params
        if prev is not None:
            # θ_{t−1} is needed at monitored steps t only: copy on the step before each.
            prev = (
                jax.lax.cond((count + 1) % every == 0, lambda _: params, lambda _: prev, None)
                if every > 1
                else params
            )
        noise = state.noise if state.noise is None else update_noise(state.noise, grads, count)
        new_state = state.replace(
            count=count + 1,
            record_step=jnp.where(count % every == 0, count, state.record_step),
            stats=stats,
            update_step=update_step,
            update_param_log10=update_param_log10,
            first_nonfinite_step=first,
            inner_state=inner_state,
            prev_params=prev,
            noise=noise,
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
