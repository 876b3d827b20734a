"""Thread discipline for LAPACK-bound work on CPU: one BLAS thread under XLA's batch parallelism.

jaxlib's CPU kernels for batched SVD, QR, eigh, ... spread the batch over XLA's own thread pool,
and every per-matrix call then enters the LAPACK that jaxlib borrows from SciPy (SciPy's bundled
OpenBLAS, ``libscipy_openblas``), which starts threads of its own: on a 2-core machine, 4 busy
threads on 2 cores, spinning on each other at every synchronisation point. Measured on a 2-core
AMD EPYC (jax 0.10.2, scipy-openblas 0.3.30), one OpenBLAS thread instead of the default two made

* 232 batched SVDs of 128 × 128 (singular values only) 3–4× faster (0.29–0.43 s → 0.07–0.14 s),
* 232 batched QRs of 128 × 128 5× faster (0.137 → 0.027 s),
* a single 1024 × 1024 SVD 1.23× *slower* (0.127 → 0.157 s): an unbatched call has no XLA batch
  parallelism to stand in for OpenBLAS's threads,

and under load (two busy processes beside the benchmark on 2 cores) the default setting turned
a 0.45 s batch of SVDs into 19 s. gradflow's analyses run LAPACK on batches (all partial products,
every step's QR in a Lyapunov spectrum, sweeps over configurations), so **importing gradflow pins
that library to one thread**. Only SciPy's copy is touched: NumPy's own OpenBLAS (``numpy.linalg``)
and torch's threads are left alone.

Switch: the environment variable ``GRADFLOW_LAPACK_THREADS`` read at import — unset or ``1``:
pin to one thread (the default); ``off``: leave the library as it is; an integer n >= 1: n
threads. At run time, :func:`set_lapack_threads` and the context manager :func:`lapack_threads`
change it, :func:`lapack_info` reports it.

The library is found among the shared objects loaded in this process (``/proc/self/maps`` on
Linux) or in SciPy's wheel folders, and driven through OpenBLAS's own
``*openblas_set_num_threads`` entry points (no extra dependency). Where neither exists (e.g. a
SciPy built on Apple Accelerate or MKL), nothing is changed and :func:`lapack_info` says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "ENV_VAR",
    "LapackThreads",
    "lapack_info",
    "set_lapack_threads",
    "lapack_threads",
    "configure_from_env",
]

ENV_VAR = "GRADFLOW_LAPACK_THREADS"

# OpenBLAS's entry points, by build: SciPy's wheel (32-bit integers), its ILP64 variant, and a
# plain OpenBLAS.
_PREFIXES = ("scipy_openblas_", "openblas_")
_SUFFIXES = ("", "64_")


class LapackThreads(NamedTuple):
    """Where jaxlib's CPU LAPACK is and how many threads it runs.

    Attributes:
      library: path of the OpenBLAS shared library jaxlib's LAPACK calls, or None if not found.
      num_threads: its current thread count, or None if it cannot be queried.
      setting: what the process asked for: ``"1"`` (the default pinning), ``"off"``, or an
        integer as a string (from ``GRADFLOW_LAPACK_THREADS`` or :func:`set_lapack_threads`).
    """

    library: str | None
    num_threads: int | None
    setting: str


_STATE = {"setting": "unset", "lib": None, "found": False}


def _load_lapack() -> None:
    # jaxlib takes its LAPACK function pointers from scipy.linalg.cython_lapack; importing it
    # loads the library now, so it can be configured before the first kernel runs.
    try:
        import scipy.linalg.cython_lapack  # noqa: F401
    except ImportError:  # pragma: no cover - jaxlib requires scipy
        pass


def _candidates() -> list[str]:
    """Paths of loaded (or SciPy-bundled) OpenBLAS libraries belonging to SciPy."""
    paths: list[str] = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.rsplit(None, 1)[-1]
                if "openblas" in Path(p).name and "scipy" in p and p not in paths:
                    paths.append(p)
    except OSError:  # not Linux
        pass
    if not paths:
        import scipy

        root = Path(scipy.__file__).resolve().parent
        for folder in (root.parent / "scipy.libs", root / ".dylibs"):
            paths += sorted(str(p) for p in folder.glob("*openblas*"))
    # NumPy's copy (numpy.libs, ILP64) is not the one jaxlib calls: SciPy's first.
    return sorted(paths, key=lambda p: ("numpy.libs" in p, "64_" in Path(p).name))


def _entry(lib, what: str):
    for prefix in _PREFIXES:
        for suffix in _SUFFIXES:
            fn = getattr(lib, f"{prefix}{what}{suffix}", None)
            if fn is not None:
                return fn
    return None


def _library():
    """``(path, ctypes handle)`` of jaxlib's OpenBLAS, or ``(None, None)``."""
    if not _STATE["found"]:
        _load_lapack()
        for path in _candidates():
            if "numpy.libs" in path:
                continue
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            if _entry(lib, "set_num_threads") is not None:
                _STATE["lib"] = (path, lib)
                break
        _STATE["found"] = True
    return _STATE["lib"] or (None, None)


