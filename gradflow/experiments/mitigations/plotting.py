"""The study's figures, drawn from the numbers it saved (``summary.json``, ``curves.npz``)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from gradflow import plots
from gradflow.experiments import _io
from gradflow.experiments.mitigations.settings import RNN_VARIANTS

__all__ = [
    "figure_mlp_accuracy",
    "figure_mlp_curves",
    "figure_rnn_success",
    "figure_rnn_state_grads",
]


def figure_mlp_accuracy(summary: Mapping, *, ax: Axes | None = None) -> Figure:
    """Horizontal bars: final test accuracy per method, without and with clipping.

    Args:
      summary: the contents of ``summary.json`` (or :func:`run`'s return value): its ``mlp``
        table (:func:`mlp_table`), ``config`` (:class:`Config` as a dict) and ``dataset``.
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    rows, cfg, dataset = summary["mlp"], summary["config"], summary["dataset"]
    sgd = [r for r in rows if r["optimizer"] == "SGD"]
    methods = list(dict.fromkeys(r["method"] for r in sgd))
    other = [r for r in rows if r["optimizer"] != "SGD"]
    labels = methods + [f"{r['method']} + {r['optimizer']}" for r in other]
    created = ax is None
    fig, ax = plots.new_axes(ax, figsize=(8, 0.42 * len(labels) + 1.5))
    y = np.arange(len(labels))[::-1]
    c_no, c_clip, c_other = plots.palette(3)
    for i, m in enumerate(methods):
        for r in sgd:
            if r["method"] != m:
                continue
            off, col = (0.2, c_no) if not r["clipping"] else (-0.2, c_clip)
            ax.barh(
                y[i] + off,
                r["final_accuracy_mean"],
                height=0.38,
                color=col,
                xerr=[
                    [r["final_accuracy_mean"] - r["final_accuracy_min"]],
                    [r["final_accuracy_max"] - r["final_accuracy_mean"]],
                ],
                capsize=2,
            )
    for j, r in enumerate(other):
        i = len(methods) + j
        ax.barh(
            y[i],
            r["final_accuracy_mean"],
            height=0.5,
            color=c_other,
            xerr=[
                [r["final_accuracy_mean"] - r["final_accuracy_min"]],
                [r["final_accuracy_max"] - r["final_accuracy_mean"]],
            ],
            capsize=2,
        )
    target = cfg["target_accuracy"]
    ax.axvline(target, color="k", ls="--", lw=1, label=f"target {target:g}")
    ax.axvline(0.1, color="grey", ls=":", lw=1, label="chance (10 classes)")
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Patch(color=c_no, label="SGD"),
        Patch(color=c_clip, label=f"SGD + clipping at {cfg['clip_norm']:g}"),
        Patch(color=c_other, label="sigmoid/Glorot net, other optimisers"),
    ]
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("test accuracy after training (mean, min–max over seeds)")
    ax.set_title(
        f"Depth-{cfg['depth']} MLPs on {dataset}: {cfg['steps']} steps, {cfg['seeds']} seeds"
    )
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    if created:
        fig.tight_layout()
    return fig


def _curve_records(curves: Mapping[str, np.ndarray], prefix: str, fields) -> list[dict]:
    """The curves saved under ``prefix/<f1>/…/<fn>`` keys (the first field may hold ``/``)."""
    out = []
    for key, curve in _io.with_prefix(curves, prefix).items():
        parts = key.split("/")
        if len(parts) < len(fields):
            raise ValueError(
                f"curves key {prefix}/{key!r} does not name {'/'.join(fields)}; files written "
                "before the optimiser was part of the log10_first_over_last keys cannot be "
                "redrawn (their SGD and Rprop curves collided): rerun the study"
            )
        cut = len(parts) - len(fields) + 1
        values = ["/".join(parts[:cut]), *parts[cut:]]
        out.append(dict(zip(fields, values)) | {"curve": curve})
    return out


def _median_curve(records):
    curves = np.stack([r["curve"] for r in records])
    with warnings.catch_warnings():  # a step where every seed had diverged is NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(curves, axis=0)


