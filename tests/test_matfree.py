"""Matrix-free top-k singular values (Golub–Kahan–Lanczos on jvp/vjp) against the dense route:
backward products + SVD, end-to-end Jacobians, numpy's SVD; log-scale at depth, breakdown on
rank-deficient operators, jit/vmap, memory linear in the width, and argument errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow import jacobians, spectra
from gradflow.chain import Chain

# Compile time is most of this file's cost (each jax.random.normal shape and dtype compiles its
# own threefry program, ~0.3 s each; a flax init ~1.3–2 s), so the test chains' weights and
# inputs are NumPy draws from the same distributions as the initialisers named in the comments.
# These tests compare Lanczos against dense references on whatever chain they get.


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def _params(model, x, seed, sigma_w=1.0, sigma_b=0.0, recurrent_gain=None):
    """``model``'s parameter tree (shapes and dtypes from ``jax.eval_shape``, nothing compiled):
    kernels N(0, σ_w²/fan_in) (``gf.init.gaussian``; stacked hidden kernels are (depth, in,
    out)), biases N(0, σ_b²) (``gf.init.gaussian_bias``; zeros for σ_b = 0), and a recurrent
    kernel gain · Q with Q Haar-orthogonal (``gf.init.orthogonal``)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = [getattr(p, "key", "") for p in path]
        if name[-1] == "bias":
            value = sigma_b * rng.standard_normal(leaf.shape)
        elif recurrent_gain is not None and "recurrent" in name:
            q, r = np.linalg.qr(rng.standard_normal(leaf.shape))
            value = recurrent_gain * q * np.sign(np.diag(r))
        else:
            value = sigma_w * rng.standard_normal(leaf.shape) / np.sqrt(leaf.shape[-2])
        return jnp.asarray(value, leaf.dtype)

    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.tree_util.tree_map_with_path(draw, shapes)


def _mlp_chain(width, depth, sigma_w, key=0, activation="tanh"):
    # kernel_init=gf.init.gaussian(sigma_w), zero biases
    model = gf.models.MLP(width=width, depth=depth, activation=activation)
    x = _normal(key + 100, (width,))
    return model.chain(_params(model, x, key, sigma_w), x)


def _rnn_chain(width, steps, gain=1.2, key=0):
    # recurrent_init=gf.init.orthogonal(gain), input kernel gaussian(1), zero biases
    model = gf.models.RNN(width=width)
    u = _normal(key + 100, (steps, 3))
    return model.chain(_params(model, u, key, recurrent_gain=gain), u)


def test_chain_matches_dense_backward_products_float64(x64):
    chain = _mlp_chain(width=40, depth=20, sigma_w=1.5)
    dense = jacobians.backward_products(chain).log_singular_values()
    for start in (0, 7, 18):  # one compiled program serves every start
        out = spectra.top_singular_values(chain, 5, start=start, num_iters=30)
        # float64 and full reorthogonalisation: the Ritz values agree with LAPACK's SVD of the
        # dense product to ~1e-10 once converged; 1e-8 leaves room for the Lanczos stopping
        # error, which the reported residuals bound (checked to be tiny here).
        np.testing.assert_allclose(out.log_values, dense[start, :5], atol=1e-8)
        assert np.all(out.residuals < 1e-8)
    assert out.right.shape == (40, 5) and out.left.shape == (40, 5)


def test_chain_matches_dense_float32():
    chain = _mlp_chain(width=64, depth=30, sigma_w=1.2, key=3)
    dense = jacobians.backward_products(chain).log_singular_values()[0, :4]
    out = spectra.top_singular_values(chain, 4)
    # float32: both routes carry ~1e-6 relative rounding per step over 29 steps; 1e-4 in log σ
    # (a relative error of 1e-4 in σ) is ~3x that accumulated budget.
    np.testing.assert_allclose(out.log_values, dense, atol=1e-4)
    np.testing.assert_allclose(out.values, np.exp(dense), rtol=1e-4)


def test_singular_vectors_are_singular_vectors(x64):
    chain = _mlp_chain(width=32, depth=10, sigma_w=1.0, key=5)
    p = jacobians.end_to_end(chain)
    out = spectra.top_singular_values(chain, 3, num_iters=32)
    # P v_i = σ_i u_i and Pᵀ u_i = σ_i v_i for the returned triplets (exact in float64).
    np.testing.assert_allclose(p @ out.right, out.left * out.values[None, :], atol=1e-10)
    np.testing.assert_allclose(p.T @ out.left, out.right * out.values[None, :], atol=1e-10)
    np.testing.assert_allclose(out.right.T @ out.right, np.eye(3), atol=1e-12)


