"""Partial Jacobians of residual LayerNorm networks: power laws everywhere (Doshi et al. 2023).

Doshi, He & Gromov ("Critical initialization of wide and deep neural networks using partial
Jacobians: general theory and applications", NeurIPS 2023, arXiv:2111.12143) show that a residual
network with LayerNorm on the pre-activations, h^{l+1} = h^l + W φ(LN(h^l)) + b, is critical for
every initialisation: its averaged partial Jacobian norm grows as a power law J^{l0,l} ~ (l/l0)^ζ
with ζ = σ_w² E[φ'²] / (σ_w² E[φ²] + σ_b²), where a plain MLP's grows or decays exponentially,
as χ₁^l, everywhere except on the edge of chaos χ₁ = 1.

Figures: (a) J^{0,l} vs l on log-log axes for tanh and ReLU networks at a few (σ_w, σ_b),
measured by forward-mode random probes (:func:`gradflow.matfree.partial_jacobian_norms`) with
the mean-field product formula dashed (:func:`gradflow.meanfield.residual_ln_layers`); (b) the
phase diagram: ζ over (σ_w, σ_b) for the residual LN net and log χ₁ for the plain MLP, theory as
maps and measured exponents as points, and measured against theory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradflow import matfree, meanfield, plots
from gradflow.experiments import _io
from gradflow.models.wide import block_chain, product_formula

NAME = "partial_jacobians"
DESCRIPTION = (
    "partial Jacobian norms J^{l0,l} of pre-LN residual nets: power laws (l/l0)^ζ for every "
    "(σ_w, σ_b) vs a plain MLP's χ₁ phase boundary (Doshi, He & Gromov 2023)"
)

__all__ = ["run", "figure_power_laws", "figure_phase_diagram", "figures"]


def _slope(x, y, axis=-1):
    """Least-squares slope of y against x along ``axis``."""
    xc = x - jnp.mean(x)
    return jnp.sum(xc * (y - jnp.mean(y, axis=axis, keepdims=True)), axis=axis) / jnp.sum(xc * xc)


def _measure(activation, grid, seeds, *, width, depth, samples, layer_norm):
    """log J^{0,l} (l = 1 … depth) and the product formula for every (σ_w, σ_b) and seed.

    Returns:
      ``(measured, rel_err, product)``, each ``(points, seeds, depth)``.
    """
    mu = 1.0 if layer_norm else 0.0

    def one(sw, sb, key):
        k_net, k_probe = jax.random.split(key)
        chain = block_chain(
            k_net,
            width=width,
            depth=depth,
            activation=activation,
            sigma_w=sw,
            sigma_b=sb,
            mu=mu,
            layer_norm=layer_norm,
        )
        est = matfree.partial_jacobian_norms(chain, key=k_probe, num_samples=samples)
        return est.log_values, est.rel_std_err, product_formula(chain)

    keys = jax.random.split(jax.random.key(0), seeds)
    per_seed = jax.vmap(one, in_axes=(None, None, 0))
    # Seeds batched, grid points one after another: memory stays that of one batch of seeds.
    f = jax.jit(lambda sw, sb: jax.lax.map(lambda p: per_seed(p[0], p[1], keys), (sw, sb)))
    sw, sb = (jnp.asarray(np.asarray(a, np.float32)) for a in zip(*grid))
    return tuple(np.asarray(a) for a in f(sw, sb))


def _power_law_section(out: Path, cfg: dict) -> dict:
    settings = [
        ("tanh", 1.0, 0.0),
        ("tanh", 2.0, 0.5),
        ("relu", 1.0, 0.0),
        ("relu", 2.0, 0.0),
        ("relu", 1.0, 1.0),
    ]
    depth, ls = cfg["depth"], np.arange(1, cfg["depth"] + 1)
    window = ls >= depth // 4  # fit the exponent where the O(1/l) corrections are small
    zetas, summary, arrays = {}, {}, {"l": ls}
    for act in ("tanh", "relu"):
        grid = [(sw, sb) for a, sw, sb in settings if a == act]
        meas, rel, prod = _measure(
            act,
            grid,
            cfg["seeds"],
            width=cfg["width"],
            depth=depth,
            samples=cfg["samples"],
            layer_norm=True,
        )
        for i, (sw, sb) in enumerate(grid):
            zeta = float(meanfield.residual_ln_zeta(act, sw**2, sb**2))
            # E var(h^0) = 1 − 1/N for h^0 ~ N(0, I_N)
            mf = meanfield.residual_ln_layers(act, sw**2, sb**2, 1.0 - 1.0 / cfg["width"], depth)
            mf_log = np.asarray(mf.log_apjn[1:], np.float64)
            slopes = np.asarray(_slope(jnp.log(ls[window]), meas[i][:, window]))
            key = f"{act}_sw{sw:g}_sb{sb:g}"
            zetas[key] = zeta
            arrays |= {f"{key}/measured": meas[i], f"{key}/product": prod[i], f"{key}/mf": mf_log}
            summary[key] = {
                "zeta_theory": zeta,
                "slope_theory_window": float(_slope(np.log(ls[window]), mf_log[window])),
                "slope_measured_median": float(np.median(slopes)),
                "slope_measured_per_seed": slopes,
                # the mean-field value scatters between finite networks (q^k random-walks by
                # O(1/√N)); the product formula on each network's own statistics does not
                "log_J_last_measured_minus_meanfield": meas[i][:, -1] - mf_log[-1],
                "max_abs_log_measured_minus_product": float(np.max(np.abs(meas[i] - prod[i]))),
                "max_rel_std_err": float(np.max(rel[i])),
            }
    _io.save_npz(arrays, out / "power_laws.npz")
    fig = figure_power_laws(arrays, zeta=zetas, **_sizes(cfg)["power_laws"])
    _io.save_figure(fig, out / "power_laws.png")
    return summary


def _phase_section(out: Path, cfg: dict) -> dict:
    act = cfg["activation"]
    sw_axis, sb_axis = np.linspace(0.3, 3.0, 55), np.linspace(0.0, 1.5, 31)
    SW, SB = np.meshgrid(sw_axis, sb_axis)
    zeta_map = np.asarray(meanfield.residual_ln_zeta(act, SW**2, SB**2))
    chi_map = np.asarray(meanfield.chi1(act, SW**2, SB**2))
    points = [(sw, sb) for sb in cfg["grid_sb"] for sw in cfg["grid_sw"]]
    psw, psb = (np.array(a) for a in zip(*points))

    depth, ls = cfg["depth"], np.arange(1, cfg["depth"] + 1)
    window = ls >= depth // 4
    meas, _, _ = _measure(
        act,
        points,
        cfg["grid_seeds"],
        width=cfg["width"],
        depth=depth,
        samples=cfg["samples"],
        layer_norm=True,
    )
    zeta_meas = np.median(np.asarray(_slope(jnp.log(ls[window]), meas[..., window])), axis=1)
    mf = meanfield.residual_ln_layers(act, psw**2, psb**2, np.ones_like(psw), depth)
    mf_log = np.asarray(mf.log_apjn[1:])  # (depth, points)
    zeta_window = np.asarray(_slope(np.log(ls[window]), mf_log[window].T))
    zeta_points = np.asarray(meanfield.residual_ln_zeta(act, psw**2, psb**2))

    # The plain MLP: the per-layer growth of J^{0,l} after the length has settled is χ₁.
    plain_depth = cfg["plain_depth"]
    pls = np.arange(1, plain_depth + 1)
    late = pls >= plain_depth // 2
    plain, _, _ = _measure(
        act,
        points,
        cfg["grid_seeds"],
        width=cfg["width"],
        depth=plain_depth,
        samples=cfg["samples"],
        layer_norm=False,
    )
    log_chi_meas = np.median(
        np.asarray(_slope(jnp.asarray(pls[late], jnp.float32), plain[..., late])), axis=1
    )
    log_chi_theory = np.log(np.asarray(meanfield.chi1(act, psw**2, psb**2)))

    arrays = {
        "sigma_w_axis": sw_axis,
        "sigma_b_axis": sb_axis,
        "zeta_map": zeta_map,
        "chi1_map": chi_map,
        "points_sigma_w": psw,
        "points_sigma_b": psb,
        "zeta_measured": zeta_meas,
        "zeta_theory_window": zeta_window,
        "zeta_theory": zeta_points,
        "log_chi1_measured": log_chi_meas,
        "log_chi1_theory": log_chi_theory,
    }
    _io.save_npz(arrays, out / "phase_diagram.npz")
    fig = figure_phase_diagram(arrays, **_sizes(cfg)["phase_diagram"])
    _io.save_figure(fig, out / "phase_diagram.png")
    return {
        "activation": act,
        "points_sigma_w": psw,
        "points_sigma_b": psb,
        "zeta_theory": zeta_points,
        "zeta_theory_window": zeta_window,
        "zeta_measured": zeta_meas,
        "max_abs_zeta_measured_minus_window": float(np.max(np.abs(zeta_meas - zeta_window))),
        "log_chi1_theory": log_chi_theory,
        "log_chi1_measured": log_chi_meas,
        "max_abs_log_chi1_error": float(np.max(np.abs(log_chi_meas - log_chi_theory))),
    }


def run(out_dir, *, full: bool = False) -> dict:
    """Writes the power-law and phase-diagram figures and their numbers to ``out_dir/NAME``."""
    out = Path(out_dir) / NAME
    if full:
        cfg = dict(width=1000, depth=1000, seeds=8, samples=64, grid_seeds=4, plain_depth=200)
        cfg |= dict(grid_sw=[0.5, 1.0, 1.5, 2.0, 2.5], grid_sb=[0.0, 0.3, 0.6, 1.0])
    else:
        cfg = dict(width=256, depth=200, seeds=4, samples=64, grid_seeds=2, plain_depth=60)
        cfg |= dict(grid_sw=[0.5, 1.5, 2.5], grid_sb=[0.0, 0.5, 1.0])
    cfg["activation"] = "tanh"
    summary = {"config": dict(cfg)}
    summary["power_laws"] = _power_law_section(out, cfg)
    summary["phase_diagram"] = _phase_section(out, cfg)
    _io.save_json(summary, out / "summary.json")
    return summary


# ---------------------------------------------------------------------------------------------
# Figures, from the numbers run() saves (so figures() can redraw them from the files)


def figure_power_laws(
    data: Mapping[str, np.ndarray],
    *,
    zeta: Mapping[str, float],
    width: int,
    seeds: int,
    samples: int,
    ax: Axes | None = None,
) -> Figure:
    """J^{0,l} of pre-LN residual nets against l (log-log), the mean-field product dashed.

    Args:
      data: the contents of ``power_laws.npz``: layers ``l`` ``(L,)`` and, per network
        ``<key>`` = ``<activation>_sw<σ_w>_sb<σ_b>``, natural-log APJNs ``"<key>/measured"``
        ``(seeds, L)`` and the mean-field prediction ``"<key>/mf"`` ``(L,)``.
      zeta: ``<key>`` -> the exponent ζ of the network (for the legend).
      width, seeds, samples: of the measurement (for the title).
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    measured, theory = {}, {}
    for key, fields in _io.by_label({k: v for k, v in data.items() if "/" in k}).items():
        act, rest = key.split("_sw", 1)
        sw, sb = rest.split("_sb", 1)
        label = rf"{act}, $\sigma_w$={sw}, $\sigma_b$={sb} ($\zeta$ = {zeta[key]:.2f})"
        measured[label], theory[label] = fields["measured"], fields["mf"]
    title = (
        f"Partial Jacobian norm $J^{{0,l}}$ of pre-LN residual nets (width {width}, "
        f"{seeds} seeds, {samples} probes)"
    )
    return plots.partial_jacobian_power_laws(data["l"], measured, theory, title=title, ax=ax)


