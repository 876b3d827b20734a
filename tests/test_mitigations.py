"""The mitigation study (tiny configuration by default, the quick mode under -m slow); the
gradient-free baselines it uses are tested in test_gradient_free.py."""

import csv
import io
import json
import math

import numpy as np
import pytest

from gradflow import experiments
from gradflow.experiments import mitigations as M

TINY = M.Config(
    depth=3,
    width=8,
    batch=16,
    steps=8,
    seeds=1,
    monitor_every=4,
    mlp_variants=("ReLU, He",),
    baselines=False,
    rnn_width=6,
    rnn_batch=8,
    rnn_steps=4,
    rnn_seeds=1,
    lengths=(10, 12),
    rnn_tasks=("temporal_order",),
    rnn_models=("RNN",),
    n_test=16,
)


def _check_outputs(out, summary, cfg):
    d = out / "mitigations"
    for name in (
        "table.md",
        "mlp.csv",
        "rnn.csv",
        "summary.json",
        "curves.npz",
        "mlp_accuracy.png",
        "mlp_learning_curves.png",
        "mlp_grad_ratio.png",
        "mlp_layer_grads.png",
        "rnn_success.png",
        "rnn_state_grads.png",
        "flossing.png",
    ):
        assert (d / name).stat().st_size > 0, name
    assert json.loads((d / "summary.json").read_text())["dataset"] == summary["dataset"]
    assert summary["dataset"] in ("digits", "synthetic_digits")
    rows = list(csv.DictReader(io.StringIO((d / "rnn.csv").read_text())))
    want = len(cfg.rnn_tasks) * len(cfg.rnn_models) * len(M.RNN_VARIANTS) * len(cfg.lengths)
    assert len(rows) == want
    assert "| method |" in (d / "table.md").read_text()
    assert "## (c) Gradient flossing" in (d / "table.md").read_text()


# Part (c) at toy size (still ~10 s of compiling).
TINY_FLOSSING = M.FLOSSING_QUICK._replace(
    length=12, width=6, k=2, seeds=2, batch=4, steps=8, preflossing_steps=30, n_test=16
)


# End to end (~15 s of compiling on 2 cores): the slow step, beside the quick study, which checks
# the same outputs; the default run keeps the table/markdown tests below.
@pytest.mark.slow
def test_tiny_study_runs(tmp_path):
    summary = M.run(tmp_path, config=TINY, flossing_config=TINY_FLOSSING)
    assert summary["mode"] == "custom"
    _check_outputs(tmp_path, summary, TINY)
    # with and without clipping for the one MLP variant
    assert [r["clipping"] for r in summary["mlp"]] == [False, True]


@pytest.mark.slow
def test_quick_study_runs(tmp_path):
    summary = M.run(tmp_path, full=False)
    assert summary["mode"] == "quick"
    _check_outputs(tmp_path, summary, M.QUICK)
    methods = {r["method"] for r in summary["mlp"]}
    assert len(methods) == 12
    assert {M.PRETRAINED, M.AMPLIFIED} <= methods
    assert any("Rprop" in r["optimizer"] for r in summary["mlp"])
    assert any("evolution" in r["optimizer"] for r in summary["mlp"])


def test_registered():
    assert experiments.get("mitigations") is M
    assert M.FULL.depth >= 20 and M.QUICK.depth >= 20
    assert max(M.FULL.lengths) == 200 and min(M.FULL.lengths) == 20


