"""Named, forward-ordered gradient norms and per-state gradient norms against explicit gradients."""

import dataclasses
import functools

import _reference as ref
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

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


def _np_norm(*leaves):
    """Frobenius norm of several arrays together, in float64 NumPy (the independent reference)."""
    return np.sqrt(sum(np.sum(np.square(np.asarray(a, np.float64))) for a in leaves))


def test_mlp_layer_count_and_global_norm():
    model, params, batch = _mlp_setup(depth=4)
    loss = _mse_loss(model)
    # the norms and the reference gradient in one jitted program (one compilation)
    both = lambda p, b: (gf.gradients.layer_grad_norms(loss, p, b), jax.grad(loss)(p, b))  # noqa: E731
    norms, grads = jax.jit(both)(params, batch)
    assert isinstance(norms, gf.gradients.NamedNorms)
    assert norms.names == ("input", "hidden/0", "hidden/1", "hidden/2", "readout")
    assert norms.log10.shape == (4 + 1,) and len(norms) == 5  # depth hidden layers + readout
    global_norm = float(_optax_norm(grads))
    np.testing.assert_allclose(float(jnp.sqrt(jnp.sum(norms.values**2))), global_norm, **_TOL32)
    np.testing.assert_allclose(10 ** float(norms.global_log10), global_norm, **_TOL32)
    np.testing.assert_allclose(float(gf.gradients.global_norm(grads)), global_norm, **_TOL32)
    # Each entry is one layer's (kernel, bias) gradient norm, input layer first.
    g = grads["params"]
    expected = [_optax_norm(g["input"])]
    expected += [
        _optax_norm(jax.tree_util.tree_map(lambda a, k=k: a[k], g["hidden"])) for k in range(3)
    ]
    expected += [_optax_norm(g["readout"])]
    np.testing.assert_allclose(norms.values, np.array(expected), **_TOL32)
    np.testing.assert_allclose(norms.log10, np.log10(np.array(expected)), rtol=1e-5, atol=1e-6)
    assert list(norms.as_dict()) == list(norms.names)
    np.testing.assert_allclose(norms.as_dict()["readout"], expected[-1], **_TOL32)
    np.testing.assert_allclose(norms.as_dict(log10=True)["input"], norms.log10[0])


@pytest.mark.parametrize("frozen", [0, 1, 3, 4])
def test_layer_order_by_freezing_one_layer(frozen):
    # stop_gradient on exactly one layer must zero exactly that entry: checks the order
    # (input, hidden 1 … depth−1, readout) independently of how the groups are named. It also
    # checks that forward_order sees through stop_gradient and slicing (applied before the
    # forward pass) to where the layer meets the data.
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

    norms = jax.jit(lambda p, b: gf.gradients.layer_grad_norms(loss, p, b))(params, batch)
    values = np.asarray(norms.values)
    assert norms.names == ("input", "hidden/0", "hidden/1", "hidden/2", "readout")
    assert values[frozen] == 0.0 and norms.log10[frozen] == -np.inf
    assert np.all(np.delete(values, frozen) > 0.0)


def test_layer_norms_scaling_one_layer():
    _, params, _ = _mlp_setup(depth=4)
    base = np.asarray(gf.gradients.layer_norms(params).values)
    scaled = jax.tree_util.tree_map(np.copy, params)
    scaled["params"]["hidden"]["kernel"][1] *= 3.0
    scaled["params"]["hidden"]["bias"][1] *= 3.0
    # Only entry 2 (input, hidden 1, hidden 2, …) triples.
    np.testing.assert_allclose(
        gf.gradients.layer_norms(scaled).values, base * np.array([1, 1, 3, 1, 1]), **_TOL32
    )


