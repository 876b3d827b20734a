"""gradflow._io: the one atomic writer (sweep store, experiments' outputs) is all-or-nothing,
fsync'd before the rename, and leaves no temporary file behind."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from gradflow import _io


def test_atomic_write_replaces_the_file_readable_by_all(tmp_path):
    path = tmp_path / "new" / "dir" / "out.bin"  # directories are created
    assert _io.atomic_write(path, lambda f: f.write(b"one")) == path
    _io.atomic_write(path, lambda f: f.write(b"two"))
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.bin"]


def test_a_failed_write_leaves_every_target_as_it_was(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        _io.atomic_write(a, fail)
    with pytest.raises(KeyboardInterrupt), _io.atomic_paths(a, b) as (ta, tb):
        ta.write_text("new a")
        tb.write_text("new b")
        raise KeyboardInterrupt  # before the commit: neither file is replaced
    assert a.read_text() == "old a" and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary files left
    with _io.atomic_paths(a, b) as (ta, tb):
        ta.write_text("new a")
        tb.write_text("new b")
    assert (a.read_text(), b.read_text()) == ("new a", "new b")


def test_files_reach_the_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda *a: events.append("replace") or real_replace(*a))
    _io.atomic_write(tmp_path / "x", lambda f: f.write(b"x"))
    # the file's fsync, the rename, then (on POSIX) the directory's fsync
    assert events[:2] == ["fsync", "replace"]
    if os.name == "posix":
        assert events == ["fsync", "replace", "fsync"]


@pytest.mark.parametrize("compressed", [False, True])
def test_json_and_npz_helpers_round_trip(tmp_path, compressed):
    data = {"a": [1, 2.5], "b": float("nan")}
    _io.write_json(tmp_path / "d.json", data)
    assert (tmp_path / "d.json").read_text() == json.dumps(data, indent=1)
    arrays = {"z": np.arange(3.0), "y": np.eye(2, dtype=np.int32)}
    _io.write_npz(tmp_path / "d.npz", arrays, compressed=compressed)
    back = _io.read_npz(tmp_path / "d.npz")
    assert list(back) == ["z", "y"]  # the order they were saved in
    for k in arrays:
        np.testing.assert_array_equal(back[k], arrays[k])
        assert back[k].dtype == arrays[k].dtype
