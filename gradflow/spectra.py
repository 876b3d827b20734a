"""Singular values, spectral radius and condition number, batched over leading axes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["singular_values", "spectral_radius", "condition_number", "eigenvalues"]


def _as_matrices(name: str, a, square: bool = False) -> jax.Array:
    a = jnp.asarray(a)
    if a.ndim < 2:
        raise ValueError(f"{name} must have shape (..., m, n), got {a.shape}")
    if square and a.shape[-1] != a.shape[-2]:
        raise ValueError(f"{name} must be square, shape (..., n, n); got {a.shape}")
    if not jnp.issubdtype(a.dtype, jnp.inexact):
        a = a.astype(jax.dtypes.canonicalize_dtype(jnp.float64))
    return a


def singular_values(a) -> jax.Array:
    """Singular values, descending.

    Args:
      a: array ``(..., m, n)``.

    Returns:
      Array ``(..., min(m, n))``.
    """
    return jnp.linalg.svd(_as_matrices("a", a), compute_uv=False)


def eigenvalues(a) -> jax.Array:
    """Complex eigenvalues of square matrices ``(..., n, n)`` -> ``(..., n)``.

    XLA implements the nonsymmetric eigensolver only on CPU, so on other backends the matrices
    are sent to the host (``jax.pure_callback`` into NumPy's LAPACK); the result is the same.
    """
    a = _as_matrices("a", a, square=True)
    if jax.default_backend() == "cpu":
        return jnp.linalg.eigvals(a)
    ctype = jnp.result_type(a.dtype, jnp.complex64)
    out = jax.ShapeDtypeStruct(a.shape[:-1], ctype)
    return jax.pure_callback(
        lambda m: np.linalg.eigvals(np.asarray(m)).astype(ctype), out, a, vmap_method="expand_dims"
    )


def spectral_radius(a) -> jax.Array:
    """ρ(A) = max |λ_i|, the largest eigenvalue modulus.

    Args:
      a: array ``(..., n, n)``.

    Returns:
      Array ``(...)``.
    """
    return jnp.max(jnp.abs(eigenvalues(a)), axis=-1)


def condition_number(a) -> jax.Array:
    """κ(A) = σ_max/σ_min (``inf`` for a singular matrix).

    Args:
      a: array ``(..., m, n)``.

    Returns:
      Array ``(...)``.
    """
    s = singular_values(a)
    smax, smin = s[..., 0], s[..., -1]
    return jnp.where(smin > 0, smax / jnp.where(smin > 0, smin, 1.0), jnp.inf)
