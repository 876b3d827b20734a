"""Gradient statistics for any training loop: per-layer norms, update ratios, non-finite flags.

:func:`grad_stats` is the jittable core: from the gradients, the optimiser's updates and the
parameters of one step it returns :class:`GradStats`: per-layer (named, forward-ordered when an
``order`` is given, log-scale) gradient norms, update/parameter ratios and parameter norms, the
global gradient norm and a non-finite flag. It is what :func:`gradflow.train.fit` records.

:func:`monitor` is an optax ``GradientTransformation`` that keeps the latest :class:`GradStats`
(every ``every`` steps) and the first non-finite step in its state, in any loop::

    tx = optax.chain(monitor(every=10), optax.adam(1e-3))  # or monitor(optax.adam(1e-3))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)     # or tx.init(params) in a jit loop
    ...
    record = read_monitor(optimizer)                        # host numbers, MonitorRecord

:func:`noise_scale` and :func:`gradient_noise_scale` estimate McCandlish et al.'s gradient
noise scale B_simple = tr Σ / |G|² from two batch sizes, per layer and global; the monitor does
it over windows of steps with ``noise_scale_batch=B``.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradflow import _checks, _numerics
from gradflow import gradients as _gradients

__all__ = [
    "GradStats",
    "grad_stats",
    "stats_from_norms",
    "monitor",
    "MonitorState",
    "NoiseState",
    "MonitorRecord",
    "read_monitor",
    "find_monitor",
    "NoiseScale",
    "GradientNoiseScale",
    "noise_scale",
    "gradient_noise_scale",
]


@flax.struct.dataclass
class GradStats:
    """One step's gradient statistics, per layer and global, kept as log10 so none underflows.

    A pytree whose arrays pass through ``jit``/``vmap``/``lax.scan`` (``names`` is static); under
    ``vmap`` or stacked over steps every array gains leading axes ``(...)``.

    Attributes:
      names: the L layer names (as :func:`gradflow.gradients.named_norms`).
      grad_log10: ``(..., L)`` log10 ‖∂L/∂θ_l‖ (−inf for a zero gradient, NaN/+inf if bad).
      update_log10: ``(..., L)`` log10 ‖Δθ_l‖ of the update the optimiser made.
      param_log10: ``(..., L)`` log10 ‖θ_l‖ of the parameters the update is applied to.
      global_grad_log10: ``(...)`` log10 ‖∂L/∂θ‖ over all layers.
      nonfinite: ``(...)`` bool, whether any gradient or update entry is NaN or ±inf.
    """

    names: tuple[str, ...] = flax.struct.field(pytree_node=False)
    grad_log10: jax.Array
    update_log10: jax.Array
    param_log10: jax.Array
    global_grad_log10: jax.Array
    nonfinite: jax.Array

    @property
    def grad_norms(self) -> jax.Array:
        """``(..., L)`` ‖∂L/∂θ_l‖ (0 only for a zero gradient)."""
        return jnp.power(10.0, self.grad_log10)

    @property
    def param_norms(self) -> jax.Array:
        """``(..., L)`` ‖θ_l‖."""
        return jnp.power(10.0, self.param_log10)

    @property
    def update_ratios(self) -> jax.Array:
        """``(..., L)`` ‖Δθ_l‖ / ‖θ_l‖, as a difference of logs (exact where both are tiny);
        ‖Δθ_l‖ itself for a layer whose parameters are all zero."""
        ratio = jnp.power(10.0, self.update_log10 - self.param_log10)
        return jnp.where(self.param_log10 > -jnp.inf, ratio, jnp.power(10.0, self.update_log10))

    @property
    def global_grad_norm(self) -> jax.Array:
        """``(...)`` ‖∂L/∂θ‖."""
        return jnp.power(10.0, self.global_grad_log10)


def _bad(log10: jax.Array) -> jax.Array:
    # log10 of a norm is NaN for a NaN entry and +inf for an infinite one; −inf (zero) is fine.
    return jnp.any(jnp.isnan(log10) | (log10 == jnp.inf), axis=-1)


def stats_from_norms(
    grads: _gradients.NamedNorms, updates: _gradients.NamedNorms, params: _gradients.NamedNorms
) -> GradStats:
    """:class:`GradStats` from the three :class:`~gradflow.gradients.NamedNorms` of one step.

    Args:
      grads, updates, params: norms with the same ``names`` (``log10`` of shape ``(..., L)``).

    Returns:
      :class:`GradStats`.

    Raises:
      ValueError: if the three do not name the same layers in the same order.
    """
    if not grads.names == updates.names == params.names:
        raise ValueError(
            "grads, updates and params must have the same layers in the same order, got "
            f"{grads.names}, {updates.names} and {params.names}"
        )
    return GradStats(
        names=grads.names,
        grad_log10=grads.log10,
        update_log10=updates.log10,
        param_log10=params.log10,
        global_grad_log10=grads.global_log10,
        nonfinite=_bad(grads.log10) | _bad(updates.log10),
    )


def grad_stats(
    grads,
    updates,
    params,
    *,
    stacked: Sequence[str] | None = None,
    order: Sequence[str] | None = None,
    depth: int = 1,
) -> GradStats:
    """Per-layer gradient norms, update/parameter ratios and parameter norms of one step.

    Jittable: call it inside your own ``jax.jit`` step after ``optimizer.update``. Norms are taken
    in log form (:func:`gradflow._numerics.log_norm`), so a float32 gradient of 1e-25 is not
    reported as 0.

    Args:
      grads: the gradient pytree (linen variables, ``nnx.State``, dicts, …).
      updates: the optimiser's updates, same structure as ``grads``.
      params: the parameters the updates are applied to, same structure.
      stacked: parameter groups stacked on a leading layer axis (see
        :func:`gradflow.gradients.named_norms`; None: ``hidden`` of gradflow's own models only).
      order: layer names in forward order, e.g. from
        ``gradflow.gradients.forward_order(loss_fn, params, batch)``; None: gradflow's default
        (``input, hidden, recurrent, readout``, then natural order).
      depth: number of path components in a layer name, >= 1.

    Returns:
      :class:`GradStats` with arrays of shape ``(L,)`` and ``()``.

    Raises:
      TypeError, ValueError: as :func:`gradflow.gradients.named_norms`.
    """

    def norms(tree):
        return _gradients.named_norms(tree, depth, stacked=stacked, order=order)

    return stats_from_norms(norms(grads), norms(updates), norms(params))


# ------------------------------------------------------------------------------------------------
# gradient noise scale
# ------------------------------------------------------------------------------------------------


class NoiseScale(NamedTuple):
    """The simple gradient noise scale and its two parts (McCandlish et al. 2018, App. A).

    Attributes:
      trace_cov: ``(...)`` tr Σ, the trace of the per-example gradient covariance.
      grad_sq: ``(...)`` |G|², the squared norm of the true (expected) gradient.
      b_simple: ``(...)`` B_simple = tr Σ / |G|², the batch size above which a larger batch
        stops paying for itself (eq. 2.8 of the paper).

    The two parts are unbiased when the squared norms they come from are; B_simple, a ratio,
    is not, and any of the three can be negative when the noise of the inputs exceeds the signal:
    average the squared norms over many batches before forming them.
    """

    trace_cov: jax.Array
    grad_sq: jax.Array
    b_simple: jax.Array


@flax.struct.dataclass
class GradientNoiseScale:
    """Per-layer and global gradient noise scale, with the squared norms it was formed from.

    Attributes:
      names: the L layer names (as :func:`gradflow.gradients.named_norms`).
      layers: :class:`NoiseScale` with arrays of shape ``(..., L)``.
      total: :class:`NoiseScale` of the whole parameter vector, arrays of shape ``(...)``.
      small_sq_log10: ``(..., L)`` log10 |G_small|², the mean squared norm of the small-batch
        gradients.
      big_sq_log10: ``(..., L)`` log10 |G_big|², the squared norm of the big-batch gradient.
      b_small, b_big: the two batch sizes (static).

    To average over several estimates, average ``10 ** small_sq_log10`` and
    ``10 ** big_sq_log10`` and call :func:`noise_scale` on the averages, as McCandlish et al.
    recommend, rather than averaging ``b_simple``.
    """

    names: tuple[str, ...] = flax.struct.field(pytree_node=False)
    layers: NoiseScale
    total: NoiseScale
    small_sq_log10: jax.Array
    big_sq_log10: jax.Array
    b_small: float = flax.struct.field(pytree_node=False)
    b_big: float = flax.struct.field(pytree_node=False)


def _batch_sizes(b_small, b_big) -> tuple[float, float]:
    for name, value in (("b_small", b_small), ("b_big", b_big)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
        if not value > 0 or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number > 0, got {value}")
    if not b_big > b_small:
        raise ValueError(f"b_big must be > b_small, got b_small={b_small}, b_big={b_big}")
    return float(b_small), float(b_big)


def noise_scale(g_small_sq, g_big_sq, b_small, b_big) -> NoiseScale:
    """tr Σ, |G|² and B_simple from squared gradient norms at two batch sizes.

    With E|G_B|² = |G|² + tr Σ / B for the gradient G_B of a batch of B independent examples
    (McCandlish et al. 2018, Appendix A, eq. A.2), the unbiased estimates are

        |G|²  ≈ (B_big |G_big|² − B_small |G_small|²) / (B_big − B_small)
        tr Σ  ≈ (|G_small|² − |G_big|²) / (1/B_small − 1/B_big)

    and B_simple = tr Σ / |G|² (eq. A.3). Jittable; works per layer (arrays) or globally.

    Args:
      g_small_sq: |G_small|², array of any shape ``(...)`` (e.g. ``(L,)`` per layer).
      g_big_sq: |G_big|², same shape.
      b_small: the small batch size, a number > 0.
      b_big: the big batch size, a number > ``b_small``.

    Returns:
      :class:`NoiseScale` with arrays of shape ``(...)``.

    Raises:
      TypeError: if a batch size is not a number.
      ValueError: if a batch size is not > 0, ``b_big <= b_small``, or the shapes differ.

    References:
      McCandlish, Kaplan, Amodei et al., "An Empirical Model of Large-Batch Training",
      arXiv:1812.06162, Appendix A.
    """
    b_small, b_big = _batch_sizes(b_small, b_big)
    g_small_sq, g_big_sq = jnp.asarray(g_small_sq), jnp.asarray(g_big_sq)
    if g_small_sq.shape != g_big_sq.shape:
        raise ValueError(
            "g_small_sq and g_big_sq must have the same shape, got "
            f"{g_small_sq.shape} and {g_big_sq.shape}"
        )
    trace_cov = (g_small_sq - g_big_sq) / (1.0 / b_small - 1.0 / b_big)
    grad_sq = (b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small)
    return NoiseScale(trace_cov=trace_cov, grad_sq=grad_sq, b_simple=trace_cov / grad_sq)


def _noise_from_logs(log_small_sq, log_big_sq, b_small: float, b_big: float, xp) -> NoiseScale:
    """:func:`noise_scale` from natural logs of the squared norms, with ``xp`` numpy or jnp.

    B_simple = B_s B_b (r − 1) / (B_b − B_s r) depends only on r = |G_small|²/|G_big|², taken
    from the difference of the logs: it stays exact when the squared norms themselves underflow
    (a float32 layer gradient of 1e-20 has |g|² = 1e-40); only tr Σ and |G|² may round to 0.
    """
    d = log_small_sq - log_big_sq
    big = xp.exp(log_big_sq)
    rm1 = xp.expm1(d)  # r − 1 without cancellation when r ≈ 1 (large noise scale)
    grad_denominator = b_big - b_small * xp.exp(d)
    return NoiseScale(
        trace_cov=big * rm1 * (b_small * b_big / (b_big - b_small)),
        grad_sq=big * grad_denominator / (b_big - b_small),
        b_simple=b_small * b_big * rm1 / grad_denominator,
    )


def _noise_estimate(names, log_small_sq, log_big_sq, b_small, b_big, xp) -> GradientNoiseScale:
    """Per layer and global, from ``(..., L)`` natural-log squared norms (layers add up)."""

    def total(logs):
        # |g|² of the whole vector is the sum over layers: a log-sum-exp of the logs.
        if xp is np:
            m = np.max(logs, axis=-1, keepdims=True)
            m = np.where(np.isfinite(m), m, 0.0)
            return np.log(np.sum(np.exp(logs - m), axis=-1)) + m[..., 0]
        return jax.nn.logsumexp(logs, axis=-1)

    return GradientNoiseScale(
        names=tuple(names),
        layers=_noise_from_logs(log_small_sq, log_big_sq, b_small, b_big, xp),
        total=_noise_from_logs(total(log_small_sq), total(log_big_sq), b_small, b_big, xp),
        small_sq_log10=log_small_sq / _numerics.LN10,
        big_sq_log10=log_big_sq / _numerics.LN10,
        b_small=b_small,
        b_big=b_big,
    )


def _names_arg(arg: str, value) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{arg} must be a sequence of layer names or None, got {value!r}")
    return tuple(str(v) for v in value)


def _batch_length(batch) -> int:
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves:
        raise TypeError("batch must be a pytree of arrays with a leading batch axis, got no arrays")
    lengths = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if None in lengths or len(lengths) != 1:
        shapes = [np.shape(x) for x in leaves]
        raise ValueError(f"batch: every leaf needs the same leading (batch) length, got {shapes}")
    return lengths.pop()


@functools.partial(jax.jit, static_argnames=("loss_fn", "num_splits", "stacked", "order", "depth"))
def _split_grad_logs(loss_fn, params, batch, num_splits, stacked, order, depth):
    """Natural logs of mean_i |g_i,l|² and |mean_i g_i,l|² over the micro-batches, ``(L,)``."""

    def logs(tree):
        return (
            _gradients.named_norms(tree, depth, stacked=stacked, order=order).log10 * _numerics.LN10
        )

    micro = jax.tree_util.tree_map(
        lambda x: x.reshape((num_splits, x.shape[0] // num_splits) + x.shape[1:]), batch
    )
    grad_fn = jax.grad(loss_fn)

    def body(carry, mb):
        g_sum, log_sq_sum = carry
        g = grad_fn(params, mb)
        return (
            jax.tree_util.tree_map(jnp.add, g_sum, g),
            jnp.logaddexp(log_sq_sum, 2 * logs(g)),
        ), None

    # The first micro-batch starts the sums (so their dtypes are the gradient's); a scan over
    # the others keeps memory at two gradients whatever num_splits is.
    g0 = grad_fn(params, jax.tree_util.tree_map(lambda x: x[0], micro))
    log0 = logs(g0)
    rest = jax.tree_util.tree_map(lambda x: x[1:], micro)
    (g_sum, log_sq_sum), _ = jax.lax.scan(body, (g0, 2 * log0), rest)
    log_small = log_sq_sum - math.log(num_splits)
    log_big = 2 * logs(jax.tree_util.tree_map(lambda s: s / num_splits, g_sum))
    return log_small, log_big


def gradient_noise_scale(
    loss_fn: Callable[[Any, Any], jax.Array],
    params,
    batch,
    *,
    num_splits: int,
    stacked: Sequence[str] | None = None,
    order: Sequence[str] | None = None,
    depth: int = 1,
) -> GradientNoiseScale:
    """Gradient noise scale B_simple = tr Σ / |G|² of one batch, per layer and global.

    The batch of B examples is split into ``num_splits`` micro-batches of B_small =
    B / num_splits. |G_small|² is the *mean* over the micro-batches of their squared gradient
    norms (same expectation as one micro-batch, lower variance); |G_big|² is the squared norm of
    the whole batch's gradient, B_big = B, taken as the mean of the micro-batch gradients (equal
    to ``jax.grad`` of the whole batch for a loss that is the mean over examples). Both enter
    :func:`noise_scale` in log form, so B_simple is exact even for layers whose squared
    gradient norm underflows. One ``jax.grad`` per micro-batch in a ``lax.scan``: memory is two
    gradients whatever ``num_splits``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the *mean* of per-example losses (the
        estimator assumes independent examples). Jitted as a static argument: pass the same
        function object to avoid recompiling.
      params: a pytree of arrays.
      batch: a pytree of arrays sharing a leading batch axis of length B.
      num_splits: number of micro-batches, >= 2, dividing B.
      stacked: groups stacked on a leading layer axis (see
        :func:`gradflow.gradients.named_norms`).
      order: layer names in forward order; None: traced from ``loss_fn`` with
        :func:`gradflow.gradients.forward_order` (as :func:`gradflow.gradients.layer_grad_norms`).
      depth: number of path components in a layer name, >= 1.

    Returns:
      :class:`GradientNoiseScale` with ``b_small = B / num_splits``, ``b_big = B``; per-layer
      arrays of shape ``(L,)``, global ``()``.

    Raises:
      TypeError: if ``loss_fn`` is not callable, ``batch`` holds no arrays, or
        ``stacked``/``order`` are not sequences of names.
      ValueError: if ``num_splits`` < 2 or does not divide the batch length, the batch leaves'
        leading lengths differ, or ``depth`` < 1.

    References:
      McCandlish, Kaplan, Amodei et al., "An Empirical Model of Large-Batch Training",
      arXiv:1812.06162, Appendix A.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    num_splits = _checks.positive_int("num_splits", num_splits, minimum=2)
    depth = _checks.positive_int("depth", depth)
    stacked, order = _names_arg("stacked", stacked), _names_arg("order", order)
    b = _batch_length(batch)
    if b % num_splits:
        raise ValueError(f"num_splits ({num_splits}) must divide the batch length {b}")
    if order is None:
        order = _gradients.forward_order(loss_fn, params, batch, depth=depth)
    names = jax.eval_shape(
        lambda p: _gradients.named_norms(p, depth, stacked=stacked, order=order), params
    ).names
    log_small, log_big = _split_grad_logs(loss_fn, params, batch, num_splits, stacked, order, depth)
    return _noise_estimate(names, log_small, log_big, b / num_splits, float(b), jnp)


