"""The on-disk store of a sweep: ``out_dir/manifest.json``, ``out_dir/chunks/*.npz`` and
``out_dir/results.npz``, every file written atomically (:mod:`gradflow._io`).

The manifest holds the sweep's canonical config and its SHA-256, the gradflow/JAX versions, the
devices, each static combination's chunk layout, every finished chunk with the SHA-256 of its
file, every session's wall time, and a SHA-256 of each of its own fields (``checksums``), so that
a hand-edited field is named rather than believed. A directory that holds another sweep is
refused (or, on request, replaced) rather than mixed with this one.

A chunk counts as finished only when its file's checksum matches the manifest's: a missing,
truncated, zeroed, swapped or foreign chunk is reported by name and recomputed on resume, and
:func:`load` refuses to return it as data. The runner records a chunk (with its checksum) in the
manifest *before* renaming the file into place, so a kill between the two leaves a listed chunk
with no file (recomputed), never an unlisted file that would have to be trusted.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import platform
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import jax
import jaxlib
import numpy as np

from gradflow import _io
from gradflow._version import __version__
from gradflow.sweep import lock
from gradflow.sweep.grid import FORMAT, Sweep
from gradflow.sweep.results import SweepResult

__all__ = [
    "timestamp",
    "chunk_id",
    "chunk_path",
    "versions",
    "device_info",
    "config_hash",
    "ManifestError",
    "read_manifest",
    "open_store",
    "create_store",
    "replace_if_different",
    "write_manifest",
    "chunk_bytes",
    "write_chunk",
    "read_chunk",
    "ChunkStatus",
    "chunk_status",
    "remove_temporaries",
    "write_results",
    "StoreCheck",
    "verify",
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
    return _json_sha(config)


def _json_sha(value) -> str:
    """SHA-256 of a JSON value's canonical text (keys sorted): configs and manifest fields."""
    return _sha(json.dumps(value, sort_keys=True).encode())


def _diff(stored: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(stored) | set(new), key=str):
        a, b = stored.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: stored {a!r}, now {b!r}")
    return out


class ManifestError(ValueError):
    """``manifest.json`` is unreadable, edited or inconsistent (the message names the field)."""


# Fields every manifest has, with their JSON types; "checksums" holds the SHA-256 of each.
_FIELDS = {
    "format": int,
    "config": dict,
    "config_sha256": str,
    "n_configs": int,
    "versions": dict,
    "created": str,
    "updated": str,
    "complete": bool,
    "wall_s": (int, float),
    "device": (dict, type(None)),
    "shapes": dict,
    "chunks": dict,
    "sessions": list,
}
_LAYOUT = ("batch_size", "chunk_size", "n_chunks", "n_configs")
_CHUNK_ID = re.compile(r"s(\d{4})-c(\d{6})")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _field_checksums(manifest: Mapping) -> dict[str, str]:
    return {k: _json_sha(manifest[k]) for k in _FIELDS if k in manifest}


def _check_manifest(manifest, path: Path) -> dict:
    """The manifest if every field is present, typed, unedited and consistent; else an error."""
    where = f"{path}"
    if not isinstance(manifest, dict):
        raise ManifestError(f"{where} is not a JSON object; not a sweep manifest")
    missing = [k for k in (*_FIELDS, "checksums") if k not in manifest]
    if missing:
        raise ManifestError(f"{where} lacks the field(s) {', '.join(missing)}")
    unknown = sorted(set(manifest) - set(_FIELDS) - {"checksums"})
    if unknown:
        raise ManifestError(f"{where} has unknown field(s) {', '.join(unknown)}")
    for k, kind in _FIELDS.items():
        if not isinstance(manifest[k], kind) or (kind is int and isinstance(manifest[k], bool)):
            raise ManifestError(f"{where}: field {k!r} has the wrong type")
    if manifest["format"] != FORMAT:
        raise ManifestError(
            f"{where}: field 'format' is {manifest['format']!r}, this gradflow writes {FORMAT}; "
            "the store was written by another gradflow version: use a new directory (or "
            "on_mismatch='replace' for a cache)"
        )
    stored = manifest["checksums"]
    if not isinstance(stored, dict):
        raise ManifestError(f"{where}: field 'checksums' has the wrong type")
    edited = [k for k, v in _field_checksums(manifest).items() if stored.get(k) != v]
    if edited:
        raise ManifestError(
            f"{where}: field(s) {', '.join(edited)} changed after gradflow wrote them (their "
            "checksums do not match); the store cannot be trusted: use a new directory"
        )
    if manifest["config_sha256"] != config_hash(manifest["config"]):
        raise ManifestError(f"{where}: field 'config' does not match 'config_sha256'")
    for s, layout in manifest["shapes"].items():
        if not (isinstance(layout, dict) and all(isinstance(layout.get(k), int) for k in _LAYOUT)):
            raise ManifestError(f"{where}: field 'shapes.{s}' is not a chunk layout")
        if layout["n_chunks"] != -(-layout["n_configs"] // max(layout["chunk_size"], 1)):
            raise ManifestError(f"{where}: field 'shapes.{s}' has inconsistent chunk counts")
    for cid, entry in manifest["chunks"].items():
        m = _CHUNK_ID.fullmatch(cid)
        layout = manifest["shapes"].get(str(int(m.group(1)))) if m else None
        if layout is None or int(m.group(2)) >= layout["n_chunks"]:
            raise ManifestError(f"{where}: field 'chunks.{cid}' names no chunk of this sweep")
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)):
            raise ManifestError(f"{where}: field 'chunks.{cid}' has no sha256")
    return manifest


