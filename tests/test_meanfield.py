"""Mean-field theory: closed forms, quadrature accuracy, fixed points, critical line, Monte Carlo.

Independent references used below: the arc-cosine (ReLU) and arcsine (erf) kernels in closed
form; NumPy integrals written here (plain trapezoid in u-space, Gauss–Hermite) that share no code
with gradflow.meanfield; and finite networks built with gradflow.models.MLP.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.polynomial.hermite_e import hermegauss

import gradflow as gf
from gradflow import init
from gradflow import meanfield as mf
from gradflow.chain import trajectory
from gradflow.meanfield import _kernels
from gradflow.meanfield._kernels import kernel

SMOOTH = ["tanh", "erf", "sigmoid", "gelu", "silu"]


def _np_expect(f, q, points=200001, width=14.0):
    """E f(√q z) by a plain trapezoid in u = √q z: an independent reference (no gradflow code)."""
    s = math.sqrt(q)
    u = np.linspace(-width * s, width * s, points)
    w = np.exp(-0.5 * u * u / q) / math.sqrt(2 * math.pi * q)
    return np.trapezoid(f(u) * w, u)


# --- closed forms ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma_b2", [0.0, 0.05, 1.0])
def test_relu_chi1_is_half_sigma_w2_for_every_q(sigma_b2):
    sw2 = np.array([0.5, 1.0, 2.0, 3.0, 8.0])
    # Exact: E[1{z > 0}] = 1/2, whatever the length (ReLU is positively homogeneous).
    np.testing.assert_allclose(mf.chi1("relu", sw2, sigma_b2), sw2 / 2, rtol=1e-6)
    for q in (1e-3, 1.0, 1e3):
        np.testing.assert_allclose(mf.chi1("relu", sw2, sigma_b2, q=q), sw2 / 2, rtol=1e-6)
    # Leaky ReLU with slope a: E φ'² = (1 + a²)/2.
    a = gf.activations.LEAKY_RELU_SLOPE
    np.testing.assert_allclose(
        mf.chi1("leaky_relu", sw2, sigma_b2), sw2 * (1 + a * a) / 2, rtol=1e-6
    )


def test_relu_q_star_without_bias_is_explicit():
    # Documented special values: q^{l+1} = σ_w² q^l / 2, so lengths decay (0), are preserved
    # (every q is a fixed point: nan) or grow (inf) — never an arbitrary finite number.
    q = np.asarray(mf.q_star("relu", jnp.array([1.0, 2.0, 3.0]), 0.0))
    assert q[0] == 0.0 and math.isnan(q[1]) and q[2] == math.inf
    # With a bias: q* = σ_b²/(1 − σ_w²/2) below 2, inf from 2 on.
    q = np.asarray(mf.q_star("relu", jnp.array([1.0, 2.0, 3.0]), 0.1))
    np.testing.assert_allclose(q[0], 0.1 / 0.5, rtol=1e-6)
    assert q[1] == math.inf and q[2] == math.inf
    # …while χ₁, c* and ξ_c stay finite/meaningful there.
    np.testing.assert_allclose(mf.chi1("relu", jnp.array([1.0, 2.0, 3.0]), 0.0), [0.5, 1.0, 1.5])
    np.testing.assert_allclose(mf.c_star("relu", jnp.array([1.0, 2.0, 3.0]), 0.0), 1.0)
    # Without bias the normalised ReLU c-map is tangent to the diagonal at c = 1: ξ_c = ∞.
    assert np.all(np.isinf(mf.xi_c("relu", jnp.array([1.0, 2.0, 3.0]), 0.0)))


def test_linear_network_q_map_and_fixed_point(x64):
    sw2, sb2, q = 0.7, 0.3, np.array([0.0, 0.5, 2.0, 10.0])
    np.testing.assert_allclose(mf.q_map("linear", sw2, sb2, q), sw2 * q + sb2, rtol=1e-14)
    np.testing.assert_allclose(mf.q_star("linear", sw2, sb2), sb2 / (1 - sw2), rtol=1e-14)
    np.testing.assert_allclose(mf.chi1("linear", sw2, sb2), sw2, rtol=1e-14)
    # c-map of a linear layer: (σ_w² c q + σ_b²)/(σ_w² q + σ_b²).
    c = np.linspace(-1, 1, 7)
    np.testing.assert_allclose(
        mf.c_map("linear", sw2, sb2, c, q=2.0), (sw2 * c * 2 + sb2) / (sw2 * 2 + sb2), rtol=1e-14
    )
    assert float(mf.critical_sigma_w2("linear", 0.4)) == 1.0


def test_relu_c_map_is_the_arc_cosine_kernel(x64):
    # Cho & Saul 2009: E relu(u1) relu(u2) = q/(2π) (sin θ + (π − θ) cos θ), θ = arccos c; with
    # σ_b² = 0 the normalised map is that over its value q/2 at c = 1.
    c = np.linspace(-1, 1, 11)
    theta = np.arccos(c)
    expected = (np.sin(theta) + (np.pi - theta) * c) / np.pi
    np.testing.assert_allclose(mf.c_map("relu", 2.0, 0.0, c), expected, atol=1e-14)
    # E relu(√q z)² by the generic quadrature agrees: the kink of relu² sits on the node t = 0
    # and the integrand is even about it once mirrored, so the rule stays exact to rounding.
    # (Its derivative, a step, is too rough for the rule: that is why ReLU has closed forms.)
    k, kq = kernel("relu"), kernel("relu", quadrature=True)
    for q in (0.1, 1.0, 10.0):
        q = jnp.float64(q)
        np.testing.assert_allclose(kq.phi2(q), k.phi2(q), rtol=1e-12)


@pytest.mark.parametrize("q", [1e-6, 1e-3, 0.1, 1.0, 3.0, 10.0, 30.0, 300.0, 1e4])
def test_erf_arcsine_kernel_against_quadrature(x64, q):
    # Williams 1997 in closed form vs gradflow's quadrature applied to erf as a generic φ. Measured
    # worst relative errors of the 2-D integrals, equal and unequal lengths: <= 2e-14 up to
    # q = 100, 6e-13 at q = 300, 1.5e-10 at q = 1e4 (the inner rule is centred on φ's bend; the
    # earlier rule centred at z2 = 0 was off by 6e-3 at q = 300). 1e-10, and 1e-8 at q = 1e4,
    # hold with margin; the bar is 1e-6.
    k, kq = kernel("erf"), kernel("erf", quadrature=True)
    q = jnp.float64(q)
    tol2 = 1e-8 if q > 1e3 else 1e-10
    # 1-D: measured 1.1e-7 at q = 1e4 (the q-map's slope; see also
    # test_one_dimensional_quadrature_at_large_lengths), so there the bar 1e-6.
    tol1 = 1e-6 if q > 1e3 else 1e-9
    for name in ("phi2", "dphi2", "phi2_slope"):
        np.testing.assert_allclose(getattr(kq, name)(q), getattr(k, name)(q), rtol=tol1)
    for c in (-0.99, -0.5, 0.3, 0.7, 0.95, 0.9999, 1.0):
        for q2 in (q, 0.3 * q, 3.0 * q):  # unequal lengths: the NNGP kernel's off-diagonal
            q12 = c * jnp.sqrt(q * q2)
            for name in ("phiphi", "dphidphi"):
                np.testing.assert_allclose(
                    getattr(kq, name)(q, q2, q12), getattr(k, name)(q, q2, q12), rtol=tol2
                )


@pytest.mark.parametrize("q", [1e4, 1e6])
def test_one_dimensional_quadrature_at_large_lengths(x64, q):
    # The sinh-mapped rule keeps 1-D integrals accurate far out (measured 2e-8 and 1e-6 for E φ'²,
    # the hardest one): 1e-6 relative is the requirement.
    k, kq = kernel("erf"), kernel("erf", quadrature=True)
    q = jnp.float64(q)
    for name in ("phi2", "dphi2"):
        np.testing.assert_allclose(getattr(kq, name)(q), getattr(k, name)(q), rtol=2e-6)


@pytest.mark.parametrize("q", [1e-4, 0.05, 0.5, 2.0, 8.0, 50.0])
def test_tanh_quadrature_against_independent_trapezoid(x64, q):
    # Reference: 200,001-point trapezoid in u-space (error far below 1e-12 for these smooth,
    # Gaussian-weighted integrands). 1e-9 relative is the rule's measured accuracy with margin.
    k = kernel("tanh")
    qq = jnp.float64(q)
    ref_phi2 = _np_expect(lambda u: np.tanh(u) ** 2, q)
    ref_dphi2 = _np_expect(lambda u: (1 - np.tanh(u) ** 2) ** 2, q)
    np.testing.assert_allclose(k.phi2(qq), ref_phi2, rtol=1e-9)
    np.testing.assert_allclose(k.dphi2(qq), ref_dphi2, rtol=1e-9)
    # The slope of the q-map, against a central difference of the reference.
    h = 1e-4 * q
    ref_slope = (
        _np_expect(lambda u: np.tanh(u) ** 2, q + h) - _np_expect(lambda u: np.tanh(u) ** 2, q - h)
    ) / (2 * h)
    # Central differences carry O(h²) ~ 1e-8 relative error plus cancellation: 1e-6.
    np.testing.assert_allclose(k.phi2_slope(qq), ref_slope, rtol=1e-6)


# --- fixed points ---------------------------------------------------------------------------------
_GRID = [(0.5, 0.0), (1.0, 0.05), (1.5, 0.2), (2.0, 0.05), (3.0, 0.01), (4.0, 0.5)]


@pytest.mark.parametrize("name", ["tanh", "erf", pytest.param("sigmoid", marks=pytest.mark.slow)])
def test_q_star_is_a_stable_fixed_point(x64, name):
    sw2 = jnp.array([s for s, _ in _GRID])
    sb2 = jnp.array([b for _, b in _GRID])
    q = mf.q_star(name, sw2, sb2)
    # Float64 fixed point: the residual is rounding-level (1e-12 leaves a factor 1e3 of margin).
    np.testing.assert_allclose(mf.q_map(name, sw2, sb2, q), q, rtol=1e-12, atol=1e-300)
    # Stability: |q^l − q*| contracts, ξ_q finite.
    assert np.all(np.isfinite(mf.xi_q(name, sw2, sb2)[q > 0]))
    # Iterating the map from a different start lands on the same point (uniqueness).
    qs = mf.q_layers(name, sw2, sb2, 5.0 * jnp.ones_like(sw2), 400)
    np.testing.assert_allclose(qs[-1], q, rtol=1e-8, atol=1e-12)


def test_gelu_q_star_is_the_stable_one_of_two_fixed_points(x64):
    # GELU with σ_w² = 2.3, σ_b² = 0.05 has a stable fixed point near 0.19 and an unstable one
    # further out (beyond it lengths diverge): q_star must return the stable one, the one a
    # network started from small inputs converges to.
    q = float(mf.q_star("gelu", 2.3, 0.05))
    assert 0.1 < q < 0.3
    qs = np.asarray(mf.q_layers("gelu", 2.3, 0.05, 0.01, 300))
    assert qs[-1] == pytest.approx(q, rel=1e-8)
    assert float(mf.q_map("gelu", 2.3, 0.05, 1.01 * q)) < 1.01 * q  # stable from above too


@pytest.mark.parametrize(
    "sigma_w2, sigma_b2",
    [
        (1.5, 0.1),
        (2.5, 0.05),
        pytest.param(0.8, 0.05, marks=pytest.mark.slow),
        pytest.param(4.0, 0.3, marks=pytest.mark.slow),
    ],
)
def test_c_star_is_the_stable_fixed_point(x64, sigma_w2, sigma_b2):
    c = float(mf.c_star("tanh", sigma_w2, sigma_b2))
    chi = float(mf.chi1("tanh", sigma_w2, sigma_b2))
    if chi < 1:
        assert c == 1.0  # ordered phase
    else:
        assert -1 < c < 1
        assert float(mf.c_map("tanh", sigma_w2, sigma_b2, c)) == pytest.approx(c, abs=1e-12)
        assert float(mf.chi_c("tanh", sigma_w2, sigma_b2)) < 1  # stable
    # Iterating the c-map converges to it from both sides, at the rate e^{-1/ξ_c} per layer:
    # 800 layers are > 30 ξ_c for these points (ξ_c <= 26), i.e. e^{-30} ~ 1e-13 of the way left.
    assert float(mf.xi_c("tanh", sigma_w2, sigma_b2)) < 26
    q = mf.q_star("tanh", sigma_w2, sigma_b2)
    _, cs = mf.c_layers("tanh", sigma_w2, sigma_b2, q, jnp.array([0.0, 0.99]), 800)
    np.testing.assert_allclose(cs[-1], c, atol=1e-9)


def test_tanh_without_bias_special_points(x64):
    # σ_b² = 0, odd φ: q* = 0 in the ordered phase, where χ₁ = σ_w² φ'(0)² (Poole et al. 2016:
    # the transition is at σ_w = 1); c* = 0 in the chaotic phase.
    assert float(mf.q_star("tanh", 0.5, 0.0)) == 0.0
    assert float(mf.chi1("tanh", 0.5, 0.0)) == pytest.approx(0.5, rel=1e-12)
    assert float(mf.critical_sigma_w2("tanh", 0.0)) == pytest.approx(1.0, rel=1e-12)
    assert float(mf.critical_sigma_w2("erf", 0.0)) == pytest.approx(math.pi / 4, rel=1e-12)
    assert abs(float(mf.c_star("tanh", 2.0, 0.0))) < 1e-12
    # Just above σ_w² = 1 a small q* appears. From the Taylor series of tanh,
    # E tanh²/q = 1 − 2q + (17/3)q² − (62/3)q³ and E sech⁴ = 1 − 2q + 7q² − (94/3)q³, so at the
    # fixed point χ₁ = E sech⁴ / (E tanh²/q) = 1 + (4/3)q² − 8q³ + O(q⁴) > 1: chaotic.
    q = float(mf.q_star("tanh", 1.01, 0.0))
    assert 0.004 < q < 0.006  # ≈ (1 − 1/σ_w²)/2 to leading order
    series = 1 + 4 / 3 * q**2 - 8 * q**3
    assert float(mf.chi1("tanh", 1.01, 0.0)) == pytest.approx(series, abs=100 * q**4)


# --- the critical line ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "tanh",
        pytest.param("erf", marks=pytest.mark.slow),
        pytest.param("sigmoid", marks=pytest.mark.slow),
    ],
)
def test_critical_sigma_w2_has_chi1_one(x64, name):
    sb2 = jnp.array([0.0, 0.01, 0.05, 0.3, 1.0])
    sw2 = mf.critical_sigma_w2(name, sb2)
    # χ₁ = 1 to rounding: the critical point is solved exactly on its q* parametrisation.
    np.testing.assert_allclose(mf.chi1(name, sw2, sb2), 1.0, rtol=1e-9)
    np.testing.assert_allclose(
        mf.critical_point(name, mf.q_star(name, sw2, sb2))[0], sw2, rtol=1e-9
    )
    assert np.all(np.diff(np.asarray(sw2)) > 0)  # the line rises with σ_b²
    # ξ_c diverges on the line and is finite (~10–100) on both sides. At the solved point χ_c
    # is 1 to ~1e-8, not to rounding: where the c-map is tangent to the diagonal, c_map(c) − c
    # is quadratic in 1 − c, so c* itself is only resolved to ~√eps. Hence ξ_c > 1e6, not inf.
    assert np.all(mf.xi_c(name, sw2[1:], sb2[1:]) > 1e6)
    assert np.all(np.isfinite(mf.xi_c(name, 0.9 * sw2[1:], sb2[1:])))
    assert np.all(np.isfinite(mf.xi_c(name, 1.1 * sw2[1:], sb2[1:])))


def test_critical_sigma_w2_closed_forms():
    assert float(mf.critical_sigma_w2("relu", 0.1)) == 2.0  # He et al. 2015, eq. 10
    a = gf.activations.LEAKY_RELU_SLOPE
    assert float(mf.critical_sigma_w2("leaky_relu", 0.0)) == pytest.approx(2 / (1 + a * a))


@pytest.mark.slow
def test_gelu_phase_boundary_is_where_chi1_jumps(x64):
    # For GELU at small σ_b² the stable q* runs off to infinity before χ₁ reaches 1, so χ₁ jumps
    # across 1; critical_sigma_w2 returns that jump.
    sw2 = float(mf.critical_sigma_w2("gelu", 0.05))
    assert (
        float(mf.chi1("gelu", sw2 * (1 - 1e-6), 0.05))
        < 1
        < float(mf.chi1("gelu", sw2 * (1 + 1e-6), 0.05))
    )


def test_tanh_critical_point_quoted_in_the_literature(x64):
    # Schoenholz et al. 2017 ("Deep Information Propagation", arXiv:1611.01232) draw their tanh
    # phase diagrams and trainability experiments at σ_b² = 0.05, whose edge of chaos is commonly
    # quoted as σ_w² ≈ 1.76. Not trusting a number read off a figure, it is derived here
    # independently of gradflow: Gauss–Hermite with 300 nodes (exact to ~1e-14 at q ≈ 0.6), q* by
    # 500 plain fixed-point iterations (contraction factor ~0.55 per step), bisection on σ_w².
    z, w = hermegauss(300)
    w = w / w.sum()

    def chi(sw2, sb2=0.05):
        q = 1.0
        for _ in range(500):
            q = sw2 * np.sum(w * np.tanh(math.sqrt(q) * z) ** 2) + sb2
        return sw2 * np.sum(w / np.cosh(math.sqrt(q) * z) ** 4)

    lo, hi = 1.0, 3.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if chi(mid) > 1 else (mid, hi)
    reference = 0.5 * (lo + hi)
    ours = float(mf.critical_sigma_w2("tanh", 0.05))
    assert ours == pytest.approx(reference, rel=1e-9)
    assert round(ours, 2) == 1.76


# --- jit, vmap, tracing ---------------------------------------------------------------------------
def test_phase_diagram_grid_is_one_jitted_call_and_matches_vmap():
    traces = []

    @jax.jit
    def grid(sw2, sb2):
        traces.append(1)
        return mf.chi1("tanh", sw2[:, None], sb2[None, :])

    sw2, sb2 = jnp.linspace(0.5, 4.0, 12), jnp.linspace(0.0, 0.5, 10)
    out = grid(sw2, sb2)
    assert out.shape == (12, 10)
    grid(sw2 + 0.1, sb2)  # new values, same shapes: no retrace
    assert len(traces) == 1
    by_vmap = jax.vmap(lambda a: jax.vmap(lambda b: mf.chi1("tanh", a, b))(sb2))(sw2)
    np.testing.assert_allclose(out, by_vmap, rtol=1e-5)  # float32: same maths, fused differently
    single = jnp.stack([mf.chi1("tanh", s, sb2[3]) for s in sw2[:3]])
    np.testing.assert_allclose(out[:3, 3], single, rtol=1e-5)


def test_chunked_grid_path_matches_pointwise(monkeypatch):
    """Grids above _CHUNK points go through lax.map over padded chunks (a 256×256 grid does);
    with _CHUNK = 8, a 5×7 grid is 5 chunks with 5 padded lanes: every point, including the
    last chunk's, must equal its own one-point evaluation (float32: same maths, 1e-5)."""
    monkeypatch.setattr(_kernels, "_CHUNK", 8)
    sw2, sb2 = jnp.linspace(0.7, 3.1, 5), jnp.linspace(0.01, 0.4, 7)
    # Fresh shapes (5, 7) keep the jit cache from reusing an unchunked trace.
    for fn in (mf.chi1, mf.q_star):
        out = fn("tanh", sw2[:, None], sb2[None, :])
        assert out.shape == (5, 7)
        single = np.array([[fn("tanh", a, b) for b in sb2] for a in sw2])
        np.testing.assert_allclose(out, single, rtol=1e-5)
    # ReLU's closed form on the chunked path: q* = σ_b² / (1 − σ_w²/2) for σ_w² < 2.
    sw2r = jnp.linspace(0.5, 1.9, 5)
    q = mf.q_star("relu", sw2r[:, None], sb2[None, :])
    np.testing.assert_allclose(q, sb2[None, :] / (1 - sw2r[:, None] / 2), rtol=1e-5)


