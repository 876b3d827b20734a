"""Transformer: forward vs an independent reference, chain Jacobians vs jacrev, Admin's profiling
pass, identical-token and uniform-attention theory, Xiong et al.'s gradient-scale slopes, errors."""

import math
import types

import _reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import attention, gradients, jacobians
from gradflow.chain import trajectory
from gradflow.experiments import transformers as exp
from gradflow.models.transformer import Transformer

# float64 comparisons: both sides differ only in summation order (~1e-16 relative per operation,
# a few hundred operations chained through softmax, LayerNorm and the residual stream), so 1e-10
# is loose for a correct implementation and far below any wrong equation (a missing scale,
# transposed head split, a dropped bias or ω), which changes results at O(1e-2) or more.
_TOL64 = dict(rtol=1e-10, atol=1e-12)


# --- an independent reference: Python loops over blocks, heads and batch rows ---------------------
def _numpy_broadcasting(fn):
    """Runs the reference with NumPy's implicit broadcasting (the suite raises on it elsewhere)."""

    def wrapped(*args, **kwargs):
        with jax.numpy_rank_promotion("allow"):
            return fn(*args, **kwargs)

    return wrapped


def _ln(h, p, eps=1e-5):
    mu = jnp.mean(h, -1, keepdims=True)
    var = jnp.mean((h - mu) ** 2, -1, keepdims=True)
    return (h - mu) / jnp.sqrt(var + eps) * p["scale"] + p["offset"]


def _attention(p, z, cfg, vs):
    """One sequence z (T, d); heads computed one by one on column slices."""
    t, d = z.shape
    dh = d // cfg.heads
    q, k, v = (z @ p[n]["kernel"] + p[n]["bias"] for n in ("query", "key", "value"))
    heads = []
    for h in range(cfg.heads):
        cols = slice(h * dh, (h + 1) * dh)
        logits = q[:, cols] @ k[:, cols].T / math.sqrt(dh)
        if cfg.causal:
            logits = jnp.where(np.tril(np.ones((t, t), bool)), logits, -np.inf)
        e = jnp.exp(logits - jnp.max(logits, -1, keepdims=True))
        a = e / jnp.sum(e, -1, keepdims=True)
        if vs is not None:
            a = vs["alpha"][h] * jnp.eye(t) + vs["beta"][h] * a
        heads.append(a @ v[:, cols])
    return jnp.concatenate(heads, -1) @ p["out"]["kernel"] + p["out"]["bias"]


def _mlp(p, z, cfg):
    hid = z @ p["hidden"]["kernel"] + p["hidden"]["bias"]
    return cfg.act(hid) @ p["out"]["kernel"] + p["out"]["bias"]


def _block(params, b):
    return jax.tree_util.tree_map(lambda a: a[b], params["blocks"])


