"""Helpers shared by the matrix-free estimators of :mod:`gradflow.matfree`."""

from __future__ import annotations

import math

import jax

from gradflow.chain import state_shapes

__all__ = ["PROBES", "flat_sizes"]

# The probe distributions of the Hutchinson estimators (gradflow.matfree.PROBES).
PROBES = ("normal", "rademacher")


def flat_sizes(sc) -> list[int]:
    """N_k, the flat size of h_k, for k = 0 … K (``K + 1`` entries) of a Segmented chain."""
    shapes = state_shapes(sc)
    size = lambda tree: int(sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(tree)))
    out = []
    for seg, h in zip(sc.segments, shapes[:-1]):
        out += [size(h)] * seg.length
    return out + [size(shapes[-1])]