@pytest.mark.parametrize(
    "fn",
    [
        mf.c_star,
        pytest.param(mf.xi_c, marks=pytest.mark.slow),
        pytest.param(mf.q_star, marks=pytest.mark.slow),
        pytest.param(mf.chi_c, marks=pytest.mark.slow),
        pytest.param(mf.xi_q, marks=pytest.mark.slow),
    ],
)
def test_jit_and_vmap_agree_with_eager(fn):
    sw2 = jnp.array([1.0, 2.0, 3.0])
    eager = fn("tanh", sw2, 0.05)
    # float32 throughout; jit/vmap only refuse or reorder the same operations, so 1e-5 relative.
    np.testing.assert_allclose(jax.jit(lambda s: fn("tanh", s, 0.05))(sw2), eager, rtol=1e-5)
    np.testing.assert_allclose(jax.vmap(lambda s: fn("tanh", s, 0.05))(sw2), eager, rtol=1e-5)


def test_critical_sigma_w2_under_jit_float32():
    # float32 has its own pitfalls in the root finder (a tolerance of 4 ulps of log q); the
    # critical point must still come out right to float32 accuracy.
    crit = jax.jit(lambda b: mf.critical_sigma_w2("tanh", b))(jnp.array([0.0, 0.05]))
    np.testing.assert_allclose(crit, [1.0, 1.7609546], rtol=1e-5)


