"""The init_training experiment: its statistics against closed forms, its verdict logic on
synthetic inputs, vmapped runs against single runs, its files and figures, its errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.figure import Figure

from gradflow import gradients, tasks, train
from gradflow.experiments import _io, init_training
from gradflow.experiments.init_training import analysis, claims, measure, settings, stats

# A tiny run: 2 seeds, depth 2 (one hidden-to-hidden layer, the least χ₁ needs), 6 steps.
TINY = settings.Settings(
    depths=(2,),
    width=4,
    batch=4,
    steps=6,
    seeds=2,
    monitor_every=2,
    target=0.2,
    sgd_rates=(0.1, 0.5),
    adam_rates=(1e-3, 1e-2),
    chi1_inputs=2,
)


@pytest.fixture(scope="module")
def digits():
    # The generated digit-like task: the shapes of scikit-learn's digits, small and no import.
    return tasks.synthetic_images(n=120)


# ------------------------------------------------------------------------------------------
# statistics


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, 2.5, 10.0, -1.7])
def test_student_t_cdf_closed_forms(t):
    """ν = 1: ½ + atan(t)/π; ν = 2: ½ + t/(2√(t² + 2)); ν = 3: ½ + (u/(1 + u²) + atan u)/π with
    u = t/√3 (each from integrating the density). Sums without cancellation: 1e-14."""
    assert stats.student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-14)
    assert stats.student_t_cdf(t, 2) == pytest.approx(
        0.5 + t / (2 * math.sqrt(t * t + 2)), abs=1e-14
    )
    u = t / math.sqrt(3)
    three = 0.5 + (u / (1 + u * u) + math.atan(u)) / math.pi
    assert stats.student_t_cdf(t, 3) == pytest.approx(three, abs=1e-14)


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995])
def test_student_t_quantile_closed_forms(p):
    """ν = 1 (Cauchy): tan(π(p − ½)); ν = 2: (2p − 1)/√(2p(1 − p)). Bisection to 1e-12."""
    assert stats.student_t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)
    closed = (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    assert stats.student_t_quantile(p, 2) == pytest.approx(closed, rel=1e-10)


def test_student_t_quantile_table_values():
    """Two-sided 95 % critical values as printed in t tables (4 decimals)."""
    for df, value in [(4, 2.7764), (7, 2.3646), (15, 2.1314), (30, 2.0423)]:
        assert stats.student_t_quantile(0.975, df) == pytest.approx(value, abs=5e-5)


def test_t_interval_known_case():
    """1…5: mean 3, s = √2.5, half-width t_{0.975,4} · s/√5 = 2.776445 · 0.707107 = 1.963243."""
    ci = stats.t_interval([1.0, 2.0, 3.0, np.nan, 4.0, 5.0])  # the NaN is ignored
    assert (ci.mean, ci.n, ci.level) == (3.0, 5, 0.95)
    assert ci.high - ci.mean == pytest.approx(1.963243, abs=1e-6)
    assert ci.mean - ci.low == pytest.approx(1.963243, abs=1e-6)
    # No spread: a zero-width interval; one value: no interval.
    assert stats.t_interval([0.5, 0.5, 0.5])[:3] == (0.5, 0.5, 0.5)
    one = stats.t_interval([0.7])
    assert one.mean == 0.7 and math.isnan(one.low) and math.isnan(one.high)


def test_t_interval_coverage():
    """95 % of intervals from normal samples of 8 cover the true mean (4000 draws: ±1 %)."""
    rng = np.random.default_rng(0)
    cover = [
        (ci.low <= 1.0 <= ci.high)
        for ci in (stats.t_interval(rng.normal(1.0, 2.0, 8)) for _ in range(4000))
    ]
    assert np.mean(cover) == pytest.approx(0.95, abs=0.01)


def test_steps_to_target_hand_made_curves():
    steps = np.array([0, 10, 20, 30])
    curves = np.array(
        [
            [0.1, 0.5, 0.9, 0.95],  # reaches 0.9 at step 20 (>= counts)
            [0.1, 0.2, 0.3, 0.4],  # never: censored
            [0.95, 0.1, 0.1, 0.1],  # at the start
            [0.1, np.nan, np.nan, np.nan],  # diverged: NaN never counts
        ]
    )
    np.testing.assert_array_equal(
        stats.steps_to_target(curves, steps, 0.9), [20.0, np.inf, 0.0, np.inf]
    )
    with pytest.raises(ValueError, match="curves must have shape"):
        stats.steps_to_target(curves, steps[:3], 0.9)


def test_summarise_steps_with_censored_runs():
    s = stats.summarise_steps([20.0, np.inf, 10.0])  # odd n, median = the middle one
    assert (s.reached, s.n, s.median, s.low, s.high) == (2, 3, 20.0, 10.0, 20.0)
    s = stats.summarise_steps([20.0, np.inf, 10.0, np.inf])  # half censored: median not reached
    assert s.median == math.inf and s.fraction == 0.5
    s = stats.summarise_steps([20.0, 40.0, 10.0, np.inf])  # even n: mean of the middle two
    assert s.median == 30.0
    s = stats.summarise_steps([np.inf, np.inf])
    assert s.reached == 0 and s.median == math.inf and math.isnan(s.low)


def test_choose_rates_ties_and_nan():
    final_val = np.array(
        [
            [[0.5, 0.7], [0.9, 0.9], [0.2, 0.2]],  # rate 1 best
            [[0.6, 0.6], [0.6, 0.6], [0.1, 0.1]],  # tie: the smaller (first) rate
            [[np.nan, np.nan], [0.1, 0.1], [0.2, 0.0]],  # all-NaN rate never wins
        ]
    )
    np.testing.assert_array_equal(analysis.choose_rates(final_val), [1, 0, 1])


# ------------------------------------------------------------------------------------------
# claims


def _cell(reached, median, acc, n=8, half=0.02, chi1=1.0):
    return claims.Cell(reached, n, median, acc, acc - half, acc + half, chi1)


TRAINS = _cell(8, 100.0, 0.95)
SLOW = _cell(8, 300.0, 0.94)
FAILS = _cell(0, math.inf, 0.10)


def _cells(per_init: dict, depths=(10, 15), optimizer="sgd"):
    """(optimizer, init, depth) -> Cell from {init: cell or {depth: cell}}."""
    return {
        (optimizer, i, d): c[d] if isinstance(c, dict) else c
        for i, c in per_init.items()
        for d in depths
    }


def test_trains_means_more_than_half():
    assert claims.trains(_cell(5, 1.0, 0.9))
    assert not claims.trains(_cell(4, math.inf, 0.9))  # exactly half: median censored


@pytest.mark.parametrize(
    "yp, others, holds",
    [
        (TRAINS, SLOW, "yes"),  # trains, as accurate, fastest
        (SLOW, TRAINS, "partly"),  # trains, but another init is faster
        ({10: TRAINS, 15: FAILS}, FAILS, "partly"),  # only at one depth
        (FAILS, TRAINS, "no"),
        (_cell(8, 100.0, 0.80), TRAINS, "no"),  # trains but well below the best other init
    ],
)
def test_yilmaz_poli_verdicts(yp, others, holds):
    inits = {"yilmaz_poli": yp, "glorot": others, "gaussian": FAILS, "kumar": FAILS}
    row = claims.yilmaz_poli_claim(_cells(inits), "sgd", 0.9)
    assert row["holds"] == holds
    assert set(row) == {"claim", "source", "optimizer", "measured", "holds", "reason"}
    assert "depth 10" in row["measured"] and "depth 15" in row["measured"]


@pytest.mark.parametrize(
    "kumar, glorot, holds",
    [
        (TRAINS, FAILS, "yes"),  # only Kumar trains
        ({5: TRAINS, 20: FAILS}, {5: TRAINS, 20: FAILS}, "partly"),  # no depth separates them
        (FAILS, FAILS, "no"),  # Kumar never trains
        ({5: TRAINS, 20: FAILS}, {5: TRAINS, 20: TRAINS}, "no"),  # worse at depth 20
    ],
)
def test_kumar_verdicts(kumar, glorot, holds):
    inits = {"kumar": kumar, "glorot": glorot, "gaussian": FAILS}
    row = claims.kumar_claim(_cells(inits, depths=(5, 20), optimizer="adam"), "adam", 0.9)
    assert row["holds"] == holds and row["optimizer"] == "adam"


@pytest.mark.parametrize(
    "critical, holds",
    [(TRAINS, "yes"), ({5: TRAINS, 20: FAILS}, "partly"), (FAILS, "no")],
)
def test_critical_verdicts(critical, holds):
    row = claims.critical_claim(_cells({"critical": critical}, depths=(5, 20)), "sgd", 0.9)
    assert row["holds"] == holds
    assert "χ₁ 1.00" in row["measured"]


def test_claims_table_rows_in_order():
    cells = _cells({i.key: TRAINS for i in settings.INITS})
    cells |= _cells({i.key: FAILS for i in settings.INITS}, optimizer="adam")
    table = claims.claims_table(cells, ("sgd", "adam"), 0.9)
    assert [(r["optimizer"], r["holds"]) for r in table] == [
        ("sgd", "yes"),  # YP as fast and accurate as every other (all equal)
        ("adam", "no"),
        ("sgd", "partly"),  # Kumar trains, but so do the baselines
        ("adam", "no"),
        ("sgd", "yes"),
        ("adam", "no"),
    ]


# ------------------------------------------------------------------------------------------
# the training code


def test_sgd_or_adam_is_exactly_each_optimizer():
    """Selecting by a traced flag gives the updates of train.sgd / train.adam (both jitted);
    XLA may fuse Adam's arithmetic differently in the two programs: 2 ulp (rtol 3e-7)."""
    params = {"w": jnp.arange(6.0).reshape(2, 3) / 7, "b": jnp.ones(3)}
    grads = [jax.tree.map(lambda a, k=k: jnp.sin(a * (k + 1)), params) for k in range(2)]

    def steps(opt):
        state, out = opt.init(params), []
        for g in grads:
            u, state = opt.update(g, state, params)
            out.append(u)
        return out

    mixed = jax.jit(lambda use_adam, lr: steps(measure.sgd_or_adam(lr, use_adam)))
    for use_adam, make in ((False, train.sgd), (True, train.adam)):
        expected = jax.jit(lambda lr, make=make: steps(make(lr)))(jnp.float32(0.3))
        got = mixed(jnp.asarray(use_adam), jnp.float32(0.3))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
            np.testing.assert_allclose(a, b, rtol=3e-7, atol=0)


