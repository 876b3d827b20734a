"""Models: shapes, forward passes against hand-written references, boundary errors, jit, x64."""

import _reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow.models import GRU, LSTM, MLP, RNN

# Forward-pass comparisons run in float64, where both sides differ only by summation order:
# relative differences are ~1e-15 per operation and a few dozen operations are chained, so 1e-10
# is a loose bound that any wrong equation (off by a transpose, a missing bias, a wrong gate)
# exceeds by many orders of magnitude.
_TOL64 = dict(rtol=1e-10, atol=1e-12)


def _outputs(model):
    """model.apply, model.features and the chain's trajectory in one jit (one compilation)."""
    return jax.jit(
        lambda p, x: (
            model.apply(p, x),
            model.features(p, x),
            gf.chain.trajectory(model.chain(p, x)),
        )
    )


# --- shapes -------------------------------------------------------------------------------------
# Parameter shapes come from jax.eval_shape (init's own code on abstract values); the numbers from
# ref.random_params. Real initialisation is exercised in the tests after these and in test_init.
@pytest.mark.parametrize("norm", [None, "layer", "batch"])
def test_mlp_shapes(key, norm):
    model = MLP(width=4, depth=4, activation="tanh", norm=norm, out_features=2)
    xb = jnp.ones((5, 3))
    p = jax.eval_shape(model.init, key, xb)["params"]
    assert p["input"]["kernel"].shape == (3, 4)
    assert p["hidden"]["kernel"].shape == (3, 4, 4)
    assert p["hidden"]["bias"].shape == (3, 4)
    assert p["readout"]["kernel"].shape == (4, 2)
    if norm:
        assert p["hidden"]["scale"].shape == (3, 4) and p["input"]["offset"].shape == (4,)
    else:
        assert "scale" not in p["hidden"]
    params = ref.random_params(model, xb)
    y, h, traj = _outputs(model)(params, xb)
    assert y.shape == (5, 2) and h.shape == (5, 4) and traj.shape == (4, 5, 4)
    if norm != "batch":
        y, h, traj = _outputs(model)(params, jnp.ones(3))
        assert y.shape == (2,) and h.shape == (4,) and traj.shape == (4, 4)


@pytest.mark.parametrize("cls, gates", [(RNN, 1), (LSTM, 4), (GRU, 3)])
def test_recurrent_shapes(key, cls, gates):
    model = cls(width=4, out_features=2)
    u = jnp.ones((5, 3))
    p = jax.eval_shape(model.init, key, u)["params"]
    assert p["input"]["kernel"].shape == (3, gates * 4)
    assert p["recurrent"]["kernel"].shape == (4, gates * 4)
    params = ref.random_params(model, u)
    y, h, _ = _outputs(model)(params, u)
    assert y.shape == (2,) and h.shape == (4,)
    y, h, _ = _outputs(model)(params, jnp.ones((6, 5, 3)))
    assert y.shape == (6, 2) and h.shape == (6, 4)
    chain = model.chain(params, u)
    assert chain.length == 5 and chain.shared
    assert chain.state_size == (8 if cls is LSTM else 4)  # the LSTM state is (c, h)


def test_mlp_init_values(key):
    # Real initialisation: zero biases, unit norm scales, zero offsets, and every stacked hidden
    # layer initialised on its own (n, n) shape with its own key, so orthogonal() makes each
    # layer orthogonal (an initialiser seeing (L, n, n) would not).
    model = MLP(width=4, depth=4, norm="layer", kernel_init=gf.init.orthogonal())
    init = jax.jit(model.init)  # traced and compiled once, called twice
    params = init(key, jnp.ones(3))["params"]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))
    for group in ("input", "hidden", "readout"):
        np.testing.assert_array_equal(params[group]["bias"], 0.0)
    np.testing.assert_array_equal(params["hidden"]["scale"], 1.0)
    np.testing.assert_array_equal(params["hidden"]["offset"], 0.0)
    stacked = np.asarray(params["hidden"]["kernel"], np.float64)
    for layer in stacked:
        np.testing.assert_allclose(layer @ layer.T, np.eye(4), atol=1e-5)  # float32 QR
    assert not np.allclose(stacked[0], stacked[1])  # one key per layer
    again = init(key, jnp.ones(3))["params"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, again)  # same key, same numbers