# --- bad input ------------------------------------------------------------------------------------
def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="unknown activation"):
        mf.chi1("tanhh", 1.0, 0.0)
    with pytest.raises(ValueError, match="sigma_b2"):
        mf.q_star("tanh", 1.0, -0.1)
    with pytest.raises(ValueError, match="sigma_w2"):
        mf.q_star("tanh", 0.0, 0.1)
    with pytest.raises(ValueError, match="sigma_w2"):
        mf.chi1("tanh", jnp.array([1.0, -2.0]), 0.1)
    with pytest.raises(ValueError, match="q"):
        mf.q_map("tanh", 1.0, 0.0, -1.0)
    with pytest.raises(ValueError, match="c"):
        mf.c_map("tanh", 1.0, 0.0, 1.5)
    with pytest.raises(ValueError, match="depth"):
        mf.nngp_kernel(np.ones((2, 3)), "tanh", 1.0, 0.0, -1)
    with pytest.raises(ValueError, match="x must have shape"):
        mf.nngp_kernel(np.ones(3), "tanh", 1.0, 0.0, 1)
    with pytest.raises(ValueError, match="sigma_w"):
        mf.nngp_kernel(np.ones((2, 3)), "tanh", float("nan"), 0.0, 1)
    with pytest.raises(TypeError):
        mf.chi1("tanh", "big", 0.0)