def figure_phase_diagram(
    data: Mapping[str, np.ndarray],
    *,
    activation: str,
    width: int,
    depth: int,
    plain_depth: int,
    axes=None,
) -> Figure:
    """ζ and log χ₁ over (σ_w, σ_b), theory maps with measured points, and measured vs theory.

    Args:
      data: the contents of ``phase_diagram.npz``: the map axes ``sigma_w_axis`` ``(nw,)``,
        ``sigma_b_axis`` ``(nb,)``; theory maps ``zeta_map``, ``chi1_map`` ``(nb, nw)``; the
        measured points ``points_sigma_w``, ``points_sigma_b``, ``zeta_measured``,
        ``zeta_theory_window``, ``log_chi1_measured``, ``log_chi1_theory`` ``(P,)``.
      activation, width: of the networks (for the title).
      depth, plain_depth: of the residual and of the plain nets (for the title).
      axes: 3 axes (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    return plots.partial_jacobian_phase_diagram(
        data["sigma_w_axis"],
        data["sigma_b_axis"],
        data["zeta_map"],
        np.log(data["chi1_map"]),
        data["points_sigma_w"],
        data["points_sigma_b"],
        data["zeta_measured"],
        data["zeta_theory_window"],
        data["log_chi1_measured"],
        data["log_chi1_theory"],
        title=(
            f"{activation}: residual LN nets are critical everywhere, plain MLPs only on χ₁ = 1 "
            f"(width {width}, depths {depth} / {plain_depth})"
        ),
        axes=axes,
    )


def _sizes(cfg: Mapping) -> dict[str, dict]:
    """The configuration each figure prints, from run()'s ``cfg`` (summary.json's ``config``)."""
    return {
        "power_laws": {k: cfg[k] for k in ("width", "seeds", "samples")},
        "phase_diagram": {
            "activation": cfg["activation"],
            "width": cfg["width"],
            "depth": cfg["depth"],
            "plain_depth": cfg["plain_depth"],
        },
    }


def figures(out_dir) -> dict[str, Figure]:
    """Redraws every figure of :func:`run` from the numbers it saved in
    ``out_dir/partial_jacobians``.

    Args:
      out_dir: the directory given to :func:`run`.

    Returns:
      ``{file stem: Figure}``, the stems of the PNG/PDF files :func:`run` wrote.
    """
    out = Path(out_dir) / NAME
    summary = _io.load_json(out / "summary.json")
    sizes = _sizes(summary["config"])
    zeta = {k: v["zeta_theory"] for k, v in summary["power_laws"].items()}
    power = _io.load_npz(out / "power_laws.npz")
    phase = _io.load_npz(out / "phase_diagram.npz")
    return {
        "power_laws": figure_power_laws(power, zeta=zeta, **sizes["power_laws"]),
        "phase_diagram": figure_phase_diagram(phase, **sizes["phase_diagram"]),
    }
