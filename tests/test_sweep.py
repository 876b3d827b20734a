"""gradflow.sweep: vmapped = looped, one compile per shape, 1 = 8 devices, kill-and-resume, errors.

The machinery tests use ``toy``, a cheap measurement with a scan and a PRNG (compiles in well under
a second); one test runs a built-in gradflow measurement end to end. Device-count and kill tests
run in subprocesses, as the device count is fixed when JAX starts.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow import sweep as sw
from gradflow.sweep import store

TESTS = Path(__file__).parent
EXAMPLES = TESTS.parent / "examples"


def toy(point, *, n: int = 4, sleep: float = 0.0):
    """h ← tanh(σ_w W_k h + σ_b) over ``depth`` layers; the norms and the final state.

    The weights are a cheap deterministic function of the seed (sines), not jax.random: threefry
    alone takes seconds to compile on a loaded CPU, and these tests are about the machinery.
    """
    if sleep:  # slows every chunk down (once per chunk), for the kill test
        jax.debug.callback(lambda: time.sleep(sleep))
    depth = point["depth"]
    dtype = jnp.result_type(float)
    phase = jnp.arange(1, depth * n * n + 1, dtype=dtype).reshape(depth, n, n)
    w = point["sigma_w"] * jnp.sin((point["seed"] + 1.0) * phase * 0.37) * math.sqrt(2.0 / n)

    def body(h, wk):
        h = jnp.tanh(wk @ h + point["sigma_b"])
        return h, jnp.linalg.norm(h)

    h, norms = jax.lax.scan(body, jnp.ones((n,), w.dtype), w)
    return {"h": h, "norms": norms, "total": jnp.sum(h)}


def toy_sweep(depths=(2, 3), seeds=4, dtype="float64", **options):
    axes = {
        "depth": list(depths),
        "seed": list(range(seeds)),
        "sigma_w": [0.5, 1.5, 2.5],
        "sigma_b": [0.0, 0.1],
    }
    return sw.Sweep.create(axes, toy, dtype=dtype, **options)


def _equal(a: sw.SweepResult, b: sw.SweepResult):
    assert a.names == b.names
    for name in a.names:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


# ---------------------------------------------------------------------------------------------


def test_classifies_axes():
    s = toy_sweep()
    assert s.static == ("depth",)
    assert s.batched == ("seed", "sigma_w", "sigma_b")
    assert s.n_configs == 2 * 4 * 3 * 2
    s2 = sw.Sweep.create({"act": ["tanh", "relu"], "x": [1.0]}, toy)
    assert s2.static == ("act",)  # non-numeric -> static
    s3 = sw.Sweep.create({"depth": [2], "seed": [0, 1]}, toy, static=["depth", "seed"])
    assert s3.batched == ()


@pytest.mark.parametrize("vmap_size", [None, 2])
def test_vmapped_sweep_equals_python_loop(x64, vmap_size):
    s = toy_sweep()
    # batch 5 with vmap_size 2: lax.map over pairs plus a remainder of one, on every chunk
    res = sw.run(s, batch_size=5, vmap_size=vmap_size, quiet=True)
    loop = {name: [] for name in res.names}
    # One jitted single-configuration function per depth (no vmap), called in a Python loop.
    single = {
        d: jax.jit(
            lambda seed, w, b, d=d: toy({"depth": d, "seed": seed, "sigma_w": w, "sigma_b": b})
        )
        for d in s.axes["depth"]
    }
    for point in s.points():
        out = single[point["depth"]](point["seed"], point["sigma_w"], point["sigma_b"])
        for name in loop:
            loop[name].append(np.asarray(out[name]))
    for name in res.names:
        assert res[name].dims[:4] == ("depth", "seed", "sigma_w", "sigma_b")
        # points() order: static axes outermost, then the batched axes row-major.
        rows = []
        for d in s.axes["depth"]:
            block = res.block(name, depth=d).values
            rows += list(block.reshape(-1, *block.shape[len(s.batched) :]))
        assert len(rows) == len(loop[name])
        for got, want in zip(rows, loop[name]):
            # vmap vs unbatched float64: the same operations, possibly fused differently.
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.slow  # ~30 s on a loaded 2-core CPU: compiles a flax MLP + Jacobians twice
def test_builtin_measurement_vmapped_equals_loop(x64):
    s = sw.Sweep.create(
        {"depth": [3], "width": [4], "seed": [0, 1], "sigma_w": [0.8, 1.6]},
        "jacobian_spectrum",
        dtype="float64",
    )
    res = sw.run(s, batch_size=4, quiet=True)

    @jax.jit
    def reference(seed, sigma_w):  # written out with the public API, one configuration a call
        model = sw.mlp_from_point({"depth": 3, "width": 4, "sigma_w": sigma_w})
        kp, kx, _ = jax.random.split(jax.random.key(seed), 3)
        x = jax.random.normal(kx, (4,), jnp.float64)
        params = model.init(kp, x)
        return gf.jacobians.backward_products(model.chain(params, x)).matrices[0]

    for i, point in enumerate(s.points()):
        product = np.asarray(reference(point["seed"], point["sigma_w"]))
        want = np.log(np.linalg.svd(product, compute_uv=False))
        got = res["log_singular_values"].values.reshape(4, 4)[i]
        np.testing.assert_allclose(got, want, rtol=1e-10)
    assert res["log_norm"].dims[-1] == "layer"
    # mean-field parametrisation: init_mean is mean × fan_in; Yilmaz–Poli's −8 -> mean −8/N
    m = sw.mlp_from_point({"depth": 2, "width": 64, "init_mean": -8.0, "init": "gaussian"})
    w = m.init(jax.random.key(0), jnp.zeros(64))["params"]["hidden"]["kernel"]
    assert abs(float(jnp.mean(w)) + 8 / 64) < 0.01


def test_compiles_once_per_shape(tmp_path):
    traces = []

    def counted(point):
        traces.append(1)  # Python runs only while tracing
        return toy(point)

    s = sw.Sweep.create(toy_sweep().axes, counted)
    res = sw.run(s, tmp_path / "a", batch_size=3, quiet=True)  # 24 configs -> 8 chunks per depth
    assert len(traces) == 2  # two depths
    assert res.manifest["shapes"]["0"]["n_chunks"] == 8
    sw.run(s, tmp_path / "a", quiet=True)  # finished: nothing traced, nothing compiled
    assert len(traces) == 2
    traces.clear()
    sw.run(s, memory_budget="64kB", quiet=True)  # + one memory-analysis compile per shape
    assert len(traces) == 4
    sw.run(s, memory_budget="64kB", quiet=True)  # the same sweep again: compiled programs cached
    assert len(traces) == 4
    sw.clear_cache()
    sw.run(s, memory_budget="64kB", quiet=True)
    assert len(traces) == 8


def test_memory_budget_sets_the_chunk_size(monkeypatch):
    """batch_size = ⌊budget / bytes per config⌋, at least 1 and at most what the grid needs."""
    s = toy_sweep()  # 24 batched configs per depth
    ref = sw.run(s, batch_size=24, quiet=True)
    # A real budget of 1 byte cannot hold one config: one config per chunk.
    assert sw.run(s, memory_budget=1, quiet=True).manifest["shapes"]["0"]["n_chunks"] == 24
    # With the per-config estimate pinned to 1000 bytes the arithmetic is exact.
    monkeypatch.setattr(sw.runner, "_per_config_bytes", lambda *a, **k: 1000)
    for budget, batch, chunks in ((3500, 3, 8), (999, 1, 24), ("1GB", 24, 1)):
        res = sw.run(s, memory_budget=budget, quiet=True)
        layout = res.manifest["shapes"]["0"]
        assert (layout["batch_size"], layout["n_chunks"]) == (batch, chunks), budget
        for name in ref.names:  # float64; only the vmapped batch size differs
            np.testing.assert_allclose(res[name].values, ref[name].values, rtol=1e-12)


def test_resume_recomputes_only_missing_chunks(tmp_path):
    s = toy_sweep()
    full = sw.run(s, tmp_path, batch_size=4, quiet=True)
    chunks = sorted((tmp_path / "chunks").glob("*.npz"))
    assert len(chunks) == 12 and not list(tmp_path.rglob("*.tmp"))  # atomic: no leftovers
    mtimes = {c.name: c.stat().st_mtime_ns for c in chunks}
    chunks[5].unlink()
    again = sw.run(s, tmp_path, quiet=True)
    session = again.manifest["sessions"][-1]
    assert (session["chunks_computed"], session["chunks_skipped"]) == (1, 11)
    for c in chunks:
        if c != chunks[5]:
            assert c.stat().st_mtime_ns == mtimes[c.name]
    _equal(full, again)
    _equal(full, sw.load(tmp_path))
    with np.load(tmp_path / sw.RESULTS) as z:
        np.testing.assert_array_equal(z["total"], full["total"].values)


def test_mismatched_config_is_an_error(tmp_path):
    sw.run(toy_sweep(), tmp_path, batch_size=4, quiet=True)
    with pytest.raises(ValueError, match="different sweep.*axes.seed"):
        sw.run(toy_sweep(seeds=5), tmp_path, quiet=True)
    with pytest.raises(ValueError, match="different sweep.*options.n"):
        sw.run(toy_sweep(n=3), tmp_path, quiet=True)
    with pytest.raises(ValueError, match="different sweep.*dtype"):
        sw.run(toy_sweep(dtype="float32"), tmp_path, quiet=True)
    with pytest.raises(ValueError, match="batch_size=4"):
        sw.run(toy_sweep(), tmp_path, batch_size=2, quiet=True)


def test_labelled_results_and_padding(x64):
    res = sw.run(toy_sweep(depths=(2, 5), seeds=2), batch_size=4, quiet=True)
    norms = res["norms"]
    assert norms.dims == ("depth", "seed", "sigma_w", "sigma_b", "dim_0")
    assert norms.shape == (2, 2, 3, 2, 5)
    assert np.isnan(norms.sel(depth=2).values[..., 2:]).all()  # padded past depth 2
    assert not np.isnan(norms.sel(depth=5).values).any()
    one = norms.sel(depth=5, sigma_w=1.5, sigma_b=[0.1])
    assert one.dims == ("seed", "sigma_b", "dim_0") and one.shape == (2, 1, 5)
    med = norms.reduce(np.median, "seed")
    assert med.dims == ("depth", "sigma_w", "sigma_b", "dim_0")
    with pytest.raises(ValueError, match="sigma_w=9"):
        norms.sel(sigma_w=9.0)
    blk = res.block("norms", depth=2)
    assert blk.shape == (2, 3, 2, 2)


def test_progress_line_and_quiet():
    s = toy_sweep(depths=(2,), seeds=2)
    buf = io.StringIO()
    sw.run(s, batch_size=4, stream=buf)
    text = buf.getvalue()
    assert "chunks 3/3" in text and "configs 12/12" in text
    assert "configs/s" in text and "ETA" in text
    buf = io.StringIO()
    sw.run(s, batch_size=4, stream=buf, quiet=True)
    assert buf.getvalue() == ""


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown measurement"):
        sw.Sweep.create({"x": [1.0]}, "no_such_measurement")
    with pytest.raises(ValueError, match="repeated"):
        sw.Sweep.create({"x": [1.0, 1.0]}, toy)
    with pytest.raises(ValueError, match="cannot be batched"):
        sw.Sweep.create({"act": ["tanh"]}, toy, static=[])
    with pytest.raises(ValueError, match="dtype"):
        sw.Sweep.create({"x": [1.0]}, toy, dtype="float16")
    with pytest.raises(ValueError, match="JSON"):
        sw.Sweep.create({"x": [1.0]}, toy, n=object())
    with pytest.raises(ValueError, match="sigma_w applies"):
        sw.mlp_from_point({"depth": 2, "width": 4, "init": "glorot", "sigma_w": 1.0})
    with pytest.raises(ValueError, match="memory_budget"):
        sw.parse_bytes("lots")
    assert sw.parse_bytes("2GiB") == 2 << 30 and sw.parse_bytes("512MB") == 512_000_000


def test_init_axis_names_the_library_initialisers():
    # mlp_from_point draws W₀ with gradflow.init.get(init): at scale 1 and mean 0 its kernels are
    # exactly that initialiser's draws (1·W₀ + 0/fan_in changes no bit).
    key = jax.random.key(2)
    for name in gf.init.names():
        model = sw.mlp_from_point({"depth": 2, "width": 8, "activation": "tanh", "init": name})
        want = gf.init.get(name, "tanh")(key, (8, 8), jnp.float32)
        np.testing.assert_array_equal(model.kernel_init(key, (8, 8), jnp.float32), want)
    with pytest.raises(ValueError, match="init must be one of gaussian, glorot"):
        sw.mlp_from_point({"depth": 2, "width": 8, "init": "xavier"})
    with pytest.raises(ValueError, match="needs the activation"):
        gf.init.get("kumar")


def test_toml_cli_and_examples(tmp_path):
    cfg = tmp_path / "toy.toml"
    cfg.write_text(
        textwrap.dedent(
            """
            dtype = "float64"
            [measure]
            name = "test_sweep:toy"
            n = 3
            [axes]
            depth = [2]
            seed = { range = [0, 3] }
            sigma_w = { linspace = [0.5, 1.5, 3] }
            sigma_b = [0.0]
            [run]
            batch_size = 4
            """
        )
    )
    sys.path.insert(0, str(TESTS))
    try:
        from gradflow import cli

        assert cli.main(["sweep", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    finally:
        sys.path.remove(str(TESTS))
    res = sw.load(tmp_path / "out")
    assert res["h"].shape == (1, 3, 3, 1, 3)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["versions"]["jax"] == jax.__version__
    assert manifest["device"]["kind"] and manifest["wall_s"] > 0
    assert cli.main(["sweep", str(tmp_path / "missing.toml"), "--out", str(tmp_path)]) == 2
    examples = sorted(EXAMPLES.glob("*.toml"))
    assert examples, "examples/*.toml should exist"
    for path in examples:  # every example parses into a valid sweep
        s, run_opts = sw.from_toml(path)
        assert s.n_configs >= 1 and set(run_opts) <= {"batch_size", "memory_budget", "vmap_size"}


# --- subprocesses: device counts and SIGKILL ----------------------------------------------------

_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import jax
from gradflow import sweep as sw
from test_sweep import toy_sweep
s = toy_sweep(sleep={sleep})
mode = sys.argv[2]
if mode == "spectrum":
    from test_sweep import _spectrum_sweep
    s = _spectrum_sweep()
sw.run(s, sys.argv[1], batch_size=2, quiet=True)
print(len(jax.devices()))
"""