def test_named_norms_natural_order_of_generic_flax_names():
    # Without a forward pass to trace, names outside LAYER_ORDER come in natural order.
    tree = {f"Dense_{i}": {"kernel": np.full((2, 2), float(i + 1))} for i in (10, 0, 2, 1)}
    norms = gf.gradients.named_norms(tree)
    assert norms.names == ("Dense_0", "Dense_1", "Dense_2", "Dense_10")
    # ‖kernel‖_F = 2·(i + 1) for a 2×2 matrix filled with i + 1.
    np.testing.assert_allclose(norms.values, [2.0, 4.0, 6.0, 22.0], **_TOL32)
    # An explicit order wins; names it leaves out follow in the default order.
    assert gf.gradients.named_norms(tree, order=["Dense_2"]).names[:2] == ("Dense_2", "Dense_0")


def test_named_norms_depth_and_path_names():
    rng = np.random.default_rng(5)
    a = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    tree = {
        "params": {
            "Block_0": {
                "Dense_0": {"kernel": a(3, 4), "bias": a(4)},
                "LayerNorm_0": {"scale": a(4)},
            },
            "Embed_0": {"embedding": a(5, 3)},
            "heads": [a(4, 2), {"w": a(2)}],
        }
    }
    p = tree["params"]
    one = gf.gradients.named_norms(tree)  # the {"params": …} wrapper is unwrapped
    assert one.names == ("Block_0", "Embed_0", "heads")
    np.testing.assert_allclose(
        one.values,
        [_np_norm(*jax.tree.leaves(p[k])) for k in ("Block_0", "Embed_0", "heads")],
        **_TOL32,
    )
    two = gf.gradients.named_norms(tree, depth=2)
    assert two.names == (
        "Block_0/Dense_0",
        "Block_0/LayerNorm_0",
        "Embed_0/embedding",
        "heads/0",
        "heads/1",
    )
    np.testing.assert_allclose(
        np.asarray(two.values)[[0, 3]],
        [_np_norm(*jax.tree.leaves(p["Block_0"]["Dense_0"])), _np_norm(p["heads"][0])],
        **_TOL32,
    )
    deep = gf.gradients.named_norms(tree, depth=5)  # deeper than the tree: full paths
    assert "Block_0/Dense_0/kernel" in deep.names and "heads/1/w" in deep.names
    np.testing.assert_allclose(
        float(jnp.sqrt(jnp.sum(deep.values**2))), float(_optax_norm(tree)), **_TOL32
    )


@dataclasses.dataclass
class _Net:
    """An equinox-style pytree: a dataclass whose fields are arrays and lists of layers."""

    encoder: jax.Array
    layers: list


jax.tree_util.register_dataclass(_Net, data_fields=["encoder", "layers"], meta_fields=[])


def test_named_norms_dataclass_pytree_and_lists():
    rng = np.random.default_rng(6)
    net = _Net(
        encoder=rng.standard_normal((3, 4)),
        layers=[{"w": rng.standard_normal((4, 4)), "b": rng.standard_normal(4)} for _ in range(3)],
    )
    norms = gf.gradients.named_norms(net, depth=2)
    assert norms.names == ("encoder", "layers/0", "layers/1", "layers/2")
    expected = [_np_norm(net.encoder)] + [_np_norm(layer["w"], layer["b"]) for layer in net.layers]
    np.testing.assert_allclose(norms.values, expected, **_TOL32)


def test_named_norms_jit_and_vmap_equal_stacking():
    rng = np.random.default_rng(7)
    trees = [
        {"b": rng.standard_normal((3, 2)).astype(np.float32), "a": rng.standard_normal(2)}
        for _ in range(3)
    ]
    stacked = jax.tree.map(lambda *x: np.stack(x), *trees)
    batched = jax.jit(jax.vmap(gf.gradients.named_norms))(stacked)
    assert batched.names == ("a", "b") and batched.log10.shape == (3, 2)
    single = jax.jit(gf.gradients.named_norms)
    # Same float32 operations on the same numbers: agreement to reassociation (1e-6).
    np.testing.assert_allclose(
        batched.log10, np.stack([single(t).log10 for t in trees]), rtol=1e-6, atol=1e-6
    )
    assert batched.as_dict()["b"].shape == (3,) and batched.global_log10.shape == (3,)


