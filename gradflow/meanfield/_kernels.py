"""Gaussian expectations per activation, the quadrature rule, the vectoriser and the root finder.

Shared by the mean-field modules of :mod:`gradflow.meanfield` (see its docstring for the maths
and the measured accuracy of each rule).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradflow import _checks
from gradflow import activations as _act

__all__ = [
    "Q_MIN",
    "Q_MAX",
    "Kernel",
    "kernel",
    "vectorized",
    "illinois",
    "variances",
    "broadcast",
    "common",
]

# Lengths are searched in [Q_MIN, Q_MAX] in log space. Q_MIN is far below any length that matters
# (and still a normal float32); beyond Q_MAX a length counts as divergent (q* = inf).
Q_MIN = 1e-30
Q_MAX = 1e8
# Nodes per axis (odd, so t = 0 is a node and ReLU-like kinks at 0 sit on the 1-D grid). The 2-D
# rule's outer axis sees the smoothed inner integral, which bends over a wider range of z1, hence
# more nodes (accuracy in the module docstring; the tests check it).
_NODES_1D = 61
_NODES_2D = 81
_Z_CUT = 10.0  # Gaussian tail beyond |z| = 10 is e^-50 ~ 2e-22 of the mass
_MAX_ITER = 100  # Illinois converges in ~10-20 steps; the cap only guards pathological inputs
_CHUNK = 8192  # grid points per vmapped chunk (see vectorized)
_PRE_BISECT = 12  # bisection steps before regula falsi (see illinois)


# --------------------------------------------------------------------------------------------
# Argument handling (static checks in Python, before tracing)
# --------------------------------------------------------------------------------------------


def variances(sigma_w2, sigma_b2):
    """(σ_w², σ_b²) as floating arrays, checked: σ_w² > 0 and σ_b² >= 0 where concrete."""
    return (
        _checks.as_float("sigma_w2", sigma_w2, minimum=0.0, strict=True),
        _checks.as_float("sigma_b2", sigma_b2, minimum=0.0),
    )


def broadcast(*xs):
    """The arrays broadcast to one shape."""
    shape = jnp.broadcast_shapes(*(x.shape for x in xs))
    return [jnp.broadcast_to(x, shape) for x in xs]


def common(*xs):
    """Casts to one floating dtype (no implicit rank promotion happens: callers vectorize)."""
    dtype = jnp.result_type(*xs)
    return [x.astype(dtype) for x in xs]


# --------------------------------------------------------------------------------------------
# Gaussian expectations per activation
# --------------------------------------------------------------------------------------------


class Kernel(NamedTuple):
    """The Gaussian expectations of one activation, as scalar functions.

    ``phi2(q) = E φ(√q z)²``, ``dphi2(q) = E φ'(√q z)²``, ``phi2_slope(q) = d phi2 / dq``,
    ``phiphi(q1, q2, q12) = E φ(u1)φ(u2)`` and ``dphidphi`` likewise with φ', for
    (u1, u2) ~ N(0, [[q1, q12], [q12, q2]]). ``homogeneous`` marks φ(αx) = αφ(x) for α > 0
    (ReLU family, linear): then q-maps are linear and correlation maps do not depend on q.
    """

    name: str
    phi2: Callable
    dphi2: Callable
    phi2_slope: Callable
    phiphi: Callable
    dphidphi: Callable
    homogeneous: bool
    dphi2_at_infinity: Callable  # lim_{q→∞} E φ'(√q z)², for lengths that diverge
    # True where q_map(q)/q is decreasing (bounded φ with φ(x)²/x² decreasing: tanh, erf, and
    # sigmoid), so the q-map has one fixed point and the critical line is χ₁ = 1 on it.
    single_fixed_point: bool = False
    gamma: float = math.inf  # sup|φ'|: χ₁ <= γ² σ_w² brackets the critical line from below


def _rule(q, nodes: int = _NODES_1D, centre=None):
    """Nodes and normalised weights of the sinh-mapped trapezoidal rule for E f(√q z), q >= 0.

    The nodes z = centre + a·sinh(t) cluster where f(√q z) bends. Without ``centre`` that is
    z = 0, and t runs over a symmetric range with t = 0 a node. With ``centre`` of shape ``(m,)``
    (the bend of f(μ + √q z) sits at z = −μ/√q) there is one rule per entry, nodes and weights of
    shape ``(m, nodes)``; t then runs over the asymmetric range that still covers |z| <= _Z_CUT.
    """
    a = jax.lax.rsqrt(jnp.maximum(q, 1.0))
    if centre is None:
        t = jnp.arcsinh(_Z_CUT / a) * jnp.linspace(-1.0, 1.0, nodes, dtype=q.dtype)
        centre = jnp.zeros((), q.dtype)
    else:
        centre = jnp.clip(centre, -_Z_CUT, _Z_CUT)[:, None]
        lo, hi = jnp.arcsinh((-_Z_CUT - centre) / a), jnp.arcsinh((_Z_CUT - centre) / a)
        t = lo + (hi - lo) * jnp.linspace(0.0, 1.0, nodes, dtype=q.dtype)[None, :]
    e = jnp.exp(t)
    z = centre + 0.5 * a * (e - 1 / e)  # a sinh(t), a cosh(t) from one exp
    w = (e + 1 / e) * jnp.exp(-0.5 * z * z)
    # Normalising makes E[1] exact, which also removes the common step-size factor.
    return z, w / jnp.sum(w, axis=-1, keepdims=True)


def _corr(q1, q2, q12):
    """c = q12/√(q1 q2) clipped to [-1, 1] (0 when a length is 0) and s = √(1 − c²)."""
    prod = q1 * q2
    c = jnp.where(prod > 0, q12 * jax.lax.rsqrt(jnp.where(prod > 0, prod, 1.0)), 0.0)
    c = jnp.clip(c, -1.0, 1.0)
    return c, jnp.sqrt(jnp.maximum(1.0 - c * c, 0.0))


def _quadrature_kernel(act: _act.Activation) -> Kernel:
    fn, deriv = act.fn, act.deriv

    def second(x):  # φ'' elementwise, by forward-mode autodiff of φ'
        return jax.jvp(deriv, (x,), (jnp.ones_like(x),))[1]

    def e1(f, q):
        z, w = _rule(q)
        return jnp.sum(w * f(jnp.sqrt(q) * z))

    def e2(f, q1, q2, q12):
        c, s = _corr(q1, q2, q12)
        z1, w1 = _rule(q1, _NODES_2D)
        # Given z1, u2 = μ + σ z2 with μ = √q2 c z1 and σ = √q2 s: the inner rule resolves φ on
        # the conditional spread σ and is centred on φ's bend u2 = 0, at z2 = −μ/σ. Centred at
        # z2 = 0 instead, its nodes are sparse there once σ is small against |μ| (measured for
        # erf: 6e-3 relative error at q = 300, against 6e-13 centred).
        mu, sigma = jnp.sqrt(q2) * c * z1, jnp.sqrt(q2) * s
        centre = jnp.where(sigma > 0, -mu / jnp.where(sigma > 0, sigma, 1.0), 0.0)
        z2, w2 = _rule(q2 * s * s, _NODES_2D, centre)
        inner = jnp.sum(w2 * f(mu[:, None] + sigma * z2), axis=1)
        return jnp.sum(w1 * f(jnp.sqrt(q1) * z1) * inner)

    def slope(q):
        # d/dq E φ(√q z)² = E[u φ(u) φ'(u)]/q. For small q use Stein's lemma instead,
        # E[φ'² + φ φ''], which has no 1/q; for large q that form cancels badly (both terms
        # ~ q^-1/2, their sum ~ q^-3/2 for saturating φ) while the first has a one-signed integrand.
        z, w = _rule(q)
        u = jnp.sqrt(q) * z
        fu, du = fn(u), deriv(u)
        stein = jnp.sum(w * (du**2 + fu * second(u)))
        direct = jnp.sum(w * u * fu * du) / jnp.where(q > 0, q, 1.0)
        return jnp.where(q < 1, stein, direct)

    def at_inf(dtype):
        big = jnp.asarray(1e4, dtype)
        return 0.5 * (deriv(big) ** 2 + deriv(-big) ** 2)

    return Kernel(
        act.name,
        phi2=lambda q: e1(lambda u: fn(u) ** 2, q),
        dphi2=lambda q: e1(lambda u: deriv(u) ** 2, q),
        phi2_slope=slope,
        phiphi=lambda q1, q2, q12: e2(fn, q1, q2, q12),
        dphidphi=lambda q1, q2, q12: e2(deriv, q1, q2, q12),
        homogeneous=False,
        dphi2_at_infinity=at_inf,
        single_fixed_point=act.name in ("tanh", "sigmoid"),
        gamma=float(act.gamma),
    )


def _relu_parts(q1, q2, q12):
    """Arc-cosine kernels of degree 1 and 0 (Cho & Saul 2009, eq. 6 with J_1, J_0)."""
    c, s = _corr(q1, q2, q12)
    theta = jnp.arccos(c)
    k1 = jnp.sqrt(q1 * q2) / (2 * math.pi) * (s + (math.pi - theta) * c)
    k0 = (math.pi - theta) / (2 * math.pi)
    return k1, k0


def _leaky_kernel(name: str, a: float) -> Kernel:
    """φ(x) = max(x, a x) = (1 − a) relu(x) + a x: relu's expectations plus a linear part."""
    m2 = 0.5 * (1.0 + a * a)

    def phiphi(q1, q2, q12):
        k1, _ = _relu_parts(q1, q2, q12)
        return (1 - a) ** 2 * k1 + a * q12  # E[relu(u1) u2] = q12/2 gives the cross term

    def dphidphi(q1, q2, q12):
        _, k0 = _relu_parts(q1, q2, q12)
        return a + (1 - a) ** 2 * k0

    return Kernel(
        name,
        phi2=lambda q: m2 * q,
        dphi2=lambda q: jnp.full_like(q, m2),
        phi2_slope=lambda q: jnp.full_like(q, m2),
        phiphi=phiphi,
        dphidphi=dphidphi,
        homogeneous=True,
        dphi2_at_infinity=lambda dtype: jnp.asarray(m2, dtype),
        gamma=1.0,
    )


