"""``python -m benchmarks [--quick] --out DIR``: every benchmark module, one run, one table.

Runs ``bench_core`` first (it measures the machine's matmul rate), then every other
``benchmarks/bench_*.py`` module's ``run(quick) -> list[dict]``; a module that fails to import or
to run is recorded as skipped/errored with the reason, never silently dropped. Writes

* ``DIR/results.json`` — the list of records ``{"workload", "implementation", "median_s",
  "device", ...}``, one per (workload, implementation) (``median_s`` is null for a peer that was
  skipped or failed its correctness check, with ``status`` and ``reason`` saying why);
* ``DIR/results.md`` — per workload: medians, the ratio to gradflow, GFLOP/s against the matmul
  rate, and the check each peer passed;
* ``DIR/environment.json`` — versions, devices, precision settings, load average, wall time.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from benchmarks import _common as C
from gradflow import threads

HERE = Path(__file__).resolve().parent

# Minimal sizes for the test suite's smoke run (seconds, not minutes).
TINY = {
    "matmul": {"n": 128},
    "a": {"width": 8, "depth": 4, "inits": 2},
    "b": {"width": 8, "depth": 4, "batch": 4},
    "c": {"width": 8, "steps": 20, "input_dim": 2},
    "d": {"grid": 3, "depth": 3},
    "e_check": {"width": 16, "steps": 5, "k": 2, "num_iters": 8},
    "e_big": {"width": 32, "steps": 5, "k": 2, "num_iters": 8},
    "repeats": 1,
}


def discover(directory: Path = HERE) -> list[str]:
    """Names of the ``bench_*.py`` modules in ``directory``, ``bench_core`` first."""
    names = sorted(p.stem for p in directory.glob("bench_*.py"))
    return sorted(names, key=lambda n: (n != "bench_core", n))


def _load(name: str, directory: Path):
    if directory == HERE:
        return importlib.import_module(f"benchmarks.{name}")
    spec = importlib.util.spec_from_file_location(
        f"benchmarks_ext.{name}", directory / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_modules(
    quick: bool, *, directory: Path = HERE, only=None, tiny: bool = False, log=print
) -> list[dict]:
    """Imports and runs every benchmark module; returns all their records."""
    records: list[dict] = []
    device = C.jax_device()
    for name in discover(directory):
        if only and name not in only and name.removeprefix("bench_") not in only:
            continue
        t0 = time.perf_counter()
        try:
            module = _load(name, directory)
        except Exception as exc:  # a broken peer module must not sink the others
            log(f"[benchmarks] {name}: import failed: {exc!r}")
            records.append(
                C.skipped_record(
                    f"module:{name}",
                    "(all)",
                    device,
                    f"import failed: {type(exc).__name__}: {exc}",
                    module=name,
                )
            )
            continue
        if not callable(getattr(module, "run", None)):
            records.append(
                C.skipped_record(
                    f"module:{name}",
                    "(all)",
                    device,
                    "module has no run(quick) function",
                    module=name,
                )
            )
            continue
        log(f"[benchmarks] {name} …")
        try:
            if tiny and name == "bench_core":
                out = module.run(quick=True, sizes=TINY)
            elif tiny and getattr(module, "TINY", None) is not None:
                out = module.run(quick=True, sizes=module.TINY)
            else:
                out = module.run(quick=quick)
        except Exception as exc:
            log(f"[benchmarks] {name}: run failed:\n{traceback.format_exc()}")
            records.append(C.failed_record(f"module:{name}", "(all)", device, exc, module=name))
            continue
        for r in out:
            if not isinstance(r, dict) or "workload" not in r or "implementation" not in r:
                raise TypeError(f"{name}.run returned a malformed record: {r!r}")
            r.setdefault("device", device)
            r.setdefault("median_s", None)
            r.setdefault("status", "ok" if r["median_s"] is not None else "skipped")
            r.setdefault("quick", quick)
            r["module"] = name
        records += out
        log(f"[benchmarks] {name}: {len(out)} records in {time.perf_counter() - t0:.1f} s")
    return records


def _fmt_s(x) -> str:
    if x is None:
        return "—"
    return f"{x:.3g}" if x >= 1e-3 else f"{x:.2e}"


def _is_gradflow(rec: dict) -> bool:
    return rec["implementation"].lower().startswith("gradflow")


def _is_floor(rec: dict) -> bool:
    return rec["implementation"].startswith("floor")


def summary(records: list[dict]) -> list[str]:
    """Per workload: gradflow's median and every peer's median / gradflow's (> 1: gradflow ahead).

    A peer timed in several variants (torch thread counts) is listed once per variant; the
    ``best peer`` column is the fastest of all, the ratio the acceptance criteria ask for.
    """
    out = [
        "| workload | gradflow median s | best peer | best peer / gradflow "
        "| all peers / gradflow |",
        "|---|---|---|---|---|",
    ]
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["workload"], []).append(r)
    for wl, recs in by.items():
        timed = [r for r in recs if r.get("median_s")]
        ref = next((r for r in timed if _is_gradflow(r)), None)
        peers = [r for r in timed if not _is_gradflow(r) and not _is_floor(r)]
        if ref is None or not peers:
            continue
        t = ref["median_s"]
        best = min(peers, key=lambda r: r["median_s"])
        floor = next((r for r in timed if _is_floor(r)), None)
        extra = f"; floor {t / floor['median_s']:.2f}× below gradflow" if floor else ""
        out.append(
            f"| {wl} | {_fmt_s(t)} | {best['implementation'].replace('|', '/')} | "
            f"**{best['median_s'] / t:.3g}×** | "
            + ", ".join(f"{r['median_s'] / t:.3g}×" for r in peers)
            + f"{extra} |"
        )
    return out


def markdown(records: list[dict], env: dict) -> str:
    """The results table: one section per workload, ratios against gradflow's time."""
    lines = [
        "# gradflow benchmarks",
        "",
        f"Run `{env['command']}` on {env['jax_device']} "
        f"(load average before/after: {env['loadavg_before']} / {env['loadavg_after']}); "
        f"float32 matmul precision `{C.MATMUL_PRECISION}` in JAX and torch; "
        f"jax {env['versions'].get('jax')}, torch {env['versions'].get('torch')}; "
        f"wall time {env['wall_s']:.0f} s.",
        "",
    ]
    cores = env.get("cpu_count") or os.cpu_count() or 1
    if env.get("max_load") is not None and not is_quiet(env):
        lines += [
            f"> **Taken on a busy machine** (1-minute load average up to {env['max_load']} on "
            f"{cores} cores): the times are not comparable with a quiet run; do not publish.",
            "",
        ]
    lines += ["## Summary", "", *summary(records), ""]
    lines += [
        "## Details",
        "",
        "Each time is the median (and minimum) of `repeats` calls after one untimed, checked "
        "call (compilation excluded, recorded as `first_call_s` in results.json); bench_core "
        "times a workload's implementations in interleaved rounds, so load changes on a shared "
        "machine hit all of them alike. % matmul rate = GFLOP/s (nominal flops / median) over "
        "the best measured float32 matmul rate. **vs ref** = that "
        "implementation's median / the reference's (gradflow's implementation, or the first "
        "listed where none is named gradflow): above 1 the reference is faster, below 1 the "
        "other is. A peer's time is reported only after its result matched the reference's "
        "(check column); `—` means no time (skipped or failed, with the reason).",
        "",
    ]
    rate = next(
        (
            r
            for r in records
            if r["workload"] == "matmul_rate"
            and r["implementation"].startswith("jax")
            and r.get("gflops")
        ),
        None,
    )
    by_workload: dict[str, list[dict]] = {}
    for r in records:
        by_workload.setdefault(r["workload"], []).append(r)
    for workload, recs in by_workload.items():
        ref = next((r for r in recs if _is_gradflow(r) and r.get("median_s")), None)
        ref = ref or next((r for r in recs if r.get("median_s")), None)
        sizes = next((r.get("sizes") for r in recs if r.get("sizes")), None)
        lines.append(f"### {workload}")
        if sizes:
            lines.append(f"sizes: `{json.dumps(sizes)}`")
        lines += [
            "",
            "| implementation | device | median s | min s | vs ref (median) | vs ref (min) "
            "| GFLOP/s | % matmul rate | check |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in recs:
            med, best = r.get("median_s"), r.get("min_s")
            ratio = ratio_min = "—"
            if med is not None and ref is not None and ref.get("median_s"):
                ratio = "1 (ref)" if r is ref else f"{med / ref['median_s']:.3g}×"
            if best is not None and ref is not None and ref.get("min_s"):
                ratio_min = "1 (ref)" if r is ref else f"{best / ref['min_s']:.3g}×"
            gfl = r.get("gflops")
            pct = r.get("pct_of_matmul_rate")
            peak = rate and (rate.get("gflops_best") or rate.get("gflops"))
            if pct is None and gfl and peak and workload != "matmul_rate":
                pct = 100 * gfl / peak
            check = r.get("check", {})
            if r.get("status") != "ok":
                note = f"**{r.get('status')}**: {str(r.get('reason', ''))[:300]}"
            elif check.get("max_abs_err") is not None:
                note = (
                    f"ok, max abs err {check['max_abs_err']:.2g} "
                    f"(atol {check.get('atol', 0):g}, rtol {check.get('rtol', 0):g})"
                )
            elif "q" in check and "chi1" in check:
                note = (
                    f"ok, max rel err q {check['q']['max_rel_err']:.2g}, "
                    f"χ₁ {check['chi1']['max_rel_err']:.2g}"
                )
            elif check.get("explicit_residual_top1") is not None:
                note = f"ok, ‖Pv−σu‖/σ = {check['explicit_residual_top1']:.2g}"
            else:
                note = "reference" if r is ref else "ok"
            impl = r["implementation"].replace("|", "/")
            lines.append(
                f"| {impl} | {r.get('device', '')} | {_fmt_s(med)} | {_fmt_s(best)} | {ratio} | "
                f"{ratio_min} | "
                f"{'—' if not gfl else f'{gfl:.3g}'} | "
                f"{'—' if pct is None or not math.isfinite(pct) else f'{pct:.1f} %'} | {note} |"
            )
        extras = [r for r in recs if r.get("peak_rss_bytes") or r.get("xla_temp_bytes")]
        for r in extras:
            lines.append("")
            rise = r.get("peak_rss_increase_bytes")
            lines.append(
                f"Memory ({r['implementation']}): XLA scratch "
                f"{r.get('xla_temp_bytes', 0) / 2**20:.1f} MiB; process peak RSS "
                f"{(r.get('peak_rss_bytes') or 0) / 2**30:.2f} GiB"
                + (f", of which {rise / 2**20:.0f} MiB during the run" if rise is not None else "")
                + f" (the n×n weights alone: {r.get('weights_bytes', 0) / 2**20:.0f} MiB"
                + (
                    f"; device peak {r['device_peak_bytes'] / 2**20:.0f} MiB"
                    if r.get("device_peak_bytes")
                    else ""
                )
                + f"); top log σ = "
                f"{', '.join(f'{v:.4f}' for v in r.get('log_top_singular_values', []))}."
            )
        lines.append("")
    return "\n".join(lines)


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("jax", "jaxlib", "flax", "numpy", "torch", "gradflow"):
        try:
            out[mod] = importlib.import_module(mod).__version__
        except Exception:
            out[mod] = None
    return out


def max_load(records: list[dict], env: dict) -> float:
    """The highest 1-minute load average seen: before, after, and around every group's rounds."""
    seen = [env["loadavg_before"][0], env["loadavg_after"][0]]
    seen += [x for r in records for x in (r.get("load_during") or []) if x is not None]
    return max(seen)


def is_quiet(env: dict) -> bool:
    """Whether a run's table may be published: the machine was quiet before it started (1-minute
    load average <= cores) and never busier than the benchmark itself plus one more runnable
    thread (<= cores + 1) while it ran — the benchmark alone keeps about ``cores`` threads busy,
    so the load seen during the run counts them too (a run beside two ``yes`` on 2 cores
    reaches 3.4–4 and is refused).
    """
    cores = env.get("cpu_count") or os.cpu_count() or 1
    return env["loadavg_before"][0] <= cores and env["max_load"] <= cores + 1


def _load_test(args, env: dict, t0: float) -> int:
    from benchmarks import load_test

    records = load_test.run(load_test.TINY if args.tiny else None, warmup_s=5 if args.tiny else 180)
    env["wall_s"] = time.perf_counter() - t0
    env["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    (args.out / "load_test.json").write_text(json.dumps(records, indent=1, default=float) + "\n")
    (args.out / "load_test.md").write_text(load_test.markdown(records))
    (args.out / "load_test_environment.json").write_text(json.dumps(env, indent=1) + "\n")
    print(f"[benchmarks] wrote {args.out}/load_test.json, load_test.md", flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="reduced sizes (< 10 min on 2 cores)")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--only", nargs="*", help="module names to run (e.g. core lyapunov)")
    parser.add_argument(
        "--skip-nt", action="store_true", help="do not create/use the neural-tangents environment"
    )
    parser.add_argument(
        "--load-test",
        action="store_true",
        help="gradflow's (a) and (c) quiet, then beside `yes` processes (benchmarks/load_test.py)",
    )
    parser.add_argument(
        "--require-quiet",
        action="store_true",
        help="refuse to write results.md (exit 3) unless the machine was quiet (is_quiet)",
    )
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the smoke test
    args = parser.parse_args(argv)
    if args.skip_nt:
        os.environ["GRADFLOW_BENCH_SKIP_NT"] = "1"
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    precision = C.configure_precision()
    env = {
        "command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
        "jax_device": C.jax_device(),
        "torch_device": C.torch_device()[1] if C.torch_or_none() is not None else None,
        "precision": precision,
        "versions": _versions(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        # Thread settings change CPU timings a lot on an oversubscribed machine (see README).
        "thread_env": {
            k: os.environ.get(k)
            for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")
        },
        "quick": args.quick,
        "lapack_threads": threads.lapack_info()._asdict(),
    }
    print(f"[benchmarks] device: {env['jax_device']}; precision: {precision}", flush=True)
    if env["loadavg_before"][0] > (os.cpu_count() or 1):
        print(
            f"[benchmarks] warning: load average {env['loadavg_before'][0]} exceeds "
            f"{os.cpu_count()} cores; CPU timings will be noisy (recorded)",
            flush=True,
        )
    if args.load_test:
        return _load_test(args, env, t0)
    records = run_modules(
        args.quick, only=args.only, tiny=args.tiny, log=lambda m: print(m, flush=True)
    )
    env["wall_s"] = time.perf_counter() - t0
    env["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    env["max_load"] = max_load(records, env)
    env["quiet"] = is_quiet(env)
    (args.out / "results.json").write_text(json.dumps(records, indent=1, default=float) + "\n")
    (args.out / "environment.json").write_text(json.dumps(env, indent=1) + "\n")
    if args.require_quiet and not env["quiet"]:
        print(
            f"[benchmarks] NOT publishing results.md: load average reached {env['max_load']} on "
            f"{os.cpu_count()} cores (results.json keeps the numbers)",
            flush=True,
        )
        return 3
    (args.out / "results.md").write_text(markdown(records, env) + "\n")
    print(
        f"[benchmarks] wrote {args.out}/results.json, results.md ({len(records)} records, "
        f"{env['wall_s']:.0f} s)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