def test_tiny_gradients_keep_finite_logs_in_float32():
    # Entries of 1e-25: representable in float32 (min normal 1.2e-38), but their squares (1e-50)
    # are not, so sqrt(sum(g**2)) is exactly 0. The log form must match float64 NumPy.
    rng = np.random.default_rng(8)
    grads = {
        "params": {
            "input": {"kernel": rng.uniform(0.5, 1.5, (4, 3)) * 1e-25},
            "hidden": {"kernel": rng.uniform(0.5, 1.5, (2, 3, 3)), "bias": np.ones((2, 3))},
            "readout": {"kernel": rng.uniform(0.5, 1.5, (3, 1)) * 1e-30},
        }
    }
    grads["params"]["hidden"] = {k: v * 1e-27 for k, v in grads["params"]["hidden"].items()}
    g32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), grads)
    g64 = jax.tree.map(lambda a: np.asarray(jnp.asarray(a, jnp.float32), np.float64), grads)
    assert float(jnp.sqrt(jnp.sum(jnp.square(g32["params"]["input"]["kernel"])))) == 0.0
    norms = jax.jit(gf.gradients.layer_norms)(g32)
    p = g64["params"]
    expected = [_np_norm(p["input"]["kernel"])]
    expected += [_np_norm(p["hidden"]["kernel"][k], p["hidden"]["bias"][k]) for k in range(2)]
    expected += [_np_norm(p["readout"]["kernel"])]
    assert norms.log10.dtype == jnp.float32
    # |log10| ≈ 25…30 in float32: absolute rounding ~30·6e-8 ≈ 2e-6, so 1e-5 has a 5× margin.
    np.testing.assert_allclose(norms.log10, np.log10(expected), rtol=0, atol=1e-5)
    # The plain values are the same numbers (relative error ~|ln v|·eps ≈ 4e-6), not 0.
    np.testing.assert_allclose(norms.values, expected, rtol=2e-5)
    np.testing.assert_allclose(
        float(norms.global_log10), np.log10(_np_norm(*jax.tree.leaves(g64))), atol=1e-5
    )
    np.testing.assert_allclose(
        float(gf.gradients.global_norm(g32)), _np_norm(*jax.tree.leaves(g64)), rtol=2e-5
    )


def test_norms_are_differentiable_at_zero_leaves():
    # d/dθ Σ_l ‖θ_l‖² = 2θ, also for all-zero leaves (zero-initialised biases), where the log
    # form must not turn 0·inf into NaN.
    _, params, _ = _mlp_setup(depth=3)
    params = jax.tree.map(np.copy, params)
    params["params"]["readout"]["kernel"][:] = 0.0
    grad = jax.jit(jax.grad(lambda p: jnp.sum(gf.gradients.layer_norms(p).values ** 2)))(params)
    # exp(log(·)) round trip in float32: ~|ln v|·eps relative.
    for g, p in zip(jax.tree.leaves(grad), jax.tree.leaves(params)):
        np.testing.assert_allclose(g, 2 * p, rtol=1e-5, atol=1e-7)
    # The same for the global norm, which shares the zero-safe log-norm.
    grad = jax.jit(jax.grad(lambda p: gf.gradients.global_norm(p) ** 2))(params)
    for g, p in zip(jax.tree.leaves(grad), jax.tree.leaves(params)):
        np.testing.assert_allclose(g, 2 * p, rtol=1e-5, atol=1e-7)


# --- forward order --------------------------------------------------------------------------------
class _TinyTransformer(nn.Module):
    """Embedding, two pre-norm residual blocks (attention + MLP), a head. Attribute names sort
    against the forward order: "a_head" < "blocks_0" < "z_embed" alphabetically."""

    vocab: int = 7
    dim: int = 8

    def setup(self):
        self.z_embed = nn.Embed(self.vocab, self.dim)
        self.blocks_0 = _Block(self.dim)
        self.blocks_1 = _Block(self.dim)
        self.a_head = nn.Dense(self.vocab)

    def __call__(self, tokens):
        h = self.z_embed(tokens)
        h = self.blocks_1(self.blocks_0(h))
        return self.a_head(h)


