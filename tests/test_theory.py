"""theory: Pascanu's bound on measured RNN Jacobians, Fuss–Catalan, free-probability spectra."""

import math

import _reference as ref
import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradflow as gf
from gradflow import theory
from gradflow.models import RNN


# --- Pascanu, Mikolov & Bengio 2013 ---------------------------------------------------------------
def test_pascanu_bound_values_and_conditions():
    np.testing.assert_allclose(theory.pascanu_bound(0.5, "tanh", [0, 1, 5]), [1, 0.5, 0.5**5])
    # Sigmoid: γ = 1/4, so the threshold is λ₁ = 4 (Pascanu 2013, §3.1).
    assert theory.pascanu_bound(3.0, "sigmoid", 2) == pytest.approx(0.75**2)
    assert theory.pascanu_vanishing_sufficient(3.9, "sigmoid")
    assert not theory.pascanu_exploding_necessary(3.9, "sigmoid")
    assert theory.pascanu_exploding_necessary(4.1, "sigmoid")
    assert not theory.pascanu_vanishing_sufficient(1.0, "tanh")  # on the threshold: neither
    assert not theory.pascanu_exploding_necessary(1.0, "tanh")
    # γ may be given as a number; the log form stays finite where the bound underflows.
    assert theory.pascanu_log_bound(0.5, 1.0, 5000) == pytest.approx(5000 * math.log(0.5))
    assert theory.pascanu_bound(0.5, 1.0, 5000) == 0.0


@pytest.mark.parametrize("activation, rho", [("tanh", 0.9), ("tanh", 1.3), ("sigmoid", 3.0)])
def test_pascanu_bound_holds_for_a_measured_rnn(activation, rho):
    # ‖∂x_T/∂x_k‖₂ of a real RNN (orthogonal W scaled by ρ, so λ₁ = ρ) never exceeds (γλ₁)^(T−k).
    n, steps = 16, 12
    model = gf.models.RNN(width=n, activation=activation, recurrent_init=gf.init.orthogonal(rho))
    u = jax.random.normal(jax.random.key(1), (steps, 3))
    params = model.init(jax.random.key(0), u)
    products = gf.jacobians.backward_products(model.chain(params, u))
    measured = np.asarray(products.log_spectral_norm())  # k = 0 … T−1
    bound = theory.pascanu_log_bound(rho, activation, steps - np.arange(steps))
    # float32 SVD of unit-norm products: 1e-5 absolute slack on the log scale.
    assert np.all(measured <= bound + 1e-5)


def test_pascanu_rejects_bad_input():
    with pytest.raises(ValueError, match="lambda1"):
        theory.pascanu_bound(-1.0, "tanh", 3)
    with pytest.raises(ValueError, match="steps"):
        theory.pascanu_bound(1.0, "tanh", -3)
    with pytest.raises(ValueError, match="gamma"):
        theory.pascanu_bound(1.0, 0.0, 3)
    with pytest.raises(ValueError, match="unknown activation"):
        theory.pascanu_bound(1.0, "tahn", 3)


def _backward_products(model, params, x):
    # One jit around chain construction and analysis: one XLA compilation, not one per primitive.
    return jax.jit(lambda p, xx: gf.jacobians.backward_products(model.chain(p, xx)))(params, x)


# Pascanu's bound on chains' backward products (moved from test_jacobians.py): hand-drawn float64
# parameters, the bound written out from λ₁ and γ.
def _pascanu_check(width, steps, scale, seed, activation):
    model = RNN(width=width, activation=activation)
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((steps, 2))
    params = ref.random_params(model, u, seed=seed)
    params["params"]["recurrent"]["kernel"] *= scale
    w = params["params"]["recurrent"]["kernel"]
    lam1 = np.linalg.norm(w, 2)  # largest singular value of the recurrent kernel
    gamma = gf.activations.get(activation).gamma
    products = _backward_products(model, params, u)
    log_norm2 = np.asarray(products.log_spectral_norm())  # log ‖∂x_T/∂x_k‖₂, k = 0 … T−1
    bound = (steps - np.arange(steps)) * math.log(gamma * lam1)
    return log_norm2, bound


