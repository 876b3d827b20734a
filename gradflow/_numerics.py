"""Log-scale numerics shared by the analyses: safe norms and per-step renormalisation.

Products of many Jacobians, and gradients pulled back through many layers, leave float32's range
(1e-38 … 3e38) long before they stop carrying information. Everything here keeps a direction of
norm 1 and the scale as a logarithm, so nothing under- or overflows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["log_norm", "combine_log_norms", "tree_log_norm", "renormalise", "LN10"]

LN10 = 2.302585092994046  # log(10): log10(x) = log(x) / LN10


def log_norm(x) -> jax.Array:
    """log ‖x‖_F (natural log) of one array, finite wherever ‖x‖ > 0, ``-inf`` for x = 0.

    Squaring entries of 1e-20 underflows in float32 (1e-40 < 1.2e-38), so ``jnp.linalg.norm``
    returns 0 for a gradient that is perfectly representable. Dividing by max|x| first keeps
    every square in [0, 1] and the largest equal to 1.

    Differentiable everywhere: at x = 0 the value is ``-inf`` and the gradient 0, not NaN (a
    zero-initialised bias would otherwise poison any loss written on these norms). The log is
    taken of ones in that case and the result selected away (the "double where").

    Args:
      x: array of any shape.

    Returns:
      Array ``()``.
    """
    x = jnp.asarray(x)
    if x.size == 0:
        return jnp.asarray(-jnp.inf, jnp.result_type(x.dtype, jnp.float32))
    a = jnp.abs(x)
    zero = jnp.max(a) == 0
    a = jax.lax.select(zero, jnp.ones_like(a), a)
    m = jnp.max(a)
    log = jnp.log(m) + 0.5 * jnp.log(jnp.sum(jnp.square(a / m)))
    return jax.lax.select(zero, jnp.full_like(log, -jnp.inf), log)


def combine_log_norms(logs, axis=0) -> jax.Array:
    """log √(Σ exp(2 l_i)) of log-norms l_i along ``axis``: the norm of the concatenation.

    ``½ logsumexp(2 l)`` is exact at any scale, where summing squared norms would underflow.
    """
    return 0.5 * jax.nn.logsumexp(2.0 * jnp.asarray(logs), axis=axis)


def tree_log_norm(tree) -> jax.Array:
    """log √(Σ‖leaf‖²) over a pytree's leaves (natural log), without underflow (:func:`log_norm`).

    Returns:
      Array ``()``; ``-inf`` if every leaf is zero or the tree is empty.
    """
    logs = [log_norm(leaf) for leaf in jax.tree_util.tree_leaves(tree)]
    if not logs:
        return jnp.asarray(-jnp.inf)
    return combine_log_norms(jnp.stack(logs))


def renormalise(x, log_scale):
    """Divides ``x`` by its Frobenius norm and adds log of that norm to ``log_scale``.

    The value ``exp(log_scale) · x`` is unchanged; after the call ‖x‖_F = 1 (or x = 0, and then
    ``log_scale`` becomes ``-inf``).

    Args:
      x: array of any shape.
      log_scale: array ``()``.

    Returns:
      ``(unit, log_scale + log ‖x‖)``.
    """
    nrm = jnp.linalg.norm(x)
    return x / jnp.where(nrm > 0, nrm, 1.0), log_scale + jnp.log(nrm)
