"""Jacobians along chains: vs jacrev of hand-rolled networks, closed forms, bounds, log space."""

import math

import _reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow.models import GRU, LSTM, MLP, RNN

# Exact-Jacobian comparisons run in float64. Both sides compute the same derivatives by
# different routes (one vmapped step Jacobian per layer and a renormalised product, against
# reverse-mode through a Python-unrolled reference), so they agree to ~1e-15 relative per
# operation; 1e-10 leaves a wide margin and still catches any wrong factor, transpose or order.
_TOL64 = dict(rtol=1e-10, atol=1e-12)


# --- reference roll-outs --------------------------------------------------------------------------
class Case:
    """A model, an input, and a hand-written reference for its chain (flat states)."""

    def __init__(self, name, model, x, mlp_kwargs=None):
        self.name, self.model, self.x, self.mlp_kwargs = name, model, x, mlp_kwargs

    def reference(self, params):
        """(states, step): flat reference states h_0 … h_K and step(k, h) -> h_{k+1} in jnp."""
        p = ref.as_numpy(params)
        if self.mlp_kwargs is not None:
            kw = dict(self.mlp_kwargs)
            act = kw.pop("activation")
            hs = ref.mlp_states(p, np.asarray(self.x), act, **kw)
            shape = hs[0].shape

            def step(k, h):
                theta = ref.hidden_layer(p, k)
                h = ref.mlp_layer(
                    theta, jnp.reshape(h, shape), ref.activation(act, jnp), xp=jnp, **kw
                )
                return jnp.ravel(h)

            return [h.ravel() for h in hs], step
        n = self.model.width
        if isinstance(self.model, RNN):
            make, h0 = (lambda xp: ref.rnn_step(p, self.model.activation, xp)), np.zeros(n)
        elif isinstance(self.model, LSTM):
            make, h0 = (lambda xp: ref.lstm_step(p, n, self.model.forget_bias, xp)), np.zeros(2 * n)
        else:
            make, h0 = (lambda xp: ref.gru_step(p, n, xp)), np.zeros(n)
        drives = ref.drive(p, np.asarray(self.x))
        return ref.roll(make(np), h0, drives), lambda k, h: make(jnp)(h, drives[k])


def _reference_products(states, step):
    """∂h_K/∂h_k for every k by one jax.jacrev through the Python-unrolled reference network.

    A perturbation ε_k is added to h_k before step k; ∂h_K/∂ε_k = ∂h_K/∂h_k, so differentiating
    h_K with respect to all ε at once gives every product, without any Jacobian multiplication.
    """
    K = len(states) - 1

    def final(eps):
        h = jnp.asarray(states[0])
        for k in range(K):
            h = step(k, h + eps[k])
        return h

    jac = jax.jit(jax.jacrev(final))(jnp.zeros((K, states[0].size)))  # (n, K, n)
    return jnp.moveaxis(jac, 1, 0)


def _mlp(name, x_shape=(3,), **kw):
    act = kw.pop("activation", "tanh")
    model = MLP(width=4, depth=5, activation=act, **kw)
    x = np.random.default_rng(7).standard_normal(x_shape)
    return Case(name, model, x, dict(activation=act, **kw))


CASES = [
    _mlp("mlp-tanh"),
    _mlp("mlp-sigmoid-batch-input", x_shape=(5, 3), activation="sigmoid"),
    _mlp("mlp-residual", activation="relu", residual=True, residual_scale=0.6),
    _mlp("mlp-layernorm", residual=True, norm="layer"),
    _mlp("mlp-batchnorm", x_shape=(5, 3), norm="batch"),
    Case("rnn-tanh", RNN(width=4), np.random.default_rng(8).standard_normal((5, 3))),
    Case(
        "rnn-sigmoid",
        RNN(width=4, activation="sigmoid"),
        np.random.default_rng(8).standard_normal((5, 3)),
    ),
    Case("lstm", LSTM(width=4), np.random.default_rng(9).standard_normal((5, 3))),
    Case("gru", GRU(width=4), np.random.default_rng(9).standard_normal((5, 3))),
]


def _params(case, scale=1.5):
    params = ref.random_params(case.model, case.x)
    # Strong recurrent weights push the units out of their linear range, so φ' varies.
    if "recurrent" in params["params"]:
        params["params"]["recurrent"]["kernel"] *= scale
    return params