def test_empirical_chi1_against_numpy(digits, x64):
    """mean_k ‖diag(φ'(z_k)) W_kᵀ‖²_F / N from the parameters by hand in float64."""
    net = measure.model_for(settings.INITS[2], 4, 6, 10)  # depth 4, width 6
    x = jnp.asarray(digits.x_test[:3], jnp.float64)
    # Parameters drawn here (drawing them with the model's init costs a compilation), with a
    # nonzero mean and bias so that every term of the formula matters.
    rng = np.random.default_rng(1)
    p = {
        "input": {"kernel": rng.normal(0, 0.3, (64, 6)), "bias": rng.normal(0, 0.5, 6)},
        "hidden": {"kernel": rng.normal(-0.3, 1.5, (3, 6, 6)), "bias": rng.normal(0, 0.5, (3, 6))},
        "readout": {"kernel": rng.normal(0, 1, (6, 10)), "bias": np.zeros(10)},
    }
    params = {"params": p}

    def sig(z):
        return 1 / (1 + np.exp(-z))

    per_input = []
    for xi in np.asarray(x):
        h, vals = sig(xi @ p["input"]["kernel"] + p["input"]["bias"]), []
        for w, b in zip(p["hidden"]["kernel"], p["hidden"]["bias"]):
            z = h @ w + b
            d = sig(z) * (1 - sig(z))  # φ'(z) of the logistic function
            vals.append(np.sum((d[:, None] * w.T) ** 2) / w.shape[0])
            h = sig(z)
        per_input.append(np.mean(vals))
    got = jax.jit(lambda p: measure.empirical_chi1(net, p, x))(params)
    np.testing.assert_allclose(got, np.mean(per_input), rtol=1e-10)


