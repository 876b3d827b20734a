"""How many configurations a sweep vmaps together on one device: ``run(vmap_size="auto")``.

A pure choice (:func:`choose_vmap_size`) from XLA's memory estimate of one configuration, the
per-device batch, the platform and the CPU's L2 cache size (:func:`cpu_cache_bytes`).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from gradflow import _checks

__all__ = ["AUTO", "choose_vmap_size", "cpu_cache_bytes"]

AUTO = "auto"  # run(vmap_size=AUTO), the default: choose_vmap_size per static combination
# The cache the automatic vmap_size targets when the host does not say (not Linux): 1 MiB, the
# middle of current per-core L2 sizes (512 KiB to 2 MiB on x86 and ARM server cores).
DEFAULT_CACHE_BYTES = 1 << 20
# A configuration using at most 1/TINY_SHARE of the cache is tiny: vmapped with the whole batch.
TINY_SHARE = 16
SYSFS_CACHE = "/sys/devices/system/cpu/cpu0/cache"


def choose_vmap_size(
    per_config_bytes: int | None, n_per_device: int, cache_bytes: int, platform: str
) -> int:
    """How many configurations a device vmaps together, when ``run`` is not told (pure).

    On a CPU a tiny configuration (at most 1/``TINY_SHARE`` of the cache) is vmapped with the whole
    batch: its operations are too small for anything but per-operation overhead to matter, which a
    wide vmap amortises. Otherwise the group is the largest power of two whose working set,
    ``vmap_size × per_config_bytes``, fits in ``cache_bytes`` (at least 1): vmapping more only
    makes every batched operation stream its operands through memory. A power of two, because XLA's
    estimate of one configuration moves with settings such as the matmul precision (42 or 49 kB
    below), which should rarely change the grouping (and so the bits) of runs on one machine, and
    because it divides the usual batch sizes (no remainder program). Measured with
    ``benchmarks/bench_sweep.py --quick`` on a 2-core Xeon (2 MiB L2): 16 Jacobian spectra of width
    128, depth 40 (~10–13 MB each by XLA's memory analysis) ran ~2–3× faster one at a time than all
    vmapped (and at 4 or more per group no faster than a Python loop), while 512 of width 16, depth
    10 (42–49 kB each, tiny) ran fastest all vmapped on a quiet machine (3.6× a loop of jitted
    calls, against 3.0× in groups of 32; under load groups of 16–64 were up to ~30 % faster), and
    ~2× faster than one at a time. A batch that fits as a whole is vmapped whole. Accelerators
    (``platform`` other than ``"cpu"``) always vmap the whole batch: wide batches are what they are
    built for. So does an unknown ``per_config_bytes`` (a backend without memory analysis): the
    behaviour before this choice.

    Args:
      per_config_bytes: bytes of one configuration's working set (XLA's memory analysis:
        arguments + outputs + temporaries), or ``None`` if unknown.
      n_per_device: configurations per device per chunk (the per-device batch).
      cache_bytes: the cache to fit in, e.g. :func:`cpu_cache_bytes`.
      platform: the devices' platform, ``jax.Device.platform`` (``"cpu"``, ``"gpu"``, ``"tpu"``).

    Returns:
      ``vmap_size`` in ``[1, n_per_device]``; ``n_per_device`` means the whole batch at once.

    Raises:
      TypeError, ValueError: an argument of the wrong kind or out of range (named).
    """
    n = _checks.positive_int("n_per_device", n_per_device)
    cache = _checks.positive_int("cache_bytes", cache_bytes)
    if not isinstance(platform, str):
        raise TypeError(f"platform must be a string like 'cpu', got {platform!r}")
    if per_config_bytes is not None:
        per = _checks.integer("per_config_bytes", per_config_bytes)
        if per < 0:
            raise ValueError(f"per_config_bytes must be >= 0 or None, got {per}")
    if platform.lower() != "cpu" or per_config_bytes is None or per * min(n, TINY_SHARE) <= cache:
        return n
    fits = cache // per  # >= 1 configurations fit, or 0 (then one at a time all the same)
    return min(n, 1 << (fits.bit_length() - 1)) if fits else 1


def _size_bytes(text: str) -> int | None:
    """sysfs cache size ``"2048K"`` / ``"32M"`` / ``"512"`` -> bytes (None if unreadable)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text, re.IGNORECASE)
    if not m:
        return None
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]


@functools.lru_cache(maxsize=8)  # ~1 ms of file reads, next to a small sweep's ~20 ms
def cpu_cache_bytes(root=SYSFS_CACHE) -> int:
    """The cache :func:`choose_vmap_size` fits a vmapped group in: the host's per-core L2.

    Read from Linux's sysfs (``root/index*/{level,type,size}``, data or unified caches only).
    L2 is the largest cache private to a core; L3 is shared by many cores, and in virtual
    machines is often reported as the whole host's (480 MiB on the 2-core VM the thresholds were
    measured on), so it is used only when no L2 is listed. Elsewhere (no sysfs, unreadable
    files): :data:`DEFAULT_CACHE_BYTES`.

    Args:
      root: the sysfs directory of one CPU's caches.

    Returns:
      Bytes (read once per ``root`` in a process).
    """
    found: dict[int, int] = {}
    try:
        entries = sorted(Path(root).glob("index*"))
    except OSError:
        entries = []
    for entry in entries:
        try:
            level = int((entry / "level").read_text().strip())
            kind = (entry / "type").read_text().strip().lower()
            size = _size_bytes((entry / "size").read_text())
        except (OSError, ValueError):
            continue  # a missing or malformed file: skip that cache, not the whole answer
        if kind in ("data", "unified") and size:
            found[level] = max(found.get(level, 0), size)
    for level in (2, 3):
        if level in found:
            return found[level]
    return DEFAULT_CACHE_BYTES