def _get() -> int | None:
    path, lib = _library()
    fn = None if lib is None else _entry(lib, "get_num_threads")
    return None if fn is None else int(fn())


def _set(n: int) -> None:
    _, lib = _library()
    if lib is not None:
        _entry(lib, "set_num_threads")(ctypes.c_int(n))


def _parse(value: str | None, what: str) -> int | None:
    """``None`` for "leave alone", else the thread count; ValueError naming ``what``."""
    if value is None or value.strip() == "":
        return 1
    v = value.strip().lower()
    if v == "off":
        return None
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{what} must be 'off' or an integer >= 1, got {value!r}")
    return n


def lapack_info() -> LapackThreads:
    """The library jaxlib's LAPACK runs in, its thread count, and the setting asked for."""
    path, _ = _library()
    return LapackThreads(path, _get(), _STATE["setting"])


def set_lapack_threads(n: int | str) -> LapackThreads:
    """Sets the thread count of jaxlib's LAPACK (SciPy's OpenBLAS); returns the previous state.

    Args:
      n: threads >= 1, or ``"off"`` (records the setting and changes nothing; a previously
        pinned count stays until set again).

    Returns:
      :class:`LapackThreads` before the change (pass its ``num_threads`` back to restore).

    Raises:
      ValueError: if ``n`` is not ``"off"`` or an integer >= 1.
    """
    if isinstance(n, bool) or not isinstance(n, (int, str)):
        raise ValueError(f"n must be 'off' or an integer >= 1, got {n!r}")
    count = _parse(str(n), "n")
    before = lapack_info()
    if count is not None:
        _set(count)
    _STATE["setting"] = "off" if count is None else str(count)
    return before


@contextlib.contextmanager
def lapack_threads(n: int) -> Iterator[LapackThreads]:
    """Context manager: jaxlib's LAPACK runs ``n`` threads inside, the previous count after.

    Example (a single large SVD, where OpenBLAS's own threads help)::

        with gf.threads.lapack_threads(os.cpu_count()):
            s = jnp.linalg.svd(big, compute_uv=False).block_until_ready()

    Computations dispatched asynchronously must be finished (``block_until_ready``) inside.
    """
    before = set_lapack_threads(n)
    try:
        yield lapack_info()
    finally:
        if before.num_threads is not None:
            _set(before.num_threads)
        _STATE["setting"] = before.setting


def configure_from_env() -> LapackThreads:
    """Applies ``GRADFLOW_LAPACK_THREADS`` (unset: 1 thread); called when gradflow is imported.

    Raises:
      ValueError: naming the variable if it is neither ``off`` nor an integer >= 1.
    """
    count = _parse(os.environ.get(ENV_VAR), ENV_VAR)
    if count is None:
        _STATE["setting"] = "off"
    else:
        _set(count)
        _STATE["setting"] = str(count)
    return lapack_info()