def _erf_kernel() -> Kernel:
    """Williams 1997 eq. 11: E erf(u1) erf(u2) = (2/π) arcsin(2 q12 / √((1 + 2 q1)(1 + 2 q2)))."""

    def phiphi(q1, q2, q12):
        return 2 / math.pi * jnp.arcsin(2 * q12 * jax.lax.rsqrt((1 + 2 * q1) * (1 + 2 * q2)))

    def dphidphi(q1, q2, q12):
        # φ' = (2/√π) e^{-x²}: a Gaussian integral, 4/π · det(I + 2Σ)^{-1/2}.
        return 4 / math.pi * jax.lax.rsqrt((1 + 2 * q1) * (1 + 2 * q2) - 4 * q12 * q12)

    phi2 = lambda q: phiphi(q, q, q)  # noqa: E731
    return Kernel(
        "erf",
        phi2=phi2,
        dphi2=lambda q: 4 / math.pi * jax.lax.rsqrt(1 + 4 * q),
        phi2_slope=lambda q: 4 / (math.pi * (1 + 2 * q) * jnp.sqrt(1 + 4 * q)),
        phiphi=phiphi,
        dphidphi=dphidphi,
        homogeneous=False,
        dphi2_at_infinity=lambda dtype: jnp.asarray(0.0, dtype),
        single_fixed_point=True,
        gamma=2 / math.sqrt(math.pi),
    )


