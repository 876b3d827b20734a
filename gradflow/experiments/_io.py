"""An experiment's outputs: figures as PNG + PDF, numbers as JSON and NPZ (written atomically),
and reading the numbers back to redraw the figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gradflow import _io, progress

__all__ = [
    "save_figure",
    "save_json",
    "save_npz",
    "to_jsonable",
    "load_json",
    "load_npz",
    "with_prefix",
    "by_label",
]


def to_jsonable(obj):
    """Arrays -> nested lists, NumPy scalars -> Python numbers, non-finite floats -> strings."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        return to_jsonable(np.asarray(obj).tolist())
    if isinstance(obj, (np.floating, float)):
        x = float(obj)
        return x if np.isfinite(x) else str(x)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def save_json(data, path) -> Path:
    path = _io.write_json(path, to_jsonable(data))
    progress.stage(f"wrote {path.name}")  # outputs mark an experiment's stages on the display
    return path


def save_npz(arrays: dict, path) -> Path:
    path = _io.write_npz(path, {k: np.asarray(v) for k, v in arrays.items()}, compressed=True)
    progress.stage(f"wrote {path.name}")
    return path


def save_figure(fig, path, dpi: int = 120) -> Path:
    """Writes ``fig`` as a PNG at ``path`` and, beside it, a vector PDF with the same stem.

    Both files are written to temporary names first and then renamed, so a reader never sees a
    partial file; the PDF's creation date is omitted so equal figures give equal bytes.

    Args:
      fig: a :class:`matplotlib.figure.Figure`.
      path: the PNG's path (``…/name.png``); the PDF is ``…/name.pdf``.
      dpi: resolution of the PNG (the PDF is resolution-independent).

    Returns:
      The PNG's path.
    """
    path = Path(path)
    pdf = path.with_suffix(".pdf")
    with _io.atomic_paths(path, pdf) as (tmp_png, tmp_pdf):
        fig.savefig(tmp_png, dpi=dpi, bbox_inches="tight", format="png")
        fig.savefig(tmp_pdf, bbox_inches="tight", format="pdf", metadata={"CreationDate": None})
    progress.stage(f"wrote {path.name} and {pdf.name}")
    return path


def load_json(path):
    """The contents of a file written by :func:`save_json`, non-finite floats restored.

    :func:`to_jsonable` writes NaN and ±inf as the strings ``"nan"``, ``"inf"``, ``"-inf"``;
    they come back as floats (no other string of those values is ever written).
    """
    return _restore(json.loads(Path(path).read_text()))


def _restore(obj):
    if isinstance(obj, dict):
        return {k: _restore(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v) for v in obj]
    if isinstance(obj, str) and obj in ("nan", "inf", "-inf"):
        return float(obj)
    return obj


def load_npz(path) -> dict[str, np.ndarray]:
    """Every array of a file written by :func:`save_npz`, in the order they were saved."""
    return _io.read_npz(path)


def with_prefix(data, prefix: str) -> dict:
    """``{rest: value}`` for every key ``f"{prefix}/{rest}"`` of ``data``, in order.

    The experiments save families of arrays under ``"quantity/label"`` keys; this undoes that
    (labels may themselves contain ``/``).
    """
    head = f"{prefix}/"
    return {k[len(head) :]: v for k, v in data.items() if k.startswith(head)}


def by_label(data) -> dict[str, dict]:
    """``{label: {field: value}}`` from keys ``f"{label}/{field}"`` (split at the last ``/``)."""
    out: dict[str, dict] = {}
    for k, v in data.items():
        label, _, field = k.rpartition("/")
        out.setdefault(label, {})[field] = v
    return out
