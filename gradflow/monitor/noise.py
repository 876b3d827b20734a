"""McCandlish et al.'s gradient noise scale B_simple = tr Σ / |G|² from two batch sizes:
:func:`noise_scale` from squared norms, :func:`gradient_noise_scale` from one batch."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradflow import _checks, _numerics
from gradflow import gradients as _gradients
from gradflow.monitor._common import names_arg
from gradflow.monitor._noise import GradientNoiseScale, NoiseScale, noise_estimate

__all__ = ["NoiseScale", "GradientNoiseScale", "noise_scale", "gradient_noise_scale"]


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
    stacked, order = names_arg("stacked", stacked), names_arg("order", order)
    b = _batch_length(batch)
    if b % num_splits:
        raise ValueError(f"num_splits ({num_splits}) must divide the batch length {b}")
    if order is None:
        order = _gradients.forward_order(loss_fn, params, batch, depth=depth)
    names = jax.eval_shape(
        lambda p: _gradients.named_norms(p, depth, stacked=stacked, order=order), params
    ).names
    log_small, log_big = _split_grad_logs(loss_fn, params, batch, num_splits, stacked, order, depth)
    return noise_estimate(names, log_small, log_big, b / num_splits, float(b), jnp)
