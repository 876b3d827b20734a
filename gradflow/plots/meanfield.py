"""Mean-field signal propagation against finite networks: the χ₁ phase diagram, the q- and
c-maps, Jacobian spectra at criticality (dynamical isometry) and the depth scales (Poole et al.
2016; Schoenholz et al. 2017; Pennington, Schoenholz & Ganguli 2017)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradflow import theory
from gradflow.plots._base import finish, new_axes, new_axes_grid

__all__ = ["chi1_phase_diagram", "q_c_maps", "isometry_spectra", "depth_scales"]

REGIME_COLORS = {"ordered": "tab:blue", "critical": "k", "chaotic": "tab:red"}


def chi1_phase_diagram(
    sigma_w2,
    sigma_b2,
    log_chi1,
    critical_sigma_w2,
    critical_sigma_b2,
    measured_sigma_w2,
    measured_sigma_b2,
    measured_log_chi1,
    *,
    width: int,
    depth: int,
    ax: Axes | None = None,
) -> Figure:
    """The tanh phase diagram, log χ₁ over (σ_w², σ_b²), with finite networks' estimates over it.

    Theory as a colour map with contours and the edge of chaos χ₁ = 1; the median over seeds of
    the measured estimates as dashed gold contours at the same levels (and 0).

    Args:
      sigma_w2: array ``(G,)``; sigma_b2: array ``(G,)``.
      log_chi1: array ``(G, G)`` of mean-field log χ₁, rows σ_b².
      critical_sigma_w2, critical_sigma_b2: arrays ``(C,)``, the edge of chaos.
      measured_sigma_w2, measured_sigma_b2: arrays ``(B, W)``, where networks were measured.
      measured_log_chi1: array ``(B, W, seeds)`` of their estimates.
      width, depth: of the measured networks (for the legend).
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    created = ax is None
    fig, ax = new_axes(ax, figsize=(8.2, 5.6))
    vmax = float(np.max(np.abs(log_chi1)))
    sw2, sb2 = np.asarray(sigma_w2), np.asarray(sigma_b2)
    extent = (float(sw2[0]), float(sw2[-1]), float(sb2[0]), float(sb2[-1]))
    im = ax.imshow(
        log_chi1,
        origin="lower",
        extent=extent,
        aspect="auto",
        cmap="RdBu_r",
        vmin=-vmax,
        vmax=vmax,
        interpolation="bilinear",
    )
    cb = fig.colorbar(im, ax=ax, pad=0.02)
    cb.set_label(r"$\log\chi_1$  (mean field)")
    levels = [-0.6, -0.4, -0.2, 0.2]
    cs = ax.contour(sigma_w2, sigma_b2, log_chi1, levels=levels, colors="k", linewidths=0.7)
    ax.clabel(cs, fmt="%.1f", fontsize=7)
    ax.plot(
        critical_sigma_w2,
        critical_sigma_b2,
        color="k",
        lw=2.4,
        label=r"edge of chaos $\chi_1 = 1$",
    )
    med = np.median(measured_log_chi1, axis=-1)
    cm = ax.contour(
        measured_sigma_w2,
        measured_sigma_b2,
        med,
        levels=sorted([*levels, 0.0]),
        colors="gold",
        linewidths=1.6,
        linestyles="--",
    )
    ax.clabel(cm, fmt="%.1f", fontsize=7, colors="darkgoldenrod")
    ax.plot(
        np.asarray(measured_sigma_w2).ravel(),
        np.asarray(measured_sigma_b2).ravel(),
        "o",
        ms=3,
        color="dimgray",
        label=f"finite nets (width {width}, depth {depth})",
    )
    ax.plot(
        [],
        [],
        "--",
        color="gold",
        lw=1.6,
        label=r"measured $\frac{2}{L}\log\|\partial h_L/\partial h_1\|_F/\sqrt{n}$",
    )
    ax.plot([], [], "-", color="k", lw=0.7, label=r"theory contours of $\log\chi_1$")
    ax.text(0.6, 0.46, "ordered\n(gradients vanish)", color="navy", fontsize=10, va="top")
    ax.text(3.1, 0.04, "chaotic\n(gradients explode)", color="darkred", fontsize=10)
    ax.set_xlabel(r"weight variance $\sigma_w^2$")
    ax.set_ylabel(r"bias variance $\sigma_b^2$")
    ax.set_title(r"tanh phase diagram: $\chi_1 = \sigma_w^2\,\mathbb{E}[\phi'(\sqrt{q^*}z)^2]$")
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=2)
    return finish(fig, created)


def _errorbars(ax: Axes, layers, samples, color) -> None:
    """Mean ± standard deviation over samples (rows of ``samples``) at each layer, as points."""
    ax.errorbar(
        layers,
        samples.mean(0),
        yerr=samples.std(0, ddof=1),
        fmt="o",
        ms=3,
        color=color,
        capsize=2,
        lw=0.8,
    )