def _products(model, params, x):
    # One jit around chain construction and analysis: a single XLA compilation instead of one per
    # primitive in eager mode (the eager path is exercised in test_api.py).
    return jax.jit(lambda p, xx: gf.jacobians.backward_products(model.chain(p, xx)))(params, x)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_products_match_jacrev_of_rolled_out_network(case, x64):
    params = _params(case)
    states, step = case.reference(params)

    @jax.jit
    def analyse(params, x):
        chain = case.model.chain(params, x)
        flat = jax.vmap(lambda h: jax.flatten_util.ravel_pytree(h)[0])
        return (
            flat(gf.chain.trajectory(chain)),
            gf.jacobians.backward_products(chain),
            gf.jacobians.step_jacobians(chain, mode="fwd"),
            gf.jacobians.step_jacobians(chain, mode="rev"),
            gf.jacobians.end_to_end(chain),
        )

    traj, products, jac_fwd, jac_rev, end_to_end = analyse(params, case.x)
    # The chain's states are the reference's (so the two are linearised at the same points).
    np.testing.assert_allclose(traj, np.stack(states), **_TOL64)
    K, n = len(states) - 1, states[0].size
    assert products.unit.shape == (K, n, n) and jac_fwd.shape == (K, n, n)
    expected = _reference_products(states, step)
    np.testing.assert_allclose(products.matrices, expected, **_TOL64)
    np.testing.assert_allclose(end_to_end, expected[0], **_TOL64)
    # Forward- and reverse-mode step Jacobians agree, and the last product is the last step's.
    np.testing.assert_allclose(jac_fwd, jac_rev, **_TOL64)
    np.testing.assert_allclose(jac_fwd[-1], expected[-1], **_TOL64)
    # The log form: unit Frobenius norm, and the scale in log_norm.
    np.testing.assert_allclose(jnp.linalg.norm(products.unit, axis=(1, 2)), 1.0, rtol=1e-12)


def test_step_jacobians_rejects_unknown_mode():
    case = CASES[0]
    chain = case.model.chain(_params(case), case.x)
    with pytest.raises(ValueError, match="mode"):
        gf.jacobians.step_jacobians(chain, mode="backward")
    with pytest.raises(ValueError, match="mode"):
        gf.jacobians.input_output_jacobian(case.model, _params(case), case.x, mode="x")


def test_analyses_reject_non_chain():
    with pytest.raises(TypeError, match="chain"):
        gf.jacobians.step_jacobians(np.eye(3))
    with pytest.raises(TypeError, match="model"):
        gf.jacobians.input_output_jacobian(object(), {}, np.ones(3))
    with pytest.raises(ValueError, match=r"\(K, n, n\)"):
        gf.jacobians.products_from_jacobians(np.ones((2, 3, 4)))


# --- closed forms ---------------------------------------------------------------------------------
def test_deep_linear_jacobian_is_product_of_weights(x64):
    model = MLP(width=4, depth=6, activation="linear")
    x = np.random.default_rng(0).standard_normal(3)
    params = ref.random_params(model, x)
    p = ref.as_numpy(params)
    ws = [p["hidden"]["kernel"][layer] for layer in range(5)]
    # Row-vector layout h_{k+1} = h_k W_k + b_k: J_k = W_kᵀ, so ∂h_K/∂h_k = (W_k ⋯ W_{K−1})ᵀ.
    products = _products(model, params, x)
    for k in range(5):
        np.testing.assert_allclose(
            products.matrices[k], np.linalg.multi_dot([np.eye(4)] + ws[k:]).T, **_TOL64
        )
    io = gf.jacobians.input_output_jacobian(model, params, x)
    np.testing.assert_allclose(io, np.linalg.multi_dot([p["input"]["kernel"]] + ws).T, **_TOL64)


