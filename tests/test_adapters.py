"""Chains built from users' models (gradflow.chain adapters) against whole-network references.

Every reference is independent of gradflow's chain machinery: the network is composed by hand in
Python, applying each Flax submodule on its own (``Sub(...).apply({"params": p["Name"]}, h)``) or
plain ``jnp``, and the backward products ∂h_K/∂h_k come from one ``jax.jacrev`` through that
composition (see :func:`_reference_products`).

Tolerances (all in float64). Both sides compute the same derivatives by different routes (a
renormalised vjp pull-back or a product of vmapped step Jacobians, against reverse mode through
the Python-unrolled network), so they agree to ~1e-14 relative; the matrices are compared to
1e-10 relative to their largest entry, which still catches any wrong factor, order or transpose.
Singular values are compared to 1e-6 relative, and only those above 1e-8 · σ_max: where the map has
an exact null space (LayerNorm removes the mean of every token, a dead ReLU unit a whole input) the
"zero" singular values are rounding noise of size ~1e-16 · σ_max on both sides, and their relative
error means nothing. (LayerNorm's normalised direction is damped only to ~ε/σ² with Flax's
ε = 1e-6: such values may land on either side of the cutoff, and float64 gets them to ~1e-10.)
"""

from __future__ import annotations

import contextlib
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

import gradflow as gf
from gradflow.jacobians import JacobianProducts, SegmentedProducts

_MATRIX_RTOL = 1e-10  # relative to the largest entry (module docstring)
_SV_RTOL = 1e-6
_SV_CUTOFF = 1e-8  # compare singular values above _SV_CUTOFF · σ_max only (module docstring)


