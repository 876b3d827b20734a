"""One writer per sweep store: an exclusive lock on ``out_dir/.lock`` held for the whole run.

The lock is an operating-system file lock (``flock`` on POSIX, ``msvcrt.locking`` on Windows), not
the file's existence: the kernel releases it when its holder exits, however it exits, so a run
killed with SIGKILL leaves no lock to break by hand and the next run simply takes it. The file
itself only *describes* the holder (pid, host, start time), for the error a second writer gets;
it is never deleted (deleting a lock file while another process opens it would let two
processes hold "the" lock on two different files). ``flock`` is honoured across hosts on NFSv4;
on filesystems without working locks two hosts could still both write, so give each run its own
directory there.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
    import msvcrt

__all__ = ["LOCK", "StoreLockedError", "Holder", "locked", "holder"]

LOCK = ".lock"


class StoreLockedError(OSError):
    """Another process holds the sweep directory's lock (its message names the holder)."""


class Holder(NamedTuple):
    """Who holds, or last held, a store's lock.

    Attributes:
      pid: process id on ``host``.
      host: ``platform.node()`` of the holder.
      started: when it took the lock (UTC, ISO 8601).
    """

    pid: int
    host: str
    started: str


def _read(fd: int) -> Holder | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace")
    try:
        data = json.loads(text)
        return Holder(int(data["pid"]), str(data["host"]), str(data["started"]))
    except (ValueError, KeyError, TypeError):
        return None


def holder(out_dir) -> Holder | None:
    """The process that holds ``out_dir``'s lock now, or ``None`` when nobody does."""
    path = Path(out_dir) / LOCK
    if not path.exists():
        return None
    # Read-only: flock needs no write access, so a read-only store can be verified.
    fd = os.open(path, os.O_RDONLY)
    try:
        if not _try_lock(fd):
            return _read(fd)
        _unlock(fd)
        return None
    finally:
        os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # pragma: no cover - Windows
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # BlockingIOError on POSIX, PermissionError on Windows
        return False
    return True


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:  # pragma: no cover - Windows
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


@contextlib.contextmanager
def locked(out_dir) -> Iterator[Holder | None]:
    """Holds ``out_dir``'s lock for the block (``out_dir`` is created if needed).

    Yields:
      The previous holder that ended without releasing the lock (a killed run: its description
      is still in the file), or ``None``.

    Raises:
      StoreLockedError: another process holds the lock; the message names its pid, host and
        start time.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            who = _read(fd)
            by = (
                "another process"
                if who is None
                else (f"pid {who.pid} on host {who.host!r} (since {who.started})")
            )
            raise StoreLockedError(
                f"out_dir {out} is being written by {by}; wait for that run to finish (it "
                "resumes from the same directory), stop it, or use another directory"
            )
        previous = _read(fd)  # a description left behind means its run did not end cleanly
        me = Holder(
            os.getpid(),
            platform.node(),
            datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me._asdict()).encode())
        try:
            yield previous
        finally:
            os.ftruncate(fd, 0)  # released cleanly: nothing left to report as a killed run
            _unlock(fd)
    finally:
        os.close(fd)