@_numpy_broadcasting
def _sublayer(cfg, params, k, h, omega=None):
    """Chain step k (2b attention, 2b+1 MLP; b = k without MLPs) on h (T, d) or (B, T, d)."""
    b, which = (k // 2, ("attn", "mlp")[k % 2]) if cfg.mlp else (k, "attn")
    p = _block(params, b)
    if omega is None and cfg.admin:
        omega = params["admin"][which][b]

    def one(x):  # one sequence (T, d)
        f = (
            (lambda z: _attention(p["attn"], z, cfg, p.get("value_skip")))
            if which == "attn"
            else (lambda z: _mlp(p["mlp"], z, cfg))
        )
        if cfg.norm == "pre":
            y = cfg.s * f(_ln(x, p[f"{which}_norm"]))
            return (x + y if cfg.skip else y), y
        y = cfg.s * f(x)
        skip = (x * omega if omega is not None else x) if cfg.skip else 0.0
        out = skip + y
        return (_ln(out, p[f"{which}_norm"]) if cfg.norm == "post" else out), y

    if h.ndim == 2:
        return one(h)
    outs = [one(h[i]) for i in range(h.shape[0])]
    return jnp.stack([o[0] for o in outs]), jnp.stack([o[1] for o in outs])


@_numpy_broadcasting
def _embed(cfg, params, x):
    if cfg.vocab_size is not None:
        h = params["embed"]["embedding"][x]
    else:
        h = x @ params["embed"]["kernel"] + params["embed"]["bias"]
    t, d = h.shape[-2:]
    if cfg.positional == "sinusoidal":
        pe = np.zeros((t, d))
        for pos in range(t):
            for i in range(d):
                angle = pos / 10000 ** (2 * (i // 2) / d)
                pe[pos, i] = math.sin(angle) if i % 2 == 0 else math.cos(angle)
        h = h + pe
    elif cfg.positional == "learned":
        h = h + params["pos"][:t]
    return h


def _steps(cfg):
    return 2 * cfg.depth if cfg.mlp else cfg.depth


@_numpy_broadcasting
def _reference(cfg, params, x, *, profile=False):
    """States X_0 … X_K, the per-token output and (``profile``) Admin's ω per step."""
    h = _embed(cfg, params, x)
    states, omegas, w2 = [h], [], 1.0
    for k in range(_steps(cfg)):
        omega = None
        if profile:  # Liu et al. 2020's released profiling: ω_1 = 1, ω² = Var[ω x] + Var[f(x)]
            omega = math.sqrt(w2)
            omegas.append(omega)
        new, y = _sublayer(cfg, params, k, h, omega)
        if profile:
            w2 = float(jnp.var(omega * h) + jnp.var(y))
        h = new
        states.append(h)
    z = _ln(h, params["final_norm"]) if "final_norm" in params else h
    return states, z @ params["readout"]["kernel"] + params["readout"]["bias"], omegas


def _cfg(model: Transformer):
    return types.SimpleNamespace(
        heads=model.heads,
        norm=model.norm,
        s=model.residual_scale,
        mlp=model.mlp,
        skip=model.skip,
        admin=model.admin,
        causal=model.causal,
        vocab_size=model.vocab_size,
        positional=model.positional,
        depth=model.depth,
        act={"relu": lambda a: jnp.maximum(a, 0.0), "tanh": jnp.tanh}[model.activation],
    )


CONFIGS = {
    "pre-LN causal value-skip sinusoidal": dict(
        norm="pre", causal=True, value_skip=True, positional="sinusoidal", activation="tanh"
    ),
    "post-LN Admin batched": dict(norm="post", admin=True, residual_scale=0.7),
    "attention only, no skip, no norm": dict(norm=None, mlp=False, skip=False),
    "tokens, learned positions, no norm": dict(
        norm=None, vocab_size=7, positional="learned", max_len=6, residual_scale=0.5
    ),
}


def _inputs(name, model):
    rng = np.random.default_rng(3)
    if model.vocab_size is not None:
        return rng.integers(0, model.vocab_size, 4)
    return rng.standard_normal((2, 4, 3) if "batched" in name else (4, 3))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_and_chain_match_reference(x64, name):
    model = Transformer(depth=2, dim=4, heads=2, mlp_ratio=1.5, out_features=3, **CONFIGS[name])
    x = _inputs(name, model)
    params = ref.random_params(model, x)  # random LN scales, ω, α, β: every term shows
    p = params["params"]
    states, out, _ = _reference(_cfg(model), p, jnp.asarray(x))
    y, traj, feats = jax.jit(
        lambda pp, xx: (
            model.apply(pp, xx),
            trajectory(model.chain(pp, xx)),
            model.features(pp, xx),
        )
    )(params, x)
    np.testing.assert_allclose(y, out, **_TOL64)
    np.testing.assert_allclose(traj, np.stack(states), **_TOL64)  # chain forward == apply's
    np.testing.assert_allclose(feats, states[-1], **_TOL64)
    assert model.chain(params, x).length == _steps(_cfg(model)) == len(model.step_kinds)


@pytest.mark.parametrize(
    "name",
    # ~7 s each; the post-LN case runs in the slow step.
    [
        "pre-LN causal value-skip sinusoidal",
        pytest.param("post-LN Admin batched", marks=pytest.mark.slow),
    ],
)
def test_chain_jacobians_equal_whole_network_jacrev(x64, name):
    model = Transformer(depth=2, dim=4, heads=2, mlp_ratio=1, **CONFIGS[name])
    x = _inputs(name, model)
    params = ref.random_params(model, x, seed=5)
    cfg, p = _cfg(model), params["params"]
    chain = model.chain(params, x)
    states, _, _ = _reference(cfg, p, jnp.asarray(x))
    n = states[0].size

    def run_from(k, h_flat):  # the reference network from state k to the last state, flat
        h = h_flat.reshape(states[0].shape)
        for j in range(k, _steps(cfg)):
            h = _sublayer(cfg, p, j, h)[0]
        return h.ravel()

    products = jacobians.backward_products(chain).matrices
    steps = jacobians.step_jacobians(chain)
    shape = states[0].shape
    ref_steps = [
        jax.jacrev(lambda h, k=k: _sublayer(cfg, p, k, h.reshape(shape))[0].ravel())(
            states[k].ravel()
        )
        for k in range(_steps(cfg))
    ]
    np.testing.assert_allclose(steps, np.stack(ref_steps), rtol=1e-9, atol=1e-11)
    # ∂X_K/∂X_k: the first by jacrev through the whole reference network, the others as products
    # of the reference's step Jacobians (NumPy matmuls).
    whole = jax.jacrev(lambda h: run_from(0, h))(states[0].ravel())
    np.testing.assert_allclose(products[0], whole, rtol=1e-9, atol=1e-11)
    prod = np.eye(n)
    for k in reversed(range(_steps(cfg))):
        prod = prod @ np.asarray(ref_steps[k])
        np.testing.assert_allclose(products[k], prod, rtol=1e-9, atol=1e-11)
    assert products.shape == (_steps(cfg), n, n)


def _fixed_init(key, shape, dtype=jnp.float32):
    """A kernel initialiser without jax.random (whose kernels take seconds to compile): a fixed
    N(0, 1/fan_in) draw per shape, the same for every layer of a stack."""
    z = np.random.default_rng(sum(shape)).standard_normal(shape) / np.sqrt(shape[-2])
    return jnp.asarray(z, dtype)


def test_admin_omega_is_the_profiling_recursion(x64, key):
    model = Transformer(depth=3, dim=4, heads=2, norm="post", admin=True, kernel_init=_fixed_init)
    x = np.random.default_rng(0).standard_normal((2, 5, 3))
    params = jax.jit(model.init)(key, x)  # one program, not each initialiser compiled eagerly
    p = params["params"]
    _, _, omegas = _reference(_cfg(model), p, jnp.asarray(x), profile=True)
    got = np.stack([p["admin"]["attn"], p["admin"]["mlp"]], axis=1).reshape(6, 4)
    assert got[0, 0] == 1.0  # ω_1 = 1
    np.testing.assert_allclose(got, np.repeat(np.array(omegas)[:, None], 4, 1), rtol=1e-12)
    # From the second sub-layer on, x_{i−1} = LN(·) has unit variance, so ω_i² = Σ_{j<i} Var f_j
    # (Liu et al. 2020, §5, the embedding counted as f_0) increases with i.
    assert np.all(np.diff(got[1:, 0]) > 0)


@pytest.mark.slow  # ~7 s of compilation
def test_sublayer_gradient_norms_partition_the_block_gradient(x64):
    model = Transformer(depth=2, dim=4, heads=2, norm="post", admin=True, out_features=2)
    x = _inputs("", model)
    params = ref.random_params(model, x, seed=2)
    loss = lambda hp, h: jnp.sum(jnp.tanh(model.head(hp, h)) ** 2)
    norms = gradients.chain_grad_norms(model.full_chain(params, x), loss, head_params=params)
    assert norms.names[:5] == ("embed", "blocks/0", "blocks/1", "blocks/2", "blocks/3")
    g = jax.jit(jax.grad(lambda pp: loss(pp, model.features(pp, x))))(params)["params"]
    for b in range(2):
        gb = jax.tree_util.tree_map(
            lambda a, b=b: a[b], {"blocks": g["blocks"], "admin": g["admin"]}
        )
        att = [gb["blocks"]["attn"], gb["blocks"]["attn_norm"], gb["admin"]["attn"]]
        mlp = [gb["blocks"]["mlp"], gb["blocks"]["mlp_norm"], gb["admin"]["mlp"]]
        for leaves, step in ((att, 2 * b), (mlp, 2 * b + 1)):
            want = math.sqrt(sum(float(jnp.sum(a**2)) for a in jax.tree_util.tree_leaves(leaves)))
            np.testing.assert_allclose(10.0 ** norms.log10[1 + step], want, rtol=1e-9)


# --- theory: identical tokens, uniform attention --------------------------------------------------
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_identical_tokens_give_zero_query_key_gradients(x64, norm):
    model = Transformer(depth=2, dim=8, heads=2, norm=norm, out_features=3)
    row = np.random.default_rng(0).standard_normal(5)
    same = np.tile(row, (6, 1))
    distinct = np.random.default_rng(1).standard_normal((6, 5))
    params = ref.random_params(model, same, seed=4)
    target = np.random.default_rng(2).standard_normal((6, 3))
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum((model.apply(p, x) - target) ** 2)))

    def ratios(x):
        a = grad(params, x)["params"]["blocks"]["attn"]
        norm_of = lambda n: float(jnp.sqrt(sum(jnp.sum(v**2) for v in a[n].values())))
        return norm_of("query") / norm_of("value"), norm_of("key") / norm_of("value")

    # Identical tokens make every attention row uniform whatever W_Q, W_K, so the loss does not
    # depend on them: ∂L/∂W_Q = ∂L/∂W_K = 0 up to rounding. The softmax VJP p_j (g_ij − Σ_k p_k
    # g_ik) cancels terms of size |g| exactly in exact arithmetic; in float64 each of the T·d
    # products summed into ∂L/∂W_Q carries ~1e-16 relative error, so |∂L/∂W_Q| ≲ T·d·1e-16·|∂L/∂W_V|
    # ~ 1e-14 |∂L/∂W_V|: 1e-10 leaves four orders of margin. With distinct tokens (the control)
    # the ratios are O(0.1–1), so the check can fail.
    q, k = ratios(same)
    assert q < 1e-10 and k < 1e-10
    q, k = ratios(distinct)
    assert q > 1e-3 and k > 1e-3


def _uniform_growth_moments(alpha, sigma_v2, d):
    """E F and E F² for F = ‖(I + αW)ᵀu‖², ‖u‖ = 1, W with i.i.d. N(0, σ_v²/d) entries.

    z = Wᵀu ~ N(0, s² I), s² = σ_v²/d; F = (1 + α z_1)² + α² Σ_{i≥2} z_i².
    """
    s2 = sigma_v2 / d
    m2 = 1 + alpha**2 * s2  # E(1 + α z_1)²
    m4 = 1 + 6 * alpha**2 * s2 + 3 * alpha**4 * s2**2  # E(1 + α z_1)⁴
    rest, rest2 = (d - 1) * s2, (d - 1) * (d + 1) * s2**2  # E Σz², E(Σz²)²
    return m2 + alpha**2 * rest, m4 + 2 * alpha**2 * m2 * rest + alpha**4 * rest2


def test_uniform_attention_mean_growth(x64):
    d, t, depth, seeds, sigma_v2 = 8, 5, 12, 4000, 1.0
    alphas = (1.0, 1.0 / math.sqrt(depth))
    # X ← X + α A X W_V with A = 11ᵀ/T: W_Q = W_K = 0 makes the attention uniform, and α enters
    # as W_O = αI (residual_scale, the same factor, is checked against the reference above), so
    # both α share one compilation.
    model = Transformer(depth, d, 1, norm=None, mlp=False)

    def one(alpha, k):
        kx, kv = jax.random.split(k)
        zero = {"kernel": jnp.zeros((depth, d, d)), "bias": jnp.zeros((depth, d))}
        value = math.sqrt(sigma_v2 / d) * jax.random.normal(kv, (depth, d, d))
        attn = {
            "query": zero,
            "key": zero,
            "value": zero | {"kernel": value},
            "out": zero | {"kernel": alpha * jnp.broadcast_to(jnp.eye(d), (depth, d, d))},
        }
        p = {"embed": {"kernel": jnp.eye(d), "bias": jnp.zeros(d)}, "blocks": {"attn": attn}}
        p["readout"] = {"kernel": jnp.zeros((d, 1)), "bias": jnp.zeros(1)}
        hs = trajectory(model.chain(p, jax.random.normal(kx, (t, d))))
        mean = jnp.mean(hs, -2)
        centred = attention.rank_one_residual(hs)
        drift = jnp.max(jnp.abs(centred - centred[:1])) / jnp.max(jnp.abs(centred[0]))
        # Pythagoras (Σ_i c_i = 0): ‖X_l‖_F² = ‖C‖_F² + T‖x̄_l‖², C the fixed centred part.
        c2, m2 = jnp.sum(centred[0] ** 2), t * jnp.sum(mean**2, -1)
        predicted = jnp.sqrt(c2 / (c2 + m2))
        rel = attention.rank_collapse(hs, norm="fro").relative
        return jnp.sum(mean**2, -1) / jnp.sum(mean[0] ** 2), drift, rel, predicted

    keys = jax.random.split(jax.random.key(7), seeds)
    run = jax.jit(jax.vmap(jax.vmap(one, (None, 0)), (0, None)))
    growths, drifts, rels, predicted = run(jnp.asarray(alphas), keys)
    # The centred part X − 1x̄ᵀ is untouched by the update α 1 (x̄ᵀ W_V): exact up to rounding,
    # so the relative residual is a function of the mean's growth alone.
    assert float(jnp.max(drifts)) < 1e-12
    np.testing.assert_allclose(rels, predicted, rtol=1e-10)
    for alpha, growth, rel in zip(alphas, growths, rels):
        # E‖x̄_l‖²/‖x̄_0‖² = (1 + α²σ_v²)^l. The ratio is a product of l i.i.d. factors F
        # (rotation invariance of W), so its variance is (E F²)^l − (E F)^{2l} exactly; the
        # tolerance is 5 standard errors of the mean over the seeds (13 checks per α).
        theory = attention.uniform_attention_growth(alpha, sigma_v2, depth)
        m1, m2 = _uniform_growth_moments(alpha, sigma_v2, d)
        layers = np.arange(depth + 1)
        np.testing.assert_allclose(theory, m1**layers, rtol=1e-12)
        se = np.sqrt((m2**layers - m1 ** (2 * layers)) / seeds)
        measured = np.asarray(growth).mean(0)
        assert np.all(np.abs(measured - theory) <= 5 * se + 1e-12), alpha
        if alpha == 1.0:  # the mean grows without bound: tokens collapse onto it
            assert np.all(np.diff(np.median(np.asarray(rel), axis=0)) < 0)
        else:  # (1 + σ²/L)^L < e^{σ²}: the measured growth stays below it within MC error
            assert theory[-1] < math.exp(sigma_v2)
            assert measured[-1] - 5 * se[-1] < math.exp(sigma_v2)


def test_value_skip_init_keeps_tokens_apart(x64, key):
    model = Transformer(
        1, 4, 2, norm=None, mlp=False, skip=False, value_skip=True, kernel_init=_fixed_init
    )
    x = np.random.default_rng(0).standard_normal((3, 4))
    params = jax.jit(model.init)(key, x)  # one program, not each initialiser compiled eagerly
    vs = params["params"]["blocks"]["value_skip"]
    np.testing.assert_array_equal(vs["alpha"], 1.0)
    np.testing.assert_array_equal(vs["beta"], 0.0)
    j = np.asarray(jacobians.step_jacobians(model.chain(params, x))[0]).reshape(3, 4, 3, 4)
    for i in range(3):  # A = I at init: token i's output depends on token i only
        for k in range(3):
            if i != k:
                np.testing.assert_array_equal(j[i, :, k, :], 0.0)
    g = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, x) ** 2)))(params)["params"]["blocks"]
    assert float(jnp.max(jnp.abs(g["value_skip"]["beta"]))) > 0  # β is trainable from 0