_MLP_CURVES = {  # quantity -> (key prefix in curves.npz, y label, title)
    "accuracy": (
        "accuracy",
        "test accuracy (median over seeds)",
        "Depth-{depth} MLPs on {dataset}: test accuracy during training",
    ),
    "grad_ratio": (
        "log10_first_over_last",
        r"$\log_{{10}}\|\partial L/\partial\theta_1\| / \|\partial L/\partial\theta_{{{depth}}}\|$",
        "First- vs last-hidden-layer gradient norm during training (0 = no vanishing)",
    ),
}


def figure_mlp_curves(
    summary: Mapping,
    curves: Mapping[str, np.ndarray],
    *,
    quantity: str = "accuracy",
    axes=None,
) -> Figure:
    """One panel per clipping setting: a median-over-seeds curve per method (SGD runs).

    With ``quantity="accuracy"`` the other optimisers' runs (Rprop, the evolution strategy) are
    drawn in black in both panels and the target accuracy as a grey line.

    Args:
      summary: the contents of ``summary.json`` (its ``config`` and ``dataset``).
      curves: the contents of ``curves.npz``: ``steps`` ``(M,)`` and per run
        ``"accuracy/<method>/<optimiser>/clip=<bool>/seed=<int>"`` (test accuracy) and
        ``"log10_first_over_last/<method>/<optimiser>/clip=<bool>/seed=<int>"`` arrays ``(M,)``.
      quantity: ``"accuracy"`` or ``"grad_ratio"`` (log10 first/last hidden-layer gradient).
      axes: 2 axes, without then with clipping (default: a new figure, shared y).

    Returns:
      The Figure drawn into.

    Raises:
      ValueError: for another ``quantity``.
    """
    if quantity not in _MLP_CURVES:
        raise ValueError(f"quantity must be one of {list(_MLP_CURVES)}, got {quantity!r}")
    prefix, ylabel, title = _MLP_CURVES[quantity]
    cfg = summary["config"]
    ylabel = ylabel.format(depth=cfg["depth"])
    title = title.format(depth=cfg["depth"], dataset=summary["dataset"])
    steps = curves["steps"]
    records = _curve_records(curves, prefix, ("method", "optimizer", "clipping", "seed"))
    methods = list(dict.fromkeys(r["method"] for r in records if r["optimizer"] == "SGD"))
    created = axes is None
    fig, axes = plots.new_axes_grid(axes, nrows=1, ncols=2, figsize=(12, 4.5), sharey=True)
    for ax, clip in zip(axes, (False, True)):
        for m, c in zip(methods, plots.palette(len(methods))):
            rs = [
                r
                for r in records
                if r["method"] == m and r["optimizer"] == "SGD" and r["clipping"] == f"clip={clip}"
            ]
            if rs:
                ax.plot(steps, _median_curve(rs), color=c, label=m, lw=1.6)
        if quantity == "accuracy":
            others = list(dict.fromkeys(r["optimizer"] for r in records if r["optimizer"] != "SGD"))
            for o, ls in zip(others, ("--", ":")):
                rs = [r for r in records if r["optimizer"] == o]
                ax.plot(
                    steps,
                    _median_curve(rs),
                    color="k",
                    ls=ls,
                    lw=1.2,
                    label=f"sigmoid/Glorot + {o}",
                )
            ax.axhline(cfg["target_accuracy"], color="grey", lw=0.8)
        ax.set_title(f"SGD {'with' if clip else 'without'} clipping")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    if quantity == "grad_ratio":
        for ax in axes:
            ax.axhline(0.0, color="k", lw=0.8)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if created:
        fig.suptitle(title)
        fig.tight_layout()
    return fig


