"""Top-k singular values of all backward products (jacobians.top_log_singular_values) against
dense SVDs, known spectra, degenerate values, the residual certificate and log scale."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import jacobians
from gradflow.jacobians import JacobianProducts, SegmentedProducts, top_log_singular_values


def _orthogonal(rng, n):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _known(spectra, log_norm, seed=0):
    """JacobianProducts with unit_i = U_i diag(s_i) V_iᵀ / ‖s_i‖ (float64): known log σ."""
    rng = np.random.default_rng(seed)
    units = []
    for s in spectra:
        n = len(s)
        units.append(_orthogonal(rng, n) @ np.diag(s) @ _orthogonal(rng, n).T / np.linalg.norm(s))
    with np.errstate(divide="ignore"):  # log 0 = -inf for a rank-deficient spectrum
        log_s = np.log(np.asarray(spectra)) - np.log(np.linalg.norm(spectra, axis=1))[:, None]
    prods = JacobianProducts(jnp.asarray(np.stack(units)), jnp.asarray(log_norm))
    return prods, log_s + np.asarray(log_norm)[:, None]


def _certified(err, residuals):
    # The certificate: some true σ lies within −log(1 − r) of each value in log scale (the
    # returned value's own σ_i when none is missed, which the tests arrange).
    return err <= -np.log1p(-np.minimum(residuals, 0.999)) + 1e-12


def _random_products(depth, width, dtype=np.float64):
    """Backward products of J_k = D_k W_k, W_k Gaussian (variance 1/n), D_k in [0.5, 1]: a
    random tanh layer's Jacobian; deep products have wide gaps, shallow ones clustered tops."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((depth, width, width)) / np.sqrt(width)
    d = rng.uniform(0.5, 1.0, (depth, width, 1))
    return jacobians.products_from_jacobians(jnp.asarray((d * w).astype(dtype)))


@pytest.mark.parametrize("k", [1, 3])
def test_matches_full_svd_float64(x64, k):
    prods = _random_products(40, 12)
    assert prods.unit.dtype == jnp.float64
    ref = np.asarray(prods.log_singular_values())[:, :k]
    out = top_log_singular_values(prods, k, tol=1e-10)
    err = np.abs(np.asarray(out.log_values) - ref)
    assert np.asarray(out.converged).all()
    # converged: residual <= tol + floor, floor = 12·eps·σ_1/σ_i; the σ_i here are >= 1e-6 σ_1,
    # so every value is certified to <= 1e-10 + 3e-9, and the top one to 1e-10 + 3e-15.
    assert np.all(_certified(err, np.asarray(out.residuals)))
    assert err[:, 0].max() <= 1e-9
    assert err.max() <= 1e-8
    # The Ritz vectors are singular vectors: P v_1 = σ_1 u_1 (unit form, relative 1e-8).
    pv = jnp.einsum("kmn,kn->km", prods.unit, out.right[..., 0])
    s1 = np.exp(np.asarray(out.log_values[:, 0] - prods.log_norm))
    np.testing.assert_allclose(pv, s1[:, None] * np.asarray(out.left[..., 0]), atol=1e-8)


def test_known_spectrum_and_log_norm(x64):
    # Geometric, flat-topped and rank-deficient spectra; log_norm is far outside float range.
    n = 16
    spectra = [
        0.5 ** np.arange(n),
        np.r_[np.linspace(1.0, 0.9, 6), 0.1 * np.ones(n - 6)],
        np.r_[3.0, 2.0, 1.0, np.zeros(n - 3)],
    ]
    prods, ref = _known(spectra, [0.0, -2000.0, 3000.0])
    out = top_log_singular_values(prods, 3, tol=1e-12)
    assert np.asarray(out.converged).all()
    # Float64 with tol 1e-12 and σ_3 >= 0.25 σ_1: certified to ~1e-12; 1e-10 is the margin.
    np.testing.assert_allclose(out.log_values, ref[:, :3], rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        prods.log_singular_values(3, method="subspace", tol=1e-12), ref[:, :3], atol=1e-10
    )
    np.testing.assert_allclose(
        prods.log_spectral_norm(method="subspace", tol=1e-12), ref[:, 0], atol=1e-10
    )


