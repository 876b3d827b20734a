"""gradflow's workloads (a) and (c) on a quiet machine and beside busy processes, same run.

``python -m benchmarks --load-test --out DIR`` times gradflow's (a) all-partial-product spectra
and (c) Lyapunov spectrum (bench_core's quick sizes), each with jaxlib's LAPACK pinned to one
OpenBLAS thread (gradflow's default, :mod:`gradflow.threads`) and with OpenBLAS's own thread
count, in interleaved rounds: first quiet, then with ``busy`` processes running ``yes >
/dev/null`` (default: one per core, "twice" on 2 cores) once the 1-minute load average has
reached twice the core count, computing meanwhile (or ``warmup_s`` has passed; the load reached
is recorded).
Each record carries both medians and ``degradation`` = loaded median / quiet median.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time

from benchmarks import _common as C
from benchmarks import bench_core

__all__ = ["run", "SIZES"]

SIZES = {"a": bench_core.SIZES["quick"]["a"], "c": bench_core.SIZES["quick"]["c"], "repeats": 5}
TINY = {"a": {"width": 8, "depth": 4, "inits": 2}, "c": {"width": 8, "steps": 20, "input_dim": 2}}


def _log(msg: str) -> None:
    print(f"[load_test] {msg}", flush=True)


def _rounds(calls: dict, repeats: int) -> dict:
    """Median seconds of each call over ``repeats`` interleaved rounds."""
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            C.block(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _busy(n: int) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(["yes"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(n)
    ]


def run(
    sizes: dict | None = None,
    *,
    busy: int | None = None,
    warmup_s: float = 180.0,
    repeats: int | None = None,
) -> list[dict]:
    """Quiet and loaded medians of gradflow's (a) and (c), pinned and default LAPACK threads.

    Args:
      sizes: ``{"a": ..., "c": ..., "repeats": r}`` as bench_core's (default: quick sizes).
      busy: number of ``yes`` processes (default: the core count).
      warmup_s: at most this long waiting for the load average to reach 2 × cores.
      repeats: rounds per phase (default ``sizes["repeats"]``).

    Returns:
      One record per (workload, thread setting) with ``quiet_s``, ``loaded_s``,
      ``degradation``, and the load averages of both phases.
    """
    sizes = sizes or SIZES
    repeats = repeats or sizes.get("repeats", 5)
    cores = os.cpu_count() or 1
    busy = cores if busy is None else busy
    a, c = bench_core.setup_a(sizes["a"]).gradflow, bench_core.setup_c(sizes["c"])[-1]
    calls = {}
    for wl, fn in (("a_mlp_partial_product_spectra", a), ("c_rnn_lyapunov_spectrum", c)):
        calls[(wl, "pinned (1 OpenBLAS thread, gradflow default)")] = fn
        calls[(wl, f"OpenBLAS default ({cores} threads)")] = C.with_lapack_threads(fn, cores)
    for fn in calls.values():  # compile and warm up outside the timed rounds
        C.block(fn())
    load_quiet = [C.loadavg()]
    _log(f"quiet phase (load {load_quiet[0]}) …")
    quiet = _rounds(calls, repeats)
    load_quiet.append(C.loadavg())
    procs = _busy(busy)
    try:
        t0 = time.perf_counter()
        # Keep computing (untimed) while the 1-minute average catches up: the benchmark's own
        # threads are part of the load it runs under.
        while time.perf_counter() - t0 < warmup_s and (C.loadavg() or 0) < 2 * cores:
            for fn in calls.values():
                C.block(fn())
        load_busy = [C.loadavg()]
        _log(
            f"loaded phase ({busy} × yes, load {load_busy[0]} after "
            f"{time.perf_counter() - t0:.0f} s) …"
        )
        loaded = _rounds(calls, repeats)
        load_busy.append(C.loadavg())
    finally:
        for p in procs:
            p.kill()
            p.wait()
    dev, records = C.jax_device(), []
    for (wl, setting), q in quiet.items():
        rec = C.record(
            f"load_test_{wl}",
            f"gradflow, LAPACK threads: {setting}",
            dev,
            median_s=loaded[(wl, setting)],
            quiet_s=q,
            loaded_s=loaded[(wl, setting)],
            degradation=loaded[(wl, setting)] / q,
            load_quiet=load_quiet,
            load_busy=load_busy,
            busy_processes=busy,
            repeats=repeats,
            sizes=sizes["a" if wl.startswith("a_") else "c"],
        )
        records.append(rec)
        _log(
            f"{wl} / {setting}: quiet {q:.4g} s, loaded {rec['loaded_s']:.4g} s, "
            f"×{rec['degradation']:.2f}"
        )
    return records


def markdown(records: list[dict]) -> str:
    """The load test as a table."""
    lines = [
        "# Under load: gradflow's (a) and (c), quiet vs beside busy processes",
        "",
        "| workload | LAPACK threads | quiet median s | loaded median s | degradation "
        "| load (quiet) | load (busy) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['workload'].removeprefix('load_test_')} | "
            f"{r['implementation'].removeprefix('gradflow, LAPACK threads: ')} | "
            f"{r['quiet_s']:.3g} | {r['loaded_s']:.3g} | {r['degradation']:.2f}× | "
            f"{r['load_quiet']} | {r['load_busy']} ({r['busy_processes']} × `yes`) |"
        )
    return "\n".join(lines) + "\n"
