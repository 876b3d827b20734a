"""gradflow.sweep's automatic vmap_size: the pure chooser, the cache lookup, and run() using it.

The sweeps use ``chain``, a cheap deterministic measurement (sines for weights, no jax.random:
threefry compiles slowly on a loaded CPU), so that each test compiles in well under a second.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import sweep as sw
from gradflow.sweep import runner
from gradflow.sweep import vmap_size as vs

MiB = 1 << 20


def _brute_force(per, n, cache):
    """Tiny (per · TINY_SHARE <= cache): n; else the largest power of two g <= n with
    g · per <= cache (1 if none): the rule, by search."""
    if per * min(n, vs.TINY_SHARE) <= cache:
        return n
    fitting = [g for g in range(1, n + 1) if g * per <= cache and g & (g - 1) == 0]
    return max(fitting) if fitting else 1


def test_tiny_configurations_keep_full_vmap():
    # 512 configurations of 1 kB: 512 kB, fits a 2 MiB cache whole.
    assert vs.choose_vmap_size(1000, 512, 2 * MiB, "cpu") == 512
    assert vs.choose_vmap_size(0, 7, 1, "cpu") == 7  # nothing to hold: never worth splitting
    assert vs.choose_vmap_size(2 * MiB, 1, 2 * MiB, "cpu") == 1  # exactly full, one config


def test_huge_configurations_go_one_at_a_time():
    # The benchmark's width-128, depth-40 Jacobian: ~12 MB by XLA's estimate, > a 2 MiB L2.
    assert vs.choose_vmap_size(12_000_000, 16, 2 * MiB, "cpu") == 1
    assert vs.choose_vmap_size(2 * MiB + 1, 64, 2 * MiB, "cpu") == 1


@pytest.mark.parametrize(
    "per, n, cache",
    [
        (49_000, 512, 2 * MiB),  # this machine's small benchmark configuration: tiny, 512
        (42_000, 512, 2 * MiB),  # the same, estimated 15 % smaller: still 512
        (200_000, 512, 2 * MiB),  # not tiny: 8
        (1000, 100, 10_000),
        (999, 100, 10_000),
        (3, 5, 14),
        (7, 3, 20),
        (5, 6, 29),  # 5 fit but the batch is 6: the power of two 4
    ],
)
def test_chooser_matches_the_rule_by_search(per, n, cache):
    got = vs.choose_vmap_size(per, n, cache, "cpu")
    assert got == _brute_force(per, n, cache)
    if got < n:  # a proper group: fits, and twice as many would not
        assert got * per <= cache < 2 * got * per


@pytest.mark.parametrize("platform", ["gpu", "tpu", "cuda", "rocm"])
def test_accelerators_vmap_the_whole_batch(platform):
    assert vs.choose_vmap_size(10**9, 64, 2 * MiB, platform) == 64
    assert vs.choose_vmap_size(10**9, 64, 2 * MiB, "cpu") == 1  # the same sizes on a CPU


def test_unknown_estimate_keeps_full_vmap():
    assert vs.choose_vmap_size(None, 33, 1, "cpu") == 33


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((100, 0, MiB, "cpu"), ValueError, "n_per_device"),
        ((100, 2.0, MiB, "cpu"), TypeError, "n_per_device"),
        ((100, 4, 0, "cpu"), ValueError, "cache_bytes"),
        ((-1, 4, MiB, "cpu"), ValueError, "per_config_bytes"),
        ((1.5, 4, MiB, "cpu"), TypeError, "per_config_bytes"),
        ((100, 4, MiB, None), TypeError, "platform"),
    ],
)
def test_chooser_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        vs.choose_vmap_size(*args)


def _fake_sysfs(root, caches):
    """``root/indexK/{level,type,size}`` as Linux writes them (each with a newline)."""
    for k, (level, kind, size) in enumerate(caches):
        d = root / f"index{k}"
        d.mkdir(parents=True)
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (d / name).write_text(f"{value}\n")
    return root


def test_cache_size_from_sysfs(tmp_path):
    # This machine's listing: L1d, L1i, a 2 MiB L2 per core, a (virtual) 480 MiB L3.
    full = [(1, "Data", "48K"), (1, "Instruction", "64K"), (2, "Unified", "2048K")]
    full.append((3, "Unified", "491520K"))
    assert vs.cpu_cache_bytes(_fake_sysfs(tmp_path / "a", full)) == 2048 * 1024
    # No L2 listed: the L3; sizes in M are read too.
    no_l2 = [(1, "Data", "32K"), (3, "Unified", "32M")]
    assert vs.cpu_cache_bytes(_fake_sysfs(tmp_path / "b", no_l2)) == 32 * MiB
    # An instruction-only L2 and a malformed data L2 do not count; the L3 answers.
    odd = [(2, "Instruction", "1024K"), (2, "Data", "lots"), (3, "Unified", "8192K")]
    assert vs.cpu_cache_bytes(_fake_sysfs(tmp_path / "c", odd)) == 8 * MiB
    # A cache directory missing its files is skipped, not an error.
    (tmp_path / "d" / "index0").mkdir(parents=True)
    assert vs.cpu_cache_bytes(tmp_path / "d") == vs.DEFAULT_CACHE_BYTES
    # Not Linux (no such directory): the fallback constant.
    assert vs.cpu_cache_bytes(tmp_path / "absent") == vs.DEFAULT_CACHE_BYTES
    assert vs.cpu_cache_bytes() > 0  # this host, whatever it lists


# ---------------------------------------------------------------------------------------------


def chain(point, n: int = 4):
    """h ← tanh(σ_w W_k h) over ``depth`` layers, W_k a deterministic function of the seed."""
    depth = point["depth"]
    dtype = jnp.result_type(float)
    phase = jnp.arange(1, depth * n * n + 1, dtype=dtype).reshape(depth, n, n)
    w = point["sigma_w"] * jnp.sin((point["seed"] + 1.0) * phase * 0.37) * math.sqrt(2.0 / n)

    def body(h, wk):
        h = jnp.tanh(wk @ h)
        return h, jnp.linalg.norm(h)

    h, norms = jax.lax.scan(body, jnp.ones((n,), w.dtype), w)
    return {"h": h, "norms": norms}


def chain_sweep():
    axes = {"depth": [3], "seed": list(range(4)), "sigma_w": [0.5, 1.5]}  # 8 batched configs
    return sw.Sweep.create(axes, chain, dtype="float64")


def _close(a, b):
    for name in a.names:
        # float64; the lax.map and vmap programs do the same operations per configuration but
        # XLA may fuse them differently: agreement to a few ulps of O(1) values (as test_sweep).
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-12, atol=1e-14)


def _bitwise(a, b):
    for name in a.names:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_auto_is_the_default_and_keeps_tiny_configs_vmapped():
    s = chain_sweep()
    full = sw.run(s, batch_size=8, vmap_size=None, quiet=True)
    auto = sw.run(s, batch_size=8, quiet=True)
    # A few hundred bytes per configuration: the whole batch fits any cache, one program.
    assert auto.manifest["shapes"]["0"]["vmap_size"] == 8
    session = auto.manifest["sessions"][-1]
    assert session["vmap_size"] == "auto" and session["vmap_sizes"] == {"0": 8}
    _bitwise(auto, full)  # the same compiled program
    # Explicit sizes are recorded as used: None is the whole batch, an int is capped at it.
    assert full.manifest["shapes"]["0"]["vmap_size"] == 8
    big = sw.run(s, batch_size=8, vmap_size=100, quiet=True)
    assert big.manifest["sessions"][-1]["vmap_sizes"] == {"0": 8}


def test_auto_splits_the_batch_when_it_does_not_fit(monkeypatch):
    s = chain_sweep()
    full = sw.run(s, batch_size=4, vmap_size=None, quiet=True)
    one = sw.run(s, batch_size=4, vmap_size=1, quiet=True)
    # A 1-byte cache holds no configuration: one at a time (lax.map inside the program).
    monkeypatch.setattr(runner, "cpu_cache_bytes", lambda: 1)
    auto = sw.run(s, batch_size=4, quiet=True)
    assert auto.manifest["shapes"]["0"]["vmap_size"] == 1
    assert auto.manifest["sessions"][-1]["vmap_sizes"] == {"0": 1}
    _bitwise(auto, one)  # the recorded size reproduces the run bitwise
    _close(auto, full)
    # With batch_size from the memory budget, the single-configuration estimate decides.
    budgeted = sw.run(s, quiet=True)
    assert budgeted.manifest["shapes"]["0"]["batch_size"] == 8
    assert budgeted.manifest["shapes"]["0"]["vmap_size"] == 1
    _close(budgeted, full)


def test_auto_resume_reuses_the_recorded_size(tmp_path, monkeypatch):
    s = chain_sweep()
    monkeypatch.setattr(runner, "cpu_cache_bytes", lambda: 1)
    first = sw.run(s, tmp_path, batch_size=2, quiet=True)  # 4 chunks, one config at a time
    assert first.manifest["shapes"]["0"]["vmap_size"] == 1
    next(iter(sorted((tmp_path / "chunks").glob("*.npz")))).unlink()
    # A host with a huge cache would vmap both configurations; the resume keeps the store's 1.
    monkeypatch.setattr(runner, "cpu_cache_bytes", lambda: 1 << 40)
    again = sw.run(s, tmp_path, quiet=True)
    session = again.manifest["sessions"][-1]
    assert (session["chunks_computed"], session["vmap_sizes"]) == (1, {"0": 1})
    _bitwise(again, first)


@pytest.mark.parametrize("bad, error", [("full", ValueError), (0, ValueError), (1.5, TypeError)])
def test_bad_vmap_size_is_named(bad, error):
    with pytest.raises(error, match="vmap_size"):
        sw.run(chain_sweep(), vmap_size=bad, quiet=True)