@pytest.fixture(scope="module")
def tiny_runs(digits):  # slow tests only: two compiled programs
    data = measure.split(digits, TINY.validation_fraction)
    return data, measure.run_groups(TINY, data)


@pytest.mark.slow
def test_vmapped_runs_equal_single_runs(tiny_runs):
    """Instance (optimiser, init, rate, seed) of the vmapped program equals the same run alone:
    parameters drawn by model.init from the seed's key, trained by train_one on its batches.
    Batched and unbatched matrix products may round differently (float32): rtol 1e-5."""
    data, runs = tiny_runs
    out, chi1 = runs[2]
    keys = measure.seed_keys(TINY.seeds)
    idx = measure.batch_indices(keys, TINY.steps, TINY.batch, len(data.x_fit))
    x0 = jnp.asarray(data.x_fit[:1])
    for o, i, r, s in [(0, 3, 1, 1), (1, 2, 0, 0)]:  # SGD YP seed 1; Adam Kumar seed 0
        net = measure.model_for(settings.INITS[i], 2, TINY.width, data.n_classes)
        params = net.init(jax.random.fold_in(keys[s], 0), x0)
        lr = TINY.rates(settings.OPTIMIZERS[o])[r]
        single = jax.jit(
            lambda p, b, lr, o=o, net=net: measure.train_one(
                net, data, o == 1, lr, p, b, monitor_every=TINY.monitor_every
            )
        )(params, idx[s], jnp.float32(lr))
        for name in measure.RunOutputs._fields:
            np.testing.assert_allclose(
                getattr(out, name)[o, i, r, s], getattr(single, name), rtol=1e-5, err_msg=name
            )

        # Step 0's layer norms are those of the gradient of the first minibatch's loss.
        def loss(p, b, net=net):
            return tasks.cross_entropy(net.apply(p, jnp.asarray(data.x_fit)[b]), data.y_fit[b])

        ref = gradients.layer_grad_norms(loss, params, idx[s, 0])
        np.testing.assert_allclose(out.grad_log10_at_init[o, i, r, s], ref.log10, rtol=1e-5)
        chi1_ref = measure.empirical_chi1(net, params, jnp.asarray(data.x_test[: TINY.chi1_inputs]))
        np.testing.assert_allclose(chi1[i, s], chi1_ref, rtol=1e-5)
    # Same seed, same numbers: the two optimisers' instances start from identical gradients.
    np.testing.assert_array_equal(out.grad_log10_at_init[0], out.grad_log10_at_init[1])


