"""Partial Jacobian norms (Doshi, He & Gromov 2023, arXiv:2111.12143): the random-probe estimators
against brute-force float64 Jacobians of the whole composed network (Chain and a shape-changing
Segmented chain), their Monte Carlo error against its closed form, log scale at depth 1000, the
residual-LayerNorm mean field against closed forms, and wide pre-LN residual nets against the
product formula."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import gradflow as gf
from gradflow import matfree, meanfield
from gradflow.chain import Chain, Layer, Scan, Segmented, trajectory
from gradflow.models.wide import block_chain, product_formula

# --------------------------------------------------------------------------------------------
# Test chains and the brute-force reference
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _mlp_chain(key=0, x64=True):
    """A tanh MLP's chain (width 12, 8 steps), built once per key and precision (flax's init
    costs ~2 s a call)."""
    del x64  # part of the cache key only: the params follow jax_enable_x64
    model = gf.models.MLP(
        width=12,
        depth=9,
        activation="tanh",
        kernel_init=gf.init.gaussian(1.6),
        bias_init=gf.init.gaussian_bias(0.3),
    )
    x = _normal(np.random.default_rng(key + 50), (12,))
    return model.chain(model.init(jax.random.key(key), x), x)


def _chain(which, key=0):
    if which == "chain":
        return _mlp_chain(key, bool(jax.config.jax_enable_x64))
    return _segmented_chain(key, bool(jax.config.jax_enable_x64))


def _normal(rng, shape, s=1.0, fan_in=None):
    """Gaussian test weights from NumPy, as jax arrays in the current precision: every
    ``jax.random.normal`` shape and dtype compiles its own program (~0.3 s each on CPU)."""
    fan_in = 1 if fan_in is None else fan_in
    return jnp.asarray(s * rng.standard_normal(shape) / math.sqrt(fan_in))


@functools.lru_cache(maxsize=8)
def _segmented_chain(key=0, x64=True):
    """6 → Layer → 10 → Scan ×4 → 10 → Layer → {"a": (3,), "b": (2, 2)} → Scan ×3: K = 9 steps.

    Built once per key and precision."""
    del x64  # part of the cache key only: the arrays follow jax_enable_x64
    rng = np.random.default_rng(key)
    n = lambda shape, s=1.0: _normal(rng, shape, s, fan_in=shape[-2])
    up = {"w": n((6, 10), 1.5), "b": _normal(rng, (10,), 0.1)}
    mid = {"w": n((4, 10, 10), 1.2)}
    down = {"wa": n((10, 3), 1.3), "wb": n((10, 4), 1.3)}
    tail = {"w": n((3, 7, 7), 1.4)}
    xs = _normal(rng, (3, 3))  # per-step inputs of the last Scan
    segments = (
        Layer(up, None, _up, "up"),
        Scan(mid, None, _mid, 4, name="mid"),
        Layer(down, None, _down, "down"),
        Scan(tail, xs, _mix, 3, name="tail"),
    )
    return Segmented(h0=_normal(rng, (6,)), segments=segments)


# Module-level step functions: the same objects on every call, so jit caches hit.
def _up(p, h, x):
    return jnp.tanh(h @ p["w"] + p["b"])


def _mid(t, h, x):
    return h + 0.7 * jnp.tanh(h @ t["w"])


def _down(p, h, x):
    return {"a": jnp.sin(h @ p["wa"]), "b": (h @ p["wb"]).reshape(2, 2)}


def _mix(theta, h, x):  # on the pytree state, coupling a and b through a 7x7 matrix
    flat = jnp.concatenate([h["a"], h["b"].reshape(-1)])
    out = jnp.tanh(flat @ theta["w"]) + 0.5 * flat
    return {"a": out[:3] + 0.1 * x, "b": out[3:].reshape(2, 2)}


def _steps(chain):
    """Every step of a chain as a plain Python callable h -> h', in order."""
    sc = gf.chain.as_segmented(chain)
    out = []
    for seg in sc.segments:
        if isinstance(seg, Layer):
            out.append(lambda h, seg=seg: seg.fn(seg.params, h, seg.x))
            continue
        for i in range(seg.length):
            at = lambda t, i=i: None if t is None else jax.tree_util.tree_map(lambda a: a[i], t)
            theta, x = (seg.params if seg.shared else at(seg.params)), at(seg.xs)
            out.append(lambda h, f=seg.step, th=theta, x=x: f(th, h, x))
    return out