# ------------------------------------------------------------------------------------------------
# the optax monitor
# ------------------------------------------------------------------------------------------------


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
        return _monitor_noise(self, jnp)


def _monitor_noise(state: MonitorState, xp) -> GradientNoiseScale | None:
    """The noise scale from a :class:`MonitorState`'s EMAs, computed with ``xp`` (numpy/jnp)."""
    if state.noise is None:
        return None
    n = state.noise
    # EMA bias correction (as Adam's): the EMA started at 0, so divide by 1 − β^windows; before
    # the first window this is 0/0, NaN.
    if state.noise_ema == 0.0:
        log_correction = xp.where(n.windows > 0, 0.0, -xp.inf)
    else:
        log_correction = xp.log(-xp.expm1(n.windows * math.log(state.noise_ema)))
    log_correction = xp.expand_dims(log_correction, -1)  # windows (...) against layers (..., L)
    b = float(state.noise_scale_batch)
    return _noise_estimate(
        state.stats.names,
        n.log_ema_small - log_correction,
        n.log_ema_big - log_correction,
        b,
        b * state.every,
        xp,
    )


def _is_nnx_variable(x) -> bool:
    # Without flax.nnx imported there can be no nnx Variables (as gradflow.gradients does).
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(x, nnx.Variable)


def _pure(tree):
    """The tree with every ``nnx.Variable`` replaced by its value (``nnx.as_pure``)."""
    if not any(
        _is_nnx_variable(x) for x in jax.tree_util.tree_leaves(tree, is_leaf=_is_nnx_variable)
    ):
        return tree
    return sys.modules["flax.nnx"].as_pure(tree)


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
    stacked, order = _names_arg("stacked", stacked), _names_arg("order", order)
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
        bad = _bad(g.log10)
        if prev_params is not None:
            valid = count >= 1
            u = norms(jax.tree_util.tree_map(jnp.subtract, params, prev_params))
            update_log10 = jnp.where(valid, u.log10, nan)
            update_param_log10 = jnp.where(valid, norms(prev_params).log10, nan)
            update_step = jnp.where(valid, count - 1, -1).astype(jnp.int32)
            bad = bad | (valid & _bad(u.log10))
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
        pure = _pure(params)
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


