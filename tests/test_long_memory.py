"""gradflow.experiments.long_memory: Pascanu et al. 2013's success rate vs length."""

import json
import math

import jax
import numpy as np
import pytest

from gradflow import tasks
from gradflow.experiments import long_memory as lm

# Tiny sizes: two lengths of one task in one program (the shorter padded), 2 seeds × 3 methods.
TINY = lm.Settings(
    tasks=("temporal_order",),
    lengths=(10, 12),
    seeds=2,
    width=6,
    batch=4,
    steps=4,
    learning_rate=0.5,
    clip_norm=0.05,
    alpha=4.0,
    n_test=8,
    test_chunk=4,
    share_lengths=True,
)


@pytest.fixture(scope="module")
def tiny_program():
    s = lm.check_settings(TINY)
    fn, args, runs = lm.train_runs(s, "temporal_order", s.lengths)
    out = jax.jit(fn)(*args)
    return fn, args, runs, jax.device_get(out)


@pytest.mark.slow  # two compilations of the training program (~15 s on 2 cores)
def test_vmapped_runs_equal_separate_runs(tiny_program):
    """Each of the 12 vmapped (length, method, seed) runs equals that run compiled alone."""
    fn, args, runs, out = tiny_program
    single = jax.jit(fn)  # one compilation (R = 1) serves every run
    for i in range(len(runs.methods)):
        alone = single(*jax.tree_util.tree_map(lambda a, i=i: a[i : i + 1], args))
        for got, want in zip(jax.device_get(alone), out):
            # the same float32 operations batched or not; XLA may order a batched dot's sums
            # differently, so the 4-step training loss agrees to rounding, not bit for bit
            np.testing.assert_allclose(got[0], want[i], rtol=1e-4, atol=1e-6, err_msg=str(i))


@pytest.mark.slow
def test_methods_are_wired_as_named(tiny_program):
    """Same seed and length: SGD-C differs from SGD (clipping at 0.05 bites at learning rate
    0.5), SGD-CR from SGD-C (α Ω); the lengths and seeds are the ones asked for."""
    _, args, runs, out = tiny_program
    loss = np.asarray(out[3])
    assert runs.lengths == (10,) * 6 + (12,) * 6
    assert runs.methods[:6] == ("SGD",) * 2 + ("SGD-C",) * 2 + ("SGD-CR",) * 2
    assert runs.seeds[:6] == (0, 1) * 3
    np.testing.assert_array_equal(args[1], [2] * 6 + [0] * 6)  # padding steps at the start
    clip = np.asarray(args[2])
    assert np.all(np.isinf(clip[[0, 1, 6, 7]])) and np.all(clip[[2, 3, 4, 5]] == 0.05)
    np.testing.assert_array_equal(args[3], [0, 0, 0, 0, 4, 4] * 2)
    for a, b in [(0, 2), (2, 4)]:
        assert np.all(np.abs(loss[a : a + 2] - loss[b : b + 2]) > 1e-6)
    # the seeds share nothing but the settings
    assert loss[0] != loss[1]