def _brute_force(chain):
    """Every partial Jacobian ∂h_l/∂h_{l0} (l0 < l) of a small chain, by one jax.jacrev.

    The composed network is run with an additive perturbation ε_k on every state h_k (k < K),
    all zero: ∂h_l/∂ε_{l0} = ∂h_l/∂h_{l0}, so one reverse-mode Jacobian of (h_1, …, h_K) with
    respect to (ε_0, …, ε_{K−1}) holds every block. Flat states; float64 under ``x64``.

    Returns:
      dict (l0, l) -> numpy array ``(N_l, N_{l0})``.
    """
    steps = _steps(chain)
    states = [gf.chain.as_segmented(chain).h0]
    for f in steps:
        states.append(f(states[-1]))
    unravels = [ravel_pytree(h)[1] for h in states]
    eps = [jnp.zeros_like(ravel_pytree(h)[0]) for h in states[:-1]]

    def run(eps):
        h, outs = states[0], []
        for k, f in enumerate(steps):
            h = f(unravels[k](ravel_pytree(h)[0] + eps[k]))
            outs.append(ravel_pytree(h)[0])
        return outs

    jac = jax.jit(jax.jacrev(run))(eps)  # jac[l - 1][l0] = ∂h_l/∂ε_{l0}
    return {
        (l0, target): np.asarray(jac[target - 1][l0])
        for target in range(1, len(steps) + 1)
        for l0 in range(target)
    }


@functools.lru_cache(maxsize=4)
def _chain_blocks(which, x64):
    """:func:`_brute_force` of ``_chain(which)``, once per chain and precision: five tests compare
    against the same blocks, and each call compiles its own jacrev."""
    del x64  # part of the cache key only: the chain follows jax_enable_x64
    return _brute_force(_chain(which))


def _log_apjn(blocks, l0, target):
    jac = blocks[(l0, target)]
    return float(np.log(np.sum(jac**2) / jac.shape[0]))


# --------------------------------------------------------------------------------------------
# Exact values against brute force
# --------------------------------------------------------------------------------------------


def test_exact_matches_brute_force_chain(x64):
    chain = _chain("chain")
    blocks = _chain_blocks("chain", jax.config.jax_enable_x64)
    for start in (0, 4, 7):
        out = matfree.exact_partial_jacobian_norms(chain, start=start)
        np.testing.assert_array_equal(out.target, np.arange(start + 1, chain.length + 1))
        np.testing.assert_array_equal(out.source, np.full(chain.length - start, start))
        np.testing.assert_array_equal(out.widths, np.full(chain.length - start, 12))
        ref = [_log_apjn(blocks, start, target) for target in range(start + 1, chain.length + 1)]
        # Both exact in float64: the column-renormalised product differs from jacrev's by
        # rounding only (~1e-15 per step over <= 8 steps).
        np.testing.assert_allclose(out.log_values, ref, rtol=0, atol=1e-12)
        assert np.all(out.rel_std_err == 0)


def _rnn_step(theta, h, x):
    return jnp.tanh(h @ theta["w"] + x @ theta["u"])


def test_exact_matches_brute_force_shared_params_with_inputs(x64):
    # An RNN-like chain: one parameter set shared by every step, per-step inputs x_k.
    rng = np.random.default_rng(4)
    theta = {"w": _normal(rng, (8, 8), 1.3, fan_in=8), "u": _normal(rng, (3, 8))}
    xs = _normal(rng, (6, 3))
    chain = Chain(theta, xs, _normal(rng, (8,)), _rnn_step, 6, shared=True)
    blocks = _brute_force(chain)
    out = matfree.exact_partial_jacobian_norms(chain, start=2)
    ref = [_log_apjn(blocks, 2, target) for target in range(3, 7)]
    np.testing.assert_allclose(out.log_values, ref, rtol=0, atol=1e-12)