def _script(tmp_path, sleep=0.0) -> Path:
    path = tmp_path / f"run_sweep_{int(sleep * 1000)}.py"
    path.write_text(_SCRIPT.format(tests=str(TESTS), sleep=sleep))
    return path


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _spectrum_sweep():
    return sw.Sweep.create(
        {"depth": [3], "width": [4], "seed": [0, 1, 2], "sigma_w": [0.8, 1.6, 2.4]},
        "jacobian_spectrum",
        dtype="float64",
    )


@pytest.mark.parametrize("mode", ["toy", pytest.param("spectrum", marks=pytest.mark.slow)])
def test_one_and_eight_devices_agree_bitwise(tmp_path, mode):
    s = toy_sweep(sleep=0.0) if mode == "toy" else _spectrum_sweep()
    one = sw.run(s, tmp_path / "d1", batch_size=2, devices=jax.devices()[:1], quiet=True)
    proc = subprocess.run(
        [sys.executable, str(_script(tmp_path)), str(tmp_path / "d8"), mode],
        env=_env(8),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "8"
    eight = sw.load(tmp_path / "d8")
    assert one.manifest["device"]["count"] == 1 and eight.manifest["device"]["count"] == 8
    # 8 devices hold 2 configurations each: a chunk is 16, padded past the grid's end.
    assert eight.manifest["shapes"]["0"]["chunk_size"] == 16
    _equal(one, eight)  # bitwise, float64


# --- several processes (jax.distributed on localhost, CPU collectives over gloo) ------------------

_MULTI = """
import sys
pid, n, out, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
sleep = float(sys.argv[5])
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{{port}}", num_processes=n, process_id=pid)
sys.path.insert(0, {tests!r})
from test_sweep import toy_sweep
from gradflow import _io
from gradflow import sweep as sw
from gradflow.sweep import store
if pid:  # only process 0 may write: any write from another process fails it
    def refuse(*args, **kwargs):
        raise AssertionError(f"process {{pid}} wrote to the store")
    for name in ("write_chunk", "write_manifest", "write_results", "create_store"):
        setattr(store, name, refuse)
    _io.atomic_paths = refuse
sw.run(toy_sweep(sleep=sleep), out, batch_size=2, quiet=True)
print("ok", jax.process_count(), len(jax.devices()))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes(tmp_path, out, n: int, sleep: float) -> list[subprocess.Popen]:
    script = tmp_path / "multi.py"
    script.write_text(_MULTI.format(tests=str(TESTS)))
    port = str(_free_port())
    return [
        subprocess.Popen(
            [sys.executable, str(script), str(i), str(n), str(out), port, str(sleep)],
            env=_env(1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]


@pytest.mark.slow  # ~20 s: two JAX processes start, connect and compile
def test_two_processes_equal_one_bitwise_and_only_process_0_writes(tmp_path):
    """jax.distributed on localhost: 2 processes × 1 CPU device give the float64 results of one
    process with 2 devices (the same per-device batch), bit for bit; process 1 never writes."""
    procs = _processes(tmp_path, tmp_path / "multi", 2, 0.0)
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        assert out.split()[-3:] == ["ok", "2", "2"]
    multi = sw.load(tmp_path / "multi")
    assert multi.manifest["device"]["process_count"] == 2
    proc = subprocess.run(
        [sys.executable, str(_script(tmp_path)), str(tmp_path / "one"), "toy"],
        env=_env(2),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _equal(multi, sw.load(tmp_path / "one"))
    assert store.verify(tmp_path / "multi").problems == []


@pytest.mark.slow  # ~25 s
def test_killing_one_process_leaves_a_store_one_process_completes(tmp_path):
    """SIGKILL process 1 mid-sweep: process 0 cannot go on (its collectives wait for a dead
    peer) and is killed too; one process with 2 devices then resumes the store to the results
    of an uninterrupted run, bit for bit, recomputing only what was missing."""
    out = tmp_path / "killed"
    procs = _processes(tmp_path, out, 2, 0.3)
    try:
        deadline = time.time() + 240
        while not list((out / "chunks").glob("*.npz")):
            assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-3000:]
            assert time.time() < deadline, "no chunk appeared"
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)
        try:
            procs[0].wait(timeout=20)
        except subprocess.TimeoutExpired:
            procs[0].send_signal(signal.SIGKILL)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    check = store.verify(out)
    assert not check.complete and 0 < len(check.ok) < 12 and check.holder is None
    slow = _script(tmp_path, sleep=0.3)
    for name in ("killed", "clean"):
        proc = subprocess.run(
            [sys.executable, str(slow), str(tmp_path / name), "toy"],
            env=_env(2),
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = sw.load(out)
    _equal(resumed, sw.load(tmp_path / "clean"))
    session = resumed.manifest["sessions"][-1]
    assert session["chunks_skipped"] == len(check.ok)
    assert session["chunks_computed"] == 12 - len(check.ok)


@pytest.mark.slow  # a subprocess killed mid-sweep, ~8 s
def test_killed_sweep_resumes_without_recomputing(tmp_path):
    slow = _script(tmp_path, sleep=0.1)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(slow), str(out), "toy"], env=_env(1), stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 240
        while not list((out / "chunks").glob("*.npz")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no chunk appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # mid-sweep: 24 chunks of 2 configs, 0.1 s each
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    before = {c.name: c.stat().st_mtime_ns for c in (out / "chunks").glob("*.npz")}
    assert 0 < len(before) < 24
    # Resume here, in this process (a rerun can happen anywhere), and compare with an
    # uninterrupted run of the same sweep in another directory.
    s = toy_sweep(sleep=0.1)
    sw.run(s, out, batch_size=2, quiet=True)
    sw.run(s, tmp_path / "clean", batch_size=2, quiet=True)
    resumed, clean = sw.load(out), sw.load(tmp_path / "clean")
    _equal(resumed, clean)
    for name, mtime in before.items():  # finished chunks untouched
        assert (out / "chunks" / name).stat().st_mtime_ns == mtime
    sessions = resumed.manifest["sessions"]
    assert sessions[-1]["chunks_computed"] == 24 - len(before)
    assert sessions[-1]["chunks_skipped"] == len(before)


@pytest.mark.slow
def test_bench_sweep_smoke():
    """benchmarks/bench_sweep.py runs at toy sizes and its implementations agree (checked)."""
    sys.path.insert(0, str(TESTS.parent))
    try:
        from benchmarks import bench_sweep
    finally:
        sys.path.remove(str(TESTS.parent))
    sizes = {
        "main": {"inits": 3, "depth": 3, "width": 4, "eager_inits": 1},
        "matmul": 64,
        "repeats": 1,
    }
    records = bench_sweep.run(sizes=sizes)
    assert {r["workload"] for r in records} == {
        "sweep_matmul_rate",
        "sweep_jacobian_spectrum_3init_d3_w4",
    }
    for r in records:
        assert r["status"] == "ok" and r["median_s"] > 0, r
        assert {"workload", "implementation", "median_s", "device"} <= set(r)
    assert len(records) == 8


def test_on_mismatch_replace(tmp_path):
    sw.run(toy_sweep(), tmp_path, batch_size=4, quiet=True)
    assert len(list((tmp_path / "chunks").glob("*.npz"))) == 12
    res = sw.run(toy_sweep(seeds=2), tmp_path, batch_size=4, on_mismatch="replace", quiet=True)
    assert res.manifest["config"]["axes"]["seed"] == [0, 1]
    assert len(res.manifest["sessions"]) == 1
    assert len(list((tmp_path / "chunks").glob("*.npz"))) == 6
    with pytest.raises(ValueError, match="on_mismatch"):
        sw.run(toy_sweep(), tmp_path, on_mismatch="ignore")


# ---------------------------------------------------------------------------------------------
# Interop: xarray and netCDF


def test_netcdf_round_trip_equals_the_store(tmp_path, x64):
    xr = pytest.importorskip("xarray")
    # The padding sweep above plus a static string axis (a non-ASCII value): norms of depth 2
    # are NaN-padded to depth 5; "norms" names its dim, "h" does not.
    measure = sw.Measurement(toy, "toy", output_dims={"norms": ("layer",)})
    axes = {"depth": [2, 5], "act": ["tanh", "σ"], "seed": [0, 1], "sigma_w": [0.5, 1.5, 2.5]}
    axes["sigma_b"] = [0.0, 0.1]
    sw.run(sw.Sweep.create(axes, measure, dtype="float64"), tmp_path, batch_size=4, quiet=True)
    res = sw.load(tmp_path)
    ds = res.to_xarray()
    assert ds["norms"].dims == (*axes, "layer") and ds["h"].dims == (*axes, "h_dim_0")
    assert ds["total"].dims == tuple(axes) and ds.sizes["layer"] == 5
    assert json.loads(ds.attrs["gradflow_config"]) == res.config
    assert ds.attrs["gradflow_complete"] == 1

    path = res.to_netcdf(tmp_path / "export" / "sweep.nc")
    with xr.open_dataset(path, engine="scipy") as back:
        back = back.load()
    with np.load(tmp_path / "results.npz") as store:
        stored = {k: store[k] for k in store.files}
    assert sorted(back.data_vars) == sorted(res.names)
    for name in res.names:
        want = stored[name]
        got = back[name].values
        assert got.dtype == want.dtype == np.float64, name
        # Bitwise: the same bytes, NaN padding included.
        np.testing.assert_array_equal(got.view(np.uint64), want.view(np.uint64), err_msg=name)
        np.testing.assert_array_equal(got, res[name].values, err_msg=name)
        assert back[name].dims == ds[name].dims
    assert np.isnan(back["norms"].sel(depth=2).values[..., 2:]).all()
    for a, values in axes.items():
        np.testing.assert_array_equal(stored[f"__coords__/{a}"], values)
        assert back[a].values.tolist() == values, a  # int64 -> int32 on disk, same values
    assert back["depth"].dtype == np.int32 and back["depth"].attrs["gradflow_dtype"] == "int64"
    assert back["sigma_w"].dtype == np.float64 and "gradflow_dtype" not in back["sigma_w"].attrs
    xr.testing.assert_equal(
        back.drop_vars(["depth", "seed", "act"]), ds.drop_vars(["depth", "seed", "act"])
    )

    # One LabelledArray, selected: the same DataArray xarray itself would select.
    la = res["norms"].sel(act="σ", sigma_b=[0.1])
    da = la.to_xarray("norms")
    assert da.dims == la.dims and da.name == "norms" and "act" not in da.coords
    xr.testing.assert_identical(da, ds["norms"].sel(act="σ", sigma_b=[0.1]).drop_vars("act"))


def test_to_xarray_pads_shared_dims_and_casts_for_netcdf3(tmp_path):
    xr = pytest.importorskip("xarray")
    config = {
        "axes": {"flag": [True, False], "big": [1, 2**40]},
        "static": ["flag"],
        "measure": {"name": "hand", "output_dims": {"a": ["layer"], "b": ["layer"]}},
    }
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.asarray([[1, 2], [3, 4]], np.int64)
    res = sw.SweepResult(config, ({"a": a, "b": b, "c": b}, {"a": a + 6, "b": b + 4, "c": b}))
    ds = res.to_xarray()
    assert ds.sizes["layer"] == 3 and ds["c"].dims == ("flag", "big", "c_dim_0")
    assert ds["a"].dtype == np.float32 and ds["c"].dtype == np.int64  # nothing to pad
    # b has 2 layers where a has 3: NaN at the end, as float64.
    np.testing.assert_array_equal(ds["b"].values[0, :, :2], b)
    assert ds["b"].dtype == np.float64 and np.isnan(ds["b"].values[..., 2]).all()
    assert "gradflow_complete" not in ds.attrs  # no manifest: run in memory

    with xr.open_dataset(res.to_netcdf(tmp_path / "hand.nc"), engine="scipy") as back:
        back = back.load()
    assert back["flag"].dtype == np.bool_ and back["flag"].values.tolist() == [True, False]
    # 2**40 does not fit int32: float64, exact below 2**53, and the attribute says so.
    assert back["big"].dtype == np.float64 and back["big"].values.tolist() == [1, 2**40]
    assert back["big"].attrs["gradflow_dtype"] == "int64"
    assert back["c"].dtype == np.int32 and back["c"].attrs["gradflow_dtype"] == "int64"
    np.testing.assert_array_equal(back["c"].values, ds["c"].values)
    np.testing.assert_array_equal(back["a"].values, ds["a"].values)
    assert back["a"].dtype == np.float32

    huge = sw.SweepResult(
        {**config, "axes": {"flag": [True, False], "big": [1, 2**60]}}, res.blocks
    )
    with pytest.raises(ValueError, match=r"'big' holds integers beyond ±2\*\*53"):
        huge.to_netcdf(tmp_path / "huge.nc")
    assert not (tmp_path / "huge.nc").exists()
    clash = sw.SweepResult(
        {**config, "measure": {"name": "hand", "output_dims": {"a": ["big"]}}}, res.blocks
    )
    with pytest.raises(ValueError, match="output 'a' with dims .* clashes with the sweep axes"):
        clash.to_xarray()


def test_to_xarray_without_xarray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "xarray", None)  # import xarray now raises ImportError
    la = sw.LabelledArray(np.zeros(2), ("x",), {"x": np.arange(2)})
    with pytest.raises(ImportError, match=r"gradflow\[xarray\]"):
        la.to_xarray()


# --- configs that cannot be silently wrong -------------------------------------------------------

_GOOD_TOML = """\
dtype = "float32"
[measure]
name = "jacobian_spectrum"
[axes]
depth = [3]
width = [4]
seed = [0, 1]
sigma_w = [1.0]
[run]
batch_size = 2
"""

# (what to change in _GOOD_TOML, error class, what the message must name). Each is a TOML edit a
# careful user could make by mistake; every one is refused before any work, naming the key.
_BAD_TOML = [
    ("sigma_w = [1.0]", "sigma_W = [1.0]", ValueError, "axis 'sigma_W' is not used"),
    ("depth = [3]", "depth = [3.7]", TypeError, "axis 'depth' takes integers, got 3.7"),
    ("width = [4]", 'width = ["16"]', TypeError, "axis 'width' takes integers, got '16'"),
    ("seed = [0, 1]", "seed = [0.5, 1.5]", TypeError, "axis 'seed' takes integers"),
    ("seed = [0, 1]", "seed = [true, false]", TypeError, "axis 'seed' takes integers"),
    ("sigma_w = [1.0]", 'sigma_w = ["1.0"]', TypeError, "axis 'sigma_w' takes numbers"),
    ("sigma_w = [1.0]", "sigma_w = [true]", TypeError, "axis 'sigma_w' takes numbers"),
    ("sigma_w = [1.0]", "activation = [1]", TypeError, "axis 'activation' takes strings"),
    ("width = [4]\n", "", ValueError, "needs the axes \\['width'\\]"),
    (
        'name = "jacobian_spectrum"',
        'name = "jacobian_spectrum"\nresidual = "false"',
        TypeError,
        "option 'residual' .* takes booleans",
    ),
    (
        'name = "jacobian_spectrum"',
        'name = "jacobian_spectrum"\nbacth = 16',
        ValueError,
        "option 'bacth' is not an option .* \\(known: residual\\)",
    ),
    (
        'name = "jacobian_spectrum"',
        'name = "layer_grad_norms"\nbatch = 2.5',
        TypeError,
        "option 'batch' .* takes integers",
    ),
    (
        'name = "jacobian_spectrum"',
        'name = "layer_grad_norms"\nbatch = "8"',
        TypeError,
        "option 'batch' .* takes integers",
    ),
    (
        'dtype = "float32"',
        'dtype = "float32"\nstatic = ["sigma_w"]',
        ValueError,
        "static names \\['sigma_w'\\], which change no shape",
    ),
    (
        'dtype = "float32"',
        'dtype = "float32"\nstatic = ["seed"]',
        ValueError,
        "static names \\['seed'\\]",
    ),
    (
        'dtype = "float32"',
        'dtype = "float32"\nstatic = "depth"',
        TypeError,
        "static must be a list",
    ),
    ('dtype = "float32"', 'dtype = "float16"', ValueError, "dtype must be one of"),
    ('dtype = "float32"', "dtype = 64", TypeError, "dtype takes a string"),
    ("batch_size = 2", 'batch_size = "8"', TypeError, "\\[run\\] batch_size takes an integer"),
    ("batch_size = 2", "batch_size = 2.0", TypeError, "\\[run\\] batch_size takes an integer"),
    ("batch_size = 2", "vmap_size = true", TypeError, "\\[run\\] vmap_size takes an integer"),
    ("batch_size = 2", "memory_budget = [1]", TypeError, "\\[run\\] memory_budget"),
    ("batch_size = 2", "bacth_size = 2", ValueError, "unknown keys in \\[run\\]"),
    ("[axes]", "[axis]", ValueError, "unknown top-level keys \\['axis'\\]"),
    (
        'name = "jacobian_spectrum"',
        'name = "jacobian_spectrm"',
        ValueError,
        "unknown measurement 'jacobian_spectrm'",
    ),
    ("sigma_w = [1.0]", "sigma_w = [1.0, 1.0]", ValueError, "axis 'sigma_w' has repeated"),
    ("sigma_w = [1.0]", "sigma_w = []", ValueError, "axis 'sigma_w' has no values"),
    ("sigma_w = [1.0]", "sigma_w = nan", ValueError, "axis 'sigma_w': expected a list"),
    ("sigma_w = [1.0]", "sigma_w = [nan]", ValueError, "axis 'sigma_w' has a non-finite"),
    (
        "sigma_w = [1.0]",
        "sigma_w = { linspace = [0.5, 2] }",
        ValueError,
        "axis 'sigma_w': expected",
    ),
    ("sigma_w = [1.0]", "sigma_w = {linspace = [0.5, 2, 2.5]}", TypeError, "'sigma_w'.*integer"),
    ("seed = [0, 1]", "seed = {range = [0, 2.5]}", TypeError, "axis 'seed': range takes integers"),
    ("seed = [0, 1]", "seed = {range = [0, 0]}", ValueError, "axis 'seed' has no values"),
    ("depth = [3]", "depth = [3", ValueError, "not valid TOML"),
]


@pytest.mark.parametrize("old, new, error, message", _BAD_TOML, ids=[c[1] for c in _BAD_TOML])
def test_bad_toml_is_refused_before_any_work_naming_the_key(tmp_path, capsys, old, new, error,
                                                            message):  # fmt: skip
    assert old in _GOOD_TOML
    cfg = tmp_path / "bad.toml"
    cfg.write_text(_GOOD_TOML.replace(old, new, 1))
    with pytest.raises(error, match=message):
        sw.from_toml(cfg)
    from gradflow import cli

    # The command: one "gradflow: error: …" line naming the same key, no traceback, status 2,
    # and nothing written.
    assert cli.main(["sweep", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradflow: error:") and err.count("\n") == 1
    assert re.search(message, err) and "Traceback" not in err
    assert not (tmp_path / "out").exists()