def test_success_criterion():
    """< 1 % misclassified and no divergence (Pascanu et al. 2013, §4.1.1)."""
    got = lm.success([0.0, 0.0099, 0.01, 0.5, 0.0, math.nan], [0, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(got, [True, True, False, False, False, False])


def test_success_table_counts_and_intervals():
    recs = [
        {
            "task": "adding",
            "method": "SGD",
            "length": 20,
            "success": s,
            "test_error": e,
            "diverged": d,
        }
        for s, e, d in [(True, 0.0, False), (False, 0.3, True), (False, 0.2, False)]
    ]
    (row,) = lm.success_table(recs)
    rate, lo, hi = tasks.wilson_interval(1, 3)
    assert (row["successes"], row["seeds"], row["diverged"]) == (1, 3, 1)
    assert (row["success_rate"], row["wilson_low"], row["wilson_high"]) == (rate, lo, hi)
    assert row["median_test_error"] == 0.2
    assert "1/3 [" in lm.markdown_table([row])


@pytest.mark.slow
def test_tiny_run_writes_files_and_figures_redraw(tmp_path, tiny_program):
    summary = lm.run(tmp_path, settings=TINY)
    out = tmp_path / lm.NAME
    for f in (
        "table.md",
        "table.csv",
        "table.json",
        "summary.json",
        "runs_temporal_order.json",
        "success_vs_length.png",
        "success_vs_length.pdf",
    ):
        assert (out / f).is_file(), f
    assert summary["mode"] == "custom" and summary["wall_s"] > 0
    assert len(summary["rows"]) == 6  # 3 methods × 2 lengths
    assert json.loads((out / "summary.json").read_text())["rows"] == summary["rows"]
    # the run's records are those of the program compiled on its own (same keys, same sizes)
    _, _, runs, res = tiny_program
    recs = json.loads((out / "runs_temporal_order.json").read_text())
    np.testing.assert_allclose([r["test_error"] for r in recs], res[0], rtol=0, atol=1e-7)
    figs = lm.figures(tmp_path)
    assert list(figs) == ["success_vs_length"]
    assert len(figs["success_vs_length"].axes[0].containers) == 3  # error bars per method


@pytest.mark.parametrize(
    "change, match",
    [
        ({"tasks": ("parity",)}, "unknown task"),
        ({"lengths": (5, 20)}, "lengths must be >= 10"),
        ({"lengths": (20, 20)}, "distinct"),
        ({"seeds": 0}, "seeds"),
        ({"n_test": 10, "test_chunk": 4}, "multiple of test_chunk"),
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"alpha": -1.0}, "alpha"),
        ({"momentum": 1.0}, "momentum"),
    ],
)
def test_bad_settings_raise_one_clear_error(change, match):
    with pytest.raises(ValueError, match=match):
        lm.check_settings(TINY._replace(**change))


def test_settings_type_checked():
    with pytest.raises(TypeError, match="Settings"):
        lm.check_settings({"tasks": ("adding",)})
    with pytest.raises(TypeError, match="share_lengths"):
        lm.check_settings(TINY._replace(share_lengths="yes"))


def test_quick_and_full_cover_the_paper():
    assert set(lm.FULL.tasks) == set(lm.TASK_NAMES) and len(lm.TASK_NAMES) == 6
    assert lm.FULL.seeds >= 8 and lm.QUICK.seeds >= 8
    assert min(lm.FULL.lengths) >= 50 and max(lm.FULL.lengths) <= 200
    assert 20 <= min(lm.QUICK.lengths) and max(lm.QUICK.lengths) <= 50
    # the paper's sizes where the CPU allows: 50 units, batch 20, clipping at 1, 10000 tests
    assert (lm.FULL.width, lm.FULL.batch, lm.FULL.clip_norm) == (50, 20, 1.0)
    assert lm.FULL.n_test == 10000


def _rows():
    recs = [
        {
            "task": t,
            "method": m,
            "length": T,
            "success": (m != "SGD") and T < 30,
            "test_error": 0.0 if (m != "SGD") and T < 30 else 0.5,
            "diverged": False,
        }
        for t in ("temporal_order", "adding")
        for m in lm.METHODS
        for T in (20, 30)
        for _ in range(4)
    ]
    return lm.success_table(recs)


def test_figure_and_redraw_from_saved_numbers(tmp_path):
    """figure_success draws one panel per task, one error-bar line per method, and figures()
    redraws it from summary.json alone."""
    rows = _rows()
    fig = lm.figure_success(rows)
    assert len([a for a in fig.axes if a.get_visible()]) == 2
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == list(lm.METHODS)
    summary = {"mode": "custom", "settings": TINY._asdict(), "rows": rows}
    out = tmp_path / lm.NAME
    out.mkdir()
    (out / "summary.json").write_text(json.dumps(summary))
    figs = lm.figures(tmp_path)
    assert list(figs) == ["success_vs_length"]
    # the first panel's lines: SGD 0/4 at both lengths, SGD-C 4/4 at T = 20 and 0/4 at T = 30
    bars = figs["success_vs_length"].axes[0].containers  # one ErrorbarContainer per method
    assert len(bars) == 3
    np.testing.assert_array_equal(bars[0].lines[0].get_ydata(), [0.0, 0.0])
    np.testing.assert_array_equal(bars[1].lines[0].get_ydata(), [1.0, 0.0])
