"""gradflow.train.pretraining: greedy layer-wise pre-training (stacked autoencoders, RBMs)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

from gradflow import models
from gradflow.train.pretraining import cd_gradient, make_pretrain, pretrain, train_level


def _params(model, d, seed=0, dtype=np.float32):
    """Parameters in the layout of ``model.init`` (its structure and shapes from eval_shape),
    values N(0, 1/fan_in) from NumPy: an eager flax init compiles dozens of small programs."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, d), dtype))
    rng = np.random.default_rng(seed)

    def draw(s):
        # kernels (…, fan_in, fan_out) scaled by 1/√fan_in; biases (…, n) of any leading shape
        # drawn the same way (a depth-1 MLP's empty hidden stack has fan-in 0: max(·, 1))
        scale = 1 / np.sqrt(max(s.shape[-2], 1)) if len(s.shape) >= 2 else 0.1
        return jnp.asarray(rng.normal(size=s.shape) * scale, dtype)

    return jax.tree.map(draw, shapes)


def _anisotropic(n=200, d=6, seed=0):
    """Centred data whose covariance has well-separated eigenvalues (9, 4, 1, 0.25, …)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    x = rng.normal(size=(n, d)) * np.array([3.0, 2.0, 1.0, 0.5, 0.3, 0.2])[:d] @ q.T
    return x - x.mean(0)


def test_linear_autoencoder_spans_the_top_principal_subspace(x64):
    """Baldi & Hornik 1989: a linear autoencoder with k hidden units has no local minima other
    than the projection onto the top-k principal subspace. After training, the principal angles
    between the span of the encoder's columns (and of the decoder's rows) and the top-2 right
    singular vectors of the data (numpy.linalg.svd) are < 1e-2 (acceptance); gradient descent
    converges there linearly (eigengap 4 → 1), so in float64 they are far below it."""
    x = _anisotropic()
    model = models.MLP(width=2, depth=1, activation="linear", out_features=1)
    params = _params(model, 6, dtype=np.float64)
    res = pretrain(
        model,
        params,
        x,
        key=jax.random.key(1),
        steps=1500,
        optimizer=optax.sgd(0.1, momentum=0.9),
    )
    assert res.params["params"]["input"]["kernel"].dtype == jnp.float64
    top = np.linalg.svd(x, full_matrices=False)[2][:2].T  # (d, 2)
    enc = np.asarray(res.params["params"]["input"]["kernel"])
    dec = np.asarray(res.decoders["input"]["kernel"]).T
    for w in (enc, dec):
        angles = scipy.linalg.subspace_angles(w, top)
        # the acceptance bound is 1e-2; measured ~1e-15 (converged to float64 rounding), so a
        # much tighter 1e-8 still leaves seven orders of magnitude of margin
        assert angles.max() < 1e-8, angles
    # and not to a wrong subspace: the 2nd and 3rd principal directions are far from it
    assert scipy.linalg.subspace_angles(enc, np.linalg.svd(x)[2][1:3].T).max() > 1.0
    # the reconstruction error is the discarded variance: mean over entries of the
    # squared residual of the best rank-2 approximation (Eckart–Young)
    s = np.linalg.svd(x, compute_uv=False)
    np.testing.assert_allclose(res.losses[0, -1], (s[2:] ** 2).sum() / x.size, rtol=1e-6)


def test_each_level_trains_on_the_frozen_outputs_of_the_levels_below(x64):
    """pretrain == a hand-chained run: level 0 by train_level on x with fold_in(key, 0), then
    h1 = tanh(x W0 + b0) by hand, level 1 on h1 with fold_in(key, 1), and so on. Width = input
    width, so training level 1 on x (or on outputs that still change) would give other numbers
    rather than an error. Same operations in float64: agreement to 1e-10 (the stacked run
    compiles the levels inside a scan, which may reassociate a few sums)."""
    rng = np.random.default_rng(2)
    x = np.tanh(rng.normal(size=(40, 4)))
    model = models.MLP(width=4, depth=3, activation="tanh", out_features=2)
    params = _params(model, 4, dtype=np.float64)
    key = jax.random.key(5)
    opts = dict(steps=30, batch=8, optimizer=optax.adam(1e-2))
    res = pretrain(model, params, x, key=key, **opts)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(x[:2]))
    assert jax.tree.structure(res.params) == jax.tree.structure(shapes)
    assert [a.shape for a in jax.tree.leaves(res.params)] == [
        a.shape for a in jax.tree.leaves(shapes)
    ]
    assert res.losses.shape == (3, 30) and res.decoders["hidden"]["kernel"].shape == (2, 4, 4)

    p = params["params"]
    layers = [p["input"]] + [
        jax.tree_util.tree_map(lambda a, i=i: a[i], p["hidden"]) for i in range(2)
    ]
    h = x
    for level, layer in enumerate(layers):
        lev = train_level(layer, h, key=jax.random.fold_in(key, level), activation="tanh", **opts)
        got = (
            res.params["params"]["input"]
            if level == 0
            else jax.tree_util.tree_map(lambda a, i=level - 1: a[i], res.params["params"]["hidden"])
        )
        for name in ("kernel", "bias"):
            np.testing.assert_allclose(got[name], lev.layer[name], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(res.losses[level], lev.losses, rtol=1e-10)
        w, b = (np.asarray(lev.layer[n]) for n in ("kernel", "bias"))
        h = np.tanh(h @ w + b)  # the frozen output, by hand
    # the level-1 layer is not what training on x itself gives
    on_x = train_level(layers[1], x, key=jax.random.fold_in(key, 1), activation="tanh", **opts)
    hidden0 = np.asarray(res.params["params"]["hidden"]["kernel"][0])
    assert np.abs(hidden0 - np.asarray(on_x.layer["kernel"])).max() > 1e-3


def test_rbm_result_has_the_mlp_layout_and_vmaps_over_seeds():
    """RBMs (Gaussian–Bernoulli, then Bernoulli–Bernoulli) by CD-2 on standardised data, two
    seeds in one vmapped program: params keep model.init's tree, shapes and dtypes (readout
    unchanged), so model.apply and the training loop take them as they take model.init's;
    losses are (seeds, depth, steps), finite, and the reconstruction error falls at every level
    (the autoencoder's layout is checked in the hand-chained test)."""
    method = "rbm"
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 5)), jnp.float32)
    model = models.MLP(width=6, depth=3, activation="sigmoid", out_features=3)
    params = _params(model, 5)
    init_shapes = jax.eval_shape(model.init, jax.random.key(0), x[:2])
    run = jax.jit(
        jax.vmap(make_pretrain(model, steps=40, batch=16, method=method, cd_k=2), (None, None, 0))
    )
    res = run(params, x, jax.random.split(jax.random.key(1), 2))  # two seeds in one program
    res = jax.device_get(res)
    one = jax.tree_util.tree_map(lambda a: a[0], res)
    assert jax.tree.structure(one.params) == jax.tree.structure(init_shapes)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(init_shapes)):
        assert a.shape == b.shape and a.dtype == b.dtype
    assert res.losses.shape == (2, 3, 40) and np.isfinite(res.losses).all()
    np.testing.assert_array_equal(
        one.params["params"]["readout"]["kernel"], params["params"]["readout"]["kernel"]
    )
    assert not np.array_equal(
        one.params["params"]["hidden"]["kernel"], params["params"]["hidden"]["kernel"]
    )
    early, late = res.losses[..., :10].mean(-1), res.losses[..., -10:].mean(-1)
    assert (late < early).all(), (early, late)


