"""Transformers at depth: rank collapse, uniform attention, pre-/post-LN gradient scale, Jacobians.

(a) ``token_collapse.png``: mean pairwise token cosine and the relative residual
    ‖res(X_l)‖₁,∞/‖X_l‖₁,∞ (Dong, Cordonnier & Loukas 2021) after every block l, for attention
    only, + skip, + MLP, + pre-/post-LN (and Admin), residual scale 1 vs 1/√L;
(b) ``uniform_attention.png``: E‖x̄_l‖²/‖x̄_0‖² with W_Q = W_K = 0 (uniform attention) against
    (1 + α²σ_v²)^l for α = 1 and 1/√L, and the relative residual that goes with it;
(c) ``gradient_scale.png``: ‖∂L/∂W^{2,L}‖_F of the last block's second FFN weight vs depth L,
    log-log, pre-LN and post-LN, with fitted slopes (95 % CIs over seeds) against Xiong et al.
    (2020)'s −½ and 0, and the pre-LN E‖x_l‖²/d against their band [m_0 + l/2, m_0 + 3l/2];
(d) ``sublayer_jacobians.png``: singular values of every sub-layer Jacobian ∂X_{k+1}/∂X_k
    (attention and MLP steps apart) and the RMS singular value ‖∂X_K/∂X_k‖_F/√n vs k.

Every network is at initialisation (Xavier-normal kernels, zero biases; Xiong et al.'s setting).
A depth-L network is the first L blocks of one deeper draw: blocks are i.i.d., so this is a draw
of the depth-L initialisation, and one compilation serves every depth. Results at different
depths of one seed share weights; the confidence intervals are over seeds, which are independent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from gradflow import attention, jacobians, plots, tasks
from gradflow.chain import trajectory
from gradflow.experiments import _io
from gradflow.models.transformer import Transformer, admin_omega

NAME = "transformers"
DESCRIPTION = (
    "Transformers at depth: rank collapse and token cosine, uniform attention, pre-/post-LN "
    "gradient-scale slopes (Xiong 2020), sub-layer Jacobian spectra"
)


class Settings(NamedTuple):
    dim: int  # model width of every network (one shared draw of parameters)
    tokens: int
    heads: int
    classes: int  # readout width for the cross-entropy of figure (c)
    depth: int  # rank-collapse figure (a)
    seeds: int
    uniform_seeds: int  # figure (b)
    sigma_v2: float
    xiong_depth: int  # figure (c): depths 4, 8, … up to this
    xiong_seeds: int
    jac_tokens: int  # figure (d): state size tokens × dim
    jac_depth: int
    jac_seeds: int


QUICK = Settings(32, 16, 4, 16, 32, 4, 512, 1.0, 64, 32, 8, 16, 2)
FULL = Settings(64, 32, 8, 64, 96, 16, 4096, 1.0, 256, 32, 8, 32, 2)

COLLAPSE_FLOOR = 1e-15  # figure (a): relative residuals below this are float64 rounding
XIONG_SLOPES = {"pre-LN": -0.5, "post-LN": 0.0}  # figure (c): Xiong et al. 2020's slopes


def uniform_alphas(depth: int) -> dict[str, float]:
    """Figure (b)'s residual scales α, by label: 1 and 1/√L."""
    return {"α = 1": 1.0, "α = 1/√L": 1.0 / math.sqrt(depth)}


def collapse_configs(depth: int) -> dict[str, dict]:
    """The rank-collapse networks: label -> Transformer keyword arguments."""
    s = 1.0 / math.sqrt(depth)
    return {
        "attention only": dict(mlp=False, skip=False, norm=None),
        "attention + skip": dict(mlp=False, norm=None),
        "attention + skip, s=1/√L": dict(mlp=False, norm=None, residual_scale=s),
        "+ MLP": dict(norm=None),
        "+ MLP, s=1/√L": dict(norm=None, residual_scale=s),
        "pre-LN": dict(norm="pre"),
        "pre-LN, s=1/√L": dict(norm="pre", residual_scale=s),
        "post-LN": dict(norm="post"),
        "post-LN, s=1/√L": dict(norm="post", residual_scale=s),
        "post-LN + Admin": dict(norm="post", admin=True),
    }


