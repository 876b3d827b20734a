"""Argument checks shared by the public API: fail in Python, before tracing, with one message."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["positive_int", "check_finite", "as_float_array", "default_float"]


def positive_int(name: str, value, minimum: int = 1) -> int:
    """Returns ``value`` as an int, or raises naming ``name`` if it is not an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_finite(name: str, tree) -> None:
    """Raises ValueError if any concrete leaf of ``tree`` holds NaN or ±inf (traced leaves pass)."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if _is_concrete(leaf) and jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            # NumPy, not jnp: inside an outer trace (eval_shape, jit of a closure) a jnp op on a
            # concrete constant would itself be traced and could not be tested in Python.
            if not np.all(np.isfinite(np.asarray(leaf))):
                where = jax.tree_util.keystr(path)
                raise ValueError(f"{name}{where} contains non-finite values (NaN or inf)")


def as_float_array(name: str, x, ndims: tuple[int, ...]):
    """Converts to a floating array and checks its rank is one of ``ndims``."""
    try:
        x = jnp.asarray(x)
    except TypeError as exc:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}") from exc
    if x.ndim not in ndims:
        want = " or ".join(str(n) for n in ndims)
        raise ValueError(f"{name} must have {want} dimensions, got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(default_float())
    return x


def default_float():
    """float64 when ``jax_enable_x64`` is on, float32 otherwise."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)
