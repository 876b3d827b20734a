"""Small helpers shared by the modules of :mod:`gradflow.monitor` (package-private)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def bad_log10(log10: jax.Array) -> jax.Array:
    """``(...)`` whether any of the ``(..., L)`` log10 norms comes from a NaN or inf entry."""
    # log10 of a norm is NaN for a NaN entry and +inf for an infinite one; −inf (zero) is fine.
    return jnp.any(jnp.isnan(log10) | (log10 == jnp.inf), axis=-1)


def names_arg(arg: str, value) -> tuple[str, ...] | None:
    """``value`` (a sequence of layer names, or None) as a tuple; TypeError naming ``arg``."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{arg} must be a sequence of layer names or None, got {value!r}")
    return tuple(str(v) for v in value)


def is_nnx_variable(x) -> bool:
    # Without flax.nnx imported there can be no nnx Variables (as gradflow.gradients does).
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(x, nnx.Variable)


def as_pure(tree):
    """The tree with every ``nnx.Variable`` replaced by its value (``nnx.as_pure``)."""
    if not any(
        is_nnx_variable(x) for x in jax.tree_util.tree_leaves(tree, is_leaf=is_nnx_variable)
    ):
        return tree
    return sys.modules["flax.nnx"].as_pure(tree)