@contextlib.contextmanager
def _float64():
    """float64 for a module-scoped fixture, which cannot use conftest's function-scoped ``x64``."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def _random_variables(module, *args, seed: int = 0, **kwargs):
    """Variables shaped like ``module.init(key, *args, **kwargs)``, drawn with NumPy in float64.

    Only the shapes come from Flax (``jax.eval_shape``: nothing is compiled, where a real init
    compiles every initialiser). Kernels ~ N(0, 1/fan_in) with fan_in = the product of all but the
    last axis; LayerNorm scales ~ 1 + N(0, 0.1²); biases and other vectors ~ N(0, 0.1²), nonzero
    so that no term drops out of the Jacobians.
    """
    shapes = jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a, **kwargs), *args)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        shape = leaf.shape
        if getattr(path[-1], "key", None) == "scale":
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif len(shape) <= 1:
            value = 0.1 * rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
        return jnp.asarray(value, jnp.float64)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _normal(shape, seed: int):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float64)


# --- the independent reference --------------------------------------------------------------------
def _reference_products(steps, h0, *, jit: bool = True, end: int | None = None):
    """States h_0 … h_K and ∂h_K/∂h_k as ``(m, n_k)`` matrices, by one jacrev through ``steps``.

    A perturbation ε_k is added to h_k before step k; ∂h_K/∂ε_k = ∂h_K/∂h_k, so differentiating h_K
    with respect to all ε at once gives every product without multiplying any Jacobians.
    ``jit=False`` runs it op by op: for a long unrolled loop of tiny steps (an RNN over time) that
    is faster than XLA compiling the unrolled program. ``end=j`` adds a third result, ∂h_j/∂h_k
    for k < j, from the same jacrev (h_j is an intermediate of the same composition: one
    compiled program instead of a second jacrev through ``steps[:j]``).
    """
    states = [jnp.asarray(h0)]
    for step in steps:
        states.append(step(states[-1]))

    def final(eps):
        h, h_end = states[0], None
        for k, (step, e) in enumerate(zip(steps, eps)):
            h_end = h if k == end else h_end
            h = step(h + e)
        return h if end is None else (h, h_end)

    eps = tuple(jnp.zeros_like(h) for h in states[:-1])
    jac = (jax.jit(jax.jacrev(final)) if jit else jax.jacrev(final))(eps)
    as_matrices = lambda js, m: [np.asarray(j).reshape(m, -1) for j in js]
    states = [np.asarray(h) for h in states]
    if end is None:
        return states, as_matrices(jac, states[-1].size)
    jac, jac_end = jac
    return states, as_matrices(jac, states[-1].size), as_matrices(jac_end[:end], states[end].size)


def _matrices(products):
    """Every step's ∂h_K/∂h_k as a NumPy ``(m, n_k)`` array, in step order.

    Converted once per segment: slicing the device arrays step by step would compile one slice
    per index in eager mode.
    """
    parts = products.parts if isinstance(products, SegmentedProducts) else (products,)
    out = []
    for p in parts:
        unit, log_norm = np.asarray(p.unit), np.asarray(p.log_norm)
        out += [u * np.exp(c) for u, c in zip(unit, log_norm)]
    return out


def _assert_matrix_close(got, want, rtol=_MATRIX_RTOL):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    scale = np.max(np.abs(want))
    assert np.max(np.abs(got - want)) <= rtol * scale, np.max(np.abs(got - want)) / scale


def _assert_singular_values_close(got, want):
    """``got``/``want``: descending singular values; compared above the cutoff (module doc)."""
    got, want = np.asarray(got), np.asarray(want)
    keep = want > _SV_CUTOFF * want[0]
    np.testing.assert_allclose(got[: want.size][keep], want[keep], rtol=_SV_RTOL, atol=0)


def _assert_products(products, expected, steps=None):
    """Products (Chain or Segmented) against the reference matrices, at ``steps`` (default all)."""
    got = _matrices(products)
    assert len(got) == len(expected)
    log_norm = np.asarray(products.log_norm)
    for k in range(len(expected)) if steps is None else steps:
        _assert_matrix_close(got[k], expected[k])
        _assert_singular_values_close(
            np.linalg.svd(got[k], compute_uv=False), np.linalg.svd(expected[k], compute_uv=False)
        )
        np.testing.assert_allclose(log_norm[k], np.log(np.linalg.norm(expected[k])), atol=1e-10)


def _assert_same_products(a, b, rtol=_MATRIX_RTOL):
    """Two sets of products (e.g. method="vjp" and method="jacobians") agree step by step."""
    for got, want in zip(_matrices(a), _matrices(b), strict=True):
        _assert_matrix_close(got, want, rtol)


# --- 1. a linen CNN whose channel count and resolution change -------------------------------------
class CNN(nn.Module):
    """Conv(8) relu Conv(8, /2) tanh avg_pool Conv(16) tanh flatten Dense(10): 3 → 8 → 16."""

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(8, (3, 3))(x)
        h = nn.Conv(8, (3, 3), strides=2)(nn.relu(h))
        h = nn.Conv(16, (3, 3))(nn.avg_pool(jnp.tanh(h), (2, 2), (2, 2)))
        return nn.Dense(10)(jnp.reshape(jnp.tanh(h), (h.shape[0], -1)))


def _cnn_reference(p, x):
    """The CNN composed by hand: (h_0, [step_1, step_2, step_3]) with the stem applied to x.

    The states are the layers' outputs, so each activation belongs to the step after it.
    """
    conv1, conv2, dense = nn.Conv(8, (3, 3), strides=2), nn.Conv(16, (3, 3)), nn.Dense(10)
    steps = [
        lambda h: conv1.apply({"params": p["Conv_1"]}, nn.relu(h)),
        lambda h: conv2.apply({"params": p["Conv_2"]}, nn.avg_pool(jnp.tanh(h), (2, 2), (2, 2))),
        lambda h: dense.apply({"params": p["Dense_0"]}, jnp.reshape(jnp.tanh(h), (h.shape[0], -1))),
    ]
    return nn.Conv(8, (3, 3)).apply({"params": p["Conv_0"]}, x), steps


@pytest.fixture(scope="module")
def cnn():
    with _float64():
        x = _normal((1, 8, 8, 3), seed=1)
        variables = _random_variables(CNN(), x)
        h0, steps = _cnn_reference(variables["params"], x)
        states, expected = _reference_products(steps, h0)
        step_jacs = [
            np.asarray(jax.jit(jax.jacrev(f))(jnp.asarray(h))).reshape(h_next.size, h.size)
            for f, h, h_next in zip(steps, states[:-1], states[1:])
        ]
    return dict(x=x, variables=variables, states=states, expected=expected, step_jacs=step_jacs)


def test_cnn_from_module_matches_jacrev(cnn, x64):
    sc = gf.chain.from_module(CNN(), cnn["variables"], cnn["x"])
    # Names in call order; the first layer is the stem, so h_0 is its output.
    assert sc.step_names() == ("Conv_1", "Conv_2", "Dense_0")
    assert sc.stem.name == "Conv_0"
    shapes = [s.shape for s in gf.chain.state_shapes(sc)]
    assert shapes == [(1, 8, 8, 8), (1, 4, 4, 8), (1, 2, 2, 16), (1, 10)]
    inputs, h_last = gf.chain.forward(sc)
    for got, want in zip([*inputs, h_last], cnn["states"], strict=True):
        _assert_matrix_close(got, want)
    _assert_matrix_close(gf.chain.final_state(sc), cnn["states"][-1])

    products = gf.jacobians.backward_products(sc)
    assert products.names == sc.step_names()
    assert [p.unit.shape for p in products.parts] == [(1, 10, 512), (1, 10, 128), (1, 10, 64)]
    _assert_products(products, cnn["expected"])
    # The log-form summaries: every product is 10 × n_k of full rank 10, so all are finite.
    s_want = [np.linalg.svd(e, compute_uv=False) for e in cnn["expected"]]
    for ls, s in zip(products.log_singular_values(), s_want, strict=True):
        _assert_singular_values_close(np.exp(ls[0]), s)
    np.testing.assert_allclose(
        products.log_spectral_norm(), [np.log(s[0]) for s in s_want], rtol=0, atol=1e-10
    )
    np.testing.assert_allclose(
        np.exp(products.log_condition_number()), [s[0] / s[-1] for s in s_want], rtol=_SV_RTOL
    )
    at = products.at(1)
    _assert_matrix_close(at.matrices[0], cnn["expected"][1])

    _assert_same_products(products, gf.jacobians.backward_products(sc, method="jacobians"))
    jacs = gf.jacobians.step_jacobians(sc)
    assert [j.shape for j in jacs] == [(1, 128, 512), (1, 64, 128), (1, 10, 64)]
    for got, want in zip(jacs, cnn["step_jacs"], strict=True):
        _assert_matrix_close(got[0], want)
    # ∂h_K/∂h_0 from differentiating the whole roll-out.
    _assert_matrix_close(gf.jacobians.end_to_end(sc), cnn["expected"][0])


def test_cnn_layers_select_a_sub_chain(cnn, x64):
    """layers= picks the states; the unnamed Conv_2 becomes part of the step that follows it."""
    sc = gf.chain.from_module(
        CNN(), cnn["variables"], cnn["x"], layers=["Conv_0", "Conv_1", "Dense_0"]
    )
    assert sc.step_names() == ("Conv_1", "Dense_0")
    products = gf.jacobians.backward_products(sc)
    # States h_0 (Conv_0) and h_1 (Conv_1) are the full chain's first two, h_K is the same.
    _assert_products(products, cnn["expected"][:2])


# --- 2. Transformers (pre-LN and post-LN) ---------------------------------------------------------
_T, _D, _HEADS, _DEPTH, _VOCAB, _OUT = 6, 16, 2, 4, 11, 4


def _causal(t: int):
    return jnp.tril(jnp.ones((t, t), bool))[None]  # (1, T, T): broadcast over the heads


class Mlp(nn.Module):
    @nn.compact
    def __call__(self, h):
        return nn.Dense(_D)(nn.gelu(nn.Dense(2 * _D)(h)))


class Block(nn.Module):
    pre_ln: bool

    @nn.compact
    def __call__(self, h, train: bool = False):
        mha = nn.MultiHeadDotProductAttention(_HEADS, name="attn")
        drop = nn.Dropout(0.5, deterministic=not train)
        attn = lambda q: drop(mha(q, mask=_causal(h.shape[-2])))
        if self.pre_ln:
            h = h + attn(nn.LayerNorm(name="ln1")(h))
            return h + Mlp(name="mlp")(nn.LayerNorm(name="ln2")(h))
        h = nn.LayerNorm(name="ln1")(h + attn(h))
        return nn.LayerNorm(name="ln2")(h + Mlp(name="mlp")(h))


class Transformer(nn.Module):
    """Embed + positions, blocks, [final LN], head named to sort *before* the blocks."""

    pre_ln: bool

    @nn.compact
    def __call__(self, tokens, *, train: bool = True):
        h = nn.Embed(_VOCAB, _D)(tokens)
        # A parameter outside every named layer: it belongs to the step that follows the stem.
        h = h + self.param("pos", nn.initializers.normal(0.5), (tokens.shape[-1], _D))
        for _ in range(_DEPTH):
            h = Block(self.pre_ln)(h, train)
        if self.pre_ln:
            h = nn.LayerNorm()(h)
        return nn.Dense(_OUT, name="a_head")(h)


def _transformer_reference(p, tokens, pre_ln: bool):
    h0 = nn.Embed(_VOCAB, _D).apply({"params": p["Embed_0"]}, tokens)
    block = Block(pre_ln)
    steps = [lambda h: block.apply({"params": p["Block_0"]}, h + p["pos"])]
    steps += [lambda h, i=i: block.apply({"params": p[f"Block_{i}"]}, h) for i in range(1, _DEPTH)]
    if pre_ln:
        steps.append(lambda h: nn.LayerNorm().apply({"params": p["LayerNorm_0"]}, h))
    steps.append(lambda h: nn.Dense(_OUT).apply({"params": p["a_head"]}, h))
    return h0, steps


@pytest.fixture(scope="module", params=[True, False], ids=["pre-ln", "post-ln"])
def transformer(request):
    with _float64():
        tokens = jnp.asarray(np.random.default_rng(2).integers(0, _VOCAB, _T))
        variables = _random_variables(Transformer(request.param), tokens, train=False)
        h0, steps = _transformer_reference(variables["params"], tokens, request.param)
        # Also ∂h_D/∂h_k, ending at the last block (test_transformer_layernorm_null_space).
        states, expected, expected_blocks = _reference_products(steps, h0, end=_DEPTH)
    return dict(
        pre_ln=request.param,
        tokens=tokens,
        variables=variables,
        states=states,
        expected=expected,
        expected_blocks=expected_blocks,
    )


def test_transformer_from_module_matches_jacrev(transformer, x64):
    pre_ln = transformer["pre_ln"]
    model = Transformer(pre_ln)
    # train=False is a static call keyword: were it lost in a replayed step, Dropout would be on
    # there and fail for want of a "dropout" PRNG key.
    sc = gf.chain.from_module(model, transformer["variables"], transformer["tokens"], train=False)
    blocks = tuple(f"Block_{i}" for i in range(_DEPTH))
    # Call order, not alphabetical order ("a_head" sorts first but is called last).
    assert sc.step_names() == blocks + (("LayerNorm_0",) if pre_ln else ()) + ("a_head",)
    assert sc.stem.name == "Embed_0"
    shapes = [s.shape for s in gf.chain.state_shapes(sc)]
    assert shapes == [(_T, _D)] * len(sc.segments) + [(_T, _OUT)]
    _assert_matrix_close(sc.h0, transformer["states"][0])
    _assert_matrix_close(
        gf.chain.final_state(sc),
        model.apply(transformer["variables"], transformer["tokens"], train=False),
    )
    products = gf.jacobians.backward_products(sc)
    # The first step and a middle one (the whole stack of blocks, and half of it).
    _assert_products(products, transformer["expected"], steps=(0, _DEPTH // 2))


def test_transformer_layernorm_null_space(transformer, x64):
    """Ending at the last block: post-LN products have LayerNorm's null space, pre-LN ones none."""
    pre_ln = transformer["pre_ln"]
    names = ["Embed_0"] + [f"Block_{i}" for i in range(_DEPTH)]
    sc = gf.chain.from_module(
        Transformer(pre_ln), transformer["variables"], transformer["tokens"], names, train=False
    )
    assert sc.step_names() == tuple(names[1:])
    # ∂h_D/∂h_k by jacrev through the hand-built network's first _DEPTH steps (the fixture's).
    expected = transformer["expected_blocks"]
    s = np.linalg.svd(expected[0], compute_uv=False)
    zeros = np.sum(s < _SV_CUTOFF * s[0])
    # LayerNorm's Jacobian kills the mean of each of the T tokens exactly (and damps their
    # normalised direction to ~ε/σ²); a pre-LN block ends in the residual stream, whose
    # Jacobian I + … is invertible.
    if pre_ln:
        assert zeros == 0
    else:
        assert _T <= zeros <= 2 * _T
    _assert_products(gf.jacobians.backward_products(sc), expected, steps=(0, _DEPTH - 1))