def test_rnn_init_values(key):
    # The default recurrent initialiser is orthogonal: W Wᵀ = I to float32 precision.
    model = RNN(width=4)
    params = model.init(key, jnp.ones((5, 3)))["params"]
    w = np.asarray(params["recurrent"]["kernel"], np.float64)
    np.testing.assert_allclose(w @ w.T, np.eye(4), atol=1e-5)
    assert params["input"]["kernel"].shape == (3, 4)


def test_mlp_depth_one(key):
    model = MLP(width=4, depth=1, activation="tanh")
    x = jnp.ones(3)
    assert jax.eval_shape(model.init, key, x)["params"]["hidden"]["kernel"].shape == (0, 4, 4)
    params = ref.random_params(model, x)
    assert model.chain(params, x).length == 0
    p = ref.as_numpy(params)
    expected = ref.readout(p, np.tanh(np.ones(3) @ p["input"]["kernel"] + p["input"]["bias"]))
    np.testing.assert_allclose(model.apply(params, x), expected, rtol=1e-5)


# --- forward passes against the references --------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(activation="tanh"),
        dict(activation="sigmoid"),
        dict(activation="relu", residual=True, residual_scale=0.5),
        dict(activation="tanh", residual=True, norm="layer"),
        dict(activation="tanh", norm="batch"),
        dict(activation="sigmoid", residual=True, norm="batch"),
    ],
    ids=["tanh", "sigmoid", "relu-res", "tanh-res-layer", "tanh-batch", "sigmoid-res-batch"],
)
def test_mlp_forward_matches_reference(key, x64, kwargs):
    model = MLP(width=4, depth=4, out_features=2, **kwargs)
    x = np.random.default_rng(1).standard_normal((5, 3))
    params = ref.random_params(model, x)
    assert params["params"]["input"]["kernel"].dtype == jnp.float64
    p = ref.as_numpy(params)
    hs = ref.mlp_states(
        p,
        np.asarray(x),
        kwargs["activation"],
        norm=kwargs.get("norm"),
        residual=kwargs.get("residual", False),
        residual_scale=kwargs.get("residual_scale", 1.0),
    )
    y, h, traj = _outputs(model)(params, x)
    np.testing.assert_allclose(h, hs[-1], **_TOL64)
    np.testing.assert_allclose(y, ref.readout(p, hs[-1]), **_TOL64)
    np.testing.assert_allclose(traj, np.stack(hs), **_TOL64)  # the chain's states: h_1 … h_depth
    if kwargs.get("norm") != "batch":  # single examples are rows of the batch
        y, _, _ = _outputs(model)(params, x[2])
        np.testing.assert_allclose(y, ref.readout(p, hs[-1][2]), **_TOL64)


def test_rnn_forward_matches_reference(key, x64):
    model = RNN(width=4, activation="sigmoid", out_features=2)
    u = np.random.default_rng(1).standard_normal((3, 5, 3))  # (B, T, d)
    params = ref.random_params(model, u)
    params["params"]["recurrent"]["kernel"] *= 3.0  # a strong recurrence, beyond σ's linear range
    p = ref.as_numpy(params)
    y_batch, _, traj = _outputs(model)(params, u)
    for b in range(3):
        # x_t = σ(x_{t−1}) W + u_t U + b from x_0 = 0; read out from x_T.
        hs = ref.roll(ref.rnn_step(p, "sigmoid"), np.zeros(4), ref.drive(p, np.asarray(u[b])))
        np.testing.assert_allclose(y_batch[b], ref.readout(p, hs[-1]), **_TOL64)
        np.testing.assert_allclose(traj[:, b], np.stack(hs), **_TOL64)  # time-major states
    y_single, _, _ = _outputs(model)(params, u[1])
    np.testing.assert_allclose(y_single, y_batch[1], **_TOL64)