# --- finite networks ------------------------------------------------------------------------------
def _input_pairs(pairs, d, q1, c1, sigma_w2, sigma_b2, key):
    """``pairs`` pairs of inputs (rows 2i, 2i+1) whose first-layer pre-activations have length q1
    and correlation c1; shape (2 · pairs, d)."""
    q_in = np.linalg.qr(np.asarray(jax.random.normal(key, (d, 2 * pairs))))[0].T  # orthonormal
    r2 = (q1 - sigma_b2) / sigma_w2  # ‖x‖²/d so that σ_w² ‖x‖²/d + σ_b² = q1
    cin = (c1 * q1 - sigma_b2) / (sigma_w2 * r2)  # input correlation giving c1 after layer 1
    a, b = q_in[0::2], q_in[1::2]
    x = np.stack([a, cin * a + math.sqrt(1 - cin * cin) * b], axis=1).reshape(2 * pairs, d)
    return jnp.asarray(math.sqrt(r2 * d) * x, jnp.float32)


def _measured_q_c(model, x, keys):
    """Per seed: pre-activation length (K, 2P) and pair correlation (K, P), hidden layers 2 … L."""

    @jax.jit
    def one(key):
        params = model.init(key, x)
        hs = trajectory(model.chain(params, x))  # post-activations, (K + 1, 2P, n)
        p = params["params"]["hidden"]
        z = jnp.einsum("kbn,knm->kbm", hs[:-1], p["kernel"]) + p["bias"][:, None, :]
        q = jnp.mean(z * z, axis=-1)
        z1, z2 = z[:, 0::2], z[:, 1::2]
        return q, jnp.mean(z1 * z2, axis=-1) / jnp.sqrt(q[:, 0::2] * q[:, 1::2])

    out = [one(k) for k in keys]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