class _Block(nn.Module):
    dim: int

    @nn.compact
    def __call__(self, h):
        h = h + nn.SelfAttention(num_heads=2, qkv_features=self.dim)(nn.LayerNorm()(h))
        return h + nn.Dense(self.dim)(jnp.tanh(nn.Dense(2 * self.dim)(nn.LayerNorm()(h))))


def _xent(model):
    def loss(params, tokens):
        logits = model.apply(params, tokens[:, :-1])
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]))

    return loss


def test_transformer_layers_in_forward_order():
    model = _TinyTransformer()
    tokens = jnp.asarray(np.random.default_rng(9).integers(0, 7, (2, 6)))
    # Everything jitted: eager Flax init and grad dispatch op by op and take seconds.
    params = jax.jit(model.init)(jax.random.key(0), tokens[:, :-1])
    loss = _xent(model)
    both = lambda p, t: (gf.gradients.layer_grad_norms(loss, p, t), jax.grad(loss)(p, t))  # noqa: E731
    norms, grads = jax.jit(both)(params, tokens)
    assert norms.names == ("z_embed", "blocks_0", "blocks_1", "a_head")
    grads = grads["params"]
    expected = [_optax_norm(grads[k]) for k in norms.names]
    np.testing.assert_allclose(norms.values, expected, **_TOL32)
    np.testing.assert_allclose(
        float(jnp.sqrt(jnp.sum(norms.values**2))), float(_optax_norm(grads)), **_TOL32
    )
    # Inside a block, in call order, which is not the order of Flax's automatic names.
    inner = gf.gradients.forward_order(loss, params, tokens, depth=2)
    assert inner[0] == "z_embed/embedding" and inner[-2:] == ("a_head/kernel", "a_head/bias")
    assert [n for n in inner if n.startswith("blocks_0/")] == [
        "blocks_0/LayerNorm_0",
        "blocks_0/SelfAttention_0",
        "blocks_0/LayerNorm_1",
        "blocks_0/Dense_1",  # `nn.Dense(dim)(… nn.Dense(2 dim)(…))`: the outer one is named first
        "blocks_0/Dense_0",
    ]


class _LSTMReadout(nn.Module):
    @nn.compact
    def __call__(self, u):
        h = nn.RNN(nn.OptimizedLSTMCell(5, name="z_cell"))(u)
        return nn.Dense(1, name="a_readout")(h[:, -1])


def test_lstm_cell_before_readout():
    model = _LSTMReadout()
    u = jnp.asarray(np.random.default_rng(10).standard_normal((2, 4, 3)), jnp.float32)
    params = jax.jit(model.init)(jax.random.key(1), u)
    loss = lambda p, u: jnp.sum(model.apply(p, u) ** 2)  # noqa: E731
    both = lambda p, u: (gf.gradients.layer_grad_norms(loss, p, u), jax.grad(loss)(p, u))  # noqa: E731
    norms, grads = jax.jit(both)(params, u)
    assert norms.names == ("z_cell", "a_readout")
    grads = grads["params"]
    np.testing.assert_allclose(
        norms.values, [_optax_norm(grads["z_cell"]), _optax_norm(grads["a_readout"])], **_TOL32
    )
    # A jitted loss is one `jit` equation around everything: the order comes from inside it.
    assert gf.gradients.forward_order(jax.jit(loss), params, u) == norms.names


def test_forward_order_through_control_flow():
    """jit, cond, while, checkpoint and custom_jvp each hide a use inside a sub-jaxpr; an unused
    leaf and one used only with other parameters come last."""
    p = {k: jnp.full((3,), 0.5) for k in ("a", "b", "c", "d", "e", "unused", "zz_loose")}

    @jax.custom_jvp
    def f(x):
        return jnp.sin(x)

    f.defjvp(lambda primals, tangents: (f(primals[0]), jnp.cos(primals[0]) * tangents[0]))

    def fn(p, x):
        h = jax.jit(lambda w, h: w * h)(p["e"], x)
        h = jax.lax.cond(h[0] > 0, lambda h: h + p["d"], lambda h: h - p["d"], h)
        h = jax.lax.while_loop(lambda c: c[1] < 2, lambda c: (c[0] * p["c"], c[1] + 1), (h, 0))[0]
        h = jax.checkpoint(lambda h: h * p["b"])(h)
        return jnp.sum(f(h * p["a"])) + jnp.sum(p["zz_loose"] ** 2)

    order = gf.gradients.forward_order(fn, p, jnp.ones(3))
    assert order == ("e", "d", "c", "b", "a", "zz_loose", "unused")