def test_exact_matches_brute_force_segmented(x64):
    chain = _chain("segmented")
    blocks = _chain_blocks("segmented", jax.config.jax_enable_x64)
    sizes = [6, 10, 10, 10, 10, 10, 7, 7, 7, 7]  # N_k for k = 0 … 9
    # start = 0 sits at a shape-changing Layer, 3 inside the first Scan, 6 in the pytree-state
    # Scan (every start compiles its own program, so three).
    for start in (0, 3, 6):
        out = matfree.exact_partial_jacobian_norms(chain, start=start)
        np.testing.assert_array_equal(out.widths, sizes[start + 1 :])
        ref = [_log_apjn(blocks, start, target) for target in range(start + 1, 10)]
        np.testing.assert_allclose(out.log_values, ref, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Monte Carlo estimates against exact values
# --------------------------------------------------------------------------------------------

_M = 2000  # probes: the relative errors below are 1–3 %, so 4σ stays a sharp test


@pytest.mark.parametrize("which", ["chain", "segmented"])
def test_forward_estimate_within_monte_carlo_error(x64, which):
    chain, start = _chain(which), 2
    blocks = _chain_blocks(which, jax.config.jax_enable_x64)
    exact = np.array(
        [_log_apjn(blocks, start, target) for target in range(start + 1, chain.length + 1)]
    )
    for probes in ("normal", "rademacher"):
        est = matfree.partial_jacobian_norms(
            chain, key=jax.random.key(7), num_samples=_M, start=start, probes=probes
        )
        # log of a mean of m iid values: its standard error is the mean's relative error (to
        # first order; the bias −rel²/2 is < 1e-3 here). 4σ: a correct estimator fails one entry
        # with probability ~6e-5; the keys are fixed, so the test is deterministic.
        z = (np.asarray(est.log_values) - exact) / np.asarray(est.rel_std_err)
        assert np.all(np.abs(z) < 4), (probes, z)
        assert np.all(est.rel_std_err < 0.05)


def test_monte_carlo_error_matches_closed_form(x64):
    # Gaussian probes: Var‖P u‖² / ‖P‖_F⁴ = 2/r with r = (Σσ²)²/Σσ⁴ (matfree module docstring).
    # The estimated error's own sampling error with m = 2000 probes is ~√((κ − 1)/(4m)) ≈ 3 % for
    # the excess kurtosis κ ≲ 15 of these χ² mixtures; 15 % is a 5σ band.
    chain, start = _chain("segmented"), 1
    blocks = _chain_blocks("segmented", jax.config.jax_enable_x64)
    est = matfree.partial_jacobian_norms(chain, key=jax.random.key(3), num_samples=_M, start=start)
    for i, target in enumerate(range(start + 1, 10)):
        s2 = np.linalg.svd(blocks[(start, target)], compute_uv=False) ** 2
        predicted = math.sqrt(2.0 / (_M * (s2.sum() ** 2 / np.sum(s2**2))))
        assert abs(float(est.rel_std_err[i]) / predicted - 1) < 0.15, (target, predicted)


@pytest.mark.parametrize("which", ["chain", "segmented"])
def test_reverse_estimate_within_monte_carlo_error(x64, which):
    chain, stop = _chain(which), 7
    blocks = _chain_blocks(which, jax.config.jax_enable_x64)
    est = matfree.partial_jacobian_norms_to(chain, key=jax.random.key(5), num_samples=_M, stop=stop)
    np.testing.assert_array_equal(est.source, np.arange(stop))
    np.testing.assert_array_equal(est.target, np.full(stop, stop))
    np.testing.assert_array_equal(est.widths, np.full(stop, blocks[(0, stop)].shape[0]))
    exact = np.array([_log_apjn(blocks, l0, stop) for l0 in range(stop)])
    z = (np.asarray(est.log_values) - exact) / np.asarray(est.rel_std_err)
    assert np.all(np.abs(z) < 4), z  # as in the forward test


def test_same_key_same_numbers_and_vmap_over_keys():
    chain = _chain("segmented", key=2)
    keys = jax.random.split(jax.random.key(0), 3)
    one = lambda k: matfree.partial_jacobian_norms(chain, key=k, num_samples=8).log_values
    stacked = np.stack([one(k) for k in keys])
    # float32, 9 steps: the batched and unbatched programs round differently at ~1e-6
    np.testing.assert_allclose(jax.vmap(one)(keys), stacked, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(one(keys[0]), one(keys[0]))
    # a legacy uint32 PRNGKey is the same key
    np.testing.assert_array_equal(one(jax.random.key(4)), one(jax.random.PRNGKey(4)))


_TRACES = []


@dataclasses.dataclass(frozen=True)
class _CountingStep:
    def __call__(self, theta, h, x=None):
        _TRACES.append(1)
        return jnp.tanh(h @ theta)


def test_new_parameters_do_not_retrace():
    make = lambda k: Chain(
        params=_normal(np.random.default_rng(k), (5, 8, 8), fan_in=8),
        xs=None,
        h0=_normal(np.random.default_rng(k + 10), (8,)),
        step=_CountingStep(),
        length=5,
    )
    matfree.partial_jacobian_norms(make(0), key=jax.random.key(0), num_samples=4)
    before = len(_TRACES)
    out = matfree.partial_jacobian_norms(make(1), key=jax.random.key(1), num_samples=4)
    assert len(_TRACES) == before
    assert np.all(np.isfinite(out.log_values))


# --------------------------------------------------------------------------------------------
# Log scale at depth
# --------------------------------------------------------------------------------------------


def _scale(g, h, x):
    return g * h


@pytest.mark.parametrize("gain", [3.0, 0.1])
def test_log_scale_finite_at_depth_1000(gain):
    # h' = gain · h: ∂h_l/∂h_0 = gain^l I, so J^{0,l} = gain^{2l} exactly — 9^1000 and 0.01^1000
    # are far outside float32 (and float64). Every Gaussian probe is scaled alike, so the
    # estimate is gain^{2l} times the l-independent factor mean‖u‖²/N of the probes.
    depth, n = 1000, 16
    chain = Chain(
        params=jnp.full((depth,), gain), xs=None, h0=jnp.ones((n,)), step=_scale, length=depth
    )
    expected = 2.0 * np.arange(1, depth + 1) * math.log(gain)
    exact = matfree.exact_partial_jacobian_norms(chain).log_values
    # float32 accumulates one rounding of log‖·‖ (~1e-7 relative to |log gain|) per step.
    np.testing.assert_allclose(exact, expected, rtol=1e-4)
    key = jax.random.key(0)
    rad = matfree.partial_jacobian_norms(chain, key=key, num_samples=4, probes="rademacher")
    np.testing.assert_allclose(rad.log_values, expected, rtol=1e-4)  # ‖u‖² = N exactly
    est = matfree.partial_jacobian_norms(chain, key=key, num_samples=4)
    offset = np.asarray(est.log_values) - expected
    assert np.all(np.isfinite(est.log_values))
    np.testing.assert_allclose(offset, offset[0], atol=1e-4 * abs(expected[-1]))
    back = matfree.partial_jacobian_norms_to(chain, key=key, num_samples=4)
    # reverse: J^{l0,1000} = gain^{2(1000 − l0)}, times the cotangents' mean‖v‖²/N
    back_offset = np.asarray(back.log_values) - expected[::-1]
    np.testing.assert_allclose(back_offset, back_offset[0], atol=1e-4 * abs(expected[-1]))


# --------------------------------------------------------------------------------------------
# Residual-LayerNorm mean field against closed forms
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma_w2", [0.1, 0.5, 1.0, 2.0, 7.3, 100.0])
def test_relu_without_bias_has_zeta_one(x64, sigma_w2):
    # E relu'(z)² = E relu(z)² = 1/2, so ζ = (σ_w²/2)/(σ_w²/2) = 1 for every σ_w.
    assert float(meanfield.residual_ln_zeta("relu", sigma_w2, 0.0)) == pytest.approx(1, abs=1e-14)


def test_zeta_closed_forms(x64):
    sw2, sb2 = np.array([0.5, 1.0, 2.0]), np.array([[0.0], [0.3], [1.0]])
    # ReLU with bias: (σ_w²/2) / (σ_w²/2 + σ_b²)
    np.testing.assert_allclose(
        meanfield.residual_ln_zeta("relu", sw2, sb2), sw2 / (sw2 + 2 * sb2), rtol=1e-14
    )
    # erf: E erf'(z)² = 4/(π√5) (Gaussian integral of (4/π) e^{−2z²}) and
    # E erf(z)² = (2/π) arcsin(2/3) (Williams 1997, eq. 11 at q = 1).
    e_d2, e_2 = 4 / (math.pi * math.sqrt(5)), 2 / math.pi * math.asin(2 / 3)
    np.testing.assert_allclose(
        meanfield.residual_ln_zeta("erf", sw2, sb2), sw2 * e_d2 / (sw2 * e_2 + sb2), rtol=1e-13
    )
    # tanh by quadrature, against a plain NumPy trapezoid on a fine grid
    z = np.linspace(-12, 12, 200001)
    w = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    d2 = np.trapezoid(w / np.cosh(z) ** 4, z)
    p2 = np.trapezoid(w * np.tanh(z) ** 2, z)
    np.testing.assert_allclose(
        meanfield.residual_ln_zeta("tanh", sw2, sb2), sw2 * d2 / (sw2 * p2 + sb2), rtol=1e-9
    )


@pytest.mark.parametrize("activation", ["relu", "tanh", "erf"])
def test_residual_ln_product_is_a_gamma_ratio(x64, activation):
    # μ = 1: q^k = q0 + k B, χ_J^k = 1 + A/q^k = (k + a)/(k + b) with a = (q0 + A)/B, b = q0/B,
    # so J^{l0,l} = Γ(l + a) Γ(l0 + b) / (Γ(l0 + a) Γ(l + b)) → (l/l0)^{A/B} = (l/l0)^ζ.
    sw2, sb2, q0, depth = 1.7, 0.2, 0.8, 1000
    out = meanfield.residual_ln_layers(activation, sw2, sb2, q0, depth)
    zeta = float(meanfield.residual_ln_zeta(activation, sw2, sb2))
    b_inc = float(out.q[1] - out.q[0])
    a_gain = zeta * b_inc
    a, b = (q0 + a_gain) / b_inc, q0 / b_inc
    layers = np.arange(depth + 1)
    lg = np.vectorize(math.lgamma)
    expected = lg(layers + a) - lg(a) - lg(layers + b) + lg(b)
    np.testing.assert_allclose(out.log_apjn, expected, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(out.q, q0 + layers * b_inc, rtol=1e-13)
    # the asymptotic exponent: d log J / d log l → ζ (corrections O((a + b)/l))
    slope = (expected[-1] - expected[500]) / math.log(1000 / 500)
    assert slope == pytest.approx(zeta, rel=2e-2 * max(1.0, (a + b) / 10))


def test_residual_ln_with_mu_below_one(x64):
    # μ < 1: q → q* = B/(1 − μ²), χ_J → μ² + (1 − μ²) ζ; at ζ = 1 (ReLU, σ_b = 0) exactly 1.
    mu, sw2 = 0.8, 2.0
    out = meanfield.residual_ln_layers("relu", sw2, 0.0, 1.0, 400, mu=mu)
    q_star = (sw2 / 2) / (1 - mu**2)
    assert float(out.q[-1]) == pytest.approx(q_star, rel=1e-12)
    assert float(out.chi_j[-1]) == pytest.approx(1.0, rel=1e-12)
    out = meanfield.residual_ln_layers("relu", sw2, 0.5, 1.0, 400, mu=mu)
    zeta = float(meanfield.residual_ln_zeta("relu", sw2, 0.5))
    assert float(out.chi_j[-1]) == pytest.approx(mu**2 + (1 - mu**2) * zeta, rel=1e-12)


def test_residual_ln_layers_broadcasts():
    out = meanfield.residual_ln_layers(
        "tanh", np.array([1.0, 2.0]), np.array([[0.0], [0.5]]), 1.0, 5
    )
    assert (
        out.q.shape == (6, 2, 2)
        and out.chi_j.shape == (5, 2, 2)
        and out.log_apjn.shape == (6, 2, 2)
    )
    assert np.all(out.log_apjn[0] == 0)


# --------------------------------------------------------------------------------------------
# Wide pre-LN residual nets against the product formula (the acceptance)
# --------------------------------------------------------------------------------------------


_T15 = 3.59  # Student t, 15 degrees of freedom, two-sided 0.27 % (the 3σ level)


def _over_seeds(activation, sigma_w, sigma_b, *, width, depth, seeds, m):
    """Per seed: measured log J^{0,l} minus the product formula, its bias bound, and the
    mean-field comparison, for a pre-LN residual net of ``width`` and ``depth``.

    The product formula J^{0,l} = ∏_{k<l} (1 + σ_w² E[φ'(z)²]/q^k) is evaluated on each
    network's own layer statistics (q^k = var h^k, E over its units: ``product_formula``). Two
    finite-width effects separate a network from it: (i) a scatter, as each layer's realised W^k
    differs from its average (measured sd of measured − formula at l = 100, width 1000, 128
    probes: 1.4–2.0 %, of which ~1.3 % is Monte Carlo) — the paper's APJN is the average over
    weights, so the seed mean is compared; (ii) one bias: LayerNorm's Jacobian is a rank-(N − 2)
    projection, so each factor's increment is (1 − 2/N) smaller, lowering log J by at most
    Σ_k (χ_k − 1)/χ_k · 2/N.
    """

    def one(key):
        k_net, k_probe = jax.random.split(key)
        chain = block_chain(
            k_net,
            width=width,
            depth=depth,
            activation=activation,
            sigma_w=sigma_w,
            sigma_b=sigma_b,
        )
        est = matfree.partial_jacobian_norms(chain, key=k_probe, num_samples=m)
        states = trajectory(chain)
        pf = product_formula(chain, states)
        chi = jnp.exp(jnp.diff(jnp.concatenate([jnp.zeros(1), pf])))
        bias = jnp.cumsum((chi - 1) / chi) * 2 / width
        return est.log_values - pf, bias, est.log_values, jnp.var(states, axis=1)

    keys = jax.random.split(jax.random.key(17), seeds)
    dev, bias, log_j, var = (
        np.asarray(a, np.float64) for a in jax.jit(lambda ks: jax.lax.map(one, ks))(keys)
    )
    return dev, bias.max(axis=0), log_j, var


def _check_product_formula(dev, bias):
    """The seed mean of measured − formula lies in [−(t·SE + bias), t·SE] at every layer.

    SE comes from the seeds' spread, which holds the Monte Carlo error and the networks' scatter
    alike; returns the mean and the band's half-width t·SE + bias (the test's resolution)."""
    seeds = dev.shape[0]
    assert seeds == 16  # _T15
    mean, se = dev.mean(axis=0), dev.std(axis=0, ddof=1) / math.sqrt(seeds)
    resolution = _T15 * se + bias
    assert np.all(mean <= _T15 * se) and np.all(mean >= -resolution), (mean, se, bias)
    return mean, resolution


@pytest.mark.slow  # 10.5 s: 16 networks with 32 probes each, a statistical end-to-end check
def test_residual_ln_matches_product_formula_over_seeds():
    # Width 256, depth 50 (CPU-sized): the same check as the wide acceptance tests below, with
    # the band from the seeds' own spread (measured: per-network sd 5.8 %, band 8.4 %). Leaving
    # out the 1/q^k or σ_b² would move log J by O(1), so a band below 10 % still tells.
    dev, bias, _, _ = _over_seeds("tanh", 1.5, 0.3, width=256, depth=50, seeds=16, m=32)
    _, resolution = _check_product_formula(dev, bias)
    assert np.max(resolution) < 0.1  # the band itself is tight: a wrong formula shows


@pytest.mark.slow
@pytest.mark.parametrize(
    "activation, sigma_w, sigma_b", [("tanh", 1.5, 0.3), ("relu", 1.0, 0.0), ("relu", 2.5, 0.0)]
)
def test_wide_residual_ln_matches_product_formula(activation, sigma_w, sigma_b):
    # The acceptance: width 1000, depth 100, to 3 %. 128 probes give a Monte Carlo error
    # of ~1.3 % per network (effective rank ≈ 100), and the networks scatter by ~1.3 %; over 16
    # seeds the standard error is ~0.5 %, so t·SE + bias (<= 0.9 %) stays below 3 % (checked).
    dev, bias, log_j, var = _over_seeds(
        activation, sigma_w, sigma_b, width=1000, depth=100, seeds=16, m=128
    )
    mean, resolution = _check_product_formula(dev, bias)
    assert np.max(resolution) <= 0.03, resolution
    assert np.max(np.abs(mean)) < 0.03, mean
    # The pure mean-field recursion (q^k from q^0 = var h^0, Gaussian expectations): single
    # networks scatter around it by ~10 % at this width, because the residual stream's variance
    # random-walks by O(1/√N) per layer and log J integrates 1/q^k; the seed mean is tested
    # against its own standard error, for log J^{0,100} and for the variance q^100.
    sw2, sb2 = sigma_w**2, sigma_b**2
    mf = [meanfield.residual_ln_layers(activation, sw2, sb2, v[0], 100) for v in var]
    d_mf = log_j[:, -1] - np.array([float(m.log_apjn[-1]) for m in mf])
    assert abs(d_mf.mean()) < _T15 * d_mf.std(ddof=1) / 4, d_mf
    rel_q = var[:, -1] / np.array([float(m.q[-1]) for m in mf]) - 1
    assert abs(rel_q.mean()) < _T15 * rel_q.std(ddof=1) / 4, rel_q
    assert d_mf.std(ddof=1) < 0.3  # the scatter is O(1/√N), not O(1)


# --------------------------------------------------------------------------------------------
# Argument errors
# --------------------------------------------------------------------------------------------


def test_argument_errors(x64):
    # x64: the checks do not depend on the precision, and the float64 chain is already built
    # (cached) for the brute-force tests, so no second flax init.
    chain = _chain("chain")
    k = jax.random.key(0)
    with pytest.raises(TypeError, match="chain"):
        matfree.partial_jacobian_norms(np.eye(3), key=k)
    with pytest.raises(ValueError, match="start"):
        matfree.partial_jacobian_norms(chain, key=k, start=chain.length)
    with pytest.raises(ValueError, match="start"):
        matfree.partial_jacobian_norms(chain, key=k, start=-1)
    with pytest.raises(TypeError, match="start"):
        matfree.partial_jacobian_norms(chain, key=k, start=1.0)
    with pytest.raises(ValueError, match="num_samples"):
        matfree.partial_jacobian_norms(chain, key=k, num_samples=0)
    with pytest.raises(TypeError, match="num_samples"):
        matfree.partial_jacobian_norms(chain, key=k, num_samples=2.5)
    with pytest.raises(TypeError, match="key"):
        matfree.partial_jacobian_norms(chain, key=None)
    with pytest.raises(TypeError, match="key"):
        matfree.partial_jacobian_norms(chain, key=3)
    with pytest.raises(ValueError, match="key"):
        matfree.partial_jacobian_norms(chain, key=jax.random.split(k, 2))
    with pytest.raises(ValueError, match="probes"):
        matfree.partial_jacobian_norms(chain, key=k, probes="uniform")
    with pytest.raises(ValueError, match="stop"):
        matfree.partial_jacobian_norms_to(chain, key=k, stop=0)
    with pytest.raises(ValueError, match="stop"):
        matfree.partial_jacobian_norms_to(chain, key=k, stop=chain.length + 1)
    with pytest.raises(ValueError, match="start"):
        matfree.exact_partial_jacobian_norms(chain, start=chain.length)
    bad = chain.replace(h0=chain.h0.at[0].set(jnp.nan))
    with pytest.raises(ValueError, match="non-finite"):
        matfree.partial_jacobian_norms(bad, key=k)
    with pytest.raises(ValueError, match="q0"):
        meanfield.residual_ln_layers("tanh", 1.0, 0.0, 0.0, 10)
    with pytest.raises(ValueError, match="depth"):
        meanfield.residual_ln_layers("tanh", 1.0, 0.0, 1.0, -1)
    with pytest.raises(ValueError, match="mu"):
        meanfield.residual_ln_layers("tanh", 1.0, 0.0, 1.0, 10, mu=-0.5)
    with pytest.raises(ValueError, match="sigma_w2"):
        meanfield.residual_ln_zeta("tanh", 0.0, 0.0)
    with pytest.raises(ValueError, match="sigma_b2"):
        meanfield.residual_ln_zeta("tanh", 1.0, -1.0)
    with pytest.raises(ValueError):
        meanfield.residual_ln_zeta("nonsense", 1.0, 0.0)