@pytest.mark.parametrize("k", [3, 4])
def test_degenerate_top_values_are_all_found(x64, k):
    # σ_1 = σ_2 = σ_3 exactly: a single-vector Krylov method returns one copy; a block of
    # b >= k + 4 > 3 spans the whole invariant subspace, so all three copies come back.
    n = 20
    s = np.r_[3.0, 3.0, 3.0, 1.0, 0.5 ** np.arange(1, n - 3)]
    prods, ref = _known([s, s[::-1][np.argsort(-s[::-1])]], [0.0, 1.0], seed=3)
    out = top_log_singular_values(prods, k, tol=1e-12)
    assert np.asarray(out.converged).all()
    np.testing.assert_allclose(out.log_values, ref[:, :k], atol=1e-10)


def test_clustered_unconverged_is_reported_and_still_bounded(x64):
    # A Gaussian matrix's top singular values are clustered (σ_2/σ_1 ~ 0.97 at n = 64): one step
    # with a block of 2 cannot converge. It must say so, and the certificate must still hold.
    rng = np.random.default_rng(5)
    a = rng.standard_normal((4, 64, 64))
    a /= np.linalg.norm(a, axis=(1, 2), keepdims=True)
    prods = JacobianProducts(jnp.asarray(a), jnp.zeros(4))
    s = np.linalg.svd(a, compute_uv=False)
    out = top_log_singular_values(prods, 1, tol=1e-6, max_iters=0, oversample=1)
    lv, r = np.asarray(out.log_values[:, 0]), np.asarray(out.residuals[:, 0])
    assert not np.asarray(out.converged).any() and np.all(r > 1e-6) and int(out.iterations) == 0
    # Some true σ within the bound, and the Ritz value never exceeds σ_1 (interlacing).
    nearest = np.min(np.abs(np.log(s) - lv[:, None]), axis=1)
    assert np.all(nearest <= -np.log1p(-np.minimum(r, 0.999)) + 1e-12)
    assert np.all(lv <= np.log(s[:, 0]) + 1e-12)
    # Given rounds it converges to the dense value.
    out = top_log_singular_values(prods, 1, tol=1e-9)
    assert np.asarray(out.converged).all()
    np.testing.assert_allclose(out.log_values[:, 0], np.log(s[:, 0]), atol=1e-8)


def test_jit_matches_eager_and_default_unchanged():
    prods = _random_products(12, 8, np.float32)
    eager = top_log_singular_values(prods, 2)
    jitted = jax.jit(lambda p: top_log_singular_values(p, 2))(prods)
    np.testing.assert_allclose(jitted.log_values, eager.log_values, rtol=1e-6)
    # Default method is still the full SVD, and k truncates it.
    full = np.asarray(prods.log_singular_values())
    assert full.shape == (12, 8)
    np.testing.assert_array_equal(prods.log_singular_values(2), full[:, :2])
    np.testing.assert_array_equal(prods.log_spectral_norm(), full[:, 0])


def test_float32_underflowing_products_stay_finite():
    # J = Q diag(d) Qᵀ with d_1 = 0.5: the product over j steps has σ_1 = 0.5^j, below float32's
    # 1e-38 (and 1e-45 subnormals) from j = 150 on; the log form keeps it exact.
    rng = np.random.default_rng(2)
    q = _orthogonal(rng, 8)
    d = np.r_[0.5, 0.45, np.linspace(0.3, 0.1, 6)]
    jac = np.broadcast_to(q @ np.diag(d) @ q.T, (200, 8, 8)).astype(np.float32)
    prods = jacobians.products_from_jacobians(jac)
    assert prods.unit.dtype == jnp.float32
    out = top_log_singular_values(prods, 2)
    steps = np.arange(200, 0, -1)
    assert np.all(np.isfinite(np.asarray(out.log_values)))
    # Float32: each of ≤ 200 renormalised matmuls adds ~1e-7 relative error to the log, so
    # 2e-4 is loose; σ_1 is certified to tol = 1e-3 (first order) and in fact ~1e-6.
    np.testing.assert_allclose(out.log_values[:, 0], steps * np.log(0.5), rtol=0, atol=2e-4)
    # σ_2/σ_1 = 0.9^j: representable in the float32 unit matrix for j <= ~100 only.
    shallow = steps <= 60
    np.testing.assert_allclose(
        out.log_values[shallow, 1], steps[shallow] * np.log(0.45), rtol=0, atol=2e-3
    )