# --- 3. an nnx MLP --------------------------------------------------------------------------------
def _numpy_init(seed: int, std_of_shape):
    """An nnx/linen initialiser drawing N(0, std²) with NumPy (``std_of_shape(shape)``): every
    jax.random initialiser shape and dtype would compile its own program (~0.2–0.3 s each)."""
    rng = np.random.default_rng(seed)
    return lambda key, shape, dtype=jnp.float32: jnp.asarray(
        std_of_shape(shape) * rng.standard_normal(shape), dtype
    )


class NnxMLP(nnx.Module):
    def __init__(self, d: int, n: int, out: int, depth: int, *, rngs: nnx.Rngs):
        # Kernels N(0, 1/fan_in) and biases N(0, 0.1²) (nnx.Linear's default kernel init is a
        # truncated normal of the same variance; the test compares the model with its own values).
        kw = dict(
            param_dtype=jnp.float64,
            kernel_init=_numpy_init(30, lambda shape: 1 / np.sqrt(shape[0])),
            bias_init=_numpy_init(31, lambda shape: 0.1),
            rngs=rngs,
        )
        self.embed_in = nnx.Linear(d, n, **kw)
        self.blocks = nnx.List([nnx.Linear(n, n, **kw) for _ in range(depth)])
        self.readout = nnx.Linear(n, out, **kw)

    def __call__(self, x):
        h = jnp.tanh(self.embed_in(x))
        for block in self.blocks:
            h = jnp.tanh(block(h))
        return self.readout(h)