def superset(cfg: Settings, depth: int, seeds: int, key) -> dict:
    """Parameters of a pre-LN Transformer with MLPs, which has every parameter the other networks
    use, drawn at initialisation once per seed (``cfg.dim``, ``cfg.heads``, d_ff = dim, readout
    width ``cfg.classes``).

    Returns:
      The ``init`` dict with every leaf stacked on a leading seed axis.
    """
    model = Transformer(
        depth, cfg.dim, cfg.heads, mlp_ratio=1, norm="pre", out_features=cfg.classes
    )
    x = jnp.zeros((cfg.tokens, cfg.dim))
    return jax.jit(jax.vmap(lambda k: model.init(k, x)))(jax.random.split(key, seeds))


def _first(tree, n: int):
    return jax.tree_util.tree_map(lambda a: a[:n], tree)


def params_for(model: Transformer, sup: dict, x) -> dict:
    """``model``'s parameters taken from one superset draw: its first blocks, the keys it uses.

    Admin's ω comes from the profiling pass (:func:`admin_omega`) on input ``x``.
    """
    p = sup["params"]
    keep = {"attn"} | ({"mlp"} if model.mlp else set())
    if model.norm is not None:
        keep |= {"attn_norm"} | ({"mlp_norm"} if model.mlp else set())
    blocks = {k: v for k, v in p["blocks"].items() if k in keep}
    blocks = jax.tree_util.tree_map(lambda a: a[: model.depth], blocks)
    out = {"embed": p["embed"], "blocks": blocks, "readout": p["readout"]}
    if model.has_final_norm:
        out["final_norm"] = p["final_norm"]
    if model.admin:
        out["admin"] = admin_omega(model.step, blocks, model.embed(out, x), model.depth)
    return {"params": out}


def collapse_curves(model: Transformer, sup: dict, xs) -> attention.TokenStats:
    """Token statistics after every block (states at block boundaries), one row per seed.

    Returns:
      :class:`~gradflow.attention.TokenStats` with arrays ``(seeds, depth + 1)``.
    """

    def one(s, x):
        stats = attention.chain_token_stats(model.chain(params_for(model, s, x), x))
        every = 2 if model.mlp else 1  # an MLP block is two chain steps
        return jax.tree_util.tree_map(lambda a: a[::every], stats)

    return jax.jit(jax.vmap(one))(sup, xs)


