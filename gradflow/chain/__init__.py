"""Chains of maps along depth and time, and the adapters that build them from any model.

See :mod:`gradflow.chain.core` for the two forms (:class:`Chain`, :class:`Segmented`) and
:mod:`gradflow.chain.adapters` for ``from_layers``, ``from_module``, ``from_cell``, ``from_nnx``.
"""

from gradflow.chain.adapters import from_cell, from_layers, from_module, from_nnx
from gradflow.chain.core import (
    Chain,
    Layer,
    Scan,
    Segmented,
    as_segmented,
    check_chain,
    final_state,
    flat_step,
    forward,
    state_shapes,
    trajectory,
)

__all__ = [
    "Chain",
    "Layer",
    "Scan",
    "Segmented",
    "as_segmented",
    "check_chain",
    "final_state",
    "flat_step",
    "forward",
    "from_cell",
    "from_layers",
    "from_module",
    "from_nnx",
    "state_shapes",
    "trajectory",
]