def test_residual_step_jacobian_closed_form(x64):
    s = 0.7
    model = MLP(width=4, depth=4, activation="tanh", residual=True, residual_scale=s)
    x = np.random.default_rng(1).standard_normal(3)
    params = ref.random_params(model, x)
    p = ref.as_numpy(params)
    hs = ref.mlp_states(p, x, "tanh", residual=True, residual_scale=s)
    jac = jax.jit(gf.jacobians.step_jacobians)(model.chain(params, x))
    for k in range(3):
        w, b = p["hidden"]["kernel"][k], p["hidden"]["bias"][k]
        dphi = 1.0 - np.tanh(hs[k] @ w + b) ** 2
        # h' = h + s·φ(hW + b): ∂h'_i/∂h_j = δ_ij + s·φ'(z_i)·W_ji, i.e. I + s·diag(φ')Wᵀ.
        np.testing.assert_allclose(jac[k], np.eye(4) + s * dphi[:, None] * w.T, **_TOL64)


def test_log_space_products_survive_underflow(key):
    # 500 linear layers of 0.5·(orthogonal): every product P_k = 0.5^(K−k)·(orthogonal), so
    # ‖P_k‖_F = 0.5^(K−k)·√n and every singular value is 0.5^(K−k). 0.5^500 ≈ 3e-151 is far
    # below float32's smallest subnormal (1.4e-45), so the raw product is exactly zero.
    n, depth = 8, 501
    model = MLP(width=n, depth=depth, activation="linear", kernel_init=gf.init.orthogonal(0.5))
    x = jnp.ones(n)
    params = jax.jit(model.init)(key, x)
    products = _products(model, params, x)
    K = depth - 1
    steps = K - np.arange(K)
    assert products.log_norm.dtype == jnp.float32
    assert np.all(np.isfinite(products.log_norm)) and np.all(np.isfinite(products.unit))
    # Each of the ≤ 500 renormalised float32 steps adds a relative error of ~1e-6 (the float32
    # orthogonal matrices are orthogonal to ~1e-6 and the product to eps·n); summed linearly
    # that is ≤ 5e-4 in log, so 2e-3 is safe and still 3 orders below one layer's log 0.5.
    np.testing.assert_allclose(
        products.log_norm, steps * math.log(0.5) + 0.5 * math.log(n), atol=2e-3
    )
    log_sv = products.log_singular_values()
    np.testing.assert_allclose(
        log_sv, np.broadcast_to((steps * math.log(0.5))[:, None], (K, n)), atol=2e-3
    )
    np.testing.assert_allclose(products.log_spectral_norm(), steps * math.log(0.5), atol=2e-3)
    # The raw products underflow, which is why the log form exists.
    assert np.all(np.asarray(products.matrices[0]) == 0.0)
    ws = np.asarray(params["params"]["hidden"]["kernel"])
    naive = np.eye(n, dtype=np.float32)
    for w in ws:
        naive = naive @ w.T
    assert np.all(naive == 0.0)


def test_input_output_jacobian_is_product_times_first_layer(x64):
    model = MLP(width=4, depth=5, activation="tanh")
    x = np.random.default_rng(2).standard_normal(3)
    params = ref.random_params(model, x)
    p = ref.as_numpy(params)
    first = jax.jacfwd(lambda xx: ref.mlp_layer(p["input"], xx, jnp.tanh, xp=jnp))(jnp.asarray(x))
    products = _products(model, params, x)
    expected = products.matrices[0] @ first  # ∂h_L/∂x = (∂h_L/∂h_1)(∂h_1/∂x), shape (n, d)
    for mode in ("auto", "fwd", "rev"):
        io = gf.jacobians.input_output_jacobian(model, params, x, mode=mode)
        assert io.shape == (4, 3)
        np.testing.assert_allclose(io, expected, **_TOL64)


def test_rnn_input_jacobian_is_products_times_input_kernel(x64):
    # h_{t+1} = σ(h_t) W + u_t U + b, so ∂h_T/∂u_t = (∂h_T/∂h_{t+1})·Uᵀ, with ∂h_T/∂h_T = I.
    model = RNN(width=4)
    u = np.random.default_rng(3).standard_normal((5, 3))
    params = ref.random_params(model, u)
    U = ref.as_numpy(params)["input"]["kernel"]
    products = _products(model, params, u).matrices
    later = np.concatenate(
        [np.asarray(products[1:]), np.eye(4)[None]]
    )  # ∂h_T/∂h_{t+1}, t = 0 … T−1
    io = gf.jacobians.input_output_jacobian(model, params, u)
    assert io.shape == (4, 5, 3)
    np.testing.assert_allclose(np.moveaxis(io, 1, 0), later @ U.T, **_TOL64)


