"""A chain from any sequence of callables ``h -> h'``: :func:`from_layers`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from gradflow.chain.core import Layer, Scan, Segmented, state_shapes

__all__ = ["from_layers"]


@dataclasses.dataclass(frozen=True)
class _CallLayer:
    """Step ``(params, h, x) -> layer(h)`` for a plain callable (hashed by its identity)."""

    layer: Callable

    def __call__(self, params, h, x=None):
        return self.layer(h)


def from_layers(layers: Sequence[Callable], x, *, names: Sequence[str] | None = None) -> Segmented:
    """A chain ``h_0 = x``, ``h_{k+1} = layers[k](h_k)`` from callables (closures over params).

    Runs of the *same* callable object (``[block] * 10``) become one scanned segment.

    Args:
      layers: non-empty sequence of callables ``h -> h'``; shapes may change from layer to layer.
      x: the input h_0, a floating-point array (or pytree of arrays).
      names: optional layer names (default ``layer_0``, ``layer_1``, …).

    Returns:
      A :class:`~gradflow.chain.Segmented` chain with K = ``len(layers)`` steps.

    Raises:
      TypeError: if ``layers`` is not a sequence of callables, a layer's output is not an array,
        or ``x`` is not floating point.
      ValueError: for an empty ``layers`` or ``names`` of the wrong length.
    """
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise TypeError(f"layers must be a sequence of callables, got {type(layers).__name__}")
    if not layers:
        raise ValueError("layers must hold at least one callable, got an empty sequence")
    for i, layer in enumerate(layers):
        if not callable(layer):
            raise TypeError(f"layers[{i}] must be callable, got {type(layer).__name__}")
    names = tuple(f"layer_{i}" for i in range(len(layers))) if names is None else tuple(names)
    if len(names) != len(layers):
        raise ValueError(f"names must have {len(layers)} entries (one per layer), got {len(names)}")
    segments, i = [], 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] is layers[i]:
            j += 1
        step = _CallLayer(layers[i])
        if j > i:  # the same callable repeated: one lax.scan
            segments.append(Scan(None, None, step, j - i + 1, shared=True, name=names[i]))
        else:
            segments.append(Layer(None, None, step, names[i]))
        i = j + 1
    chain = Segmented(h0=x, segments=tuple(segments)).validate()
    state_shapes(chain)
    return chain