class MonitorRecord(NamedTuple):
    """The latest record of a :func:`monitor`, as host (NumPy) values. L layers.

    Attributes:
      step: the 0-based step the record was taken at (−1: no step monitored yet; arrays NaN).
      count: number of updates the monitor has seen.
      names: the L layer names.
      grad_norms: ``(L,)`` ‖∂L/∂θ_l‖ (float64, so tiny norms do not underflow).
      grad_log10: ``(L,)`` log10 of ``grad_norms``.
      update_ratios: ``(L,)`` ‖Δθ_l‖/‖θ_l‖ of the update of step ``update_step`` (‖Δθ_l‖ for an
        all-zero layer); NaN when the monitor could not see it (chain mode).
      update_log10: ``(L,)`` log10 ‖Δθ_l‖ (NaN when unseen).
      update_step: the step whose update ``update_ratios`` describe (−1: none).
      param_norms: ``(L,)`` ‖θ_l‖ at step ``step``.
      global_grad_norm: ‖∂L/∂θ‖ at step ``step``.
      nonfinite: whether step ``step`` had a NaN/inf gradient (or update).
      first_nonfinite_step: the first step with a NaN/inf gradient or update, −1 if none.
      noise: :class:`GradientNoiseScale` (NumPy float64) with ``noise_scale_batch``, else None.
      noise_windows: number of completed noise-scale windows (0 without the option).
    """

    step: int
    count: int
    names: tuple[str, ...]
    grad_norms: np.ndarray
    grad_log10: np.ndarray
    update_ratios: np.ndarray
    update_log10: np.ndarray
    update_step: int
    param_norms: np.ndarray
    global_grad_norm: float
    nonfinite: bool
    first_nonfinite_step: int
    noise: GradientNoiseScale | None
    noise_windows: int


