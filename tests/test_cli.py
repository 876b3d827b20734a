"""The command line and the core experiment: names, errors, outputs and the claims they show."""

import json

import jax
import numpy as np
import pytest

from gradflow import cli, experiments
from gradflow.experiments import vanishing


def test_list_names_every_experiment(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in experiments.names():
        assert name in out


def test_unknown_experiment_is_one_clear_error(tmp_path, capsys):
    assert cli.main(["figures", "--out", str(tmp_path), "--only", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'nope'" in err and "vanishing" in err
    assert not (tmp_path / "nope").exists()


def test_measure_mlp_small_orders_the_activations():
    keys = jax.random.split(jax.random.key(0), 2)
    specs = {s.label: s for s in vanishing.mlp_specs(12)}
    with jax.enable_x64(True):
        sig, _, _ = vanishing.measure_mlp(specs["sigmoid, Glorot"], 32, 12, 16, keys)
        res, sv, ok = vanishing.measure_mlp(specs["residual ReLU, He"], 32, 12, 16, keys)
    # Shapes: depth + 1 layers (readout included), width singular values.
    assert sig.shape == (2, 13) and sv.shape == (2, 32) and ok.shape == (2, 32)
    # The logistic net loses more than 4 orders of magnitude over 11 hidden layers (σ' ≤ 1/4 and
    # Glorot weights have ‖W‖₂ ≈ 2, so each layer shrinks gradients by ~0.3 or more: 0.3¹¹ ≈ 2e-6);
    # the 1/√depth-scaled residual net stays within one order of magnitude.
    assert np.all(np.log10(sig[:, 0] / sig[:, -2]) < -4)
    assert np.all(np.abs(np.log10(res[:, 0] / res[:, -2])) < 1)


def test_measure_rnn_respects_pascanu_bound():
    keys = jax.random.split(jax.random.key(1), 2)
    for rho in (0.8, 1.5):
        norms, lam1, rad = (np.asarray(a) for a in vanishing.measure_rnn(rho, 16, 30, keys))
        distance = np.arange(30, 0, -1)
        # float32 Jacobians: 1e-4 relative slack for rounding accumulated over 30 products.
        assert np.all(norms <= lam1[:, None] ** distance * (1 + 1e-4))
        # orthogonal·ρ has λ₁ = ρ = spectral radius
        np.testing.assert_allclose(lam1, rho, rtol=1e-5)
        np.testing.assert_allclose(rad, rho, rtol=1e-5)


@pytest.mark.slow
def test_figures_vanishing_end_to_end(tmp_path):
    assert cli.main(["figures", "--out", str(tmp_path), "--only", "vanishing"]) == 0
    out = tmp_path / "vanishing"
    for png in (
        "layer_grad_norms",
        "jacobian_singular_values",
        "rnn_weak_input",
        "rnn_strong_input",
    ):
        assert (out / f"{png}.png").stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())
    mlp = summary["mlp"]
    # The seeds' core claim, by number: sigmoid/Glorot vanishes by > 20 orders of magnitude over
    # 49 layers; Kumar and Yilmaz–Poli each recover part of it; tanh/ReLU/residual stay within ~1.
    assert mlp["sigmoid, Glorot"]["log10_first_over_last_hidden"] < -20
    assert (
        mlp["sigmoid, Glorot"]["log10_first_over_last_hidden"]
        < mlp["sigmoid, Kumar (3.6/√N)"]["log10_first_over_last_hidden"]
    )
    for label in ("tanh, Glorot", "ReLU, He", "residual ReLU, He"):
        assert abs(mlp[label]["log10_first_over_last_hidden"]) < 1.5
    weak = summary["rnn"]["weak_input"]
    assert weak["below"]["log_rate_per_step"] < 0 < weak["above"]["log_rate_per_step"]
    for regime in ("weak_input", "strong_input"):
        assert not any(
            summary["rnn"][regime][w]["bound_violated"] for w in ("below", "at", "above")
        )
    assert json.loads((tmp_path / "summary.json").read_text())["vanishing"]["seconds"] > 0


# ---------------------------------------------------------------------------------------------
# Progress display and one-line errors


def _fake_experiment(monkeypatch, name="fake", body=None):
    """Registers a module-less experiment that reports two stages and writes one file."""
    import sys
    import types

    from gradflow import progress

    def run(out_dir, *, full=False):
        progress.stage("training 2 seeds")
        progress.stage("[plotting] figures")  # brackets: no rich markup
        if body is not None:
            body()
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        (out_dir / name / "done.json").write_text("{}")
        return {"full": full}

    module = types.ModuleType(f"_gradflow_test_{name}")
    module.NAME, module.DESCRIPTION, module.run = name, "a test double", run
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(experiments.REGISTRY, name, module.__name__)


def test_figures_progress_plain_lines_and_quiet(tmp_path, monkeypatch, capsys):
    _fake_experiment(monkeypatch, "fake_a")
    _fake_experiment(monkeypatch, "fake_b")
    args = ["figures", "--out", str(tmp_path), "--only", "fake_a", "fake_b"]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    # stderr is not a terminal under pytest: one flushed plain line per experiment and stage.
    lines = captured.err.splitlines()
    assert len(lines) == 6, lines
    assert lines[0] == "[gradflow] 1/2 fake_a: started"
    assert lines[1].startswith("[gradflow] 1/2 fake_a: training 2 seeds (at ")
    assert lines[2].startswith("[gradflow] 1/2 fake_a: [plotting] figures (at ")
    assert lines[3] == "[gradflow] 2/2 fake_b: started"
    # The final per-experiment lines stay on stdout, as before.
    out = captured.out.splitlines()
    assert [line.split(":")[0] for line in out] == ["[gradflow] fake_a", "[gradflow] fake_b"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["fake_b"]["full"] is False and summary["fake_a"]["seconds"] >= 0

    assert cli.main([*args, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and len(captured.out.splitlines()) == 2


def test_progress_live_line_stage_and_threads():
    import io
    import threading

    from gradflow import progress

    progress.stage("nobody is listening")  # no display: a no-op
    assert not progress.active()
    buf = io.StringIO()
    with progress.display(2, stream=buf, live=True) as d:
        assert progress.active()
        with d.experiment("meanfield"):
            # A stage reported from a worker thread reaches the display too.
            t = threading.Thread(target=progress.stage, args=("[q-map] fixed points",))
            t.start()
            t.join()
            assert d.text == "[q-map] fixed points"
            assert d.line().startswith("[1/2] meanfield · [q-map] fixed points (0:00) · 0:0")
        with d.experiment("cnn"):
            assert d.index == 2 and d.text == ""
            with pytest.raises(ValueError, match="more experiments than total=2"):
                with d.experiment("third"):
                    pass
    assert not progress.active()
    text = buf.getvalue()
    assert "meanfield" in text and "[q-map] fixed points" in text and "[2/2] cnn" in text
    with pytest.raises(TypeError, match="text must be a str"):
        progress.stage(3)
    with pytest.raises(ValueError, match="total must be an integer >= 1"):
        progress.Display(0)
    # Nested displays: stage reports to the innermost, quiet writes nothing.
    outer, inner = io.StringIO(), io.StringIO()
    with progress.display(1, stream=outer, live=False) as d1, d1.experiment("outer"):
        with progress.display(1, stream=inner, quiet=True) as d2, d2.experiment("inner"):
            progress.stage("inner stage")
            assert d2.text == "inner stage" and d1.text == ""
        progress.stage("outer stage")
    assert inner.getvalue() == "" and "outer: outer stage" in outer.getvalue()


def test_bad_paths_and_types_are_one_line_errors(tmp_path, capsys, monkeypatch):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    # OSError: --out is an existing file.
    assert cli.main(["figures", "--out", str(not_a_dir / "x"), "--only", "vanishing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradflow: error: ") and "Not a directory" in err
    assert len(err.splitlines()) == 1
    # TypeError: an axis value of the wrong type in a sweep file.
    config = tmp_path / "bad.toml"
    config.write_text('[measure]\nname = "lyapunov"\n[axes]\ndepth = [3]\nseed = [[1]]\n')
    assert cli.main(["sweep", str(config), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradflow: error: axis 'seed' values must be numbers")
    assert len(err.splitlines()) == 1
    monkeypatch.setenv("GRADFLOW_TRACEBACK", "1")  # the escape hatch for debugging
    with pytest.raises(TypeError, match="axis 'seed'"):
        cli.main(["sweep", str(config), "--out", str(tmp_path / "o")])
