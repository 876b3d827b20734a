"""Closed forms to overlay on measurements (Pascanu's bounds, Newman's exponents, free probability)."""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.special import digamma

from gradflow import _checks

__all__ = ["newman_lyapunov_exponents"]


def newman_lyapunov_exponents(n: int, sigma2: float = 1.0):
    """Exact Lyapunov spectrum of products of i.i.d. n×n Gaussian matrices, entries N(0, σ²/n).

    λ_i = ½ [log(2σ²/n) + ψ((n − i + 1)/2)], i = 1 … n (descending), with ψ the digamma function —
    Newman 1986, "The distribution of Lyapunov exponents: exact results for random matrices",
    Commun. Math. Phys. 103:121–126, eq. (4) (there for σ² = 1; σ² only shifts every exponent by
    ½ log σ²).

    Args:
      n: matrix size >= 1.
      sigma2: entry variance times n.

    Returns:
      Array ``(n,)``, descending.
    """
    n = _checks.positive_int("n", n)
    i = jnp.arange(1, n + 1, dtype=_checks.default_float())
    return 0.5 * (jnp.log(2.0 * sigma2 / n) + digamma((n - i + 1) / 2.0))