@pytest.mark.slow  # 7.6 s: 4 width-1000 networks, a statistical end-to-end check
def test_q_star_and_c_star_match_wide_networks():
    # Chaotic tanh point (c* ≈ 0.17, ξ_c ≈ 7, ξ_q ≈ 0.9). Inputs start at (q*, c*), so layers
    # 2 … 16 should fluctuate around the fixed point; width 1000 as the issue asks.
    sw2, sb2, n, depth, seeds = 4.0, 0.05, 1000, 12, 4
    q_star, c_star = float(mf.q_star("tanh", sw2, sb2)), float(mf.c_star("tanh", sw2, sb2))
    model = gf.models.MLP(
        width=n,
        depth=depth,
        activation="tanh",
        kernel_init=init.gaussian(math.sqrt(sw2)),
        bias_init=init.gaussian_bias(math.sqrt(sb2)),
    )
    x = _input_pairs(8, 64, q_star, c_star, sw2, sb2, jax.random.key(1))
    qs, cs = _measured_q_c(model, x, jax.random.split(jax.random.key(2), seeds))
    # One number per seed (mean over layers and the 8 input pairs); seeds are independent, so
    # the standard error of the mean over seeds is the statistical error. Allow 4 standard errors
    # (false alarm < 1e-4) plus the O(1/n) finite-width bias of the mean-field limit.
    per_seed_q = qs.mean(axis=(1, 2))
    per_seed_c = cs.mean(axis=(1, 2))
    sem_q = per_seed_q.std(ddof=1) / math.sqrt(seeds)
    sem_c = per_seed_c.std(ddof=1) / math.sqrt(seeds)
    assert abs(per_seed_q.mean() - q_star) <= 4 * sem_q + q_star / n
    assert abs(per_seed_c.mean() - c_star) <= 4 * sem_c + 1.0 / n
    # And the statistical error itself is small: the comparison has teeth (a 5 % error in q*
    # or 0.05 in c* would fail).
    assert 4 * sem_q < 0.05 * q_star and 4 * sem_c < 0.05


