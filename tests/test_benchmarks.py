"""The benchmark entry point: a tiny end-to-end run, module discovery, and the rule that a peer's
time is reported only after its result matched gradflow's."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from benchmarks import __main__ as entry
from benchmarks import _common as C
from benchmarks import bench_core, peers_nt

ROOT = Path(__file__).resolve().parents[1]


# A subprocess running the whole entry point (~9 s on 2 cores): the slow step. Checks, timing and
# discovery are tested one by one in the default run below.
@pytest.mark.slow
def test_tiny_run_of_the_entry_point(tmp_path):
    # A subprocess: the entry point sets JAX's global matmul precision, which must not leak into
    # the rest of the test session.
    out = tmp_path / "bench"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "benchmarks", "--tiny", "--only", "core", "scaling", "--skip-nt"]
    proc = subprocess.run(
        [*cmd, "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = json.loads((out / "results.json").read_text())
    for r in records:
        assert {"workload", "implementation", "median_s", "device", "status"} <= set(r)
        if r["status"] == "ok":
            assert r["median_s"] > 0 and r["check"]["passed"]
        else:  # only peers that cannot run here, with the reason
            assert r["median_s"] is None and r["reason"]
    workloads = {r["workload"] for r in records}
    prefixes = ("matmul_rate", "a_mlp", "b_mlp", "c_rnn", "d_meanfield", "e_matfree_topk_n")
    prefixes += ("a_scaling_products", "a_scaling_spectra", "f_single_jacobian")
    for prefix in prefixes:
        assert any(w.startswith(prefix) for w in workloads), prefix
    gradflow = [r for r in records if r["implementation"].startswith("gradflow")]
    assert gradflow and all(r["status"] == "ok" for r in gradflow)
    for r in records:  # every torch peer either passed its check or says torch is missing
        if r["implementation"].startswith("torch"):
            assert r["status"] == "ok" or "torch not installed" in r["reason"]
    nt = [r for r in records if r["implementation"].startswith("neural-tangents")]
    assert nt and nt[0]["status"] == "skipped" and "--skip-nt" in nt[0]["reason"]
    md = (out / "results.md").read_text()
    assert "### a_mlp_partial_product_spectra" in md and "vs ref" in md and "## Summary" in md
    env_info = json.loads((out / "environment.json").read_text())
    assert env_info["precision"]["jax_default_matmul_precision"] == "highest"


def test_wrong_answer_is_never_timed():
    calls = []

    def fn():
        calls.append(1)
        return np.array([1.0, 2.0])

    def check(result):
        return C.check_close("x", [1.0, 2.5], result, rtol=1e-3)

    with pytest.raises(C.CheckFailed, match="exceeds"):
        C.measure(fn, repeats=5, check=check)
    assert len(calls) == 1  # the first (untimed) call only

    records = []
    group = C.Group(records, 3, None)
    out = group.add("w", "peer", "cpu", fn, check=check, extra={"sizes": {}})
    assert out is None
    group.time()
    C.flush()
    (rec,) = records
    assert rec["status"] == "check_failed" and rec["median_s"] is None
    assert "exceeds" in rec["reason"]
    assert len(calls) == 2  # one first call here, none in the timing rounds
    md = entry.markdown(records, _env())
    assert "check_failed" in md and "| — |" in md


def test_timed_call_must_return_the_checked_answer():
    # The bug this guards: closures set up for one size, timed after the names they read were
    # rebound to another size's problem (workload e timed width 8192 as "width 256").
    records, state = [], {"x": np.array([1.0, 2.0])}
    group = C.Group(records, 2, None)
    check = lambda r: C.check_close("x", [1.0, 2.0], r, rtol=1e-6)  # noqa: E731
    group.add("w", "impl", "cpu", lambda: state["x"], check=check, extra={})
    group.add("w", "same", "cpu", lambda: np.array([1.0, 2.0]), check=check, extra={})
    state["x"] = np.array([1.0, 3.0])  # rebound after the check
    C.flush()
    bad, good = records
    assert bad["status"] == "check_failed" and bad["median_s"] is None
    assert "different answer" in bad["reason"]
    assert good["median_s"] is not None and good.get("status", "ok") == "ok"


def test_group_times_passing_implementations_in_interleaved_rounds():
    order, records = [], []
    group = C.Group(records, 3, None)
    for name in ("gradflow x", "peer y"):
        fn = lambda name=name: order.append(name) or np.zeros(2)
        group.add("w", name, "cpu", fn, check=None, extra={}, flops=1e6)
    assert order == ["gradflow x", "peer y"] and all(r["median_s"] is None for r in records)
    C.flush()
    # Interleaved rounds (each implementation once per round, in a fresh order), not one
    # implementation's calls one after the other.
    rounds = [order[i : i + 2] for i in range(2, 8, 2)]
    assert all(sorted(r) == ["gradflow x", "peer y"] for r in rounds)
    assert rounds[0] == ["gradflow x", "peer y"]  # round 0 in the order given
    for r in records:
        assert r["repeats"] == 3 and r["median_s"] >= r["min_s"] >= 0 and r["gflops"] > 0


def test_measure_times_after_a_passing_check_and_respects_budget():
    fields, result = C.measure(lambda: np.ones(3), repeats=4, check=lambda r: {"ok": 1})
    assert fields["repeats"] == 4 and fields["median_s"] >= 0 and fields["check"]["passed"]
    fields, _ = C.measure(lambda: np.ones(3), repeats=50, budget_s=0.0)
    assert fields["repeats"] == 1


def test_check_close():
    info = C.check_close("a", [1.0, -np.inf], [1.0 + 1e-7, -np.inf], rtol=1e-6)
    assert info["max_abs_err"] < 1e-6
    with pytest.raises(C.CheckFailed, match="shape"):
        C.check_close("a", [1.0], [1.0, 2.0])
    with pytest.raises(C.CheckFailed, match="non-finite"):
        C.check_close("a", [1.0], [np.nan], atol=1.0)


def test_log_spectra_check_ignores_only_rounding_level_singular_values():
    ref = np.log(np.array([[1.0, 0.5, 1e-6]]))
    noisy_tail = np.log(np.array([[1.0, 0.5, 3e-6]]))  # below 1e-3 σ_1: rounding noise
    C.check_log_spectra("s", ref, noisy_tail)
    wrong = np.log(np.array([[1.0, 0.51, 1e-6]]))
    with pytest.raises(C.CheckFailed):
        C.check_log_spectra("s", ref, wrong)


def test_discovery_records_broken_modules(tmp_path):
    (tmp_path / "bench_good.py").write_text(
        textwrap.dedent(
            """
            def run(quick=False):
                return [{"workload": "w", "implementation": "gradflow x", "median_s": 0.5}]
            """
        )
    )
    (tmp_path / "bench_broken.py").write_text("import a_module_that_does_not_exist\n")
    (tmp_path / "bench_raises.py").write_text(
        "def run(quick=False):\n    raise RuntimeError('boom')\n"
    )
    (tmp_path / "helper.py").write_text("raise SystemExit('not a bench module')\n")
    assert entry.discover(tmp_path) == ["bench_broken", "bench_good", "bench_raises"]
    records = entry.run_modules(True, directory=tmp_path, log=lambda m: None)
    by_module = {r["module"]: r for r in records}
    assert by_module["bench_good"]["status"] == "ok" and by_module["bench_good"]["device"]
    assert by_module["bench_broken"]["status"] == "skipped"
    assert "ModuleNotFoundError" in by_module["bench_broken"]["reason"]
    assert (
        by_module["bench_raises"]["status"] == "error"
        and "boom" in by_module["bench_raises"]["reason"]
    )
    assert entry.discover()[0] == "bench_core"


def test_unavailable_neural_tangents_is_recorded_as_skipped(monkeypatch):
    def unavailable(**kwargs):
        raise peers_nt.PeerUnavailable("pip: no matching distribution (test)")

    monkeypatch.setattr(peers_nt, "ensure_venv", unavailable)
    monkeypatch.delenv("GRADFLOW_BENCH_SKIP_NT", raising=False)
    records = bench_core.workload_d({"grid": 2, "depth": 2}, 1)
    C.flush()
    gf_rec, nt_rec = records
    assert gf_rec["status"] == "ok" and gf_rec["median_s"] > 0
    assert nt_rec["status"] == "skipped" and nt_rec["median_s"] is None
    assert "no matching distribution" in nt_rec["reason"]


def test_venv_location(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADFLOW_NT_VENV", str(tmp_path / "v"))
    assert peers_nt.venv_dir() == tmp_path / "v"
    monkeypatch.delenv("GRADFLOW_NT_VENV")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert peers_nt.venv_dir().parent == tmp_path / "gradflow"
    assert not str(peers_nt.venv_dir()).startswith(str(ROOT))  # nothing to git-ignore


@pytest.mark.slow
def test_neural_tangents_peer_matches_gradflow_meanfield():
    # Creates (once, ~1 min) the neural-tangents environment and compares a small grid.
    from gradflow import meanfield

    sw2, sb2 = np.array([0.5, 1.0, 3.0]), np.array([0.05, 0.3])
    try:
        out = peers_nt.meanfield_grid("erf", sw2, sb2, depth=10, q0=1.0)
    except peers_nt.PeerUnavailable as exc:  # e.g. no package index reachable
        pytest.skip(str(exc))
    s, b = np.meshgrid(sw2, sb2, indexing="ij")
    q = np.asarray(meanfield.q_layers("erf", s, b, 1.0, 10)[-1])
    np.testing.assert_allclose(out["q"], q, rtol=1e-4)
    np.testing.assert_allclose(out["chi1"], meanfield.chi1("erf", s, b, q=q), rtol=1e-4)


def _env():
    return {
        "command": "test",
        "jax_device": "cpu",
        "loadavg_before": [0, 0, 0],
        "loadavg_after": [0, 0, 0],
        "versions": {},
        "wall_s": 0.0,
    }


def _rec(workload, impl, median, load=None):
    return {
        "workload": workload,
        "implementation": impl,
        "median_s": median,
        "device": "cpu",
        "status": "ok",
        "load_during": load,
    }


def test_summary_gives_every_peer_ratio_and_the_best():
    records = [
        _rec("w", "gradflow x", 1.0),
        _rec("w", "gradflow x, other threads", 3.0),  # a gradflow variant is not a peer
        _rec("w", "torch y [torch threads 2]", 2.0),
        _rec("w", "torch y [torch threads 1]", 1.5),
        _rec("w", "floor: the minimum", 0.5),
    ]
    (row,) = [line for line in entry.summary(records) if line.startswith("| w |")]
    assert "torch y [torch threads 1]" in row and "**1.5×**" in row and "2×, 1.5×" in row
    assert "floor 2.00× below gradflow" in row


def test_busy_machine_is_marked_and_can_be_refused(tmp_path, monkeypatch):
    cores = os.cpu_count() or 1
    records = [_rec("w", "gradflow x", 1.0, [0.1, cores + 1.5]), _rec("w", "peer", 2.0)]
    env = {**_env(), "loadavg_before": [0.1], "loadavg_after": [0.2], "cpu_count": cores}
    env["max_load"] = entry.max_load(records, env)
    assert env["max_load"] == cores + 1.5 and not entry.is_quiet(env)
    assert "Taken on a busy machine" in entry.markdown(records, env)
    # The benchmark's own threads: up to cores + 1 during the run is still quiet.
    quiet = [_rec("w", "gradflow x", 1.0, [0.1, cores + 0.5]), _rec("w", "peer", 2.0)]
    env["max_load"] = entry.max_load(quiet, env)
    assert entry.is_quiet(env) and "busy machine" not in entry.markdown(quiet, env)
    assert not entry.is_quiet({**env, "loadavg_before": [cores + 0.5]})  # busy before the start
    # --require-quiet: no results.md from a loaded run, exit status 3.
    monkeypatch.setattr(entry, "run_modules", lambda *a, **k: records)
    monkeypatch.setattr(C, "configure_precision", lambda: {})
    out = tmp_path / "o"
    assert entry.main(["--out", str(out), "--require-quiet", "--skip-nt"]) == 3
    assert (out / "results.json").exists() and not (out / "results.md").exists()


def test_thread_variants_restore_the_settings():
    from gradflow import threads

    before = threads.lapack_info().num_threads
    seen = C.with_lapack_threads(lambda: threads.lapack_info().num_threads, 2)()
    if before is not None:
        assert seen == 2
    assert threads.lapack_info().num_threads == before
    torch = C.torch_or_none()
    if torch is not None:
        n = torch.get_num_threads()
        assert C.with_torch_threads(torch.get_num_threads, 1)() == 1
        assert torch.get_num_threads() == n


@pytest.mark.slow
def test_load_test_tiny():
    from benchmarks import load_test

    records = load_test.run(load_test.TINY, busy=1, warmup_s=0.0, repeats=1)
    assert len(records) == 4
    for r in records:
        assert r["quiet_s"] > 0 and r["loaded_s"] > 0
        assert r["degradation"] == pytest.approx(r["loaded_s"] / r["quiet_s"])
    assert "degradation" in load_test.markdown(records)


@pytest.mark.slow
def test_accelerator_script_on_cpu(tmp_path):
    script = ROOT / "benchmarks" / "accelerator.sh"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": path}  # the script calls `python`
    env.pop("GRADFLOW_BENCH_ALLOW_CPU", None)
    refused = subprocess.run(
        ["bash", str(script), str(tmp_path / "x")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "no GPU/TPU" in refused.stderr
    env.update(GRADFLOW_BENCH_ALLOW_CPU="1", GRADFLOW_BENCH_ONLY="scaling")
    out = tmp_path / "acc"
    proc = subprocess.run(
        ["bash", str(script), str(out), "--tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "cpu" in (out / "device.txt").read_text().lower()
    records = json.loads((out / "results.json").read_text())
    assert records and all(r["device"] for r in records)


def test_every_passing_record_is_timed_without_torch(monkeypatch):
    # The bug this guards: a workload that returned early when torch is missing left its
    # group's timing rounds unrun, so gradflow's record said "ok" with no time (CI has no torch).
    from benchmarks import bench_scaling

    monkeypatch.setattr(C, "torch_or_none", lambda: None)
    sizes = {"depths": (), "width": 4, "ks": (1,), "single": (2, 4), "repeats": 1}
    records = bench_scaling.run(sizes=sizes)
    assert {r["status"] for r in records} == {"ok", "skipped"}
    assert all(r["median_s"] > 0 for r in records if r["status"] == "ok")