def kernel(activation, *, quadrature: bool = False) -> Kernel:
    """The expectations for ``activation``; ``quadrature=True`` forces the numerical rule.

    Cached, so that the jitted cores below (static in the kernel) compile once per activation.
    """
    try:
        return _cached_kernel(activation, quadrature)
    except TypeError:  # an unhashable callable: no caching (and a compile per call)
        return _build_kernel(activation, quadrature)


@functools.lru_cache(maxsize=64)
def _cached_kernel(activation, quadrature: bool) -> Kernel:
    return _build_kernel(activation, quadrature)


def _build_kernel(activation, quadrature: bool) -> Kernel:
    act = _act.get(activation)
    if not quadrature:
        if act.name == "relu":
            return _leaky_kernel("relu", 0.0)
        if act.name == "leaky_relu":
            return _leaky_kernel("leaky_relu", _act.LEAKY_RELU_SLOPE)
        if act.name == "linear":
            return _leaky_kernel("linear", 1.0)
        if act.name == "erf":
            return _erf_kernel()
    return _quadrature_kernel(act)


@functools.partial(jax.jit, static_argnums=(0, 1))
def vectorized(core, k: Kernel, *args):
    """``core(k, *scalars)`` broadcast over ``args``, jitted once per (core, activation, shapes).

    Large grids are evaluated in chunks of ``_CHUNK`` points (``lax.map`` over vmapped chunks,
    still one call): a single vmap over a 256×256 grid keeps ~16 MB temporaries per quadrature
    array alive in the fixed-point loops and ran 13× slower on CPU than chunks of 8192.
    """
    f = functools.partial(core, k)
    shape = jnp.broadcast_shapes(*(jnp.shape(a) for a in args))
    size = math.prod(shape)
    if size <= _CHUNK:
        return jnp.vectorize(f)(*args)
    chunks = -(-size // _CHUNK)
    pad = chunks * _CHUNK - size
    flat = [jnp.broadcast_to(a, shape).reshape(-1) for a in args]
    # Padding repeats the last point, so the padded lanes are valid inputs (then discarded).
    flat = [jnp.concatenate([a, jnp.broadcast_to(a[-1:], (pad,))]) for a in flat]
    out = jax.lax.map(lambda xs: jax.vmap(f)(*xs), [a.reshape(chunks, _CHUNK) for a in flat])
    return out.reshape(-1)[:size].reshape(shape)


# --------------------------------------------------------------------------------------------
# Root finder
# --------------------------------------------------------------------------------------------


def illinois(f, lo, hi, f_lo, f_hi):
    """Root of f in [lo, hi] given f(lo) > 0 > f(hi): bisection, then Illinois regula falsi.

    ``_PRE_BISECT`` bisection steps first shrink the bracket 4096-fold, so that f is close to
    linear across it and its end values are balanced; regula falsi alone crawls when they differ
    by orders of magnitude (and a step-size stopping test would then stop it early). Illinois then
    converges superlinearly, stopping when a step moves the estimate by less than a few ulps.
    """
    eps = jnp.finfo(lo.dtype).eps
    valid = (f_lo > 0) & (f_hi < 0)

    def bisect(_, state):
        a, b, fa, fb = state
        m = 0.5 * (a + b)
        fm = f(m)
        pos = fm > 0
        return (
            jnp.where(pos, m, a),
            jnp.where(pos, b, m),
            jnp.where(pos, fm, fa),
            jnp.where(pos, fb, fm),
        )

    lo, hi, f_lo, f_hi = jax.lax.fori_loop(0, _PRE_BISECT, bisect, (lo, hi, f_lo, f_hi))

    def cond(state):
        a, b, fa, fb, step, it = state
        tol = 4 * eps * jnp.maximum(1.0, jnp.abs(b))
        return (it < _MAX_ITER) & (jnp.abs(step) > tol) & (jnp.abs(b - a) > tol) & (fb != 0)

    def body(state):
        a, b, fa, fb, _, it = state
        x = b - fb * (b - a) / (fb - fa)
        x = jnp.where(jnp.isfinite(x), x, 0.5 * (a + b))
        fx = f(x)
        flip = fx * fb < 0
        # If the new point brackets with b, b becomes the far end; else halve the stale end's
        # value (the Illinois modification, which restores superlinear convergence).
        a, fa = jnp.where(flip, b, a), jnp.where(flip, fb, 0.5 * fa)
        return a, x, fa, fx, x - b, it + 1

    # Without a sign change the caller discards the result: start with an empty bracket so such
    # lanes stop at once instead of holding a vmapped loop for _MAX_ITER steps.
    hi = jnp.where(valid, hi, lo)
    state = (lo, hi, f_lo, f_hi, jnp.full_like(lo, jnp.inf), jnp.zeros((), jnp.int32))
    return jax.lax.while_loop(cond, body, state)[1]
