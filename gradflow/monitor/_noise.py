"""The noise-scale result types and their log-form estimator (package-private).

Shared by :mod:`gradflow.monitor.noise` (one batch split into micro-batches) and the optax
monitor (EMAs over windows of steps): both form tr Σ, |G|² and B_simple from natural logs of
squared gradient norms, so B_simple stays exact where the squared norms underflow.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import flax.struct
import jax
import numpy as np

from gradflow import _numerics

if TYPE_CHECKING:
    from gradflow.monitor.transform import MonitorState


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


def noise_from_logs(log_small_sq, log_big_sq, b_small: float, b_big: float, xp) -> NoiseScale:
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


def noise_estimate(names, log_small_sq, log_big_sq, b_small, b_big, xp) -> GradientNoiseScale:
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
        layers=noise_from_logs(log_small_sq, log_big_sq, b_small, b_big, xp),
        total=noise_from_logs(total(log_small_sq), total(log_big_sq), b_small, b_big, xp),
        small_sq_log10=log_small_sq / _numerics.LN10,
        big_sq_log10=log_big_sq / _numerics.LN10,
        b_small=b_small,
        b_big=b_big,
    )


def ema_noise_scale(state: MonitorState, xp) -> GradientNoiseScale | None:
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
    return noise_estimate(
        state.stats.names,
        n.log_ema_small - log_correction,
        n.log_ema_big - log_correction,
        b,
        b * state.every,
        xp,
    )