def uniform_attention(alphas, sigma_v2: float, cfg: Settings, depth: int, key):
    """Attention-only residual net with W_Q = W_K = 0, W_O = αI: X ← X + α (11ᵀ/T) X W_V.

    W_V has i.i.d. N(0, σ_v²/d) entries, fresh per layer; X_0 ~ N(0, 1) entries. α enters through
    W_O (the same factor as ``residual_scale``), so every α shares one compilation.

    Args:
      alphas: array ``(A,)`` of α.

    Returns:
      ``(mean_growth (A, seeds, depth + 1), centred_drift (A, seeds), relative_residual (A,
      seeds, depth + 1))``: ‖x̄_l‖²/‖x̄_0‖², max_l ‖C X_l − C X_0‖_F/‖X_l‖_F with C the
      centring (0 in exact arithmetic; float32 rounding), and the composite-norm relative
      residual.
    """
    d, t = cfg.dim, cfg.tokens
    model = Transformer(depth, d, 1, norm=None, mlp=False)

    def one(alpha, k):
        kx, kv = jax.random.split(k)
        zero = {"kernel": jnp.zeros((depth, d, d)), "bias": jnp.zeros((depth, d))}
        value = jnp.sqrt(sigma_v2 / d) * jax.random.normal(kv, (depth, d, d))
        eye = alpha * jnp.broadcast_to(jnp.eye(d), (depth, d, d))
        attn = {
            "query": zero,
            "key": zero,
            "value": zero | {"kernel": value},
            "out": zero | {"kernel": eye},
        }
        p = {
            "embed": {"kernel": jnp.eye(d), "bias": jnp.zeros(d)},
            "blocks": {"attn": attn},
            "readout": {"kernel": jnp.zeros((d, 1)), "bias": jnp.zeros(1)},
        }
        hs = trajectory(model.chain(p, jax.random.normal(kx, (t, d))))
        mean = jnp.mean(hs, axis=-2)
        growth = jnp.sum(mean**2, -1) / jnp.sum(mean[0] ** 2)
        centred = attention.rank_one_residual(hs)
        # ‖C_l − C_0‖_F/‖X_l‖_F: the centred part is unchanged up to rounding of X_l's entries.
        drift = jnp.linalg.norm(centred - centred[:1], axis=(-2, -1))
        drift = jnp.max(drift / jnp.linalg.norm(hs, axis=(-2, -1)))
        rel = attention.rank_collapse(hs).relative
        return growth, drift, rel

    keys = jax.random.split(key, cfg.uniform_seeds)
    alphas = jnp.asarray(alphas)
    # Seeds in vmapped chunks of 256 (lax.map): every state of every seed is kept, which at
    # paper size would not fit in memory at once.
    per_seed = lambda k: jax.vmap(one, (0, None))(alphas, k)
    out = jax.jit(lambda ks: jax.lax.map(per_seed, ks, batch_size=256))(keys)
    return jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), out)


def last_ffn_grad_norms(model: Transformer, params, x, labels):
    """‖∂L_l/∂W^{2,l}‖_F for every l = 1 … depth, and E‖x_l‖²/dim for l = 0 … depth.

    L_l is the loss of the network truncated after block l (its first l blocks, then the head:
    final LayerNorm for pre-LN and the readout), the mean softmax cross-entropy of the per-token
    logits against ``labels``; W^{2,l} is block l's second FFN kernel. As L_l depends on W^{2,l}
    only through block l's MLP sub-layer, its gradient is that sub-layer's VJP at its input state
    X_{2l−1} of the full chain, for all l at once (vmapped): one compilation for every depth.

    Args:
      model: a Transformer with MLPs.
      params: its parameters.
      x: input ``(T, d_in)``; labels: integer classes ``(T,)`` < ``out_features``.

    Returns:
      ``(grad_norms (depth,), sq_norms (depth + 1,))``; sq_norms[l] is the mean over tokens of
      ‖x_l‖²/dim at the block boundaries (the residual stream, before any final norm).
    """
    hs = trajectory(model.chain(params, x))
    theta = model.block_params(params)
    step = model.step

    def one(theta_b, h_in):
        def loss(w2):
            t = theta_b | {"mlp": theta_b["mlp"] | {"out": theta_b["mlp"]["out"] | {"kernel": w2}}}
            return tasks.cross_entropy(model.head(params, step.sublayer("mlp", t, h_in)), labels)

        return jnp.linalg.norm(jax.grad(loss)(theta_b["mlp"]["out"]["kernel"]))

    grads = jax.vmap(one)(theta, hs[1::2])
    sq = jnp.mean(jnp.sum(hs[::2] ** 2, axis=-1), axis=-1) / hs.shape[-1]
    return grads, sq


class SlopeFit(NamedTuple):
    """A log-log slope: the mean of the per-seed slopes, its 95 % CI, and the per-seed slopes."""

    slope: float
    ci_low: float
    ci_high: float
    per_seed: np.ndarray


def fit_slope(depths, norms) -> SlopeFit:
    """Least-squares slope of log norm vs log depth, per seed; mean and its 95 % normal CI.

    Args:
      depths: ``(D,)``; norms: ``(seeds, D)``.
    """
    lx = np.log(np.asarray(depths, np.float64))
    ly = np.log(np.asarray(norms, np.float64))
    per = np.polyfit(lx, ly.T, 1)[0]
    half = 1.96 * per.std(ddof=1) / math.sqrt(per.size)
    return SlopeFit(float(per.mean()), float(per.mean() - half), float(per.mean() + half), per)


