"""CNN (Xiao et al. 2018): convolution vs Flax, chains vs brute-force jacrev, delta-orthogonal
isometry, conv fan-in, the Fourier-mode mean field and its measurement on wide networks."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow import init, meanfield
from gradflow.chain import trajectory
from gradflow.models.cnn import CNN, conv, lag_modes, mode_decay, spatial_covariance

# float64 comparisons of two implementations of the same maps: they differ by summation order only
# (~1e-16 per operation, a few hundred operations chained), so 1e-10 is loose for a correct
# implementation and is missed by orders of magnitude by a wrong tap, transpose or padding.
_TOL64 = dict(rtol=1e-10, atol=1e-12)


# Compile time is most of this file's cost, and every jax.random.normal shape and dtype compiles
# its own program (~0.3 s each), so the test inputs are NumPy draws. (Eager flax inits stay: their
# per-shape programs are shared between tests, where a jitted init is one new program per model.)
def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


# --- the convolution against flax.linen.Conv (an independent implementation) ------------------
@pytest.mark.parametrize("padding, flax_padding", [("circular", "CIRCULAR"), ("same", "SAME")])
@pytest.mark.parametrize("dims, window", [(1, (3,)), (2, (3, 5))])
def test_conv_matches_flax(x64, padding, flax_padding, dims, window):
    x = _normal(0, (2,) + (6,) * dims + (3,))
    kernel = _normal(1, window + (3, 4))
    layer = nn.Conv(4, window, padding=flax_padding, use_bias=False, param_dtype=jnp.float64)
    want = layer.apply({"params": {"kernel": kernel}}, x)
    np.testing.assert_allclose(conv(x, kernel, padding=padding), want, **_TOL64)
    np.testing.assert_allclose(conv(x[0], kernel, padding=padding), want[0], **_TOL64)


def _flax_reference(model, params):
    """The CNN's feature map rebuilt from flax.linen.Conv layers with the same parameters."""
    pad = {"circular": "CIRCULAR", "same": "SAME"}[model.padding]
    act = gf.activations.get(model.activation).fn
    p = params["params"]

    def layer(theta, h):
        c = nn.Conv(theta["kernel"].shape[-1], model.window, padding=pad, param_dtype=jnp.float64)
        return act(c.apply({"params": theta}, h))

    hidden = [
        jax.tree_util.tree_map(lambda a, i=i: a[i], p["hidden"]) for i in range(model.depth - 1)
    ]
    return layer, p["input"], hidden


# The padding itself is checked against Flax above; these cover the chain mechanics on both state
# ranks (1-D unbatched, 2-D batched) and both paddings; the other two combinations are slow-marked.
_SMALL = [
    dict(dims=1, padding="circular", shape=(7, 2)),
    dict(dims=2, padding="same", shape=(2, 4, 5, 2)),  # a batch of 2
    pytest.param(dict(dims=1, padding="same", shape=(3, 7, 2)), marks=pytest.mark.slow),
    pytest.param(dict(dims=2, padding="circular", shape=(4, 5, 2)), marks=pytest.mark.slow),
]


