"""The study's figures, drawn from the arrays :func:`~gradflow.experiments.init_training.run`
saves in ``init_training.npz`` (so :func:`~gradflow.experiments.init_training.figures` redraws
them without training).

Arrays (D depths, I inits, R rates, S seeds, M monitored steps): ``depths`` ``(D,)``, ``steps``
``(M,)``, ``"<opt>/test_accuracy"`` ``(D, I, R, S, M)``, ``"<opt>/final_test_accuracy"``
``(D, I, R, S)``, ``"<opt>/chosen"`` ``(D, I)`` (index of the chosen rate), ``log10_grad_ratio``
and ``chi1`` ``(D, I, S)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from gradflow import plots
from gradflow.experiments.init_training.stats import t_interval

__all__ = ["chosen", "figure_learning_curves", "figure_depth"]


def chosen(data: Mapping[str, np.ndarray], optimizer: str, name: str) -> np.ndarray:
    """``data["<optimizer>/<name>"]`` at each (depth, init)'s chosen rate: ``(D, I, S, …)``."""
    a = np.asarray(data[f"{optimizer}/{name}"])
    pick = np.asarray(data[f"{optimizer}/chosen"])  # (D, I)
    d, i = np.meshgrid(np.arange(pick.shape[0]), np.arange(pick.shape[1]), indexing="ij")
    return a[d, i, pick]


def figure_learning_curves(
    data: Mapping[str, np.ndarray],
    *,
    optimizer: str,
    labels: Sequence[str],
    target: float,
    axes=None,
) -> Figure:
    """Test accuracy against step: one panel per (depth, init), median and min–max over seeds.

    Args:
      data: the saved arrays (see the module docstring).
      optimizer: "sgd" or "adam".
      labels: the I init labels.
      target: the target accuracy (dashed line).
      axes: D × I axes, row-major (depth rows, init columns); default a new figure.

    Returns:
      The Figure drawn into.
    """
    depths = [int(d) for d in data["depths"]]
    steps = np.asarray(data["steps"])
    acc = chosen(data, optimizer, "test_accuracy")  # (D, I, S, M)
    rates = np.asarray(data[f"{optimizer}/rates"])
    pick = np.asarray(data[f"{optimizer}/chosen"])
    created = axes is None
    fig, grid = plots.new_axes_grid(
        axes,
        nrows=len(depths),
        ncols=len(labels),
        figsize=(2.6 * len(labels), 2.0 * len(depths) + 0.8),
        sharex=True,
        sharey=True,
    )
    grid = np.asarray(grid, dtype=object).reshape(len(depths), len(labels))
    colors = plots.palette(len(labels))
    for r, d in enumerate(depths):
        for c, label in enumerate(labels):
            ax = grid[r, c]
            ys = acc[r, c]  # (S, M)
            for y in ys:  # every seed, thin
                ax.plot(steps, y, color=colors[c], lw=0.5, alpha=0.35)
            ax.plot(steps, np.nanmedian(ys, axis=0), color=colors[c], lw=1.8)
            ax.axhline(target, color="0.4", ls="--", lw=0.8)
            ax.set_ylim(0.0, 1.0)
            ax.text(
                0.97, 0.05, f"lr {rates[pick[r, c]]:g}", transform=ax.transAxes, ha="right",
                fontsize=7,
            )  # fmt: skip
            if r == 0:
                ax.set_title(label, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"depth {d}\ntest accuracy", fontsize=8)
            if r == len(depths) - 1:
                ax.set_xlabel("step", fontsize=8)
    if created:
        name = {"sgd": "plain SGD", "adam": "Adam"}.get(optimizer, optimizer)
        fig.suptitle(
            f"Logistic MLPs on digits, {name}: test accuracy (median, "
            f"{acc.shape[2]} seeds as thin lines); dashed: target {target:g}"
        )
        fig.tight_layout()
    return fig


def figure_depth(
    data: Mapping[str, np.ndarray],
    *,
    labels: Sequence[str],
    optimizers: Sequence[str] = ("sgd", "adam"),
    axes=None,
) -> Figure:
    """Final test accuracy against depth (mean, 95 % t-interval) per optimiser, beside the
    gradient ratio log10 ‖∂L/∂W_first‖/‖∂L/∂W_last‖ and χ₁ at initialisation.

    Args:
      data: the saved arrays (see the module docstring).
      labels: the I init labels.
      optimizers: one accuracy panel each.
      axes: ``len(optimizers) + 2`` axes (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    depths = np.asarray(data["depths"], float)
    n = len(optimizers) + 2
    created = axes is None
    fig, panels = plots.new_axes_grid(axes, nrows=1, ncols=n, figsize=(4.6 * n, 4.2))
    colors = plots.palette(len(labels))
    # Offsets keep the inits' error bars apart at each depth.
    shift = (np.arange(len(labels)) - (len(labels) - 1) / 2) * 0.25
    for ax, opt in zip(panels, optimizers):
        acc = chosen(data, opt, "final_test_accuracy")  # (D, I, S)
        for i, label in enumerate(labels):
            ci = [t_interval(acc[k, i]) for k in range(len(depths))]
            mean = np.array([c.mean for c in ci])
            err = np.array([[c.mean - c.low for c in ci], [c.high - c.mean for c in ci]])
            ax.errorbar(
                depths + shift[i], mean, yerr=err, fmt="o-", ms=4, lw=1.4, capsize=3,
                color=colors[i], label=label,
            )  # fmt: skip
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("hidden layers")
        ax.set_ylabel("final test accuracy (mean, 95 % t-CI)")
        ax.set_title({"sgd": "plain SGD", "adam": "Adam"}.get(opt, opt))
    for ax, key, ylabel, title in (
        (panels[-2], "log10_grad_ratio", "log10 ‖∂L/∂W_first‖ / ‖∂L/∂W_last‖", "gradient ratio"),
        (panels[-1], "chi1", "χ₁ (mean ‖J_k‖²_F / N)", "χ₁"),
    ):
        values = np.asarray(data[key])  # (D, I, S)
        for i, label in enumerate(labels):
            _median_band(ax, depths, values[:, i], colors[i], label)
        ax.set_xlabel("hidden layers")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} at initialisation (median, min–max)")
    panels[-1].axhline(1.0, color="0.4", ls="--", lw=0.8)
    panels[-1].set_yscale("log")
    panels[0].legend(fontsize=7)
    if created:
        fig.suptitle("Logistic MLPs on digits: accuracy after training vs gradients at init")
        fig.tight_layout()
    return fig


def _median_band(ax, x, ys, color, label) -> None:
    """Median over seeds with a min–max band; ``ys`` ``(len(x), seeds)``."""
    ys = np.asarray(ys, float)
    ax.plot(x, np.nanmedian(ys, axis=1), "o-", color=color, lw=1.6, ms=4, label=label)
    ax.fill_between(x, np.nanmin(ys, axis=1), np.nanmax(ys, axis=1), color=color, alpha=0.2, lw=0)