def test_tables_from_records():
    """Aggregation over seeds and the Markdown/CSV layout, on hand-made records."""
    rec = dict(
        method="tanh, Glorot",
        optimizer="SGD",
        clipping=True,
        log10_first_over_last_start=-1.0,
        log10_first_over_last_end=0.5,
        diverged=False,
        divergence_step=-1,
    )
    records = [
        rec | dict(seed=0, final_accuracy=0.9, steps_to_target=40.0),
        rec | dict(seed=1, final_accuracy=0.7, steps_to_target=math.nan),
    ]
    (row,) = M.mlp_table(records, M.QUICK)
    assert row["reached_target"] == 1 and row["median_steps_to_target"] == 40.0
    np.testing.assert_allclose(row["final_accuracy_mean"], 0.8)  # (0.9 + 0.7) / 2 in float64
    md = M.mlp_markdown([row], M.QUICK, "digits")
    assert "| tanh, Glorot | SGD | yes | 0.800 [0.700, 0.900] | 1/2 | 40 |" in md
    rnn = [
        dict(
            task="adding",
            model="LSTM",
            variant="SGD-C",
            length=T,
            seed=s,
            test_error=e,
            diverged=False,
            success=e < 0.01,
        )
        for T, s, e in [(20, 0, 0.001), (20, 1, 0.5), (40, 0, 0.2), (40, 1, 0.3)]
    ]
    rows = M.rnn_table(rnn)
    assert [r["success_rate"] for r in rows] == [0.5, 0.0]
    # median test error of (0.001, 0.5) is 0.2505, printed to 3 significant figures
    assert "| adding | LSTM | SGD-C | 0.50 [0.251] | 0.00 [0.25] |" in M.rnn_markdown(rows, M.QUICK)


def test_mitigation_variants_share_the_sigmoid_program():
    """Pre-training and amplification are applied to the sigmoid/Glorot net: same architecture
    (so they join its compiled run), same initialiser (so the amplified run's start is the plain
    run's initialisation, seed for seed)."""
    by = {v.label: v for v in M.mlp_variants()}
    base, pre, amp = by["sigmoid, Glorot (default)"], by[M.PRETRAINED], by[M.AMPLIFIED]
    assert base.arch == pre.arch == amp.arch
    assert pre.pretrain and not pre.amplify and amp.amplify and not amp.pretrain
    assert M.QUICK.amp_factor > 1 and 0 < M.QUICK.amp_fraction <= 1


def test_layer_grad_figure_and_seed_spread_from_hand_made_numbers():
    """The new figure draws from curves alone (bands over 2 seeds, -inf at the float32 floor),
    and the accuracy bars carry one dot per seed; the success-rate interval is Wilson's (at 1 of
    2 seeds: centre 0.5, half-width 1.96/(1 + 1.96²/2)·√(1/8 + 1.96²/16) ≈ 0.41)."""
    from gradflow.experiments.mitigations import plotting

    depth, L = 3, 4
    summary = {"config": M.QUICK._asdict() | {"depth": depth}, "dataset": "digits"}
    curves = {"steps": np.arange(3)}
    for m in ("sigmoid, Glorot (default)", M.PRETRAINED, M.AMPLIFIED):
        for s in range(2):
            g = np.stack([np.linspace(-6, -1, L), np.linspace(-3, -1, L)]) + s
            g[0, 0] = -np.inf
            curves[f"layer_grads/{m}/SGD/clip=False/seed={s}"] = g
    curves[f"pretrain_loss/{M.PRETRAINED}/seed=0"] = np.ones((depth, 20))
    fig = M.figure_mlp_layer_grads(summary, curves)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "after greedy pre-training" in labels and "after fine-tuning" in labels
    lo, hi = plotting._wilson(np.array([0.5]), np.array([2]))
    np.testing.assert_allclose(hi - 0.5, 1.96 / (1 + 1.96**2 / 2) * np.sqrt(1 / 8 + 1.96**2 / 16))
    np.testing.assert_allclose(0.5 - lo, hi - 0.5)
    row = {
        "method": "x",
        "optimizer": "SGD",
        "clipping": False,
        "final_accuracy_mean": 0.5,
        "final_accuracy_min": 0.4,
        "final_accuracy_max": 0.6,
        "final_accuracy_seeds": [0.4, 0.6],
    }
    fig = M.figure_mlp_accuracy({"mlp": [row], "config": summary["config"], "dataset": "d"})
    dots = [ln for ln in fig.axes[0].get_lines() if ln.get_marker() == "o"]
    assert [list(d.get_xdata()) for d in dots] == [[0.4, 0.6]]
