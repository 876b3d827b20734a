"""Dense spectra, batched over leading axes: singular values, eigenvalues, ρ(A) and κ(A).

The matrix-free top singular values of a Jacobian product (Lanczos on ``jax.jvp``/``jax.vjp``)
live in :mod:`gradflow.matfree`; :class:`TopSingular`, :func:`lanczos_svd`,
:func:`top_singular_values` and :func:`spectral_norm` are re-exported here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gradflow import _checks
from gradflow.matfree.lanczos import TopSingular, lanczos_svd, spectral_norm, top_singular_values

__all__ = [
    "singular_values",
    "spectral_radius",
    "condition_number",
    "eigenvalues",
    "TopSingular",
    "lanczos_svd",
    "top_singular_values",
    "spectral_norm",
]


def singular_values(a) -> jax.Array:
    """Singular values, descending.

    Args:
      a: array ``(..., m, n)``.

    Returns:
      Array ``(..., min(m, n))``.
    """
    return jnp.linalg.svd(_checks.as_matrices("a", a), compute_uv=False)


def eigenvalues(a) -> jax.Array:
    """Complex eigenvalues of square matrices ``(..., n, n)`` -> ``(..., n)``.

    XLA implements the nonsymmetric eigensolver only on CPU, so on other backends the matrices
    are sent to the host (``jax.pure_callback`` into NumPy's LAPACK); the result is the same.
    """
    a = _checks.as_matrices("a", a, square=True)
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

    A matrix counts as singular when σ_min <= σ_max · max(m, n) · eps, NumPy's ``matrix_rank``
    tolerance: below it the computed σ_min is rounding noise (an exactly singular float32 matrix
    such as [[1, 2], [2, 4]] gives σ_min ~ 1e-8, not 0), so any finite κ would be meaningless.

    Args:
      a: array ``(..., m, n)``.

    Returns:
      Array ``(...)``.
    """
    a = _checks.as_matrices("a", a)
    s = singular_values(a)
    smax, smin = s[..., 0], s[..., -1]
    tol = smax * max(a.shape[-2:]) * jnp.finfo(s.dtype).eps
    singular = smin <= tol
    return jnp.where(singular, jnp.inf, smax / jnp.where(singular, 1.0, smin))