@pytest.mark.slow
def test_study_writes_files_and_figures_redraw(tmp_path, digits):
    summary = init_training.study(tmp_path / init_training.NAME, TINY, data=digits)
    out = tmp_path / init_training.NAME
    names = {"init_training.npz", "summary.json"}
    names |= {f"{s}.{e}" for s in STEMS for e in ("png", "pdf")}
    assert names <= {p.name for p in out.iterdir()}
    assert set(init_training.figures(tmp_path)) == STEMS
    assert summary["data"] == "synthetic_digits"
    assert len(summary["rows"]) == len(TINY.depths) * len(settings.INITS) * 2
    row = summary["rows"][0]
    assert row["learning_rate"] in TINY.sgd_rates
    assert row["steps_to_target"]["seeds"] == TINY.seeds
    lo, hi = row["final_test_accuracy"]["ci95_t"]
    assert lo <= row["final_test_accuracy"]["mean"] <= hi
    assert all(c["holds"] in ("yes", "no", "partly") for c in summary["claims"])
    assert "quick mode, synthetic_digits" in summary["claims"][0]["conditions"]


STEMS = {"learning_curves_sgd", "learning_curves_adam", "accuracy_vs_depth"}


def _synthetic_arrays():
    """Saved arrays by hand: D = 1 depth (10), I = 5 inits, R = 2 rates, S = 3 seeds,
    M = 4 records. Kumar (init 2) reaches 0.95 at step 20 with rate 1 (its better validation
    accuracy); every other init stays at 0.1."""
    d, i, r, s, m = 1, len(settings.INITS), 2, 3, 4
    acc = np.full((d, i, r, s, m), 0.1)
    acc[:, 2, 1, :, 2:] = 0.95
    final = acc[..., -1].copy()
    arrays = {"depths": np.array([10]), "steps": np.arange(0, 40, 10)}
    for o in settings.OPTIMIZERS:
        arrays |= {
            f"{o}/test_accuracy": acc,
            f"{o}/final_test_accuracy": final,
            f"{o}/final_val_accuracy": final,
            f"{o}/diverged": np.zeros((d, i, r, s), bool),
            f"{o}/rates": np.array([0.1, 0.3]),
            f"{o}/chosen": analysis.choose_rates(final),
        }
    arrays["log10_grad_ratio"] = np.linspace(-5, 0, d * i * s).reshape(d, i, s)
    arrays["chi1"] = np.full((d, i, s), 0.5)
    arrays["chi1_mean_field"] = np.array([0.05, 0.05, 0.35, np.nan, 1.0])
    return arrays


