"""The one atomic file writer: a reader sees the old file or the whole new one, never a part.

Every file gradflow writes to be read later (sweep chunks and manifests, the experiments' figures
and numbers) goes through :func:`atomic_paths`: write to a temporary file in the target's
directory, flush it to disk (``os.fsync``), rename it over the target (``os.replace``, atomic
within one filesystem), then fsync the directory so that the rename itself survives a crash.
Without the first fsync a power loss after the rename can leave an empty file under the final
name, which a resumable sweep would then trust. :func:`write_json` and :func:`write_npz` are that
writer for the two formats gradflow stores; :func:`read_npz` reads the latter back.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "atomic_paths",
    "atomic_write",
    "write_json",
    "write_npz",
    "npz_bytes",
    "read_npz",
    "read_npz_bytes",
]


@contextlib.contextmanager
def atomic_paths(*paths) -> Iterator[tuple[Path, ...]]:
    """Temporary files to write ``paths`` through; all of them replace their targets, or none.

    Each temporary file (``.NAME.XXXX.tmp``) lies in its target's directory. When the block
    exits normally every one is fsync'd, made readable by all (mode 0644: ``mkstemp`` creates
    0600, and results are meant to be shared) and only then renamed onto its target, in order;
    the directories are fsync'd last where the platform allows it. When the block raises, the
    temporary files are removed and the targets are left as they were.

    Args:
      *paths: the files to write; their directories are created.

    Yields:
      One temporary :class:`~pathlib.Path` per target, in the same order (existing, empty files).
    """
    targets = [Path(p) for p in paths]
    tmps: list[Path] = []
    try:
        for path in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            tmps.append(Path(tmp))
        yield tuple(tmps)
        for tmp in tmps:  # every file on disk before any rename: all or nothing
            _fsync(tmp)
            os.chmod(tmp, 0o644)
        for tmp, path in zip(tmps, targets):
            os.replace(tmp, path)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise
    for directory in dict.fromkeys(path.parent for path in targets):
        _fsync_dir(directory)


def atomic_write(path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Writes ``path`` atomically: ``write(f)`` fills a binary file, which then replaces ``path``.

    Args:
      path: the file to write (its directory is created).
      write: called once with the temporary file, opened ``"wb"``.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    with atomic_paths(path) as (tmp,), open(tmp, "wb") as f:
        write(f)
    return path


def write_json(path, data) -> Path:
    """Writes ``data`` as indented JSON (``json.dumps(data, indent=1)``), atomically.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.
    """
    text = json.dumps(data, indent=1)
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_npz(path, arrays: Mapping[str, Any], *, compressed: bool = False) -> Path:
    """Writes ``arrays`` (name -> array) as an ``.npz`` file, atomically.

    Args:
      path: the file to write.
      arrays: the arrays, saved in this order.
      compressed: ``np.savez_compressed`` instead of ``np.savez``.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.
    """
    save = np.savez_compressed if compressed else np.savez
    return atomic_write(path, lambda f: save(f, **arrays))


def npz_bytes(arrays: Mapping[str, Any]) -> bytes:
    """The bytes :func:`write_npz` would write (uncompressed): to checksum before writing."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_npz(path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, name -> array, in the order they were saved."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def read_npz_bytes(data: bytes) -> dict[str, np.ndarray]:
    """:func:`read_npz` of a file's bytes already in memory (read once, checksummed, parsed)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)  # write access: Windows' fsync needs it
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Persists renames in ``directory``; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse to fsync a directory; the rename still happened
        pass
    finally:
        os.close(fd)