def _exact_rbm_gradient(rbm, data, visible):
    """−∂/∂θ of the mean log-likelihood of ``data`` by enumerating every hidden state (and every
    visible state for Bernoulli units); Gaussian visible units (unit variance) are integrated out
    in closed form: p(h) ∝ exp(bᵀh + aᵀWh + ½‖Wh‖²), E[v | h] = a + Wh."""
    w, b, a = (np.asarray(rbm[k], np.float64) for k in ("kernel", "bias", "visible_bias"))
    m, n = w.shape
    hs = np.array(list(itertools.product([0, 1], repeat=n)), np.float64)
    if visible == "bernoulli":
        vs = np.array(list(itertools.product([0, 1], repeat=m)), np.float64)
        energy = -(vs @ a)[:, None] - (hs @ b)[None, :] - vs @ w @ hs.T  # (2^m, 2^n)
        p = np.exp(-energy - np.max(-energy))
        p /= p.sum()
        model_vh = vs.T @ p @ hs
        model_v, model_h = p.sum(1) @ vs, p.sum(0) @ hs
    else:
        logq = hs @ b + hs @ w.T @ a + 0.5 * np.sum((hs @ w.T) ** 2, 1)
        q = np.exp(logq - logq.max())
        q /= q.sum()
        mean_v = a + hs @ w.T  # (2^n, m)
        model_vh = (mean_v * q[:, None]).T @ hs
        model_v, model_h = q @ mean_v, q @ hs
    ph = 1.0 / (1.0 + np.exp(-(data @ w + b)))
    return {
        "kernel": -(data.T @ ph / len(data) - model_vh),
        "bias": -(ph.mean(0) - model_h),
        "visible_bias": -(data.mean(0) - model_v),
    }


