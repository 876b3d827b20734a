"""Chains of maps along depth and time, and the adapters that build them from any model.

See :mod:`gradflow.chain.core` for the two forms (:class:`Chain`, :class:`Segmented`) and
:mod:`gradflow.chain.adapters` for how ``from_layers`` (:mod:`~gradflow.chain.sequence`),
``from_module`` (:mod:`~gradflow.chain.linen`), ``from_nnx`` (:mod:`~gradflow.chain.nnx`) and
``from_cell`` (:mod:`~gradflow.chain.cells`) turn a model into a chain.
"""

from gradflow.chain.cells import from_cell
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
from gradflow.chain.linen import from_module
from gradflow.chain.nnx import from_nnx
from gradflow.chain.sequence import from_layers

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