# --- Xiong et al. 2020: gradient scale vs depth ---------------------------------------------------
def _truncated_normal(rng, shape):
    """N(0, 1) truncated to [−2, 2], rescaled to unit variance: jax.nn.initializers'
    "truncated_normal" (the glorot_normal kernels' distribution) drawn by rejection."""
    z = rng.standard_normal(shape)
    while np.any(bad := np.abs(z) > 2):
        z[bad] = rng.standard_normal(np.count_nonzero(bad))
    return z / 0.87962566103423978  # the standard deviation of N(0, 1) truncated to [−2, 2]


def _xiong_setup(seeds, dim=32, tokens=8, classes=16, depth=64):
    """``exp.superset``'s parameters and the inputs, drawn by NumPy from the same distributions.

    ``exp.superset`` compiles a vmapped ``model.init`` (~4 s, and ~1 s more for jax.random's
    inputs); only its shapes are used here (``jax.eval_shape``, nothing compiled). Distributions
    as the model's initialisers: Xavier-normal kernels (``gf.init.glorot_normal``: truncated
    normal, variance 2/(fan_in + fan_out)), a LeCun-normal embedding (N(0, 1/fan_in)), zero
    biases and offsets, unit LayerNorm scales; inputs N(0, 1), labels uniform over the classes.
    """
    cfg = exp.QUICK._replace(dim=dim, tokens=tokens, heads=4, classes=classes)
    shapes = jax.eval_shape(lambda: exp.superset(cfg, depth, seeds, jax.random.key(0)))
    rng = np.random.default_rng(11)

    def draw(path, leaf):
        names = [getattr(k, "key", "") for k in path]
        shape = leaf.shape  # (seeds, [depth,] …): the fans are the last two axes
        if names[-1] == "kernel" and "embed" in names:
            z = rng.standard_normal(shape) / np.sqrt(shape[-2])
        elif names[-1] == "kernel":
            z = _truncated_normal(rng, shape) * np.sqrt(2.0 / (shape[-2] + shape[-1]))
        else:
            z = np.full(shape, 1.0 if names[-1] == "scale" else 0.0)
        return jnp.asarray(z, leaf.dtype)

    sup = jax.tree_util.tree_map_with_path(draw, shapes)
    xs = jnp.asarray(rng.standard_normal((seeds, tokens, dim)), jnp.float32)
    ys = jnp.asarray(rng.integers(0, classes, (seeds, tokens)), jnp.int32)
    return cfg, sup, xs, ys


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_last_ffn_grad_norms_equal_truncated_network_gradients(x64, norm):
    big = Transformer(3, 8, 4, mlp_ratio=1, norm="pre", out_features=3)
    x = np.random.default_rng(0).standard_normal((4, 8))
    y = jnp.array([0, 2, 1, 1])
    sup = ref.random_params(big, x, seed=9)  # random LN scales and biases: every term shows
    model = Transformer(3, 8, 4, mlp_ratio=1, norm=norm, out_features=3)
    # An independently built 2-block model (a truncation of the 3-block one), plain jax.grad.
    short = Transformer(2, 8, 4, mlp_ratio=1, norm=norm, out_features=3)

    def loss(pp):
        logp = jax.nn.log_softmax(short.apply(pp, x))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], 1))

    def both(sup):
        p = exp.params_for(model, sup, x)
        g, sq = exp.last_ffn_grad_norms(model, p, x, y)
        w2 = jax.grad(loss)(exp.params_for(short, sup, x))["params"]["blocks"]["mlp"]
        return g, sq, jnp.linalg.norm(w2["out"]["kernel"][-1]), trajectory(model.chain(p, x))

    g, sq, direct, hs = jax.jit(both)(sup)  # one compilation
    np.testing.assert_allclose(g[1], direct, rtol=1e-10)
    np.testing.assert_allclose(sq, jnp.mean(jnp.sum(hs[::2] ** 2, -1), -1) / 8, rtol=1e-12)