@settings(max_examples=6, deadline=None, derandomize=True)
@given(
    width=st.integers(1, 4),
    steps=st.integers(1, 6),
    scale=st.floats(0.2, 6.0),
    seed=st.integers(0, 2**16),
    activation=st.sampled_from(["tanh", "sigmoid"]),
)
def test_pascanu_bound_never_violated(width, steps, scale, seed, activation):
    # Pascanu et al. 2013 (arXiv:1211.5063) §3.1: ‖∂x_t/∂x_{t−1}‖ ≤ ‖Wᵀ‖‖diag σ'‖ ≤ λ₁γ, so
    # ‖∂x_T/∂x_k‖₂ ≤ (γλ₁)^(T−k). In float64 the computed norms carry ~1e-15 relative error, so a
    # 1e-9 slack in log space cannot hide a real violation.
    with jax.enable_x64(True):
        log_norm2, bound = _pascanu_check(width, steps, scale, seed, activation)
    assert np.all(log_norm2 <= bound + 1e-9), (log_norm2, bound)


@pytest.mark.parametrize("activation, gamma", [("tanh", 1.0), ("sigmoid", 0.25)])
def test_pascanu_bound_is_attained_at_a_fixed_point_at_zero(x64, activation, gamma):
    # One unit, zero input, x_0 = 0 and b = −w·σ(0): x_t = w·σ(0) + b = 0 for every t, where
    # σ'(0) = γ for both tanh and sigmoid, so |∂x_T/∂x_k| = (γ|w|)^(T−k): the bound is attained,
    # which shows the test above compares the right powers and the right constant.
    w = 1.7
    model = RNN(width=1, activation=activation)
    u = np.zeros((6, 1))
    params = ref.random_params(model, u)
    params["params"]["input"]["bias"][:] = -w * gf.activations.get(activation).value_at_zero
    params["params"]["recurrent"]["kernel"][:] = w
    log_norm2 = np.asarray(_backward_products(model, params, u).log_spectral_norm())
    np.testing.assert_allclose(log_norm2, (6 - np.arange(6)) * math.log(gamma * w), rtol=1e-12)


# --- Fuss–Catalan ---------------------------------------------------------------------------------
def test_fuss_catalan_moments_are_the_published_numbers():
    # L = 1: Catalan numbers; L = 2: OEIS A001764 (1, 1, 3, 12, 55, 273), Penson & Życzkowski 2011.
    np.testing.assert_array_equal(theory.fuss_catalan_moments(1, 5), [1, 1, 2, 5, 14, 42])
    np.testing.assert_array_equal(theory.fuss_catalan_moments(2, 5), [1, 1, 3, 12, 55, 273])
    assert theory.fuss_catalan_edge(1) == pytest.approx(4.0)
    assert theory.fuss_catalan_edge(2) == pytest.approx(27 / 4)


def test_fuss_catalan_density_reproduces_its_moments():
    for depth in (1, 2, 3):
        edge = theory.fuss_catalan_edge(depth)
        # x = edge · s⁴ tames the x^(−L/(L+1)) singularity at 0 for the trapezoid rule.
        s = np.linspace(0, 1, 50001)[1:-1]
        x, dx = edge * s**4, 4 * edge * s**3
        rho = theory.fuss_catalan_density(x, depth)
        got = [np.trapezoid(rho * x**k * dx, s) for k in range(4)]
        # Measured quadrature error of the substituted trapezoid: <= 3e-5 (L = 3), so 1e-4.
        np.testing.assert_allclose(got, theory.fuss_catalan_moments(depth, 3), rtol=1e-4)


def test_fuss_catalan_depth_one_is_marchenko_pastur():
    x = np.linspace(0.01, 3.99, 50)
    mp = np.sqrt(4 - x) / (2 * np.pi * np.sqrt(x))
    np.testing.assert_allclose(theory.fuss_catalan_density(x, 1), mp, rtol=1e-10)
    assert theory.fuss_catalan_density(np.array([-1.0, 0.0, 4.5]), 1).tolist() == [0, 0, 0]


