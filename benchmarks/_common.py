"""Timing and bookkeeping shared by the benchmark modules.

Every timed implementation goes through :func:`measure`: one untimed first call (compilation,
allocation, thread-pool start-up; its time is recorded as ``first_call_s``), a correctness check
of that call's result against the reference, and only then ``repeats`` timed calls, each ended by
:func:`block` so asynchronous dispatch (JAX, CUDA) cannot hide work. The median is reported.
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "MATMUL_PRECISION",
    "CheckFailed",
    "configure_precision",
    "jax_device",
    "torch_device",
    "torch_or_none",
    "block",
    "measure",
    "record",
    "failed_record",
    "skipped_record",
    "check_close",
    "check_log_spectra",
    "peak_rss_reset",
    "peak_rss_bytes",
    "Group",
    "flush",
    "set_budget",
    "round_order",
    "loadavg",
    "host",
    "same_answer",
    "with_lapack_threads",
    "with_torch_threads",
]

# Full float32 matmuls everywhere: on GPUs/TPUs JAX's and torch's defaults use TF32/bfloat16
# passes (~1e-3 relative error), which would make the correctness checks and the peers disagree.
MATMUL_PRECISION = "highest"


class CheckFailed(AssertionError):
    """An implementation's result differs from the reference beyond the stated tolerance."""


def torch_or_none():
    """The torch module, or None if it is not installed (``pip install -e .[bench]``)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def configure_precision() -> dict:
    """Sets float32 matmul precision explicitly in JAX and torch; returns what was set."""
    import jax

    jax.config.update("jax_default_matmul_precision", MATMUL_PRECISION)
    out = {"jax_default_matmul_precision": MATMUL_PRECISION}
    torch = torch_or_none()
    if torch is not None:
        torch.set_float32_matmul_precision(MATMUL_PRECISION)
        out["torch_float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_string() -> str:
    return f"cpu ({_cpu_name()}, {os.cpu_count()} cores)"


def jax_device() -> str:
    """The device JAX computes on by default (GPU/TPU when present), in words."""
    import jax

    d = jax.devices()[0]
    if d.platform == "cpu":
        return _cpu_string()
    return f"{d.platform} ({getattr(d, 'device_kind', d.platform)}, {jax.device_count()} devices)"


def torch_device():
    """(torch.device, description): CUDA when available, else CPU."""
    torch = torch_or_none()
    if torch.cuda.is_available():
        return torch.device("cuda"), f"cuda ({torch.cuda.get_device_name(0)})"
    return torch.device("cpu"), f"{_cpu_string()[:-1]}, torch threads {torch.get_num_threads()})"


def block(x) -> None:
    """Waits until ``x`` (a pytree of JAX arrays or torch tensors) is computed."""
    import jax

    leaves = jax.tree_util.tree_leaves(x)
    torch = torch_or_none()
    for leaf in leaves:
        if torch is not None and isinstance(leaf, torch.Tensor):
            if leaf.is_cuda:
                torch.cuda.synchronize(leaf.device)
        elif hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()


def measure(
    fn: Callable[[], Any],
    *,
    repeats: int,
    check: Callable[[Any], dict] | None = None,
    budget_s: float | None = None,
) -> tuple[dict, Any]:
    """Times ``fn()``: an untimed checked first call, then the median of ``repeats`` calls.

    Args:
      fn: the call to time (arguments already bound).
      repeats: number of timed calls (>= 1).
      check: ``check(result) -> dict`` raising :class:`CheckFailed` on a wrong result; its dict
        (errors and tolerances) goes into the record. Called on the first call's result, before
        any timing, so a wrong answer never gets a time.
      budget_s: if given, stop repeating once the timed calls have used this many seconds
        (at least one timed call; quick mode uses it to bound slow peers).

    Returns:
      ``(timing fields, first result)``.
    """
    t0 = time.perf_counter()
    result = fn()
    block(result)
    first = time.perf_counter() - t0
    info = check(result) if check is not None else {}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - t0)
        if budget_s is not None and sum(times) + times[-1] > budget_s:
            break
    fields = {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "repeats": len(times),
        "first_call_s": first,
        "check": {"passed": True, **info},
    }
    return fields, result


def record(workload: str, implementation: str, device: str, **fields) -> dict:
    """One result record (DESIGN.md): workload, implementation, median_s, device, extras."""
    out = {"workload": workload, "implementation": implementation, "device": device}
    out.update(fields)
    out.setdefault("status", "ok")
    return out


def failed_record(workload: str, implementation: str, device: str, error: BaseException, **f):
    """A record with no time: the implementation failed its check or raised."""
    kind = "check_failed" if isinstance(error, CheckFailed) else "error"
    msg = f"{type(error).__name__}: {error}"[:2000]
    return record(workload, implementation, device, median_s=None, status=kind, reason=msg, **f)


def skipped_record(workload: str, implementation: str, device: str, reason: str, **f):
    """A record with no time: the implementation could not run here (the reason says why)."""
    return record(
        workload, implementation, device, median_s=None, status="skipped", reason=reason, **f
    )


def check_close(name: str, expected, got, *, rtol: float = 0.0, atol: float = 0.0) -> dict:
    """Raises :class:`CheckFailed` unless ``|got − expected| <= atol + rtol·|expected|``.

    Returns:
      ``{"max_abs_err", "max_rel_err", "rtol", "atol"}`` for the record.
    """
    expected = np.asarray(expected, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if expected.shape != got.shape:
        raise CheckFailed(f"{name}: shape {got.shape} != reference shape {expected.shape}")
    both_inf = np.isinf(expected) & (expected == got)
    with np.errstate(invalid="ignore"):  # inf − inf where both agree; masked just below
        err = np.where(both_inf, 0.0, np.abs(got - expected))
    if not np.all(np.isfinite(err)):
        raise CheckFailed(f"{name}: non-finite values where the reference has finite ones")
    bound = atol + rtol * np.abs(np.where(both_inf, 0.0, expected))
    rel = err / np.maximum(np.abs(np.where(both_inf, 1.0, expected)), np.finfo(np.float64).tiny)
    info = {
        "max_abs_err": float(err.max(initial=0.0)),
        "max_rel_err": float(rel.max(initial=0.0)),
        "rtol": rtol,
        "atol": atol,
    }
    if np.any(err > bound):
        worst = np.unravel_index(np.argmax(err - bound), err.shape)
        raise CheckFailed(
            f"{name}: max |error| {info['max_abs_err']:.3g} exceeds atol {atol:g} + rtol {rtol:g}"
            f"·|ref| (worst at index {tuple(int(i) for i in worst)}: got {got[worst]!r}, "
            f"reference {expected[worst]!r})"
        )
    return info


def check_log_spectra(name, ref, got, *, floor=1e-3, atol=2e-3, top=None) -> dict:
    """Compares log singular values ``(..., n)`` of the same products (descending).

    Only σ_i >= ``floor`` · σ_1 are compared: a float32 product formed in a different order
    carries absolute errors ~ eps · K · σ_1 (eps = 6e-8, K <= 100 steps), i.e. relative errors
    below 1e-5/1e-3 = 1e-2 … at σ_i = 1e-3 σ_1 in the worst case and ~1e-4 typically; ``atol``
    = 2e-3 in log σ is a relative error of 0.2 %. Smaller σ_i are rounding noise in any float32
    method that forms the product, gradflow's included. ``top``: compare ``got`` (the top values
    only) with the first ``top`` of ``ref``.
    """
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if top is not None:
        ref = ref[..., :top]
    if ref.shape != got.shape:
        raise CheckFailed(f"{name}: shape {got.shape} != reference {ref.shape}")
    keep = ref >= ref[..., :1] + np.log(floor)
    info = check_close(name, np.where(keep, ref, 0.0), np.where(keep, got, 0.0), atol=atol)
    info["compared"] = f"log σ_i for σ_i >= {floor:g}·σ_1 ({int(keep.sum())} of {keep.size})"
    return info


def peak_rss_reset() -> int | None:
    """Resets the kernel's peak-RSS counter (Linux); returns the current RSS in bytes or None."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _status_bytes("VmRSS")