def _collapse_section(out: Path, cfg: Settings, sup, key) -> dict:
    # float64: without LayerNorm and with s = 1 the residual stream grows like 2^(l/2) (see the
    # uniform-attention theory), and at depth 96 its attention logits overflow float32.
    floor = COLLAPSE_FLOOR
    with jax.enable_x64(True):
        sup = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), _first(sup, cfg.seeds))
        xs = jax.random.normal(key, (cfg.seeds, cfg.tokens, cfg.dim), jnp.float64)
        cos, rel, summary = {}, {}, {}
        for label, kw in collapse_configs(cfg.depth).items():
            model = Transformer(cfg.depth, cfg.dim, cfg.heads, mlp_ratio=1, **kw)
            st = collapse_curves(model, sup, xs)
            cos[label], rel[label] = np.asarray(st.token_cosine), np.asarray(st.relative_residual)
    for label in cos:
        r = np.median(rel[label], axis=0)
        below = np.flatnonzero(r < 1e-3)
        q = max(1, cfg.depth // 4)
        summary[label] = {
            "relative_residual_final": float(r[-1]),
            "token_cosine_final": float(np.median(cos[label][:, -1])),
            # Collapse rate: mean log10 decrease of the relative residual per block over the first
            # quarter of the network, the residual clipped at the float64 floor, so for a
            # residual that reaches it this is a lower bound.
            "log10_residual_drop_per_block_first_quarter": float(
                (np.log10(max(r[0], floor)) - np.log10(max(r[q], floor))) / q
            ),
            "first_block_below_1e-3": int(below[0]) if below.size else None,
        }
    arrays = {f"token_cosine/{k}": v for k, v in cos.items()}
    arrays |= {f"relative_residual/{k}": v for k, v in rel.items()}
    _io.save_npz(arrays, out / "token_collapse.npz")
    _io.save_figure(figure_token_collapse(arrays, cfg), out / "token_collapse.png")
    return summary


def _uniform_section(out: Path, cfg: Settings, key) -> dict:
    depth, s2 = cfg.depth, cfg.sigma_v2
    alphas = uniform_alphas(depth)
    measured = uniform_attention(list(alphas.values()), s2, cfg, depth, key)
    growth, theory, rel, summary = {}, {}, {}, {}
    for i, (label, a) in enumerate(alphas.items()):
        g, drift, r = (np.asarray(v[i], np.float64) for v in measured)
        growth[label], rel[label] = g, r
        theory[label] = attention.uniform_attention_growth(a, s2, depth)
        se = g[:, -1].std(ddof=1) / math.sqrt(g.shape[0])
        summary[label] = {
            "alpha": a,
            "measured_final": float(g[:, -1].mean()),
            "measured_final_se": float(se),
            "theory_final": float(theory[label][-1]),
            "exp_sigma_v2": math.exp(s2),
            "max_centred_drift": float(drift.max()),
            "relative_residual_final_median": float(np.median(r[:, -1])),
        }
    arrays = {f"growth/{k}": v for k, v in growth.items()}
    arrays |= {f"relative_residual/{k}": v for k, v in rel.items()}
    _io.save_npz(arrays, out / "uniform_attention.npz")
    _io.save_figure(figure_uniform_attention(arrays, cfg), out / "uniform_attention.png")
    return summary


def _xiong_section(out: Path, cfg: Settings, sup, key) -> dict:
    k_x, k_y = jax.random.split(key)
    n = cfg.xiong_seeds
    sup = _first(sup, n)
    xs = jax.random.normal(k_x, (n, cfg.tokens, cfg.dim))
    ys = jax.random.randint(k_y, (n, cfg.tokens), 0, cfg.classes)
    depths = 2 ** np.arange(2, int(math.log2(cfg.xiong_depth)) + 1)
    norms, sq, fits, summary = {}, {}, {}, {}
    for norm in ("pre", "post"):
        model = Transformer(
            cfg.xiong_depth, cfg.dim, cfg.heads, mlp_ratio=1, norm=norm, out_features=cfg.classes
        )
        f = jax.vmap(lambda s, x, y, m=model: last_ffn_grad_norms(m, params_for(m, s, x), x, y))
        g, q = (np.asarray(a, np.float64) for a in jax.jit(f)(sup, xs, ys))
        label = f"{norm}-LN"
        norms[label], sq[label] = g[:, depths - 1], q
        fits[label] = fit_slope(depths, norms[label])
        summary[label] = {
            "slope": fits[label].slope,
            "slope_ci95": [fits[label].ci_low, fits[label].ci_high],
            "theory_slope": XIONG_SLOPES[label],
            "median_grad_norm": dict(zip(map(str, depths), np.median(norms[label], 0))),
        }
        if norm == "pre":
            m = q.mean(0)
            inc = np.polyfit(np.arange(m.size), m, 1)[0]
            summary[label]["sq_norm_increment_per_block"] = float(inc)
            summary[label]["sq_norm_final_over_d"] = float(m[-1])
            # Xiong's mechanism: the final LayerNorm divides the gradient by ‖x_L‖, so the
            # finite-depth slope to expect is that of 1/√(E‖x_L‖²) over the same depths.
            mech = np.polyfit(np.log(depths), -0.5 * np.log(m[depths]), 1)[0]
            summary[label]["slope_of_inverse_stream_norm"] = float(mech)
    arrays = {"depths": depths}
    arrays |= {f"grad_norm/{k}": v for k, v in norms.items()}
    arrays |= {f"sq_norm/{k}": v for k, v in sq.items()}
    _io.save_npz(arrays, out / "gradient_scale.npz")
    _io.save_figure(figure_gradient_scale(arrays, cfg), out / "gradient_scale.png")
    return summary


def _singular_values(a: np.ndarray) -> np.ndarray:
    """Singular values of a stack of matrices (NumPy, float64), with single-threaded BLAS.

    On a 2-core machine shared with other work, multi-threaded OpenBLAS (which JAX's CPU LAPACK
    kernels use too) was measured to take 9.7 s instead of 0.24 s for the 64 SVDs of 256 × 256
    here: its threads wait on each other at every synchronisation point. threadpoolctl (a
    scikit-learn dependency) limits it to one thread where installed.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - depends on the environment
        return np.linalg.svd(a, compute_uv=False)
    with threadpool_limits(limits=1, user_api="blas"):
        return np.linalg.svd(a, compute_uv=False)


def _jacobian_section(out: Path, cfg: Settings, sup, key) -> dict:
    depth, d, t = cfg.jac_depth, cfg.dim, cfg.jac_tokens
    sup = _first(sup, cfg.jac_seeds)
    xs = jax.random.normal(key, (cfg.jac_seeds, t, d))
    svs, backward, summary = {}, {}, {}
    for label, kw in {"pre-LN": dict(norm="pre"), "post-LN": dict(norm="post")}.items():
        model = Transformer(depth, d, cfg.heads, mlp_ratio=1, **kw)

        def one(s, x, model=model):
            chain = model.chain(params_for(model, s, x), x)
            return jacobians.step_jacobians(chain), jacobians.backward_products(chain).log_norm

        jac, lb = (np.asarray(a, np.float64) for a in jax.jit(jax.vmap(one))(sup, xs))
        sv = _singular_values(jac)
        # ‖P‖_F/√n, the root-mean-square singular value of ∂X_K/∂X_k (n = T·dim).
        n = sv.shape[-1]
        svs[label], backward[label] = sv, lb / math.log(10.0) - 0.5 * math.log10(n)
        top = np.log10(sv[..., 0])
        summary[label] = {
            "log10_sigma_max_attention_median": float(np.median(top[:, 0::2])),
            "log10_sigma_max_mlp_median": float(np.median(top[:, 1::2])),
            "log10_rms_singular_value_dXK_dX0_median": float(np.median(backward[label][:, 0])),
        }
    arrays = {f"singular_values/{k}": v for k, v in svs.items()}
    arrays |= {f"log10_backward_norm/{k}": v for k, v in backward.items()}
    _io.save_npz(arrays, out / "sublayer_jacobians.npz")
    _io.save_figure(figure_sublayer_jacobians(arrays, cfg), out / "sublayer_jacobians.png")
    return summary


def run(out_dir, *, full: bool = False) -> dict:
    """Writes figures (a)–(d) and their numbers to ``out_dir/transformers``; returns a summary."""
    out = Path(out_dir) / NAME
    cfg = FULL if full else QUICK
    keys = jax.random.split(jax.random.key(0), 5)
    # One draw of parameters serves every network: its first blocks and seeds.
    depth = max(cfg.depth, cfg.xiong_depth, cfg.jac_depth)
    sup = superset(cfg, depth, max(cfg.seeds, cfg.xiong_seeds, cfg.jac_seeds), keys[4])
    summary = {
        "settings": cfg._asdict(),
        "rank_collapse": _collapse_section(out, cfg, sup, keys[0]),
        "uniform_attention": _uniform_section(out, cfg, keys[1]),
        "gradient_scale": _xiong_section(out, cfg, sup, keys[2]),
        "sublayer_jacobians": _jacobian_section(out, cfg, sup, keys[3]),
    }
    _io.save_json(summary, out / "summary.json")
    return summary


# ---------------------------------------------------------------------------------------------
# Figures, from the numbers run() saves (so figures() can redraw them from the files). Each takes
# the figure's .npz contents and the run's Settings (or summary.json's "settings" dict).


def _settings(cfg) -> Settings:
    return cfg if isinstance(cfg, Settings) else Settings(**cfg)


def figure_token_collapse(data: Mapping[str, np.ndarray], settings, *, axes=None) -> Figure:
    """Figure (a): token cosine and relative rank-one residual after every block.

    Args:
      data: the contents of ``token_collapse.npz``: ``"token_cosine/<label>"`` and
        ``"relative_residual/<label>"`` arrays ``(seeds, depth + 1)``, one per network of
        :func:`collapse_configs`.
      settings: :class:`Settings` (or its dict) of the run (for the title).
      axes: 2 axes (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    cfg = _settings(settings)
    title = (
        f"Rank collapse at initialisation: depth {cfg.depth}, T = {cfg.tokens}, "
        f"d = {cfg.dim}, {cfg.heads} heads ({cfg.seeds} seeds)"
    )
    cos = _io.with_prefix(data, "token_cosine")
    rel = _io.with_prefix(data, "relative_residual")
    return plots.token_collapse(cos, rel, floor=COLLAPSE_FLOOR, title=title, axes=axes)


def figure_uniform_attention(data: Mapping[str, np.ndarray], settings, *, axes=None) -> Figure:
    """Figure (b): growth of the token mean under uniform attention against (1 + α²σ_v²)^l.

    Args:
      data: the contents of ``uniform_attention.npz``: ``"growth/<label>"`` and
        ``"relative_residual/<label>"`` arrays ``(seeds, depth + 1)`` for the labels of
        :func:`uniform_alphas`.
      settings: :class:`Settings` (or its dict) of the run (depth and σ_v² give the theory,
        :func:`gradflow.attention.uniform_attention_growth`).
      axes: 2 axes (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    cfg = _settings(settings)
    s2 = cfg.sigma_v2
    growth = _io.with_prefix(data, "growth")
    alphas = uniform_alphas(cfg.depth)
    theory = {k: attention.uniform_attention_growth(alphas[k], s2, cfg.depth) for k in growth}
    title = (
        f"Uniform attention (W_Q = W_K = 0), X ← X + α A X W_V, σ_v² = {s2:g}, "
        f"d = {cfg.dim}, T = {cfg.tokens}, {cfg.uniform_seeds} seeds"
    )
    rel = _io.with_prefix(data, "relative_residual")
    return plots.uniform_attention_growth(
        growth, theory, rel, bound=math.exp(s2), title=title, axes=axes
    )


def figure_gradient_scale(data: Mapping[str, np.ndarray], settings, *, axes=None) -> Figure:
    """Figure (c): ‖∂L/∂W^{2,L}‖_F against depth, fitted slopes against Xiong et al.'s.

    Args:
      data: the contents of ``gradient_scale.npz``: ``depths`` ``(D,)``,
        ``"grad_norm/<label>"`` ``(seeds, D)`` for ``pre-LN`` and ``post-LN``, and
        ``"sq_norm/pre-LN"`` ``(seeds, L + 1)``, the residual stream's ‖x_l‖²/d.
      settings: :class:`Settings` (or its dict) of the run (for the title).
      axes: 2 axes (default: a new figure).

    Returns:
      The Figure drawn into (the slopes and their CIs refitted by :func:`fit_slope`).
    """
    cfg = _settings(settings)
    depths = data["depths"]
    norms = _io.with_prefix(data, "grad_norm")
    slopes = {k: fit_slope(depths, v)[:3] for k, v in norms.items()}
    n = next(iter(norms.values())).shape[0]
    title = (
        f"Last-layer FFN gradient at initialisation (Xiong et al. 2020): d = {cfg.dim}, "
        f"T = {cfg.tokens}, d_ff = d, ReLU, Xavier, {n} seeds"
    )
    sq = data["sq_norm/pre-LN"]
    return plots.gradient_scale_slopes(
        depths, norms, slopes, XIONG_SLOPES, sq, title=title, axes=axes
    )


def figure_sublayer_jacobians(data: Mapping[str, np.ndarray], settings, *, axes=None) -> Figure:
    """Figure (d): sub-layer Jacobian singular values and the RMS singular value of ∂X_K/∂X_k.

    Args:
      data: the contents of ``sublayer_jacobians.npz``: ``"singular_values/<label>"``
        ``(seeds, K, n)`` and ``"log10_backward_norm/<label>"`` ``(seeds, K)`` for ``pre-LN``
        and ``post-LN``.
      settings: :class:`Settings` (or its dict) of the run (the title, and the chain's step
        kinds, attention and MLP alternating).
      axes: 2 axes (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    cfg = _settings(settings)
    depth, d, t = cfg.jac_depth, cfg.dim, cfg.jac_tokens
    kinds = Transformer(depth, d, cfg.heads).step_kinds
    title = f"Sub-layer Jacobians at initialisation: depth {depth}, T = {t}, d = {d}"
    ylabel = r"$\log_{10}\,\|\partial X_K/\partial X_k\|_F/\sqrt{n}$ (RMS singular value)"
    svs = _io.with_prefix(data, "singular_values")
    backward = _io.with_prefix(data, "log10_backward_norm")
    return plots.sublayer_jacobian_spectra(
        svs, kinds, backward, backward_ylabel=ylabel, title=title, axes=axes
    )


def figures(out_dir) -> dict[str, Figure]:
    """Redraws every figure of :func:`run` from the numbers it saved in ``out_dir/transformers``.

    Args:
      out_dir: the directory given to :func:`run`.

    Returns:
      ``{file stem: Figure}``, the stems of the PNG/PDF files :func:`run` wrote.
    """
    out = Path(out_dir) / NAME
    cfg = _settings(_io.load_json(out / "summary.json")["settings"])
    draw = {
        "token_collapse": figure_token_collapse,
        "uniform_attention": figure_uniform_attention,
        "gradient_scale": figure_gradient_scale,
        "sublayer_jacobians": figure_sublayer_jacobians,
    }
    return {k: f(_io.load_npz(out / f"{k}.npz"), cfg) for k, f in draw.items()}
