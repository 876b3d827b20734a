"""Memory and time of ``gradflow.lyapunov.lyapunov_spectrum`` on a chain vs storing every Jacobian.

Two workloads:

* ``lyapunov_memory_n{n}_T{T}`` for T = 100, 1,000, 10,000: the compiled program's temporary
  buffer size (``jax.jit(f).lower(chain).compile().memory_analysis().temp_size_in_bytes``, i.e.
  scratch memory beyond the inputs and outputs) and the run time, for

  - ``on_the_fly``: ``lyapunov_spectrum(chain)``, J_k Q by k Jacobian-vector products inside the
    scan — temp memory O(n²) whatever T;
  - ``stored_jacobians``: ``lyapunov_spectrum(step_jacobians(chain))`` — all T Jacobians (T n²
    floats) materialised first, as a naive implementation would.

* ``lyapunov_time_tanh_rnn_n256_T{T}``: full spectrum of a width-256 tanh RNN (T = 1000, or 50
  with ``--quick``), both implementations, plus the top-16 exponents on the fly.

Run as ``python benchmarks/bench_lyapunov.py [--quick]``; prints the records as JSON. The record
format is the one of DESIGN.md: ``{"workload", "implementation", "median_s", "device", ...}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

try:
    from benchmarks import _common as C
except ImportError:  # run as a script: put the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import _common as C

from gradflow import init, jacobians, lyapunov, models

__all__ = ["run", "tanh_rnn_chain"]


def _device() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', d.platform)}"


def tanh_rnn_chain(width: int, steps: int, *, gain: float = 1.5, key=None):
    """A tanh RNN chain, W ~ N(0, gain²/n), inputs N(0, 0.1²) (chaotic for gain > 1)."""
    key = jax.random.key(0) if key is None else key
    kp, ku = jax.random.split(key)
    model = models.RNN(width=width, activation="tanh", recurrent_init=init.gaussian(gain))
    u = 0.1 * jax.random.normal(ku, (steps, 4), jnp.float32)
    return model.chain(model.init(kp, u), u)


_IMPLEMENTATIONS = {
    "stored_jacobians": lambda chain, k: lyapunov.lyapunov_spectrum(
        jacobians.step_jacobians(chain), k
    ),
    "on_the_fly": lambda chain, k: lyapunov.lyapunov_spectrum(chain, k),
}


# Agreement required between implementations before a time is recorded (a fast wrong answer is
# not a result). Both take the same trajectory and QR-orthonormalise the same products, J_k Q by
# jvp vs the stored J_k times Q, which differ by float32 rounding only; Oseledets' theorem makes the
# exponents insensitive to such per-step perturbations, so they agree to ~1e-5 (measured).
CHECK_ATOL = 1e-3


def _check(name: str, got, want) -> float:
    """Max |Δ| of ``got`` against ``want``; ``C.CheckFailed`` past CHECK_ATOL."""
    return C.check_close(f"{name} exponents vs stored Jacobians", want, got, atol=CHECK_ATOL)[
        "max_abs_err"
    ]


def _measure(fn, chain, repeats: int) -> tuple[float, int, float, jax.Array]:
    """(median run seconds, temp bytes, compile seconds, output) of ``jax.jit(fn)(chain)``."""
    # The chain's arrays are the jitted function's arguments (so they count as inputs, not as
    # temporaries); the Chain itself is rebuilt inside, because ``jit(...).lower(chain)`` would
    # re-run Chain.__post_init__ on placeholder leaves without a shape.
    args = (chain.params, chain.xs, chain.h0)
    g = lambda p, xs, h0: fn(chain.replace(params=p, xs=xs, h0=h0))
    t0 = time.perf_counter()
    compiled = jax.jit(g).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    temp = int(compiled.memory_analysis().temp_size_in_bytes)
    out = compiled(*args).block_until_ready()  # warm-up (allocations, thread pools)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        compiled(*args).block_until_ready()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), temp, compile_s, out


def run(quick: bool = False) -> list[dict]:
    """Runs both workloads; returns one record per (workload, implementation).

    Args:
      quick: smaller sizes and a single timed repeat (CI smoke run, ~1 minute on 2 CPU cores).

    Returns:
      list of dicts with ``workload``, ``implementation``, ``median_s``, ``device`` and extra
      fields ``temp_bytes``, ``compile_s``, ``width``, ``steps``, ``k``, ``jacobian_bytes``
      (T n² · 4, what storing the Jacobians alone costs).
    """
    device = _device()
    records = []
    width = 32 if quick else 64
    repeats = 1 if quick else 3
    for steps in (100, 1000, 10_000):
        chain = tanh_rnn_chain(width, steps)
        reference = None
        for name, impl in _IMPLEMENTATIONS.items():  # the stored-Jacobian reference first
            median_s, temp, compile_s, out = _measure(
                lambda c, impl=impl: impl(c, None), chain, repeats
            )
            reference = out if reference is None else reference
            diff = _check(f"{name} T={steps}", out, reference)
            records.append(
                {
                    "workload": f"lyapunov_memory_n{width}_T{steps}",
                    "implementation": name,
                    "median_s": median_s,
                    "device": device,
                    "temp_bytes": temp,
                    "compile_s": compile_s,
                    "width": width,
                    "steps": steps,
                    "k": width,
                    "jacobian_bytes": steps * width * width * 4,
                    "max_abs_diff_vs_stored": diff,
                }
            )
    width, steps = 256, (50 if quick else 1000)
    chain = tanh_rnn_chain(width, steps)
    variants = [("stored_jacobians", None), ("on_the_fly", None), ("on_the_fly_top16", 16)]
    # The reference for each k is the stored-Jacobian run with the same k (untimed for k = 16):
    # the exponents come back sorted, and over a finite T the full spectrum's sorted top 16 need
    # not be the 16 Gram–Schmidt columns a top-16 run follows.
    stored = _IMPLEMENTATIONS["stored_jacobians"]
    references = {16: jax.jit(lambda c: stored(c, 16))(chain)}
    for name, k in variants:
        impl = _IMPLEMENTATIONS[name.removesuffix("_top16")]
        median_s, temp, compile_s, out = _measure(
            lambda c, impl=impl, k=k: impl(c, k), chain, repeats
        )
        references.setdefault(k, out)
        diff = _check(f"{name} n={width} T={steps}", out, references[k])
        records.append(
            {
                "workload": f"lyapunov_time_tanh_rnn_n{width}_T{steps}",
                "implementation": name,
                "median_s": median_s,
                "device": device,
                "temp_bytes": temp,
                "compile_s": compile_s,
                "width": width,
                "steps": steps,
                "k": k or width,
                "jacobian_bytes": steps * width * width * 4,
                "max_abs_diff_vs_stored": diff,
            }
        )
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    args = parser.parse_args(argv)
    print(json.dumps(run(quick=args.quick), indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