@pytest.mark.slow
def test_q_and_c_trajectories_follow_the_maps_away_from_the_fixed_point():
    # Ordered tanh point, started far from the fixed point: each layer's measured (q, c) should
    # follow c_layers, not just the end point.
    sw2, sb2, n, depth, seeds = 1.5, 0.1, 1000, 8, 3
    model = gf.models.MLP(
        width=n,
        depth=depth,
        activation="tanh",
        kernel_init=init.gaussian(math.sqrt(sw2)),
        bias_init=init.gaussian_bias(math.sqrt(sb2)),
    )
    x = _input_pairs(1, 64, 3.0, 0.2, sw2, sb2, jax.random.key(3))
    qs, cs = _measured_q_c(model, x, jax.random.split(jax.random.key(4), seeds))
    q_th, c_th = mf.c_layers("tanh", sw2, sb2, 3.0, 0.2, depth - 1)
    # Layer l of the chain's pre-activations is layer l + 1 of the network (layer 1 is the input
    # layer, whose moments the inputs fix). Per-layer standard errors: q ± √(2/n) q/√(2 seeds)
    # ≈ 2.6 % and c ± (1 − c²)/√(n · seeds) ≈ 1.8 %; allow 4 of them.
    np.testing.assert_allclose(qs.mean(axis=(0, 2)), q_th[1:], rtol=4 * 0.026)
    np.testing.assert_allclose(cs.mean(axis=(0, 2)), c_th[1:], atol=4 * 0.018)


