"""Spectra against NumPy's LAPACK, and Newman's exponents against Monte Carlo."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import spectra, theory

# float32 LAPACK in both libraries: singular values agree to ~eps32·σ_max ≈ 1e-7 relative to the
# largest; 1e-5 relative plus 1e-6 absolute is a ≥ 10× margin.
_TOL32 = dict(rtol=1e-5, atol=1e-6)


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("shape", [(5, 5), (3, 7), (7, 3)])
def test_singular_values_vs_numpy(shape):
    a = _rng().standard_normal(shape).astype(np.float32)
    s = spectra.singular_values(a)
    assert s.shape == (min(shape),)
    np.testing.assert_allclose(s, np.linalg.svd(a.astype(np.float64), compute_uv=False), **_TOL32)
    assert np.all(np.diff(np.asarray(s)) <= 0)  # descending


def test_singular_values_batched_over_leading_axes():
    a = _rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32)
    s = spectra.singular_values(a)
    assert s.shape == (2, 3, 4)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(s[i, j], np.linalg.svd(a[i, j], compute_uv=False), **_TOL32)


def test_singular_values_float64(x64):
    a = _rng(2).standard_normal((6, 6))
    s = spectra.singular_values(a)
    assert s.dtype == jnp.float64
    np.testing.assert_allclose(s, np.linalg.svd(a, compute_uv=False), rtol=1e-12)


def test_integer_matrix_is_cast():
    np.testing.assert_allclose(spectra.singular_values(np.array([[3, 0], [0, 4]])), [4.0, 3.0])


def test_spectral_radius_vs_numpy():
    a = _rng(3).standard_normal((4, 6, 6)).astype(np.float32)
    rho = spectra.spectral_radius(a)
    assert rho.shape == (4,)
    expected = [np.max(np.abs(np.linalg.eigvals(m.astype(np.float64)))) for m in a]
    # Nonsymmetric eigenvalues are less well conditioned than singular values: 1e-4 relative.
    np.testing.assert_allclose(rho, expected, rtol=1e-4)


def test_spectral_radius_of_rotation_is_its_scale():
    # A scaled rotation has complex eigenvalues r·e^{±iθ}: ρ = r although no eigenvalue is real.
    r, theta = 0.8, 1.1
    a = r * np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    assert float(spectra.spectral_radius(a)) == pytest.approx(r, rel=1e-6)
    # Nilpotent: ρ = 0 while ‖A‖₂ = 1, so the radius is not the spectral norm.
    assert float(spectra.spectral_radius(np.array([[0.0, 1.0], [0.0, 0.0]]))) == pytest.approx(
        0.0, abs=1e-6
    )


def test_condition_number_vs_numpy():
    a = _rng(4).standard_normal((3, 5, 5)).astype(np.float32)
    kappa = spectra.condition_number(a)
    # κ = σ_max/σ_min amplifies σ_min's absolute error eps·σ_max by κ: relative error ≲ κ·eps32,
    # ≤ 1e-4 for these κ < 100; the tolerance is 1e-3 relative.
    np.testing.assert_allclose(kappa, np.linalg.cond(a.astype(np.float64)), rtol=1e-3)
    rect = _rng(5).standard_normal((3, 6)).astype(np.float32)
    assert float(spectra.condition_number(rect)) == pytest.approx(
        np.linalg.cond(rect.astype(np.float64)), rel=1e-3
    )


@pytest.mark.parametrize(
    "a",
    [
        np.zeros((3, 3)),
        np.diag([1.0, 2.0, 0.0]),
        np.array([[1.0, 2.0], [2.0, 4.0]]),  # rank one; float32 SVD gives σ_min ~ 1e-8, not 0
        np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]),  # rank two
    ],
    ids=["zero", "diag", "rank1", "rank2"],
)
def test_condition_number_infinite_for_singular(a):
    assert np.isinf(float(spectra.condition_number(a.astype(np.float32))))


def test_condition_number_batched_mixed():
    a = np.stack([np.diag([4.0, 2.0]), np.diag([1.0, 0.0]), np.eye(2)]).astype(np.float32)
    np.testing.assert_allclose(spectra.condition_number(a), [2.0, np.inf, 1.0], rtol=1e-6)


@pytest.mark.parametrize(
    "fn", [spectra.singular_values, spectra.spectral_radius, spectra.condition_number]
)
@pytest.mark.parametrize("bad", [np.float32(1.0), np.ones(4)], ids=["scalar", "vector"])
def test_non_matrix_rejected(fn, bad):
    with pytest.raises(ValueError, match=r"\(\.\.\., m, n\)"):
        fn(bad)


def test_spectral_radius_needs_square():
    with pytest.raises(ValueError, match="square"):
        spectra.spectral_radius(np.ones((2, 3)))


# --- Newman's Lyapunov exponents ------------------------------------------------------------------
_EULER_GAMMA = 0.5772156649015329


@pytest.mark.parametrize("sigma2", [1.0, 2.5])
def test_newman_n1_is_mean_log_abs_gaussian(sigma2):
    # n = 1: the product of scalars z_t ~ N(0, σ²) grows at rate E[log|z|] = ½(log 2σ² + ψ(½)),
    # with ψ(½) = −γ_E − 2 log 2, i.e. log σ − (γ_E + log 2)/2.
    (lam,) = np.asarray(theory.newman_lyapunov_exponents(1, sigma2))
    closed = 0.5 * math.log(sigma2) - 0.5 * (_EULER_GAMMA + math.log(2.0))
    assert lam == pytest.approx(closed, abs=1e-6)
    # Monte Carlo: Var log|z| = π²/8, so the standard error over 10⁶ draws is 1.1e-3; 5 SE.
    z = _rng(6).normal(0.0, math.sqrt(sigma2), 1_000_000)
    assert abs(np.mean(np.log(np.abs(z))) - lam) < 5 * math.sqrt(math.pi**2 / 8 / z.size)


@pytest.mark.parametrize("n, sigma2", [(3, 1.0), (5, 0.5)])
def test_newman_sum_is_mean_log_abs_det(n, sigma2):
    # Σλ_i is the growth rate of volumes, E log|det W| for W with i.i.d. N(0, σ²/n) entries.
    lams = np.asarray(theory.newman_lyapunov_exponents(n, sigma2))
    assert lams.shape == (n,)
    assert np.all(np.diff(lams) < 0)  # descending
    w = _rng(7).normal(0.0, math.sqrt(sigma2 / n), (200_000, n, n))
    logdet = np.linalg.slogdet(w)[1]
    se = logdet.std() / math.sqrt(logdet.size)  # ≈ 3e-3
    assert abs(logdet.mean() - lams.sum()) < 5 * se


def test_newman_sigma_shift():
    # σ² multiplies every matrix by σ, shifting every exponent by ½ log σ².
    a = np.asarray(theory.newman_lyapunov_exponents(4, 1.0))
    b = np.asarray(theory.newman_lyapunov_exponents(4, 3.0))
    np.testing.assert_allclose(b - a, 0.5 * math.log(3.0), rtol=1e-6)


def test_newman_rejects_bad_n():
    with pytest.raises(ValueError, match="n must be >= 1"):
        theory.newman_lyapunov_exponents(0)
    with pytest.raises(TypeError, match="n must be an integer"):
        theory.newman_lyapunov_exponents(2.0)
