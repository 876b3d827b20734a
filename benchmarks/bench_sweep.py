"""Throughput of a Jacobian-spectrum sweep: ``gradflow.sweep`` vs a plain Python loop, same run.

Workload ``sweep_jacobian_spectrum_{inits}init_d{depth}_w{width}``: for each of ``inits`` seeds,
initialise a tanh MLP (N(0, 1/N) weights, the critical σ_w = 1, so the spectrum stays within
float32 at depth 100), and take the singular values of the Jacobian ∂h_depth/∂h_1 through all its
hidden layers. Implementations:

- ``gradflow.sweep, jacrev measurement``: the per-configuration function below (``jax.jacrev`` of
  the hidden chain, then an SVD) as a :mod:`gradflow.sweep` over the seed axis — one ``jit``,
  sharded over every device, chunked to the default memory budget, with the default
  ``vmap_size="auto"`` (on a CPU, groups whose working set fits in the L2 cache; the record's
  ``vmap_size`` is the size chosen);
- ``python loop, jax.jit(jacrev) per config``: the *same* function, jitted once, called once per
  seed in a Python loop (what a careful researcher writes by hand);
- ``python loop, eager jax.jacrev``: the same without ``jit`` (what one writes first), timed on
  the first ``eager_inits`` seeds only, its throughput in configurations/s;
- ``gradflow.sweep, jacrev measurement, full vmap``: the same sweep with ``vmap_size=None``,
  vmapping each device's whole batch at once (the default before ``"auto"``);
- ``gradflow.sweep, jacrev measurement, vmap_size=1``: the same sweep mapping over each
  device's configurations one at a time inside the program (``lax.map``) instead of vmapping
  them: on a CPU, large per-configuration work runs faster unbatched;
- ``gradflow.sweep, built-in jacobian_spectrum``: the library measurement (default
  ``vmap_size``), which computes every backward product ∂h_depth/∂h_k (log-scale form) on top
  of the end-to-end spectrum — about twice the flops, and the per-layer profile for free;
- ``gradflow.sweep, jacrev measurement, with store``: as the first, writing the chunked store
  (fresh directory per call) — the cost of resumability.

Every implementation's log singular values are checked against the jitted loop's (σ_i >= 1e-3
σ_1, atol 2e-3 in log σ) before it is timed; then ``repeats`` rounds time every implementation
once per round, in turn (a shared machine's load changes then hit all of them alike). Each record
carries ``configs_per_s`` (median) and ``configs_per_s_best`` (fastest round), the nominal
flops of its algorithm, the GFLOP/s achieved and that as a percentage of this machine's float32
matmul rate measured in the same run (workload ``sweep_matmul_rate``); the sweep records carry
``speedup_vs_jit_loop`` and ``speedup_vs_eager_loop`` (throughput ratios of medians) and their
``_best`` variants (of the fastest rounds: on a shared machine, the least disturbed).

Two sizes of the workload run: ``main``, the issue's 64 seeds × depth 100 × width 256 (``quick``:
16 × 40 × 128, so that it fits well within 2 minutes on a 2-core CPU), where every configuration is
a few GFLOP of matmuls; and ``small``, 4096 seeds × depth 10 × width 16 (``quick``: 512), where
each configuration is tiny and a Python loop pays a dispatch per configuration. Matmul rate:
2048² (``quick``: 1024²).

Run as ``python benchmarks/bench_sweep.py [--quick]``; prints the records as JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _common as C
from gradflow import sweep as sw
from gradflow.chain import final_state

__all__ = ["run", "SIZES", "jacrev_spectrum"]

SIZES = {
    # "main" is the workload; "small" has tiny configurations, where per-call dispatch,
    # not arithmetic, bounds a Python loop.
    "full": {
        "main": {"inits": 64, "depth": 100, "width": 256, "eager_inits": 4},
        "small": {"inits": 4096, "depth": 10, "width": 16, "eager_inits": 8},
        "matmul": 2048,
        "repeats": 3,
    },
    "quick": {
        "main": {"inits": 16, "depth": 40, "width": 128, "eager_inits": 2},
        "small": {"inits": 512, "depth": 10, "width": 16, "eager_inits": 4},
        "matmul": 1024,
        "repeats": 5,
    },
}


def _log(msg: str) -> None:
    print(f"[bench_sweep] {msg}", file=sys.stderr, flush=True)


def jacrev_spectrum(point):
    """log σ_i of ∂h_depth/∂h_1 for one configuration, by ``jax.jacrev`` of the hidden chain.

    The same parameters and input as gradflow's ``jacobian_spectrum`` measurement (same keys).

    Returns:
      Array ``(width,)``, descending.
    """
    kp, kx, _ = jax.random.split(jax.random.key(point["seed"]), 3)
    model = sw.mlp_from_point(point)
    x = jax.random.normal(kx, (int(point["width"]),), jnp.float32)
    chain = model.chain(model.init(kp, x), x)
    jac = jax.jacrev(lambda h: final_state(chain.replace(h0=h)))(chain.h0)
    return jnp.log(jnp.linalg.svd(jac, compute_uv=False))


def _matmul_rate(n: int, repeats: int, dev: str) -> dict:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    timing, _ = C.measure(lambda: mm(a, b), repeats=repeats)
    flops = 2.0 * n**3
    return C.record(
        "sweep_matmul_rate",
        "jax.numpy.matmul float32",
        dev,
        sizes={"n": n},
        flops=flops,
        gflops=flops / timing["median_s"] / 1e9,
        **timing,
    )


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(fn) -> tuple[float, object, float]:
    """(wall seconds, result, CPU seconds of this process) of one call."""
    c0, t0 = _cpu(), time.perf_counter()
    out = fn()
    C.block(out)
    return time.perf_counter() - t0, out, _cpu() - c0


def run(quick: bool = False, sizes: dict | None = None) -> list[dict]:
    """Runs both workloads; returns one record per implementation plus the matmul rate.

    Every implementation is called once untimed (compilation; ``first_call_s``) and checked
    against the jitted loop; then ``repeats`` rounds time each implementation once per round, in
    turn, so that a shared machine's load changes affect all of them alike.
    """
    sz = dict(sizes or SIZES["quick" if quick else "full"])
    precision = C.configure_precision()
    dev = C.jax_device()
    records = [_matmul_rate(sz["matmul"], sz["repeats"], dev)]
    peak = records[0]["gflops"]
    _log(f"matmul {sz['matmul']}²: {peak:.1f} GFLOP/s")
    for name in ("main", "small"):
        if name in sz:
            records += _workload(dict(sz[name], repeats=sz["repeats"]), peak, dev, precision)
    return records


def _workload(sz: dict, peak: float, dev: str, precision: dict) -> list[dict]:
    inits, depth, width, repeats = sz["inits"], sz["depth"], sz["width"], sz["repeats"]
    records = []
    wl = f"sweep_jacobian_spectrum_{inits}init_d{depth}_w{width}"
    steps = depth - 1
    static = {"depth": [depth], "width": [width], "activation": ["tanh"], "init": ["gaussian"]}
    point0 = {k: v[0] for k, v in static.items()}
    # Nominal flops per configuration: reverse mode pushes n cotangents through K layers
    # (2n³ each) plus one SVD (~8n³/3); the built-in measurement forms K Jacobians by forward
    # mode (2n³ each) and K backward products (2n³ each) plus the same SVD.
    svd = 8.0 * width**3 / 3.0
    flops_jacrev = steps * 2.0 * width**3 + svd
    flops_builtin = steps * 4.0 * width**3 + svd
    extra = {
        "sizes": dict(sz, chain_steps=steps),
        "activation": "tanh",
        "sigma_w": 1.0,
        "devices": jax.device_count(),
        "matmul_precision": precision,
        "timing": "interleaved rounds",
    }
    n_eager = min(inits, sz["eager_inits"])
    one = jax.jit(lambda seed: jacrev_spectrum({**point0, "seed": seed}))
    axes = {**static, "seed": list(range(inits))}
    sweep_jacrev = sw.Sweep.create(axes, jacrev_spectrum)
    sweep_builtin = sw.Sweep.create(axes, "jacobian_spectrum")
    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    calls = iter(range(10**6))

    def stored():  # a fresh directory per call: the full cost of writing the store
        out = tmp / f"run{next(calls)}"
        return sw.run(sweep_jacrev, out, quiet=True)["value"].values.reshape(inits, width)

    impls = {  # name -> (fn, configs per call, flops per config)
        "python loop, jax.jit(jacrev) per config": (
            lambda: jnp.stack([one(s) for s in range(inits)]),
            inits,
            flops_jacrev,
        ),
        "python loop, eager jax.jacrev": (
            lambda: jnp.stack([jacrev_spectrum({**point0, "seed": s}) for s in range(n_eager)]),
            n_eager,
            flops_jacrev,
        ),
        "gradflow.sweep, jacrev measurement": (
            lambda: sw.run(sweep_jacrev, quiet=True)["value"].values.reshape(inits, width),
            inits,
            flops_jacrev,
        ),
        "gradflow.sweep, jacrev measurement, full vmap": (
            lambda: sw.run(sweep_jacrev, vmap_size=None, quiet=True)["value"].values.reshape(
                inits, width
            ),
            inits,
            flops_jacrev,
        ),
        "gradflow.sweep, jacrev measurement, vmap_size=1": (
            lambda: sw.run(sweep_jacrev, vmap_size=1, quiet=True)["value"].values.reshape(
                inits, width
            ),
            inits,
            flops_jacrev,
        ),
        "gradflow.sweep, built-in jacobian_spectrum": (
            lambda: sw.run(sweep_builtin, quiet=True)["log_singular_values"].values.reshape(
                inits, width
            ),
            inits,
            flops_builtin,
        ),
        "gradflow.sweep, jacrev measurement, with store": (stored, inits, flops_jacrev),
    }
    ref = None
    first, checks, failed = {}, {}, {}
    try:
        for name, (fn, n, _) in impls.items():  # first calls: compile, then check
            try:
                first[name], out, _ = _timed(fn)
                if ref is None:
                    ref = np.asarray(out)  # the jitted loop is the reference
                    checks[name] = {"passed": True, "reference": True}
                else:
                    checks[name] = {"passed": True, **C.check_log_spectra(name, ref[:n], out)}
            except Exception as exc:  # a failed check is a result to report, not to hide
                failed[name] = exc
                _log(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
        times = {name: [] for name in impls if name not in failed}
        cpu = {name: [] for name in times}
        names = list(times)
        for r in range(repeats):
            # A fresh order every round (seeded): the sweep timed right after the loop of 512
            # jitted calls (or a second of eager Python) ran ~25 % slower than the same program
            # elsewhere in the round (its predecessor's garbage and cold caches); a fixed or
            # rotated order would always hand that to the same implementation.
            for name in C.round_order(names, r):
                wall, _, cpu_s = _timed(impls[name][0])
                times[name].append(wall)
                cpu[name].append(cpu_s)
        layout = json.loads((tmp / "run0" / sw.MANIFEST).read_text())["shapes"]["0"]
        store_bytes = sum(f.stat().st_size for f in (tmp / "run0").rglob("*") if f.is_file())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    stats = {}
    for name, (_, n, flops) in impls.items():
        if name in failed:
            records.append(C.failed_record(wl, name, dev, failed[name], **extra))
            continue
        med, best = statistics.median(times[name]), min(times[name])
        stats[name] = (med, best, n)
        gflops = n / med * flops / 1e9
        fields = {
            "median_s": med,
            "min_s": best,
            "times_s": times[name],
            # CPU seconds this process used per call: less sensitive than wall time to other
            # processes on a shared machine (though not to lost parallelism)
            "cpu_s": statistics.median(cpu[name]),
            "repeats": repeats,
            "first_call_s": first[name],
            "check": checks[name],
            "configs": n,
            "configs_per_s": n / med,
            "configs_per_s_best": n / best,
            "nominal_flops_per_config": flops,
            "gflops": gflops,
            "pct_of_matmul_rate": 100.0 * gflops / peak,
        }
        if name.startswith("gradflow.sweep"):
            fields["chunk_layout"] = {
                k: layout[k] for k in ("batch_size", "chunk_size", "n_chunks")
            }
        # configurations vmapped together per device: asked for, or chosen by "auto" (the stored
        # run's choice; the built-in measurement's own program is not recorded here)
        if name.endswith("full vmap"):
            fields["vmap_size"] = layout["batch_size"]
        elif name.endswith("vmap_size=1"):
            fields["vmap_size"] = 1
        elif name.startswith("gradflow.sweep, jacrev"):
            fields["vmap_size"] = layout.get("vmap_size")
        if name.endswith("with store"):
            fields["store_bytes"] = store_bytes
        records.append(C.record(wl, name, dev, **extra, **fields))
    # Ratios of throughputs (configs/s), so loops over different numbers of configs compare.
    jit_name, eager_name = list(impls)[:2]
    for r in records:
        if r["workload"] != wl or r.get("median_s") is None:
            continue
        for ref_name, key in ((jit_name, "jit_loop"), (eager_name, "eager_loop")):
            if ref_name in stats and r["implementation"] != ref_name:
                med, best, n = stats[ref_name]
                r[f"speedup_vs_{key}"] = r["configs_per_s"] / (n / med)
                r[f"speedup_vs_{key}_best"] = r["configs_per_s_best"] / (n / best)
        shown = "vmap_size" in r and "vmap_size" not in r["implementation"]
        vmap = f", vmap_size {r['vmap_size']}" if shown else ""
        vs_jit = f", {r['speedup_vs_jit_loop']:.2f}× jit loop" if "speedup_vs_jit_loop" in r else ""
        _log(
            f"{r['implementation']}{vmap}: {r['configs_per_s']:.2f} configs/s (best "
            f"{r['configs_per_s_best']:.2f}){vs_jit}, {r['gflops']:.1f} GFLOP/s = "
            f"{r['pct_of_matmul_rate']:.1f}% of matmul"
        )
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes (see SIZES)")
    args = parser.parse_args(argv)
    print(json.dumps(run(quick=args.quick), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