@pytest.mark.parametrize(
    "activation", ["tanh", "relu", pytest.param("erf", marks=pytest.mark.slow)]
)
def test_nngp_kernel_matches_wide_networks(activation):
    # Four inputs of different lengths and angles, three hidden layers; the empirical kernel is
    # E[σ_w² h hᵀ/n + σ_b²] (the readout's covariance given the last hidden layer), averaged
    # over seeds.
    sw, sb, n, depth, seeds = 1.4, 0.3, 1000, 3, 6
    x = jax.random.normal(jax.random.key(5), (4, 10)) * jnp.array([0.5, 1.0, 1.5, 2.0])[:, None]
    theory = np.asarray(mf.nngp_kernel(x, activation, sw, sb, depth))
    model = gf.models.MLP(
        width=n,
        depth=depth,
        activation=activation,
        kernel_init=init.gaussian(sw),
        bias_init=init.gaussian_bias(sb),
    )

    @jax.jit
    def empirical(key):
        h = model.features(model.init(key, x), x)
        return sw**2 * h @ h.T / n + sb**2

    ks = np.stack([empirical(k) for k in jax.random.split(jax.random.key(6), seeds)])
    sem = ks.std(axis=0, ddof=1) / math.sqrt(seeds)
    # 4 standard errors plus the O(1/n) finite-width correction (times the kernel's scale).
    tol = 4 * sem + np.abs(theory) * 2.0 / n
    assert np.all(np.abs(ks.mean(axis=0) - theory) <= tol), (ks.mean(axis=0), theory, tol)
    # Depth 0 is the linear readout of the inputs, against a float64 NumPy reference. Float32
    # rounding of x_i·x_j is relative to ‖x_i‖‖x_j‖, not to the (possibly cancelling) dot product
    # itself, so the bound is 1e-6 (≈ 10 eps_32 for d = 10 terms) of σ_w²‖x_i‖‖x_j‖/d + σ_b².
    xd = np.asarray(x, np.float64)
    norms = np.linalg.norm(xd, axis=1)
    ref = sw**2 * xd @ xd.T / 10 + sb**2
    scale = sw**2 * np.outer(norms, norms) / 10 + sb**2
    got = np.asarray(mf.nngp_kernel(x, activation, sw, sb, 0))
    assert np.all(np.abs(got - ref) <= 1e-6 * scale)