def test_nnx_mlp_from_nnx_matches_jacrev_and_leaves_model_unchanged(x64):
    model = NnxMLP(3, 5, 2, 3, rngs=nnx.Rngs(0))
    x = _normal((4, 3), seed=3)  # a batch: one state (4, 5)
    before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    linear_call = nnx.Linear.__dict__["__call__"]

    sc = gf.chain.from_nnx(model, x)
    assert sc.stem.name == "embed_in"
    assert sc.step_names() == ("blocks/0", "blocks/1", "blocks/2", "readout")
    products = gf.jacobians.backward_products(sc)

    # The reference in plain jnp from the model's own parameter values. The states are the
    # layers' outputs, so each tanh belongs to the step after it.
    lin = lambda layer: lambda h: h @ layer.kernel[...] + layer.bias[...][None, :]
    steps = [lambda h, b=b: lin(b)(jnp.tanh(h)) for b in [*model.blocks, model.readout]]
    states, expected = _reference_products(steps, lin(model.embed_in)(x))
    _assert_products(products, expected)
    _assert_matrix_close(gf.chain.final_state(sc), model(x))

    # The model is untouched: same parameter values, and nnx.Linear's class is restored.
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, after)
    assert nnx.Linear.__dict__["__call__"] is linear_call
    # Changing the model afterwards does not change the chain (it holds a functional copy).
    model.readout.kernel[...] = 2.0 * model.readout.kernel[...]
    _assert_matrix_close(gf.chain.final_state(sc), states[-1])


# --- 4. recurrent cells through time --------------------------------------------------------------
def _cell_reference(cell, p, xs, carry0):
    """States and products by a Python loop of ``cell.apply`` on the flattened carry."""
    flat0, unravel = ravel_pytree(carry0)

    def step(t):
        return lambda s: ravel_pytree(cell.apply({"params": p}, unravel(s), xs[t])[0])[0]

    return _reference_products([step(t) for t in range(xs.shape[0])], flat0, jit=False)


def test_lstm_from_cell_matches_python_loop(x64):
    n, d, T = 4, 3, 20
    cell = nn.OptimizedLSTMCell(n, param_dtype=jnp.float64)
    rnn = nn.RNN(cell)
    xs = _normal((T, d), seed=4)  # batch-major: (T, d) for one sequence
    variables = _random_variables(rnn, xs)
    # Strong weights push the gates out of their linear range, so the products vary over time.
    variables = jax.tree_util.tree_map(lambda a: 2.0 * a, variables)
    chain = gf.chain.from_cell(rnn, variables, xs)
    assert isinstance(chain, gf.chain.Chain) and chain.length == T and chain.shared

    # Flax's LSTM carry is (c, h) and ravel_pytree flattens the tuple in order: state = [c, h].
    c0, h0 = chain.h0
    assert c0.shape == h0.shape == (n,)
    zeros = jnp.zeros((n,), jnp.float64)
    states, expected = _cell_reference(cell, variables["params"]["cell"], xs, (zeros, zeros))
    final = ravel_pytree(gf.chain.final_state(chain))[0]
    _assert_matrix_close(final, states[-1])
    (c_T, h_T), ys = rnn.apply(variables, xs, return_carry=True)
    _assert_matrix_close(final, jnp.concatenate([c_T, h_T]))  # [c, h], not [h, c]
    _assert_matrix_close(h_T, ys[-1])

    products = gf.jacobians.backward_products(chain)
    assert products.unit.shape == (T, 2 * n, 2 * n)
    _assert_products(products, expected)
    _assert_same_products(products, gf.jacobians.backward_products(chain, method="jacobians"))


