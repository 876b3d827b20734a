"""Running a sweep: one compile per static combination, the batched axes vmapped and sharded over
every device, chunk by chunk into the store (resuming what is there), with a progress line.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gradflow import _checks
from gradflow.sweep import lock, store
from gradflow.sweep.grid import Sweep, parse_bytes
from gradflow.sweep.results import SweepResult
from gradflow.sweep.vmap_size import AUTO, choose_vmap_size, cpu_cache_bytes

__all__ = ["run", "clear_cache"]

MESH_AXIS = "configs"
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes per device for one chunk's working set


class _Progress:
    """One status line on stderr: chunks done/total, configurations per second, ETA."""

    def __init__(self, n_configs: int, n_chunks: int | None, stream=None, quiet: bool = False):
        self.total = n_configs
        self.total_chunks = n_chunks  # None while some combination's layout is not yet chosen
        self.chunks = 0
        self.done = 0
        self.computed = 0
        self.stream = sys.stderr if stream is None else stream
        self.quiet = quiet
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def note(self, text: str):
        """A line of its own (e.g. a damaged chunk found), even in plain logs."""
        if not self.quiet:
            self.stream.write(("\r\x1b[K" if self.tty else "") + f"[sweep] {text}\n")
            self.stream.flush()

    def update(self, n: int, computed: bool, text: str, final: bool = False):
        self.chunks += 1 if n else 0
        self.done += n
        self.computed += n if computed else 0
        if self.quiet:
            return
        now = time.perf_counter()
        if not (final or self.tty or now - self.last >= 2.0):
            return  # plain logs get a line every 2 s, not one per chunk
        self.last = now
        elapsed = now - self.t0
        rate = self.computed / elapsed if elapsed > 0 else 0.0
        remaining = self.total - self.done
        eta = "--:--:--" if rate == 0 else str(datetime.timedelta(seconds=round(remaining / rate)))
        chunks = f"{self.chunks}/{self.total_chunks if self.total_chunks else '?'}"
        line = (
            f"[sweep] {text} | chunks {chunks} | configs {self.done}/{self.total} | "
            f"{rate:8.1f} configs/s | ETA {eta}"
        )
        end = "\n" if (final or not self.tty) else ""
        self.stream.write(("\r\x1b[K" if self.tty else "") + line + end)
        self.stream.flush()


def _shape_function(sweep: Sweep, static: dict, mesh: Mesh | None, vmap_size: int | None = None):
    """The jitted measurement of a batch of configurations of one static combination.

    ``f(index, *batched_values)``: ``index`` (int32, the flat config index; only there so that a
    grid without batched axes still has an axis to map) and one 1-D array per batched axis. Each
    device vmaps its whole slice, or with ``vmap_size`` maps over it ``vmap_size`` at a time
    (``lax.map``: a loop inside the program, vmapped within each step).
    """
    names = sweep.batched
    measure = sweep.measure

    def one(index, *values):
        point = dict(static)
        point.update(zip(names, values))
        return measure({a: point[a] for a in sweep.axes})

    if vmap_size is None:
        batched = jax.vmap(one)
    else:

        def batched(*xs):
            size = None if vmap_size == 1 else vmap_size
            return jax.lax.map(lambda a: one(*a), xs, batch_size=size)

    if mesh is None:
        return jax.jit(batched)
    spec = P(MESH_AXIS)
    # check_vma=False: measurements scan (chains, Lyapunov QR) and a scan's carry inside shard_map
    # would otherwise need jax.lax.pcast(..., to="varying") in every user function. Each device
    # maps its own slice; no collective is involved, so the check guards nothing here.
    sharded = jax.shard_map(
        batched,
        mesh=mesh,
        in_specs=(spec,) * (1 + len(names)),
        out_specs=spec,
        check_vma=False,
    )
    return jax.jit(sharded)


def _arg_specs(sweep: Sweep, n: int, sharding=None):
    specs = [jax.ShapeDtypeStruct((n,), jnp.int32, sharding=sharding)]
    for v in sweep.batched_values(np.zeros(1, np.int64)):
        specs.append(jax.ShapeDtypeStruct((n,), v.dtype, sharding=sharding))
    return specs


# Compiled programs, so that running the same sweep again in this process (a notebook, a
# benchmark, a resumed in-memory run) does not compile again. Keyed by everything the program
# depends on; the measurement function is held in the value so that its id cannot be reused.
_CACHE: OrderedDict[tuple, tuple[Any, Any]] = OrderedDict()
_CACHE_SIZE = 64
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forgets every compiled sweep program (see :func:`run`)."""
    with _CACHE_LOCK:
        _CACHE.clear()


