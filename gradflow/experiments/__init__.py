"""Reproduced experiments. Each module defines ``NAME``, ``DESCRIPTION`` and
``run(out_dir, *, full=False) -> dict``, writing ``out_dir/NAME/*.png`` plus the numbers behind
every figure (``.json``/``.npz``) and returning a JSON-able summary.

To add an experiment, add its module to :data:`REGISTRY` (one line).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["REGISTRY", "names", "get"]

REGISTRY: dict[str, str] = {
    "vanishing": "gradflow.experiments.vanishing",
    "meanfield": "gradflow.experiments.meanfield",
    "pascanu2013": "gradflow.experiments.pascanu2013",
    "init_study": "gradflow.experiments.init_study",
    "init_training": "gradflow.experiments.init_training",
    "mitigations": "gradflow.experiments.mitigations",
    "partial_jacobians": "gradflow.experiments.partial_jacobians",
    "transformers": "gradflow.experiments.transformers",
    "cnn": "gradflow.experiments.cnn",
    "long_memory": "gradflow.experiments.long_memory",
}


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> ModuleType:
    """The experiment module called ``name``; ValueError listing the valid names otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown experiment {name!r}; expected one of {', '.join(REGISTRY)}")
    return importlib.import_module(REGISTRY[name])
