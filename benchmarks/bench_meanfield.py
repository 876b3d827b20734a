"""The (σ_w², σ_b²) phase diagram of χ₁ for tanh: one jitted call vs Python loops over the grid.

Workload ``meanfield_chi1_grid{G}x{G}``: χ₁ = σ_w² E[φ'(√q* z)²] at the fixed point q* on a G×G
grid (σ_w² ∈ [0.5, 4], σ_b² ∈ [0, 0.5]), three implementations in the same run:

* ``gradflow (meanfield.chi1, one jitted call over the grid)`` — the whole grid broadcast through
  ``gradflow.meanfield.chi1`` inside one ``jax.jit``;
* ``python loop over gradflow.meanfield.chi1 (jitted scalar call per point)`` — what a user
  writes with a loop: the same code, compiled once for scalars, called G² times;
* ``python loop, numpy (Gauss–Hermite + bisection for q* per point)`` — a self-contained NumPy
  implementation with no JAX at all (101 Gauss–Hermite nodes, 60 bisection steps in log q).

Both loops are checked against the jitted grid before their time is recorded (float32 vs the
float64 NumPy reference: 1e-4 relative, the quadrature and float32 error with margin). Each loop
is timed once (it is G² calls; a median over repeats would only multiply the run time); the
jitted call is timed ``repeats`` times after an untimed compile-and-check call. ``G = 256`` in
full mode; ``--quick`` times the loops on a 64×64 grid and the jitted call on both sizes.

Run as ``python benchmarks/bench_meanfield.py [--quick]``; prints the records as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from numpy.polynomial.hermite_e import hermegauss

try:
    from benchmarks import _common as C
except ImportError:  # run as a script: put the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import _common as C

from gradflow import meanfield

__all__ = ["run", "grid", "numpy_chi1"]

SW2_RANGE = (0.5, 4.0)
SB2_RANGE = (0.0, 0.5)
_Z, _W = hermegauss(101)
_W = _W / _W.sum()

IMPL_GRID = "gradflow (meanfield.chi1, one jitted call over the grid)"
IMPL_LOOP = "python loop over gradflow.meanfield.chi1 (jitted scalar call per point)"
IMPL_NUMPY = "python loop, numpy (Gauss–Hermite + bisection for q* per point)"


def grid(g: int) -> tuple[np.ndarray, np.ndarray]:
    """σ_w² (g,) and σ_b² (g,); χ₁ arrays are (σ_b², σ_w²)-indexed, shape (g, g)."""
    return (
        np.linspace(*SW2_RANGE, g, dtype=np.float32),
        np.linspace(*SB2_RANGE, g, dtype=np.float32),
    )


def numpy_chi1(sw2: float, sb2: float) -> float:
    """χ₁ for tanh at one point, in plain NumPy: q* by bisection on log(q_map(q)/q), then χ₁."""

    def r(t):
        q = math.exp(t)
        return math.log(sw2 * float(_W @ np.tanh(math.sqrt(q) * _Z) ** 2) + sb2) - t

    lo, hi = math.log(max(sb2, 1e-30)), math.log(1e8)
    if r(lo) <= 0:
        q = sb2
    else:
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if r(mid) > 0 else (lo, mid)
        q = math.exp(0.5 * (lo + hi))
    return sw2 * float(_W @ (1.0 - np.tanh(math.sqrt(q) * _Z) ** 2) ** 2)


def _loop(fn, sw2, sb2) -> np.ndarray:
    out = np.empty((len(sb2), len(sw2)))
    for i, b in enumerate(sb2):
        for j, a in enumerate(sw2):
            out[i, j] = float(fn(a, b))
    return out


def _time_loop(workload, implementation, device, fn, reference, extra, *, rtol) -> dict:
    """Times one pass of a per-point loop, then checks it; no time is kept for a wrong answer."""
    sw2, sb2 = extra["_grid"]
    fields = {k: v for k, v in extra.items() if not k.startswith("_")}
    try:
        fn(sw2[0], sb2[0])  # compile / warm up the per-point call, untimed
        t0 = time.perf_counter()
        result = _loop(fn, sw2, sb2)
        elapsed = time.perf_counter() - t0
        info = C.check_close(implementation, reference, result, rtol=rtol)
    except Exception as exc:
        return C.failed_record(workload, implementation, device, exc, **fields)
    return C.record(
        workload,
        implementation,
        device,
        median_s=elapsed,
        min_s=elapsed,
        times_s=[elapsed],
        repeats=1,
        check={"passed": True, **info},
        **fields,
    )


def _workload(g: int, repeats: int, loops: bool, device: str) -> list[dict]:
    workload = f"meanfield_chi1_grid{g}x{g}"
    sw2, sb2 = grid(g)
    extra = {
        "grid": g,
        "points": g * g,
        "activation": "tanh",
        "sigma_w2_range": SW2_RANGE,
        "sigma_b2_range": SB2_RANGE,
    }
    records = []
    f_grid = jax.jit(lambda a, b: meanfield.chi1("tanh", a[None, :], b[:, None]))
    a, b = jnp.asarray(sw2), jnp.asarray(sb2)
    # Reference for every check: the NumPy implementation on a 16×16 subgrid (it is the slow
    # one), the jitted grid everywhere else.
    sub = np.linspace(0, g - 1, min(g, 16)).astype(int)
    ref_sub = np.array([[numpy_chi1(float(sw2[j]), float(sb2[i])) for j in sub] for i in sub])

    def check_grid(result):
        # float32 gradflow vs float64 NumPy with 101 Gauss–Hermite nodes (q* <= 4.5 here, where
        # that rule is good to ~1e-7): 1e-4 relative covers both with margin.
        return C.check_close(IMPL_GRID, ref_sub, np.asarray(result)[np.ix_(sub, sub)], rtol=1e-4)

    try:
        fields, result = C.measure(lambda: f_grid(a, b), repeats=repeats, check=check_grid)
        records.append(C.record(workload, IMPL_GRID, device, **fields, **extra))
        reference = np.asarray(result, dtype=np.float64)
    except Exception as exc:
        records.append(C.failed_record(workload, IMPL_GRID, device, exc, **extra))
        return records
    if loops:
        scalar = jax.jit(lambda s, t: meanfield.chi1("tanh", s, t))
        ex = {**extra, "_grid": (sw2, sb2)}
        # Same float32 code per point as on the grid: only summation order may differ.
        records.append(_time_loop(workload, IMPL_LOOP, device, scalar, reference, ex, rtol=1e-5))
        records.append(
            _time_loop(workload, IMPL_NUMPY, device, numpy_chi1, reference, ex, rtol=1e-4)
        )
        base = records[0]["median_s"]
        for r in records[1:]:
            if r.get("median_s"):
                r["ratio_to_gradflow_grid"] = r["median_s"] / base
    return records


def run(quick: bool = False) -> list[dict]:
    """One record per (workload, implementation); loops and the jitted grid in the same run."""
    device = C.jax_device()
    if quick:
        return _workload(64, 3, True, device) + _workload(256, 3, False, device)
    return _workload(256, 5, True, device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64×64 loops, CPU-sized")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.quick), indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