def _linear_gaussian_moment4(n, depth):
    """Exact E[(1/n) tr (JJᵀ)²] for J a product of `depth` i.i.d. n×n N(0, 1/n) matrices.

    With A = JJᵀ and A' = WAWᵀ, Wick's theorem gives a' = b + (1 + 1/n)·a and b' = b + 2a/n²
    for a = E[(1/n) tr A²] and b = E[((1/n) tr A)²], from a = b = 1 at A = I. It tends to the
    Fuss–Catalan value depth + 1 as n → ∞ (Pennington, Schoenholz & Ganguli 2017, §3).
    """
    a = b = 1.0
    for _ in range(depth):
        a, b = b + (1.0 + 1.0 / n) * a, b + 2.0 * a / n**2
    return a


def test_linear_gaussian_squared_singular_value_moments():
    n, depth, seeds = 400, 4, 4
    model = MLP(width=n, depth=depth, activation="linear", kernel_init=gf.init.gaussian(1.0))
    x = jnp.ones(n)

    @jax.jit
    @jax.vmap
    def moments(key):
        jac = gf.jacobians.input_output_jacobian(model, model.init(key, x), x)
        # Means of s² and s⁴ over the n squared singular values, as traces: (1/n) tr(JJᵀ) and
        # (1/n) tr((JJᵀ)²) (exact identities; no eigen-solver in the loop).
        jjt = jac @ jac.T
        return jnp.trace(jjt) / n, jnp.sum(jjt * jjt) / n

    m1, m2 = moments(jax.random.split(jax.random.key(0), seeds))
    # Per-seed standard deviations at n = 400, L = 4 (measured over 40 NumPy seeds): 0.011 for
    # mean(s²) and 0.14 for mean(s⁴). Over 4 seeds the standard errors are 0.006 and 0.07; the
    # tolerances are 5 of them. The finite-width target for E[s⁴] is 5.025 (L + 1 = 5 plus the
    # O(L²/n) correction computed exactly above), and a wrong law (L or L + 2) is ≥ 14 SE away.
    assert abs(float(jnp.mean(m1)) - 1.0) < 0.03
    assert abs(float(jnp.mean(m2)) - _linear_gaussian_moment4(n, depth)) < 0.35
    assert abs(_linear_gaussian_moment4(n, depth) - (depth + 1)) < 0.03
    assert _linear_gaussian_moment4(10**9, depth) == pytest.approx(depth + 1, rel=1e-8)


def test_linear_gaussian_moment_formula_small_cases():
    # n = 1, L = 1: E[z⁴] = 3 for z ~ N(0, 1); n → ∞, L = 1: Marchenko–Pastur's second moment 2.
    assert _linear_gaussian_moment4(1, 1) == pytest.approx(3.0)
    assert _linear_gaussian_moment4(10**9, 1) == pytest.approx(2.0)


def test_input_output_jacobian_of_any_callable_closed_form(x64):
    # f(X) = tanh(A vec(X)) for X of shape (2, 3): ∂f/∂X = diag(1 − tanh²(A x)) A, reshaped to
    # y.shape + x.shape. Every mode must give it to rounding (1e-12 in float64).
    rng = np.random.default_rng(4)
    a = rng.standard_normal((4, 6))
    x = rng.standard_normal((2, 3))
    f = lambda xx: jnp.tanh(jnp.asarray(a) @ xx.reshape(-1))
    z = np.tanh(a @ x.reshape(-1))
    expected = ((1 - z**2)[:, None] * a).reshape(4, 2, 3)
    for mode in ("auto", "fwd", "rev"):
        got = gf.jacobians.input_output_jacobian(f, x, mode=mode)
        assert got.shape == (4, 2, 3)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="fn"):
        gf.jacobians.input_output_jacobian(lambda xx: (xx, xx), x)
    with pytest.raises(TypeError, match="input_output_jacobian takes"):
        gf.jacobians.input_output_jacobian("tanh", x)
    with pytest.raises(ValueError, match="mode"):
        gf.jacobians.input_output_jacobian(f, x, mode="sideways")
