"""Matplotlib figure functions: each takes measured arrays and returns a Figure (no I/O).

Figures are built on :class:`matplotlib.figure.Figure`, not on pyplot: importing this module
changes no global matplotlib state (a user's backend stays theirs), a figure needs no
``plt.close``, and ``Figure.savefig`` renders through matplotlib's Agg/PDF canvases directly.

Every plotting function takes ``ax=`` (one panel) or ``axes=`` (several panels: a sequence of the
documented length, row-major) to draw into a caller's figure, and returns the Figure it drew
into. When the function creates the figure it also sets the figure title (``suptitle``) and a
tight layout; with the caller's axes both are left to the caller, since they act on the whole
figure. :func:`new_axes` and :func:`new_axes_grid` are the helpers behind this, public so that
the experiments' own figure functions (``gradflow.experiments.*.figure_*``) follow the same rule.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

__all__ = [
    "new_axes",
    "new_axes_grid",
    "palette",
    "layer_grad_norms",
    "log_singular_value_density",
    "rnn_backprop_norms",
    "partial_jacobian_power_laws",
    "partial_jacobian_phase_diagram",
    "cnn_singular_value_spread",
    "cnn_state_gradient_norms",
    "cnn_q_c_layers",
    "cnn_fourier_mode_decay",
    "token_collapse",
    "uniform_attention_growth",
    "gradient_scale_slopes",
    "sublayer_jacobian_spectra",
]


def palette(n: int) -> list[tuple[float, float, float, float]]:
    """n distinguishable RGBA colours (tab10, repeating after 10)."""
    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def new_axes(ax: Axes | None = None, *, figsize: tuple[float, float] = (7.5, 4.5)):
    """The figure and axes to draw one panel into.

    Args:
      ax: a caller's axes, or None for a new :class:`~matplotlib.figure.Figure` of ``figsize``
        (inches) with one subplot.
      figsize: size of the new figure; ignored when ``ax`` is given.

    Returns:
      ``(fig, ax)``; ``fig`` is ``ax.figure`` when ``ax`` is given.

    Raises:
      TypeError: if ``ax`` is neither None nor a matplotlib Axes.
    """
    if ax is None:
        fig = Figure(figsize=figsize)
        return fig, fig.add_subplot()
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    return ax.figure, ax


def new_axes_grid(
    axes=None,
    *,
    nrows: int = 1,
    ncols: int = 1,
    figsize: tuple[float, float],
    **subplots_kw,
):
    """The figure and ``nrows × ncols`` axes to draw a multi-panel figure into.

    Args:
      axes: a caller's axes — a sequence (or array) of ``nrows · ncols`` matplotlib Axes of one
        figure, in row-major order (a bare Axes when one panel is drawn) — or None for a new
        :class:`~matplotlib.figure.Figure` of ``figsize`` (inches) with that grid of subplots.
      nrows, ncols: the panel grid.
      figsize: size of the new figure; ignored when ``axes`` is given.
      **subplots_kw: passed to :meth:`~matplotlib.figure.Figure.subplots` for a new figure
        (``sharex``, ``sharey``); a caller's axes keep their own sharing.

    Returns:
      ``(fig, axes)``: ``axes`` an object array of shape ``(nrows, ncols)``, flattened to 1-D
      when ``nrows`` or ``ncols`` is 1 (as :func:`matplotlib.pyplot.subplots` squeezes it).

    Raises:
      ValueError: if ``axes`` does not hold ``nrows · ncols`` Axes of one figure.
    """
    n = nrows * ncols
    if axes is None:
        fig = Figure(figsize=figsize)
        grid = fig.subplots(nrows, ncols, squeeze=False, **subplots_kw)
    else:
        flat = [axes] if isinstance(axes, Axes) else list(np.asarray(axes, dtype=object).ravel())
        if len(flat) != n or not all(isinstance(a, Axes) for a in flat):
            raise ValueError(
                f"axes must be a sequence of {n} matplotlib Axes ({nrows} row(s) × {ncols} "
                f"column(s), row-major), got {len(flat)} item(s) of types "
                f"{sorted({type(a).__name__ for a in flat})}"
            )
        fig = flat[0].figure
        if any(a.figure is not fig for a in flat):
            raise ValueError("axes must all belong to one figure")
        grid = np.empty((nrows, ncols), dtype=object)
        grid.ravel()[:] = flat
    return fig, (grid.ravel() if nrows == 1 or ncols == 1 else grid)


def _finish(fig: Figure, created: bool, suptitle: str | None = None, **suptitle_kw) -> Figure:
    """Figure-level title and tight layout, only on a figure this module created."""
    if created:
        if suptitle is not None:
            fig.suptitle(suptitle, **suptitle_kw)
        fig.tight_layout()
    return fig


def _band(ax, x, ys, color, label, log=True):
    """Median line with a min–max band over seeds; ys of shape (seeds, len(x))."""
    ys = np.asarray(ys)
    if log:
        ys = np.log10(np.maximum(ys, np.finfo(np.float64).tiny))
    mid = np.median(ys, axis=0)
    ax.plot(x, mid, color=color, lw=1.8, label=label)
    if ys.shape[0] > 1:
        ax.fill_between(x, ys.min(0), ys.max(0), color=color, alpha=0.2, lw=0)


def layer_grad_norms(
    norms: Mapping[str, np.ndarray], *, title: str = "", ax: Axes | None = None
) -> Figure:
    """‖∂L/∂θ_l‖ vs layer l on a log scale, one line per network.

    Args:
      norms: label -> array ``(seeds, L)`` of per-layer gradient norms, input layer first.
      title: axes title (default: a description of the plot).
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    created = ax is None
    fig, ax = new_axes(ax, figsize=(7.5, 4.5))
    for (label, ys), c in zip(norms.items(), palette(len(norms))):
        ys = np.asarray(ys)
        _band(ax, np.arange(1, ys.shape[1] + 1), ys, c, label)
    ax.set_xlabel("layer l (1 = input layer, last = readout)")
    ax.set_ylabel(r"$\log_{10}\,\|\partial L/\partial\theta_l\|_F$")
    ax.set_title(title or "Per-layer gradient norm at initialisation (median, min–max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _finish(fig, created)


def log_singular_value_density(
    log10_sv: Mapping[str, np.ndarray],
    *,
    floors: Mapping[str, float] | None = None,
    title: str = "",
    xlabel: str = "",
    axes=None,
) -> Figure:
    """Histogram of log10 singular values, one panel per network (shared x axis).

    Args:
      log10_sv: label -> 1-D array of log10 singular values pooled over inputs and seeds.
      floors: label -> log10 of the numerical resolution floor; values at or below it are
        unresolved (they pile up there) and the floor is drawn and labelled.
      title: figure title (drawn only on a figure this function creates).
      xlabel: label of the shared x axis (default: log10 σ_i, with σ = 1 dotted).
      axes: ``len(log10_sv)`` axes to draw into, one per network (default: a new figure with
        a shared x axis).

    Returns:
      The Figure drawn into.
    """
    k = len(log10_sv)
    created = axes is None
    fig, axes = new_axes_grid(axes, nrows=k, ncols=1, figsize=(7.5, 1.35 * k + 0.8), sharex=True)
    lo = min(float(np.min(v)) for v in log10_sv.values())
    hi = max(float(np.max(v)) for v in log10_sv.values())
    bins = np.linspace(lo - 0.25, hi + 0.25, 90)
    for ax, (label, v), c in zip(axes, log10_sv.items(), palette(k)):
        ax.hist(np.asarray(v), bins=bins, color=c, alpha=0.85)
        ax.axvline(0.0, color="k", lw=0.8, ls=":")
        if floors and label in floors:
            ax.axvline(floors[label], color="0.4", lw=1.0, ls="--")
            ax.text(
                floors[label],
                0.8,
                " ← unresolved (float64 floor)",
                transform=ax.get_xaxis_transform(),
                fontsize=7,
                color="0.3",
                ha="left",
            )
        ax.set_ylabel("count", fontsize=8)
        ax.text(0.01, 0.8, label, transform=ax.transAxes, fontsize=9)
    axes[-1].set_xlabel(xlabel or r"$\log_{10}\,\sigma_i$ (dotted: $\sigma = 1$, isometry)")
    title = title or "Singular values of the Jacobian through all hidden layers"
    return _finish(fig, created, title, fontsize=11)


def rnn_backprop_norms(
    distance: np.ndarray,
    norms: Mapping[str, np.ndarray],
    bounds: Mapping[str, np.ndarray],
    *,
    title: str = "",
    ax: Axes | None = None,
) -> Figure:
    """‖∂x_T/∂x_k‖ vs T − k (log scale) with a bound drawn dashed in the same colour.

    Args:
      distance: array ``(K,)`` of T − k.
      norms: label -> array ``(seeds, K)`` of spectral norms.
      bounds: label -> array ``(K,)`` of the bound (γλ₁)^(T−k).
      title: axes title (default: a description of the plot).
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    created = ax is None
    fig, ax = new_axes(ax, figsize=(7.5, 4.5))
    for (label, ys), c in zip(norms.items(), palette(len(norms))):
        _band(ax, distance, ys, c, label)
        if label in bounds:
            b = np.log10(np.asarray(bounds[label]))
            ax.plot(distance, b, color=c, ls="--", lw=1.2)
    ax.plot([], [], color="gray", ls="--", label=r"Pascanu bound $(\gamma\lambda_1)^{T-k}$")
    ax.set_xlabel("T − k (steps back in time)")
    ax.set_ylabel(r"$\log_{10}\,\|\partial x_T/\partial x_k\|_2$")
    ax.set_title(title or "Backpropagation through time in a tanh RNN")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, created)


# --------------------------------------------------------------------------------------------
# Partial Jacobian norms (Doshi, He & Gromov 2023)
# --------------------------------------------------------------------------------------------


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
        ys = np.asarray(ys) / np.log(10.0)
        ax.plot(layers, np.median(ys, axis=0), color=c, lw=1.8, label=label)
        if ys.shape[0] > 1:
            ax.fill_between(layers, ys.min(0), ys.max(0), color=c, alpha=0.2, lw=0)
        if label in log_theory:
            ax.plot(layers, np.asarray(log_theory[label]) / np.log(10.0), color=c, ls="--", lw=1.2)
    ax.plot([], [], color="gray", ls="--", label="mean-field product formula")
    ax.set_xscale("log")
    ax.set_xlabel("layer l")
    ax.set_ylabel(r"$\log_{10} J^{l_0,l} = \log_{10} \|\partial h_l/\partial h_{l_0}\|_F^2 / N_l$")
    ax.set_title(title or "Partial Jacobian norms vs depth", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    return _finish(fig, created)


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
    return _finish(fig, created, title or "Partial-Jacobian phase diagram", fontsize=11)


# --------------------------------------------------------------------------------------------
# Convolutional networks at depth (Xiao et al. 2018)
# --------------------------------------------------------------------------------------------


def cnn_singular_value_spread(
    d: np.ndarray,
    log10_sv: Mapping[str, np.ndarray],
    *,
    resolved: Mapping[str, np.ndarray] | None = None,
    title: str = "",
    ax: Axes | None = None,
) -> Figure:
    """Singular values of ∂h_L/∂h_{L−d} against d: median (line), σ_max to σ_min (band).

    The mean-field prediction at χ₁ = 1 is a mean squared singular value of χ₁^d = 1, drawn
    dashed at σ = 1; dynamical isometry means the whole band stays near it. With ``resolved``
    the band's lower edge is the smallest resolved singular value (median over seeds), and the
    median line stops where fewer than half the singular values are resolved.

    Args:
      d: array ``(D,)`` of depths (layers back from the top), > 0.
      log10_sv: label -> array ``(seeds, D, k)`` of log10 singular values, descending.
      resolved: label -> bool array like ``log10_sv``: values above the numerical floor.
      title: axes title (default: a description of the plot).
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    created = ax is None
    fig, ax = new_axes(ax, figsize=(7.5, 4.8))
    d = np.asarray(d)
    for (label, sv), c in zip(log10_sv.items(), palette(len(log10_sv))):
        sv = np.asarray(sv, np.float64)
        ok = np.ones(sv.shape, bool) if resolved is None else np.asarray(resolved[label])
        low = np.median(np.where(ok, sv, np.inf).min(axis=2), axis=0)
        med = np.median(np.median(sv, axis=2), axis=0)
        med = np.where(np.median(ok.mean(axis=2), axis=0) >= 0.5, med, np.nan)
        top = np.median(sv[:, :, 0], axis=0)
        ax.plot(d, med, color=c, lw=1.8, label=f"{label}: median")
        ax.fill_between(d, low, top, color=c, alpha=0.18, lw=0)
        ax.plot(d, top, color=c, lw=0.8, alpha=0.7)
        ax.plot(d, low, color=c, lw=0.8, alpha=0.7)
    ax.axhline(0.0, color="k", ls="--", lw=1.2, label=r"mean field: $\chi_1^{\,d} = 1$")
    ax.set_xscale("log")
    ax.set_xlabel("d (layers between h_(L−d) and h_L)")
    lower = "smallest resolved σ" if resolved is not None else r"$\sigma_{\min}$"
    ylabel = r"$\log_{10}\sigma_i(\partial h_L/\partial h_{L-d})$"
    ax.set_ylabel(rf"{ylabel} (band: {lower}–$\sigma_{{\max}}$)", fontsize=9)
    ax.set_title(title or "Jacobian singular values vs depth", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower left")
    return _finish(fig, created)


def cnn_state_gradient_norms(
    log10_norms: Mapping[str, np.ndarray], *, title: str = "", ax: Axes | None = None
) -> Figure:
    """log10 ‖∂L/∂h_l‖ against layer l, one line per network (median, min–max band over seeds).

    At χ₁ = 1 mean field predicts E‖∂L/∂h_l‖² independent of l: each network's theory is drawn
    dashed at its last layer's value.

    Args:
      log10_norms: label -> array ``(seeds, L)`` of log10 state-gradient norms, h_1 … h_L.
      title: axes title (default: a description of the plot).
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    created = ax is None
    fig, ax = new_axes(ax, figsize=(7.5, 4.5))
    for (label, ys), c in zip(log10_norms.items(), palette(len(log10_norms))):
        ys = np.asarray(ys)
        layers = np.arange(1, ys.shape[1] + 1)
        ax.plot(layers, np.median(ys, 0), color=c, lw=1.6, label=label)
        if ys.shape[0] > 1:
            ax.fill_between(layers, ys.min(0), ys.max(0), color=c, alpha=0.2, lw=0)
        ax.axhline(float(np.median(ys[:, -1])), color=c, ls="--", lw=1.0, zorder=0)
    ax.plot([], [], color="gray", ls="--", label=r"mean field at $\chi_1 = 1$ (flat)")
    ax.set_xlabel("layer l")
    ax.set_ylabel(r"$\log_{10}\,\|\partial L/\partial h_l\|$")
    ax.set_title(title or "State-gradient norms through depth", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _finish(fig, created)


def cnn_q_c_layers(
    q: Mapping[str, np.ndarray],
    one_minus_c: Mapping[str, np.ndarray],
    q_theory: np.ndarray,
    one_minus_c_theory: np.ndarray,
    *,
    title: str = "",
    axes=None,
) -> Figure:
    """Empirical length q^l and correlation c^l over layers, mean-field maps dashed.

    Left: q^l / q* (theory: the q-map from q*, i.e. 1). Right: 1 − c^l on log–log axes (at the
    edge of chaos it closes polynomially, not exponentially).

    Args:
      q, one_minus_c: label -> array ``(seeds, L)`` for layers 1 … L.
      q_theory, one_minus_c_theory: arrays ``(L,)`` (e.g. from
        :func:`gradflow.meanfield.c_layers`).
      title: figure title (drawn only on a figure this function creates).
      axes: 2 axes to draw panels (a) and (b) into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    created = axes is None
    fig, axes = new_axes_grid(axes, nrows=1, ncols=2, figsize=(12, 4.4))
    q_theory, gap_theory = np.asarray(q_theory), np.asarray(one_minus_c_theory)
    layers = np.arange(1, q_theory.shape[0] + 1)
    q0 = float(q_theory[0])
    for (label, ys), col in zip(q.items(), palette(len(q))):
        ys = np.asarray(ys) / q0
        axes[0].plot(layers, np.median(ys, 0), color=col, lw=1.2, label=label)
        if ys.shape[0] > 1:
            axes[0].fill_between(layers, ys.min(0), ys.max(0), color=col, alpha=0.2, lw=0)
    axes[0].plot(layers, q_theory / q0, color="k", ls="--", lw=1.2, label="mean field")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("layer l")
    axes[0].set_ylabel(r"$q^l / q^*$")
    axes[0].set_title("(a) length of the pre-activations", fontsize=10)
    for (label, ys), col in zip(one_minus_c.items(), palette(len(one_minus_c))):
        ys = np.asarray(ys)
        axes[1].plot(layers, np.median(ys, 0), color=col, lw=1.2, label=label)
        if ys.shape[0] > 1:
            axes[1].fill_between(layers, ys.min(0), ys.max(0), color=col, alpha=0.2, lw=0)
    axes[1].plot(layers, gap_theory, color="k", ls="--", lw=1.2, label="mean field")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("layer l")
    axes[1].set_ylabel(r"$1 - c^l$ (two inputs, same position)")
    axes[1].set_title("(b) correlation of two inputs", fontsize=10)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return _finish(fig, created, title or "Forward signal propagation", fontsize=11)


def cnn_fourier_mode_decay(
    amplitude: Mapping[str, np.ndarray],
    stderr: Mapping[str, np.ndarray],
    rates: Mapping[str, np.ndarray],
    *,
    modes=None,
    title: str = "",
    axes=None,
) -> Figure:
    """Per-mode amplitude of a covariance perturbation over layers, theory (rate)^l dashed.

    One panel per network; within it one colour per spatial Fourier mode m. Points are shown
    while they exceed 2 standard errors (below that, finite-width noise).

    Args:
      amplitude: label -> array ``(L, n)``, normalised to 1 at the first layer
        (:func:`gradflow.models.cnn.mode_decay`).
      stderr: label -> array ``(L, n)``.
      rates: label -> array ``(n,)`` of theoretical per-layer rates λ_m χ_c*.
      modes: which m to draw (default 0 … n/2).
      title: figure title (drawn only on a figure this function creates).
      axes: ``len(amplitude)`` axes, one per network (default: a new figure, shared y axis).

    Returns:
      The Figure drawn into.
    """
    k = len(amplitude)
    created = axes is None
    fig, axes = new_axes_grid(axes, nrows=1, ncols=k, figsize=(5.2 * k, 4.6), sharey=True)
    for ax, label in zip(axes, amplitude):
        a, e, r = (np.asarray(v) for v in (amplitude[label], stderr[label], rates[label]))
        ms = list(range(a.shape[1] // 2 + 1)) if modes is None else list(modes)
        layers = np.arange(a.shape[0])
        for m, col in zip(ms, palette(len(ms))):
            ok = a[:, m] > 2 * e[:, m]
            ok[0] = True
            ax.plot(
                layers[ok],
                a[ok, m],
                "o-",
                color=col,
                ms=3,
                lw=1.0,
                label=rf"m={m}: $\lambda_m\chi_c^*$ = {r[m]:.3f}",
            )
            if r[m] > 0:
                ax.plot(layers, r[m] ** layers, color=col, ls="--", lw=1.0)
        ax.set_yscale("log")
        ax.set_ylim(1e-4, 2.0)
        ax.set_xlabel("layer l (0 = first conv)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6.5, loc="lower left")
    axes[0].set_ylabel(r"mode amplitude $A^l_m / A^0_m$")
    title = title or "Fourier modes of the covariance: measured (points) and theory (dashed)"
    return _finish(fig, created, title, fontsize=10)


# --------------------------------------------------------------------------------------------
# Transformers at depth: rank collapse, uniform attention, Xiong slopes, sub-layer Jacobians
# --------------------------------------------------------------------------------------------


def _family_styles(labels):
    """Colour per architecture (the label before ", s="), dash-dot for the 1/√L-scaled twin."""
    families = list(dict.fromkeys(lab.split(", s=")[0] for lab in labels))
    colours = dict(zip(families, palette(len(families))))
    return {lab: (colours[lab.split(", s=")[0]], "-." if ", s=" in lab else "-") for lab in labels}


def token_collapse(
    cosine: Mapping[str, np.ndarray],
    relative: Mapping[str, np.ndarray],
    *,
    floor: float = 1e-7,
    title: str = "",
    axes=None,
) -> Figure:
    """Token cosine and relative rank-one residual vs block, one line per network.

    Panel (a): mean pairwise token cosine (1 = all tokens parallel). Panel (b): the relative
    residual ‖X − 1x̄ᵀ‖₁,∞/‖X‖₁,∞ on a log scale (0 = rank one, every token equal); values below
    ``floor`` (the arithmetic's resolution) are drawn at the floor. Median over seeds, min–max
    band; a network and its residual-scaled (s = 1/√L) twin share a colour, the twin dash-dotted.

    Args:
      cosine: label -> array ``(seeds, L + 1)`` (state after block l; l = 0 is the embedding).
      relative: label -> array ``(seeds, L + 1)``.
      floor: smallest relative residual drawn.
      title: figure title (drawn only on a figure this function creates).
      axes: 2 axes to draw panels (a) and (b) into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    styles = _family_styles(list(cosine))
    created = axes is None
    fig, axes = new_axes_grid(axes, nrows=1, ncols=2, figsize=(13, 4.8))
    for label, ys in cosine.items():
        c, ls = styles[label]
        ys = np.asarray(ys)
        x = np.arange(ys.shape[1])
        axes[0].plot(x, np.median(ys, 0), color=c, ls=ls, lw=1.6, label=label)
        if ys.shape[0] > 1:
            axes[0].fill_between(x, ys.min(0), ys.max(0), color=c, alpha=0.12, lw=0)
        r = np.log10(np.maximum(np.asarray(relative[label]), floor))
        axes[1].plot(x, np.median(r, 0), color=c, ls=ls, lw=1.6, label=label)
        if r.shape[0] > 1:
            axes[1].fill_between(x, r.min(0), r.max(0), color=c, alpha=0.12, lw=0)
    axes[1].axhline(np.log10(floor), color="0.5", ls=":", lw=1.0, label=f"resolution ({floor:g})")
    axes[0].set_ylabel("mean pairwise token cosine")
    axes[0].set_title("(a) token cosine similarity", fontsize=10)
    axes[1].set_ylabel(r"$\log_{10}\ \|X - 1\bar{x}^\top\|_{1,\infty} / \|X\|_{1,\infty}$")
    axes[1].set_title("(b) relative residual from rank one (Dong et al. 2021)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("block l (0 = embedding)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower left", ncol=2)
    title = title or "Rank collapse with depth at initialisation"
    return _finish(fig, created, title, fontsize=11)


def uniform_attention_growth(
    growth: Mapping[str, np.ndarray],
    theory: Mapping[str, np.ndarray],
    relative: Mapping[str, np.ndarray],
    *,
    bound: float | None = None,
    title: str = "",
    axes=None,
) -> Figure:
    """Growth of the token mean under uniform attention, measured against (1 + α²σ_v²)^l.

    Panel (a): the Monte Carlo mean of ‖x̄_l‖²/‖x̄_0‖² with a ±2 standard-error band, theory
    dashed, and ``bound`` (e^{σ_v²}, the limit for α = 1/√L) dotted. Panel (b): the relative
    residual ‖X_l − 1x̄_lᵀ‖₁,∞/‖X_l‖₁,∞ (median, min–max band): the centred part is fixed, so it
    falls as the mean grows.

    Args:
      growth: label -> array ``(seeds, L + 1)`` of ‖x̄_l‖²/‖x̄_0‖².
      theory: label -> array ``(L + 1,)``.
      relative: label -> array ``(seeds, L + 1)``.
      bound: a horizontal reference level (e.g. e^{σ_v²}), or None.
      title: figure title (drawn only on a figure this function creates).
      axes: 2 axes to draw panels (a) and (b) into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    created = axes is None
    fig, axes = new_axes_grid(axes, nrows=1, ncols=2, figsize=(12, 4.6))
    for (label, g), c in zip(growth.items(), palette(len(growth))):
        g = np.asarray(g, np.float64)
        x = np.arange(g.shape[1])
        mean = g.mean(0)
        se = g.std(0, ddof=1) / np.sqrt(g.shape[0])
        axes[0].plot(x, np.log10(mean), color=c, lw=1.8, label=f"{label}: measured mean")
        lo = np.log10(np.maximum(mean - 2 * se, np.finfo(np.float64).tiny))
        axes[0].fill_between(x, lo, np.log10(mean + 2 * se), color=c, alpha=0.2, lw=0)
        if label in theory:
            axes[0].plot(x, np.log10(theory[label]), color=c, ls="--", lw=1.2)
        _band(axes[1], x, relative[label], c, label)
    axes[0].plot([], [], color="gray", ls="--", label=r"theory $(1+\alpha^2\sigma_v^2)^l$")
    if bound is not None:
        axes[0].axhline(np.log10(bound), color="0.4", ls=":", lw=1.0, label=r"$e^{\sigma_v^2}$")
    axes[0].set_ylabel(r"$\log_{10}\ \mathrm{E}\,\|\bar{x}_l\|^2 / \|\bar{x}_0\|^2$")
    axes[0].set_title("(a) norm of the token mean (±2 s.e.)", fontsize=10)
    axes[1].set_ylabel(r"$\log_{10}\ \|X_l - 1\bar{x}_l^\top\|_{1,\infty}/\|X_l\|_{1,\infty}$")
    axes[1].set_title("(b) relative residual: collapse onto the mean", fontsize=10)
    for ax in axes:
        ax.set_xlabel("layer l")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _finish(fig, created, title or "Uniform attention", fontsize=11)


def gradient_scale_slopes(
    depths: np.ndarray,
    norms: Mapping[str, np.ndarray],
    slopes: Mapping[str, tuple[float, float, float]],
    theory: Mapping[str, float],
    sq_norms: np.ndarray | None = None,
    *,
    title: str = "",
    axes=None,
) -> Figure:
    """‖∂L/∂W^{2,L}‖_F vs depth L on log-log axes with fitted and theoretical slopes.

    Panel (a): every seed (small dots), the mean of log10 over seeds (large markers), the
    least-squares line (solid, slope and 95 % CI in the legend) and the theoretical slope (dashed,
    through the fitted line's centre). Panel (b), if ``sq_norms`` is given: the pre-LN residual
    stream E‖x_l‖²/d vs l (mean, min–max band) and Xiong et al.'s band [m_0 + l/2, m_0 + 3l/2]
    (dashed), m_0 the measured value at l = 0.

    Args:
      depths: array ``(D,)``.
      norms: label -> array ``(seeds, D)``.
      slopes: label -> (slope, CI low, CI high) of log norm vs log depth.
      theory: label -> theoretical slope.
      sq_norms: array ``(seeds, L + 1)`` or None.
      title: figure title (drawn only on a figure this function creates).
      axes: 2 axes to draw panels (a) and (b) into, 1 without ``sq_norms`` (default: a new
        figure).

    Returns:
      The Figure drawn into.
    """
    two = sq_norms is not None
    created = axes is None
    fig, axes = new_axes_grid(
        axes, nrows=1, ncols=2 if two else 1, figsize=(12.5 if two else 7, 4.6)
    )
    ax = axes[0]
    lx = np.log10(np.asarray(depths, np.float64))
    for (label, ys), c in zip(norms.items(), palette(len(norms))):
        ly = np.log10(np.asarray(ys, np.float64))
        ax.scatter(np.broadcast_to(lx, ly.shape), ly, color=c, s=6, alpha=0.3, lw=0)
        ax.plot(lx, ly.mean(0), "o", color=c, ms=6)
        s, lo, hi = slopes[label]
        # A log-log slope is the same in any base; the lines pass through the centre of mass.
        cx, cy = lx.mean(), ly.mean()
        fit = f"{label}: slope {s:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        ax.plot(lx, cy + s * (lx - cx), color=c, lw=1.6, label=fit)
        if label in theory:
            t = theory[label]
            ax.plot(lx, cy + t * (lx - cx), color=c, ls="--", lw=1.2, label=f"theory {t:+g}")
    ax.set_xticks(lx, [str(int(d)) for d in depths])
    ax.set_xlabel("depth L (log scale)")
    ax.set_ylabel(r"$\log_{10}\ \|\partial L/\partial W^{2,L}\|_F$")
    ax.set_title("(a) last-layer FFN gradient vs depth", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if two:
        ax = axes[1]
        q = np.asarray(sq_norms, np.float64)
        x = np.arange(q.shape[1])
        c = palette(1)[0]
        ax.plot(x, q.mean(0), color=c, lw=1.8, label=r"pre-LN: measured $\|x_l\|^2/d$ (mean)")
        if q.shape[0] > 1:
            ax.fill_between(x, q.min(0), q.max(0), color=c, alpha=0.2, lw=0)
        m0 = q[:, 0].mean()
        ax.plot(x, m0 + x / 2, color="0.3", ls="--", lw=1.2, label=r"Xiong et al.: $m_0 + l/2$")
        ax.plot(x, m0 + 1.5 * x, color="0.3", ls="-.", lw=1.2, label=r"$m_0 + 3l/2$")
        ax.set_xlabel("block l")
        ax.set_ylabel(r"$\mathrm{E}\,\|x_l\|^2 / d$")
        ax.set_title("(b) pre-LN residual stream grows linearly", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    title = title or "Gradient scale vs depth, pre-LN and post-LN"
    return _finish(fig, created, title, fontsize=11)


def sublayer_jacobian_spectra(
    singular_values: Mapping[str, np.ndarray],
    kinds,
    log10_backward: Mapping[str, np.ndarray],
    *,
    backward_ylabel: str = r"$\log_{10}\,\|\partial X_K/\partial X_k\|_F$",
    title: str = "",
    axes=None,
) -> Figure:
    """Per-step Jacobian singular values, attention vs MLP, and ‖∂X_K/∂X_k‖ vs k.

    Panel (a): for every chain step k, log10 of the largest and the median singular value of
    ∂X_{k+1}/∂X_k (median over seeds); circles for attention steps, squares for MLP steps,
    filled for σ_max, open for the median. Panel (b): log10 ‖∂X_K/∂X_k‖ (median, min–max band
    over seeds), or whichever log-norm ``log10_backward`` holds, named by ``backward_ylabel``.

    Args:
      singular_values: label -> array ``(seeds, K, n)``, descending along the last axis.
      kinds: ``(K,)`` strings "attention" / "mlp".
      log10_backward: label -> array ``(seeds, K)``.
      backward_ylabel: y label of panel (b).
      title: figure title (drawn only on a figure this function creates).
      axes: 2 axes to draw panels (a) and (b) into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    created = axes is None
    fig, axes = new_axes_grid(axes, nrows=1, ncols=2, figsize=(13, 4.8))
    kinds = np.asarray(kinds)
    masks = ((kinds == "attention", "o", "attention"), (kinds == "mlp", "s", "MLP"))
    for (label, sv), c in zip(singular_values.items(), palette(len(singular_values))):
        sv = np.asarray(sv, np.float64)
        k = np.arange(sv.shape[1])
        top = np.median(np.log10(sv[..., 0]), axis=0)
        mid = np.median(np.log10(np.median(sv, axis=-1)), axis=0)
        for mask, marker, kind in masks:
            lab = f"{label}, {kind}"
            top_label, mid_label = rf"{lab}: $\sigma_{{max}}$", rf"{lab}: median $\sigma$"
            axes[0].plot(k[mask], top[mask], marker, color=c, ms=5, label=top_label)
            axes[0].plot(k[mask], mid[mask], marker, color=c, ms=5, mfc="none", label=mid_label)
        lb = np.asarray(log10_backward[label], np.float64)
        axes[1].plot(np.arange(lb.shape[1]), np.median(lb, 0), color=c, lw=1.8, label=label)
        if lb.shape[0] > 1:
            ks = np.arange(lb.shape[1])
            axes[1].fill_between(ks, lb.min(0), lb.max(0), color=c, alpha=0.2, lw=0)
    axes[0].axhline(0.0, color="k", lw=0.8, ls=":")
    axes[0].set_xlabel("chain step k (even: attention, odd: MLP)")
    axes[0].set_ylabel(r"$\log_{10}\,\sigma$ of $\partial X_{k+1}/\partial X_k$")
    axes[0].set_title("(a) sub-layer Jacobian singular values", fontsize=10)
    axes[0].legend(fontsize=7, ncol=2)
    axes[1].set_xlabel("chain step k")
    axes[1].set_ylabel(backward_ylabel)
    axes[1].set_title("(b) backward products to the last state", fontsize=10)
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    title = title or "Jacobians of attention and MLP sub-layers"
    return _finish(fig, created, title, fontsize=11)
