"""Mean-field signal propagation: the infinite-width limit of a deep network's chain.

A layer ``z^{l+1} = W φ(z^l) + b`` with ``W_ij ~ N(0, σ_w²/N)`` and ``b_i ~ N(0, σ_b²)`` maps the
pre-activation second moment q^l (the *length*) and the correlation c^l of two inputs
deterministically as N → ∞ (Poole et al. 2016, "Exponential expressivity in deep neural networks
through transient chaos", arXiv:1606.05340; Schoenholz et al. 2017, "Deep Information
Propagation", arXiv:1611.01232):

    q^{l+1}    = σ_w² E[φ(√q^l z)²] + σ_b²                               (Schoenholz eq. 3)
    q_12^{l+1} = σ_w² E[φ(u_1) φ(u_2)] + σ_b²,   c = q_12 / q               (Schoenholz eq. 4)
    χ₁         = σ_w² E[φ'(√q* z)²]                                      (Poole eq. 7)
    χ_c        = σ_w² E[φ'(u_1) φ'(u_2)] at (q*, c*)                      (Schoenholz eq. 8)
    ξ_q⁻¹      = −log(χ₁ + σ_w² E[φ''(√q* z) φ(√q* z)])                   (Schoenholz eq. 7)
    ξ_c⁻¹      = −log χ_c                                                (Schoenholz eq. 9)

with z ~ N(0, 1) and (u_1, u_2) ~ N(0, q* [[1, c], [c, 1]]). χ₁ < 1 is the ordered phase (c* = 1,
gradients vanish as χ₁^L), χ₁ > 1 the chaotic phase (c* < 1, gradients explode) and χ₁ = 1 the
edge of chaos, where ξ_c diverges. The same recursion on a whole Gram matrix is the NNGP kernel
(Lee et al. 2018, "Deep Neural Networks as Gaussian Processes", arXiv:1711.00165).

Gaussian integrals
------------------
ReLU, leaky ReLU and linear (positively homogeneous) and erf have closed forms: the arc-cosine
kernel of Cho & Saul 2009 (arXiv:1112.3712, eq. 6 with n = 0, 1) and the arcsine kernel of
Williams 1997 ("Computing with infinite networks", eq. 11). Every other activation (tanh, sigmoid,
GELU, SiLU, callables) uses a trapezoidal rule after the substitution z = a·sinh(t) with
a = 1/√max(q, 1): plain Gauss–Hermite converges slowly once √q·z resolves the O(1)-wide bend of a
saturating φ (tanh at q = 3: 4e-5 relative error with 100 nodes), while the sinh map keeps the
nearest complex singularity of tanh(√q a sinh t) a fixed distance π/2 from the real t axis, so
the rule converges geometrically for every q. The 2-D integrals (c-map, χ_c, NNGP) nest two such
rules, the inner one (over z2 given z1) centred on φ's bend at c z1 + s z2 = 0. In float64, with
61 nodes the 1-D integrals (q-map, χ₁) are good to 1e-9 relative for q <= 1e3 and to 5e-6 up to
q = 1e6; with 81 × 81 nodes the 2-D ones to 1e-13 for q <= 100, 2e-12 at q = 1e3 and 2e-10 at
q = 1e4, for equal and unequal lengths alike (measured for erf against its closed form).
tests/test_meanfield.py checks erf by quadrature against its closed form and tanh against an
independent NumPy trapezoid.

Every function broadcasts over its numeric arguments and is ``jit``/``vmap``-compatible in them;
the activation is static. Fixed points are found inside ``lax`` loops (Illinois regula falsi in
log q for q*, bisection for c*), never by Python loops that depend on values.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow import activations as _act

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
    "q_layers",
    "c_layers",
    "nngp_kernel",
    "Q_MIN",
    "Q_MAX",
    "CNNModes",
    "cnn_window_eigenvalues",
    "cnn_mode_rates",
    "ResidualLNLayers",
    "residual_ln_layers",
    "residual_ln_zeta",
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
_BISECT = 64  # c* bisection steps on [-1, 1]: 2^-63 is below float64 resolution
_CRIT_MAX = 1e4  # critical σ_w² searched below this (sigmoid at σ_b² = 0 needs ~100)
_CHUNK = 8192  # grid points per vmapped chunk (see _vectorized)
_PRE_BISECT = 12  # bisection steps before regula falsi (see _illinois)
_SCAN = 97  # log-q grid for q-maps that may have several fixed points (step ~0.9 in log q)


# --------------------------------------------------------------------------------------------
# Argument handling (static checks in Python, before tracing)
# --------------------------------------------------------------------------------------------


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _as_float(name: str, x, *, minimum=None, strict=False, maximum=None) -> jax.Array:
    """A floating array; ValueError naming ``name`` if a concrete value is out of range."""
    if _is_concrete(x):
        try:
            arr = np.asarray(x)
        except Exception as exc:  # pragma: no cover - message path
            raise TypeError(f"{name} must be a number or an array, got {type(x).__name__}") from exc
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
        ):
            raise TypeError(f"{name} must be a real number or array, got {arr.dtype}")
        if np.iscomplexobj(arr):
            raise TypeError(f"{name} must be real, got a complex value")
        bad = ~np.isfinite(arr) if maximum is None or np.isfinite(maximum) else np.isnan(arr)
        if minimum is not None:
            bad = bad | ((arr <= minimum) if strict else (arr < minimum))
        if maximum is not None:
            bad = bad | (arr > maximum)
        if np.any(bad):
            lo = "" if minimum is None else (f"> {minimum}" if strict else f">= {minimum}")
            hi = "" if maximum is None else f"<= {maximum}"
            want = " and ".join(s for s in (lo, hi) if s) or "finite"
            shown = arr if arr.size <= 4 else f"an array with {int(np.sum(bad))} bad entries"
            raise ValueError(f"{name} must be finite and {want}, got {shown}")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jax.dtypes.canonicalize_dtype(jnp.float64))
    return x


def _variances(sigma_w2, sigma_b2):
    return (
        _as_float("sigma_w2", sigma_w2, minimum=0.0, strict=True),
        _as_float("sigma_b2", sigma_b2, minimum=0.0),
    )


def _check_depth(depth) -> None:
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
        raise ValueError(f"depth must be an integer >= 0, got {depth!r}")


def _broadcast(*xs):
    shape = jnp.broadcast_shapes(*(x.shape for x in xs))
    return [jnp.broadcast_to(x, shape) for x in xs]


def _common(*xs):
    """Casts to one floating dtype (no implicit rank promotion happens: callers vectorize)."""
    dtype = jnp.result_type(*xs)
    return [x.astype(dtype) for x in xs]


# --------------------------------------------------------------------------------------------
# Gaussian expectations per activation
# --------------------------------------------------------------------------------------------


class _Kernel(NamedTuple):
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


def _quadrature_kernel(act: _act.Activation) -> _Kernel:
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

    return _Kernel(
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


def _leaky_kernel(name: str, a: float) -> _Kernel:
    """φ(x) = max(x, a x) = (1 − a) relu(x) + a x: relu's expectations plus a linear part."""
    m2 = 0.5 * (1.0 + a * a)

    def phiphi(q1, q2, q12):
        k1, _ = _relu_parts(q1, q2, q12)
        return (1 - a) ** 2 * k1 + a * q12  # E[relu(u1) u2] = q12/2 gives the cross term

    def dphidphi(q1, q2, q12):
        _, k0 = _relu_parts(q1, q2, q12)
        return a + (1 - a) ** 2 * k0

    return _Kernel(
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


def _erf_kernel() -> _Kernel:
    """Williams 1997 eq. 11: E erf(u1) erf(u2) = (2/π) arcsin(2 q12 / √((1 + 2 q1)(1 + 2 q2)))."""

    def phiphi(q1, q2, q12):
        return 2 / math.pi * jnp.arcsin(2 * q12 * jax.lax.rsqrt((1 + 2 * q1) * (1 + 2 * q2)))

    def dphidphi(q1, q2, q12):
        # φ' = (2/√π) e^{-x²}: a Gaussian integral, 4/π · det(I + 2Σ)^{-1/2}.
        return 4 / math.pi * jax.lax.rsqrt((1 + 2 * q1) * (1 + 2 * q2) - 4 * q12 * q12)

    phi2 = lambda q: phiphi(q, q, q)  # noqa: E731
    return _Kernel(
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


def _kernel(activation, *, quadrature: bool = False) -> _Kernel:
    """The expectations for ``activation``; ``quadrature=True`` forces the numerical rule.

    Cached, so that the jitted cores below (static in the kernel) compile once per activation.
    """
    try:
        return _cached_kernel(activation, quadrature)
    except TypeError:  # an unhashable callable: no caching (and a compile per call)
        return _build_kernel(activation, quadrature)


@functools.lru_cache(maxsize=64)
def _cached_kernel(activation, quadrature: bool) -> _Kernel:
    return _build_kernel(activation, quadrature)


def _build_kernel(activation, quadrature: bool) -> _Kernel:
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
def _vectorized(core, k: _Kernel, *args):
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
# Scalar cores (vectorised by the public wrappers)
# --------------------------------------------------------------------------------------------


def _illinois(f, lo, hi, f_lo, f_hi):
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


def _q_star_core(k: _Kernel, sw2, sb2):
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
    root = jnp.exp(_illinois(r, a, b, r_a, r_b))
    # r(lo) <= 0: the map pulls every length down to σ_b² (0 when σ_b² = 0: the ordered phase of
    # an odd φ without bias). r > 0 up to Q_MAX: lengths grow without bound, q* = inf.
    return jnp.where(r_lo <= 0, sb2, jnp.where(r_hi > 0, jnp.inf, root))


def _chi1_core(k: _Kernel, sw2, q):
    if k.homogeneous:
        return sw2 * k.dphi2(jnp.ones_like(q))
    finite = sw2 * k.dphi2(jnp.where(jnp.isfinite(q), q, 1.0))
    return jnp.where(jnp.isinf(q), sw2 * k.dphi2_at_infinity(q.dtype), finite)


def _c_map_core(k: _Kernel, sw2, sb2, c, q):
    if k.homogeneous:
        one = jnp.ones_like(c)
        # Divide numerator and denominator by σ_w² q; r -> 0 as q -> inf, and σ_b² = 0 makes the
        # map independent of q (so q* = 0, inf or undetermined all give the same map).
        r = jnp.where(sb2 > 0, sb2 / (sw2 * q), 0.0)
        return (k.phiphi(one, one, c) + r) / (k.phi2(one) + r)
    qe = jnp.maximum(q, Q_MIN)  # q* = 0 (odd φ, no bias): the c-map tends to the identity
    return (sw2 * k.phiphi(qe, qe, c * qe) + sb2) / (sw2 * k.phi2(qe) + sb2)


def _c_star_core(k: _Kernel, sw2, sb2, q):
    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        up = _c_map_core(k, sw2, sb2, mid, q) > mid
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


def _chi_c_core(k: _Kernel, sw2, sb2, c, q):
    if k.homogeneous:
        one = jnp.ones_like(c)
        r = jnp.where(sb2 > 0, sb2 / (sw2 * q), 0.0)
        return k.dphidphi(one, one, c) / (k.phi2(one) + r)
    qe = jnp.where(jnp.isfinite(q), q, 1.0)
    return jnp.where(jnp.isfinite(q), sw2 * k.dphidphi(qe, qe, c * qe), jnp.nan)


def _depth_scale(slope):
    """ξ = −1/log(slope) for slope < 1; inf at or beyond marginal stability."""
    safe = jnp.where(slope < 1, slope, 0.5)
    return jnp.where(slope < 1, -1.0 / jnp.log(safe), jnp.inf)


def _critical_q_core(k: _Kernel, sb2):
    """The length q* of the critical point with bias variance σ_b² (non-homogeneous φ)."""

    def f(t):  # > 0 below the critical q, < 0 above it
        q = jnp.exp(t)
        return jnp.log(k.phi2(q) / k.dphi2(q) + sb2) - t

    # On the critical line q* = σ_w² E φ² + σ_b² with σ_w² = 1/E φ'², so the critical q solves
    # q = E φ²/E φ'² + σ_b²; in log form the two ends of the bracket have balanced values.
    lo = jnp.log(jnp.asarray(Q_MIN, sb2.dtype))
    hi = jnp.log(jnp.asarray(Q_MAX, sb2.dtype))
    f_lo, f_hi = f(lo), f(hi)
    q = jnp.exp(_illinois(f, lo, hi, f_lo, f_hi))
    # f(lo) <= 0: the critical point sits at q* -> 0 (e.g. tanh at σ_b² = 0, where σ_w² = 1).
    return jnp.where(f_lo <= 0, 0.0, jnp.where(f_hi > 0, jnp.nan, q))


def _q_map_at(k, sw2, sb2, q):
    return sw2 * k.phi2(q) + sb2


def _chi1_at_star(k, sw2, sb2):
    return _chi1_core(k, sw2, _q_star_core(k, sw2, sb2))


def _chi1_at(k, sw2, sb2, q):
    return _chi1_core(k, sw2, q)


def _c_map_at_star(k, sw2, sb2, c):
    return _c_map_core(k, sw2, sb2, c, _q_star_core(k, sw2, sb2))


def _c_star_at(k, sw2, sb2):
    return _c_star_core(k, sw2, sb2, _q_star_core(k, sw2, sb2))


def _chi_c_at_star(k, sw2, sb2):
    q = _q_star_core(k, sw2, sb2)
    return _chi_c_core(k, sw2, sb2, _c_star_core(k, sw2, sb2, q), q)


def _chi_c_at(k, sw2, sb2, c):
    return _chi_c_core(k, sw2, sb2, c, _q_star_core(k, sw2, sb2))


def _xi_q_at(k, sw2, sb2):
    q = _q_star_core(k, sw2, sb2)
    slope = sw2 * k.phi2_slope(jnp.where(jnp.isfinite(q), q, 1.0))
    return jnp.where(jnp.isinf(q) & (not k.homogeneous), jnp.nan, _depth_scale(slope))


def _critical_point_at(k, q):
    sw2 = 1.0 / k.dphi2(q)
    return jnp.stack([sw2, q - sw2 * k.phi2(q)])


def _critical_sw2_at(k, sb2):
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
        return _chi1_core(k, a, _q_star_core(k, a, sb2)) > 1

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


@functools.partial(jax.jit, static_argnums=(0, 1))
def _q_layers_jit(k, depth, sw2, sb2, q0):
    step = jnp.vectorize(functools.partial(_q_map_at, k))
    _, qs = jax.lax.scan(lambda q, _: (step(sw2, sb2, q),) * 2, q0, None, length=depth)
    return jnp.concatenate([q0[None], qs])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _c_layers_jit(k, depth, sw2, sb2, q0, c0):
    step_q = jnp.vectorize(functools.partial(_q_map_at, k))
    step_c = jnp.vectorize(functools.partial(_c_map_core, k))

    def body(carry, _):
        q, c = carry
        nxt = (step_q(sw2, sb2, q), step_c(sw2, sb2, c, q))
        return nxt, nxt

    _, (qs, cs) = jax.lax.scan(body, (q0, c0), None, length=depth)
    return jnp.concatenate([q0[None], qs]), jnp.concatenate([c0[None], cs])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _nngp_jit(k, depth, x, sw2, sb2):
    pair = jnp.vectorize(k.phiphi)

    def layer(_, kmat):
        d = jnp.diagonal(kmat)
        n = d.shape[0]
        q1 = jnp.broadcast_to(d[:, None], (n, n))
        q2 = jnp.broadcast_to(d[None, :], (n, n))
        out = sw2 * pair(q1, q2, kmat) + sb2
        return 0.5 * (out + out.T)  # exact symmetry despite rounding in the two orders

    k0 = sw2 * (x @ x.T) / x.shape[1] + sb2
    return jax.lax.fori_loop(0, depth, layer, k0)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


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
    k = _kernel(activation)
    sw2, sb2 = _variances(sigma_w2, sigma_b2)
    q = _as_float("q", q, minimum=0.0)
    return _vectorized(_q_map_at, k, *_common(sw2, sb2, q))


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
    k = _kernel(activation)
    return _vectorized(_q_star_core, k, *_common(*_variances(sigma_w2, sigma_b2)))


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
    k = _kernel(activation)
    sw2, sb2 = _variances(sigma_w2, sigma_b2)
    if q is None:
        return _vectorized(_chi1_at_star, k, *_common(sw2, sb2))
    q = _as_float("q", q, minimum=0.0)
    return _vectorized(_chi1_at, k, *_common(sw2, sb2, q))


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
    k = _kernel(activation)
    sw2, sb2 = _variances(sigma_w2, sigma_b2)
    c = _as_float("c", c, minimum=-1.0, maximum=1.0)
    if q is None:
        return _vectorized(_c_map_at_star, k, *_common(sw2, sb2, c))
    q = _as_float("q", q, minimum=0.0)
    return _vectorized(_c_map_core, k, *_common(sw2, sb2, c, q))


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
    k = _kernel(activation)
    return _vectorized(_c_star_at, k, *_common(*_variances(sigma_w2, sigma_b2)))


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
    k = _kernel(activation)
    sw2, sb2 = _variances(sigma_w2, sigma_b2)
    if c is None:
        return _vectorized(_chi_c_at_star, k, *_common(sw2, sb2))
    c = _as_float("c", c, minimum=-1.0, maximum=1.0)
    return _vectorized(_chi_c_at, k, *_common(sw2, sb2, c))


def xi_q(activation, sigma_w2, sigma_b2) -> jax.Array:
    """Depth scale of the length: ξ_q⁻¹ = −log(χ₁ + σ_w² E[φ''φ]) (Schoenholz eq. 7).

    The bracket is q_map'(q*), so |q^l − q*| ~ exp(−l/ξ_q). inf where the slope is >= 1 (ReLU with
    σ_w² >= 2); nan where q* is infinite for a non-homogeneous φ.

    Returns:
      ξ_q, array of the broadcast shape of ``sigma_w2`` and ``sigma_b2``.
    """
    k = _kernel(activation)
    return _vectorized(_xi_q_at, k, *_common(*_variances(sigma_w2, sigma_b2)))


def xi_c(activation, sigma_w2, sigma_b2) -> jax.Array:
    """Depth scale of correlations: ξ_c⁻¹ = −log χ_c (Schoenholz et al. 2017, eq. 9).

    |c^l − c*| ~ exp(−l/ξ_c); ξ_c diverges on the edge of chaos, and Schoenholz et al. (§6, Fig. 5)
    find networks trainable only up to depth ≈ 6 ξ_c.

    Returns:
      ξ_c (inf at criticality), array of the broadcast shape of ``sigma_w2`` and ``sigma_b2``.
    """
    return _depth_scale(chi_c(activation, sigma_w2, sigma_b2))


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
    k = _kernel(activation)
    q = _as_float("q", q, minimum=0.0)
    out = jnp.vectorize(functools.partial(_critical_point_at, k), signature="()->(2)")(q)
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
    k = _kernel(activation)
    sb2 = _as_float("sigma_b2", sigma_b2, minimum=0.0)
    return _vectorized(_critical_sw2_at, k, sb2)


def q_layers(activation, sigma_w2, sigma_b2, q0, depth: int) -> jax.Array:
    """Iterates the length map: q^0, q^1, …, q^depth (one ``lax.scan``).

    Args:
      activation: registry name or callable.
      sigma_w2: σ_w², a scalar (or an array broadcast with ``q0``).
      sigma_b2: σ_b², a scalar (or an array broadcast with ``q0``).
      q0: initial length(s).
      depth: number of layers >= 0.

    Returns:
      Array ``(depth + 1, *broadcast shape)``.
    """
    _check_depth(depth)
    k = _kernel(activation)
    sw2, sb2 = _variances(sigma_w2, sigma_b2)
    q0 = _as_float("q0", q0, minimum=0.0)
    return _q_layers_jit(k, int(depth), *_broadcast(*_common(sw2, sb2, q0)))


def c_layers(activation, sigma_w2, sigma_b2, q0, c0, depth: int) -> tuple[jax.Array, jax.Array]:
    """Iterates length and correlation of two equal-length inputs through ``depth`` layers.

    q^{l+1} = q_map(q^l) and c^{l+1} = c_map(c^l, q=q^l): the mean-field prediction for a finite
    network whose two inputs start at length q0 and correlation c0 (Poole et al. 2016, Fig. 2).

    Returns:
      ``(q, c)``, each ``(depth + 1, *broadcast shape)``.
    """
    _check_depth(depth)
    k = _kernel(activation)
    sw2, sb2 = _variances(sigma_w2, sigma_b2)
    q0 = _as_float("q0", q0, minimum=0.0)
    c0 = _as_float("c0", c0, minimum=-1.0, maximum=1.0)
    return _c_layers_jit(k, int(depth), *_broadcast(*_common(sw2, sb2, q0, c0)))


def nngp_kernel(x, activation, sigma_w, sigma_b, depth: int) -> jax.Array:
    """The NNGP kernel of a deep MLP's readout (Lee et al. 2018, arXiv:1711.00165, eq. 4).

    K⁰ = σ_w² x xᵀ/d + σ_b² is the covariance of the first hidden pre-activations; each of the
    ``depth`` hidden (Dense, φ) layers then applies K ← σ_w² E_{u~N(0,K)}[φ(u_i)φ(u_j)] + σ_b²,
    the last application being the Dense readout. ``depth = 0`` is a linear model.

    Args:
      x: inputs, array ``(n_points, d)``.
      activation: registry name or callable.
      sigma_w: weight scale σ_w > 0 (weights N(0, σ_w²/fan_in)), scalar.
      sigma_b: bias scale σ_b >= 0 (biases N(0, σ_b²)), scalar.
      depth: number of hidden layers >= 0.

    Returns:
      The readout's covariance, array ``(n_points, n_points)``.
    """
    _check_depth(depth)
    k = _kernel(activation)
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n_points, d), got {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jax.dtypes.canonicalize_dtype(jnp.float64))
    sw = _as_float("sigma_w", sigma_w, minimum=0.0, strict=True)
    sb = _as_float("sigma_b", sigma_b, minimum=0.0)
    if sw.ndim or sb.ndim:
        raise ValueError("sigma_w and sigma_b must be scalars (vmap over them for a sweep)")
    x, sw, sb = _common(x, sw, sb)
    return _nngp_jit(k, int(depth), x, sw * sw, sb * sb)


# --------------------------------------------------------------------------------------------
# Convolutional networks: spatial Fourier modes of the covariance (Xiao et al. 2018)
# --------------------------------------------------------------------------------------------


class CNNModes(NamedTuple):
    """Per spatial Fourier mode m: the window-average eigenvalue, the decay rate, the depth scale.

    Attributes:
      eigenvalues: λ_m of the filter-window average (:func:`cnn_window_eigenvalues`), array of
        the spatial shape (DFT order, m = 0 first, as ``jnp.fft.fftn``).
      rates: λ_m χ_c*, the factor by which mode m of a covariance perturbation shrinks per layer.
      depth_scales: ξ_m = −1/log|λ_m χ_c*| (inf where |λ_m χ_c*| >= 1, 0 where λ_m = 0).
    """

    eigenvalues: jax.Array
    rates: jax.Array
    depth_scales: jax.Array


def _spatial_args(spatial_shape, kernel_size) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(n_1, …), (k_1, …)``: positive sizes, odd kernels, one per spatial axis."""

    def ints(name, value):
        vals = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be positive integers, got {value!r}")
        return tuple(int(v) for v in vals)

    n = ints("spatial_shape", spatial_shape)
    k = ints("kernel_size", kernel_size)
    if len(k) == 1 and len(n) > 1:
        k = k * len(n)
    if len(k) != len(n):
        raise ValueError(
            f"kernel_size must be an int or one size per spatial axis {n}, got {kernel_size!r}"
        )
    if any(kk % 2 == 0 for kk in k):
        raise ValueError(f"kernel_size must be odd (a centred window), got {kernel_size!r}")
    return n, k


def _window_eigenvalues_1d(n: int, size: int) -> np.ndarray:
    """λ_m = sin(size·πm/n) / (size·sin(πm/n)), λ_0 = 1, in float64 (a Dirichlet kernel)."""
    m = np.arange(n)
    # Reduce size·m mod 2n in integers first: exact zeros where size·m/n is an integer
    # (the window is a whole number of periods of mode m), and no rounding growth with size·m.
    top = (size * m) % (2 * n)
    num = np.where(top % n == 0, 0.0, np.sin(np.pi * top / n))
    den = size * np.sin(np.pi * m / n)
    return np.where(m == 0, 1.0, num / np.where(m == 0, 1.0, den))


def cnn_window_eigenvalues(spatial_shape, kernel_size) -> jax.Array:
    """Eigenvalues of the filter-window average 𝒜 on a periodic grid, one per Fourier mode.

    A circular convolution with i.i.d. N(0, σ_w²/(window·C)) weights maps the pre-activation
    covariance Σ_{α,α'} of one input through 𝒜: [𝒜 Σ]_{α,α'} = (1/|window|) Σ_β Σ_{α+β, α'+β}, the
    average over the window's offsets β along each diagonal α' − α = δ (Xiao et al. 2018, §2, the
    covariance recursion Σ^{l+1} = σ_w² 𝒜 ⋆ C(Σ^l) + σ_b²). On n periodic positions 𝒜 is
    circulant along α, so its eigenvectors are the Fourier modes e^{2πimα/n}, with eigenvalues, for
    a window of 2k + 1 taps,

        λ_m = sin((2k+1)πm/n) / ((2k+1) sin(πm/n)),   λ_0 = 1,

    (the Dirichlet kernel; exact also when 2k + 1 > n, counting wrapped taps with multiplicity, as
    circular padding does). In 2-D the average factorises, λ_{m1,m2} = λ_{m1} λ_{m2}.

    Args:
      spatial_shape: n (1-D) or (n_1, n_2) (2-D), the number of positions per axis.
      kernel_size: odd window size, an int or one per axis.

    Returns:
      λ, array of shape ``spatial_shape`` in DFT order (index m, modes m and n − m coincide),
      float64 under ``jax_enable_x64`` else float32.

    Raises:
      ValueError: for non-positive sizes, an even kernel size or mismatched lengths.

    References:
      Xiao, Bahri, Sohl-Dickstein, Schoenholz & Pennington 2018, "Dynamical isometry and a mean
      field theory of CNNs: how to train 10,000-layer vanilla convolutional neural networks",
      ICML, arXiv:1806.05393, §2.
    """
    n, k = _spatial_args(spatial_shape, kernel_size)
    lam = np.ones((), np.float64)
    for nn_, kk in zip(n, k):
        lam = np.multiply.outer(lam, _window_eigenvalues_1d(nn_, kk))
    return jnp.asarray(lam, jax.dtypes.canonicalize_dtype(jnp.float64))


def cnn_mode_rates(activation, sigma_w2, sigma_b2, spatial_shape, kernel_size) -> CNNModes:
    """Decay rate λ_m χ_c* and depth scale ξ_m of every spatial Fourier mode of a circular CNN.

    Linearising the covariance recursion around its fixed point Σ* (q* on the diagonal, q* c* off
    it), an off-diagonal perturbation ε^l_{α,α+δ} (δ ≠ 0) obeys

        ε^{l+1}_{α,α+δ} = χ_c* · (1/(2k+1)) Σ_j ε^l_{α+j, α+δ+j},

    (Xiao et al. 2018, §2; χ_c* = :func:`chi_c` at c*), so its m-th Fourier component along α
    shrinks by λ_m χ_c* per layer: ε̂^l_m ∝ (λ_m χ_c*)^l, with depth scale
    ξ_m = −1/log|λ_m χ_c*|. Mode 0 is the fully connected network's ξ_c; every other mode decays
    faster, so at the edge of chaos (χ_c* = 1) only the spatially uniform mode survives — unless
    the kernel is a delta (delta-orthogonal), for which λ_m = 1 for every m. The diagonal
    (δ = 0, the lengths) follows the same averaging with the q-map's slope instead of χ_c*.

    Args:
      activation: registry name or callable.
      sigma_w2: σ_w² > 0, scalar.
      sigma_b2: σ_b² >= 0, scalar.
      spatial_shape: n or (n_1, n_2), positions per axis.
      kernel_size: odd window size, an int or one per axis.

    Returns:
      :class:`CNNModes`, each field of shape ``spatial_shape`` (DFT order).

    Raises:
      ValueError: for bad sizes (see :func:`cnn_window_eigenvalues`), non-scalar or out-of-range
        variances, or an unknown activation.

    References:
      Xiao, Bahri, Sohl-Dickstein, Schoenholz & Pennington 2018, arXiv:1806.05393, §2;
      Schoenholz, Gilmer, Ganguli & Sohl-Dickstein 2017, arXiv:1611.01232, eq. 9 (ξ_c).
    """
    lam = cnn_window_eigenvalues(spatial_shape, kernel_size)
    sw2, sb2 = _variances(sigma_w2, sigma_b2)
    if sw2.ndim or sb2.ndim:
        raise ValueError("sigma_w2 and sigma_b2 must be scalars (vmap over them for a sweep)")
    chi = chi_c(activation, sw2, sb2)
    rates = lam * chi.astype(lam.dtype)
    return CNNModes(lam, rates, _depth_scale(jnp.abs(rates)))


# --------------------------------------------------------------------------------------------
# Residual networks with LayerNorm: partial-Jacobian norms (Doshi, He & Gromov 2023)
# --------------------------------------------------------------------------------------------


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


def _ln_moments(k: _Kernel, dtype):
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
    _check_depth(depth)
    k = _kernel(activation)
    sw2, sb2 = _variances(sigma_w2, sigma_b2)
    q0 = _as_float("q0", q0, minimum=0.0, strict=True)
    mu = _as_float("mu", mu, minimum=0.0)
    return _residual_ln_jit(k, int(depth), *_broadcast(*_common(sw2, sb2, q0, mu)))


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
    k = _kernel(activation)
    sw2, sb2 = _common(*_broadcast(*_variances(sigma_w2, sigma_b2)))
    phi2, dphi2 = _ln_moments(k, sw2.dtype)
    return sw2 * dphi2 / (sw2 * phi2 + sb2)