def test_segmented_products(x64):
    # Two segments as backward_products returns them for a 6 -> 10 layer then five 10 -> 10
    # steps (built directly: compiling a Segmented chain's products takes seconds).
    rng = np.random.default_rng(4)
    raw = (rng.standard_normal((1, 10, 6)), rng.standard_normal((5, 10, 10)))
    parts = tuple(
        JacobianProducts(
            jnp.asarray(a / np.linalg.norm(a, axis=(1, 2), keepdims=True)), jnp.ones(len(a))
        )
        for a in raw
    )
    prods = SegmentedProducts(parts, tuple(f"layer_{i}" for i in range(6)))
    out = top_log_singular_values(prods, 1, tol=1e-11)
    assert isinstance(out, tuple) and len(out) == 2
    for part, ref in zip(out, prods.log_singular_values()):
        assert np.asarray(part.converged).all()
        # Certified to 1e-11 + floor (σ_1 is the largest: floor 10·eps); 1e-9 is the margin.
        np.testing.assert_allclose(part.log_values, np.asarray(ref)[:, :1], atol=1e-9)
    # The 10 x 6 product of the first step: right vectors in R^6, left in R^10.
    assert out[0].right.shape == (1, 6, 1) and out[0].left.shape == (1, 10, 1)
    np.testing.assert_allclose(
        prods.log_spectral_norm(method="subspace", tol=1e-11), prods.log_spectral_norm(), atol=1e-9
    )
    with pytest.raises(ValueError, match="k must be <= min"):
        prods.log_singular_values(7, method="subspace")


@pytest.mark.parametrize(
    "k, match",
    [
        (0, "k must be an integer >= 1"),
        (-1, "k must be"),
        (1.5, "k must be"),
        (True, "k must be"),
        ("2", "k must be"),
        (9, r"k must be <= min\(m, n\) = 8"),
    ],
)
def test_bad_k_raises_value_error_naming_k(k, match):
    prods = JacobianProducts(jnp.eye(8)[None] / jnp.sqrt(8.0), jnp.zeros(1))
    with pytest.raises(ValueError, match=match):
        top_log_singular_values(prods, k)
    with pytest.raises(ValueError, match=match):
        prods.log_singular_values(k, method="subspace")


def test_other_bad_arguments():
    prods = JacobianProducts(jnp.eye(8)[None] / jnp.sqrt(8.0), jnp.zeros(1))
    with pytest.raises(ValueError, match="k must be an integer >= 1 for method"):
        prods.log_singular_values(method="subspace")
    with pytest.raises(ValueError, match="method must be one of"):
        prods.log_spectral_norm(method="lanczos")
    with pytest.raises(ValueError, match="tol"):
        top_log_singular_values(prods, 1, tol=-1.0)
    with pytest.raises(ValueError, match="tol"):
        top_log_singular_values(prods, 1, tol=float("nan"))
    with pytest.raises(ValueError, match="max_iters"):
        top_log_singular_values(prods, 1, max_iters=-1)
    with pytest.raises(ValueError, match="oversample"):
        top_log_singular_values(prods, 1, oversample=1.5)
    with pytest.raises(TypeError, match="products must be"):
        top_log_singular_values(jnp.eye(8), 1)