@pytest.mark.parametrize("forget_bias", [1.0, 0.0, -0.7])
def test_lstm_forward_matches_reference(key, x64, forget_bias):
    n = 4
    model = LSTM(width=n, forget_bias=forget_bias)
    u = np.random.default_rng(1).standard_normal((5, 3))
    params = ref.random_params(model, u)
    p = ref.as_numpy(params)
    hs = ref.roll(ref.lstm_step(p, n, forget_bias), np.zeros(2 * n), ref.drive(p, np.asarray(u)))
    y, h, (c_traj, h_traj) = _outputs(model)(params, u)
    np.testing.assert_allclose(h, hs[-1][n:], **_TOL64)
    np.testing.assert_allclose(y, ref.readout(p, hs[-1][n:]), **_TOL64)
    np.testing.assert_allclose(np.concatenate([c_traj, h_traj], -1), np.stack(hs), **_TOL64)


def test_gru_forward_matches_reference(key, x64):
    n = 4
    model = GRU(width=n)
    u = np.random.default_rng(1).standard_normal((2, 5, 3))
    params = ref.random_params(model, u)
    params["params"]["recurrent"]["kernel"] *= 2.0
    p = ref.as_numpy(params)
    y, _, _ = _outputs(model)(params, u)
    for b in range(2):
        hs = ref.roll(ref.gru_step(p, n), np.zeros(n), ref.drive(p, np.asarray(u[b])))
        np.testing.assert_allclose(y[b], ref.readout(p, hs[-1]), **_TOL64)


def test_gru_matches_flax_cell(key, x64):
    # A second, external reference: flax.linen.GRUCell uses the same gate convention.
    import flax.linen as nn

    n, d = 4, 3
    model = GRU(width=n)
    u = np.random.default_rng(2).standard_normal((5, d))
    p = ref.random_params(model, u, seed=3)["params"]
    U, W = p["input"]["kernel"], p["recurrent"]["kernel"]
    b = p["input"]["bias"]
    blocks = lambda m: jnp.split(m, 3, axis=-1)  # noqa: E731
    (Ur, Uz, Un), (Wr, Wz, Wn), (br, bz, bn) = blocks(U), blocks(W), blocks(b)
    cell_params = {
        "ir": {"kernel": Ur, "bias": br},
        "iz": {"kernel": Uz, "bias": bz},
        "in": {"kernel": Un, "bias": bn},
        "hr": {"kernel": Wr},
        "hz": {"kernel": Wz},
        "hn": {"kernel": Wn, "bias": p["recurrent"]["bias"]},
    }
    cell = nn.GRUCell(features=n, param_dtype=jnp.float64)
    step = jax.jit(lambda h, x: cell.apply({"params": cell_params}, h, x)[0])
    h = jnp.zeros(n)
    for t in range(u.shape[0]):
        h = step(h, u[t])
    np.testing.assert_allclose(model.features(p, u), h, **_TOL64)


# --- float32 / float64 ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model", [MLP(width=4, depth=2), RNN(width=4), LSTM(width=4), GRU(width=4)], ids=type
)
def test_dtypes_follow_x64(key, model):
    x = jnp.ones((5, 3))
    # eval_shape runs init's code on abstract values: the dtype logic without compiling threefry.
    shapes = jax.eval_shape(model.init, key, x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(shapes))
    assert model.apply(ref.random_params(model, x), x).dtype == jnp.float32
    with jax.enable_x64(True):
        shapes = jax.eval_shape(model.init, key, x)
        assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(shapes))
        y = model.apply(ref.random_params(model, x), jnp.ones((5, 3), jnp.float64))
        assert y.dtype == jnp.float64


