"""Pascanu, Mikolov & Bengio 2013 ("On the difficulty of training recurrent neural networks",
arXiv:1211.5063), the dynamical-systems half, with Doya 1993's one-neuron bifurcations.

(a) ``bifurcation.png``: fixed points of x = w σ(x) + b against b (stable solid, unstable dashed),
    the two saddle-nodes and a quasi-static hysteresis sweep; the cusp in the (b, w) plane; and
    ∂x_T/∂x_0, ∂x_T/∂b along trajectories, small far from the folds and huge at the separatrix.
(b) ``cliff.png``: the loss L(b) = (x_T(b) − target)² with its wall (Pascanu §3.3, Fig. 6), and
    gradient descent from the same starts at the same learning rate with and without
    ``optax.clip_by_global_norm``; also the (w, b) surface with 2-D trajectories.
(c) ``rnn_thresholds.png``: tanh and sigmoid RNNs, ‖∂x_T/∂x_0‖ and the top Lyapunov exponent
    against the spectral radius ρ and the largest singular value λ₁ of W_rec, 1/γ marked (§3.1:
    λ₁ < 1/γ is sufficient for vanishing, λ₁ > 1/γ necessary for exploding; ρ ≤ λ₁, so the
    theorem says nothing about ρ, and whether ρ < 1/γ also rules out explosion is measured here).
(d) ``order_to_chaos.png``: Lyapunov spectra of an autonomous tanh RNN x ← W tanh(x),
    W ~ N(0, g²/n), for gains g from 0.5 to 3: the top exponent crosses 0 near g = 1.
(e) ``lyapunov_newman.png``: finite-time QR exponents of Gaussian products converging to
    Newman's closed form (a check of the estimator used in (c) and (d)).

The measurements are in ``_cliff.py`` (b) and ``_recurrent.py`` (c)–(e), the drawing in
:mod:`gradflow.plots.dynamics`; this module holds the settings, ``run`` and the figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradflow import activations, dynamics, init, plots, spectra
from gradflow.chain import Chain  # noqa: F401 (importable from here, as before)
from gradflow.experiments import _io
from gradflow.experiments.pascanu2013._cliff import (
    B_RANGE,
    CLIFF,
    ClippingResult,
    Descent,
    _cliff_surface,
    _descents_2d,
    cliff_wall,
    clipping_experiment,
    clipping_stats,
    descend,
)
from gradflow.experiments.pascanu2013._recurrent import (
    chaos_spectra,
    newman_convergence,
    rnn_threshold_sweep,
)
from gradflow.models.recurrent import RNNStep  # noqa: F401 (importable from here, as before)

__all__ = [
    "NAME",
    "DESCRIPTION",
    "CLIFF",
    "B_RANGE",
    "BIFURCATION",
    "SIZES",
    "Descent",
    "descend",
    "cliff_wall",
    "ClippingResult",
    "clipping_experiment",
    "clipping_stats",
    "rnn_threshold_sweep",
    "chaos_spectra",
    "newman_convergence",
    "figure_bifurcation",
    "figure_cliff",
    "figure_rnn_thresholds",
    "figure_order_to_chaos",
    "figure_newman",
    "run",
    "figures",
]

NAME = "pascanu2013"
DESCRIPTION = "Doya bifurcations, Pascanu's cliff and clipping, RNN thresholds, Lyapunov spectra"

# Figure (a) setting: the slice x ← w σ(x) + b at w = 6 and the one-neuron gradients after T = 50
# steps from x₀ = 0.
BIFURCATION = {"w": 6.0, "x0": 0.0, "steps": 50}

# Problem sizes: CPU-sized by default (the whole run takes ~20 s of CPU), paper-sized with --full.
SIZES = {
    False: {
        "bif_points": 401,
        "settle": 200,
        "cliff_starts": 32,
        "surface": (81, 91),
        "rnn": (32, 200, 2, 10),  # width, steps, seeds, scales
        "chaos": (64, 1000, 200, 11),  # width, steps, discard, gains
        "newman_steps": 5000,
    },
    True: {
        "bif_points": 801,
        "settle": 400,
        "cliff_starts": 128,
        "surface": (161, 181),
        "rnn": (128, 500, 4, 16),
        "chaos": (256, 5000, 1000, 21),
        "newman_steps": 20_000,
    },
}


# --------------------------------------------------------------------------------------------
# figures, from the numbers run() saves (so figures() can redraw them from the files)
# --------------------------------------------------------------------------------------------
def figure_bifurcation(
    data: Mapping[str, np.ndarray],
    *,
    w: float = BIFURCATION["w"],
    steps: int = BIFURCATION["steps"],
    x0: float = BIFURCATION["x0"],
    axes=None,
) -> Figure:
    """(a) Bifurcation diagram with hysteresis, the cusp, and the one-neuron gradients.

    Args:
      data: the contents of ``bifurcation.npz``: the arrays of
        :func:`gradflow.plots.doya_bifurcation` under its argument names (``b``, ``fixed_x``,
        ``fixed_stable``, ``saddle_b``, ``saddle_x``, ``hyst_x_up``, ``hyst_x_down``,
        ``dx_db``, ``dx_dx0``, ``w_grid``, ``fold_b``).
      w: the self-weight of the slice.
      steps, x0: T and x₀ of the gradients (for the title; x₀ also places the separatrix).
      axes: 3 axes (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    return plots.doya_bifurcation(**data, w=w, steps=steps, x0=x0, axes=axes)


def figure_cliff(
    data: Mapping[str, np.ndarray],
    *,
    wall: float,
    learning_rate: float,
    clip_norm: float,
    axes=None,
) -> Figure:
    """(b) The cliff, and descent with and without gradient-norm clipping (1-D and 2-D).

    Args:
      data: the contents of ``cliff.npz``: the landscape ``b``, ``loss``, ``grad`` ``(G,)``;
        the 1-D descents ``b_unclipped``, ``b_clipped``, ``loss_unclipped``, ``loss_clipped``
        ``(R, S + 1)`` (:class:`ClippingResult`); the surface ``surface`` ``(Wn, Bn)`` over
        ``surface_w`` ``(Wn,)`` × ``surface_b`` ``(Bn,)``; the 2-D paths ``traj2d_unclipped``,
        ``traj2d_clipped`` ``(P, S + 1, 2)`` of (w, b).
      wall: b of the wall (:func:`cliff_wall`).
      learning_rate, clip_norm: of the descents (for the labels).
      axes: 3 axes (default: a new figure).

    Returns:
      The Figure drawn into (the statistics in panel (b) recomputed by :func:`clipping_stats`).
    """
    runs = ("b_unclipped", "b_clipped", "loss_unclipped", "loss_clipped")
    stats = clipping_stats(ClippingResult(*(data[k] for k in runs), wall))
    return plots.cliff_clipping(
        *(data[k] for k in ("b", "loss", "grad", "b_unclipped", "b_clipped", "surface")),
        *(data[k] for k in ("surface_w", "surface_b", "traj2d_unclipped", "traj2d_clipped")),
        wall=wall,
        stats=stats,
        learning_rate=learning_rate,
        clip_norm=clip_norm,
        cliff=CLIFF,
        b_range=B_RANGE,
        axes=axes,
    )


def figure_rnn_thresholds(
    data: Mapping[str, np.ndarray], *, width: int, steps: int, axes=None
) -> Figure:
    """(c) ‖∂x_T/∂x_0‖ and the top exponent against ρ and λ₁, with 1/γ marked.

    Args:
      data: the contents of ``rnn_thresholds.npz``: per activation (``"tanh"``,
        ``"sigmoid"``) ``"<act>/rho"``, ``"<act>/lambda1"``, ``"<act>/log_norm"``,
        ``"<act>/top_exponent"`` ``(scales, seeds)`` (:func:`rnn_threshold_sweep`).
      width, steps: of the RNNs (for the titles).
      axes: ``activations × 2`` axes, row-major (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    sweeps = _io.by_label(data)
    gammas = {act: activations.get(act).gamma for act in sweeps}
    return plots.rnn_stability_thresholds(sweeps, gammas, width=width, steps=steps, axes=axes)


def figure_order_to_chaos(data: Mapping[str, np.ndarray], *, steps: int, axes=None) -> Figure:
    """(d) Lyapunov spectra across the order-to-chaos transition.

    Args:
      data: the contents of ``order_to_chaos.npz``: ``gains`` ``(G,)``, ``spectra``
        ``(G, width)`` (each descending, :func:`chaos_spectra`) and the scalar ``log_rho0``,
        log ρ(W₀) of the unscaled weights.
      steps: length of the chains (for the title).
      axes: 2 axes (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    return plots.lyapunov_order_to_chaos(**data, steps=steps, axes=axes)


def figure_newman(data: Mapping[str, np.ndarray], *, ax: Axes | None = None) -> Figure:
    """(e) Finite-time QR exponents converging to Newman's closed form.

    Args:
      data: the contents of ``lyapunov_newman.npz``: ``running`` ``(K, n)``, the estimates
        after each step, and ``exact`` ``(n,)`` (:func:`newman_convergence`).
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    return plots.lyapunov_convergence(data["running"], data["exact"], ax=ax)


# --------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------
def _bifurcation_section(out: Path, size: dict) -> dict:
    w, x0, steps = BIFURCATION["w"], BIFURCATION["x0"], BIFURCATION["steps"]
    bs = np.linspace(-5.0, -1.0, size["bif_points"])
    with jax.enable_x64(True):
        fixed = dynamics.doya_fixed_points(w, bs)
        saddle = dynamics.doya_saddle_nodes(w)
        hyst = dynamics.doya_hysteresis(w, bs, settle=size["settle"])
        trajs = jax.vmap(lambda b: dynamics.doya_trajectory(w, b, x0, steps))(jnp.asarray(bs))
        w_grid = np.linspace(4.0001, 10.0, 200)
        folds = dynamics.doya_saddle_nodes(w_grid)
        grads = {
            "steps": steps,
            "x0": x0,
            "b_sep": x0 - w / (1 + np.exp(-x0)),
            "dx_db": np.asarray(trajs.dx_db[:, -1]),
            "dx_dx0": np.asarray(trajs.dx_dx0[:, -1]),
        }
        arrays = {
            "b": bs,
            "fixed_x": fixed.x,
            "fixed_stable": fixed.stable,
            "saddle_b": saddle.b,
            "saddle_x": saddle.x,
            "hyst_x_up": hyst.x_up,
            "hyst_x_down": hyst.x_down,
            "dx_db": grads["dx_db"],
            "dx_dx0": grads["dx_dx0"],
            "w_grid": w_grid,
            "fold_b": folds.b,
        }
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        fig = figure_bifurcation(arrays, w=w, steps=steps, x0=x0)
        _io.save_figure(fig, out / "bifurcation.png")
        _io.save_npz(arrays, out / "bifurcation.npz")
        far = np.abs(np.asarray(bs) - grads["b_sep"]) > 0.5
        return {
            "w": w,
            "saddle_node_b": np.asarray(saddle.b),
            "hysteresis_jump_up_b": float(hyst.b_jump_up),
            "hysteresis_jump_down_b": float(hyst.b_jump_down),
            "max_abs_dxT_db": float(np.max(np.abs(grads["dx_db"]))),
            "median_abs_dxT_dx0_far_from_separatrix": float(
                np.median(np.abs(grads["dx_dx0"][far]))
            ),
        }


def _cliff_section(out: Path, size: dict) -> dict:
    lr, clip_norm, steps = 0.01, 1.0, 200
    starts = np.linspace(-3.5, -3.0, size["cliff_starts"])
    land = dynamics.cliff_landscape(jnp.linspace(*B_RANGE, 30_001), **CLIFF)
    clip = clipping_experiment(starts, learning_rate=lr, steps=steps, clip_norm=clip_norm)
    stats = clipping_stats(clip)
    ws = np.linspace(3.0, 8.0, size["surface"][0])
    bs2d = np.linspace(-5.0, -0.5, size["surface"][1])
    surface = _cliff_surface(ws, bs2d)
    starts2d = np.array([[6.5, -4.5], [7.5, -4.6], [4.5, -3.5], [5.5, -4.5]], np.float32)
    traj2d = _descents_2d(starts2d, lr, steps, clip_norm)
    arrays = {
        "b": land.b,
        "loss": land.loss,
        "grad": land.grad,
        "b_unclipped": clip.b_unclipped,
        "b_clipped": clip.b_clipped,
        "loss_unclipped": clip.loss_unclipped,
        "loss_clipped": clip.loss_clipped,
        "surface": surface,
        "surface_w": ws,
        "surface_b": bs2d,
        "traj2d_unclipped": traj2d["unclipped"],
        "traj2d_clipped": traj2d["clipped"],
    }
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    fig = figure_cliff(arrays, wall=clip.wall, learning_rate=lr, clip_norm=clip_norm)
    _io.save_figure(fig, out / "cliff.png")
    _io.save_npz(arrays, out / "cliff.npz")
    return {
        "setting": {
            **CLIFF,
            "learning_rate": lr,
            "clip_norm": clip_norm,
            "descent_steps": steps,
            "starts": len(starts),
            "b_range": B_RANGE,
        },
        "wall_b": clip.wall,
        "max_abs_grad_on_grid": float(np.max(np.abs(np.asarray(land.grad)))),
        **stats,
    }


def _rnn_section(out: Path, size: dict) -> dict:
    width, steps, seeds, n_scales = size["rnn"]
    keys = jax.random.split(jax.random.key(2), seeds)
    scales = {
        "tanh": np.linspace(0.2, 2.5, n_scales),
        "sigmoid": np.linspace(0.8, 10.0, n_scales),
    }
    sweeps = {
        a: rnn_threshold_sweep(a, s, width=width, steps=steps, keys=keys) for a, s in scales.items()
    }
    arrays = {f"{a}/{k}": v for a, sw in sweeps.items() for k, v in sw.items()}
    fig = figure_rnn_thresholds(arrays, width=width, steps=steps)
    _io.save_figure(fig, out / "rnn_thresholds.png")
    _io.save_npz(arrays, out / "rnn_thresholds.npz")
    summary = {"width": width, "steps": steps, "seeds": seeds}
    for act, sw in sweeps.items():
        gamma = activations.get(act).gamma
        below = sw["lambda1"] < 1 / gamma
        summary[act] = {
            "inv_gamma": 1 / gamma,
            # Pascanu §3.1: λ₁ < 1/γ is sufficient for vanishing (every such run has λ_max < 0).
            "max_top_exponent_with_lambda1_below_inv_gamma": float(
                np.max(sw["top_exponent"][below])
            )
            if below.any()
            else None,
            # λ₁ > 1/γ is the proven necessary condition; ρ ≤ λ₁, so whether ρ < 1/γ also
            # excludes explosion is an empirical question, answered by this number.
            "max_top_exponent_with_rho_below_inv_gamma": float(
                np.max(sw["top_exponent"][sw["rho"] < 1 / gamma])
            ),
            "min_rho_with_positive_exponent": float(np.min(sw["rho"][sw["top_exponent"] > 0]))
            if (sw["top_exponent"] > 0).any()
            else None,
        }
    return summary


def _chaos_section(out: Path, size: dict) -> dict:
    width, steps, discard, n_gains = size["chaos"]
    gains = np.linspace(0.5, 3.0, n_gains)
    key = jax.random.key(3)
    lam = chaos_spectra(gains, width=width, steps=steps, discard=discard, key=key)
    w0 = init.gaussian(1.0)(jax.random.split(key)[0], (width, width), jnp.float32)
    log_rho0 = float(np.log(spectra.spectral_radius(w0)))
    arrays = {"gains": gains, "spectra": lam, "log_rho0": np.asarray(log_rho0)}
    _io.save_figure(figure_order_to_chaos(arrays, steps=steps), out / "order_to_chaos.png")
    _io.save_npz(arrays, out / "order_to_chaos.npz")
    top = lam[:, 0]
    # Linear interpolation of the first sign change of λ_max from − to +.
    idx = np.nonzero((top[:-1] < 0) & (top[1:] >= 0))[0]
    g_c = None
    if len(idx):
        i = idx[0]
        g_c = float(gains[i] - top[i] * (gains[i + 1] - gains[i]) / (top[i + 1] - top[i]))
    return {
        "width": width,
        "steps": steps,
        "gains": gains,
        "top_exponent": top,
        "critical_gain_estimate": g_c,
    }


def _newman_section(out: Path, size: dict) -> dict:
    n, steps = 8, size["newman_steps"]
    running, exact = newman_convergence(n, steps, jax.random.key(4))
    arrays = {"running": running, "exact": exact}
    _io.save_figure(figure_newman(arrays), out / "lyapunov_newman.png")
    _io.save_npz(arrays, out / "lyapunov_newman.npz")
    return {
        "n": n,
        "steps": steps,
        "estimate": running[-1],
        "newman": exact,
        "max_abs_error": float(np.max(np.abs(np.sort(running[-1])[::-1] - exact))),
    }


def run(out_dir, *, full: bool = False) -> dict:
    """Writes figures (a)–(e) and their numbers to ``out_dir/pascanu2013``; returns a summary."""
    out = Path(out_dir) / NAME
    size = SIZES[bool(full)]
    summary = {
        "bifurcation": _bifurcation_section(out, size),
        "cliff": _cliff_section(out, size),
        "rnn_thresholds": _rnn_section(out, size),
        "order_to_chaos": _chaos_section(out, size),
        "lyapunov_newman": _newman_section(out, size),
    }
    _io.save_json(summary, out / "summary.json")
    return _io.to_jsonable(summary)


def figures(out_dir) -> dict[str, Figure]:
    """Redraws every figure of :func:`run` from the numbers it saved in ``out_dir/pascanu2013``.

    Args:
      out_dir: the directory given to :func:`run`.

    Returns:
      ``{file stem: Figure}``, the stems of the PNG/PDF files :func:`run` wrote.
    """
    out = Path(out_dir) / NAME
    summary = _io.load_json(out / "summary.json")
    load = lambda name: _io.load_npz(out / f"{name}.npz")  # noqa: E731
    cliff, rnn = summary["cliff"], summary["rnn_thresholds"]
    return {
        "bifurcation": figure_bifurcation(load("bifurcation"), w=summary["bifurcation"]["w"]),
        "cliff": figure_cliff(
            load("cliff"),
            wall=cliff["wall_b"],
            learning_rate=cliff["setting"]["learning_rate"],
            clip_norm=cliff["setting"]["clip_norm"],
        ),
        "rnn_thresholds": figure_rnn_thresholds(
            load("rnn_thresholds"), width=rnn["width"], steps=rnn["steps"]
        ),
        "order_to_chaos": figure_order_to_chaos(
            load("order_to_chaos"), steps=summary["order_to_chaos"]["steps"]
        ),
        "lyapunov_newman": figure_newman(load("lyapunov_newman")),
    }