def test_xiong_slopes_and_linear_prenorm_growth():
    # Xiong et al. 2020, Thm 1 & 2 at initialisation: ‖∂L/∂W^{2,L}‖_F = O(d√(ln d)) for post-LN
    # (slope 0 in log L) and O(d√(ln d / L)) for pre-LN (slope −½). Setting as theirs: Xavier
    # kernels, d_ff = d, ReLU, LayerNorm without learnt affine at init, a final LayerNorm for
    # pre-LN, softmax cross-entropy. The ±0.15 is the acceptance band; the measured 95 %
    # CIs (per-seed slopes, 16 seeds) are about ±0.06 wide.
    cfg, sup, xs, ys = _xiong_setup(seeds=16)
    depths = np.array([4, 8, 16, 32, 64])
    for norm, theory in (("pre", -0.5), ("post", 0.0)):
        model = Transformer(64, cfg.dim, cfg.heads, mlp_ratio=1, norm=norm, out_features=16)
        f = lambda s, x, y, m=model: exp.last_ffn_grad_norms(m, exp.params_for(m, s, x), x, y)
        g, sq = (np.asarray(a, np.float64) for a in jax.jit(jax.vmap(f))(sup, xs, ys))
        fit = exp.fit_slope(depths, g[:, depths - 1])
        assert abs(fit.slope - theory) < 0.15, (norm, fit)
        if norm == "pre":
            # E‖x_l‖² grows linearly (Xiong et al. 2020, Lemma 2 with d_ff = d): each block adds
            # exactly d/2 in expectation through the FFN and between 0 and d through attention,
            # so (m_0 + l/2)·d <= E‖x_l‖² <= (m_0 + 3l/2)·d. Checked at every l to within 5
            # standard errors over the seeds (the per-token mean of ‖x_l‖²/d − ‖x_0‖²/d).
            inc = sq - sq[:, :1]
            m, se = inc.mean(0), inc.std(0, ddof=1) / np.sqrt(inc.shape[0])
            blocks = np.arange(inc.shape[1])
            assert np.all(m >= blocks / 2 - 5 * se) and np.all(m <= 1.5 * blocks + 5 * se)