def _nnx_mlp():
    class MLP3(nnx.Module):
        def __init__(self, rngs):
            self.z_in = nnx.Linear(3, 6, rngs=rngs)
            self.m_mid = nnx.Linear(6, 6, rngs=rngs)
            self.a_out = nnx.Linear(6, 2, rngs=rngs)

        def __call__(self, x):
            return self.a_out(jnp.tanh(self.m_mid(jnp.tanh(self.z_in(x)))))

    return MLP3(nnx.Rngs(0))


def test_nnx_state_names_values_and_forward_order():
    model = _nnx_mlp()
    rng = np.random.default_rng(11)
    batch = (rng.standard_normal((4, 3)).astype(np.float32), np.zeros((4, 2), np.float32))

    def loss(m, b):
        return jnp.mean((m(b[0]) - b[1]) ** 2)

    grads = nnx.jit(nnx.grad(loss))(model, batch)  # one compile (eager ran the module op by op)
    norms = gf.gradients.named_norms(grads)
    assert norms.names == ("a_out", "m_mid", "z_in")  # no forward pass: natural order
    expected = {
        k: _np_norm(getattr(grads, k)["kernel"][...], getattr(grads, k)["bias"][...])
        for k in norms.names
    }
    np.testing.assert_allclose(norms.values, list(expected.values()), **_TOL32)
    deep = gf.gradients.named_norms(grads, depth=2)  # no ".value" component from the Variables
    assert deep.names[:2] == ("a_out/bias", "a_out/kernel")

    # The functional form: params are the nnx.State, the loss merges it back into a module.
    graphdef, state = nnx.split(model)
    fn = lambda s, b: loss(nnx.merge(graphdef, s), b)  # noqa: E731
    ordered = jax.jit(lambda s, b: gf.gradients.layer_grad_norms(fn, s, b))(state, batch)
    assert ordered.names == ("z_in", "m_mid", "a_out")
    np.testing.assert_allclose(ordered.values, [expected[k] for k in ordered.names], **_TOL32)
    params = nnx.state(model, nnx.Param)
    assert gf.gradients.forward_order(fn, params, batch) == ordered.names


# --- stacked groups -------------------------------------------------------------------------------
def test_user_dense_named_hidden_is_not_split():
    # A user's 3-layer net with an ordinary Dense called "hidden": three layers, not the 18 rows
    # that splitting "hidden" by its leading axis would give.
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = jnp.tanh(nn.Dense(6, name="input")(x))
            x = jnp.tanh(nn.Dense(6, name="hidden")(x))
            return nn.Dense(1, name="readout")(x)

    x = jnp.ones((2, 3))
    params = Net().init(jax.random.key(2), x)
    loss = lambda p, x: jnp.sum(Net().apply(p, x) ** 2)  # noqa: E731
    norms = gf.gradients.layer_grad_norms(loss, params, x)
    assert norms.names == ("input", "hidden", "readout")
    with pytest.raises(ValueError, match=r"stacked.*'hidden'.*\(6, 6\)"):
        gf.gradients.layer_grad_norms(loss, params, x, stacked=("hidden",))


def test_explicit_stacked_group_in_place():
    rng = np.random.default_rng(12)
    tree = {
        "embed": rng.standard_normal((5, 4)),
        "blocks": {"kernel": rng.standard_normal((3, 4, 4)), "gain": rng.standard_normal(3)},
        "head": rng.standard_normal((4, 2)),
    }
    norms = gf.gradients.named_norms(tree, stacked=["blocks"], order=["embed", "blocks", "head"])
    assert norms.names == ("embed", "blocks/0", "blocks/1", "blocks/2", "head")
    b = tree["blocks"]
    expected = [_np_norm(tree["embed"])]
    expected += [_np_norm(b["kernel"][k], b["gain"][k]) for k in range(3)]
    expected += [_np_norm(tree["head"])]
    np.testing.assert_allclose(norms.values, expected, **_TOL32)