@pytest.mark.parametrize(
    "cfg", _SMALL, ids=lambda c: f"{c['dims']}d-{c['padding']}-{len(c['shape'])}"
)
def test_forward_chain_products_and_step_jacobians_match_brute_force(x64, cfg):
    model = CNN(
        depth=4,
        channels=3,
        kernel_size=3,
        activation="tanh",
        padding=cfg["padding"],
        dims=cfg["dims"],
        kernel_init=init.gaussian(1.5),
        bias_init=init.gaussian_bias(0.3),
    )
    x = _normal(1, cfg["shape"])
    params = model.init(jax.random.key(2), x)
    layer, first, hidden = _flax_reference(model, params)

    # Forward: the chain's states are the Flax layers' outputs.
    states = [layer(first, x)]
    for theta in hidden:
        states.append(layer(theta, states[-1]))
    chain = model.chain(params, x)
    np.testing.assert_allclose(trajectory(chain), jnp.stack(states), **_TOL64)
    readout = params["params"]["readout"]
    pooled = jnp.mean(states[-1], axis=tuple(range(x.ndim - 1 - model.dims, x.ndim - 1)))
    want = pooled @ readout["kernel"]
    np.testing.assert_allclose(
        model.apply(params, x), want + jnp.broadcast_to(readout["bias"], want.shape), **_TOL64
    )

    # ∂h_K/∂h_k by dense jacrev of the composed Flax layers (the whole rest of the network).
    def rest(k):
        def f(h):
            h = h.reshape(states[0].shape)
            for theta in hidden[k:]:
                h = layer(theta, h)
            return h.ravel()

        return jax.jacrev(f)(states[k].ravel())

    products = gf.jacobians.backward_products(chain)
    for k in range(model.depth - 1):
        np.testing.assert_allclose(products.matrices[k], rest(k), **_TOL64)
    steps = gf.jacobians.step_jacobians(chain)
    for k, theta in enumerate(hidden):
        one = lambda h, t=theta: layer(t, h.reshape(states[0].shape)).ravel()  # noqa: E731
        np.testing.assert_allclose(steps[k], jax.jacrev(one)(states[k].ravel()), **_TOL64)


def test_full_chain_covers_the_input_convolution(x64):
    model = CNN(depth=3, channels=4, kernel_size=3, activation="tanh", dims=1)
    x = _normal(0, (6, 2))
    params = model.init(jax.random.key(1), x)
    full = model.full_chain(params, x)
    assert full.step_names() == ("hidden/0", "hidden/1") and full.stem.name == "input"
    loss = lambda h: jnp.sum(h**2)  # noqa: E731
    norms = gf.gradients.chain_grad_norms(full, loss).as_dict()
    grads = jax.grad(lambda p: loss(model.features({"params": p}, x)))(params["params"])
    want = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(grads["input"]))))
    assert norms["input"] == pytest.approx(want, rel=1e-10)


def test_residual_cnn_adds_the_scaled_branch(x64):
    model = CNN(depth=3, channels=3, kernel_size=3, residual=True, residual_scale=0.5)
    x = _normal(0, (6, 3))
    params = model.init(jax.random.key(1), x)
    layer, first, hidden = _flax_reference(model, params)
    h = [layer(first, x)]  # the input layer is never residual
    for theta in hidden:
        h.append(h[-1] + 0.5 * layer(theta, h[-1]))
    np.testing.assert_allclose(trajectory(model.chain(params, x)), jnp.stack(h), **_TOL64)


