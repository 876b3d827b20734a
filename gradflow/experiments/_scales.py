"""Initialisation scales as arguments: parameters drawn once at unit scale, rescaled per (σ_w, σ_b).

A kernel drawn by ``init.gaussian(1.0)`` (or ``init.orthogonal(1.0)``,
``init.delta_orthogonal(1.0)``) and multiplied by σ_w is exactly the draw of the same
initialiser at σ_w with the same key (all draw σ · W₀), and likewise for ``init.gaussian_bias``.
Scaling inside a jitted function therefore lets one compilation cover every (σ_w, σ_b) of a
figure, with σ_w and σ_b traced, instead of one compilation per value.
"""

from __future__ import annotations

import jax

__all__ = ["rescaled"]


def rescaled(params, sigma_w, sigma_b):
    """Every ``kernel`` leaf of ``params`` times σ_w and every other leaf times σ_b.

    Args:
      params: a pytree of dicts whose leaves are kernels (key ``"kernel"``) and biases, drawn at
        σ_w = σ_b = 1.
      sigma_w, sigma_b: scalars (Python or traced).

    Returns:
      A pytree like ``params``.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf * (sigma_w if path[-1].key == "kernel" else sigma_b), params
    )