@pytest.mark.parametrize(
    "group,problem",
    [
        ({"kernel": np.ones((3, 4)), "bias": np.ones(4)}, "leading lengths differ"),
        ({"kernel": np.ones((4, 4)), "bias": np.ones(4)}, "plain Dense"),
        ({"scale": np.ones(4), "bias": np.ones(4)}, "1-D"),
        ({"kernel": np.ones((2, 4, 4)), "step": np.ones(())}, "scalar"),
    ],
)
def test_stacked_rejects_groups_that_are_not_stacks(group, problem):
    with pytest.raises(ValueError, match=f"stacked.*'g'.*{problem}"):
        gf.gradients.named_norms({"g": group, "other": np.ones(2)}, stacked=("g",))


def test_errors():
    _, params, batch = _mlp_setup()
    with pytest.raises(TypeError, match="loss_fn"):
        gf.gradients.layer_grad_norms("mse", params, batch)
    broken = jax.tree_util.tree_map(np.copy, params)
    broken["params"]["input"]["bias"][0] = np.nan
    with pytest.raises(ValueError, match="params.*non-finite"):
        gf.gradients.layer_grad_norms(lambda p, b: 0.0, broken, batch)
    with pytest.raises(TypeError, match=r"params\['input'\].*str"):
        gf.gradients.layer_grad_norms(lambda p, b: 0.0, {"input": "weights"}, batch)
    with pytest.raises(TypeError, match="params.*no array leaves"):
        gf.gradients.layer_grad_norms(lambda p, b: 0.0, {}, batch)
    with pytest.raises(TypeError, match="tree"):
        gf.gradients.named_norms([np.ones(3), object()])
    with pytest.raises(ValueError, match="depth"):
        gf.gradients.layer_grad_norms(_mse_loss(MLP(width=4, depth=4)), params, batch, depth=0)
    with pytest.raises(ValueError, match=r"depth must be >= 1"):
        gf.gradients.named_norms(params, depth=0)
    with pytest.raises(ValueError, match=r"'nope'.*\['input', 'hidden', 'readout'\]"):
        gf.gradients.layer_grad_norms(lambda p, b: 0.0, params, batch, stacked=("nope",))
    with pytest.raises(TypeError, match="stacked"):
        gf.gradients.named_norms(params, stacked="hidden")
    with pytest.raises(TypeError, match="fn"):
        gf.gradients.forward_order(None, params)


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


# --- log-scale norms along a chain: finite where jax.grad underflows ------------------------------
def _deep_sigmoid(depth, width=16, batch=4):
    model = MLP(width=width, depth=depth, activation="sigmoid", kernel_init=gf.init.glorot())
    x = jax.random.normal(jax.random.key(1), (batch, width), jnp.float32)
    y = jax.random.normal(jax.random.key(2), (batch, 1), jnp.float32)
    # jitted init: one compile (eager init dispatched every op); the tests use whatever params
    # this gives, against references computed from the same params.
    return model, jax.jit(model.init)(jax.random.key(0), x), x, y


def _readout_mse(readout, h, y):
    return jnp.mean((h @ readout["kernel"] + readout["bias"][None, :] - y) ** 2)


def _scaled_norm(*arrays):
    # Float64 norms scaled by the largest entry: 1e-190 squared underflows even float64.
    v = np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in arrays])
    m = np.max(np.abs(v))
    return m * np.sqrt(np.sum((v / m) ** 2)) if m > 0 else 0.0


