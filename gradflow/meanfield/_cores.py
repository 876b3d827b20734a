"""Scalar cores of the mean-field maps: one point (σ_w², σ_b², …) at a time, for a :class:`Kernel`.

The public functions of :mod:`gradflow.meanfield` check their arguments and vectorise these
(:func:`vectorized`); the fixed points are found inside ``lax`` loops, so every core is
``jit``/``vmap``-compatible.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from gradflow.meanfield._kernels import Q_MAX, Q_MIN, Kernel, illinois

__all__ = [
    "q_star_core",
    "c_map_core",
    "depth_scale",
    "q_map_at",
    "chi1_at_star",
    "chi1_at",
    "c_map_at_star",
    "c_star_at",
    "chi_c_at_star",
    "chi_c_at",
    "xi_q_at",
    "critical_point_at",
    "critical_sw2_at",
]

_BISECT = 64  # c* bisection steps on [-1, 1]: 2^-63 is below float64 resolution
_CRIT_MAX = 1e4  # critical σ_w² searched below this (sigmoid at σ_b² = 0 needs ~100)
_SCAN = 97  # log-q grid for q-maps that may have several fixed points (step ~0.9 in log q)


def q_star_core(k: Kernel, sw2, sb2):
    if k.homogeneous:
        slope = sw2 * k.phi2(jnp.ones_like(sw2))
        finite = sb2 / jnp.where(slope < 1, 1 - slope, 1.0)
        # slope = 1 and σ_b² = 0: q^{l+1} = q^l, every length is a fixed point.
        marginal = jnp.where(sb2 > 0, jnp.inf, jnp.where(slope > 1, jnp.inf, jnp.nan))
        return jnp.where(slope < 1, finite, marginal)

    def r(t):  # log(q_map(q)/q) at q = e^t: positive below the stable fixed point
        q = jnp.exp(t)
        return jnp.log(sw2 * k.phi2(q) + sb2) - t

    lo = jnp.log(jnp.maximum(sb2, Q_MIN))
    hi = jnp.maximum(jnp.log(jnp.asarray(Q_MAX, sw2.dtype)), lo + 1.0)
    if k.single_fixed_point:
        r_lo, r_hi = r(lo), r(hi)
        a, b, r_a, r_b = lo, hi, r_lo, r_hi
    else:
        # GELU, SiLU, callables: the q-map may have a stable and an unstable fixed point (Hayou
        # et al. 2019, arXiv:1902.06853, §3). Scan log q for the first sign change from + to −,
        # the stable fixed point that small inputs converge to, then refine inside it. Two fixed
        # points closer than the scan step (a factor ~2.5 in q) can be missed.
        grid = jnp.linspace(lo, hi, _SCAN)
        rs = jax.vmap(r)(grid)
        below = rs <= 0
        i = jnp.argmax(below)
        r_lo, r_hi = rs[0], jnp.where(jnp.any(below), rs[i], rs[-1])
        j = jnp.maximum(i - 1, 0)
        a, b, r_a, r_b = grid[j], grid[i], rs[j], rs[i]
    root = jnp.exp(illinois(r, a, b, r_a, r_b))
    # r(lo) <= 0: the map pulls every length down to σ_b² (0 when σ_b² = 0: the ordered phase of
    # an odd φ without bias). r > 0 up to Q_MAX: lengths grow without bound, q* = inf.
    return jnp.where(r_lo <= 0, sb2, jnp.where(r_hi > 0, jnp.inf, root))


def _chi1_core(k: Kernel, sw2, q):
    if k.homogeneous:
        return sw2 * k.dphi2(jnp.ones_like(q))
    finite = sw2 * k.dphi2(jnp.where(jnp.isfinite(q), q, 1.0))
    return jnp.where(jnp.isinf(q), sw2 * k.dphi2_at_infinity(q.dtype), finite)


def c_map_core(k: Kernel, sw2, sb2, c, q):
    if k.homogeneous:
        one = jnp.ones_like(c)
        # Divide numerator and denominator by σ_w² q; r -> 0 as q -> inf, and σ_b² = 0 makes the
        # map independent of q (so q* = 0, inf or undetermined all give the same map).
        r = jnp.where(sb2 > 0, sb2 / (sw2 * q), 0.0)
        return (k.phiphi(one, one, c) + r) / (k.phi2(one) + r)
    qe = jnp.maximum(q, Q_MIN)  # q* = 0 (odd φ, no bias): the c-map tends to the identity
    return (sw2 * k.phiphi(qe, qe, c * qe) + sb2) / (sw2 * k.phi2(qe) + sb2)


def _c_star_core(k: Kernel, sw2, sb2, q):
    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        up = c_map_core(k, sw2, sb2, mid, q) > mid
        return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

    # c = 1 is always a fixed point and c_map(-1) >= -1, so bisection for the sign change of
    # c_map(c) − c from + to − finds the stable fixed point: 1 in the ordered phase, c* < 1 in
    # the chaotic phase (0 for odd φ without bias).
    lo, hi = jax.lax.fori_loop(0, _BISECT, body, (-jnp.ones_like(q), jnp.ones_like(q)))
    # Where c = 1 is (marginally) stable, c* = 1 exactly: bisection would stop ~1e-11 short of
    # it for a map tangent to the diagonal (ReLU without bias), and ξ_c would come out finite.
    stable_at_one = _chi_c_core(k, sw2, sb2, jnp.ones_like(q), q) <= 1
    c = jnp.where(stable_at_one, 1.0, 0.5 * (lo + hi))
    if k.homogeneous:
        return c
    return jnp.where(q == 0, 1.0, jnp.where(jnp.isfinite(q), c, jnp.nan))


def _chi_c_core(k: Kernel, sw2, sb2, c, q):
    if k.homogeneous:
        one = jnp.ones_like(c)
        r = jnp.where(sb2 > 0, sb2 / (sw2 * q), 0.0)
        return k.dphidphi(one, one, c) / (k.phi2(one) + r)
    qe = jnp.where(jnp.isfinite(q), q, 1.0)
    return jnp.where(jnp.isfinite(q), sw2 * k.dphidphi(qe, qe, c * qe), jnp.nan)


def depth_scale(slope):
    """ξ = −1/log(slope) for slope < 1; inf at or beyond marginal stability."""
    safe = jnp.where(slope < 1, slope, 0.5)
    return jnp.where(slope < 1, -1.0 / jnp.log(safe), jnp.inf)


def _critical_q_core(k: Kernel, sb2):
    """The length q* of the critical point with bias variance σ_b² (non-homogeneous φ)."""

    def f(t):  # > 0 below the critical q, < 0 above it
        q = jnp.exp(t)
        return jnp.log(k.phi2(q) / k.dphi2(q) + sb2) - t

    # On the critical line q* = σ_w² E φ² + σ_b² with σ_w² = 1/E φ'², so the critical q solves
    # q = E φ²/E φ'² + σ_b²; in log form the two ends of the bracket have balanced values.
    lo = jnp.log(jnp.asarray(Q_MIN, sb2.dtype))
    hi = jnp.log(jnp.asarray(Q_MAX, sb2.dtype))
    f_lo, f_hi = f(lo), f(hi)
    q = jnp.exp(illinois(f, lo, hi, f_lo, f_hi))
    # f(lo) <= 0: the critical point sits at q* -> 0 (e.g. tanh at σ_b² = 0, where σ_w² = 1).
    return jnp.where(f_lo <= 0, 0.0, jnp.where(f_hi > 0, jnp.nan, q))


def q_map_at(k, sw2, sb2, q):
    return sw2 * k.phi2(q) + sb2


def chi1_at_star(k, sw2, sb2):
    return _chi1_core(k, sw2, q_star_core(k, sw2, sb2))


def chi1_at(k, sw2, sb2, q):
    return _chi1_core(k, sw2, q)


def c_map_at_star(k, sw2, sb2, c):
    return c_map_core(k, sw2, sb2, c, q_star_core(k, sw2, sb2))


def c_star_at(k, sw2, sb2):
    return _c_star_core(k, sw2, sb2, q_star_core(k, sw2, sb2))


def chi_c_at_star(k, sw2, sb2):
    q = q_star_core(k, sw2, sb2)
    return _chi_c_core(k, sw2, sb2, _c_star_core(k, sw2, sb2, q), q)


def chi_c_at(k, sw2, sb2, c):
    return _chi_c_core(k, sw2, sb2, c, q_star_core(k, sw2, sb2))


def xi_q_at(k, sw2, sb2):
    q = q_star_core(k, sw2, sb2)
    slope = sw2 * k.phi2_slope(jnp.where(jnp.isfinite(q), q, 1.0))
    return jnp.where(jnp.isinf(q) & (not k.homogeneous), jnp.nan, depth_scale(slope))


def critical_point_at(k, q):
    sw2 = 1.0 / k.dphi2(q)
    return jnp.stack([sw2, q - sw2 * k.phi2(q)])


def critical_sw2_at(k, sb2):
    if k.homogeneous:
        return 1.0 / k.dphi2(jnp.ones_like(sb2))
    if k.single_fixed_point:
        q = _critical_q_core(k, sb2)
        ok = jnp.isfinite(q)
        return jnp.where(ok, 1.0 / k.dphi2(jnp.where(ok, q, 0.0)), jnp.nan)

    # The phase boundary: where χ₁ at the stable q* crosses 1 (for GELU/SiLU at small σ_b² it
    # jumps across 1 where q* runs off to infinity, and this is that jump). χ₁ <= γ² σ_w², so
    # σ_w² = 1/γ² is ordered; bisection in log σ_w² up to _CRIT_MAX.
    def above(t):
        a = jnp.exp(t)
        return _chi1_core(k, a, q_star_core(k, a, sb2)) > 1

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        up = above(mid)
        return jnp.where(up, lo, mid), jnp.where(up, mid, hi)

    lo0 = -2.0 * math.log(k.gamma) if math.isfinite(k.gamma) and k.gamma > 0 else -10.0
    lo = jnp.asarray(lo0, sb2.dtype)
    hi = jnp.log(jnp.asarray(_CRIT_MAX, sb2.dtype))
    found = above(hi)  # else χ₁ < 1 up to _CRIT_MAX: no boundary in range
    lo, hi = jax.lax.fori_loop(0, _BISECT, body, (lo, hi))
    return jnp.where(found, jnp.exp(0.5 * (lo + hi)), jnp.nan)