def peak_rss_bytes() -> int | None:
    """Peak resident memory (bytes) since the last :func:`peak_rss_reset`, or None."""
    return _status_bytes("VmHWM")


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# ------------------------------------------------------------------------------------------------
# Interleaved timing of one workload's implementations
# ------------------------------------------------------------------------------------------------

# Seconds of timed rounds per workload (quick mode sets it; at least one round is always timed).
_BUDGET = {"s": None}
_PENDING: list[Group] = []


def round_order(items: list, r: int) -> list:
    """``items`` in round ``r``'s order: as given in round 0, then a permutation seeded by r."""
    items = list(items)
    if r:
        random.Random(r).shuffle(items)
    return items


def set_budget(seconds: float | None) -> None:
    """Bounds each group's timed rounds to about ``seconds`` (None: all ``repeats`` rounds)."""
    _BUDGET["s"] = seconds


def loadavg() -> float | None:
    """The 1-minute load average, or None where the OS does not report it."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


class Group:
    """The implementations of one workload, timed in interleaved rounds.

    ``add`` makes each implementation's first call (compilation, warm-up) and checks its result
    at once, so a wrong answer never gets a time; :func:`flush` then runs ``repeats`` rounds,
    each calling every passing implementation once in turn. On a shared machine the load varies
    over minutes: interleaving exposes every implementation to the same conditions, where timing
    one after the other would hand whole load spikes to one of them. The 1-minute load average
    before and after the rounds is recorded in every record (``load_during``).
    """

    def __init__(self, records: list, repeats: int, peak: float | None):
        self.records, self.repeats, self.peak, self.entries = records, repeats, peak, []
        _PENDING.append(self)

    def add(
        self, workload, impl, device, fn, *, check=None, extra=None, flops=None, self_timed=False
    ):
        """First call + check of one implementation; returns its result, or None if it failed.

        With ``self_timed``, ``fn()`` returns ``(result, seconds)``: an implementation running in
        another process (neural-tangents' worker) measures its own call, without the
        inter-process round trip.
        """
        extra = extra or {}
        try:
            t0 = time.perf_counter()
            result = fn()
            if self_timed:
                result, _ = result
            block(result)
            first = time.perf_counter() - t0
            info = check(result) if check is not None else {}
        except Exception as exc:  # a failed check or a crash is a result to report, not to hide
            print(f"[benchmarks] {workload} / {impl}: {type(exc).__name__}: {str(exc)[:300]}")
            self.records.append(failed_record(workload, impl, device, exc, **extra))
            return None
        rec = record(
            workload,
            impl,
            device,
            **extra,
            median_s=None,
            first_call_s=first,
            check={"passed": True, **info},
        )
        self.records.append(rec)
        self.entries.append((rec, fn, flops, host(result), self_timed))
        return result

    def time(self) -> None:
        """Runs the interleaved rounds and fills in every passing record's times."""
        times = [[] for _ in self.entries]
        start, load0 = time.perf_counter(), loadavg()
        pairs = list(zip(times, self.entries))
        for r in range(self.repeats):
            # A fresh order every round: a call inherits its predecessor's garbage and cold
            # caches, which a fixed (or rotated) order hands to the same implementation.
            for ts, (rec, fn, _, checked, self_timed) in round_order(pairs, r):
                t0 = time.perf_counter()
                out = fn()
                block(out)
                ts.append(time.perf_counter() - t0)
                if self_timed:
                    out, ts[-1] = out
                if r == 0 and not same_answer(checked, host(out)):  # outside the timer
                    rec["wrong_timed_answer"] = True
            spent = time.perf_counter() - start
            if _BUDGET["s"] is not None and spent * (1 + 1 / len(times[0])) > _BUDGET["s"]:
                break
        load = [load0, loadavg()]
        for ts, (rec, _, flops, _, _) in zip(times, self.entries):
            rec["load_during"] = load
            if rec.pop("wrong_timed_answer", False):
                # A fast wrong answer is not a result: the record keeps no time.
                rec.update(
                    status="check_failed",
                    reason="the timed call returned a different answer from the checked first "
                    "call (e.g. a closure rebound after the check)",
                )
                print(f"[benchmarks] {rec['workload']} / {rec['implementation']}: {rec['reason']}")
                continue
            rec.update(
                median_s=statistics.median(ts),
                min_s=min(ts),
                times_s=ts,
                repeats=len(ts),
                timing="interleaved rounds",
            )
            if flops is not None:
                gflops = flops / rec["median_s"] / 1e9
                rec.update(
                    nominal_flops=flops, gflops=gflops, gflops_best=flops / rec["min_s"] / 1e9
                )
                if self.peak:
                    rec["pct_of_matmul_rate"] = 100.0 * gflops / self.peak
            print(
                f"[benchmarks] {rec['workload']} / {rec['implementation']}: median "
                f"{rec['median_s']:.4g} s, min {rec['min_s']:.4g} s (load {load})",
                flush=True,
            )
        self.entries = []


def flush() -> None:
    """Times every group added since the last flush (their interleaved rounds)."""
    while _PENDING:
        _PENDING.pop(0).time()


def host(result):
    """The result's arrays as NumPy (JAX arrays and torch tensors alike), for comparison."""
    import jax

    torch = torch_or_none()

    def leaf(x):
        if torch is not None and isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
        return np.asarray(x) if hasattr(x, "shape") else x

    return [leaf(x) for x in jax.tree_util.tree_leaves(result)]


def same_answer(checked: list, timed: list) -> bool:
    """Whether the timed call returned what the checked first call did.

    The same compiled function on the same inputs gives the same bits on one machine; the
    tolerance only allows for threaded reductions whose order may vary between calls.
    """
    return len(checked) == len(timed) and all(
        np.shape(a) == np.shape(b) and np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)
        for a, b in zip(checked, timed)
    )


# ------------------------------------------------------------------------------------------------
# Thread settings: pinned and default variants of the same call
# ------------------------------------------------------------------------------------------------


def with_lapack_threads(fn: Callable[[], Any], n: int) -> Callable[[], Any]:
    """``fn`` run (and finished) with jaxlib's LAPACK at ``n`` OpenBLAS threads (gradflow.threads).

    gradflow pins one thread at import; ``n = os.cpu_count()`` is OpenBLAS's own default.
    """
    from gradflow import threads

    def call():
        with threads.lapack_threads(n):
            out = fn()
            block(out)
        return out

    return call


def with_torch_threads(fn: Callable[[], Any], n: int) -> Callable[[], Any]:
    """``fn`` run (and finished) with torch's intra-op thread pool at ``n`` threads."""
    torch = torch_or_none()

    def call():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            out = fn()
            block(out)
        finally:
            torch.set_num_threads(before)
        return out

    return call