def test_float32_matches_float64(key):
    # The same model in both precisions: float32 forward error over 6 tanh layers of width 8 is
    # ~depth·√width·eps32 ≈ 1e-5 relative; 1e-4 is that with a 10× margin.
    # (The same key draws different numbers in float64, so the float32 parameters are cast.)
    model = MLP(width=8, depth=6, activation="tanh")
    x = jnp.linspace(-1.0, 1.0, 3)
    params = ref.random_params(model, x)
    y32 = model.apply(params, x)
    with jax.enable_x64(True):
        params64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
        y64 = model.apply(params64, x.astype(jnp.float64))
        assert y64.dtype == jnp.float64
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5)


def test_integer_input_is_cast(key):
    model = MLP(width=4, depth=2)
    params = ref.random_params(model, jnp.ones(3))
    np.testing.assert_allclose(
        model.apply(params, jnp.array([1, 2, 3])), model.apply(params, jnp.array([1.0, 2.0, 3.0]))
    )


# --- jit ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model, x",
    [
        (MLP(width=4, depth=3, norm="batch"), jnp.ones((5, 3))),
        (MLP(width=4, depth=3, residual=True), jnp.ones(3)),
        (RNN(width=4), jnp.ones((5, 3))),
        (LSTM(width=4), jnp.ones((2, 5, 3))),
        (GRU(width=4), jnp.ones((5, 3))),
    ],
)
def test_jit_apply(model, x):
    x = x * jnp.asarray(np.random.default_rng(0).standard_normal(x.shape), x.dtype)
    params = ref.random_params(model, x)
    # Same float32 operations, possibly fused differently by XLA: agreement to a few ulps.
    np.testing.assert_allclose(
        jax.jit(model.apply)(params, x), model.apply(params, x), rtol=1e-5, atol=1e-6
    )


def test_jit_with_callable_activation(key):
    # A user callable is resolved while model.apply is traced: φ', γ must not need concrete values.
    model = MLP(width=4, depth=3, activation=lambda z: jnp.sin(z))
    x = jnp.ones(3)
    params = ref.random_params(model, x)
    np.testing.assert_allclose(jax.jit(model.apply)(params, x), model.apply(params, x), rtol=1e-6)


