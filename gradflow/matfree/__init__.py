"""Matrix-free analyses of a chain: no Jacobian is ever formed.

- :mod:`gradflow.matfree.lanczos`: the top singular values of a Jacobian product (or any linear
  operator) by Golub–Kahan–Lanczos on ``jax.jvp`` / ``jax.vjp`` — :func:`top_singular_values`,
  :func:`spectral_norm`, :func:`lanczos_svd`;
- :mod:`gradflow.matfree.partial_norms`: partial-Jacobian norms J^{l0,l} from random probes —
  :func:`partial_jacobian_norms`, :func:`partial_jacobian_norms_to`,
  :func:`exact_partial_jacobian_norms`.

The dense counterparts (``jnp.linalg`` on materialised matrices) are in :mod:`gradflow.spectra`,
which re-exports the Lanczos names.
"""

from gradflow.matfree._common import PROBES
from gradflow.matfree.lanczos import TopSingular, lanczos_svd, spectral_norm, top_singular_values
from gradflow.matfree.partial_norms import (
    PartialJacobianNorms,
    exact_partial_jacobian_norms,
    partial_jacobian_norms,
    partial_jacobian_norms_to,
)

__all__ = [
    "PartialJacobianNorms",
    "partial_jacobian_norms",
    "partial_jacobian_norms_to",
    "exact_partial_jacobian_norms",
    "PROBES",
    "TopSingular",
    "lanczos_svd",
    "top_singular_values",
    "spectral_norm",
]