def test_rnn_chain_shared_params_stop(x64):
    chain = _rnn_chain(width=24, steps=30)
    # P = ∂h_25/∂h_5 from the dense per-step Jacobians, multiplied out directly.
    jac = jacobians.step_jacobians(chain)
    p = np.eye(24)
    for j in jac[5:25]:
        p = np.asarray(j) @ p
    expected = np.linalg.svd(p, compute_uv=False)[:3]
    out = spectra.top_singular_values(chain, 3, start=5, stop=25, num_iters=24)
    np.testing.assert_allclose(out.values, expected, rtol=1e-9)


@pytest.mark.slow  # depth 401, ~5 s
def test_deep_vanishing_product_stays_finite_in_log_space():
    # σ_w = 0.5 with tanh: ‖P‖ ~ 0.5^400 ≈ 1e-120 underflows float32 (min normal 1e-38), so the
    # raw product is 0; the log-scale Lanczos still returns the right log σ. The dense route in
    # log form (backward_products) is the reference; both are float32.
    # The flax init's draw, as before (jitted: one compilation): with a NumPy draw of the same
    # distribution σ_3 had not converged in 32 steps (1 % off), so this chain stays as it was.
    model = gf.models.MLP(width=32, depth=401, kernel_init=gf.init.gaussian(0.5))
    x = jax.random.normal(jax.random.key(107), (32,))
    chain = model.chain(jax.jit(model.init)(jax.random.key(7), x), x)
    dense = jacobians.backward_products(chain).log_singular_values()[0, :3]
    out = spectra.top_singular_values(chain, 3, num_iters=32)
    assert np.all(np.isfinite(out.log_values))
    assert float(dense[0]) < -200  # really far below float32's range
    # 400 renormalised float32 steps: relative error ~ 400 * 6e-8 ≈ 2.4e-5 per route.
    np.testing.assert_allclose(out.log_values, dense, rtol=1e-5, atol=1e-3)
    assert float(out.values[0]) == 0.0  # exp underflows, as documented


def test_dense_matrix_matches_numpy(x64):
    a = _normal(1, (30, 50))
    out = spectra.top_singular_values(a, 4, num_iters=30)
    np.testing.assert_allclose(out.values, np.linalg.svd(np.asarray(a), compute_uv=False)[:4])
    assert float(spectra.spectral_norm(a, num_iters=30)) == pytest.approx(
        float(np.linalg.norm(np.asarray(a), 2)), rel=1e-12
    )


def test_rank_deficient_operator_restarts_without_nan(x64):
    # Rank 2: the Krylov space is exhausted after two steps (breakdown); the restart must give
    # σ_3 = σ_4 = 0 (log = -inf), not NaN. The shape and num_iters of test_dense_matrix_matches_
    # numpy, whose compiled program this reuses (28 steps past the breakdown, not 6: more
    # restarts, the same check).
    u = _normal(2, (30, 2))
    v = _normal(3, (2, 50))
    a = u @ v
    out = spectra.top_singular_values(a, 4, num_iters=30)
    expected = np.linalg.svd(np.asarray(a), compute_uv=False)[:2]
    np.testing.assert_allclose(out.values[:2], expected, rtol=1e-10)
    assert not np.any(np.isnan(out.values)) and not np.any(np.isnan(out.log_values))
    np.testing.assert_allclose(out.values[2:], 0.0, atol=1e-10 * expected[0])


def test_relu_chain_with_dead_units(x64):
    # ReLU with negative biases kills units: P is rank deficient, Lanczos breaks down and restarts.
    # (kernel_init=gf.init.lecun(), i.e. gaussian(1), bias_init=gf.init.gaussian_bias(1.0))
    model = gf.models.MLP(width=24, depth=8, activation="relu")
    x = _normal(4, (24,))
    chain = model.chain(_params(model, x, 5, sigma_w=1.0, sigma_b=1.0), x)
    dense = np.linalg.svd(np.asarray(jacobians.end_to_end(chain)), compute_uv=False)
    out = spectra.top_singular_values(chain, 6, num_iters=24)
    assert not np.any(np.isnan(out.values))
    np.testing.assert_allclose(out.values, dense[:6], atol=1e-10 * dense[0])


def test_lanczos_svd_on_closures(x64):
    a = _normal(6, (12, 9))
    out = spectra.lanczos_svd(lambda v: a @ v, lambda w: a.T @ w, 9, 3, num_iters=9)
    np.testing.assert_allclose(out.values, np.linalg.svd(np.asarray(a), compute_uv=False)[:3])
    assert out.left.shape == (12, 3) and out.right.shape == (9, 3)


def test_few_iterations_residual_bounds_the_error(x64):
    # A clustered spectrum and too few steps: the values are off, but the reported residual is an
    # honest bound (Parlett Thm 4.5.1): some true σ lies within residual·σ_1 of each Ritz value.
    a = _normal(8, (300, 300)) / np.sqrt(300)
    true = np.linalg.svd(np.asarray(a), compute_uv=False)
    out = spectra.top_singular_values(a, 3, num_iters=6)
    assert float(out.residuals[0]) > 1e-6  # not converged
    for s, r in zip(np.asarray(out.values), np.asarray(out.residuals)):
        assert np.min(np.abs(true - s)) <= r * float(out.values[0]) * (1 + 1e-8)


