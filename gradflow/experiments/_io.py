"""Writing an experiment's outputs: figures as PNG, numbers as JSON and NPZ (atomically)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["save_figure", "save_json", "save_npz", "to_jsonable"]


def _atomic_target(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
    return Path(tmp)


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
    path = Path(path)
    tmp = _atomic_target(path)
    tmp.write_text(json.dumps(to_jsonable(data), indent=1))
    tmp.replace(path)
    return path


def save_npz(arrays: dict, path) -> Path:
    path = Path(path)
    tmp = _atomic_target(path)
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()})
    tmp.replace(path)
    return path


def save_figure(fig, path, dpi: int = 120) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = _atomic_target(path)
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
