"""Rank collapse and token statistics: brute-force NumPy references, the residual's optimality
bound, closed forms, chain states, vmap/jit, argument errors."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linprog

from gradflow import attention
from gradflow.chain import Chain, Layer, Scan, Segmented, trajectory


def _composite_bruteforce(x):
    x = np.asarray(x, np.float64)
    col = max(sum(abs(x[i, j]) for i in range(x.shape[0])) for j in range(x.shape[1]))
    row = max(sum(abs(x[i, j]) for j in range(x.shape[1])) for i in range(x.shape[0]))
    return math.sqrt(col * row)


def test_composite_norm_matches_bruteforce_and_carries_leading_axes(x64):
    xs = np.random.default_rng(0).standard_normal((2, 3, 5, 4))
    got = attention.composite_norm(xs)
    assert got.shape == (2, 3)
    for i, j in itertools.product(range(2), range(3)):
        np.testing.assert_allclose(got[i, j], _composite_bruteforce(xs[i, j]), rtol=1e-13)
    # vmap over a stack gives the same numbers as the broadcasting form
    np.testing.assert_allclose(jax.vmap(attention.composite_norm)(xs[0]), got[0], rtol=1e-15)


def test_rank_one_residual_and_relative(x64):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3))
    res = attention.rank_one_residual(x)
    np.testing.assert_allclose(res, x - x.mean(0), rtol=1e-15)
    same = np.tile(x[0], (6, 1))
    rc = attention.rank_collapse(np.stack([same, np.zeros((6, 3)), x]))
    np.testing.assert_allclose(rc.residual[:2], 0.0, atol=1e-15)  # the mean rounds: ~1e-16
    np.testing.assert_allclose(rc.relative[0], 0.0, atol=1e-15)
    assert float(rc.relative[1]) == 0.0  # X = 0 gives 0, not NaN
    np.testing.assert_allclose(rc.relative[2], rc.residual[2] / rc.norm[2], rtol=1e-15)
    fro = attention.rank_collapse(x, norm="fro")
    np.testing.assert_allclose(fro.residual, np.linalg.norm(x - x.mean(0)), rtol=1e-14)
    assert 0.0 <= float(fro.relative) <= 1.0  # Frobenius: the mean is the orthogonal projection


def _min_inf_norm(x):
    """min_v ‖X − 1vᵀ‖∞ (largest row ℓ₁ sum) by a linear program: minimise t subject to
    Σ_j e_ij <= t and ±(X_ij − v_j) <= e_ij. Variables (v, e, t)."""
    t_, d = x.shape
    nv, ne = d, t_ * d
    c = np.zeros(nv + ne + 1)
    c[-1] = 1.0
    rows, rhs = [], []
    for i in range(t_):
        r = np.zeros(nv + ne + 1)
        r[nv + i * d : nv + (i + 1) * d] = 1.0
        r[-1] = -1.0
        rows.append(r)
        rhs.append(0.0)
        for j in range(d):
            for sign in (1.0, -1.0):  # sign·(X_ij − v_j) − e_ij <= 0
                r = np.zeros(nv + ne + 1)
                r[j] = -sign
                r[nv + i * d + j] = -1.0
                rows.append(r)
                rhs.append(-sign * x[i, j])
    bounds = [(None, None)] * nv + [(0, None)] * (ne + 1)
    out = linprog(c, A_ub=np.array(rows), b_ub=np.array(rhs), bounds=bounds, method="highs")
    assert out.success
    return out.fun


def test_mean_residual_is_within_the_documented_factor_of_the_composite_minimum(x64):
    # The module's claim: ‖X − 1x̄ᵀ‖₁,∞ <= 2(1 − 1/T) min_x ‖X − 1xᵀ‖₁,∞. Checked from both sides:
    # above, against many candidate x (random, the column medians, which minimise ‖·‖₁); below,
    # the true minimum is at least √(min ‖·‖₁ · min ‖·‖∞), both minima computed exactly (column
    # medians for ‖·‖₁; a linear program for ‖·‖∞), and the mean's residual cannot beat it.
    rng = np.random.default_rng(2)
    for t, d in [(4, 3), (7, 5)]:
        x = rng.standard_t(3, size=(t, d))  # heavy tails: the mean is far from the medians
        f = lambda v, x=x: _composite_bruteforce(x - v[None, :])
        at_mean = float(attention.composite_norm(attention.rank_one_residual(x)))
        np.testing.assert_allclose(at_mean, f(x.mean(0)), rtol=1e-13)
        factor = 2 * (1 - 1 / t)
        candidates = [np.median(x, 0)] + [x.mean(0) + rng.standard_normal(d) for _ in range(200)]
        assert all(at_mean <= factor * f(v) * (1 + 1e-12) for v in candidates)
        med = np.median(x, 0)
        min_one = np.max(np.sum(np.abs(x - med), axis=0))
        lower = math.sqrt(min_one * _min_inf_norm(x))
        assert lower <= at_mean * (1 + 1e-9)


def test_token_cosine_matches_pairwise_bruteforce(x64):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5, 4))
    x[1, 2] = 0.0  # a zero token has cosine 0 with every other
    want = []
    for m in x:
        cos = []
        for i, j in itertools.permutations(range(5), 2):
            ni, nj = np.linalg.norm(m[i]), np.linalg.norm(m[j])
            cos.append(0.0 if ni == 0 or nj == 0 else m[i] @ m[j] / (ni * nj))
        want.append(np.mean(cos))
    np.testing.assert_allclose(attention.token_cosine(x), want, rtol=1e-12, atol=1e-15)
    same = np.tile(rng.standard_normal(4), (5, 1))
    np.testing.assert_allclose(attention.token_cosine(same), 1.0, rtol=1e-14)
    np.testing.assert_allclose(attention.token_cosine(np.eye(4)), 0.0, atol=1e-15)


def test_uniform_attention_growth_closed_form():
    g = attention.uniform_attention_growth(0.5, 2.0, 3)
    np.testing.assert_allclose(g, [1.0, 1.5, 2.25, 3.375], rtol=1e-15)
    depth = 50
    assert attention.uniform_attention_growth(1 / math.sqrt(depth), 1.0, depth)[-1] < math.e


def _token_chain(depth, t=4, d=3):
    """X_{k+1} = X_k + 0.5 · mean-token broadcast (uniform attention, W = I/2): a closed form."""
    step = lambda _, h, __: h + 0.5 * jnp.broadcast_to(jnp.mean(h, 0, keepdims=True), h.shape)
    h0 = jnp.asarray(np.random.default_rng(4).standard_normal((t, d)))
    return Chain(params=None, xs=None, h0=h0, step=step, length=depth, shared=True), h0


def test_chain_token_stats_over_every_state(x64):
    chain, h0 = _token_chain(5)
    stats = attention.chain_token_stats(chain)
    assert stats.relative_residual.shape == (6,)
    # Closed form: the centred part is fixed and the mean grows by 1.5 per step.
    h = np.asarray(h0)
    c, m = h - h.mean(0), h.mean(0)
    want = np.stack([c + 1.5**k * m for k in range(6)])
    np.testing.assert_allclose(trajectory(chain), want, rtol=1e-13)
    np.testing.assert_allclose(stats.residual, attention.composite_norm(c) * np.ones(6), rtol=1e-12)
    np.testing.assert_allclose(stats.token_cosine, attention.token_cosine(want), rtol=1e-13)
    assert np.all(np.diff(stats.relative_residual) < 0)
    # A Segmented chain of the same maps (a Scan, then a Layer) gives the same states.
    seg = Segmented(
        h0=h0,
        segments=(
            Scan(None, None, chain.step, 3, shared=True),
            Layer(None, None, chain.step, "last"),
            Scan(None, None, chain.step, 1, shared=True),
        ),
    )
    np.testing.assert_allclose(trajectory(seg), want, rtol=1e-13)
    # jit: the statistics are traceable
    jitted = jax.jit(lambda h: attention.chain_token_stats(chain.replace(h0=h)).token_cosine)(h0)
    np.testing.assert_allclose(jitted, stats.token_cosine, rtol=1e-13)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="x must be a token matrix"):
        attention.composite_norm(np.ones(3))
    with pytest.raises(ValueError, match="norm must be one of"):
        attention.rank_collapse(np.ones((2, 2)), norm="nuclear")
    with pytest.raises(ValueError, match="at least 2 tokens"):
        attention.token_cosine(np.ones((1, 3)))
    with pytest.raises(ValueError, match="layers must be an integer"):
        attention.uniform_attention_growth(1.0, 1.0, -1)
    with pytest.raises(ValueError, match="sigma_v2"):
        attention.uniform_attention_growth(1.0, -1.0, 2)
    with pytest.raises(ValueError, match="alpha"):
        attention.uniform_attention_growth(float("inf"), 1.0, 2)
    with pytest.raises(TypeError, match="chain"):
        attention.chain_token_stats("not a chain")
    vector = Chain(None, None, jnp.ones(3), lambda _, h, __: h, 2, shared=True)
    with pytest.raises(ValueError, match="token matrix"):
        attention.chain_token_stats(vector)