# --- errors at the boundary -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(width=4, depth=0), ValueError, "depth"),
        (dict(width=4, depth=-2), ValueError, "depth"),
        (dict(width=0, depth=3), ValueError, "width"),
        (dict(width=4, depth=2.5), TypeError, "depth"),
        (dict(width="4", depth=2), TypeError, "width"),
        (dict(width=4, depth=2, out_features=0), ValueError, "out_features"),
        (dict(width=4, depth=2, activation="tanhh"), ValueError, "tanhh"),
        (dict(width=4, depth=2, activation=3), TypeError, "activation"),
        (dict(width=4, depth=2, norm="group"), ValueError, "norm"),
    ],
)
def test_mlp_bad_config(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        MLP(**kwargs)


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: RNN(width=0), ValueError, "width"),
        (lambda: LSTM(width=-1), ValueError, "width"),
        (lambda: GRU(width=2.0), TypeError, "width"),
        (lambda: RNN(width=3, activation="nope"), ValueError, "nope"),
    ],
)
def test_recurrent_bad_config(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_mlp_wrong_input_width(key):
    model = MLP(width=4, depth=3)
    params = ref.random_params(model, jnp.ones(3))
    for call in (model.apply, model.chain, model.features):
        with pytest.raises(ValueError, match="x must have 3 features"):
            call(params, jnp.ones(5))
        with pytest.raises(ValueError, match="x must have 3 features"):
            call(params, jnp.ones((2, 5)))


@pytest.mark.parametrize("shape", [(), (2, 2, 3)])
def test_mlp_wrong_input_rank(key, shape):
    model = MLP(width=4, depth=3)
    params = ref.random_params(model, jnp.ones(3))
    with pytest.raises(ValueError, match="x must have 1 or 2 dimensions"):
        model.apply(params, jnp.ones(shape))
    with pytest.raises(ValueError, match="x must have 1 or 2 dimensions"):
        model.init(key, jnp.ones(shape))


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_recurrent_wrong_input(key, cls):
    model = cls(width=4)
    params = ref.random_params(model, jnp.ones((5, 3)))
    with pytest.raises(ValueError, match="u must have 3 features"):
        model.apply(params, jnp.ones((5, 2)))
    with pytest.raises(ValueError, match="u must have 3 features"):
        model.chain(params, jnp.ones((2, 5, 4)))
    with pytest.raises(ValueError, match="u must have 2 or 3 dimensions"):
        model.apply(params, jnp.ones(3))


@pytest.mark.parametrize("x", [jnp.ones(3), jnp.ones((1, 3))])
def test_batchnorm_needs_a_batch(key, x):
    model = MLP(width=4, depth=2, norm="batch")
    params = ref.random_params(model, jnp.ones((4, 3)))
    with pytest.raises(ValueError, match="norm='batch'"):
        model.apply(params, x)
    with pytest.raises(ValueError, match="norm='batch'"):
        model.chain(params, x)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
@pytest.mark.parametrize(
    "model, x",
    [(MLP(width=4, depth=3), jnp.ones(3)), (LSTM(width=4), jnp.ones((5, 3)))],
    ids=["mlp", "lstm"],
)
def test_non_finite_params(bad, model, x):
    params = ref.random_params(model, x)
    group = "hidden" if isinstance(model, MLP) else "recurrent"
    broken = jax.tree_util.tree_map(np.copy, params)
    broken["params"][group]["kernel"][0, 0] = bad
    for call in (model.apply, model.chain):
        with pytest.raises(ValueError, match=f"params.*{group}.*kernel.*non-finite"):
            call(broken, x)
    with pytest.raises(ValueError, match="non-finite"):
        gf.jacobians.step_jacobians(model.chain(params, x).replace(params=broken["params"][group]))


def test_params_must_be_a_dict(key):
    model = MLP(width=4, depth=2)
    with pytest.raises(TypeError, match="params"):
        model.chain([1, 2], jnp.ones(3))


def test_inner_params_dict_accepted(key):
    model = MLP(width=4, depth=2)
    params = ref.random_params(model, jnp.ones(3))
    np.testing.assert_array_equal(
        model.features(params, jnp.ones(3)), model.features(params["params"], jnp.ones(3))
    )


# --- public readout -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model, x",
    [
        (MLP(width=4, depth=3, out_features=2), jnp.ones((5, 3))),
        (MLP(width=4, depth=3, norm="batch", residual=True), jnp.ones((5, 3))),
        (RNN(width=4, out_features=2), jnp.ones((6, 3))),
        (LSTM(width=4, out_features=2), jnp.ones((2, 6, 3))),
        (GRU(width=4, out_features=2), jnp.ones((2, 6, 3))),
        (gf.models.CNN(depth=3, channels=4, dims=2, out_features=2), jnp.ones((2, 5, 5, 3))),
        (gf.models.Transformer(depth=2, dim=8, heads=2, out_features=2), jnp.ones((5, 3))),
    ],
    ids=["mlp", "mlp-batchnorm", "rnn", "lstm", "gru", "cnn", "transformer"],
)
def test_readout_of_features_is_apply(model, x):
    """apply = readout ∘ features bitwise (the same ops), for wrapped and bare params."""
    x = jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape) / x.size - 0.5
    params = ref.random_params(model, x)
    y = model.apply(params, x)
    for p in (params, params["params"]):
        np.testing.assert_array_equal(model.readout(p, model.features(p, x)), y)


def test_lstm_readout_of_final_state(key):
    """An LSTM's readout takes the chain's final (c, h) pair as well as features' h_T."""
    model = LSTM(width=4, out_features=2)
    u = jax.random.normal(key, (2, 6, 3))
    params = ref.random_params(model, u)
    state = gf.chain.final_state(model.chain(params, u))
    assert isinstance(state, tuple)
    np.testing.assert_array_equal(model.output_state(state), model.features(params, u))
    np.testing.assert_array_equal(model.readout(params, state), model.apply(params, u))
