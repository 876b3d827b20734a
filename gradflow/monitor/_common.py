"""Small helpers shared by the modules of :mod:`gradflow.monitor` (package-private)."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp

from gradflow import _checks


def bad_log10(log10: jax.Array) -> jax.Array:
    """``(...)`` whether any of the ``(..., L)`` log10 norms comes from a NaN or inf entry."""
    # log10 of a norm is NaN for a NaN entry and +inf for an infinite one; −inf (zero) is fine.
    return jnp.any(jnp.isnan(log10) | (log10 == jnp.inf), axis=-1)


def names_arg(arg: str, value) -> tuple[str, ...] | None:
    """``value`` (a sequence of layer names, or None) as a tuple; TypeError naming ``arg``."""
    return _checks.names_or_none(arg, value, "layer names")


def as_pure(tree):
    """The tree with every ``nnx.Variable`` replaced by its value (``nnx.as_pure``)."""
    if not any(
        _checks.is_nnx_variable(x)
        for x in jax.tree_util.tree_leaves(tree, is_leaf=_checks.is_nnx_variable)
    ):
        return tree
    return sys.modules["flax.nnx"].as_pure(tree)