# --- delta-orthogonal dynamical isometry (the acceptance) ------------------------------
# 2-D is slow-marked for time (tests/test_init.py checks 2-D delta-orthogonal Flax convolutions).
@pytest.mark.parametrize("dims", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_linear_delta_orthogonal_cnn_has_every_singular_value_gain_to_the_depth(x64, dims):
    # Closed form: with circular padding every layer maps x to g·(x_α Q) at each position α, Q with
    # orthonormal rows (c_in <= C), so the whole input–output Jacobian has all singular values g^L.
    # Dense jax.jacrev of the whole feature map, independent of the chain machinery.
    gain, depth = 1.3, 6
    model = CNN(
        depth=depth,
        channels=4,
        kernel_size=3,
        activation="linear",
        padding="circular",
        dims=dims,
        kernel_init=init.delta_orthogonal(gain),
    )
    x = _normal(0, (5,) * dims + (3,))
    params = model.init(jax.random.key(1), x)
    jac = jax.jacrev(lambda v: model.features(params, v.reshape(x.shape)).ravel())(x.ravel())
    s = np.linalg.svd(np.asarray(jac), compute_uv=False)
    assert s.size == x.size  # n·c_in singular values (Jacobian n·C × n·c_in, c_in < C)
    np.testing.assert_allclose(s, gain**depth, rtol=1e-10)
    # The chain's log-scale products agree (the stem excluded: depth − 1 layers).
    log_sv = gf.jacobians.backward_products(model.chain(params, x)).log_singular_values()
    np.testing.assert_allclose(np.exp(log_sv[0]), gain ** (depth - 1), rtol=1e-10)


def test_linear_gaussian_cnn_is_not_an_isometry(x64):
    # Control for the test above: the same linear CNN with Gaussian kernels has spread singular
    # values (the closed form above is specific to the delta-orthogonal kernel).
    model = CNN(depth=6, channels=4, kernel_size=3, activation="linear", kernel_init=init.lecun())
    x = _normal(0, (5, 3))
    params = model.init(jax.random.key(1), x)
    jac = jax.jacrev(lambda v: model.features(params, v.reshape(x.shape)).ravel())(x.ravel())
    s = np.linalg.svd(np.asarray(jac), compute_uv=False)
    assert s.max() / s.min() > 10.0


# --- conv fan-in (the init.py fix) --------------------------------------------------------------
_SIGMAS = 5.0  # standard errors allowed in the variance checks below (two-sided p ≈ 6e-7 each)


@pytest.mark.parametrize(
    "make, variance",
    [
        (lambda: init.gaussian(1.3), lambda fi, fo: 1.69 / fi),
        (init.lecun, lambda fi, fo: 1.0 / fi),
        (init.he, lambda fi, fo: 2.0 / fi),
        (lambda: init.kumar("tanh"), lambda fi, fo: 1.0 / fi),  # tanh: v² = 1/(N φ'(0)²)
        (lambda: init.critical("tanh", 0.05), lambda fi, fo: 1.7609546396 / fi),
        (lambda: init.glorot("normal"), lambda fi, fo: 2.0 / (fi + fo)),
        (init.glorot, lambda fi, fo: 2.0 / (fi + fo)),
        # jax's orthogonal flattens to (window·c_in, c_out): orthonormal columns here, norm 1 each.
        (init.orthogonal, lambda fi, fo: 1.0 / fi),
    ],
)
@pytest.mark.parametrize("shape", [(5, 48, 64), (3, 3, 16, 40)])
def test_conv_kernels_use_the_window_times_channels_fan_in(key, make, variance, shape):
    # Flax's and Xiao et al.'s convention: fan-in = window · c_in, fan-out = window · c_out, so a
    # conv layer's per-tap variance σ_w²/(window·c_in) keeps the pre-activation variance σ_w² q.
    # (Before the fix, _fan_in returned c_in alone: 5× and 9× too large here.)
    fan_in = math.prod(shape[:-1])
    fan_out = math.prod(shape[:-2]) * shape[-1]
    w = np.asarray(make()(key, shape, jnp.float32), np.float64)
    v = variance(fan_in, fan_out)
    # Var of the sample variance of N Gaussian draws: 2v²/N (uniform: 0.8 v²/N, smaller).
    assert abs(w.var() - v) < _SIGMAS * v * math.sqrt(2.0 / w.size)


def test_fan_in_is_unchanged_for_dense_and_vector_shapes():
    # sweep.py's kernel_init adds mean/_fan_in(shape) for the MLP's (fan_in, fan_out) kernels.
    assert init._fan_in((7, 3)) == 7
    assert init._fan_in((11,)) == 11
    assert init._fan_in((3, 5, 7, 2)) == 105
    with pytest.raises(ValueError, match="shape"):
        init._fan_in(())


def test_conv_forward_variance_follows_the_q_map(key):
    # Consequence of the fan-in: one Gaussian conv layer of a wide CNN maps per-position input
    # variance q_in (unit per channel) to σ_w² q_in + σ_b². C = 2048 output channels × 8 positions:
    # the sample mean of z² has relative standard error about √(2/(8·2048)) ≈ 1.1% for independent
    # positions, at most √(2/2048) ≈ 3.1% for fully correlated ones; 5 of the latter: 16%; the
    # wrong fan-in (c_in only) would give 5× the variance.
    sw2 = 1.7
    x = jax.random.normal(key, (8, 64))
    model = CNN(depth=1, channels=2048, kernel_size=5, kernel_init=init.gaussian(math.sqrt(sw2)))
    params = model.init(jax.random.key(3), x)
    z = model.preactivations(params, x)[0]
    q_in = float(jnp.mean(x**2))
    assert float(jnp.mean(z**2)) == pytest.approx(sw2 * q_in, rel=0.16)


# --- the Fourier-mode mean field ---------------------------------------------------------------
@pytest.mark.parametrize("n, size", [(12, 3), (16, 5), (7, 7), (4, 7), (9, 1)])
def test_window_eigenvalues_are_those_of_the_circulant_average(x64, n, size):
    # Independent: the explicit n × n matrix that averages the 2k+1 periodic neighbours (wrapped
    # taps counted with multiplicity, as circular padding does), its eigen-decomposition by LAPACK
    # and its action on each Fourier vector e^{2πimα/n}.
    k = size // 2
    a = np.zeros((n, n))
    for alpha in range(n):
        for j in range(-k, k + 1):
            a[alpha, (alpha + j) % n] += 1.0 / size
    lam = np.asarray(meanfield.cnn_window_eigenvalues(n, size))
    assert lam.shape == (n,) and lam[0] == 1.0
    np.testing.assert_allclose(np.sort(lam), np.linalg.eigvalsh(a), atol=1e-12)
    alpha = np.arange(n)
    for m in range(n):
        e = np.exp(2j * np.pi * m * alpha / n)
        np.testing.assert_allclose(a @ e, lam[m] * e, atol=1e-12)


def test_window_eigenvalues_in_2d_are_those_of_the_2d_average(x64):
    n1, n2, k1, k2 = 5, 6, 3, 5
    lam = np.asarray(meanfield.cnn_window_eigenvalues((n1, n2), (k1, k2)))
    a = np.zeros((n1, n2, n1, n2))
    for i in range(n1):
        for j in range(n2):
            for di in range(-(k1 // 2), k1 // 2 + 1):
                for dj in range(-(k2 // 2), k2 // 2 + 1):
                    a[i, j, (i + di) % n1, (j + dj) % n2] += 1.0 / (k1 * k2)
    a = a.reshape(n1 * n2, n1 * n2)
    np.testing.assert_allclose(np.sort(lam.ravel()), np.linalg.eigvalsh(a), atol=1e-12)


def test_mode_rates_reduce_to_the_fully_connected_depth_scale(x64):
    modes = meanfield.cnn_mode_rates("tanh", 1.4, 0.05, 16, 3)
    chi = float(meanfield.chi_c("tanh", 1.4, 0.05))
    np.testing.assert_allclose(modes.rates, chi * np.asarray(modes.eigenvalues), rtol=1e-14)
    assert float(modes.depth_scales[0]) == pytest.approx(float(meanfield.xi_c("tanh", 1.4, 0.05)))
    # |λ_m| < 1 for m ≠ 0: every other mode forgets faster than the fully connected ξ_c.
    assert np.all(np.asarray(modes.depth_scales[1:]) < float(modes.depth_scales[0]))
    # At the edge of chaos mode 0 never decays (ξ = inf); a 3-tap window on 3 positions has λ_1 = 0.
    assert np.isinf(meanfield.cnn_mode_rates("tanh", 1.0, 0.0, 8, 3).depth_scales[0])
    assert float(meanfield.cnn_mode_rates("tanh", 1.4, 0.05, 3, 3).depth_scales[1]) == 0.0


def test_mode_decay_recovers_known_rates_from_synthetic_perturbations():
    # The estimator alone, on covariances built from known modes: sample s, layer l is
    # Σ_m ρ_m^l · P_{m,s} (P a random symmetric circulant-in-α pattern per mode and seed, so the
    # initial profiles are random as in a network) plus white noise of 1e-6; ρ is recovered to
    # 1e-3 where the signal is 10⁴× the noise.
    n, layers, seeds = 8, 10, 6
    rng = np.random.default_rng(0)
    rho = np.array([0.9, 0.8, 0.6, 0.3, 0.2])  # modes 0..4 (m and n − m share a rate)
    alpha = np.arange(n)
    samples = np.zeros((seeds, layers, n, n))
    for s in range(seeds):
        for m in range(5):
            g = rng.normal(size=n)  # profile over lags δ
            e = np.cos(2 * np.pi * m * alpha / n + rng.uniform(0, 2 * np.pi))
            # cov[α, α+δ] = e_α g_δ: mode m along α for every lag.
            pattern = np.zeros((n, n))
            for a_ in range(n):
                pattern[a_, (a_ + alpha) % n] = e[a_] * g
            samples[s] += rho[m] ** np.arange(layers)[:, None, None] * pattern
    samples += 1e-6 * rng.normal(size=samples.shape)
    res = mode_decay(samples, min_snr=10.0)
    # Each window ends where the amplitude is 10 standard errors: its last points carry ~10 %
    # noise, which moves the fitted slope by well under 1 % (0.6 % measured for ρ = 0.2, 1e-5
    # for the slow modes, whose windows never reach the noise).
    np.testing.assert_allclose(res.rate[:5], rho, rtol=1e-2)
    np.testing.assert_allclose(res.rate[:3], rho[:3], rtol=1e-4)
    assert np.all(res.window[:5, 1] >= 6)
    # lag_modes of one pattern of mode 2 along α lives on m = 2 and its mirror n − 2 only.
    e = np.cos(2 * np.pi * 2 * alpha / n + 0.3)
    one = np.array([[e[a_] * (1.0 + 0.1 * d) for d in range(n)] for a_ in range(n)])
    cov = np.zeros((n, n))
    for a_ in range(n):
        cov[a_, (a_ + alpha) % n] = one[a_]
    f = np.abs(lag_modes(cov))
    assert f.shape == (n, n)
    assert np.all(f[[0, 1, 3, 4, 5, 7]] < 1e-12) and np.all(f[[2, 6]] > 0.1)
    # 2-D: a pattern of mode (1, 2) along α = (α1, α2), any profile over lags, lives on
    # (±1, ±2) only.
    n1, n2 = 4, 6
    grid = np.meshgrid(np.arange(n1), np.arange(n2), indexing="ij")
    e2 = np.cos(2 * np.pi * (grid[0] / n1 + 2 * grid[1] / n2) + 0.7)
    prof = rng.normal(size=(n1, n2))
    cov2 = np.zeros((n1, n2, n1, n2))
    for a1 in range(n1):
        for a2 in range(n2):
            for d1 in range(n1):
                for d2 in range(n2):
                    cov2[a1, a2, (a1 + d1) % n1, (a2 + d2) % n2] = e2[a1, a2] * prof[d1, d2]
    f2 = np.abs(lag_modes(cov2, dims=2)).max(axis=(2, 3))
    on = np.zeros((n1, n2), bool)
    on[1, 2] = on[n1 - 1, n2 - 2] = True
    assert np.all(f2[~on] < 1e-12) and np.all(f2[on] > 0.1)


# --- wide networks: the mean field holds for the CNN ------------------------------------------
_CRITICAL = [(1.76096, 0.05), (1.98607, 0.1), (2.50513, 0.3)]


def test_the_published_critical_pairs_are_chi1_equal_one_points(x64):
    # The tanh pairs, to their 5-6 printed digits (χ₁ is ~1e-6 off for that rounding).
    for sw2, sb2 in _CRITICAL:
        assert float(meanfield.chi1("tanh", sw2, sb2)) == pytest.approx(1.0, abs=3e-6)
        assert float(meanfield.critical_sigma_w2("tanh", sb2)) == pytest.approx(sw2, abs=1e-5)


@pytest.mark.slow  # wide-network statistics, ~7.5 s
def test_wide_cnn_keeps_q_star_and_chi1_at_the_critical_pairs():
    # 8 seeds of a 1-D circular tanh CNN, C = 256 channels, 16 positions, 20 layers, for the three
    # critical pairs and an ordered control (0.8 σ_w² at σ_b² = 0.05, χ₁ = 0.914). Inputs are
    # normalised per position so that q¹ = q* in expectation; then the per-layer mean of z² must
    # stay at q*, and the mean over layers of ‖J_l v‖²/‖v‖² (v ~ N(0, I), J_l the exact step
    # Jacobian by jvp) must be the mean-field χ₁ = σ_w² E[φ'(√q* z)²].
    n, c, depth, seeds, c_in = 16, 256, 20, 8, 4
    pairs = np.array(_CRITICAL + [(0.8 * 1.76096, 0.05)], np.float32)
    q_star = np.asarray(meanfield.q_star("tanh", pairs[:, 0], pairs[:, 1]), np.float32)
    chi_theory = np.asarray(meanfield.chi1("tanh", pairs[:, 0], pairs[:, 1]))
    # Unit-variance parameters rescaled per point, so one compiled function serves all points.
    model = CNN(
        depth=depth, channels=c, kernel_size=3, activation="tanh", bias_init=init.gaussian_bias(1.0)
    )

    def one(key, sw2, sb2, q):
        kx, kp, kv = jax.random.split(key, 3)
        x = jax.random.normal(kx, (n, c_in))
        x = x / jnp.linalg.norm(x, axis=1, keepdims=True) * jnp.sqrt(c_in * (q - sb2) / sw2)
        p = model.init(kp, x)["params"]
        scale = lambda d: {"kernel": d["kernel"] * jnp.sqrt(sw2), "bias": d["bias"] * jnp.sqrt(sb2)}  # noqa: E731
        p = {"input": scale(p["input"]), "hidden": scale(p["hidden"]), "readout": p["readout"]}
        q_layers = jnp.mean(model.preactivations(p, x) ** 2, axis=(1, 2))
        chain = model.chain(p, x)
        hs = trajectory(chain)[:-1]
        v = jax.random.normal(kv, hs.shape)
        jvp = lambda t, h, u: jax.jvp(lambda hh: chain.step(t, hh), (h,), (u,))[1]  # noqa: E731
        jv = jax.vmap(jvp)(chain.params, hs, v)
        return q_layers, jnp.sum(jv**2, axis=(1, 2)) / jnp.sum(v**2, axis=(1, 2))

    # One network per call, not vmapped: see gradflow.experiments.cnn._measure._mode_fn on XLA:CPU.
    f = jax.jit(one)
    keys = jax.random.split(jax.random.key(0), seeds)
    rows = [[f(k, pairs[i, 0], pairs[i, 1], q_star[i]) for k in keys] for i in range(len(pairs))]
    q = np.array([[np.asarray(r[0], np.float64).mean() for r in row] for row in rows])
    chi = np.array([[np.asarray(r[1], np.float64).mean() for r in row] for row in rows])
    # q, chi: (points, seeds), each the mean over layers
    for i, (sw2, sb2) in enumerate(pairs):
        # Tolerance: 5 standard errors of the mean over the 8 independent seeds (t with 7 dof:
        # two-sided p ≈ 0.002) plus 1/C for the O(1/C) finite-width bias of mean-field averages
        # (measured here: q 0.1–0.2 %, χ₁ 0.1–0.3 %, below 1/C = 0.4 %).
        se_q = q[i].std(ddof=1) / math.sqrt(seeds)
        se_chi = chi[i].std(ddof=1) / math.sqrt(seeds)
        assert abs(q[i].mean() - q_star[i]) < 5 * se_q + q_star[i] / c, (sw2, sb2, q[i].mean())
        assert abs(chi[i].mean() - chi_theory[i]) < 5 * se_chi + 1.0 / c, (sw2, sb2, chi[i])
    assert np.all(np.abs(chi[:3].mean(-1) - 1.0) < 0.02)  # the critical points: χ₁ ≈ 1
    assert chi[3].mean() < 0.95  # and the control is measurably ordered


@pytest.mark.slow  # wide-network statistics, ~6 s
def test_wide_cnn_fourier_modes_decay_at_lambda_m_chi_c():
    # The acceptance: measured per-mode decay rates of a wide circular 1-D CNN agree with
    # λ_m χ_c* within 10 % for every mode with λ_m χ_c* > 0.5.
    #
    # Measurement (see CNN.covariance_curvature and mode_decay): tanh at (σ_w², σ_b²) =
    # (1.4, 0.05) in the ordered phase (χ_c* = 0.911, c* = 1), C = 256 channels, n = 16
    # positions, 3-tap kernel, 8 layers, 32 seeds. The base input is one vector r·u at every
    # position (a fixed point: the feature maps stay spatially constant, Σ = q*·11ᵀ, with r chosen
    # so that q¹ = q*), perturbed along the great circle x_α(t) = r(u cos t + v_α sin t) with
    # v_α ⊥ u at angles θ_α in a 2-plane; d²Σ^l/dt² is the covariance deviation in the t → 0
    # limit, by exact jets, and every position keeps its length, so the deviation is off-diagonal
    # (correlations) as the linearised recursion ε^{l+1}_{α,α+δ} = χ_c*·(1/3) Σ_j ε^l_{α+j,α+δ+j}
    # assumes. Its Fourier components along α are projected on each seed's own layer-1 profile
    # over the lags δ ≠ 0 and fitted log-linearly while they exceed 10 jackknife standard errors.
    #
    # Statistical error: the jackknife standard errors of the rates are 0.5–1.2 % (2 % for the
    # fastest tested mode, λ_3 χ_c* = 0.536, whose signal meets the finite-width noise after 4
    # layers), so 10 % is a ≥ 5σ margin; a wrong λ_m (e.g. no wrapping), a wrong
    # conv fan-in (σ_w² three times too large: the chaotic phase) or a wrong χ_c miss it.
    sw2, sb2, n, size, c, depth, seeds, c_in = 1.4, 0.05, 16, 3, 256, 8, 32, 3
    q_star = float(meanfield.q_star("tanh", sw2, sb2))
    theory = np.asarray(meanfield.cnn_mode_rates("tanh", sw2, sb2, n, size).rates, np.float64)
    model = CNN(
        depth=depth,
        channels=c,
        kernel_size=size,
        activation="tanh",
        kernel_init=init.gaussian(math.sqrt(sw2)),
        bias_init=init.gaussian_bias(math.sqrt(sb2)),
    )
    r = math.sqrt(c_in * (q_star - sb2) / sw2)
    # A chirp θ_α = πα²/n: cos(θ_α − θ_{α+δ}) is Fourier mode m = δ along α, so every mode is
    # excited with equal weight (random angles can leave a mode nearly empty).
    angles = jnp.pi * jnp.arange(n) ** 2 / n
    basis = np.eye(c_in)  # u, and the plane of the v_α
    x = jnp.broadcast_to(r * basis[0], (n, c_in))
    direction = r * (jnp.outer(jnp.cos(angles), basis[1]) + jnp.outer(jnp.sin(angles), basis[2]))

    # One network per call (not vmapped): see gradflow.experiments.cnn._measure._mode_fn on XLA:CPU.
    init_one = jax.jit(model.init)
    jets = jax.jit(lambda p: model.covariance_curvature(p, x, direction))
    keys = jax.random.split(jax.random.key(0), seeds)
    samples = np.stack([np.asarray(jets(init_one(k, x))) for k in keys])
    res = mode_decay(samples, min_snr=10.0)
    tested = np.flatnonzero(theory[: n // 2 + 1] > 0.5)
    assert tested.tolist() == [0, 1, 2, 3]
    for m in tested:
        assert res.window[m, 1] - res.window[m, 0] >= 3, (m, res.window[m])
        assert abs(res.rate[m] / theory[m] - 1) < 0.10, (m, res.rate[m], theory[m])
    # Mode m and n − m are the same real mode: equal measured rates.
    np.testing.assert_allclose(res.rate[1:4], res.rate[-1:-4:-1], rtol=1e-6)


# --- argument errors ---------------------------------------------------------------------------
def test_argument_errors_name_the_argument():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        CNN(depth=2, channels=4, kernel_size=4)
    with pytest.raises(ValueError, match="kernel_size"):
        CNN(depth=2, channels=4, kernel_size=(3, 3), dims=1)
    with pytest.raises(ValueError, match="padding"):
        CNN(depth=2, channels=4, padding="valid")
    with pytest.raises(ValueError, match="dims"):
        CNN(depth=2, channels=4, dims=3)
    with pytest.raises(ValueError, match="depth"):
        CNN(depth=0, channels=4)
    with pytest.raises(TypeError, match="channels"):
        CNN(depth=2, channels=4.0)
    model = CNN(depth=2, channels=4, dims=2)
    with pytest.raises(ValueError, match="x must have 3 or 4 dimensions"):
        model.init(jax.random.key(0), jnp.ones((5, 2)))
    params = model.init(jax.random.key(0), jnp.ones((5, 5, 2)))
    with pytest.raises(ValueError, match="x must have 2 channels"):
        model.chain(params, jnp.ones((5, 5, 3)))
    with pytest.raises(ValueError, match="x must have 2 channels"):
        model.apply(params, jnp.ones((5, 5, 3)))
    with pytest.raises(ValueError, match="padding"):
        conv(jnp.ones((5, 2)), jnp.ones((3, 2, 2)), padding="wrap")
    with pytest.raises(ValueError, match="odd"):
        conv(jnp.ones((5, 2)), jnp.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        meanfield.cnn_window_eigenvalues(8, 4)
    with pytest.raises(ValueError, match="spatial_shape"):
        meanfield.cnn_window_eigenvalues(0, 3)
    with pytest.raises(ValueError, match="kernel_size"):
        meanfield.cnn_window_eigenvalues((8, 8), (3, 3, 3))
    with pytest.raises(ValueError, match="sigma_w2"):
        meanfield.cnn_mode_rates("tanh", -1.0, 0.0, 8, 3)
    with pytest.raises(ValueError, match="samples"):
        mode_decay(np.zeros((1, 4, 8, 8)))
    with pytest.raises(ValueError, match="reference"):
        mode_decay(np.zeros((2, 4, 8, 8)), reference=4)
    with pytest.raises(ValueError, match="dims"):
        spatial_covariance(jnp.ones((3, 4)), dims=3)


# --- the experiment ----------------------------------------------------------------------------
@pytest.mark.slow  # compiles every section once: ~20 s of CPU even at these tiny sizes
def test_experiment_writes_figures_and_numbers(tmp_path, monkeypatch):
    import json

    from gradflow.experiments import cnn as experiment

    tiny = experiment.Settings(60, 8, 4, 2, 16, 2, 32, 4, 6, (1e-5, 0.05), 0.05)
    monkeypatch.setattr(experiment, "settings", lambda full: tiny)
    summary = experiment.run(tmp_path)
    out = tmp_path / "cnn"
    for name in (
        "jacobian_spread",
        "jacobian_singular_values",
        "state_grad_norms",
        "q_c",
        "fourier_modes",
    ):
        assert (out / f"{name}.png").stat().st_size > 10_000
    for name in ("jacobians", "q_c", "fourier_modes"):
        assert (out / f"{name}.npz").exists()
    assert json.loads((out / "summary.json").read_text())["settings"]["depth"] == 60
    json.dumps(summary)  # JSON-able as returned
    # Small q* (σ_b² = 1e-5): the delta-orthogonal Jacobian stays near isometry, the Gaussian not.
    jac = summary["jacobians"]
    delta = jac["delta-orthogonal, σ_b² = 1e-05"]["median_log10_sigma_full_depth"]
    gauss = jac["Gaussian, σ_b² = 1e-05"]["median_log10_sigma_full_depth"]
    assert abs(delta) < 0.5 < abs(gauss)