@pytest.mark.slow
def test_xiong_slopes_with_separately_built_models():
    # The same claim with one model per depth and plain jax.grad (no truncation trick): the
    # depth-L network is the first L blocks of a depth-64 draw, a draw of its own initialisation.
    cfg, sup, xs, ys = _xiong_setup(seeds=16)
    depths = np.array([4, 8, 16, 32, 64])
    for norm, theory in (("pre", -0.5), ("post", 0.0)):
        norms = []
        for depth in depths:
            m = Transformer(int(depth), cfg.dim, cfg.heads, mlp_ratio=1, norm=norm, out_features=16)

            def one(s, x, y, m=m):
                p = exp.params_for(m, s, x)
                loss = lambda pp: (
                    -jnp.mean(
                        jnp.take_along_axis(jax.nn.log_softmax(m.apply(pp, x)), y[:, None], 1)
                    )
                )
                w2 = jax.grad(loss)(p)["params"]["blocks"]["mlp"]["out"]["kernel"][-1]
                return jnp.linalg.norm(w2)

            norms.append(np.asarray(jax.jit(jax.vmap(one))(sup, xs, ys)))
        fit = exp.fit_slope(depths, np.stack(norms, 1))
        assert abs(fit.slope - theory) < 0.15, (norm, fit)