def test_chain_grad_norms_match_float64_where_float32_grad_underflows():
    depth = 300
    model, params, x, y = _deep_sigmoid(depth)
    loss = functools.partial(_readout_mse, y=y)
    # Every computation here is jitted (one compile each; eager dispatch compiled every
    # primitive and ran the 300 layers op by op).
    out = jax.jit(
        lambda p, x: gf.gradients.chain_grad_norms(
            model.full_chain(p, x), loss, head_params=p["params"]["readout"], head_name="readout"
        )
    )(params, x)
    assert out.names[0] == "input" and out.names[-1] == "readout" and len(out) == depth + 1
    # The independent reference: float64 jax.grad of the whole network (no chain machinery).
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
        x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
        g = jax.jit(jax.grad(lambda p, x, y: jnp.mean((model.apply(p, x) - y) ** 2)))(
            p64, x64, y64
        )["params"]
        hid = g["hidden"]
        expected = [_scaled_norm(g["input"]["kernel"], g["input"]["bias"])]
        expected += [_scaled_norm(hid["kernel"][k], hid["bias"][k]) for k in range(depth - 1)]
        expected += [_scaled_norm(g["readout"]["kernel"], g["readout"]["bias"])]
    expected = np.log10(np.asarray(expected))
    assert expected[0] < -100  # far below float32's range: the case that matters
    # float32 jax.grad of the same net returns exact zeros for most layers.
    g32 = jax.jit(jax.grad(lambda p, x, y: jnp.mean((model.apply(p, x) - y) ** 2)))(params, x, y)[
        "params"
    ]
    zeros = np.sum(np.sum(np.asarray(g32["hidden"]["kernel"]) ** 2, axis=(1, 2)) == 0)
    assert zeros > depth // 2
    # 1e-3 in log10 is 0.2 % in the norm: float32 rounding over 300 renormalised vjps stays
    # near 1e-5 (measured 4e-5); a wrong factor, order or transpose is off by far more.
    np.testing.assert_allclose(np.asarray(out.log10), expected, atol=1e-3)


def test_depth_1000_log_norms_are_finite_in_float32():
    model, params, x, y = _deep_sigmoid(1000, width=8, batch=2)
    loss = functools.partial(_readout_mse, y=y)

    @jax.jit  # one compile (eager dispatch ran the 1000 layers op by op)
    def both(p, x):
        readout = p["params"]["readout"]
        out = gf.gradients.chain_grad_norms(model.full_chain(p, x), loss, head_params=readout)
        states = gf.gradients.state_grad_norms(
            model.chain(p, x), functools.partial(_readout_mse, readout, y=y), log10=True
        )
        return out, states

    out, states = both(params, x)
    assert np.all(np.isfinite(np.asarray(out.log10)))
    assert states.shape == (1000,) and np.all(np.isfinite(np.asarray(states)))
    # The backward signal shrinks monotonically overall through a sigmoid net (χ₁ < 1).
    assert float(states[0]) < float(states[-1]) - 100


def test_state_grad_norms_match_eps_perturbation_reference(x64):
    # ∂L/∂h_k by the old route: a zero perturbation of every state, one jax.grad.
    model = MLP(width=5, depth=6, activation="tanh", out_features=1)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4)))
    params = ref.random_params(model, x)
    chain = model.chain(params, x)
    loss = lambda h: jnp.sum(jnp.sin(h))

    def with_eps(eps):
        h = chain.h0 + eps[0]
        for k in range(chain.length):
            h = chain.step(jax.tree_util.tree_map(lambda a, k=k: a[k], chain.params), h, None)
            h = h + eps[k + 1]
        return loss(h)

    # Reference and both forms jitted (one compile each; eager dispatch compiled every op).
    g = jax.jit(jax.grad(with_eps))(jnp.zeros((chain.length + 1,) + chain.h0.shape))
    expected = np.linalg.norm(np.asarray(g).reshape(chain.length + 1, -1), axis=1)
    plain, logs = jax.jit(
        lambda c: (
            gf.gradients.state_grad_norms(c, loss),
            gf.gradients.state_grad_norms(c, loss, log10=True),
        )
    )(chain)
    np.testing.assert_allclose(plain, expected, **_TOL64)
    np.testing.assert_allclose(logs, np.log10(expected), **_TOL64)


