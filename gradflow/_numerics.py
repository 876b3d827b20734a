"""Log-scale numerics shared by the analyses: safe norms and per-step renormalisation.

Products of many Jacobians, and gradients pulled back through many layers, leave float32's range
(1e-38 … 3e38) long before they stop carrying information. Everything here keeps a direction of
norm 1 and the scale as a logarithm, so nothing under- or overflows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["log_norm", "tree_log_norm", "renormalise", "LN10"]

LN10 = 2.302585092994046  # log(10): log10(x) = log(x) / LN10


def log_norm(x) -> jax.Array:
    """log ‖x‖_F (natural log) of one array, finite wherever ‖x‖ > 0, ``-inf`` for x = 0.

    Squaring entries of 1e-20 underflows in float32 (1e-40 < 1.2e-38), so ``jnp.linalg.norm``
    returns 0 for a gradient that is perfectly representable. Dividing by max|x| first keeps
    every square in [0, 1] and the largest equal to 1.

    Args:
      x: array of any shape.

    Returns:
      Array ``()``.
    """
    x = jnp.asarray(x)
    if x.size == 0:
        return jnp.asarray(-jnp.inf, jnp.result_type(x.dtype, jnp.float32))
    a = jnp.abs(x)
    m = jnp.max(a)
    safe = jnp.where(m > 0, m, 1.0)
    return jnp.log(m) + 0.5 * jnp.log(jnp.sum(jnp.square(a / safe)))


def tree_log_norm(tree) -> jax.Array:
    """log √(Σ‖leaf‖²) over a pytree's leaves (natural log), without underflow (:func:`log_norm`).

    Returns:
      Array ``()``; ``-inf`` if every leaf is zero or the tree is empty.
    """
    logs = [log_norm(leaf) for leaf in jax.tree_util.tree_leaves(tree)]
    if not logs:
        return jnp.asarray(-jnp.inf)
    # log √(Σ exp(2 l_i)) = ½ logsumexp(2 l): exact at any scale.
    return 0.5 * jax.nn.logsumexp(2.0 * jnp.stack(logs))


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