def q_c_maps(
    regimes: Mapping[str, Mapping[str, np.ndarray]],
    *,
    sigma_b2: float,
    starts,
    pairs: int,
    width: int,
    seeds: int,
    axes=None,
) -> Figure:
    """Length q^l and correlation c^l through depth, finite networks against the mean-field maps.

    Per regime (coloured: ``"ordered"`` blue, ``"critical"`` black, ``"chaotic"`` red) and per
    kind of input pair (solid, dashed): the maps as lines, the networks as mean ± sd points.

    Args:
      regimes: regime -> ``{"q", "c"}`` arrays ``(samples, L, 2)``, ``{"q_theory",
        "c_theory"}`` arrays ``(L, 2)`` and the scalar ``"sigma_w2"``; the last axis is the
        kind of input pair.
      sigma_b2: the bias variance of every network (for the title).
      starts: the two kinds' ``(q^1, c^1)`` (for the title).
      pairs: input pairs of each kind per network; width, seeds: of the networks (for the
        legend).
      axes: 2 axes, for q^l and c^l (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    created = axes is None
    fig, axes = new_axes_grid(axes, nrows=1, ncols=2, figsize=(11.5, 4.4))
    styles = ("-", "--")
    for label, r in regimes.items():
        layers = np.arange(1, r["q"].shape[1] + 1)
        col = REGIME_COLORS[label]
        for i in range(len(starts)):
            q, c = r["q"][:, :, i], r["c"][:, :, i]  # (samples, L)
            axes[0].plot(layers, r["q_theory"][:, i], styles[i], color=col, lw=1.4)
            _errorbars(axes[0], layers, q, col)
            axes[1].plot(layers, r["c_theory"][:, i], styles[i], color=col, lw=1.4)
            _errorbars(axes[1], layers, c, col)
        axes[0].plot([], [], "-", color=col, label=rf"{label}: $\sigma_w^2$ = {r['sigma_w2']:.3g}")
    axes[0].plot(
        [],
        [],
        "o",
        color="gray",
        label=f"width-{width} nets (mean ± sd, {seeds} seeds × {pairs} pairs)",
    )
    axes[0].plot([], [], "-", color="gray", label="mean-field maps")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("layer l")
    axes[0].set_ylabel(r"length $q^l = \frac{1}{n}\|z^l\|^2$")
    axes[0].set_title(
        r"Length map $q^{l+1} = \sigma_w^2\,\mathbb{E}\phi(\sqrt{q^l}z)^2 + \sigma_b^2$"
    )
    axes[0].legend(fontsize=7.5, loc="center right")
    axes[1].set_xlabel("layer l")
    axes[1].set_ylabel(r"correlation $c^l$ of two inputs")
    axes[1].set_title(r"Correlation map: $c^l \to c^*$ ($c^* = 1$ ordered, $< 1$ chaotic)")
    axes[1].set_ylim(-0.05, 1.05)
    for ax in axes:
        ax.grid(alpha=0.3)
    title = (
        rf"tanh, $\sigma_b^2$ = {sigma_b2}: two input pairs (solid: $q^1$ = {starts[0][0]}, "
        rf"$c^1$ = {starts[0][1]}; dashed: $q^1$ = {starts[1][0]}, $c^1$ = {starts[1][1]})"
    )
    return finish(fig, created, title, fontsize=10)


def isometry_spectra(
    spectra: Mapping[str, Mapping[str, np.ndarray]],
    *,
    width: int,
    depth: int,
    seeds: int,
    q_star: float,
    axes=None,
) -> Figure:
    """Squared singular values of ∂h_L/∂h_1 at criticality against free probability.

    One panel per activation (tanh, then ReLU), one colour per weight distribution: the
    histogram of the resolved log10 λ of finite networks (scaled by the resolved fraction) and
    the predicted density of log10 λ, dashed.

    Args:
      spectra: ``"<act>/<weights>"`` for act in ``tanh``, ``ReLU`` and weights in
        :data:`gradflow.theory.WEIGHTS` -> ``{"log_lambda", "resolved"}`` arrays
        ``(seeds · width,)`` (natural-log λ; bool), the prediction ``{"grid", "density"}``
        arrays ``(P,)``, and the scalars ``"variance"`` (predicted var λ), ``"sigma_w2"``,
        ``"sigma_b2"``.
      width, depth, seeds: of the networks (for the titles).
      q_star: the tanh nets' q* (for the title).
      axes: 2 axes, tanh then ReLU (default: a new figure with a shared y axis).

    Returns:
      The Figure drawn into.
    """
    created = axes is None
    fig, axes = new_axes_grid(axes, nrows=1, ncols=2, figsize=(11.5, 4.4), sharey=True)
    colors = {"gaussian": "tab:orange", "orthogonal": "tab:blue"}
    for ax, act in zip(axes, ("tanh", "ReLU")):
        for weights in theory.WEIGHTS:
            r = spectra[f"{act}/{weights}"]
            log10 = r["log_lambda"][r["resolved"]] / np.log(10)
            frac = r["resolved"].mean()
            measured_var = np.exp(r["log_lambda"]).var()
            bins = np.linspace(-6, 3, 91)
            hist, edges = np.histogram(log10, bins=bins, density=True)
            centers = 0.5 * (edges[1:] + edges[:-1])
            ax.step(
                centers,
                hist * frac,
                where="mid",
                color=colors[weights],
                alpha=0.8,
                lw=1.2,
                label=f"{weights} weights: finite nets (var λ = {measured_var:.2g})",
            )
            # density of log10 λ is λ ln10 ρ(λ); continuous part only
            ax.plot(
                np.log10(r["grid"]),
                r["grid"] * np.log(10) * r["density"],
                color=colors[weights],
                lw=2.2,
                alpha=0.9,
                ls="--",
                label=f"{weights}: free probability (var λ = {r['variance']:.2g})",
            )
        r = spectra[f"{act}/gaussian"]
        title = (
            rf"{act} at criticality: $\sigma_w^2$ = {r['sigma_w2']:.3g}, $\sigma_b^2$ = "
            rf"{r['sigma_b2']:.3g}"
        )
        if act == "ReLU":
            title += "\n(atom of mass ½ at λ = 0 not shown)"
        else:
            title += rf", $q^*$ = {q_star:g}"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(
            r"$\log_{10}\lambda$, $\lambda$ = squared singular value of $\partial h_L/\partial h_1$"
        )
        ax.set_yscale("log")
        ax.set_ylim(1e-3, 50)
        ax.set_xlim(-6, 3)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(r"density of $\log_{10}\lambda$")
    title = f"Dynamical isometry: L = {depth - 1} layers, width {width}, {seeds} seeds"
    return finish(fig, created, title, fontsize=10)


def depth_scales(
    sigma_w2,
    xi_c: Mapping[float, np.ndarray],
    xi_q: Mapping[float, np.ndarray],
    critical: Mapping[float, float],
    *,
    trainable_sigma_b2: float,
    ax: Axes | None = None,
) -> Figure:
    """The depth scales ξ_c, 6 ξ_c and ξ_q of tanh networks against σ_w², one colour per σ_b².

    Args:
      sigma_w2: array ``(P,)``.
      xi_c, xi_q: σ_b² -> array ``(P,)`` (non-finite where undefined); at most three σ_b².
      critical: σ_b² -> the critical σ_w², drawn as a vertical line.
      trainable_sigma_b2: the σ_b² (a key of ``xi_c``) whose trainable region L < 6 ξ_c is
        shaded.
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    created = ax is None
    fig, ax = new_axes(ax, figsize=(8.2, 5.0))
    colors = ("tab:green", "k", "tab:purple")
    sw2 = sigma_w2
    for sb2, col in zip(xi_c, colors):
        xc = np.where(np.isfinite(xi_c[sb2]), xi_c[sb2], np.nan)
        ax.plot(sw2, xc, color=col, lw=1.8, label=rf"$\xi_c$, $\sigma_b^2$ = {sb2}")
        ax.plot(
            sw2,
            6 * xc,
            color=col,
            lw=1.0,
            ls="--",
            label=rf"$6\xi_c$ (trainable depth), $\sigma_b^2$ = {sb2}",
        )
        ax.plot(sw2, xi_q[sb2], color=col, lw=0.9, ls=":")
        ax.axvline(critical[sb2], color=col, lw=0.6, alpha=0.6)
    mid = np.where(np.isfinite(xi_c[trainable_sigma_b2]), xi_c[trainable_sigma_b2], np.nan)
    ax.fill_between(
        sw2,
        1,
        6 * mid,
        color="gray",
        alpha=0.12,
        label=rf"trainable region $L < 6\xi_c$ ($\sigma_b^2$ = {trainable_sigma_b2})",
    )
    ax.plot([], [], ":", color="gray", label=r"$\xi_q$ (length depth scale)")
    ax.set_yscale("log")
    ax.set_ylim(0.5, 3e3)
    ax.set_xlabel(r"weight variance $\sigma_w^2$")
    ax.set_ylabel("depth (layers)")
    ax.set_title(
        r"Depth scales of tanh networks: $\xi_c^{-1} = -\log\chi_c$ diverges on the "
        "edge of chaos (vertical lines)",
        fontsize=10,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7.5, ncol=2, loc="upper left")
    return finish(fig, created)