@pytest.mark.parametrize(
    "visible, scale, tol, bias_one",
    [
        # Bernoulli terms v·p(h|v) lie in [0, 1]: standard deviation <= 0.5, so the standard
        # error over 20,000 chains is <= 0.0035 per entry; 0.015 is ~4 of them.
        ("bernoulli", 2.0, 0.015, 0.05),
        # Gaussian visible values have variance 1 (plus their spread in the mean): standard
        # error ~0.009 for the worst entry; 0.04 is ~4.5 of them.
        ("gaussian", 0.4, 0.04, 0.06),
    ],
)
def test_cd_k_gradient_tends_to_the_exact_likelihood_gradient(visible, scale, tol, bias_one):
    """A 3-visible, 2-hidden RBM small enough to enumerate. CD-k's expectation is the exact
    gradient once the k-step Gibbs chain has mixed: with k = 30 and 20,000 chains (each of 4 data
    vectors repeated 5,000 times) every entry is within ``tol`` of the enumeration (Monte Carlo
    tolerances above; measured worst errors over 6 seeds: 0.005 and 0.018). CD-1 on the same
    chains is biased by more than ``bias_one`` (measured ~0.096 and ~0.09–0.11; the weights are
    large enough for the one-step chain not to mix), so the test tells the two apart
    (Carreira-Perpiñán & Hinton 2005, "On contrastive divergence learning")."""
    rbm = {
        "kernel": jnp.array([[2.0, -1.5], [-1.0, 2.5], [1.5, 1.0]]) * scale,
        "bias": jnp.array([-1.0, 0.5]),
        "visible_bias": jnp.array([0.5, -0.5, 0.0]),
    }
    if visible == "gaussian":
        data = np.array([[1.0, -0.5, 0.3], [-1.2, 0.8, 0.0], [0.4, 0.4, -1.0], [0.0, -1.5, 1.1]])
    else:
        data = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]], np.float64)
    exact = _exact_rbm_gradient(rbm, data, visible)
    v = jnp.asarray(np.tile(data, (5000, 1)), jnp.float32)

    @jax.jit
    def both(rbm, v):  # one compiled program for both chain lengths
        key = jax.random.key(0)
        return [cd_gradient(rbm, v, key, k=k, visible=visible)[0] for k in (30, 1)]

    cd_long, cd_one = both(rbm, v)
    worst_long = max(np.abs(np.asarray(cd_long[n]) - exact[n]).max() for n in exact)
    worst_one = max(np.abs(np.asarray(cd_one[n]) - exact[n]).max() for n in exact)
    assert worst_long < tol, worst_long
    assert worst_one > bias_one, worst_one


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(model="mlp"), TypeError, "model"),
        (dict(model=models.MLP(width=4, depth=2, residual=True)), ValueError, "plain MLP"),
        (dict(steps=0), ValueError, "steps"),
        (dict(batch=0), ValueError, "batch"),
        (dict(method="dbn"), ValueError, "method"),
        (dict(method="rbm"), ValueError, "sigmoid"),  # a tanh MLP
        (dict(visible="poisson"), ValueError, "visible"),
        (dict(cd_k=0), ValueError, "cd_k"),
        (dict(optimizer="adam"), TypeError, "optimizer"),
        (dict(tied=1), TypeError, "tied"),
        (dict(x=np.ones((5, 2))), ValueError, "x must have 3"),
        (dict(x=np.full((5, 3), np.nan)), ValueError, "x"),
        (dict(x=np.ones(3)), ValueError, "x must have 2"),
        (dict(params={"w": 1.0}), ValueError, "params"),
    ],
)
def test_bad_arguments(change, error, match):
    model = models.MLP(width=4, depth=2, activation="tanh")
    x = jnp.ones((5, 3))
    args = dict(model=model, params=_params(model, 3), x=x)
    kwargs = dict(key=jax.random.key(0), steps=2) | change
    args |= {k: kwargs.pop(k) for k in ("model", "params", "x") if k in kwargs}
    with pytest.raises(error, match=match):
        pretrain(args["model"], args["params"], args["x"], **kwargs)


def test_bad_level_and_cd_arguments():
    layer = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
    with pytest.raises(ValueError, match="h must have 3"):
        train_level(layer, jnp.ones((5, 2)), key=jax.random.key(0), steps=2)
    rbm = dict(layer, visible_bias=jnp.zeros(3))
    with pytest.raises(ValueError, match="k must"):
        cd_gradient(rbm, jnp.ones((5, 3)), jax.random.key(0), k=0)
    with pytest.raises(ValueError, match="visible"):
        cd_gradient(rbm, jnp.ones((5, 3)), jax.random.key(0), visible="binary")