def test_fuss_catalan_against_products_of_ginibre_matrices():
    # Monte Carlo: X = G_3 G_2 G_1 with N(0, 1/N) entries; E λ^k of X Xᵀ against m_k. With
    # N = 300 and 4 draws the second and third moments have standard errors of ~1–2 % (and the
    # finite-N bias is O(1/N)), so 8 % is 4+ standard errors.
    rng = np.random.default_rng(0)
    n, depth = 300, 3
    lam = []
    for _ in range(4):
        x = np.eye(n)
        for _ in range(depth):
            x = rng.normal(0, 1 / math.sqrt(n), (n, n)) @ x
        lam.append(np.linalg.eigvalsh(x @ x.T))
    lam = np.concatenate(lam)
    got = [np.mean(lam**k) for k in (1, 2, 3)]
    np.testing.assert_allclose(got, theory.fuss_catalan_moments(depth, 3)[1:], rtol=0.08)


# --- free-probability Jacobian spectra ------------------------------------------------------------
def test_linear_gaussian_network_spectrum_is_fuss_catalan():
    # The generic S-transform solver against the closed-form density: with broadening η = 1e-4
    # the measured relative error is ~1e-4 inside the support (the broadening itself), so 2e-3.
    for depth in (1, 4):
        lam = np.geomspace(1e-3, 0.5 * theory.fuss_catalan_edge(depth), 40)
        spec = theory.linear_jacobian_spectrum(lam, depth, eta=1e-4, steps_per_decade=800)
        np.testing.assert_allclose(spec.density, theory.fuss_catalan_density(lam, depth), rtol=2e-3)
        assert spec.mean == pytest.approx(1.0) and spec.variance == pytest.approx(depth)


def test_linear_orthogonal_network_is_an_exact_isometry():
    # S ≡ 1: G(z) = 1/(z − 1), a Lorentzian of relative width η at λ = 1, of height 1/(πη).
    spec = theory.linear_jacobian_spectrum(np.array([0.5, 1.0, 2.0]), 8, weights="orthogonal")
    assert spec.mean == 1.0 and spec.variance == 0.0
    assert spec.density[1] == pytest.approx(1 / (math.pi * 1e-3), rel=1e-6)
    assert spec.density[0] < 1e-2 and spec.density[2] < 1e-2


def _relu_jacobian_eigenvalues(depth, weights, n=256, draws=5, seed=0):
    """Squared singular values of D_L W_L ⋯ D_1 W_1 with Bernoulli(½) D and σ_w² = 2."""
    rng = np.random.default_rng(seed)
    if weights == "orthogonal":
        # Haar orthogonal from JAX (NumPy's LAPACK QR is pathologically slow on a busy shared
        # machine), all draws × depth matrices in one call: ~1 s where one call per matrix took
        # ~0.9 s each. A different (equally Haar) sample than one key per matrix; same N = 256 × 5.
        haar = jax.random.orthogonal(jax.random.key(seed), n, shape=(draws, depth))
        haar = math.sqrt(2) * np.asarray(haar, np.float64)
    out = []
    for d in range(draws):
        j = np.eye(n)
        for layer in range(depth):
            if weights == "gaussian":
                w = rng.normal(0, math.sqrt(2 / n), (n, n))
            else:
                w = haar[d, layer]
            j = (rng.random(n) < 0.5)[:, None] * (w @ j)
        out.append(np.linalg.svd(j, compute_uv=False) ** 2)
    return np.concatenate(out)


