"""gradflow.writers: flatten against float64 norms, and every writer read back by its own reader
(TensorBoard's EventAccumulator, json, csv/pandas), NaN and ±inf included."""

from __future__ import annotations

import json
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import monitor, writers

# Values no writer may round: ±0, subnormal-range and huge floats, the three non-finite ones.
AWKWARD = {
    "zero": 0.0,
    "neg_zero": -0.0,
    "third": 1.0 / 3.0,
    "tiny": 5e-324,
    "huge": 1.7976931348623157e308,
    "nan": math.nan,
    "inf": math.inf,
    "ninf": -math.inf,
}


def _same(a: float, b: float) -> bool:
    """Equal as floats, NaN equal to NaN, and the sign of zero kept."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def _tree(scale_g=1.0, scale_u=1.0, scale_p=1.0):
    """float32 linen-style parameters (two layers, one all-zero) and matching grads/updates."""
    k = jax.random.split(jax.random.key(3), 3)
    shapes = {"Dense_0": {"kernel": (3, 4), "bias": (4,)}, "Dense_1": {"kernel": (4, 2)}}

    def draw(key, scale):
        leaves, tdef = jax.tree.flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
        ks = jax.random.split(key, len(leaves))
        return jax.tree.unflatten(
            tdef, [scale * jax.random.normal(kk, s, jnp.float32) for kk, s in zip(ks, leaves)]
        )

    params = draw(k[0], scale_p)
    params["Dense_1"] = jax.tree.map(jnp.zeros_like, params["Dense_1"])  # θ = 0: ratio is ‖Δθ‖
    return {"params": params}, {"params": draw(k[1], scale_g)}, {"params": draw(k[2], scale_u)}


def _norm64(tree) -> float:
    return float(
        np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree)))
    )


def test_flatten_grad_stats_equals_float64_norms():
    # Gradients of 1e-30 (squares 1e-60 underflow float32), updates of 1e-25 on parameters of
    # 1e20 (a ratio of ~1e-45, below float32's smallest subnormal's precision).
    params, grads, updates = _tree(1e-30, 1e-25, 1e20)
    stats = jax.jit(monitor.grad_stats)(grads, updates, params)
    flat = writers.flatten(stats)
    assert list(flat) == [
        "grad_norm/Dense_0",
        "grad_norm/Dense_1",
        "update_ratio/Dense_0",
        "update_ratio/Dense_1",
        "param_norm/Dense_0",
        "param_norm/Dense_1",
        "grad_norm/global",
        "nonfinite",
    ]
    g, u, p = grads["params"], updates["params"], params["params"]
    want = {
        "grad_norm/Dense_0": _norm64(g["Dense_0"]),
        "grad_norm/Dense_1": _norm64(g["Dense_1"]),
        "update_ratio/Dense_0": _norm64(u["Dense_0"]) / _norm64(p["Dense_0"]),
        "update_ratio/Dense_1": _norm64(u["Dense_1"]),  # θ = 0
        "param_norm/Dense_0": _norm64(p["Dense_0"]),
        "grad_norm/global": _norm64(g),
    }
    assert 1e-46 < want["update_ratio/Dense_0"] < 1e-44
    for key, value in want.items():
        # The norms are float32 log10 values of magnitude ≤ 45 (ulp ≤ 3.8e-6), i.e. a relative
        # error of ln(10)·ulp/2 ≈ 4.4e-6 per rounding; a few roundings (max, sum, log, the log10
        # difference for the ratio) stay below 5e-5.
        np.testing.assert_allclose(flat[key], value, rtol=5e-5, err_msg=key)
    assert flat["param_norm/Dense_1"] == 0.0 and flat["nonfinite"] == 0.0
    assert all(isinstance(v, float) for v in flat.values())

    # A NaN planted in one gradient raises the flag; prefix nests the keys.
    bad = jax.tree.map(lambda x: x, grads)
    bad["params"]["Dense_1"]["kernel"] = bad["params"]["Dense_1"]["kernel"].at[0, 0].set(jnp.nan)
    flat = writers.flatten(monitor.grad_stats(bad, updates, params), prefix="train")
    assert flat["train/nonfinite"] == 1.0 and math.isnan(flat["train/grad_norm/Dense_1"])
    assert flat["train/grad_norm/Dense_0"] > 0


class Record(NamedTuple):
    loss: float
    grads: monitor.GradStats


def test_flatten_nests_mappings_and_namedtuples():
    params, grads, updates = _tree()
    stats = monitor.grad_stats(grads, updates, params)
    rec = {
        "train": Record(loss=jnp.float32(0.25), grads=stats),
        "lr": np.array([1e-3]),  # size-1 arrays are scalars
        "ok": jnp.array(True),
        3: 7,
    }
    flat = writers.flatten(rec)
    assert flat["train/loss"] == 0.25 and flat["lr"] == 1e-3 and flat["ok"] == 1.0
    assert flat["3"] == 7.0
    inner = writers.flatten(stats, prefix="train/grads")
    assert {k: v for k, v in flat.items() if k.startswith("train/grads/")} == inner


def test_flatten_bad_input_names_the_key():
    params, grads, updates = _tree()
    with pytest.raises(ValueError, match=r"'a/b' has shape \(3,\)"):
        writers.flatten({"a": {"b": np.ones(3)}})
    with pytest.raises(TypeError, match="'a' must be a number"):
        writers.flatten({"a": "text"})
    with pytest.raises(TypeError, match="'a' must be a number"):
        writers.flatten({"a": None})
    with pytest.raises(TypeError, match="complex"):
        writers.flatten({"a": 1j})
    with pytest.raises(ValueError, match="'a/b' occurs twice"):
        writers.flatten({"a/b": 1.0, "a": {"b": 2.0}})
    with pytest.raises(TypeError, match="at the top level"):
        writers.flatten(1.0)
    with pytest.raises(TypeError, match="prefix"):
        writers.flatten({"a": 1.0}, prefix=3)
    # Stacked over two steps: not one step's statistics.
    two = jax.tree.map(lambda x: jnp.stack([x, x]), monitor.grad_stats(grads, updates, params))
    with pytest.raises(ValueError, match="write_history"):
        writers.flatten({"g": two})
    with pytest.raises(TypeError, match="traced value"):
        jax.jit(lambda x: writers.flatten({"x": x})["x"])(1.0)


def test_jsonl_round_trip_is_exact_and_strict_json(tmp_path):
    path = tmp_path / "log" / "run.jsonl"
    with writers.JsonlWriter(path) as w:
        w.write(0, AWKWARD)
        w.write(7, {"loss": np.float32(0.1)})
    lines = path.read_text().splitlines()

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    first = json.loads(lines[0], parse_constant=no_constants)  # strict JSON: no bare NaN
    assert first["nan"] == "NaN" and first["inf"] == "Infinity" and first["ninf"] == "-Infinity"
    rows = writers.read_jsonl(path)
    assert [r["step"] for r in rows] == [0, 7] and isinstance(rows[0]["step"], int)
    for k, v in AWKWARD.items():
        assert _same(rows[0][k], v), k
    assert rows[1]["loss"] == float(np.float32(0.1))  # the float32 value, exactly
    # append=True continues the file (a resumed run)
    with writers.JsonlWriter(path, append=True) as w:
        w.write(8, {"loss": 1.0})
    assert [r["step"] for r in writers.read_jsonl(path)] == [0, 7, 8]


def test_csv_round_trip_missing_and_new_keys(tmp_path):
    path = tmp_path / "run.csv"
    with writers.CsvWriter(path) as w:
        w.write(0, AWKWARD)
        w.write(5, {"third": 2.0})  # the other cells stay empty
        with pytest.raises(ValueError, match=r"\['new'\] are not among the CSV columns"):
            w.write(6, {"new": 1.0})
    rows = writers.read_csv(path)
    assert path.read_text().splitlines()[0] == "step," + ",".join(AWKWARD)
    for k, v in AWKWARD.items():
        assert _same(rows[0][k], v), k
    assert rows[1] == {"step": 5, "third": 2.0}
    pd = pytest.importorskip("pandas")
    df = pd.read_csv(path)
    assert df["step"].tolist() == [0, 5]
    for k, v in AWKWARD.items():
        assert _same(float(df[k].iloc[0]), v), k
    assert math.isnan(df["nan"].iloc[1])  # empty -> NaN in pandas

    # Columns fixed up front, then appended to: one header, every row.
    path = tmp_path / "fixed.csv"
    with writers.CsvWriter(path, fieldnames=["loss", "acc"]) as w:
        w.write(0, {"acc": 0.5})
    with writers.CsvWriter(path, append=True) as w:
        w.write(1, {"loss": 2.0, "acc": 0.75})
        with pytest.raises(ValueError, match="not among the CSV columns"):
            w.write(2, {"other": 1.0})
    assert writers.read_csv(path) == [
        {"step": 0, "acc": 0.5},
        {"step": 1, "loss": 2.0, "acc": 0.75},
    ]
    with pytest.raises(ValueError, match="differ from the header"):
        writers.CsvWriter(path, fieldnames=["acc"], append=True)


def _read_tensorboard(logdir):
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(logdir), size_guidance={ea.SCALARS: 0})  # 0: keep every event
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_read_back_by_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    params, grads, updates = _tree()
    steps = [0, 3, 10, 2**40]  # TensorBoard steps are int64
    written = {}
    with writers.TensorBoardWriter(tmp_path / "run") as tb:
        for i, step in enumerate(steps):
            g = jax.tree.map(lambda x, i=i: x * 10.0**-i, grads)
            scalars = writers.flatten(
                {"loss": 1.0 / (i + 1), "stats": monitor.grad_stats(g, updates, params)}
            )
            scalars.update(AWKWARD)
            tb.write(step, scalars)
            written[step] = scalars
    events = _read_tensorboard(tmp_path / "run")
    assert set(events) == set(written[0])
    for tag, evs in events.items():
        assert [e.step for e in evs] == steps, tag
        for e in evs:
            # simple_value is float32: equal to the float32 rounding of what was written (1.8e308
            # becomes inf, 5e-324 becomes 0, as numpy's cast).
            with np.errstate(over="ignore"):
                want = float(np.float32(written[e.step][tag]))
            assert _same(e.value, want), (tag, e.step)


def test_write_history_equals_writing_each_step(tmp_path):
    params, grads, updates = _tree()
    scales = jnp.asarray([1.0, 1e-3, 1e-6])
    history = {
        "loss": jnp.asarray([3.0, 2.0, 1.0]),
        # Stacked over steps, as lax.scan would return them.
        "grads": jax.tree.map(
            lambda *xs: jnp.stack(xs),
            *[
                monitor.grad_stats(jax.tree.map(lambda x, s=s: s * x, grads), updates, params)
                for s in scales
            ],
        ),
    }
    with writers.JsonlWriter(tmp_path / "h.jsonl") as w:
        writers.write_history(w, [10, 20, 30], history)
    with writers.JsonlWriter(tmp_path / "one.jsonl") as w:
        for i, step in enumerate([10, 20, 30]):
            w.write(step, writers.flatten(jax.tree.map(lambda a, i=i: a[i], history)))
    assert (tmp_path / "h.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
    rows = writers.read_jsonl(tmp_path / "h.jsonl")
    np.testing.assert_allclose(
        [r["grads/grad_norm/Dense_0"] for r in rows],
        _norm64(grads["params"]["Dense_0"]) * np.asarray(scales),
        rtol=1e-5,  # float32 log10 of magnitude ≤ 7: relative error ~1e-6
    )
    with pytest.raises(
        ValueError,
        match=r"history\['grads'\].grad_log10 has shape \(3, 2\); expected a leading axis of 2",
    ):
        writers.write_history(w, [1, 2], history)


def test_writers_refuse_bad_calls(tmp_path):
    w = writers.JsonlWriter(tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match="step must be >= 0"):
        w.write(-1, {"a": 1.0})
    with pytest.raises(TypeError, match="step must be an integer"):
        w.write(True, {"a": 1.0})
    with pytest.raises(TypeError, match="step must be an integer"):
        w.write(1.0, {"a": 1.0})
    with pytest.raises(TypeError, match="scalars must be a mapping"):
        w.write(0, [1.0])
    with pytest.raises(ValueError, match='key "step"'):
        w.write(0, {"step": 1.0})
    with pytest.raises(ValueError, match="'a' has shape"):
        w.write(0, {"a": np.ones(2)})
    w.close()
    w.close()  # closing twice is harmless
    with pytest.raises(ValueError, match="is closed"):
        w.write(0, {"a": 1.0})
    assert isinstance(w, writers.Writer)
    pytest.importorskip("tensorboard")
    tb = writers.TensorBoardWriter(tmp_path / "tb", flush_secs=1)
    with pytest.raises(ValueError, match="flush_secs must be > 0"):
        writers.TensorBoardWriter(tmp_path / "tb", flush_secs=0)
    tb.close()
    with pytest.raises(ValueError, match="is closed"):
        tb.write(0, {"a": 1.0})


def test_flatten_takes_fits_step_stats():
    """fit's callback record (a NamedTuple with None for what was not asked) flattens as is."""
    import optax

    from gradflow import train

    def loss(p, b):
        return jnp.mean((b[0] @ p["input"]["w"] @ p["readout"]["w"] - b[1]) ** 2)

    params = {"input": {"w": jnp.full((3, 4), 0.1)}, "readout": {"w": jnp.full((4, 1), 0.1)}}
    rng = np.random.default_rng(0)
    batches = (rng.normal(size=(4, 8, 3)), rng.normal(size=(4, 8, 1)))
    batches = jax.tree.map(lambda a: a.astype(np.float32), batches)
    seen = []
    res = train.fit(
        loss,
        params,
        batches,
        optax.sgd(0.1),
        callback=lambda s, st: seen.append(writers.flatten(st)),
    )
    assert len(seen) == 4 and "metrics" not in seen[0] and "state_grad_norms" not in seen[0]
    # The flattened loss and per-layer norm are the History's numbers for that step.
    assert seen[2]["loss"] == pytest.approx(float(res.history.loss[2]), rel=1e-6)
    g = np.asarray(res.history.layer_grad_norms[2])
    assert [seen[2]["grad_stats/grad_norm/input"], seen[2]["grad_stats/grad_norm/readout"]] == (
        pytest.approx(g.tolist(), rel=1e-5)  # float32 log10 round trip (see flatten)
    )