@pytest.mark.parametrize(
    "make, batch", [(nn.GRUCell, (2,)), (nn.SimpleCell, ())], ids=["gru-batch", "simple"]
)
def test_gru_and_simple_cell_from_cell(make, batch, x64):
    n, d, T = 3, 2, 8
    cell = make(n, param_dtype=jnp.float64)
    inputs = _normal((*batch, T, d), seed=6)  # batch-major, as nn.RNN
    xs = jnp.moveaxis(inputs, -2, 0)  # time-major for the reference loop
    carry0 = cell.initialize_carry(jax.random.key(0), (*batch, d))
    variables = _random_variables(cell, carry0, xs[0])
    chain = gf.chain.from_cell(cell, variables, inputs)
    assert chain.length == T and jnp.shape(chain.h0) == (*batch, n)
    _, expected = _cell_reference(cell, variables["params"], xs, carry0)
    _assert_products(gf.jacobians.backward_products(chain), expected)


def test_from_cell_default_carry_follows_the_params_dtype(x64):
    cell = nn.GRUCell(3)  # param_dtype float32, Flax's default
    xs = _normal((5, 2), seed=6)
    # float64 values, as casting Flax's init gives (shapes from a float32 init, which works).
    variables = _random_variables(nn.RNN(cell), xs.astype(jnp.float32))
    chain = gf.chain.from_cell(nn.RNN(cell), variables, xs)
    zeros = jnp.zeros((3,), jnp.float64)
    states, _ = _cell_reference(cell, variables["params"]["cell"], xs, zeros)
    _assert_matrix_close(gf.chain.final_state(chain), states[-1])


# --- 5. from_layers -------------------------------------------------------------------------------
def test_from_layers_shape_changes_and_repeated_callable_is_a_scan(x64):
    w_in = _normal((5, 3), seed=8)
    w_block = 0.9 * _normal((5, 5), seed=9) / np.sqrt(5)
    w_grid = _normal((6, 5), seed=10)
    w_mix = _normal((3, 3), seed=11) / np.sqrt(3)
    w_out = _normal((3, 2), seed=12)

    embed = lambda h: jnp.tanh(w_in @ h)  # (3,) -> (5,)
    block = lambda h: jnp.tanh(w_block @ h) + 0.5 * h  # (5,) -> (5,), used three times
    to_grid = lambda h: jnp.reshape(jnp.sin(w_grid @ h), (2, 3))  # (5,) -> (2, 3)
    mix = lambda h: jnp.tanh(h @ w_mix)  # (2, 3) -> (2, 3), used twice
    readout = lambda h: jnp.tanh(h @ w_out)  # (2, 3) -> (2, 2)
    layers = [embed, block, block, block, to_grid, mix, mix, readout]
    x = _normal((3,), seed=13)

    sc = gf.chain.from_layers(layers, x)
    Layer, Scan = gf.chain.Layer, gf.chain.Scan
    assert [type(s) for s in sc.segments] == [Layer, Scan, Layer, Scan, Layer]
    assert [s.length for s in sc.segments] == [1, 3, 1, 2, 1]
    assert sc.length == len(layers) == len(sc.step_names())
    shapes = [s.shape for s in gf.chain.state_shapes(sc)]
    assert shapes == [(3,), (5,), (5,), (2, 3), (2, 3), (2, 2)]

    states, expected = _reference_products(layers, x)
    _assert_matrix_close(gf.chain.final_state(sc), states[-1])
    products = gf.jacobians.backward_products(sc)
    _assert_products(products, expected)
    _assert_same_products(products, gf.jacobians.backward_products(sc, method="jacobians"))

    # A fresh closure with the same code is another callable: a Layer, not part of the Scan.
    mix2 = lambda h: jnp.tanh(h @ w_mix)
    sc2 = gf.chain.from_layers([embed, to_grid, mix, mix2], x, names=["a", "b", "c", "d"])
    assert [type(s) for s in sc2.segments] == [Layer] * 4
    assert sc2.step_names() == ("a", "b", "c", "d")


# --- 6. the recompile trap ------------------------------------------------------------------------
_TRACES = {"count": 0}


class Counted(nn.Module):
    """Counts every time its forward pass runs in Python (eagerly or under a trace).

    Each test uses its own ``width``: another configuration is another compiled program, so the
    counts do not depend on which test ran first.
    """

    width: int = 5

    @nn.compact
    def __call__(self, x):
        _TRACES["count"] += 1
        h = jnp.tanh(nn.Dense(self.width)(x))
        h = jnp.tanh(nn.Dense(self.width)(h))
        h = jnp.tanh(nn.Dense(self.width)(h))
        return nn.Dense(2)(h)


def _runs(fn):
    """(result, how many times Counted's forward pass ran during fn())."""
    before = _TRACES["count"]
    out = fn()
    return out, _TRACES["count"] - before


