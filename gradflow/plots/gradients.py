"""Gradient norms and Jacobian singular values through depth (MLPs) and time (RNNs): the
core figures of vanishing and exploding gradients."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradflow.plots._base import band, finish, new_axes, new_axes_grid, palette, theory_key

__all__ = ["layer_grad_norms", "log_singular_value_density", "rnn_backprop_norms"]


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
        band(ax, np.arange(1, ys.shape[1] + 1), ys, c, label, log10=True)
    ax.set_xlabel("layer l (1 = input layer, last = readout)")
    ax.set_ylabel(r"$\log_{10}\,\|\partial L/\partial\theta_l\|_F$")
    ax.set_title(title or "Per-layer gradient norm at initialisation (median, min–max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return finish(fig, created)


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
    return finish(fig, created, title, fontsize=11)


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
        band(ax, distance, ys, c, label, log10=True)
        if label in bounds:
            b = np.log10(np.asarray(bounds[label]))
            ax.plot(distance, b, color=c, ls="--", lw=1.2)
    theory_key(ax, r"Pascanu bound $(\gamma\lambda_1)^{T-k}$")
    ax.set_xlabel("T − k (steps back in time)")
    ax.set_ylabel(r"$\log_{10}\,\|\partial x_T/\partial x_k\|_2$")
    ax.set_title(title or "Backpropagation through time in a tanh RNN")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return finish(fig, created)
