"""Matplotlib figure functions: each takes measured arrays and returns a Figure (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["layer_grad_norms", "log_singular_value_density", "rnn_backprop_norms", "palette"]


def palette(n: int):
    """n distinguishable colours (tab10)."""
    return [plt.get_cmap("tab10")(i % 10) for i in range(n)]


def _band(ax, x, ys, color, label, log=True):
    """Median line with a min–max band over seeds; ys of shape (seeds, len(x))."""
    ys = np.asarray(ys)
    if log:
        ys = np.log10(np.maximum(ys, np.finfo(np.float64).tiny))
    mid = np.median(ys, axis=0)
    ax.plot(x, mid, color=color, lw=1.8, label=label)
    if ys.shape[0] > 1:
        ax.fill_between(x, ys.min(0), ys.max(0), color=color, alpha=0.2, lw=0)


def layer_grad_norms(norms: Mapping[str, np.ndarray], *, title: str = "") -> plt.Figure:
    """‖∂L/∂θ_l‖ vs layer l on a log scale, one line per network.

    Args:
      norms: label -> array ``(seeds, L)`` of per-layer gradient norms, input layer first.
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for (label, ys), c in zip(norms.items(), palette(len(norms))):
        ys = np.asarray(ys)
        _band(ax, np.arange(1, ys.shape[1] + 1), ys, c, label)
    ax.set_xlabel("layer l (1 = input layer, last = readout)")
    ax.set_ylabel(r"$\log_{10}\,\|\partial L/\partial\theta_l\|_F$")
    ax.set_title(title or "Per-layer gradient norm at initialisation (median, min–max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def log_singular_value_density(
    log10_sv: Mapping[str, np.ndarray],
    *,
    floors: Mapping[str, float] | None = None,
    title: str = "",
    xlabel: str = "",
) -> plt.Figure:
    """Histogram of log10 singular values, one panel per network (shared x axis).

    Args:
      log10_sv: label -> 1-D array of log10 singular values pooled over inputs and seeds.
      floors: label -> log10 of the numerical resolution floor; values at or below it are
        unresolved (they pile up there) and the floor is drawn and labelled.
    """
    k = len(log10_sv)
    fig, axes = plt.subplots(k, 1, figsize=(7.5, 1.35 * k + 0.8), sharex=True)
    axes = np.atleast_1d(axes)
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
    fig.suptitle(title or "Singular values of the Jacobian through all hidden layers", fontsize=11)
    fig.tight_layout()
    return fig


def rnn_backprop_norms(
    distance: np.ndarray,
    norms: Mapping[str, np.ndarray],
    bounds: Mapping[str, np.ndarray],
    *,
    title: str = "",
) -> plt.Figure:
    """‖∂x_T/∂x_k‖ vs T − k (log scale) with a bound drawn dashed in the same colour.

    Args:
      distance: array ``(K,)`` of T − k.
      norms: label -> array ``(seeds, K)`` of spectral norms.
      bounds: label -> array ``(K,)`` of the bound (γλ₁)^(T−k).
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
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
    fig.tight_layout()
    return fig