def _counted_setup(width: int = 5):
    x = _normal((3,), seed=14)
    v1 = _random_variables(Counted(width), x, seed=1)
    v2 = _random_variables(Counted(width), x, seed=2)  # new values, same shapes
    return x, v1, v2


def test_rebuilt_chain_does_not_recompile(x64):
    x, v1, v2 = _counted_setup(width=6)
    sc1, capture1 = _runs(lambda: gf.chain.from_module(Counted(6), v1, x))
    # The capture: one forward pass to record the calls, one replay per step for the shape check.
    assert capture1 == 1 + len(sc1.segments)
    p1, first = _runs(lambda: gf.jacobians.backward_products(sc1))
    # A new module object and new parameters of the same shapes: only the capture pass runs (the
    # shape check is cached on the chain's structure and shapes).
    sc2, capture2 = _runs(lambda: gf.chain.from_module(Counted(6), v2, x))
    assert capture2 == 1
    _, shape_check = _runs(lambda: gf.chain.state_shapes(sc2))
    p2, second = _runs(lambda: gf.jacobians.backward_products(sc2))
    # The first analysis traces the replayed steps into its compiled program; the second finds
    # that program compiled and traces nothing.
    assert first > 0
    assert second == shape_check == 0
    # The reused program did use the new parameters.
    assert not np.allclose(p1.log_norm, p2.log_norm)


def test_second_analysis_adds_no_traces(x64):
    x, v1, v2 = _counted_setup(width=7)
    gf.jacobians.backward_products(gf.chain.from_module(Counted(7), v1, x))
    sc2 = gf.chain.from_module(Counted(7), v2, x)
    _, second = _runs(lambda: gf.jacobians.backward_products(sc2))
    assert second == 0


# --- 7. errors ------------------------------------------------------------------------------------
def test_from_module_unknown_layer_lists_the_called_layers(x64):
    x, v1, _ = _counted_setup()
    with pytest.raises(ValueError, match="layers") as err:
        gf.chain.from_module(Counted(), v1, x, layers=["Nope"])
    message = str(err.value)
    assert "Nope" in message
    assert all(f"Dense_{i}" in message for i in range(4))


def test_from_module_parameter_free_layer(x64):
    class WithDropout(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(3)(x)
            h = nn.Dropout(0.5, deterministic=True)(h)
            return nn.Dense(2)(jnp.tanh(h))

    x = _normal((3,), seed=15)
    variables = _random_variables(WithDropout(), x)
    sc = gf.chain.from_module(WithDropout(), variables, x)
    assert sc.step_names() == ("Dropout_0", "Dense_1")
    p = variables["params"]
    h0 = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    steps = [lambda h: h, lambda h: jnp.tanh(h) @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]]
    _assert_products(gf.jacobians.backward_products(sc), _reference_products(steps, h0)[1])


@pytest.mark.parametrize("bad", [lambda h: "not an array", lambda h: None], ids=["str", "none"])
def test_from_layers_non_array_output_names_the_step(bad, x64):
    with pytest.raises(TypeError, match="layer_1"):
        gf.chain.from_layers([jnp.tanh, bad, jnp.tanh], jnp.ones(3))


def test_from_layers_empty_raises():
    with pytest.raises(ValueError, match="layers"):
        gf.chain.from_layers([], jnp.ones(3))


@pytest.fixture
def lstm_cell(x64):
    cell = nn.OptimizedLSTMCell(4, param_dtype=jnp.float64)
    carry = cell.initialize_carry(jax.random.key(0), (3,))
    return cell, _random_variables(cell, carry, jnp.ones(3, jnp.float64))


def test_from_cell_wrong_input_size_names_inputs(lstm_cell):
    cell, variables = lstm_cell
    with pytest.raises(ValueError, match="inputs") as err:
        gf.chain.from_cell(cell, variables, jnp.ones((6, 5), jnp.float64))
    assert "(6, 5)" in str(err.value)


@pytest.mark.parametrize(
    "carry_shapes",
    [((5,), (5,)), ((4,),)],  # the wrong size; h alone, without the (c, h) pair
    ids=["size", "structure"],
)
def test_from_cell_carry_mismatch_names_carry(lstm_cell, carry_shapes):
    cell, variables = lstm_cell
    carry = tuple(jnp.zeros(s, jnp.float64) for s in carry_shapes)
    carry = carry[0] if len(carry) == 1 else carry
    with pytest.raises(ValueError, match="carry") as err:
        gf.chain.from_cell(cell, variables, jnp.ones((6, 3), jnp.float64), carry=carry)
    assert str(jax.tree_util.tree_map(jnp.shape, carry)) in str(err.value)


def test_from_nnx_rejects_non_nnx_model(x64):
    x = jnp.ones(3)
    with pytest.raises(TypeError, match="model"):
        gf.chain.from_nnx(Counted(), x)
    with pytest.raises(TypeError, match="model"):
        gf.chain.from_nnx(lambda h: h, x)


def test_backward_products_rejects_non_chain():
    with pytest.raises(TypeError, match="chain"):
        gf.jacobians.backward_products(np.eye(3))
    with pytest.raises(TypeError, match="chain"):
        gf.jacobians.backward_products(lambda h: h)


