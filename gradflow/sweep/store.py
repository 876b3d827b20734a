"""The on-disk store of a sweep: ``out_dir/manifest.json``, ``out_dir/chunks/*.npz`` and
``out_dir/results.npz``, every file written atomically (:mod:`gradflow._io`).

The manifest holds the sweep's canonical config and its SHA-256, the gradflow/JAX versions, the
devices, each static combination's chunk layout, every finished chunk and every session's wall
time. A directory that holds another sweep is refused (or, on request, replaced) rather than
mixed with this one.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import platform
import shutil
from collections.abc import Mapping
from pathlib import Path

import jax
import jaxlib
import numpy as np

from gradflow import _io
from gradflow._version import __version__
from gradflow.sweep.grid import FORMAT, Sweep
from gradflow.sweep.results import SweepResult

__all__ = [
    "timestamp",
    "chunk_id",
    "chunk_path",
    "versions",
    "device_info",
    "config_hash",
    "open_store",
    "create_store",
    "replace_if_different",
    "write_manifest",
    "write_chunk",
    "read_chunk",
    "write_results",
    "load",
]

MANIFEST = "manifest.json"
CHUNKS = "chunks"
RESULTS = "results.npz"


def timestamp() -> str:
    """Now, in UTC, as ISO 8601 to the second (the manifest's times)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def chunk_id(shape: int, chunk: int) -> str:
    """The name of chunk ``chunk`` of static combination ``shape``: ``sSSSS-cCCCCCC``."""
    return f"s{shape:04d}-c{chunk:06d}"


def chunk_path(out: Path, shape: int, chunk: int) -> Path:
    """Where that chunk's outputs are stored: ``out/chunks/sSSSS-cCCCCCC.npz``."""
    return out / CHUNKS / f"{chunk_id(shape, chunk)}.npz"


def versions() -> dict:
    """The versions a manifest records: gradflow, jax, jaxlib, numpy, python."""
    return {
        "gradflow": __version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def device_info(devices) -> dict:
    """How many devices of which kind and platform, and how many processes (for a manifest)."""
    return {
        "count": len(devices),
        "kind": devices[0].device_kind,
        "platform": devices[0].platform,
        "process_count": jax.process_count(),
    }


def config_hash(config) -> str:
    """SHA-256 of a sweep's canonical config (keys sorted): what identifies a store."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _diff(stored: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(stored) | set(new), key=str):
        a, b = stored.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: stored {a!r}, now {b!r}")
    return out


def open_store(out_dir: Path | None, sweep: Sweep) -> dict:
    """Reads or creates the manifest; raises ValueError if the directory holds another sweep.

    An in-memory sweep (``out_dir=None``) gets a fresh manifest that is never written.
    """
    config = sweep.config()
    path = None if out_dir is None else out_dir / MANIFEST
    if path is not None and path.exists():
        manifest = json.loads(path.read_text())
        if manifest.get("config_sha256") != config_hash(config):
            diffs = _diff(manifest.get("config", {}), config)
            raise ValueError(
                f"out_dir {out_dir} holds a different sweep ({'; '.join(diffs[:5]) or 'config'}); "
                "use a new directory, or delete this one to start over"
            )
        return manifest
    if out_dir is not None and (out_dir / CHUNKS).exists():
        raise ValueError(f"out_dir {out_dir} has a {CHUNKS}/ folder but no {MANIFEST}; not a sweep")
    return {
        "format": FORMAT,
        "config": config,
        "config_sha256": config_hash(config),
        "n_configs": sweep.n_configs,
        "versions": versions(),
        "created": timestamp(),
        "updated": timestamp(),
        "complete": False,
        "wall_s": 0.0,
        "device": None,
        "shapes": {},
        "chunks": {},
        "sessions": [],
    }


def create_store(out: Path, manifest: Mapping) -> None:
    """Creates ``out`` with its manifest, then ``out/chunks/``: a store is never manifest-less."""
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, manifest)
    (out / CHUNKS).mkdir(exist_ok=True)


def replace_if_different(out: Path, sweep: Sweep) -> None:
    """Removes a sweep store whose config or gradflow version differs from this sweep's."""
    path = out / MANIFEST
    if not path.exists():
        return
    manifest = json.loads(path.read_text())
    same = manifest.get("config_sha256") == config_hash(sweep.config())
    if same and manifest.get("versions", {}).get("gradflow") == versions()["gradflow"]:
        return
    shutil.rmtree(out / CHUNKS, ignore_errors=True)
    for name in (RESULTS, MANIFEST):
        if (out / name).exists():
            (out / name).unlink()


def write_manifest(out: Path, manifest: Mapping) -> None:
    """Writes ``out/manifest.json`` atomically."""
    _io.write_json(out / MANIFEST, manifest)


def write_chunk(out: Path, shape: int, chunk: int, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes one chunk's outputs (name -> array ``(configs, …)``) atomically."""
    _io.write_npz(chunk_path(out, shape, chunk), arrays)


def read_chunk(out: Path, shape: int, chunk: int) -> dict[str, np.ndarray]:
    """One chunk's outputs, name -> array ``(configs, …)``."""
    return _io.read_npz(chunk_path(out, shape, chunk))


def write_results(out: Path, result: SweepResult) -> None:
    """``results.npz``: every output over the whole grid (NaN-padded), plus coordinates."""
    arrays = {}
    for name in result.names:
        la = result[name]
        arrays[name] = la.values
        arrays[f"{name}.__dims__"] = np.asarray(la.dims)
    for a, values in result.axes.items():
        arrays[f"__coords__/{a}"] = np.asarray(values)
    _io.write_npz(out / RESULTS, arrays)


def load(out_dir) -> SweepResult:
    """Reads a sweep directory written by :func:`gradflow.sweep.run` (finished or not).

    Chunks not yet computed are NaN in the result; ``result.manifest["complete"]`` says whether
    the sweep finished.

    Raises:
      ValueError: if ``out_dir`` has no manifest.
    """
    out = Path(out_dir)
    path = out / MANIFEST
    if not path.exists():
        raise ValueError(f"out_dir {out} has no {MANIFEST}; not a sweep directory")
    manifest = json.loads(path.read_text())
    config = manifest["config"]
    axes = config["axes"]
    static = config["static"]
    batched_shape = tuple(len(v) for a, v in axes.items() if a not in static)
    n_batched = math.prod(batched_shape)
    n_shapes = math.prod(len(axes[a]) for a in static)
    blocks = []
    template = None
    for s in range(n_shapes):
        layout = manifest["shapes"].get(str(s))
        parts = {}
        if layout is not None:
            for j in range(layout["n_chunks"]):
                if chunk_path(out, s, j).exists():
                    parts[j] = read_chunk(out, s, j)
        blocks.append((layout, parts))
        if parts and template is None:
            template = next(iter(parts.values()))
    if template is None:
        raise ValueError(f"out_dir {out} holds no finished chunk yet")
    out_blocks = []
    for layout, parts in blocks:
        arrays = {}
        for k, t in template.items():
            # Per-shape output shapes can differ (depth); use this shape's own chunk if any.
            trailing = next(iter(parts.values()))[k].shape[1:] if parts else t.shape[1:]
            dtype = np.result_type(t.dtype, np.float64) if not parts else t.dtype
            full = np.full((n_batched,) + trailing, np.nan, np.result_type(dtype, np.float32))
            if layout is not None:
                c = layout["chunk_size"]
                for j, p in parts.items():
                    full[j * c : j * c + len(p[k])] = p[k]
            arrays[k] = full.reshape(batched_shape + trailing)
        out_blocks.append(arrays)
    return SweepResult(config, tuple(out_blocks), manifest)