def test_summary_and_figures_from_saved_numbers(tmp_path):
    """summarise's rows and claims on known arrays; figures() redraws from the files alone."""
    arrays = _synthetic_arrays()
    st = TINY._replace(depths=(10,), target=0.9, sgd_rates=(0.1, 0.3), adam_rates=(0.1, 0.3))
    summary = init_training.summarise(st, arrays, data_name="hand-made", full=False)
    kumar = [r for r in summary["rows"] if r["init"] == "kumar" and r["optimizer"] == "sgd"]
    assert [r["learning_rate"] for r in kumar] == [0.3]
    assert kumar[0]["steps_to_target"]["median"] == 20.0
    assert kumar[0]["final_test_accuracy"]["ci95_t"] == pytest.approx([0.95, 0.95])  # no spread
    glorot = next(r for r in summary["rows"] if r["init"] == "glorot")
    assert glorot["steps_to_target"]["reached"] == 0
    assert glorot["steps_to_target"]["median"] == math.inf
    assert [c["holds"] for c in summary["claims"]] == ["no", "no", "yes", "yes", "no", "no"]
    out = tmp_path / init_training.NAME
    _io.save_npz(arrays, out / "init_training.npz")
    _io.save_json(summary, out / "summary.json")
    figs = init_training.figures(tmp_path)
    assert set(figs) == STEMS
    assert len(figs["learning_curves_sgd"].axes) == len(settings.INITS)
    # Into a caller's axes: the caller's figure comes back, nothing else is created.
    fig = Figure()
    labels = [s.label for s in settings.INITS]
    assert init_training.figure_depth(arrays, labels=labels, axes=fig.subplots(1, 4)) is fig
    assert len(fig.axes) == 4


@pytest.mark.parametrize(
    "change, match",
    [
        ({"depths": (1,)}, "depths"),
        ({"depths": ()}, "depths"),
        ({"seeds": 1}, "seeds"),
        ({"target": 0.0}, "target"),
        ({"sgd_rates": (0.1,)}, "same length"),
        ({"adam_rates": (-1.0, 1.0)}, "adam_rates"),
        ({"monitor_every": 10}, "monitor_every"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
    ],
)
def test_bad_settings_raise_one_clear_error(change, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        init_training.study(tmp_path, TINY._replace(**change))
    with pytest.raises(TypeError, match="Settings"):
        settings.check_settings({"depths": (2,)})