def test_nngp_kernel_diagonal_is_the_q_map():
    x = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    k = mf.nngp_kernel(x, "tanh", 1.2, 0.1, 4)
    q0 = 1.44 * jnp.sum(x * x, axis=1) / 2 + 0.01
    np.testing.assert_allclose(
        jnp.diagonal(k), mf.q_layers("tanh", 1.44, 0.01, q0, 4)[-1], rtol=1e-5
    )


# --- the critical initialiser ---------------------------------------------------------------------
def test_init_critical_scale_and_errors(key):
    sw2 = float(mf.critical_sigma_w2("tanh", 0.05))
    w = init.critical("tanh", sigma_b2=0.05)(key, (400, 500))
    # 2e5 Gaussian entries: the sample std has relative standard error 1/√(4e5) = 0.16 %.
    assert float(jnp.std(w)) == pytest.approx(math.sqrt(sw2 / 400), rel=5 * 0.0016)
    assert float(jnp.std(init.critical("relu")(key, (400, 500)))) == pytest.approx(
        math.sqrt(2 / 400), rel=5 * 0.0016
    )
    with pytest.raises(ValueError, match="sigma_b2"):
        init.critical("tanh", sigma_b2=-1.0)
    with pytest.raises(ValueError, match="unknown activation"):
        init.critical("nope")


# --- the experiment -------------------------------------------------------------------------------
@pytest.mark.slow
def test_experiment_measured_chi1_tracks_the_theory():
    # Tiny version of figure (a): finite-net estimates of log χ₁ at four points of the phase
    # diagram. Width 64, depth 12: the estimator's spread is ~0.05 (measured over seeds), so the
    # median of 3 seeds within 0.15 of theory separates ordered (≈ −0.4) from chaotic (≈ +0.2).
    from gradflow.experiments import meanfield as exp

    st = exp.settings(False)._replace(
        measured_sw2=(1.0, 3.0), measured_sb2=(0.05, 0.3), chi_width=64, chi_depth=12, chi_seeds=3
    )
    meas = exp.measured_log_chi1(st, jax.random.key(0))
    med = np.median(meas["log_chi1"], axis=-1)
    assert med.shape == (2, 2)
    np.testing.assert_allclose(med, meas["theory_log_chi1"], atol=0.15)
    assert np.all(med[:, 0] < 0) and np.all(med[:, 1] > 0)


@pytest.mark.slow
def test_experiment_end_to_end(tmp_path):
    from gradflow import cli

    assert cli.main(["figures", "--out", str(tmp_path), "--only", "meanfield"]) == 0
    out = tmp_path / "meanfield"
    for png in ("phase_diagram", "signal_propagation", "jacobian_spectra", "depth_scales"):
        assert (out / f"{png}.png").stat().st_size > 20_000
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert round(summary["critical_sigma_w2_at_sigma_b2_0.05"], 2) == 1.76
    assert summary["phase_diagram"]["measured_vs_theory_log_chi1_rms"] < 0.1
    spectra = summary["jacobian_spectra"]
    # Dynamical isometry: orthogonal weights shrink the tanh spectrum's variance ~25-fold.
    assert spectra["tanh/orthogonal"]["measured_variance"] < 2
    assert spectra["tanh/gaussian"]["measured_variance"] > 5
