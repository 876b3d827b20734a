"""The remedies for vanishing and exploding gradients, compared on the same tasks.

(a) Deep MLPs (depth ≥ 20) on an image task (scikit-learn's bundled 8×8 digits, or a generated
digit-like task without scikit-learn): sigmoid with Glorot's ("default"), Kumar's and
Yilmaz–Poli's initialisations, the sigmoid/Glorot net after greedy layer-wise pre-training
(stacked autoencoders, :mod:`gradflow.train.pretraining`) and with gradient amplification
(Basodi et al. 2020, :mod:`gradflow.train.amplification`), tanh/Glorot, ReLU/He, leaky ReLU,
GELU, a residual ReLU net, BatchNorm and LayerNorm, each trained by SGD with momentum with and
without gradient-norm clipping; plus sign-based Rprop (full batch) and a gradient-free evolution
strategy on the sigmoid/Glorot net. Recorded: final test accuracy (every seed), steps to a
target accuracy, the first/last hidden layer gradient-norm ratio over training, and the
per-layer gradient norms at the start and the end of training (from
:func:`gradflow.train.fit`'s monitors) — for the pre-trained net, after pre-training and after
fine-tuning.

(b) RNN (tanh, Pascanu's form) vs LSTM vs GRU on the adding and temporal-order problems at
several sequence lengths, trained by SGD ("SGD"), SGD with clipping ("SGD-C") and SGD with
clipping and Pascanu's regulariser ("SGD-CR") — the three methods of Pascanu, Mikolov & Bengio
2013 (arXiv:1211.5063), §4. Recorded: success rate (final test error below the task's threshold,
without divergence) vs length, and the per-time-step state-gradient norms ‖∂E/∂h_t‖.

Seeds, clipping on/off, initialisations that share an architecture, sequence lengths (quick mode)
and the three SGD variants are all ``vmap``-ed into one compiled run per architecture.

Modules: :mod:`~gradflow.experiments.mitigations.settings` (sizes, the MLP variants),
:mod:`~gradflow.experiments.mitigations.measure` (the training runs → records),
:mod:`~gradflow.experiments.mitigations.tables` (records → tables) and
:mod:`~gradflow.experiments.mitigations.plotting` (saved numbers → figures); :func:`run` chains
them and saves the numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from gradflow import progress, tasks
from gradflow._io import atomic_write
from gradflow.chain import Chain as Chain  # re-exported: the module's public names before the split
from gradflow.chain import final_state as final_state
from gradflow.experiments import _io
from gradflow.experiments.mitigations import measure
from gradflow.experiments.mitigations.flossing import (
    FLOSSING_FULL,
    FLOSSING_QUICK,
    FlossingConfig,
    figure_flossing,
    flossing_table,
    run_flossing,
)
from gradflow.experiments.mitigations.measure import run_mlp, run_rnn
from gradflow.experiments.mitigations.plotting import (
    figure_mlp_accuracy,
    figure_mlp_curves,
    figure_mlp_layer_grads,
    figure_rnn_state_grads,
    figure_rnn_success,
)
from gradflow.experiments.mitigations.settings import AMPLIFIED as AMPLIFIED
from gradflow.experiments.mitigations.settings import (
    FULL,
    QUICK,
    Config,
    MLPVariant,
    mlp_variants,
)
from gradflow.experiments.mitigations.settings import PRETRAINED as PRETRAINED
from gradflow.experiments.mitigations.settings import RNN_VARIANTS as RNN_VARIANTS
from gradflow.experiments.mitigations.tables import (
    mlp_markdown,
    mlp_table,
    rnn_markdown,
    rnn_table,
    to_csv,
)

__all__ = [
    "NAME",
    "DESCRIPTION",
    "Config",
    "QUICK",
    "FULL",
    "MLPVariant",
    "mlp_variants",
    "run_mlp",
    "run_rnn",
    "mlp_table",
    "rnn_table",
    "mlp_markdown",
    "rnn_markdown",
    "run",
    "figure_mlp_accuracy",
    "figure_mlp_curves",
    "figure_mlp_layer_grads",
    "figure_rnn_success",
    "figure_rnn_state_grads",
    "figures",
    "FlossingConfig",
    "FLOSSING_QUICK",
    "FLOSSING_FULL",
    "run_flossing",
    "flossing_table",
    "figure_flossing",
]

NAME = "mitigations"
DESCRIPTION = (
    "remedies compared: deep MLPs on digits (inits, activations, residual, norms, clipping, "
    "Rprop, ES) and RNN/LSTM/GRU on adding/temporal order (SGD, clipping, Pascanu's regulariser)"
)


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _figures(summary: Mapping, curves: Mapping[str, np.ndarray]) -> dict[str, Figure]:
    # the figure functions are looked up here, in the package, so that patching them there (as
    # tests/test_plots.py does) reaches figures() and run()
    return {
        "mlp_accuracy": figure_mlp_accuracy(summary),
        "mlp_learning_curves": figure_mlp_curves(summary, curves, quantity="accuracy"),
        "mlp_grad_ratio": figure_mlp_curves(summary, curves, quantity="grad_ratio"),
        "mlp_layer_grads": figure_mlp_layer_grads(summary, curves),
        "rnn_success": figure_rnn_success(summary),
        "rnn_state_grads": figure_rnn_state_grads(curves),
        "flossing": figure_flossing(curves),
    }


def figures(out_dir) -> dict[str, Figure]:
    """Redraws every figure of :func:`run` from the numbers it saved in ``out_dir/mitigations``.

    Args:
      out_dir: the directory given to :func:`run`.

    Returns:
      ``{file stem: Figure}``, the stems of the PNG/PDF files :func:`run` wrote.
    """
    out = Path(out_dir) / NAME
    return _figures(_io.load_json(out / "summary.json"), _io.load_npz(out / "curves.npz"))


def run(
    out_dir,
    *,
    full: bool = False,
    config: Config | None = None,
    flossing_config: FlossingConfig | None = None,
) -> dict:
    """Runs parts (a), (b) and (c), writes tables, figures and numbers to ``out_dir/mitigations``.

    Args:
      out_dir: output directory.
      full: paper-sized :data:`FULL` (and :data:`FLOSSING_FULL`) instead of :data:`QUICK`
        (and :data:`FLOSSING_QUICK`).
      config: explicit :class:`Config` (overrides ``full``; the tests use a tiny one).
      flossing_config: explicit :class:`FlossingConfig` for part (c) (overrides ``full``).

    Returns:
      A JSON-able summary (dataset, configuration, both tables).
    """
    cfg = config or (FULL if full else QUICK)
    mode = "full" if cfg == FULL else ("quick" if cfg == QUICK else "custom")
    out = Path(out_dir) / NAME
    data = tasks.image_classification()
    with measure.compile_pool() as pool:
        # Both parts are queued before either is waited for, part (b) first: its runs take
        # longest, so they start while part (a)'s compile (see measure.Pending).
        progress.stage("compiling and training")
        rnn_pending = measure.start_rnn(cfg, pool)
        mlp_pending, steps = measure.start_mlp(cfg, data, pool)
        progress.stage("part (a): training the deep MLPs")
        mlp_records = mlp_pending.collect()
        progress.stage("part (b): training the RNNs on the long-lag tasks")
        rnn_records = rnn_pending.collect()
    progress.stage("part (c): gradient flossing (Engelken 2023)")
    floss_summary, floss_curves = run_flossing(full=full, config=flossing_config)
    mlp_rows = mlp_table(mlp_records, cfg)
    rnn_rows = rnn_table(rnn_records)

    md_mlp = mlp_markdown(mlp_rows, cfg, data.name)
    md_rnn = rnn_markdown(rnn_rows, cfg)
    _write_text(out / "mlp.csv", to_csv(mlp_rows))
    _write_text(out / "rnn.csv", to_csv(rnn_rows))
    _write_text(
        out / "table.md",
        f"# Mitigations ({mode} mode)\n\n## (a) Deep MLPs\n\n{md_mlp}\n"
        f"## (b) Long-term dependencies\n\n{md_rnn}"
        f"\n## (c) Gradient flossing\n\n{flossing_table(floss_summary)}",
    )
    run_key = "{method}/{optimizer}/clip={clipping}/seed={seed}"
    curves = (
        {"steps": steps}
        | {f"accuracy/{run_key.format(**r)}": r["_acc_curve"] for r in mlp_records}
        | {
            # keyed by optimiser too: Rprop's runs share method, clipping and seed with SGD's
            f"log10_first_over_last/{run_key.format(**r)}": r["_ratio_curve"]
            for r in mlp_records
            if r["_ratio_curve"] is not None
        }
        | {
            # log10 per-layer gradient norms (2, L): at the start and at the end of training
            f"layer_grads/{run_key.format(**r)}": r["_layer_grads"]
            for r in mlp_records
            if r["_layer_grads"] is not None
        }
        | {
            # per level (depth, pretrain_steps); both clipping settings share one pre-training
            "pretrain_loss/{method}/seed={seed}".format(**r): r["_pretrain_losses"]
            for r in mlp_records
            if "_pretrain_losses" in r
        }
        | {
            "state_grads/{task}/{model}/{variant}/T={length}/seed={seed}".format(**r): r[
                "_state_grads"
            ]
            for r in rnn_records
        }
        | floss_curves
    )
    _io.save_npz(curves, out / "curves.npz")
    summary = {
        "mode": mode,
        "dataset": data.name,
        "config": cfg._asdict(),
        "mlp": mlp_rows,
        "rnn": rnn_rows,
        "flossing": floss_summary,
    }
    for name, fig in _figures(summary, curves).items():
        _io.save_figure(fig, out / f"{name}.png")
    _io.save_json(summary, out / "summary.json")
    return summary
