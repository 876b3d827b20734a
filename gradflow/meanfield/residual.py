"""Residual networks with LayerNorm: partial-Jacobian norms (Doshi, He & Gromov 2023)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradflow import _checks
from gradflow.meanfield._kernels import Kernel, broadcast, common, kernel, variances

__all__ = ["ResidualLNLayers", "residual_ln_layers", "residual_ln_zeta"]


class ResidualLNLayers(NamedTuple):
    """Mean-field lengths and partial-Jacobian norms of a pre-LN residual network, layer by layer.

    Attributes:
      q: array ``(depth + 1, *shape)``, the variance q^l of h^l across its N units (the paper's
        kernel 𝒦^l), l = 0 … depth.
      chi_j: array ``(depth, *shape)``, χ_J^l = J^{l,l+1}, l = 0 … depth − 1.
      log_apjn: array ``(depth + 1, *shape)``, log J^{0,l} = Σ_{k<l} log χ_J^k (0 at l = 0); for
        any pair, log J^{l0,l} = log_apjn[l] − log_apjn[l0].
    """

    q: jax.Array
    chi_j: jax.Array
    log_apjn: jax.Array


def _ln_moments(k: Kernel, dtype):
    """(E φ(z)², E φ'(z)²) for z ~ N(0, 1): LayerNorm fixes the branch input's variance to 1."""
    one = jnp.ones((), dtype)
    return k.phi2(one), k.dphi2(one)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _residual_ln_jit(k, depth, sw2, sb2, q0, mu):
    phi2, dphi2 = _ln_moments(k, q0.dtype)
    grow = sw2 * phi2 + sb2  # what one block adds to the variance
    gain = sw2 * dphi2  # one block's branch Jacobian, times q^l

    def body(q, _):
        return mu * mu * q + grow, (q, mu * mu + gain / q)

    q_last, (qs, chis) = jax.lax.scan(body, q0, None, length=depth)
    q = jnp.concatenate([qs, q_last[None]])
    zero = jnp.zeros_like(q0)[None]
    return ResidualLNLayers(q, chis, jnp.concatenate([zero, jnp.cumsum(jnp.log(chis), axis=0)]))


def residual_ln_layers(
    activation, sigma_w2, sigma_b2, q0, depth: int, *, mu=1.0
) -> ResidualLNLayers:
    """The partial-Jacobian recursion of a residual network with LayerNorm on the pre-activations.

    The network h^{l+1} = μ h^l + W^{l+1} φ(LN(h^l)) + b^{l+1}, W_ij ~ N(0, σ_w²/N),
    b_i ~ N(0, σ_b²), LN(h) = (h − mean h)/std h over the N units (no gain or bias), has at
    infinite width (Doshi, He & Gromov 2023, §3–4; z ~ N(0, 1) because LN(h^l) has unit variance)

        q^{l+1}  = μ² q^l + σ_w² E[φ(z)²] + σ_b²,
        χ_J^l    = μ² + σ_w² E[φ'(z)²] / q^l,                  (LN's Jacobian scales as 1/√q^l)
        J^{l0,l} = ∏_{k=l0}^{l−1} χ_J^k.

    With μ = 1 the variance grows linearly, q^l = q^0 + l (σ_w² E φ² + σ_b²), so χ_J^l = 1 + O(1/l)
    and J^{l0,l} ~ (l/l0)^ζ (:func:`residual_ln_zeta`): a power law for every (σ_w², σ_b²), the
    "everywhere critical" regime. With μ < 1, q^l → q* = (σ_w² E φ² + σ_b²)/(1 − μ²) and
    χ_J → μ² + (1 − μ²) ζ, so the network is critical exactly where ζ = 1 (ordered for ζ < 1,
    chaotic for ζ > 1).

    The expectations are the library's Gaussian integrals at q = 1 (closed forms for ReLU, leaky
    ReLU, linear and erf; quadrature otherwise, see the module docstring).

    Args:
      activation: registry name or callable.
      sigma_w2: σ_w² > 0; scalars or arrays broadcast with ``sigma_b2``, ``q0``, ``mu``.
      sigma_b2: σ_b² >= 0.
      q0: q^0 > 0, the variance of h^0 across its units (what LayerNorm divides by; for a finite
        network, ``jnp.var(h0)``).
      depth: number of blocks >= 0.
      mu: residual strength μ >= 0 (the paper's μ; 1 is the plain residual connection).

    Returns:
      :class:`ResidualLNLayers`.

    Raises:
      ValueError: for an unknown activation, ``depth`` < 0 or an out-of-range value.

    References:
      Doshi, He & Gromov, "Critical initialization of wide and deep neural networks using partial
      Jacobians: general theory and applications", NeurIPS 2023, arXiv:2111.12143 (LayerNorm and
      residual connections: the recursions for 𝒦^l and χ_J^l, and the power law of J^{l0,l}).
    """
    depth = _checks.nonnegative_int("depth", depth)
    k = kernel(activation)
    sw2, sb2 = variances(sigma_w2, sigma_b2)
    q0 = _checks.as_float("q0", q0, minimum=0.0, strict=True)
    mu = _checks.as_float("mu", mu, minimum=0.0)
    return _residual_ln_jit(k, depth, *broadcast(*common(sw2, sb2, q0, mu)))


def residual_ln_zeta(activation, sigma_w2, sigma_b2) -> jax.Array:
    """ζ = σ_w² E[φ'(z)²] / (σ_w² E[φ(z)²] + σ_b²), the exponent of J^{l0,l} ~ (l/l0)^ζ.

    For the μ = 1 pre-LN residual network of :func:`residual_ln_layers`: ζ is the limit of
    l (χ_J^l − 1). For ReLU with σ_b² = 0, E φ'² = E φ² = 1/2, so ζ = 1 for every σ_w²; biases
    lower it (σ_b² adds to the variance but not to the branch's Jacobian). ζ = 1 is also the
    critical line for μ < 1.

    Args:
      activation: registry name or callable.
      sigma_w2: σ_w² > 0.
      sigma_b2: σ_b² >= 0.

    Returns:
      ζ, array of the broadcast shape of ``sigma_w2`` and ``sigma_b2``.

    References:
      Doshi, He & Gromov, arXiv:2111.12143 (the power-law exponent of the everywhere-critical
      LayerNorm + residual network).
    """
    k = kernel(activation)
    sw2, sb2 = common(*broadcast(*variances(sigma_w2, sigma_b2)))
    phi2, dphi2 = _ln_moments(k, sw2.dtype)
    return sw2 * dphi2 / (sw2 * phi2 + sb2)