def test_chain_grad_norms_on_a_segmented_chain_match_jax_grad(x64):
    # A CNN-like chain of closures with shape changes: per-layer gradient norms by the chain's
    # reverse pass equal plain float64 jax.grad norms; their root sum of squares the global norm.
    rng = np.random.default_rng(1)
    ws = [jnp.asarray(rng.standard_normal(s) / np.sqrt(s[0])) for s in ((6, 9), (9, 9), (9, 4))]
    fn = lambda w, h, _: jnp.tanh(h @ w)
    segments = tuple(gf.chain.Layer(w, None, fn, f"dense_{i}") for i, w in enumerate(ws))
    x = jnp.asarray(rng.standard_normal(6))
    chain = gf.chain.Segmented(h0=x, segments=segments)
    loss = lambda h: jnp.sum(h**2)
    out = jax.jit(lambda c: gf.gradients.chain_grad_norms(c, loss))(chain)  # one compile

    def total(ws):
        h = x
        for w in ws:
            h = jnp.tanh(h @ w)
        return loss(h)

    g = jax.jit(jax.grad(total))(ws)
    assert out.names == ("dense_0", "dense_1", "dense_2")
    np.testing.assert_allclose(out.values, [np.linalg.norm(a) for a in g], **_TOL64)
    np.testing.assert_allclose(
        np.sqrt(np.sum(np.asarray(out.values) ** 2)), float(_optax_norm(g)), **_TOL64
    )


def test_chain_grad_norms_errors():
    model, params, x, _ = _deep_sigmoid(3, width=4)
    with pytest.raises(TypeError, match="chain"):
        gf.gradients.chain_grad_norms(params, lambda h: jnp.sum(h))
    with pytest.raises(TypeError, match="loss_fn"):
        gf.gradients.chain_grad_norms(model.chain(params, x), "mse")
    with pytest.raises(TypeError, match="loss_fn"):
        gf.gradients.state_grad_norms(model.chain(params, x), None)


def test_state_grad_norms_at_10000_steps_stay_finite_and_match_the_products():
    # A contracting RNN over 10,000 steps: ‖∂L/∂h_t‖ falls to ~1e-2000, far below float32,
    # where the plain norms were exact zeros for most t. The log form must stay finite and
    # agree with the log-scale backward products: ∂L/∂h_t = (∂L/∂h_T) ∂h_T/∂h_t.
    model = RNN(width=4, activation="tanh", recurrent_init=gf.init.orthogonal(0.5))
    u = jax.random.normal(jax.random.key(3), (10_000, 2), jnp.float32)
    chain = model.chain(model.init(jax.random.key(4), u), u)
    loss = lambda h: jnp.sum(h)
    # Both forms in one jitted program (one compile instead of eager dispatch of every op).
    logs, plain = jax.jit(
        lambda c: (
            gf.gradients.state_grad_norms(c, loss, log10=True),
            gf.gradients.state_grad_norms(c, loss),
        )
    )(chain)
    logs, plain = np.asarray(logs), np.asarray(plain)
    assert logs.shape == (10_001,) and np.all(np.isfinite(logs))
    assert logs[0] < -1000
    assert np.sum(plain == 0) > 9000  # the plain form underflows, as float32 must
    # Last 30 steps against products (u = ∂L/∂h_T = ones): ‖uᵀ P_t‖ in log10, float32 rounding
    # over 30 renormalised steps is ~1e-6 relative; 1e-4 in log10 is a wide margin.
    tail = chain.replace(
        h0=gf.chain.trajectory(chain)[-31],
        xs=chain.xs[-30:],
        length=30,
    )
    products = jax.jit(gf.jacobians.backward_products)(tail)
    # ‖uᵀ P_t‖ from the unit matrices and log-norms, in float64 NumPy (no per-t eager ops).
    unit = np.asarray(products.unit, np.float64)
    expected = np.log10(np.linalg.norm(np.ones(4) @ unit, axis=-1)) + np.asarray(
        products.log_norm, np.float64
    ) / np.log(10)
    np.testing.assert_allclose(logs[-31:-1], expected, atol=1e-4)