def read_manifest(out_dir) -> dict:
    """``out_dir/manifest.json``, checked: every field present, typed and unedited.

    Raises:
      ValueError: no manifest (not a sweep directory).
      ManifestError: (a ValueError) the file is not JSON, lacks or adds a field, a field's
        checksum does not match (edited by hand), or the chunk layouts are inconsistent; the
        message names the file and the field.
    """
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise ValueError(f"out_dir {out_dir} has no {MANIFEST}; not a sweep directory")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}); the store is damaged") from None
    return _check_manifest(manifest, path)


def open_store(out_dir: Path | None, sweep: Sweep) -> dict:
    """Reads or creates the manifest; raises ValueError if the directory holds another sweep.

    An in-memory sweep (``out_dir=None``) gets a fresh manifest that is never written.
    """
    config = sweep.config()
    path = None if out_dir is None else out_dir / MANIFEST
    if path is not None and path.exists():
        manifest = read_manifest(out_dir)
        if manifest["config_sha256"] != config_hash(config):
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
    try:
        manifest = read_manifest(out)
    except ManifestError:  # damaged or from another format: replaced like a different sweep
        manifest = {}
    same = manifest.get("config_sha256") == config_hash(sweep.config())
    if same and manifest.get("versions", {}).get("gradflow") == versions()["gradflow"]:
        return
    shutil.rmtree(out / CHUNKS, ignore_errors=True)
    for name in (RESULTS, MANIFEST):
        if (out / name).exists():
            (out / name).unlink()


def write_manifest(out: Path, manifest: dict) -> None:
    """Writes ``out/manifest.json`` atomically, with a fresh checksum of every field."""
    manifest["checksums"] = _field_checksums(manifest)
    _io.write_json(out / MANIFEST, manifest)


def chunk_bytes(arrays: Mapping[str, np.ndarray]) -> tuple[bytes, str]:
    """One chunk's file contents (an ``.npz`` of name -> array ``(configs, …)``) and SHA-256."""
    data = _io.npz_bytes(arrays)
    return data, _sha(data)


def write_chunk(out: Path, shape: int, chunk: int, data: bytes) -> None:
    """Writes one chunk's file (from :func:`chunk_bytes`) atomically."""
    _io.atomic_write(chunk_path(out, shape, chunk), lambda f: f.write(data))


class ChunkStatus(NamedTuple):
    """What is on disk for one chunk.

    Attributes:
      state: ``"ok"`` (file present, checksum matches the manifest), ``"missing"`` (listed or
        expected, no file), ``"unlisted"`` (a file the manifest does not list: not written by
        this store's runs, or from before the run that would have listed it) or ``"corrupt"``
        (checksum mismatch: truncated, zeroed, swapped, foreign or edited).
      arrays: the chunk's arrays when ``state == "ok"`` and they were asked for, else ``None``.
    """

    state: str
    arrays: dict[str, np.ndarray] | None = None


def chunk_status(out: Path, manifest: Mapping, shape: int, chunk: int, *, read=False):
    """Checks one chunk's file against the manifest's checksum (reading the file once).

    Args:
      out: the store directory.
      manifest: its manifest (from :func:`read_manifest` or a running sweep).
      shape, chunk: which chunk.
      read: also parse and return the arrays of a chunk that is ``"ok"``.

    Returns:
      :class:`ChunkStatus`.
    """
    path = chunk_path(out, shape, chunk)
    if not path.exists():
        return ChunkStatus("missing")
    entry = manifest["chunks"].get(chunk_id(shape, chunk))
    if entry is None:
        return ChunkStatus("unlisted")
    data = path.read_bytes()
    if _sha(data) != entry["sha256"]:
        return ChunkStatus("corrupt")
    return ChunkStatus("ok", _io.read_npz_bytes(data) if read else None)


def read_chunk(out: Path, manifest: Mapping, shape: int, chunk: int) -> dict[str, np.ndarray]:
    """One chunk's outputs, name -> array ``(configs, …)``, checked against its checksum.

    Raises:
      ValueError: the chunk is missing, unlisted or corrupt (named).
    """
    status = chunk_status(out, manifest, shape, chunk, read=True)
    if status.state != "ok":
        raise ValueError(
            f"chunk {chunk_path(out, shape, chunk)} is {status.state}; run the sweep again "
            "(same directory) to recompute it"
        )
    return status.arrays


def _temporaries(out: Path) -> list[Path]:
    """The atomic writer's temporary files (``.NAME.XXXX.tmp``) in the store and its chunks/."""
    return [*out.glob(".*.tmp"), *(out / CHUNKS).glob(".*.tmp")]