def figure_rnn_success(summary: Mapping, *, axes=None) -> Figure:
    """Success rate vs sequence length: one panel per (task, model), one line per variant.

    Args:
      summary: the contents of ``summary.json`` (or :func:`run`'s return value): its ``rnn``
        table (:func:`rnn_table`) and ``config``.
      axes: ``tasks × models`` axes, row-major (default: a new figure, shared x and y).

    Returns:
      The Figure drawn into.
    """
    rows, cfg = summary["rnn"], summary["config"]
    task_names = list(dict.fromkeys(r["task"] for r in rows))
    kinds = list(dict.fromkeys(r["model"] for r in rows))
    created = axes is None
    fig, axes = plots.new_axes_grid(
        axes,
        nrows=len(task_names),
        ncols=len(kinds),
        figsize=(3.6 * len(kinds), 3.0 * len(task_names)),
        sharex=True,
        sharey=True,
    )
    axes = np.reshape(axes, (len(task_names), len(kinds)))
    for i, tn in enumerate(task_names):
        for j, kind in enumerate(kinds):
            ax = axes[i, j]
            span = max(r["length"] for r in rows) - min(r["length"] for r in rows) or 1
            for n, (v, c, mk) in enumerate(zip(RNN_VARIANTS, plots.palette(3), ("o", "s", "^"))):
                rs = sorted(
                    (r for r in rows if (r["task"], r["model"], r["variant"]) == (tn, kind, v)),
                    key=lambda r: r["length"],
                )
                # a small horizontal offset per method keeps coinciding points visible
                ax.plot(
                    [r["length"] + (n - 1) * 0.015 * span for r in rs],
                    [r["success_rate"] for r in rs],
                    marker=mk,
                    color=c,
                    label=v,
                    lw=1.5,
                    alpha=0.85,
                )
            ax.set_title(f"{kind} — {tn.replace('_', ' ')}", fontsize=10)
            ax.set_xticks(sorted({r["length"] for r in rows}))
            ax.set_ylim(-0.05, 1.05)
            ax.grid(alpha=0.3)
            if i == len(task_names) - 1:
                ax.set_xlabel("sequence length T")
            if j == 0:
                ax.set_ylabel("success rate")
    axes[0, -1].legend(fontsize=8, loc="best")
    if created:
        fig.suptitle(
            f"Long-term dependencies: fraction of {cfg['rnn_seeds']} seeds solving the task "
            f"({cfg['rnn_steps']} steps)"
        )
        fig.tight_layout()
    return fig


def figure_rnn_state_grads(curves: Mapping[str, np.ndarray], *, axes=None) -> Figure:
    """‖∂E/∂h_t‖ over t at the end of training (SGD-C), longest length, one panel per task.

    Args:
      curves: the contents of ``curves.npz``: per run
        ``"state_grads/<task>/<model>/<variant>/T=<int>/seed=<int>"`` arrays ``(2, T + 1)``,
        before and after training.
      axes: one axes per task (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    fields = ("task", "model", "variant", "length", "seed")
    records = _curve_records(curves, "state_grads", fields)
    for r in records:
        r["length"] = int(r["length"].removeprefix("T="))
    T = max(r["length"] for r in records)
    task_names = list(dict.fromkeys(r["task"] for r in records))
    kinds = list(dict.fromkeys(r["model"] for r in records))
    created = axes is None
    fig, axes = plots.new_axes_grid(
        axes, nrows=1, ncols=len(task_names), figsize=(6 * len(task_names), 4)
    )
    for ax, tn in zip(axes, task_names):
        for kind, c in zip(kinds, plots.palette(len(kinds))):
            rs = [
                r
                for r in records
                if (r["task"], r["model"], r["variant"], r["length"]) == (tn, kind, "SGD-C", T)
            ]
            for when, ls, m in (("start", ":", 0), ("end", "-", -1)):
                g = np.stack([r["curve"][m] for r in rs])
                g = np.log10(np.maximum(g, np.finfo(np.float32).tiny))
                ax.plot(np.arange(T + 1), np.median(g, 0), color=c, ls=ls, label=f"{kind}, {when}")
        ax.set_xlabel("time step t (T = readout)")
        ax.set_ylabel(r"$\log_{10}\|\partial E/\partial h_t\|$")
        ax.set_title(f"{tn.replace('_', ' ')}, T = {T}, SGD-C")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    if created:
        fig.suptitle(
            "Error signal reaching each time step: before training (dotted) and after (solid)"
        )
        fig.tight_layout()
    return fig
