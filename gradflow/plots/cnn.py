"""Convolutional networks at depth: Jacobian singular values, state gradients, q/c maps and
Fourier-mode decay (Xiao et al. 2018, arXiv:1806.05393)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradflow.plots._base import band, finish, new_axes, new_axes_grid, palette, theory_key

__all__ = [
    "cnn_singular_value_spread",
    "cnn_state_gradient_norms",
    "cnn_q_c_layers",
    "cnn_fourier_mode_decay",
]


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
    return finish(fig, created)


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
        band(ax, layers, ys, c, label, lw=1.6)
        ax.axhline(float(np.median(ys[:, -1])), color=c, ls="--", lw=1.0, zorder=0)
    theory_key(ax, r"mean field at $\chi_1 = 1$ (flat)")
    ax.set_xlabel("layer l")
    ax.set_ylabel(r"$\log_{10}\,\|\partial L/\partial h_l\|$")
    ax.set_title(title or "State-gradient norms through depth", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return finish(fig, created)


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
        band(axes[0], layers, np.asarray(ys) / q0, col, label, lw=1.2)
    axes[0].plot(layers, q_theory / q0, color="k", ls="--", lw=1.2, label="mean field")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("layer l")
    axes[0].set_ylabel(r"$q^l / q^*$")
    axes[0].set_title("(a) length of the pre-activations", fontsize=10)
    for (label, ys), col in zip(one_minus_c.items(), palette(len(one_minus_c))):
        band(axes[1], layers, ys, col, label, lw=1.2)
    axes[1].plot(layers, gap_theory, color="k", ls="--", lw=1.2, label="mean field")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("layer l")
    axes[1].set_ylabel(r"$1 - c^l$ (two inputs, same position)")
    axes[1].set_title("(b) correlation of two inputs", fontsize=10)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return finish(fig, created, title or "Forward signal propagation", fontsize=11)


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
    return finish(fig, created, title, fontsize=10)
