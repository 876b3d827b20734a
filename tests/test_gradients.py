"""Per-layer gradient norms and per-state gradient norms against explicit gradients."""

import _reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradflow as gf
from gradflow.models import LSTM, MLP, RNN

# float32 sums of a few hundred squares: relative rounding ~1e-6, so 1e-5 is a 10× margin.
_TOL32 = dict(rtol=1e-5, atol=1e-7)
_TOL64 = dict(rtol=1e-10, atol=1e-12)

# optax.global_norm is deprecated in favour of optax.tree.norm (optax >= 0.2.5); same quantity.
_optax_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm


def _mse_loss(model):
    def loss(params, batch):
        x, y = batch
        return jnp.mean((model.apply(params, x) - y) ** 2)

    return loss


def _mlp_setup(depth=4):
    model = MLP(width=4, depth=depth, activation="tanh", out_features=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    y = rng.standard_normal((5, 2)).astype(np.float32)
    return model, ref.random_params(model, x), (x, y)


def test_mlp_layer_count_and_global_norm():
    model, params, batch = _mlp_setup(depth=4)
    loss = _mse_loss(model)
    norms = jax.jit(lambda p, b: gf.gradients.layer_grad_norms(loss, p, b))(params, batch)
    assert norms.shape == (4 + 1,)  # depth hidden layers + readout
    grads = jax.jit(jax.grad(loss))(params, batch)
    global_norm = float(_optax_norm(grads))
    np.testing.assert_allclose(float(jnp.sqrt(jnp.sum(norms**2))), global_norm, **_TOL32)
    np.testing.assert_allclose(float(gf.gradients.global_norm(grads)), global_norm, **_TOL32)
    # Each entry is one layer's (kernel, bias) gradient norm, input layer first.
    g = grads["params"]
    expected = [_optax_norm(g["input"])]
    expected += [
        _optax_norm(jax.tree_util.tree_map(lambda a, k=k: a[k], g["hidden"])) for k in range(3)
    ]
    expected += [_optax_norm(g["readout"])]
    np.testing.assert_allclose(norms, np.array(expected), **_TOL32)


@pytest.mark.parametrize("frozen", [0, 1, 3, 4])
def test_layer_order_by_freezing_one_layer(frozen):
    # stop_gradient on exactly one layer must zero exactly that entry: checks the order
    # (input, hidden 1 … depth−1, readout) independently of how the groups are named.
    model, params, batch = _mlp_setup(depth=4)
    mse = _mse_loss(model)

    def loss(params, batch):
        p = dict(params["params"])
        if frozen == 0:
            p["input"] = jax.lax.stop_gradient(p["input"])
        elif frozen == 4:
            p["readout"] = jax.lax.stop_gradient(p["readout"])
        else:
            p["hidden"] = {
                k: v.at[frozen - 1].set(jax.lax.stop_gradient(v[frozen - 1]))
                for k, v in p["hidden"].items()
            }
        return mse({"params": p}, batch)

    norms = np.asarray(
        jax.jit(lambda p, b: gf.gradients.layer_grad_norms(loss, p, b))(params, batch)
    )
    assert norms[frozen] == 0.0
    assert np.all(np.delete(norms, frozen) > 0.0)


def test_layer_norms_scaling_one_layer():
    _, params, _ = _mlp_setup(depth=4)
    base = np.asarray(gf.gradients.layer_norms(params))
    scaled = jax.tree_util.tree_map(np.copy, params)
    scaled["params"]["hidden"]["kernel"][1] *= 3.0
    scaled["params"]["hidden"]["bias"][1] *= 3.0
    # Only entry 2 (input, hidden 1, hidden 2, …) triples.
    np.testing.assert_allclose(
        gf.gradients.layer_norms(scaled), base * np.array([1, 1, 3, 1, 1]), **_TOL32
    )


def test_layer_norms_natural_order_of_generic_flax_names():
    # Keys outside gradflow's layer names come in natural order: Dense_2 before Dense_10.
    tree = {f"Dense_{i}": {"kernel": np.full((2, 2), float(i + 1))} for i in (10, 0, 2, 1)}
    # ‖kernel‖_F = 2·(i + 1) for a 2×2 matrix filled with i + 1.
    np.testing.assert_allclose(gf.gradients.layer_norms(tree), [2.0, 4.0, 6.0, 22.0], **_TOL32)


def test_recurrent_layers():
    model = RNN(width=4, out_features=2)
    u = np.random.default_rng(1).standard_normal((6, 5, 3)).astype(np.float32)
    y = np.ones((6, 2), np.float32)
    params = ref.random_params(model, u)
    loss = _mse_loss(model)
    norms = gf.gradients.layer_grad_norms(loss, params, (u, y))
    g = jax.grad(loss)(params, (u, y))["params"]
    expected = [_optax_norm(g[k]) for k in ("input", "recurrent", "readout")]
    np.testing.assert_allclose(norms, np.array(expected), **_TOL32)


def test_layer_grad_norms_errors():
    _, params, batch = _mlp_setup()
    with pytest.raises(TypeError, match="loss_fn"):
        gf.gradients.layer_grad_norms("mse", params, batch)
    broken = jax.tree_util.tree_map(np.copy, params)
    broken["params"]["input"]["bias"][0] = np.nan
    with pytest.raises(ValueError, match="params.*non-finite"):
        gf.gradients.layer_grad_norms(lambda p, b: 0.0, broken, batch)
    with pytest.raises(TypeError, match="dict"):
        gf.gradients.layer_norms([np.ones(3)])


# --- state gradients ------------------------------------------------------------------------------
def _explicit_state_grad_norms(step, drives, states, loss_of_final):
    """‖∂L/∂h_k‖ for every k: roll h_k forward to h_T by hand (Python loop) and differentiate."""

    @jax.jit
    def norms(hs):
        def loss_from(h, k):
            return loss_of_final(ref.roll(step, h, drives[k:])[-1])

        return jnp.stack(
            [jnp.linalg.norm(jax.grad(loss_from)(hs[k], k)) for k in range(len(states))]
        )

    return norms(jnp.asarray(np.stack(states)))


def test_state_grad_norms_rnn_vs_explicit_grads(x64):
    model = RNN(width=4, activation="tanh")
    u = np.random.default_rng(2).standard_normal((6, 3))
    params = ref.random_params(model, u)
    params["params"]["recurrent"]["kernel"] *= 1.5
    p = ref.as_numpy(params)
    target = np.array([0.3])

    def loss_of_final(h):
        return jnp.sum((ref.readout(p, h, jnp) - target) ** 2)

    norms = jax.jit(gf.gradients.state_grad_norms, static_argnums=1)(
        model.chain(params, u), loss_of_final
    )
    assert norms.shape == (7,)
    drives = ref.drive(p, u)
    hs = ref.roll(ref.rnn_step(p, "tanh"), np.zeros(4), drives)
    expected = _explicit_state_grad_norms(ref.rnn_step(p, "tanh", jnp), drives, hs, loss_of_final)
    np.testing.assert_allclose(norms, expected, **_TOL64)


def test_state_grad_norms_lstm_pytree_state(x64):
    # The (c, h) state: each entry is the norm of the gradient with respect to both halves.
    model = LSTM(width=3)
    u = np.random.default_rng(3).standard_normal((4, 3))
    params = ref.random_params(model, u)
    p = ref.as_numpy(params)

    def loss_of_state(state):
        return jnp.sum(ref.readout(p, state[1], jnp) ** 2)

    norms = jax.jit(gf.gradients.state_grad_norms, static_argnums=1)(
        model.chain(params, u), loss_of_state
    )
    drives = ref.drive(p, u)
    hs = ref.roll(ref.lstm_step(p, 3, model.forget_bias), np.zeros(6), drives)
    step = ref.lstm_step(p, 3, model.forget_bias, jnp)
    expected = _explicit_state_grad_norms(step, drives, hs, lambda s: loss_of_state((s[:3], s[3:])))
    np.testing.assert_allclose(norms, expected, **_TOL64)


def test_state_grad_norms_mlp_equal_transposed_products(x64):
    # ∂L/∂h_k = P_kᵀ ∂L/∂h_K with P_k = ∂h_K/∂h_k: the same numbers from the Jacobian products.
    model = MLP(width=4, depth=5, activation="sigmoid")
    x = np.random.default_rng(4).standard_normal(3)
    params = ref.random_params(model, x)
    loss = lambda h: jnp.sum(jnp.sin(h))  # noqa: E731

    @jax.jit
    def run(params, x):
        chain = model.chain(params, x)
        g_final = jax.grad(loss)(gf.chain.final_state(chain))
        products = gf.jacobians.backward_products(chain).matrices
        return gf.gradients.state_grad_norms(chain, loss), products, g_final

    norms, products, g_final = run(params, x)
    expected = [np.linalg.norm(products[k].T @ g_final) for k in range(4)]
    np.testing.assert_allclose(norms, expected + [np.linalg.norm(g_final)], **_TOL64)


def test_state_grad_norms_rejects_non_chain():
    with pytest.raises(TypeError, match="chain"):
        gf.gradients.state_grad_norms({"h": 1}, lambda h: h)