def find_monitor(opt_state, *, index: int = 0) -> MonitorState:
    """The ``index``-th :class:`MonitorState` (in tree order) inside an optimiser state.

    Searches nested ``optax.chain`` tuples, ``optax.MultiSteps``, ``inject_hyperparams`` and any
    other pytree state; accepts an ``nnx.Optimizer`` (or anything with an ``opt_state``
    attribute, e.g. a flax ``TrainState``) and unwraps nnx Variables. Jittable.

    Args:
      opt_state: an optax state, an ``nnx.Optimizer`` or its ``opt_state``.
      index: which monitor, when there are several (0: the outermost first).

    Returns:
      :class:`MonitorState` with plain array leaves.

    Raises:
      ValueError: if ``opt_state`` holds no monitor, or fewer than ``index + 1``.
    """
    index = _checks.positive_int("index", index, minimum=0)
    tree = opt_state
    if not isinstance(tree, MonitorState) and hasattr(tree, "opt_state"):
        tree = tree.opt_state

    def is_monitor(x):
        return isinstance(x, MonitorState)

    found = [x for x in jax.tree_util.tree_leaves(tree, is_leaf=is_monitor) if is_monitor(x)]
    if len(found) <= index:
        raise ValueError(
            f"opt_state holds {len(found)} monitor state(s), index {index} asked for: build the "
            "optimiser with gradflow's monitor(), e.g. optax.chain(monitor(), optax.adam(1e-3))"
        )
    return _pure(found[index])