class _Exec(NamedTuple):
    """How to compile: XLA options and the vectorisation width (see :func:`run`).

    ``vmap_size``: an int, ``None`` (the whole batch) or :data:`AUTO`, which ``_resolve_vmap``
    turns into one of the others per static combination before anything compiles with it.
    """

    compiler_options: Mapping[str, Any] | None = None
    vmap_size: int | str | None = None


def _cached_compile(kind: str, sweep: Sweep, static: dict, n: int, mesh, sharding, ex: _Exec):
    """The compiled program (and a memo dict stored with it) for ``n`` configurations."""
    key = (
        kind,
        id(sweep.measure.fn),
        json.dumps(dict(sweep.measure.options), sort_keys=True),
        tuple(sweep.axes),
        tuple(static.items()),
        tuple(str(v.dtype) for v in sweep.batched_values(np.zeros(1, np.int64))),
        n,
        None if mesh is None else tuple(d.id for d in mesh.devices.flat),
        jax.config.jax_enable_x64,
        str(jax.config.jax_default_matmul_precision),
        json.dumps(dict(ex.compiler_options or {}), sort_keys=True),
        ex.vmap_size,
    )
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] is sweep.measure.fn:
            _CACHE.move_to_end(key)
            return hit[1], hit[2]
    vmap_size = (
        None if ex.vmap_size is None or ex.vmap_size >= n // max(1, _n_dev(mesh)) else ex.vmap_size
    )
    lowered = _shape_function(sweep, static, mesh, vmap_size).lower(*_arg_specs(sweep, n, sharding))
    compiled = lowered.compile(compiler_options=ex.compiler_options)
    with _CACHE_LOCK:
        _CACHE[key] = (sweep.measure.fn, compiled, {})
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return compiled, _CACHE[key][2]


def _n_dev(mesh) -> int:
    return 1 if mesh is None else mesh.devices.size


def _per_config_bytes(sweep: Sweep, static: dict, ex: _Exec) -> int | None:
    """Peak bytes of one configuration: XLA's memory analysis of the single-config program."""
    compiled, memo = _cached_compile(
        "estimate", sweep, static, 1, None, None, ex._replace(vmap_size=None)
    )
    return _program_bytes(compiled, memo)


def _program_bytes(compiled, memo: dict) -> int | None:
    """Peak bytes of a compiled program (per device): arguments + outputs + temporaries."""
    if "bytes" not in memo:  # memory_analysis() itself takes tens of ms: ask once
        stats = compiled.memory_analysis()
        memo["bytes"] = (
            None  # some backends do not report
            if stats is None
            else int(stats.temp_size_in_bytes + stats.argument_size_in_bytes)
            + int(stats.output_size_in_bytes)
        )
    return memo["bytes"]