def test_jit_and_vmap_over_inits():
    # Only jit: the eager path runs the same internally jitted program.
    widths, depth = 16, 6
    model = gf.models.MLP(width=widths, depth=depth)
    x = jnp.ones((widths,)) * 0.3
    # Three gaussian(1.3) inits (NumPy draws, see _params), stacked for vmap: the same batch as
    # vmapping model.init, without compiling a batched init and per-leaf slices.
    unstacked = [_params(model, x, 9 + i, sigma_w=1.3) for i in range(3)]
    params = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *unstacked)
    f = jax.jit(lambda p: spectra.top_singular_values(model.chain(p, x), 2, num_iters=12).values)
    batched = jax.vmap(f)(params)
    stacked = jnp.stack([f(p) for p in unstacked])
    # vmap batches the same float32 operations; only reduction order may differ.
    np.testing.assert_allclose(batched, stacked, rtol=1e-5)


def test_memory_is_linear_in_width():
    # XLA's own accounting of the compiled program's scratch memory: doubling n doubles the
    # matrix-free buffers (vectors and Lanczos bases) but quadruples the dense route's (K n × n
    # products). The RNN weights are arguments, not scratch, in both.
    def temp_bytes(fn, n):
        model = gf.models.RNN(width=n)
        u = jnp.ones((20, 2))
        # Only the shapes matter for lowering: no init is run (or compiled).
        params = jax.eval_shape(model.init, jax.random.key(0), u)
        compiled = jax.jit(lambda p: fn(model.chain(p, u))).lower(params).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    matfree = lambda c: spectra.top_singular_values(c, 2, num_iters=8).values
    dense = lambda c: jacobians.backward_products(c).log_singular_values()[0, :2]
    m1, m2 = temp_bytes(matfree, 64), temp_bytes(matfree, 128)
    d1, d2 = temp_bytes(dense, 64), temp_bytes(dense, 128)
    assert m2 / m1 < 2.5, (m1, m2)
    assert d2 / d1 > 3.5, (d1, d2)
    assert m2 < d2 / 20


def test_argument_errors():
    chain = _mlp_chain(width=8, depth=5, sigma_w=1.0)
    with pytest.raises(ValueError, match="k must be <="):
        spectra.top_singular_values(chain, 9)
    with pytest.raises(ValueError, match="num_iters"):
        spectra.top_singular_values(chain, 3, num_iters=2)
    with pytest.raises(ValueError, match="start and stop"):
        spectra.top_singular_values(chain, 2, start=3, stop=3)
    with pytest.raises(TypeError, match="start must be an integer"):
        spectra.top_singular_values(chain, 2, start=1.0)
    with pytest.raises(TypeError, match="k must be an integer"):
        spectra.top_singular_values(chain, 2.0)
    with pytest.raises(TypeError, match="Chain or a matrix"):
        spectra.top_singular_values(lambda v: v, 2)
    with pytest.raises(ValueError, match="2-D"):
        spectra.top_singular_values(jnp.ones((2, 3, 3)), 1)
    with pytest.raises(ValueError, match="non-finite"):
        spectra.top_singular_values(jnp.full((3, 3), jnp.nan), 1)
    with pytest.raises(TypeError, match="matvec"):
        spectra.lanczos_svd(None, None, 3)
    assert isinstance(chain, Chain)


def test_public_names():
    for name in ("TopSingular", "lanczos_svd", "top_singular_values", "spectral_norm"):
        assert name in spectra.__all__ and hasattr(spectra, name)


@pytest.mark.parametrize("shape", [(5, 200), (200, 5)])
def test_wide_and_tall_operators_match_numpy(x64, shape):
    # A wide A (m < n): Golub–Kahan's square B_j drops β_j, which still carries spectrum when
    # U spans R^m, so the top values came out low (24.15 for 24.47); the transpose is used now.
    a = np.random.default_rng(3).standard_normal(shape)
    expected = np.linalg.svd(a, compute_uv=False)[:3]
    # Exact Krylov space (num_iters = min(m, n) = 5): agreement to rounding, 1e-10 is a wide margin.
    for out in (
        spectra.top_singular_values(a, 3),
        spectra.lanczos_svd(lambda v: a @ v, lambda u: a.T @ u, shape[1], 3),
    ):
        np.testing.assert_allclose(out.values, expected, rtol=1e-10)
        assert out.right.shape == (shape[1], 3) and out.left.shape == (shape[0], 3)
        left, right, values = (np.asarray(t) for t in (out.left, out.right, out.values))
        np.testing.assert_allclose(a @ right, left * values[None, :], atol=1e-8)
