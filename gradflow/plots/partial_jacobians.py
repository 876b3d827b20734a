"""Partial Jacobian norms J^{l0,l} of residual LayerNorm networks and plain MLPs: power laws and
their phase diagram (Doshi, He & Gromov 2023, arXiv:2111.12143)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from gradflow.plots._base import band, finish, new_axes, new_axes_grid, palette, theory_key

__all__ = ["partial_jacobian_power_laws", "partial_jacobian_phase_diagram"]


def partial_jacobian_power_laws(
    layers: np.ndarray,
    log_measured: Mapping[str, np.ndarray],
    log_theory: Mapping[str, np.ndarray],
    *,
    title: str = "",
    ax: Axes | None = None,
) -> Figure:
    """J^{l0,l} vs l on log-log axes, measured (median and min–max band) with theory dashed.

    A power law J ~ l^ζ is a straight line of slope ζ; exponential growth or decay bends away.

    Args:
      layers: array ``(P,)`` of output layers l (> 0).
      log_measured: label -> array ``(seeds, P)`` of natural-log APJNs.
      log_theory: label -> array ``(P,)`` of the natural-log prediction, drawn dashed.
      title: axes title (default: a description of the plot).
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    created = ax is None
    fig, ax = new_axes(ax, figsize=(7.5, 4.8))
    layers = np.asarray(layers)
    for (label, ys), c in zip(log_measured.items(), palette(len(log_measured))):
        band(ax, layers, np.asarray(ys) / np.log(10.0), c, label)
        if label in log_theory:
            ax.plot(layers, np.asarray(log_theory[label]) / np.log(10.0), color=c, ls="--", lw=1.2)
    theory_key(ax, "mean-field product formula")
    ax.set_xscale("log")
    ax.set_xlabel("layer l")
    ax.set_ylabel(r"$\log_{10} J^{l_0,l} = \log_{10} \|\partial h_l/\partial h_{l_0}\|_F^2 / N_l$")
    ax.set_title(title or "Partial Jacobian norms vs depth", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    return finish(fig, created)


def partial_jacobian_phase_diagram(
    sigma_w: np.ndarray,
    sigma_b: np.ndarray,
    zeta_map: np.ndarray,
    log_chi1_map: np.ndarray,
    points_sigma_w: np.ndarray,
    points_sigma_b: np.ndarray,
    zeta_measured: np.ndarray,
    zeta_theory: np.ndarray,
    log_chi1_measured: np.ndarray,
    log_chi1_theory: np.ndarray,
    *,
    title: str = "",
    axes=None,
) -> Figure:
    """Residual-LN exponent ζ and plain-MLP log χ₁ over (σ_w, σ_b): theory maps, measured points.

    Panel (a): ζ of J^{l0,l} ~ (l/l0)^ζ for the pre-LN residual net (a power law everywhere; the
    dashed ζ = 1 line is where the net would be critical with a residual strength μ < 1).
    Panel (b): log χ₁ of the plain MLP, the per-layer log growth of J (dashed: the edge of chaos
    χ₁ = 1). Measured exponents are the filled points, coloured on the same scale. Panel (c):
    measured against theory, with y = x dashed.

    Args:
      sigma_w: array ``(nw,)``, the horizontal axis of the maps.
      sigma_b: array ``(nb,)``, the vertical axis of the maps.
      zeta_map, log_chi1_map: arrays ``(nb, nw)`` of theory.
      points_sigma_w, points_sigma_b: arrays ``(P,)``, where networks were measured.
      zeta_measured, zeta_theory: arrays ``(P,)`` (theory fitted over the same layers).
      log_chi1_measured, log_chi1_theory: arrays ``(P,)``.
      title: figure title (drawn only on a figure this function creates).
      axes: 3 axes to draw panels (a)–(c) into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    created = axes is None
    fig, axes = new_axes_grid(axes, nrows=1, ncols=3, figsize=(15, 4.6))
    sw, sb = np.asarray(sigma_w), np.asarray(sigma_b)
    psw, psb = np.asarray(points_sigma_w), np.asarray(points_sigma_b)

    ax = axes[0]
    zmax = float(np.nanmax(zeta_map))
    mesh = ax.pcolormesh(sw, sb, zeta_map, cmap="viridis", vmin=0.0, vmax=zmax, shading="auto")
    cs = ax.contour(sw, sb, zeta_map, levels=[1.0], colors="w", linestyles="--", linewidths=1.2)
    ax.clabel(cs, fmt=r"$\zeta$ = 1", fontsize=8)
    ax.scatter(
        psw,
        psb,
        c=zeta_measured,
        cmap="viridis",
        vmin=0.0,
        vmax=zmax,
        s=60,
        edgecolors="k",
        zorder=3,
        label="measured (value beside)",
    )
    ax.plot([], [], color="w", ls="--", label=r"$\zeta = 1$: critical line if $\mu < 1$")
    ax.legend(fontsize=8, loc="upper left", facecolor="0.85")
    for x, y, v in zip(psw, psb, zeta_measured):
        ax.annotate(
            f"{v:.2f}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=7, color="w"
        )
    fig.colorbar(mesh, ax=ax, label=r"$\zeta$")
    ax.set_title(r"(a) residual + pre-LN: $J^{l_0,l} \sim (l/l_0)^{\zeta}$", fontsize=10)

    ax = axes[1]
    # Saturate beyond |log χ₁| = 1.5 so the region near the edge of chaos keeps its contrast.
    lim = min(float(np.nanmax(np.abs(log_chi1_map))), 1.5)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim)
    mesh = ax.pcolormesh(sw, sb, log_chi1_map, cmap="RdBu_r", norm=norm, shading="auto")
    ax.contour(sw, sb, log_chi1_map, levels=[0.0], colors="k", linestyles="--", linewidths=1.2)
    ax.scatter(
        psw, psb, c=log_chi1_measured, cmap="RdBu_r", norm=norm, s=60, edgecolors="k", zorder=3
    )
    for x, y, v in zip(psw, psb, log_chi1_measured):
        ax.annotate(f"{v:+.2f}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=7)
    fig.colorbar(mesh, ax=ax, label=r"$\log \chi_1$ (per-layer log growth of $J$)", extend="both")
    ax.plot([], [], color="k", ls="--", label=r"edge of chaos $\chi_1 = 1$")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(r"(b) plain MLP: $J^{0,l} \sim \chi_1^{\,l}$", fontsize=10)
    for ax in axes[:2]:
        ax.set_xlabel(r"$\sigma_w$")
        ax.set_ylabel(r"$\sigma_b$")

    ax = axes[2]
    ax.scatter(
        zeta_theory, zeta_measured, marker="o", color=palette(2)[0], label=r"$\zeta$ (residual LN)"
    )
    ax.scatter(
        log_chi1_theory,
        log_chi1_measured,
        marker="s",
        color=palette(2)[1],
        label=r"$\log\chi_1$ (plain MLP)",
    )
    both = np.concatenate(
        [
            np.ravel(zeta_theory),
            np.ravel(log_chi1_theory),
            np.ravel(zeta_measured),
            np.ravel(log_chi1_measured),
        ]
    )
    lo, hi = float(np.nanmin(both)), float(np.nanmax(both))
    ax.plot([lo, hi], [lo, hi], color="gray", ls="--", lw=1.0, label="y = x (theory)")
    ax.set_xlabel("mean-field theory")
    ax.set_ylabel("measured")
    ax.set_title("(c) measured exponents vs theory", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return finish(fig, created, title or "Partial-Jacobian phase diagram", fontsize=11)