def _resolve_vmap(sweep, static, mesh, sharding, layout, n_dev, ex: _Exec, per_config, platform):
    """``(ex with an int or None vmap_size, the effective vmap_size)`` for one combination.

    ``AUTO``: the layout's recorded ``vmap_size`` when resuming (the chunks on disk used it);
    else :func:`choose_vmap_size`, from ``per_config`` (the single-configuration estimate, when
    ``batch_size`` was chosen from the memory budget) or else from the whole-batch chunk program
    (its bytes / configurations), which is the program to run anyway when the whole batch stays
    vmapped, so that choice costs no extra compile.
    """
    n_per = -(-layout["chunk_size"] // n_dev)  # per-device rows of a chunk (see _compile)
    size = ex.vmap_size
    if size == AUTO:
        if isinstance(layout.get("vmap_size"), int):
            size = layout["vmap_size"]
        elif platform != "cpu" or n_per == 1:
            size = n_per  # no estimate needed
        else:
            if per_config is None:
                padded = n_per * n_dev
                whole = ex._replace(vmap_size=None)
                compiled, memo = _cached_compile(
                    "chunk", sweep, static, padded, mesh, sharding, whole
                )
                total = _program_bytes(compiled, memo)
                per_config = None if total is None else -(-total // n_per)
            size = choose_vmap_size(per_config, n_per, cpu_cache_bytes(), platform)
    effective = n_per if size is None else min(size, n_per)
    # The whole batch as None, so that it shares the compiled program (and cache entry) of vmap.
    return ex._replace(vmap_size=None if effective >= n_per else effective), effective


def _flatten(tree) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    if len(leaves) == 1 and not leaves[0][0]:
        return {"value": leaves[0][1]}
    out = {}
    for path, leaf in leaves:
        parts = []
        for k in path:
            for attr in ("key", "name", "idx"):
                if hasattr(k, attr):
                    parts.append(str(getattr(k, attr)))
                    break
            else:  # pragma: no cover - unusual key types
                parts.append(str(k))
        out["/".join(parts)] = leaf
    return out


def _gather(x) -> np.ndarray:
    if jax.process_count() > 1:  # pragma: no cover - needs several hosts
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def _sync(name: str) -> None:  # pragma: no cover - needs several hosts
    multihost_utils.sync_global_devices(name)


def _broadcast_done(done: np.ndarray) -> np.ndarray:
    if jax.process_count() > 1:  # pragma: no cover - needs several hosts
        return np.asarray(multihost_utils.broadcast_one_to_all(done))
    return done


def run(
    sweep: Sweep,
    out_dir=None,
    *,
    batch_size: int | None = None,
    memory_budget=None,
    devices: Sequence | None = None,
    compiler_options: Mapping[str, Any] | None = None,
    compile_workers: int | None = None,
    vmap_size: int | str | None = AUTO,
    on_mismatch: str = "error",
    quiet: bool = False,
    stream=None,
) -> SweepResult:
    """Runs a sweep (resuming it if ``out_dir`` already holds part of it).

    For every static combination: pick ``batch_size`` (configurations vmapped per device per
    step), compile the measurement once (compiled programs are kept in a small in-process cache,
    so running the same sweep again does not recompile; :func:`clear_cache` empties it), then
    for every chunk of ``devices × batch_size`` configurations not yet on disk: place the
    batched values sharded over the devices, run, write ``out_dir/chunks/sSSSS-cCCCCCC.npz``
    atomically and update the manifest. The last chunk of a combination is padded (with copies
    of its last configuration) to the full size, so there is one compile per combination.

    Args:
      sweep: the :class:`Sweep`.
      out_dir: results directory, or ``None`` to keep everything in memory.
      batch_size: configurations per device per step. ``None``: from ``memory_budget`` (one extra
        compile per combination, for XLA's memory analysis), capped at ⌈configs / devices⌉. On
        resume the directory's layout is used; a different explicit value is an error.
      memory_budget: bytes (or "512MB", "2GiB") per device for one chunk; default 1 GiB.
      devices: devices to shard over; default ``jax.devices()`` (every device of every host).
      compiler_options: XLA options for every compile, e.g.
        ``{"xla_backend_optimization_level": 0}``, which on CPU compiles several times faster
        for slightly slower code: worth it for many small static combinations.
      compile_workers: threads that trace and compile the next static combinations while the
        current one runs (XLA compiles outside the GIL, so with several cores several compile
        at once). Default: the number of CPU cores, at most 4; 1 compiles in the main thread.
      vmap_size: how many configurations each device vmaps together. ``"auto"`` (default):
        :func:`gradflow.sweep.vmap_size.choose_vmap_size` per static combination (on a CPU, from
        XLA's memory estimate against the L2 cache; the whole batch on GPU/TPU). An int: that
        many (capped at the batch), mapped over ``vmap_size`` at a time (``lax.map``); ``None``:
        the whole batch. The size used is recorded in the manifest (``shapes[s]["vmap_size"]``,
        reused by an ``"auto"`` resume; ``sessions[-1]["vmap_sizes"]``). Results are bitwise
        reproducible for a given (``batch_size``, ``vmap_size``): pass the recorded int to
        reproduce a run bitwise on another machine.
      on_mismatch: what to do when ``out_dir`` holds a *different* sweep (or was written by
        another gradflow version): ``"error"`` (ValueError, the default) or ``"replace"``
        (delete its manifest, chunks and results, and start over; for caches such as
        ``gradflow figures``' stores, never for results you cannot recompute).
      quiet: no progress line.
      stream: where the progress line goes (default ``sys.stderr``).

    Returns:
      :class:`SweepResult`.

    Raises:
      ValueError: ``out_dir`` holds a different sweep, or bad ``batch_size``/``memory_budget``/
        ``vmap_size``.
    """
    if not isinstance(sweep, Sweep):
        raise TypeError(f"sweep must be a gradflow.sweep.Sweep, got {type(sweep).__name__}")
    if batch_size is not None:
        batch_size = _checks.positive_int("batch_size", batch_size)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else parse_bytes(memory_budget)
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must name at least one device")
    if on_mismatch not in ("error", "replace"):
        raise ValueError(f"on_mismatch must be 'error' or 'replace', got {on_mismatch!r}")
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"out_dir {out_dir} exists and is not a directory")
    if compile_workers is None:
        workers = max(1, min(4, os.cpu_count() or 1))
    else:
        workers = _checks.positive_int("compile_workers", compile_workers)
    if isinstance(vmap_size, str):
        if vmap_size != AUTO:
            raise ValueError(
                f"vmap_size must be a positive integer, None or {AUTO!r}, got {vmap_size!r}"
            )
    elif vmap_size is not None:
        vmap_size = _checks.positive_int("vmap_size", vmap_size)
    ex = _Exec(None if compiler_options is None else dict(compiler_options), vmap_size)
    with contextlib.ExitStack() as held, jax.enable_x64(sweep.dtype == "float64"):
        # One writer per directory, for the whole run (replacing a store included).
        interrupted = None
        if out_dir is not None and jax.process_index() == 0:
            interrupted = held.enter_context(lock.locked(out_dir))
        if on_mismatch == "replace" and out_dir is not None:
            if jax.process_index() == 0:
                store.replace_if_different(Path(out_dir), sweep)
            if jax.process_count() > 1:  # nobody reads the old manifest while process 0 deletes
                _sync("gradflow.sweep.replace")
        return _run(
            sweep, out_dir, batch_size, budget, devices, ex, workers, quiet, stream, interrupted
        )


def _run(
    sweep, out_dir, batch_size, budget, devices, ex, compile_workers, quiet, stream, interrupted
):
    t_start = time.perf_counter()
    out = None if out_dir is None else Path(out_dir)
    writer = jax.process_index() == 0 and out is not None
    # Several hosts: process 0 creates or checks the store first, the others read it after.
    multi = out is not None and jax.process_count() > 1
    if multi and not writer:  # pragma: no cover - needs several hosts
        _sync("gradflow.sweep.open")
    # In memory too, the manifest records the layout, devices and timings (never written then).
    manifest = store.open_store(out, sweep)
    session = {
        "started": store.timestamp(),
        "host": platform.node(),
        "devices": store.device_info(devices),
        "compiler_options": dict(ex.compiler_options or {}),
        "vmap_size": ex.vmap_size,  # as asked ("auto", None or an int) ...
        "vmap_sizes": {},  # ... and as used, per static combination computed in this session
        "chunks_computed": 0,
        "chunks_skipped": 0,
        "chunks_repaired": {},
        "wall_s": 0.0,
        # The lock's description of a run that ended without releasing it (killed), if any.
        "after_interrupted": None if interrupted is None else interrupted._asdict(),
        "temporaries_removed": 0,
    }
    manifest["sessions"].append(session)
    manifest["device"] = manifest["device"] or store.device_info(devices)
    if writer:
        session["temporaries_removed"] = len(store.remove_temporaries(out))
        store.create_store(out, manifest)
    if multi and writer:  # pragma: no cover - needs several hosts
        _sync("gradflow.sweep.open")

    n_dev = len(devices)
    device_platform = devices[0].platform
    mesh = Mesh(np.asarray(devices), (MESH_AXIS,))
    sharding = NamedSharding(mesh, P(MESH_AXIS))
    n_batched = math.prod(sweep.batched_shape)
    shapes = sweep.shapes()
    labels = [", ".join(f"{k}={v}" for k, v in st.items()) or "all" for st in shapes]
    stored = [manifest["shapes"].get(str(s)) for s in range(len(shapes))]
    per_shape_chunks = [
        layout["n_chunks"]
        if layout is not None
        else (None if batch_size is None else -(-n_batched // (batch_size * n_dev)))
        for layout in stored
    ]
    total_chunks = None if None in per_shape_chunks else sum(per_shape_chunks)
    progress = _Progress(sweep.n_configs, total_chunks, stream, quiet)
    for s, layout in enumerate(stored):  # fail before compiling anything
        if layout is not None and batch_size is not None and layout["batch_size"] != batch_size:
            raise ValueError(
                f"out_dir {out} was started with batch_size={layout['batch_size']} for "
                f"{labels[s]}; got batch_size={batch_size}. Pass batch_size=None to resume, or "
                "use a new directory"
            )

    def resolve(s, layout, per_config=None):
        """(compile options, effective vmap_size) of shape s; may compile (see _resolve_vmap)."""
        with jax.enable_x64(sweep.dtype == "float64"):
            return _resolve_vmap(
                sweep, shapes[s], mesh, sharding, layout, n_dev, ex, per_config, device_platform
            )

    def prepare(s):
        """Layout, compiled function of shape s (None if every chunk is on disk already) and the
        effective vmap_size (None if nothing was compiled).

        Runs in a worker thread, so that the next shapes compile while this one computes (and,
        with several cores, several shapes compile at once); JAX's x64 flag is thread-local.
        """
        with jax.enable_x64(sweep.dtype == "float64"):
            layout, per = stored[s], None
            if layout is None:
                b = batch_size
                if b is None:
                    per = _per_config_bytes(sweep, shapes[s], ex)
                    b = max(1, budget // per) if per else 1
                    b = min(b, -(-n_batched // n_dev))
                layout = {
                    "static": shapes[s],
                    "batch_size": int(b),
                    "chunk_size": int(b * n_dev),
                    "n_chunks": -(-n_batched // (b * n_dev)),
                    "n_configs": n_batched,
                }
            elif out is not None and all(
                store.chunk_status(out, manifest, s, j).state == "ok"
                for j in range(layout["n_chunks"])
            ):
                return layout, None, None
            ex_s, size = resolve(s, layout, per)
            if stored[s] is None:
                layout["vmap_size"] = size  # recorded with the layout, reused by "auto" resumes
            return layout, _compile(sweep, shapes[s], mesh, sharding, layout, n_dev, ex_s), size

    workers = max(1, min(compile_workers, len(shapes)))
    pool = (
        ThreadPoolExecutor(workers, thread_name_prefix="gradflow-compile") if workers > 1 else None
    )
    futures: dict[int, Any] = {}
    blocks = []
    try:
        for s, static in enumerate(shapes):
            for t in range(s, min(s + workers, len(shapes))):  # keep the pool busy ahead
                if pool is not None and t not in futures:
                    futures[t] = pool.submit(prepare, t)
            layout, fn, size = futures.pop(s).result() if pool is not None else prepare(s)
            if size is not None:
                session["vmap_sizes"][str(s)] = size
            if stored[s] is None:
                manifest["shapes"][str(s)] = layout
                if writer:
                    store.write_manifest(out, manifest)

            def compile_late(s=s, layout=layout):
                """Only when another host found a chunk missing that this one had on disk."""
                ex_s, size = resolve(s, layout)
                session["vmap_sizes"][str(s)] = size
                return _compile(sweep, shapes[s], mesh, sharding, layout, n_dev, ex_s)

            results = _run_shape(
                sweep, s, static, layout, fn, out, manifest, writer, mesh, sharding, n_dev,
                compile_late, progress, f"shape {s + 1}/{len(shapes)} [{labels[s]}]", t_start,
            )  # fmt: skip
            blocks.append(
                _assemble(out, manifest, s, layout["n_chunks"], results, sweep.batched_shape)
            )
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    progress.update(0, False, f"done, {len(shapes)} shape(s)", final=True)
    session = manifest["sessions"][-1]
    session["wall_s"] = round(time.perf_counter() - t_start, 3)
    manifest["wall_s"] = round(sum(x["wall_s"] for x in manifest["sessions"]), 3)
    manifest["complete"] = True
    manifest["updated"] = store.timestamp()
    if writer:
        store.write_manifest(out, manifest)
    result = SweepResult(sweep.config(), tuple(blocks), manifest)
    if out is not None and writer:
        store.write_results(out, result)
    return result


def _compile(sweep, static, mesh, sharding, layout, n_dev, ex: _Exec):
    # A chunk is computed on devices × per-device rows; the per-device batch stays the layout's
    # batch_size unless the sweep resumes on a different number of devices.
    padded = -(-layout["chunk_size"] // n_dev) * n_dev
    return _cached_compile("chunk", sweep, static, padded, mesh, sharding, ex)[0]


def _run_shape(
    sweep, s, static, layout, fn, out, manifest, writer, mesh, sharding, n_dev, compile_late,
    progress, text, t_start,
) -> dict[int, dict[str, np.ndarray]]:  # fmt: skip
    """Computes (and stores) the missing chunks of one static combination."""
    chunk, n_chunks = layout["chunk_size"], layout["n_chunks"]
    n_batched = layout["n_configs"]
    ids = [store.chunk_id(s, j) for j in range(n_chunks)]
    states = ["missing" if out is None else store.chunk_status(out, manifest, s, j).state
              for j in range(n_chunks)]  # fmt: skip
    done = _broadcast_done(np.array([st == "ok" for st in states]))
    for j, st in enumerate(states):  # damage is named, then recomputed below
        if not done[j] and (st in ("corrupt", "unlisted") or ids[j] in manifest["chunks"]):
            manifest["sessions"][-1]["chunks_repaired"][ids[j]] = st
            progress.note(f"chunk {ids[j]} is {st}: recomputing it")
    padded = -(-chunk // n_dev) * n_dev
    results: dict[int, dict[str, np.ndarray]] = {}
    for j in range(n_chunks):
        lo, hi = j * chunk, min((j + 1) * chunk, n_batched)
        label = f"{text} chunk {j + 1}/{n_chunks}"
        if done[j]:
            manifest["sessions"][-1]["chunks_skipped"] += 1
            progress.update(hi - lo, False, label)
            continue
        if fn is None:  # compiled once per static combination, only if a chunk is left
            fn = compile_late()
        t0 = time.perf_counter()
        index = np.minimum(np.arange(lo, lo + padded), hi - 1)  # pad with the last config
        host = [index.astype(np.int32), *sweep.batched_values(index)]
        args = [
            jax.make_array_from_callback(a.shape, sharding, lambda idx, a=a: a[idx]) for a in host
        ]
        outputs = _flatten(fn(*args))
        arrays = {k: _gather(v)[: hi - lo] for k, v in outputs.items()}
        wall = time.perf_counter() - t0
        data, sha256 = store.chunk_bytes(arrays)
        if not writer:  # in memory, or a process that does not write: keep the arrays
            results[j] = arrays
        manifest["chunks"][ids[j]] = {
            "session": len(manifest["sessions"]) - 1,
            "configs": hi - lo,
            "wall_s": round(wall, 4),
            "sha256": sha256,
        }
        session = manifest["sessions"][-1]
        session["chunks_computed"] += 1
        session["wall_s"] = round(time.perf_counter() - t_start, 3)
        manifest["updated"] = store.timestamp()
        if writer:  # listed first: a kill in between leaves a listed chunk with no file
            store.write_manifest(out, manifest)
            store.write_chunk(out, s, j, data)
        progress.update(hi - lo, True, label)
    return results


def _assemble(out, manifest, s, n_chunks, results, batched_shape) -> dict[str, np.ndarray]:
    """Concatenates one static combination's chunks into arrays ``(*batched_shape, …)``."""
    parts = [
        results[j] if j in results else store.read_chunk(out, manifest, s, j)
        for j in range(n_chunks)
    ]
    return {
        k: np.concatenate([p[k] for p in parts]).reshape(batched_shape + parts[0][k].shape[1:])
        for k in parts[0]
    }