def test_lyapunov_rejects_shape_changing_chain(cnn, x64):
    sc = gf.chain.from_module(CNN(), cnn["variables"], cnn["x"])
    with pytest.raises(ValueError) as err:
        gf.lyapunov.lyapunov_spectrum(sc)
    # The first shape change is step Conv_1: (1, 8, 8, 8) -> (1, 4, 4, 8).
    assert all(s in str(err.value) for s in ("Conv_1", "(1, 8, 8, 8)", "(1, 4, 4, 8)"))


# --- 8. gradflow's own models ---------------------------------------------------------------------
def _own_model_params(model, x, seed: int):
    """``model.init``'s parameters drawn by NumPy from its initialisers' distributions (a jitted
    init compiles for 0.6–1.2 s; ``jax.eval_shape`` compiles nothing): kernels N(0, 1/fan_in)
    (``gf.init.lecun``; stacked hidden kernels are (depth, in, out)), a Haar-orthogonal recurrent
    kernel (``gf.init.orthogonal``), zero biases."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        names = [getattr(k, "key", "") for k in path]
        if names[-1] == "bias":
            value = np.zeros(leaf.shape)
        elif "recurrent" in names:
            q, r = np.linalg.qr(rng.standard_normal(leaf.shape))
            value = q * np.sign(np.diag(r))
        else:
            value = rng.standard_normal(leaf.shape) / np.sqrt(leaf.shape[-2])
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(model.init, jax.random.key(0), x))


@pytest.mark.parametrize(
    "model, x_shape",
    [(gf.models.MLP(width=4, depth=6), (3,)), (gf.models.RNN(width=4), (9, 3))],
    ids=["mlp", "rnn"],
)
def test_own_models_vjp_equals_jacobians_and_end_to_end(model, x_shape, x64):
    x = _normal(x_shape, seed=16)
    chain = model.chain(_own_model_params(model, x, seed=10), x)
    by_vjp = gf.jacobians.backward_products(chain)
    assert isinstance(by_vjp, JacobianProducts)
    assert by_vjp.unit.shape == (chain.length, 4, 4)
    by_jacobians = gf.jacobians.backward_products(chain, method="jacobians")
    _assert_same_products(by_vjp, by_jacobians, rtol=1e-12)
    np.testing.assert_allclose(by_vjp.log_norm, by_jacobians.log_norm, rtol=0, atol=1e-12)
    _assert_matrix_close(_matrices(by_vjp)[0], gf.jacobians.end_to_end(chain), rtol=1e-12)


# --- spectra and Lyapunov exponents on Segmented chains -------------------------------------------
@pytest.mark.slow  # ~5 s: one Lanczos program per (start, stop)
def test_top_singular_values_of_segmented_chain(cnn, x64):
    sc = gf.chain.from_module(CNN(), cnn["variables"], cnn["x"])
    top = gf.spectra.top_singular_values(sc, 3)
    want = np.linalg.svd(cnn["expected"][0], compute_uv=False)[:3]
    np.testing.assert_allclose(top.values, want, rtol=_SV_RTOL)
    np.testing.assert_allclose(top.log_values, np.log(want), rtol=0, atol=_SV_RTOL)
    # A sub-product: ∂h_2/∂h_1 is the Conv_2 step's Jacobian (64 × 128).
    mid = gf.spectra.top_singular_values(sc, 3, start=1, stop=2)
    want = np.linalg.svd(cnn["step_jacs"][1], compute_uv=False)[:3]
    np.testing.assert_allclose(mid.values, want, rtol=_SV_RTOL)


def test_lyapunov_of_shape_preserving_segmented_chain(x64):
    """A Segmented chain of same-shape steps: the exponents equal those of its step Jacobians."""
    w = _normal((4, 4), seed=17)
    block = lambda h: jnp.tanh(w @ h)
    other = lambda h: jnp.tanh(0.5 * w.T @ h)
    sc = gf.chain.from_layers([block] * 6 + [other] + [block] * 5, jnp.ones(4, jnp.float64))
    jacs = jnp.concatenate(gf.jacobians.step_jacobians(sc))
    np.testing.assert_allclose(
        gf.lyapunov.lyapunov_spectrum(sc), gf.lyapunov.lyapunov_spectrum(jacs), rtol=1e-10
    )


# --- nn.Sequential and nn.scan stacks -------------------------------------------------------------
def test_sequential_layers_are_its_modules_with_functions_as_glue(x64):
    seq = nn.Sequential([nn.Dense(6), nn.tanh, nn.Dense(5), nn.relu, nn.Dense(3)])
    x = _normal((4,), seed=21)
    variables = _random_variables(seq, x)
    sc = gf.chain.from_module(seq, variables, x)
    assert sc.stem.name == "layers_0" and sc.step_names() == ("layers_2", "layers_4")
    p = variables["params"]
    dense = lambda name, h: nn.Dense(p[name]["kernel"].shape[-1]).apply({"params": p[name]}, h)
    steps = [lambda h: dense("layers_2", jnp.tanh(h)), lambda h: dense("layers_4", nn.relu(h))]
    _, expected = _reference_products(steps, dense("layers_0", x))
    _assert_products(gf.jacobians.backward_products(sc), expected)


class _ScanBlock(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        return x + nn.Dense(x.shape[-1])(jnp.tanh(nn.LayerNorm()(x))), None


class _Stacked(nn.Module):
    glue: bool = False

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(11, 6)(tokens)
        stack = nn.scan(
            _ScanBlock, variable_axes={"params": 0}, split_rngs={"params": True}, length=3
        )
        x, _ = stack(name="blocks")(x, None)
        if self.glue:
            x = jnp.tanh(x)
        return nn.Dense(5, name="head")(x)


@pytest.mark.parametrize("glue", [False, True])
def test_nn_scan_stack_is_a_scanned_segment_or_folded_exactly(glue, x64):
    # A plain stack (its carry comes from the previous layer and goes straight into the next)
    # becomes one Scan segment with a state per block; with glue after it (tanh), the stack is
    # folded into the head's replayed step. Both are exact against the hand-built network.
    tokens = jnp.arange(4)
    variables = _random_variables(_Stacked(glue), tokens)
    sc = gf.chain.from_module(_Stacked(glue), variables, tokens)
    p = variables["params"]
    block = lambda i: (
        lambda h: _ScanBlock().apply(
            {"params": jax.tree_util.tree_map(lambda a: a[i], p["blocks"])}, h, None
        )[0]
    )
    head = lambda h: nn.Dense(5).apply({"params": p["head"]}, jnp.tanh(h) if glue else h)
    h0 = nn.Embed(11, 6).apply({"params": p["Embed_0"]}, tokens)
    assert sc.stem.name == "Embed_0"
    if glue:
        assert sc.step_names() == ("head",)

        def tail(h):
            for i in range(3):
                h = block(i)(h)
            return head(h)

        _, expected = _reference_products([tail], h0)
    else:
        assert [type(s).__name__ for s in sc.segments] == ["Scan", "Layer"]
        assert sc.step_names() == ("blocks/0", "blocks/1", "blocks/2", "head")
        _, expected = _reference_products([block(0), block(1), block(2), head], h0)
        names = gf.gradients.chain_grad_norms(sc, lambda h: jnp.sum(h**2)).names
        assert names == ("Embed_0", "blocks/0", "blocks/1", "blocks/2", "head")
    _assert_products(gf.jacobians.backward_products(sc), expected)


# --- stateful layers: evaluation mode works, training mode is one clear error ---------------------
class _BatchNormNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.BatchNorm(use_running_average=not train)(nn.Dense(6)(x))
        x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
        return nn.Dense(2)(x)


class _NnxBatchNormNet(nnx.Module):
    def __init__(self, rngs):
        kernel_init = _numpy_init(32, lambda shape: 1 / np.sqrt(shape[0]))  # N(0, 1/fan_in)
        self.a = nnx.Linear(3, 6, kernel_init=kernel_init, rngs=rngs)
        self.bn = nnx.BatchNorm(6, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.b = nnx.Linear(6, 2, kernel_init=kernel_init, rngs=rngs)

    def __call__(self, x):
        return self.b(self.drop(nnx.relu(self.bn(self.a(x)))))


def test_batchnorm_and_dropout_in_evaluation_mode_and_training_mode_errors():
    x = jnp.asarray(np.random.default_rng(5).standard_normal((4, 3)), jnp.float32)
    net = _BatchNormNet()
    # net.init's structure (jax.eval_shape: nothing compiled) with its initial values drawn by
    # NumPy: kernels N(0, 1/fan_in), zero biases, BatchNorm scale 1, offset 0, mean 0, var 1.
    rng = np.random.default_rng(33)

    def draw(path, leaf):
        name = getattr(path[-1], "key", "")
        if name == "kernel":
            return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(leaf.shape[0]), leaf.dtype)
        return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(
        draw, jax.eval_shape(net.init, jax.random.key(0), x)
    )
    sc = gf.chain.from_module(net, variables, x)
    assert sc.step_names() == ("BatchNorm_0", "Dropout_0", "Dense_1")
    assert np.all(np.isfinite(np.asarray(gf.jacobians.backward_products(sc).log_norm)))
    with pytest.raises(ValueError, match="evaluation mode"):
        gf.chain.from_module(net, variables, x, train=True)

    model = _NnxBatchNormNet(nnx.Rngs(0))
    model.train()
    before = jax.tree_util.tree_map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
    with pytest.raises(ValueError, match="model.eval"):
        gf.chain.from_nnx(model, x)
    after = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, after)  # the model is untouched
    model.eval()
    sc = gf.chain.from_nnx(model, x)
    assert sc.step_names() == ("bn", "drop", "b")
    assert np.all(np.isfinite(np.asarray(gf.jacobians.backward_products(sc).log_norm)))


def test_non_finite_step_inputs_are_one_clear_error():
    # A NaN in an RNN's inputs used to come back as NaN products and exponents. The model now
    # refuses it where the data enters; a chain that carries one anyway (built by hand, or by
    # a model without that check) is still refused by every analysis, naming its inputs xs.
    model = gf.models.RNN(width=3)
    u = np.random.default_rng(2).standard_normal((6, 2)).astype(np.float32)
    params = model.init(jax.random.key(0), u)
    u[3, 1] = np.nan
    with pytest.raises(ValueError, match="^u contains non-finite"):
        model.chain(params, u)
    clean = model.chain(params, np.nan_to_num(u))
    chain = dataclasses.replace(clean, xs=jnp.asarray(clean.xs).at[3, 1].set(jnp.nan))
    for analysis in (
        gf.jacobians.backward_products,
        gf.lyapunov.lyapunov_spectrum,
        lambda c: gf.spectra.top_singular_values(c, 1),
        lambda c: gf.gradients.state_grad_norms(c, jnp.sum),
    ):
        with pytest.raises(ValueError, match="xs"):
            analysis(chain)
