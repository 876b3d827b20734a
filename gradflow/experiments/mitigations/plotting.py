"""The study's figures, drawn from the numbers it saved (``summary.json``, ``curves.npz``)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from gradflow import plots
from gradflow.experiments import _io
from gradflow.experiments.mitigations.settings import AMPLIFIED, PRETRAINED, RNN_VARIANTS
from gradflow.plots._base import band

__all__ = [
    "figure_mlp_accuracy",
    "figure_mlp_curves",
    "figure_mlp_layer_grads",
    "figure_rnn_success",
    "figure_rnn_state_grads",
]

# log10 of float32's smallest normal number: a gradient norm that underflowed to 0 is drawn here
_FLOOR = float(np.log10(np.finfo(np.float32).tiny))


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
            _seed_dots(ax, y[i] + off, r)
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
        _seed_dots(ax, y[i], r)
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
    ax.set_xlabel("test accuracy after training (bar: mean; whiskers: min–max; dots: seeds)")
    ax.set_title(
        f"Depth-{cfg['depth']} MLPs on {dataset}: {cfg['steps']} steps, {cfg['seeds']} seeds"
    )
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    if created:
        fig.tight_layout()
    return fig


def _tab20(n: int):
    cmap = matplotlib.colormaps["tab20"]
    # dark shades first, then the light ones: neighbours in the legend stay distinct
    return [cmap((2 * i) % 20 + (2 * i) // 20) for i in range(n)]


def _seed_dots(ax: Axes, y: float, row: Mapping) -> None:
    """Every seed's final accuracy as a small black dot on its bar (rows from older files, which
    lack them, are drawn without)."""
    accs = row.get("final_accuracy_seeds") or []
    ax.plot(accs, [y] * len(accs), "o", color="k", ms=2.5, zorder=3)


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


def _spread(ax: Axes, x, records, color, alpha=0.15) -> None:
    """The min–max band over seeds around a median curve (finite values only; -inf, an
    underflowed gradient, at the float32 floor)."""
    if len(records) < 2:
        return
    ys = np.stack([r["curve"] for r in records]).astype(np.float64)
    ys = np.where(np.isneginf(ys), _FLOOR, ys)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)
    ax.fill_between(x, lo, hi, color=color, alpha=alpha, lw=0)


_MLP_CURVES = {  # quantity -> (key prefix in curves.npz, y label, title)
    "accuracy": (
        "accuracy",
        "test accuracy (median, min–max band over seeds)",
        "Depth-{depth} MLPs on {dataset}: test accuracy during training",
    ),
    "grad_ratio": (
        "log10_first_over_last",
        r"$\log_{{10}}\|\partial L/\partial\theta_1\| / \|\partial L/\partial\theta_{{{depth}}}\|$",
        "First- vs last-hidden-layer gradient norm during training (0 = no vanishing; median, "
        "min–max band over seeds)",
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
    # tab20 beyond ten methods: tab10 (plots.palette) would repeat its colours
    colours = plots.palette(len(methods)) if len(methods) <= 10 else _tab20(len(methods))
    for ax, clip in zip(axes, (False, True)):
        for m, c in zip(methods, colours):
            rs = [
                r
                for r in records
                if r["method"] == m and r["optimizer"] == "SGD" and r["clipping"] == f"clip={clip}"
            ]
            if rs:
                ax.plot(steps, _median_curve(rs), color=c, label=m, lw=1.6)
                _spread(ax, steps, rs, c)
        if quantity == "accuracy":
            others = list(dict.fromkeys(r["optimizer"] for r in records if r["optimizer"] != "SGD"))
            for o, ls in zip(others, ("--", ":")):
                rs = [r for r in records if r["optimizer"] == o]
                _spread(ax, steps, rs, "k", alpha=0.08)
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


def _wilson(rate, n, z: float = 1.96):
    """The Wilson score interval of a success rate over n seeds (95% by default): arrays
    ``(lo, hi)``. Unlike the normal approximation it is not degenerate at rates 0 and 1."""
    rate, n = np.asarray(rate, np.float64), np.asarray(n, np.float64)
    centre = (rate + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(rate * (1 - rate) / n + z**2 / (4 * n**2))
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def figure_mlp_layer_grads(
    summary: Mapping, curves: Mapping[str, np.ndarray], *, axes=None
) -> Figure:
    """Per-layer gradient norms of the sigmoid/Glorot net: at initialisation, after greedy
    pre-training and after fine-tuning (and after plain and amplified training), with the
    pre-training's reconstruction error per level.

    Left: log10 ‖∂L/∂θ_l‖ vs layer l (1 = input layer, last = readout) at the first monitored
    step (dashed) and at the end of training (solid), SGD without clipping; median and min–max
    band over seeds. Right (only when the run pre-trained): each level's final reconstruction
    error (mean of its last 10 steps), one dot per seed. When the configuration has neither
    mitigation, the first SGD method is drawn alone.

    Args:
      summary: the contents of ``summary.json`` (its ``config`` and ``dataset``).
      curves: the contents of ``curves.npz``: ``"layer_grads/<method>/<optimiser>/clip=<bool>/
        seed=<int>"`` arrays ``(2, L)`` (log10 norms at the start and the end) and
        ``"pretrain_loss/<method>/seed=<int>"`` arrays ``(levels, steps)``.
      axes: 2 axes, or 1 when ``curves`` hold no pre-training run (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    cfg = summary["config"]
    records = [
        r
        for r in _curve_records(curves, "layer_grads", ("method", "optimizer", "clipping", "seed"))
        if r["optimizer"] == "SGD" and r["clipping"] == "clip=False"
    ]
    present = list(dict.fromkeys(r["method"] for r in records))
    base = "sigmoid, Glorot (default)"
    shown = [m for m in (base, PRETRAINED, AMPLIFIED) if m in present] or present[:1]
    names = {  # method -> (label at start, label at end); None: not drawn
        base: ("at initialisation", "after SGD"),
        PRETRAINED: ("after greedy pre-training", "after fine-tuning"),
        AMPLIFIED: (None, "after SGD with amplification"),  # its start is the base's init
    }
    losses = _io.with_prefix(curves, "pretrain_loss")
    panels = 2 if losses else 1
    created = axes is None
    fig, axes = plots.new_axes_grid(axes, nrows=1, ncols=panels, figsize=(6.5 * panels, 4.5))
    ax = axes[0]
    floored = False
    for m, c in zip(shown, plots.palette(len(shown))):
        ys = np.stack([r["curve"] for r in records if r["method"] == m]).astype(np.float64)
        floored |= bool(np.isneginf(ys).any())
        ys = np.where(np.isneginf(ys), _FLOOR, ys)  # underflowed to 0 in float32
        layers = np.arange(1, ys.shape[-1] + 1)
        for when, ls in ((0, "--"), (1, "-")):
            label = names.get(m, (f"{m}, start", f"{m}, end"))[when]
            if label is not None:
                band(ax, layers, ys[:, when], c, label, ls=ls)
    if floored:
        ax.axhline(_FLOOR, color="grey", lw=0.8, ls=":", label="float32 underflow (norm 0)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("layer l (1 = input layer, last = readout)")
    ax.set_ylabel(r"$\log_{10}\|\partial L/\partial\theta_l\|_F$")
    ax.set_title("Sigmoid/Glorot net, SGD: per-layer gradient norms (median, min–max)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if losses:
        _pretrain_panel(axes[1], losses, cfg)
    if created:
        fig.suptitle(
            f"Depth-{cfg['depth']} sigmoid MLPs on {summary['dataset']}: gradients before and "
            "after pre-training"
        )
        fig.tight_layout()
    return fig


def _pretrain_panel(ax: Axes, losses: Mapping[str, np.ndarray], cfg: Mapping) -> None:
    """Each level's final reconstruction error (mean of its last 10 steps), a dot per seed."""
    for (key, loss), c in zip(sorted(losses.items()), plots.palette(len(losses))):
        final = np.asarray(loss)[:, -10:].mean(-1)
        label = key.rsplit("/", 1)[-1].replace("=", " ")
        ax.plot(np.arange(1, final.size + 1), final, "o", color=c, ms=4, label=label)
    ax.set_yscale("log")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("level (1 = input layer)")
    ax.set_ylabel("reconstruction error at the end (MSE)")
    ax.set_title(
        f"Greedy pre-training ({cfg.get('pretrain_method', 'autoencoder')}s, "
        f"{cfg.get('pretrain_steps', '?')} steps per level), one dot per seed",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


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
                xs = [r["length"] + (n - 1) * 0.015 * span for r in rs]
                rate = np.array([r["success_rate"] for r in rs])
                lo, hi = _wilson(rate, np.array([r["seeds"] for r in rs]))
                ax.errorbar(
                    xs,
                    rate,
                    yerr=[rate - lo, hi - rate],
                    marker=mk,
                    color=c,
                    label=v,
                    lw=1.5,
                    alpha=0.85,
                    capsize=2,
                    elinewidth=0.8,
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
            f"({cfg['rnn_steps']} steps; bars: 95% Wilson interval over seeds)"
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
                g = np.maximum(g, np.finfo(np.float32).tiny)
                band(ax, np.arange(T + 1), g, c, f"{kind}, {when}", log10=True, ls=ls, lw=1.5)
        ax.set_xlabel("time step t (T = readout)")
        ax.set_ylabel(r"$\log_{10}\|\partial E/\partial h_t\|$")
        ax.set_title(f"{tn.replace('_', ' ')}, T = {T}, SGD-C")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    if created:
        fig.suptitle(
            "Error signal reaching each time step: before training (dotted) and after (solid); "
            "median, min–max band over seeds"
        )
        fig.tight_layout()
    return fig
