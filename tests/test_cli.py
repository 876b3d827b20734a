"""The command line: experiment names, unknown names, the progress lines of `gradflow figures`
and one-line errors (the vanishing experiment itself is tested in test_vanishing.py)."""

import json

import pytest

from gradflow import cli, experiments


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


# ---------------------------------------------------------------------------------------------
# Progress lines and one-line errors


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
