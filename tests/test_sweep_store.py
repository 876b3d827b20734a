"""gradflow.sweep.store and .lock: one writer per directory, checksummed chunks, checked manifests.

Damage is done to a finished store by hand (truncate, zero, swap, delete, foreign chunk, edited
manifest fields, leftover temporaries); each must be named, never returned as data, and a resume
must recompute exactly the damaged chunks, ending bitwise equal to an undamaged run. Uses the
cheap ``toy`` measurement of tests/test_sweep.py (compiles in well under a second).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_sweep import EXAMPLES, TESTS, _env, _equal, toy_sweep

from gradflow import cli
from gradflow import sweep as sw
from gradflow.sweep import lock, store


def _finished(tmp_path, name="a", **kw):
    out = tmp_path / name
    return out, sw.run(toy_sweep(depths=(2, 3), seeds=2, **kw), out, batch_size=2, quiet=True)


def _edit_manifest(out, edit):
    path = out / sw.MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


# --- the lock -------------------------------------------------------------------------------------


def test_a_second_writer_gets_the_holders_pid_and_the_store_stays_whole(tmp_path):
    out, clean = _finished(tmp_path, "clean")
    target = tmp_path / "b"
    with lock.locked(target) as previous:
        assert previous is None
        assert lock.holder(target).pid == os.getpid()
        with pytest.raises(lock.StoreLockedError, match=rf"pid {os.getpid()} on host"):
            sw.run(toy_sweep(depths=(2, 3), seeds=2), target, batch_size=2, quiet=True)
        assert not (target / sw.MANIFEST).exists()  # refused before touching anything
    assert lock.holder(target) is None  # released
    again = sw.run(toy_sweep(depths=(2, 3), seeds=2), target, batch_size=2, quiet=True)
    _equal(again, clean)
    assert again.manifest["sessions"][-1]["after_interrupted"] is None


_HOLD = """
import sys, time
sys.path.insert(0, {tests!r})
from test_sweep import toy_sweep
from gradflow import sweep as sw
sw.run(toy_sweep(depths=(2, 3), seeds=2, sleep=0.3), sys.argv[1], batch_size=2, quiet=True)
"""


@pytest.mark.slow  # a subprocess holds the lock and is killed, ~6 s
def test_concurrent_cli_run_fails_at_once_and_a_killed_holder_leaves_no_lock(tmp_path, capsys):
    out = tmp_path / "store"
    script = tmp_path / "hold.py"
    script.write_text(_HOLD.format(tests=str(TESTS)))
    toml = EXAMPLES / "jacobian_spectrum.toml"  # any config: the lock is checked first
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=_env(1))
    try:
        deadline = time.time() + 120
        while lock.holder(out) is None:  # the writer runs (12 chunks of 0.3 s)
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        t0 = time.perf_counter()
        status = cli.main(["sweep", str(toml), "--out", str(out)])
        err = capsys.readouterr().err
        assert status == 2 and time.perf_counter() - t0 < 5  # at once, not after the run
        assert err.count("\n") == 1 and f"pid {proc.pid}" in err and "Traceback" not in err
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The kernel released the dead holder's lock: the next run takes it, names the killed run
    # and completes the store, equal to an uninterrupted run.
    assert lock.holder(out) is None
    resumed = sw.run(toy_sweep(depths=(2, 3), seeds=2, sleep=0.3), out, batch_size=2, quiet=True)
    assert resumed.manifest["sessions"][-1]["after_interrupted"]["pid"] == proc.pid
    _, clean = _finished(tmp_path, "clean")
    _equal(sw.load(out), clean)


# --- damaged chunks -------------------------------------------------------------------------------


def test_damaged_chunks_are_named_refused_and_recomputed_bitwise(tmp_path):
    out, clean = _finished(tmp_path)
    other, _ = _finished(tmp_path, "other", n=3)  # same layout, other numbers: a foreign store
    chunks = out / sw.CHUNKS
    names = sorted(p.name for p in chunks.glob("*.npz"))
    assert len(names) == 12
    data = (chunks / names[1]).read_bytes()
    (chunks / names[1]).write_bytes(data[: len(data) // 2])  # truncated
    (chunks / names[2]).write_bytes(b"\0" * len(data))  # zeroed
    a, b = (chunks / names[3]).read_bytes(), (chunks / names[4]).read_bytes()
    (chunks / names[3]).write_bytes(b)  # swapped
    (chunks / names[4]).write_bytes(a)
    (chunks / names[5]).unlink()  # deleted
    shutil.copy(other / sw.CHUNKS / names[6], chunks / names[6])  # foreign
    ids = [n.removesuffix(".npz") for n in names]

    check = store.verify(out)
    assert check.corrupt == (ids[1], ids[2], ids[3], ids[4], ids[6])
    assert check.missing == (ids[5],)
    assert len(check.ok) == 6 and check.complete
    with pytest.raises(ValueError, match=rf"{ids[1]}.*{ids[5]}.*{ids[6]}.*recompute"):
        sw.load(out)

    resumed = sw.run(toy_sweep(depths=(2, 3), seeds=2), out, batch_size=2, quiet=True)
    session = resumed.manifest["sessions"][-1]
    assert session["chunks_repaired"] == {
        ids[1]: "corrupt",
        ids[2]: "corrupt",
        ids[3]: "corrupt",
        ids[4]: "corrupt",
        ids[5]: "missing",
        ids[6]: "corrupt",
    }
    assert (session["chunks_computed"], session["chunks_skipped"]) == (6, 6)
    _equal(resumed, clean)
    _equal(sw.load(out), clean)
    assert store.verify(out).problems == []


def test_an_unlisted_chunk_is_not_data(tmp_path):
    """A chunk file the manifest does not list (copied in, or left by another program) is
    reported and recomputed; in an unfinished store it reads as not computed (NaN)."""
    out, clean = _finished(tmp_path)
    first = out / sw.CHUNKS / "s0000-c000000.npz"
    manifest = store.read_manifest(out)
    del manifest["chunks"]["s0000-c000000"]
    manifest["complete"] = False
    store.write_manifest(out, manifest)
    assert store.verify(out).unlisted == ("s0000-c000000",)
    total = sw.load(out)["total"].values  # (depth, seed, sigma_w, sigma_b)
    assert np.isnan(total[0, 0, 0]).all() and np.isnan(total).sum() == 2  # chunk 0: 2 configs
    resumed = sw.run(toy_sweep(depths=(2, 3), seeds=2), out, batch_size=2, quiet=True)
    assert resumed.manifest["sessions"][-1]["chunks_repaired"] == {"s0000-c000000": "unlisted"}
    assert first.exists()
    _equal(resumed, clean)


# --- the manifest ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda m: m["config"]["axes"].update(sigma_w=[5.0, 7.0, 9.0]), "config"),
        (lambda m: m["shapes"]["0"].update(chunk_size=4), "shapes"),
        (lambda m: m["shapes"]["1"].update(n_chunks=2), "shapes"),
        (lambda m: m.update(n_configs=7), "n_configs"),
        (lambda m: m["chunks"]["s0000-c000001"].update(sha256="0" * 64), "chunks"),
        (lambda m: m.update(complete=False), "complete"),
        (lambda m: m.pop("shapes"), "shapes"),
        (lambda m: m.update(extra=1), "extra"),
        (lambda m: m.update(format=1), "format"),
    ],
)
def test_an_edited_manifest_names_the_field(tmp_path, edit, field):
    out, _ = _finished(tmp_path)
    _edit_manifest(out, lambda m: (edit(m), m.pop("checksums") if field == "format" else None))
    if field == "format":  # an older store: no checksums, format 1
        match = "checksums"
    else:
        match = rf"field\(?s?\)? .*{field}"
    with pytest.raises(store.ManifestError, match=match):
        sw.load(out)
    with pytest.raises(store.ManifestError, match=match):
        sw.run(toy_sweep(depths=(2, 3), seeds=2), out, batch_size=2, quiet=True)
    with pytest.raises(store.ManifestError, match=match):
        store.verify(out)


def test_consistent_config_edit_is_still_caught(tmp_path):
    """Editing the coordinates *and* their hash (sigma_w=[5,7] over data computed at other
    values) still breaks the per-field checksums, which name both fields."""
    out, _ = _finished(tmp_path)

    def relabel(m):
        m["config"]["axes"]["sigma_w"] = [5.0, 7.0, 9.0]
        m["config_sha256"] = store.config_hash(m["config"])

    _edit_manifest(out, relabel)
    with pytest.raises(store.ManifestError, match="config, config_sha256"):
        sw.load(out)


@pytest.mark.parametrize("damage", ["truncated", "empty", "not an object"])
def test_a_damaged_manifest_names_the_file(tmp_path, damage):
    out, _ = _finished(tmp_path)
    path = out / sw.MANIFEST
    text = path.read_text()
    path.write_text(
        {"truncated": text[: len(text) // 2], "empty": "", "not an object": "[1]"}[damage]
    )
    with pytest.raises(store.ManifestError, match="manifest.json"):
        sw.load(out)
    # A cache (gradflow figures' stores) replaces a damaged store instead.
    replaced = sw.run(
        toy_sweep(depths=(2, 3), seeds=2), out, batch_size=2, quiet=True, on_mismatch="replace"
    )
    assert replaced.manifest["sessions"][-1]["chunks_computed"] == 12


def test_leftover_temporaries_are_removed_on_start(tmp_path):
    out, clean = _finished(tmp_path)
    for tmp in (out / ".manifest.json.ab12.tmp", out / sw.CHUNKS / ".s0000-c000001.npz.x9.tmp"):
        tmp.write_bytes(b"partial")
    check = store.verify(out)
    assert len(check.temporaries) == 2 and "leftover" in check.problems[0]
    again = sw.run(toy_sweep(depths=(2, 3), seeds=2), out, batch_size=2, quiet=True)
    assert again.manifest["sessions"][-1]["temporaries_removed"] == 2
    assert not list(out.rglob("*.tmp"))
    _equal(again, clean)


# --- gradflow sweep --verify ----------------------------------------------------------------------


def test_cli_verify(tmp_path, capsys):
    out, _ = _finished(tmp_path)
    assert cli.main(["sweep", "--verify", str(out)]) == 0
    assert "complete; 12/12 chunk(s) intact" in capsys.readouterr().out
    (out / sw.CHUNKS / "s0001-c000002.npz").write_bytes(b"junk")
    assert cli.main(["sweep", "--verify", str(out), "--quiet"]) == 1
    assert "1 corrupt chunk(s): s0001-c000002" in capsys.readouterr().out
    assert cli.main(["sweep", "--verify", str(tmp_path)]) == 2  # not a store: one error line
    err = capsys.readouterr().err
    assert err.startswith("gradflow: error:") and "no manifest.json" in err
    assert cli.main(["sweep", "--verify", str(out), "--out", str(out)]) == 2
    assert "--verify DIR takes no" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no manifest.json"):
        cli.main(["sweep", "--verify", str(tmp_path), "--debug"])