def remove_temporaries(out: Path) -> list[Path]:
    """Deletes what killed runs left of atomic writes (``.NAME.XXXX.tmp``); returns their paths.

    Call only while holding the store's lock: a running writer's temporaries look the same.
    """
    found = _temporaries(out)
    for path in found:
        path.unlink(missing_ok=True)
    return found


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


class StoreCheck(NamedTuple):
    """What :func:`verify` found in a sweep directory.

    Attributes:
      complete: the manifest says every chunk was computed.
      n_chunks: chunks the manifest's layouts define so far.
      ok: ids of chunks present with a matching checksum.
      missing, unlisted, corrupt: ids of chunks in those states (see :class:`ChunkStatus`);
        ``missing`` lists only chunks that a complete store should have or that the manifest
        lists.
      temporaries: leftover temporary files (from killed runs).
      holder: the running process that holds the store's lock, or ``None``.
    """

    complete: bool
    n_chunks: int
    ok: tuple[str, ...]
    missing: tuple[str, ...]
    unlisted: tuple[str, ...]
    corrupt: tuple[str, ...]
    temporaries: tuple[str, ...]
    holder: lock.Holder | None

    @property
    def problems(self) -> list[str]:
        """One line per problem; empty when the store is intact."""
        lines = []
        for state in ("missing", "corrupt", "unlisted"):
            ids = getattr(self, state)
            if ids:
                lines.append(f"{len(ids)} {state} chunk(s): {', '.join(ids)}")
        if self.temporaries:
            lines.append(f"{len(self.temporaries)} leftover temporary file(s)")
        return lines


def _statuses(out: Path, manifest: Mapping, *, read: bool):
    """``{(shape, chunk): ChunkStatus}`` over every chunk of every laid-out shape."""
    return {
        (int(s), j): chunk_status(out, manifest, int(s), j, read=read)
        for s, layout in manifest["shapes"].items()
        for j in range(layout["n_chunks"])
    }


def verify(out_dir) -> StoreCheck:
    """Checks a sweep directory without running or changing anything.

    The manifest is validated (:func:`read_manifest` raises on an edited or damaged one), every
    chunk's file is checksummed against it, and files the manifest does not list are reported.

    Args:
      out_dir: a directory written by :func:`gradflow.sweep.run`.

    Returns:
      :class:`StoreCheck` (``check.problems`` is empty for an intact store).
    """
    out = Path(out_dir)
    manifest = read_manifest(out)
    found = _statuses(out, manifest, read=False)
    by = {st: [] for st in ("ok", "missing", "unlisted", "corrupt")}
    for (s, j), status in sorted(found.items()):
        cid = chunk_id(s, j)
        if status.state != "missing" or manifest["complete"] or cid in manifest["chunks"]:
            by[status.state].append(cid)
    expected = {f"{chunk_id(s, j)}.npz" for s, j in found}
    by["unlisted"] += sorted(p.stem for p in (out / CHUNKS).glob("*.npz") if p.name not in expected)
    temporaries = _temporaries(out)
    return StoreCheck(
        complete=manifest["complete"],
        n_chunks=len(found),
        ok=tuple(by["ok"]),
        missing=tuple(by["missing"]),
        unlisted=tuple(by["unlisted"]),
        corrupt=tuple(by["corrupt"]),
        temporaries=tuple(sorted(p.name for p in temporaries)),
        holder=lock.holder(out),
    )


def load(out_dir) -> SweepResult:
    """Reads a sweep directory written by :func:`gradflow.sweep.run` (finished or not).

    Chunks not yet computed are NaN in the result; ``result.manifest["complete"]`` says whether
    the sweep finished. Every chunk is checked against its checksum first.

    Raises:
      ValueError: ``out_dir`` has no manifest, or a damaged one (:class:`ManifestError`); a chunk
        is corrupt; a chunk of a store that says it is complete is missing. The message names
        the chunks; running the sweep again in the same directory recomputes them.
    """
    out = Path(out_dir)
    manifest = read_manifest(out)
    config = manifest["config"]
    axes = config["axes"]
    static = config["static"]
    batched_shape = tuple(len(v) for a, v in axes.items() if a not in static)
    n_batched = math.prod(batched_shape)
    n_shapes = math.prod(len(axes[a]) for a in static)
    found = _statuses(out, manifest, read=True)
    bad = sorted(
        chunk_id(s, j)
        for (s, j), st in found.items()
        if st.state == "corrupt" or (st.state != "ok" and manifest["complete"])
    )
    if bad:
        raise ValueError(
            f"out_dir {out}: chunk(s) {', '.join(bad)} are damaged or missing; run the sweep "
            "again in the same directory to recompute them (`gradflow sweep --verify` lists them)"
        )
    blocks = []
    template = None
    for s in range(n_shapes):
        layout = manifest["shapes"].get(str(s))
        parts = {}
        if layout is not None:
            for j in range(layout["n_chunks"]):
                if found[(s, j)].state == "ok":
                    parts[j] = found[(s, j)].arrays
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
