"""Scalar writers: training statistics to TensorBoard, JSON Lines or CSV, or any logger you own.

A *writer* takes one step's scalars at a time, ``writer.write(step, {"loss": 0.3, …})``, and is
a context manager that closes itself. :func:`flatten` turns what gradflow measures (a
:class:`gradflow.monitor.GradStats`, or nested dicts / NamedTuples of scalars and GradStats)
into the flat ``{"grad_norm/hidden_0": …}`` mapping every writer takes::

    from gradflow import monitor, writers

    with writers.TensorBoardWriter("runs/exp1") as tb, writers.CsvWriter("exp1.csv") as csv:
        for step in range(steps):
            params, opt_state, loss, stats = train_step(params, opt_state, batch)
            if step % 10 == 0:
                scalars = writers.flatten({"loss": loss, "grads": stats})
                tb.write(step, scalars)
                csv.write(step, scalars)

where ``train_step`` calls ``monitor.grad_stats(grads, updates, params)`` inside its ``jax.jit``.
:func:`flatten` transfers to the host (call it outside ``jit``, every few steps).

Weights & Biases needs no adapter (and gradflow does not depend on it)::

    import wandb
    run = wandb.init(project="my-project")
    wandb.log(writers.flatten(stats), step=step)   # or flatten({"loss": loss, "grads": stats})

Any object with ``write(step, scalars)``, ``flush()`` and ``close()`` is a :class:`Writer`
(e.g. a three-line class around ``mlflow.log_metrics(scalars, step=step)``).

The three writers here:

- :class:`JsonlWriter`: one JSON object per line, ``{"step": 10, "loss": 0.31, …}``. JSON has no
  NaN or infinity, so non-finite values are written as the strings ``"NaN"``, ``"Infinity"``,
  ``"-Infinity"`` (which Python's ``float()`` parses back; :func:`read_jsonl` does it for you).
  A diverging run's NaN step is exactly what one wants to keep, and ``null`` would not say
  which of the three it was.
- :class:`CsvWriter`: a header row ``step,<keys of the first write>``, then one row per step;
  floats as Python ``repr`` (the shortest string that round-trips exactly; ``nan``, ``inf``,
  ``-inf`` for the non-finite ones, which ``float()`` and ``pandas.read_csv`` read back). A key
  missing from a later write leaves its cell empty; a key the header lacks is an error (pass
  every key up front with ``fieldnames=``, or use JSON Lines).
- :class:`TensorBoardWriter`: event files written by TensorBoard's own ``EventFileWriter``
  (the optional ``gradflow[tensorboard]`` extra; neither TensorFlow nor torch is needed).
  TensorBoard stores scalars as float32 (beyond its range a value becomes ±inf or 0).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np

from gradflow import _checks
from gradflow.monitor import GradStats

__all__ = [
    "Writer",
    "flatten",
    "write_history",
    "JsonlWriter",
    "CsvWriter",
    "TensorBoardWriter",
    "read_jsonl",
    "read_csv",
]


@runtime_checkable
class Writer(Protocol):
    """What a writer is: ``write(step, scalars)``, ``flush()``, ``close()``; a context manager.

    Subclass it to get ``__enter__``/``__exit__`` (closing on exit) for free; an object of your
    own passes ``isinstance(obj, Writer)`` when it has all five methods, and gradflow calls only
    the three.
    """

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        """Records ``scalars`` (name -> float, e.g. from :func:`flatten`) at training ``step``."""
        ...

    def flush(self) -> None:
        """Pushes everything written so far to its destination."""
        ...

    def close(self) -> None:
        """Flushes and releases the destination; later writes raise ValueError."""
        ...

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# flatten


def _scalar(key: str, value) -> float:
    try:
        a = np.asarray(value)
    except jax.errors.TracerArrayConversionError:
        raise TypeError(
            f"{key!r} is a traced value: flatten runs outside jax.jit (return the statistics "
            "from the jitted step and flatten them on the host)"
        ) from None
    if a.dtype == object or not (
        np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.bool_)
    ):
        raise TypeError(f"{key!r} must be a number, got {type(value).__name__} {value!r}")
    if a.size != 1:
        raise ValueError(
            f"{key!r} has shape {a.shape}, expected a scalar (size 1); flatten takes one step's "
            "values (index stacked statistics by step, or use write_history)"
        )
    if np.iscomplexobj(a):
        raise TypeError(f"{key!r} is complex ({a.dtype}); writers take real scalars")
    return float(a.reshape(()))


def _pow10(log10: np.ndarray) -> np.ndarray:
    # In float64 on the host: a float32 norm of 1e-50 (log10 = -50) would flush to 0 as float32.
    with np.errstate(over="ignore"):
        return np.power(10.0, np.asarray(log10, np.float64))


def _grad_stats(key: str, stats: GradStats) -> dict[str, Any]:
    grad = np.asarray(stats.grad_log10, np.float64)
    if grad.size != len(stats.names):  # leading axes of size 1 are fine, as for scalars
        raise ValueError(
            f"{key or 'stats'!r} holds GradStats of shape {grad.shape} for {len(stats.names)} "
            "layers; flatten takes one step's (use write_history for stacked steps)"
        )
    grad = grad.reshape(-1)
    upd = np.asarray(stats.update_log10, np.float64).reshape(-1)
    par = np.asarray(stats.param_log10, np.float64).reshape(-1)
    # ‖Δθ‖/‖θ‖ as a difference of logs, and ‖Δθ‖ itself where θ = 0 (as GradStats.update_ratios).
    with np.errstate(invalid="ignore"):
        ratio = np.where(par > -np.inf, _pow10(upd - par), _pow10(upd))
    out: dict[str, Any] = {}
    for quantity, values in (
        ("grad_norm", _pow10(grad)),
        ("update_ratio", ratio),
        ("param_norm", _pow10(par)),
    ):
        for name, v in zip(stats.names, values):
            out[f"{quantity}/{name}"] = v
    out["grad_norm/global"] = _pow10(stats.global_grad_log10)
    out["nonfinite"] = stats.nonfinite
    return out


def _join(prefix: str, key) -> str:
    if not isinstance(key, str):
        key = str(key)
    return f"{prefix}/{key}" if prefix else key


def _flatten_into(out: dict[str, float], prefix: str, value) -> None:
    if isinstance(value, GradStats):
        items = _grad_stats(prefix, value).items()
    elif isinstance(value, tuple) and hasattr(value, "_asdict"):  # a NamedTuple
        # A None field is an optional record that was not asked for (e.g. fit's StepStats
        # without metrics): nothing to write, unlike a None the caller put in a mapping.
        items = [(k, v) for k, v in value._asdict().items() if v is not None]
    elif isinstance(value, Mapping):
        items = value.items()
    else:
        if not prefix:
            raise TypeError(
                "flatten needs a GradStats, a mapping or a NamedTuple at the top level, got "
                f"{type(value).__name__}"
            )
        if prefix in out:
            raise ValueError(f"key {prefix!r} occurs twice after flattening")
        out[prefix] = _scalar(prefix, value)
        return
    for k, v in items:
        _flatten_into(out, _join(prefix, k), v)


def flatten(stats, prefix: str = "") -> dict[str, float]:
    """One step's statistics as a flat ``{"a/b": float}`` mapping, ready for any writer.

    A :class:`~gradflow.monitor.GradStats` becomes ``grad_norm/<layer>``, ``update_ratio/<layer>``
    (‖Δθ_l‖/‖θ_l‖), ``param_norm/<layer>``, ``grad_norm/global`` and ``nonfinite`` (1.0 or 0.0),
    in linear scale, computed from the stored log10 in float64 so that a float32 gradient of
    1e-50 is written as 1e-50, not 0. Mappings and NamedTuples nest with ``/``; leaves are
    numbers or arrays of size 1 (NumPy or JAX, any shape such as ``(1,)``), written as floats
    (bools as 1.0/0.0). NamedTuple fields that are None are skipped, so ``fit``'s
    ``callback(step, stats)`` can pass its ``StepStats`` straight in.

    Args:
      stats: a GradStats, or a mapping / NamedTuple whose values are scalars, GradStats or
        further mappings / NamedTuples.
      prefix: prepended to every key with ``/`` (e.g. ``"train"``); empty for none.

    Returns:
      dict name -> float, in the order of ``stats`` (for a GradStats: the layers' order).

    Raises:
      TypeError: a leaf that is not a real number (the message names its key), a traced value
        (call it outside ``jit``), or a top-level scalar without a ``prefix``.
      ValueError: a leaf with more than one element (named by its key; index stacked statistics
        by step first, or use :func:`write_history`), or two leaves flattening to one key.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    out: dict[str, float] = {}
    _flatten_into(out, prefix, stats)
    return out


def write_history(writer: Writer, steps, history, prefix: str = "") -> None:
    """Writes statistics stacked over steps (e.g. from ``lax.scan``), one ``write`` per step.

    Args:
      writer: any :class:`Writer`.
      steps: the S step numbers, a sequence or array of shape ``(S,)``.
      history: what :func:`flatten` takes, with every array leaf (and every GradStats array)
        carrying a leading axis of length S.
      prefix: as in :func:`flatten`.

    Raises:
      ValueError: if a leaf's leading axis is not S long; as :func:`flatten`.
    """
    steps = np.asarray(steps)
    if steps.ndim != 1:
        raise ValueError(f"steps must be one-dimensional, got shape {steps.shape}")
    leaves = jax.tree_util.tree_leaves_with_path(history)
    for path, leaf in leaves:
        shape = np.shape(leaf)
        if not shape or shape[0] != len(steps):
            raise ValueError(
                f"history{jax.tree_util.keystr(path)} has shape {shape}; expected a leading "
                f"axis of {len(steps)} steps"
            )
    host = jax.tree_util.tree_map(np.asarray, history)  # one transfer, not one per step
    for i, step in enumerate(steps.tolist()):
        one = jax.tree_util.tree_map(lambda a, i=i: a[i], host)
        writer.write(step, flatten(one, prefix))


# ---------------------------------------------------------------------------------------------
# The writers


def _check_step(step) -> int:
    return _checks.positive_int("step", step, minimum=0)


def _check_scalars(scalars) -> Mapping[str, float]:
    if not isinstance(scalars, Mapping):
        raise TypeError(
            f"scalars must be a mapping name -> float (see flatten), got {type(scalars).__name__}"
        )
    for k in scalars:
        if not isinstance(k, str) or not k:
            raise TypeError(f"scalars keys must be non-empty strings, got {k!r}")
    return scalars


class _FileWriter(Writer):
    """Shared by the text writers: a line-buffered file (each row reaches the OS when written)."""

    def __init__(self, path, append: bool):
        self.path = Path(path)
        if not isinstance(append, bool):
            raise TypeError(f"append must be a bool, got {append!r}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._existing = append and self.path.exists() and self.path.stat().st_size > 0
        # newline="" lets the csv module write its own line ends; buffering=1: line-buffered, so
        # a run that crashes (or is watched with tail -f) has every finished row on disk.
        self._file = open(self.path, "a" if append else "w", newline="", buffering=1)

    def _open_file(self):
        if self._file is None:
            raise ValueError(f"{type(self).__name__}({str(self.path)!r}) is closed")
        return self._file

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _json_float(v: float):
    if math.isfinite(v):
        return v
    return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")


class JsonlWriter(_FileWriter):
    """JSON Lines: one object ``{"step": int, name: float, …}`` per ``write``.

    Non-finite values are the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (strict JSON has
    no such numbers; ``float()`` parses these strings back, see :func:`read_jsonl`).

    Args:
      path: the file; its directory is created.
      append: add to an existing file instead of replacing it (for a resumed run).
    """

    def __init__(self, path, *, append: bool = False):
        super().__init__(path, append)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        step = _check_step(step)
        scalars = _check_scalars(scalars)
        if "step" in scalars:
            raise ValueError('scalars must not contain the key "step" (it holds the step number)')
        row = {"step": step}
        row.update((k, _json_float(_scalar(k, v))) for k, v in scalars.items())
        self._open_file().write(json.dumps(row, allow_nan=False) + "\n")


def read_jsonl(path) -> list[dict[str, Any]]:
    """Reads a :class:`JsonlWriter` file back: one dict per line, non-finite strings as floats."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows.append(
                {k: float(v) if isinstance(v, str) and k != "step" else v for k, v in row.items()}
            )
    return rows


class CsvWriter(_FileWriter):
    """CSV: a header ``step,<names>`` and one row per ``write``.

    The columns are ``fieldnames`` if given, else the keys of the first write (in its order). A
    later write that lacks a column leaves the cell empty (monitor statistics every 10 steps,
    the loss every step); a key not among the columns raises ValueError, since a CSV header
    cannot grow without rewriting the file. Floats are written as ``repr`` (exact round trip;
    ``nan``, ``inf``, ``-inf``).

    Args:
      path: the file; its directory is created.
      fieldnames: the columns (without ``step``); None: those of the first write.
      append: add rows to an existing file, keeping its header (which must then hold every
        later key).
    """

    def __init__(self, path, *, fieldnames=None, append: bool = False):
        super().__init__(path, append)
        self._fields: tuple[str, ...] | None = None
        if self._existing:
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), [])
            if not header or header[0] != "step":
                self.close()
                raise ValueError(f"{self.path} has no 'step,…' header to append to")
            self._fields = tuple(header[1:])
        if fieldnames is not None:
            fields = tuple(fieldnames)
            if not fields or not all(isinstance(f, str) and f for f in fields):
                self.close()
                raise TypeError(f"fieldnames must be non-empty strings, got {fieldnames!r}")
            if self._fields is not None and fields != self._fields:
                self.close()
                raise ValueError(
                    f"fieldnames {fields} differ from the header of {self.path}: {self._fields}"
                )
            self._fields = fields
            if not self._existing:
                self._row(("step",) + fields)

    def _row(self, row) -> None:
        csv.writer(self._open_file(), lineterminator="\n").writerow(row)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        step = _check_step(step)
        scalars = _check_scalars(scalars)
        if "step" in scalars:
            raise ValueError('scalars must not contain the key "step" (the first column)')
        values = {k: _scalar(k, v) for k, v in scalars.items()}
        self._open_file()
        if self._fields is None:
            self._fields = tuple(values)
            self._row(("step",) + self._fields)
        new = [k for k in values if k not in self._fields]
        if new:
            raise ValueError(
                f"keys {new} are not among the CSV columns {self._fields} (fixed by the first "
                "write); pass every key up front with fieldnames=, or use JsonlWriter"
            )
        self._row([step] + [repr(values[k]) if k in values else "" for k in self._fields])


def read_csv(path) -> list[dict[str, Any]]:
    """Reads a :class:`CsvWriter` file back: one dict per row (``step`` an int, empty cells
    left out)."""
    with open(path, newline="") as f:
        return [
            {k: int(v) if k == "step" else float(v) for k, v in row.items() if v != ""}
            for row in csv.DictReader(f)
        ]


class TensorBoardWriter(Writer):
    """TensorBoard event files, written by TensorBoard's own ``EventFileWriter``.

    Each key becomes a scalar tag (``grad_norm/hidden_0`` groups under ``grad_norm`` in the
    TensorBoard UI); values are stored as float32 (TensorBoard's ``simple_value``), NaN and ±inf
    included; a finite value beyond float32's range is stored as ±inf, one below it as 0.
    Needs the optional extra: ``pip install 'gradflow[tensorboard]'`` (no TensorFlow, no torch).

    Args:
      logdir: the run's directory (created); point ``tensorboard --logdir`` at it or its parent.
      flush_secs: seconds between the background writer's automatic flushes.
      filename_suffix: appended to the event file's name.

    Raises:
      ImportError: if TensorBoard is not installed.
    """

    def __init__(self, logdir, *, flush_secs: float = 10.0, filename_suffix: str = ""):
        try:
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError as exc:  # pragma: no cover - the extra is installed in CI
            raise ImportError(
                "TensorBoardWriter needs TensorBoard: pip install 'gradflow[tensorboard]'"
            ) from exc
        if isinstance(flush_secs, bool) or not isinstance(flush_secs, (int, float)):
            raise TypeError(f"flush_secs must be a number, got {flush_secs!r}")
        if not flush_secs > 0:
            raise ValueError(f"flush_secs must be > 0, got {flush_secs}")
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self._writer = EventFileWriter(
            str(self.logdir), flush_secs=flush_secs, filename_suffix=filename_suffix
        )

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        step = _check_step(step)
        scalars = _check_scalars(scalars)
        if self._writer is None:
            raise ValueError(f"TensorBoardWriter({str(self.logdir)!r}) is closed")
        values = [
            self._summary.Value(tag=k, simple_value=_scalar(k, v)) for k, v in scalars.items()
        ]
        event = self._event(wall_time=time.time(), step=step, summary=self._summary(value=values))
        self._writer.add_event(event)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