def read_monitor(opt_state, *, index: int = 0) -> MonitorRecord:
    """The latest record of a :func:`monitor`, as host values.

    Args:
      opt_state: an optax state holding a :class:`MonitorState` anywhere (see
        :func:`find_monitor`), an ``nnx.Optimizer``, or its ``opt_state``.
      index: which monitor, when there are several.

    Returns:
      :class:`MonitorRecord` (NumPy arrays ``(L,)``, float64).

    Raises:
      ValueError: if ``opt_state`` holds no monitor.

    Example::

        tx = optax.chain(gf.train.monitor(every=10), optax.adam(1e-3))
        ...
        rec = gf.train.read_monitor(opt_state)
        print(rec.step, dict(zip(rec.names, rec.grad_norms)))
    """
    state = find_monitor(opt_state, index=index)
    # Only the record crosses to the host, not the parameter-sized buffers.
    if state.noise is not None:
        state = state.replace(noise=state.noise.replace(grad_sum=None))
    state = jax.device_get(state.replace(inner_state=None, prev_params=None))
    s = state.stats
    f64 = lambda x: np.asarray(x, np.float64)
    grad_log10, update_log10 = f64(s.grad_log10), f64(s.update_log10)
    applied_log10 = f64(state.update_param_log10)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        # As GradStats.update_ratios: ‖Δθ‖ itself for a layer whose parameters are all zero.
        ratio_log10 = np.where(applied_log10 > -np.inf, update_log10 - applied_log10, update_log10)
        if state.noise is not None:
            state = state.replace(
                noise=state.noise.replace(
                    log_ema_small=f64(state.noise.log_ema_small),
                    log_ema_big=f64(state.noise.log_ema_big),
                    windows=np.asarray(state.noise.windows),
                )
            )
        noise = _monitor_noise(state, np)
    return MonitorRecord(
        step=int(state.record_step),
        count=int(state.count),
        names=s.names,
        grad_norms=10.0**grad_log10,
        grad_log10=grad_log10,
        update_ratios=10.0**ratio_log10,
        update_log10=update_log10,
        update_step=int(state.update_step),
        param_norms=10.0 ** f64(s.param_log10),
        global_grad_norm=float(10.0 ** f64(s.global_grad_log10)),
        nonfinite=bool(s.nonfinite),
        first_nonfinite_step=int(state.first_nonfinite_step),
        noise=noise,
        noise_windows=0 if state.noise is None else int(state.noise.windows),
    )
