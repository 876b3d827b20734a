"""The mean-field maps of one layer and their fixed points, slopes, depth scales and critical line.

q_map/q_star (lengths), c_map/c_star (correlations), χ₁ and χ_c (slopes), ξ_q and ξ_c (depth
scales), and the edge of chaos χ₁ = 1 (critical_point, critical_sigma_w2); equations and
references in :mod:`gradflow.meanfield`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from gradflow import _checks
from gradflow.meanfield._cores import (
    c_map_at_star,
    c_map_core,
    c_star_at,
    chi1_at,
    chi1_at_star,
    chi_c_at,
    chi_c_at_star,
    critical_point_at,
    critical_sw2_at,
    depth_scale,
    q_map_at,
    q_star_core,
    xi_q_at,
)
from gradflow.meanfield._kernels import common, kernel, variances, vectorized

__all__ = [
    "q_map",
    "q_star",
    "c_map",
    "c_star",
    "chi1",
    "chi_c",
    "xi_q",
    "xi_c",
    "critical_sigma_w2",
    "critical_point",
]


def q_map(activation, sigma_w2, sigma_b2, q) -> jax.Array:
    """The length map q^{l+1} = σ_w² E[φ(√q^l z)²] + σ_b² (Schoenholz et al. 2017, eq. 3).

    Args:
      activation: registry name or callable.
      sigma_w2: weight variance σ_w² > 0 (weights N(0, σ_w²/N)); array broadcastable with the rest.
      sigma_b2: bias variance σ_b² >= 0.
      q: pre-activation length q^l >= 0.

    Returns:
      q^{l+1}, array of the broadcast shape of the arguments.

    Raises:
      ValueError: for an unknown activation or a negative/non-finite variance or length.
    """
    k = kernel(activation)
    sw2, sb2 = variances(sigma_w2, sigma_b2)
    q = _checks.as_float("q", q, minimum=0.0)
    return vectorized(q_map_at, k, *common(sw2, sb2, q))


def q_star(activation, sigma_w2, sigma_b2) -> jax.Array:
    """The stable fixed point q* of :func:`q_map` (Poole et al. 2016, §2).

    Found by Illinois regula falsi on log(q_map(q)/q) over [``Q_MIN``, ``Q_MAX``] (closed form for
    ReLU, leaky ReLU and linear: q* = σ_b²/(1 − σ_w² E[φ(z)²])).

    Special values:
      * ``0`` when every length decays to 0: σ_b² = 0 with φ(0) = 0 in the ordered phase (tanh or
        erf with σ_w² φ'(0)² <= 1; ReLU with σ_w² < 2).
      * ``inf`` when lengths grow without bound: ReLU with σ_w² > 2, or σ_w² >= 2 and σ_b² > 0;
        linear with σ_w² >= 1 likewise; GELU/SiLU with σ_w² large enough.
      * ``nan`` for a homogeneous φ exactly at σ_w² E[φ(z)²] = 1 with σ_b² = 0 (ReLU at
        σ_w² = 2, linear at σ_w² = 1): q^{l+1} = q^l, so *every* length is a fixed point.
    ReLU's χ₁ = σ_w²/2 and c-map do not depend on q, so :func:`chi1`, :func:`c_star`,
    :func:`chi_c` and :func:`xi_c` are finite in all three cases.

    Args:
      activation: registry name or callable.
      sigma_w2: σ_w² > 0.
      sigma_b2: σ_b² >= 0.

    Returns:
      q*, array of the broadcast shape of ``sigma_w2`` and ``sigma_b2``.
    """
    k = kernel(activation)
    return vectorized(q_star_core, k, *common(*variances(sigma_w2, sigma_b2)))


def chi1(activation, sigma_w2, sigma_b2, *, q=None) -> jax.Array:
    """χ₁ = σ_w² E[φ'(√q* z)²], the mean squared singular value of one layer's Jacobian.

    Poole et al. 2016, eq. 7; Schoenholz et al. 2017, eq. 5. χ₁ < 1: ordered (gradients vanish
    like χ₁^L), χ₁ > 1: chaotic (they explode), χ₁ = 1: edge of chaos. For ReLU χ₁ = σ_w²/2 for
    every q (leaky ReLU (1 + a²) σ_w²/2, linear σ_w²); where q* = inf for another φ, χ₁ is the
    q → ∞ limit σ_w² (φ'(+∞)² + φ'(−∞)²)/2.

    Args:
      activation: registry name or callable.
      sigma_w2: σ_w² > 0.
      sigma_b2: σ_b² >= 0.
      q: the length at which to evaluate; ``None`` for q*.

    Returns:
      χ₁, array of the broadcast shape of the arguments.
    """
    k = kernel(activation)
    sw2, sb2 = variances(sigma_w2, sigma_b2)
    if q is None:
        return vectorized(chi1_at_star, k, *common(sw2, sb2))
    q = _checks.as_float("q", q, minimum=0.0)
    return vectorized(chi1_at, k, *common(sw2, sb2, q))


def c_map(activation, sigma_w2, sigma_b2, c, *, q=None) -> jax.Array:
    """The correlation map c^{l+1} = (σ_w² E[φ(u_1)φ(u_2)] + σ_b²) / q^{l+1} (Schoenholz eq. 4).

    (u_1, u_2) ~ N(0, q [[1, c], [c, 1]]): two inputs of equal length q at layer l with correlation
    c. Dividing by q^{l+1} = q_map(q) (rather than by q*) makes this the exact one-layer map for
    any q, so iterating it alongside :func:`q_map` follows a finite-depth network (see
    :func:`c_layers`); at q = q* it is Schoenholz's map.

    Args:
      activation: registry name or callable.
      sigma_w2: σ_w² > 0.
      sigma_b2: σ_b² >= 0.
      c: correlation in [-1, 1].
      q: the inputs' length; ``None`` for q*. For ReLU/leaky ReLU/linear with σ_b² = 0 the map does
        not depend on q (the normalised arc-cosine kernel).

    Returns:
      c^{l+1}, array of the broadcast shape of the arguments (nan where q* is infinite for a
      non-homogeneous φ).
    """
    k = kernel(activation)
    sw2, sb2 = variances(sigma_w2, sigma_b2)
    c = _checks.as_float("c", c, minimum=-1.0, maximum=1.0)
    if q is None:
        return vectorized(c_map_at_star, k, *common(sw2, sb2, c))
    q = _checks.as_float("q", q, minimum=0.0)
    return vectorized(c_map_core, k, *common(sw2, sb2, c, q))


def c_star(activation, sigma_w2, sigma_b2) -> jax.Array:
    """The stable fixed point c* of :func:`c_map` at q* (Schoenholz et al. 2017, §3).

    1 in the ordered phase, < 1 in the chaotic phase (0 for an odd φ without bias). By 64
    bisection steps on [-1, 1] for the sign change of c_map(c) − c. Conventions: 1 when q* = 0
    for a non-homogeneous φ (the signal itself has died), nan when q* = inf for one.

    Args:
      activation: registry name or callable.
      sigma_w2: σ_w² > 0.
      sigma_b2: σ_b² >= 0.

    Returns:
      c*, array of the broadcast shape of the arguments.
    """
    k = kernel(activation)
    return vectorized(c_star_at, k, *common(*variances(sigma_w2, sigma_b2)))


def chi_c(activation, sigma_w2, sigma_b2, *, c=None) -> jax.Array:
    """χ_c = σ_w² E[φ'(u_1)φ'(u_2)], the slope of the c-map, at (q*, c) (Schoenholz eq. 8).

    At c* = 1 this is χ₁. For ReLU-like φ it is the slope of the normalised c-map, so with
    σ_b² = 0 χ_c(1) = 1 for every σ_w² (correlations approach 1 only polynomially).

    Args:
      activation: registry name or callable.
      sigma_w2: σ_w² > 0.
      sigma_b2: σ_b² >= 0.
      c: correlation at which to take the slope; ``None`` for c*.

    Returns:
      χ_c, array of the broadcast shape of the arguments.
    """
    k = kernel(activation)
    sw2, sb2 = variances(sigma_w2, sigma_b2)
    if c is None:
        return vectorized(chi_c_at_star, k, *common(sw2, sb2))
    c = _checks.as_float("c", c, minimum=-1.0, maximum=1.0)
    return vectorized(chi_c_at, k, *common(sw2, sb2, c))


def xi_q(activation, sigma_w2, sigma_b2) -> jax.Array:
    """Depth scale of the length: ξ_q⁻¹ = −log(χ₁ + σ_w² E[φ''φ]) (Schoenholz eq. 7).

    The bracket is q_map'(q*), so |q^l − q*| ~ exp(−l/ξ_q). inf where the slope is >= 1 (ReLU with
    σ_w² >= 2); nan where q* is infinite for a non-homogeneous φ.

    Returns:
      ξ_q, array of the broadcast shape of ``sigma_w2`` and ``sigma_b2``.
    """
    k = kernel(activation)
    return vectorized(xi_q_at, k, *common(*variances(sigma_w2, sigma_b2)))


def xi_c(activation, sigma_w2, sigma_b2) -> jax.Array:
    """Depth scale of correlations: ξ_c⁻¹ = −log χ_c (Schoenholz et al. 2017, eq. 9).

    |c^l − c*| ~ exp(−l/ξ_c); ξ_c diverges on the edge of chaos, and Schoenholz et al. (§6, Fig. 5)
    find networks trainable only up to depth ≈ 6 ξ_c.

    Returns:
      ξ_c (inf at criticality), array of the broadcast shape of ``sigma_w2`` and ``sigma_b2``.
    """
    return depth_scale(chi_c(activation, sigma_w2, sigma_b2))


def critical_point(activation, q) -> tuple[jax.Array, jax.Array]:
    """The point (σ_w², σ_b²) of the edge of chaos whose fixed length is q* = q.

    From χ₁ = 1 and q* = q_map(q*) (Pennington, Schoenholz & Ganguli 2017, "Resurrecting the
    sigmoid", arXiv:1711.04735, §2.3): σ_w² = 1/E[φ'(√q z)²], σ_b² = q − σ_w² E[φ(√q z)²]. A
    negative σ_b² means no critical point has that q (e.g. sigmoid at small q).

    Args:
      activation: registry name or callable.
      q: q* > 0, any shape.

    Returns:
      ``(sigma_w2, sigma_b2)``, each of ``q``'s shape.
    """
    k = kernel(activation)
    q = _checks.as_float("q", q, minimum=0.0)
    out = jnp.vectorize(functools.partial(critical_point_at, k), signature="()->(2)")(q)
    return out[..., 0], out[..., 1]


def critical_sigma_w2(activation, sigma_b2) -> jax.Array:
    """σ_w² on the edge of chaos χ₁ = 1 for bias variance σ_b² (Schoenholz et al. 2017, Fig. 1).

    ReLU: 2 (He et al. 2015); leaky ReLU: 2/(1 + a²); linear: 1 — for every σ_b². Otherwise the
    critical line is parametrised by its fixed length (:func:`critical_point`) and the q* with
    σ_b²(q*) = σ_b² is found by Illinois regula falsi in log q; tanh at σ_b² = 0 gives exactly 1.

    Args:
      activation: registry name or callable.
      sigma_b2: σ_b² >= 0, any shape.

    Returns:
      σ_w²*, array of ``sigma_b2``'s shape (nan if no critical point has q* <= ``Q_MAX``).
    """
    k = kernel(activation)
    sb2 = _checks.as_float("sigma_b2", sigma_b2, minimum=0.0)
    return vectorized(critical_sw2_at, k, sb2)
