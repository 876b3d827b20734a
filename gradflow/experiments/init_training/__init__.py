"""Initialisation claims as training curves: deep logistic MLPs on digits, five inits, SGD and Adam.

Yilmaz & Poli (2022, Neural Networks 153:87–103) claim that logistic-sigmoid MLPs of 10 and 15
hidden layers train "very efficiently and effectively" once the weights have the mean −8/N;
Kumar (2017, arXiv:1704.08863) that his variance-preserving 3.6/√N makes deep sigmoid nets
trainable where Glorot's init does not; mean-field theory (Poole et al. 2016, Schoenholz et al.
2017) that χ₁ = 1 keeps depth trainable. :mod:`gradflow.experiments.init_study` measures the
gradients these inits give *at initialisation*; this experiment trains the networks.

Logistic MLPs of each depth on scikit-learn's digits (:func:`gradflow.tasks.image_classification`)
start from N(0, 1/N), Glorot (uniform), Kumar, Yilmaz–Poli and the critical init
(:mod:`~gradflow.experiments.init_training.settings`), and train with plain SGD and with Adam at
every rate of a small grid: every (optimiser, init, rate, seed) of one depth in one ``vmap`` of
:func:`gradflow.train.make_fit` (:mod:`~gradflow.experiments.init_training.measure`). The rate
with the best mean final validation accuracy (a held-out part of the training split) is reported,
by the same rule for every init. Reported per (depth, init, optimiser): steps to the target test
accuracy (runs that never reach it are censored at the last step), the final test accuracy's mean
with its 95 % Student-t interval over seeds, the gradient ratio log10 ‖∂L/∂W_first‖/‖∂L/∂W_last‖
(first vs last hidden layer, first minibatch) and χ₁ (mean ‖J_k‖²_F/N) at initialisation; then
the claims table (:mod:`~gradflow.experiments.init_training.claims`).

Quick mode (the default): depths 10 and 15 only, width 32, 120 steps, one rate per optimiser (the
full grid's middle: no selection), 8 seeds: far too few steps for deep sigmoid nets to train, so
its verdicts describe the first 120 steps only. ``full=True``: depths 5–20, 16 seeds, 1500 steps,
three rates per optimiser.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from gradflow import meanfield, progress, tasks
from gradflow.experiments import _io
from gradflow.experiments.init_training.analysis import choose_rates, rows_and_cells
from gradflow.experiments.init_training.claims import claims_table
from gradflow.experiments.init_training.measure import run_groups, split
from gradflow.experiments.init_training.plotting import figure_depth, figure_learning_curves
from gradflow.experiments.init_training.settings import (
    FULL,
    INITS,
    OPTIMIZERS,
    QUICK,
    Settings,
    check_settings,
)

__all__ = ["NAME", "DESCRIPTION", "run", "study", "figures", "measure_arrays", "summarise"]

NAME = "init_training"
DESCRIPTION = (
    "Yilmaz–Poli/Kumar/critical vs Glorot, N(0,1/N): deep logistic MLPs trained on digits "
    "(SGD, Adam), claims table"
)


def measure_arrays(st: Settings, data: tasks.ImageData) -> dict[str, np.ndarray]:
    """Trains every configuration and returns the arrays :func:`figures` draws from.

    Returns:
      dict of arrays (D depths, I inits, R rates, S seeds, M monitored steps): ``depths``,
      ``steps``, ``"<opt>/rates"`` ``(R,)``, ``"<opt>/test_accuracy"`` ``(D, I, R, S, M)``;
      ``"<opt>/<x>"`` ``(D, I, R, S)`` for x in final_test_accuracy, final_val_accuracy and
      diverged; ``"<opt>/chosen"`` ``(D, I)``; ``log10_grad_ratio`` and ``chi1``
      ``(D, I, S)``; ``chi1_mean_field`` ``(I,)``.
    """
    runs = run_groups(st, split(data, st.validation_fraction), on_stage=progress.stage)
    depths = list(st.depths)
    arrays = {"depths": np.asarray(depths), "steps": np.arange(0, st.steps, st.monitor_every)}
    fields = ("test_accuracy", "final_test_accuracy", "final_val_accuracy")
    for o, opt in enumerate(OPTIMIZERS):
        for k in (*fields, "diverged"):
            arrays[f"{opt}/{k}"] = np.stack([getattr(runs[d][0], k)[o] for d in depths])
        arrays[f"{opt}/rates"] = np.asarray(st.rates(opt))
        arrays[f"{opt}/chosen"] = choose_rates(arrays[f"{opt}/final_val_accuracy"])
    # At initialisation the parameters and the first minibatch are the same for every optimiser
    # and rate: SGD's first rate stands for all. Layers run input first, readout last, so the
    # last hidden layer is index −2.
    g = [runs[d][0].grad_log10_at_init[0, :, 0] for d in depths]  # (I, S, depth + 1) each
    arrays["log10_grad_ratio"] = np.stack([x[..., 0] - x[..., -2] for x in g])
    arrays["chi1"] = np.stack([runs[d][1] for d in depths])
    arrays["chi1_mean_field"] = np.asarray(
        [
            np.nan if s.sigma_w2 is None else float(meanfield.chi1("sigmoid", s.sigma_w2(), 0.0))
            for s in INITS
        ]
    )
    return arrays


def summarise(st: Settings, arrays, *, data_name: str, full: bool) -> dict:
    """The JSON summary: settings, one row per (depth, init, optimiser) and the claims table."""
    keys, labels = [s.key for s in INITS], [s.label for s in INITS]
    rows, cells = rows_and_cells(
        arrays,
        init_keys=keys,
        init_labels=labels,
        optimizers=OPTIMIZERS,
        target=st.target,
        chi1_mean_field=arrays["chi1_mean_field"],
    )
    rule = (
        "the rate with the best mean final validation accuracy (20 % of the training split held "
        "out), chosen the same way for every init, from the grid"
        if len(st.sgd_rates) > 1
        else "one rate per optimiser fixed in advance (the full grid's middle), the same for "
        "every init and depth"
    )
    conditions = (
        f"{'full' if full else 'quick'} mode, {data_name}: depths {list(st.depths)}, width "
        f"{st.width}, {st.steps} steps of batch {st.batch}, {st.seeds} seeds; rates SGD "
        f"{list(st.sgd_rates)}, Adam {list(st.adam_rates)}"
        + (" (chosen on validation)" if len(st.sgd_rates) > 1 else " (fixed)")
        + f"; target test accuracy {st.target}"
    )
    return {
        "mode": "full" if full else "quick",
        "data": data_name,
        "settings": st._asdict(),
        "inits": dict(zip(keys, labels)),
        "optimizers": {"sgd": "plain SGD (no momentum)", "adam": "Adam (optax defaults)"},
        "learning_rate_rule": rule,
        "target_accuracy": st.target,
        "confidence_interval": "95 % Student-t interval of the mean final test accuracy over seeds",
        "steps_to_target": (
            f"first monitored step (every {st.monitor_every}) with test accuracy >= {st.target}; "
            f"runs that never reach it are censored at step {st.steps - st.monitor_every} ('inf' "
            "median: half or more never reached it)"
        ),
        "trains_means": "more than half of the seeds reach the target",
        "gradient_ratio": "log10 ‖∂L/∂W_first‖/‖∂L/∂W_last‖ of the hidden layers at "
        "initialisation, cross-entropy on the first minibatch",
        "chi1": f"empirical: mean ‖J_k‖²_F/N over the hidden-to-hidden Jacobians at "
        f"{st.chi1_inputs} test inputs; mean field: gradflow.meanfield.chi1 (zero-mean inits)",
        "rows": rows,
        "claims": [
            row | {"conditions": conditions} for row in claims_table(cells, OPTIMIZERS, st.target)
        ],
    }


def _figures(arrays, summary) -> dict[str, Figure]:
    labels = list(summary["inits"].values())
    target = summary["target_accuracy"]
    figs = {
        f"learning_curves_{o}": figure_learning_curves(
            arrays, optimizer=o, labels=labels, target=target
        )
        for o in OPTIMIZERS
    }
    figs["accuracy_vs_depth"] = figure_depth(arrays, labels=labels, optimizers=OPTIMIZERS)
    return figs


def study(out, st: Settings, *, full: bool = False, data: tasks.ImageData | None = None) -> dict:
    """Trains, saves the numbers (``init_training.npz``, ``summary.json``) and the figures.

    Args:
      out: the output directory (created).
      st: the settings (checked here: one clear error for a bad field).
      full: recorded in the summary (which preset ``st`` came from).
      data: the image task (default :func:`gradflow.tasks.image_classification`).

    Returns:
      The summary.
    """
    st = check_settings(st)
    out = Path(out)
    data = tasks.image_classification() if data is None else data
    arrays = measure_arrays(st, data)
    summary = summarise(st, arrays, data_name=data.name, full=full)
    _io.save_npz(arrays, out / "init_training.npz")
    _io.save_json(summary, out / "summary.json")
    for name, fig in _figures(arrays, summary).items():
        _io.save_figure(fig, out / f"{name}.png")
    return summary


def run(out_dir, *, full: bool = False) -> dict:
    """Writes the figures and numbers to ``out_dir/init_training``; returns the summary."""
    return study(Path(out_dir) / NAME, FULL if full else QUICK, full=full)


def figures(out_dir) -> dict[str, Figure]:
    """Redraws every figure of :func:`run` from ``out_dir/init_training`` (no training).

    Returns:
      ``{file stem: Figure}``, the stems of the PNG/PDF files :func:`run` wrote.
    """
    out = Path(out_dir) / NAME
    return _figures(_io.load_npz(out / "init_training.npz"), _io.load_json(out / "summary.json"))