# --- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(depth=0), ValueError, "depth"),
        (dict(dim=6, heads=4), ValueError, "heads must divide dim"),
        (dict(norm="middle"), ValueError, "norm"),
        (dict(norm="pre", admin=True), ValueError, "admin"),
        (dict(positional="rotary"), ValueError, "positional"),
        (dict(positional="learned"), TypeError, "max_len"),
        (dict(mlp_ratio=0.0), ValueError, "mlp_ratio"),
        (dict(residual_scale=float("nan")), ValueError, "residual_scale"),
        (dict(vocab_size=0), ValueError, "vocab_size"),
        (dict(activation="nope"), ValueError, "activation|nope"),
        (dict(causal=1), TypeError, "causal"),
    ],
)
def test_bad_config(kwargs, exc, match):
    base = dict(depth=2, dim=4, heads=2)
    with pytest.raises(exc, match=match):
        Transformer(**(base | kwargs))


def test_bad_inputs(key):
    model = Transformer(depth=1, dim=4, heads=2)
    x = jnp.ones((3, 5))
    params = jax.eval_shape(model.init, key, x)
    params = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    with pytest.raises(ValueError, match="x must have 5 features"):
        model.chain(params, jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="x must have 2 or 3 dimensions"):
        model.chain(params, jnp.ones(5))
    tokens = Transformer(depth=1, dim=4, heads=2, vocab_size=5, positional="learned", max_len=3)
    with pytest.raises(TypeError, match="x must hold integer token ids"):
        tokens.init(key, jnp.ones((3,)))
    with pytest.raises(ValueError, match=r"x token ids must lie in \[0, 5\)"):
        tokens.init(key, jnp.array([0, 5]))
    with pytest.raises(ValueError, match="max_len=3"):
        tokens.init(key, jnp.array([0, 1, 2, 3]))


@pytest.mark.slow
def test_experiment_quick_run(tmp_path):
    summary = exp.run(tmp_path, full=False)
    out = tmp_path / exp.NAME
    for name in ("token_collapse", "uniform_attention", "gradient_scale", "sublayer_jacobians"):
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.npz").exists()
    assert (out / "summary.json").exists()
    g = summary["gradient_scale"]
    assert abs(g["pre-LN"]["slope"] + 0.5) < 0.15 and abs(g["post-LN"]["slope"]) < 0.15
    u = summary["uniform_attention"]
    assert all(v["max_centred_drift"] < 1e-5 for v in u.values())  # float32 rounding of X_l
    rc = summary["rank_collapse"]
    assert rc["attention only"]["first_block_below_1e-3"] is not None  # pure attention collapses
    assert all(np.isfinite(v["relative_residual_final"]) for v in rc.values())