@pytest.mark.parametrize("weights", ["gaussian", "orthogonal"])
def test_relu_spectrum_against_monte_carlo(weights):
    depth = 4
    lam = _relu_jacobian_eigenvalues(depth, weights)
    spec = theory.relu_jacobian_spectrum(np.geomspace(1e-6, 100, 600), depth, weights=weights)
    # Moments: E λ = 1 and Var λ = 2L (Gaussian) or L (orthogonal). Finite-N samples of a
    # heavy-tailed spectrum: standard errors ~3 % (mean) and ~10 % (variance) at N = 256 × 5.
    assert spec.atom_at_zero == 0.5
    assert lam.mean() == pytest.approx(spec.mean, rel=0.1)
    assert lam.var() == pytest.approx(spec.variance, rel=0.3)
    assert spec.variance == (2 * depth if weights == "gaussian" else depth)
    # Whole distribution: Kolmogorov–Smirnov distance between the non-zero eigenvalues and the
    # continuous part of the prediction (normalised to 1). For 640 samples the 99.9 % KS critical
    # value is 1.95/√640 ≈ 0.077 (the samples are not independent — they repel — which only
    # shrinks the distance), so 0.08 holds unless the prediction is wrong.
    nonzero = np.sort(lam[lam > 1e-9])
    assert abs(len(nonzero) / len(lam) - 0.5) < 0.03  # the atom at 0
    grid, dens = spec.eigenvalues, spec.density
    cdf = np.concatenate(
        [
            [0],
            np.cumsum(0.5 * (dens[1:] * grid[1:] + dens[:-1] * grid[:-1]) * np.diff(np.log(grid))),
        ]
    )
    cdf = cdf / cdf[-1]
    model = np.interp(nonzero, grid, cdf)
    empirical = np.arange(1, len(nonzero) + 1) / len(nonzero)
    assert np.max(np.abs(model - empirical)) < 0.08


def test_hard_tanh_critical_point_and_isometry():
    q = 0.1
    sw2, sb2, p = theory.hard_tanh_critical(q)
    assert p == pytest.approx(math.erf(1 / math.sqrt(2 * q)))
    assert sw2 * p == pytest.approx(1.0)  # χ₁ = σ_w² P(|h| < 1) = 1
    # The fixed point: q = σ_w² E clip(h)² + σ_b², E by a plain NumPy trapezoid.
    h = np.linspace(-12 * math.sqrt(q), 12 * math.sqrt(q), 400001)
    pdf = np.exp(-h * h / (2 * q)) / math.sqrt(2 * math.pi * q)
    clip2 = np.trapezoid(np.clip(h, -1, 1) ** 2 * pdf, h)
    assert sw2 * clip2 + sb2 == pytest.approx(q, rel=1e-9)
    # As q* → 0 orthogonal weights give isometry: Var λ = L (1/p − 1) → 0; Gaussian ones do not.
    small = theory.hard_tanh_jacobian_spectrum(np.array([1.0]), 16, 1e-3, weights="orthogonal")
    gauss = theory.hard_tanh_jacobian_spectrum(np.array([1.0]), 16, 1e-3, weights="gaussian")
    assert small.variance < 1e-3 < 15 < gauss.variance


def test_tanh_d2_atoms_match_the_mean_field_integral(x64):
    # Two independent quadratures of E φ'(√q z)² for tanh: Gauss–Hermite atoms here, the
    # sinh-mapped rule of gradflow.meanfield; at q = 0.3 both are exact to ~1e-12.
    values, weights = theory.gaussian_d2("tanh", 0.3)
    dphi2 = float(gf.meanfield.chi1("tanh", 1.0, 0.0, q=0.3))
    assert float(values @ weights) == pytest.approx(dphi2, rel=1e-10)


def test_spectrum_moments_formula_and_errors():
    mean, var = theory.jacobian_spectrum_moments(
        10, d2_mean=0.5, d2_second_moment=0.5, sigma_w2=2.0, weights="orthogonal"
    )
    assert (mean, var) == (1.0, 10.0)
    with pytest.raises(ValueError, match="weights"):
        theory.jacobian_spectrum_moments(3, d2_mean=1, d2_second_moment=1, sigma_w2=1, weights="x")
    with pytest.raises(ValueError, match="eigenvalues"):
        theory.relu_jacobian_spectrum(np.array([-1.0, 1.0]), 3)
    with pytest.raises(ValueError, match="d2_values"):
        theory.jacobian_spectrum(np.array([1.0]), 3, d2_values=[-1.0], d2_weights=[1.0], sigma_w2=1)
    with pytest.raises(TypeError):
        theory.fuss_catalan_moments(2.5, 3)
