"""The chain of maps h_{k+1} = step(θ_k, h_k, x_k), k = 0 … K−1, shared by depth and time.

An MLP of depth L is a chain whose θ_k are stacked per-layer parameters and whose x_k are empty; an
RNN unrolled over T steps is a chain whose θ is shared by every step and whose x_k are the inputs.
Every analysis in gradflow (Jacobians, gradient norms, spectra, Lyapunov exponents) takes a chain,
so "through depth" and "through time" are one code path.

Two forms:

- :class:`Chain`: K identically shaped steps, one ``lax.scan`` (the fast path; gradflow's own
  models return this);
- :class:`Segmented`: a sequence of segments, each either a :class:`Scan` (a run of identically
  shaped steps, one ``lax.scan``) or a :class:`Layer` (one map of any shape: h' may have another
  shape than h, so its Jacobian is rectangular). CNNs whose channel count changes and
  embedding → blocks → head models are Segmented chains; the adapters in
  :mod:`gradflow.chain.adapters` build them from Flax modules.

Recompilation: the analyses are jitted with the chain as an argument. Its arrays (params, xs, h0)
are traced, but the step functions (``Chain.step``, ``Scan.step``, ``Layer.fn``), names and lengths
are static: a new Python function object (a fresh ``lambda`` or closure) compiles the analysis
again, an equal one (same object, or an equal frozen dataclass, as the adapters build) reuses it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax.flatten_util import ravel_pytree

from gradflow._checks import check_finite

__all__ = [
    "Chain",
    "Layer",
    "Scan",
    "Segmented",
    "as_segmented",
    "check_chain",
    "trajectory",
    "final_state",
    "flat_step",
    "state_shapes",
    "same_shapes",
]

StepFn = Callable[[Any, Any, Any], Any]


def _check_stacked(owner: str, name: str, tree, length: int) -> None:
    for leaf in jax.tree_util.tree_leaves(tree):
        if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != length:
            raise ValueError(
                f"{owner} {name} leaves must have a leading axis of length {length} "
                f"(one slice per step), got shape {jnp.shape(leaf)}"
            )


def _check_steps(owner: str, length, shared: bool, params, xs) -> None:
    """A scanned run's static length and the leading axes of its per-step params and inputs."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"{owner} length must be an integer >= 0, got {length!r}")
    if not shared:
        _check_stacked(owner, "params", params, length)
    if xs is not None:
        _check_stacked(owner, "xs", xs, length)


@struct.dataclass
class Scan:
    """A run of ``length`` identically shaped steps h_{k+1} = step(θ_k, h_k, x_k), one ``lax.scan``.

    Attributes:
      params: per-step parameters stacked on a leading axis of length ``length`` (or, with
        ``shared``, one pytree used by every step).
      xs: per-step inputs with a leading axis ``length``, or None.
      step: ``step(theta, h, x) -> h_next`` with ``h_next`` shaped like ``h`` (static).
      length: the number of steps (static).
      shared: whether ``params`` is shared by every step (static).
      name: the segment's name; step i is called ``f"{name}/{i}"`` (static).
    """

    params: Any
    xs: Any
    step: StepFn = struct.field(pytree_node=False)
    length: int = struct.field(pytree_node=False)
    shared: bool = struct.field(pytree_node=False, default=False)
    name: str = struct.field(pytree_node=False, default="step")

    def per_step(self) -> tuple[Any, Any]:
        """The (θ_k, x_k) pytree scanned over, with a leading axis K where present."""
        return (None if self.shared else self.params), self.xs

    def step_at(self, h, per_step_slice):
        """Applies one step given the slice ``(θ_k or None, x_k or None)`` of :meth:`per_step`."""
        theta, x = per_step_slice
        return self.step(self.params if self.shared else theta, h, x)

    def step_names(self) -> tuple[str, ...]:
        return tuple(f"{self.name}/{i}" for i in range(self.length))

    def validate(self) -> Scan:
        _check_steps("Scan", self.length, self.shared, self.params, self.xs)
        return self


@struct.dataclass
class Layer:
    """One map h' = fn(params, h, x) of any shape (h' may have another shape than h).

    Attributes:
      params: the layer's parameters (any pytree, or None).
      x: constant extra inputs (a mask, a flag array, …), not differentiated; or None.
      fn: ``fn(params, h, x) -> h_next`` (static).
      name: the layer's name (static).
    """

    params: Any
    x: Any = None
    fn: StepFn = struct.field(pytree_node=False, default=None)
    name: str = struct.field(pytree_node=False, default="layer")

    length = 1
    shared = False

    def step_names(self) -> tuple[str, ...]:
        return (self.name,)

    def validate(self) -> Layer:
        if not callable(self.fn):
            raise TypeError(f"Layer fn must be callable, got {type(self.fn).__name__}")
        return self


@struct.dataclass
class Chain:
    """A chain of K identically shaped maps h_{k+1} = step(θ_k, h_k, x_k), one ``lax.scan``.

    Attributes:
      step: ``step(theta, h, x) -> h_next``, a pure function; ``h`` may be any pytree of arrays
        (e.g. the (c, h) pair of an LSTM), and ``h_next`` has the same structure (static: see the
        module docstring on recompilation).
      params: the parameters. If ``shared`` is False, every leaf has a leading axis of length K
        and step k receives the k-th slice; if True, every step receives the whole pytree.
      xs: per-step inputs, a pytree whose leaves have a leading axis of length K, or None.
      h0: the initial state h_0 (any pytree of arrays).
      length: K, the number of steps (static).
      shared: whether ``params`` is shared by every step (static).
      name: step k is called ``f"{name}/{k}"`` (static).
    """

    params: Any
    xs: Any
    h0: Any
    step: StepFn = struct.field(pytree_node=False)
    length: int = struct.field(pytree_node=False)
    shared: bool = struct.field(pytree_node=False, default=False)
    name: str = struct.field(pytree_node=False, default="step")

    def __post_init__(self):
        _check_steps("Chain", self.length, self.shared, self.params, self.xs)

    @property
    def state_size(self) -> int:
        """n, the number of scalars in the state (the Jacobians are n × n)."""
        return int(sum(jnp.size(x) for x in jax.tree_util.tree_leaves(self.h0)))

    @property
    def segment(self) -> Scan:
        """This chain's steps as a :class:`Scan` segment."""
        return Scan(self.params, self.xs, self.step, self.length, self.shared, self.name)

    def per_step(self) -> tuple[Any, Any]:
        """The (θ_k, x_k) pytree scanned over, with a leading axis K where present."""
        return self.segment.per_step()

    def step_at(self, h, per_step_slice):
        """Applies one step given the slice ``(θ_k or None, x_k or None)`` of :meth:`per_step`."""
        return self.segment.step_at(h, per_step_slice)


@struct.dataclass
class Segmented:
    """A chain of segments h_0 → … → h_K whose state may change shape between segments.

    Attributes:
      h0: the initial state (any pytree of arrays).
      segments: tuple of :class:`Scan` and :class:`Layer` segments, applied in order.
      stem: optionally the :class:`Layer` that computed h0 from the model input ``x`` (an
        embedding, the first convolution). The Jacobian analyses start at h0 and ignore it;
        gradient norms include its parameters.
      x: the model input the stem was applied to (None without a stem).
    """

    h0: Any
    segments: tuple
    stem: Any = None
    x: Any = None

    @property
    def length(self) -> int:
        """K, the total number of steps."""
        return sum(s.length for s in self.segments)

    def step_names(self) -> tuple[str, ...]:
        """The name of every step, in forward order, ``(K,)``."""
        return tuple(n for s in self.segments for n in s.step_names())

    def validate(self) -> Segmented:
        if not isinstance(self.segments, tuple) or not self.segments:
            raise ValueError("Segmented segments must be a non-empty tuple of Scan/Layer segments")
        for s in self.segments:
            if not isinstance(s, (Scan, Layer)):
                raise TypeError(f"Segmented segments must be Scan or Layer, got {type(s).__name__}")
            s.validate()
        if self.stem is not None and not isinstance(self.stem, Layer):
            raise TypeError(
                f"Segmented stem must be a Layer or None, got {type(self.stem).__name__}"
            )
        return self


def as_segmented(chain, name: str = "chain") -> Segmented:
    """A :class:`Chain` as a one-segment :class:`Segmented` chain (a Segmented one unchanged).

    Raises:
      TypeError: if ``chain`` is neither.
    """
    if isinstance(chain, Segmented):
        return chain.validate()
    if isinstance(chain, Chain):
        return Segmented(h0=chain.h0, segments=(chain.segment,))
    raise TypeError(
        f"{name} must be a gradflow.chain.Chain or Segmented chain, got {type(chain).__name__}"
    )


def check_chain(chain, name: str = "chain") -> Segmented:
    """The checks every analysis runs first; returns the chain as :class:`Segmented`.

    ``chain`` must be a :class:`Chain` or :class:`Segmented` chain; its concrete h0, parameters and
    per-step inputs must be finite (traced values pass: they are checked where they are made); and
    its steps must return floating arrays of consistent shapes (:func:`state_shapes`).

    Raises:
      TypeError: for a non-chain or a step whose output is not a pytree of floating arrays.
      ValueError: naming the offending part, for NaN/inf values or a Scan step changing shape.
    """
    sc = as_segmented(chain, name)
    check_finite(f"{name}.h0", sc.h0)
    for seg in sc.segments:
        check_finite(f"{name} segment {seg.name!r} params", seg.params)
        if isinstance(seg, Scan):
            check_finite(f"{name} segment {seg.name!r} inputs xs", seg.xs)
    state_shapes(sc)
    return sc


def _describe(tree) -> str:
    return str(jax.tree_util.tree_map(lambda a: tuple(a.shape), tree))


def _abstract_step(seg, h):
    """eval_shape of one step of ``seg`` at the abstract state ``h``."""
    if isinstance(seg, Layer):
        return jax.eval_shape(lambda p, hh, x: seg.fn(p, hh, x), seg.params, h, seg.x)
    s = jax.tree_util.tree_map(lambda a: a[0], seg.per_step())
    return jax.eval_shape(lambda hh, ss: seg.step_at(hh, ss), h, s)


def state_shapes(chain) -> list:
    """The abstract state (a pytree of ``jax.ShapeDtypeStruct``) at every segment boundary.

    Also the check every analysis runs first: each step must return a pytree of floating arrays
    and a :class:`Scan`'s steps must keep the state's shape.

    Returns:
      list of length (number of segments + 1): entry i is segment i's input state, the last is
      h_K.

    Raises:
      TypeError: if a step's output is not a pytree of floating-point arrays.
      ValueError: if a Scan step changes the state's shape.
    """
    sc = as_segmented(chain)
    # Tracing every step (a linen chain replays its model) on every analysis call would cost
    # K module traces each time: the answer depends only on the structure and the shapes.
    leaves, treedef = jax.tree_util.tree_flatten(sc)
    key = (treedef, tuple((jnp.shape(a), jnp.result_type(a)) for a in leaves))
    if key not in _SHAPES:
        if len(_SHAPES) > 256:
            _SHAPES.clear()
        _SHAPES[key] = _state_shapes(sc)
    return list(_SHAPES[key])


_SHAPES: dict = {}


def _state_shapes(sc: Segmented) -> list:
    h = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), sc.h0
    )
    _check_state("chain.h0", h)
    out = [h]
    for seg in sc.segments:
        if seg.length == 0:
            out.append(h)
            continue
        try:
            nxt = _abstract_step(seg, h)
        except (TypeError, ValueError) as exc:
            where = f"step {seg.step_names()[0]!r} failed on state {_describe(h)}"
            raise type(exc)(f"{where}: {exc}") from exc
        _check_state(f"the output of step {seg.step_names()[0]!r}", nxt)
        if isinstance(seg, Scan) and not same_shapes(nxt, h):
            raise ValueError(
                f"Scan segment {seg.name!r} must keep the state's shape, but maps "
                f"{_describe(h)} to {_describe(nxt)}; use a Layer segment for a shape-changing step"
            )
        h = nxt
        out.append(h)
    return out


def same_shapes(a, b) -> bool:
    """Whether two pytrees of arrays have the same structure and leaf shapes."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and all(
        x.shape == y.shape for x, y in zip(la, lb)
    )


def _check_state(what: str, tree) -> None:
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise TypeError(f"{what} must be an array or a pytree of arrays, got {tree!r}")
    for leaf in leaves:
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            kind = type(leaf).__name__
            raise TypeError(f"{what} must be an array or a pytree of arrays, got {kind}")
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise TypeError(f"{what} must be floating point, got dtype {leaf.dtype}")


# Full unrolling of a scanned segment (see unroll_for). Measured on the 2-core CPU this repo is
# benchmarked on (jitted gradients.layer_grad_norms of a tanh MLP, MSE loss, depth − 1 scanned
# steps; run: median of interleaved rolled/unrolled calls; compile: CPU seconds of the first call):
# - run, 49 steps: state B·n = 128 -> 0.7x (unrolled slower), 1024 -> 0.93-1.03x, 4096 ->
#   0.97-1.28x, 8192 -> 1.16-1.37x, 16384 -> 1.16-1.8x, 65536 (B = n = 256, benchmark (b)) ->
#   1.4-2.0x (67 -> 35 ms); at B = n = 256 also 1.2x for 4-19 steps, 1.25x for 99-199 steps.
# - compile: rolled 0.6-0.9 s for any length; unrolled 0.57/0.84/1.1/1.8/2.8/3.6/4.9/7.3/11.4 s
#   for 1/4/9/19/34/49/63/99/149 steps (~0.07 s per step on a loaded machine; about half that on
#   a quiet one: 0.5 -> 1.9 s at 49 steps). With jax_disable_most_optimizations (the test suite)
#   0.5 -> 1.35 s at 49 steps.
# So: unroll states of >= 4096 scalars (below, the while loop costs nothing measurable and the
# tests' tiny chains keep their small programs) up to 64 steps (compile <= ~5 s; 99 steps would
# cost +6.5 s, 199 steps ~+26 s, for the same ~1.25x). The same rule on GPU/TPU, where unrolling
# also removes per-step loop overhead and the step limit bounds compile time likewise.
UNROLL = os.environ.get("GRADFLOW_UNROLL", "1") != "0"
UNROLL_MAX_STEPS = 64
UNROLL_MIN_STATE = 4096


def unroll_for(length: int, state_size: int) -> bool:
    """Whether a :class:`Scan` segment runs as a fully unrolled loop rather than a rolled scan.

    XLA's CPU while loop keeps the steps from fusing and slices the stacked parameters and saved
    states one step at a time; unrolled, a deep MLP's gradient runs ~1.2-2x faster once the
    state holds a few thousand scalars, but compile time grows linearly with the number of
    steps (measurements beside ``UNROLL_MAX_STEPS`` in this module). The decision is made when
    the segment is traced (a jitted function keeps the choice it was compiled with).

    On by default. Set the environment variable ``GRADFLOW_UNROLL=0`` before importing gradflow, or
    ``gradflow.chain.core.UNROLL = False`` before tracing, to keep every scan rolled.

    Args:
      length: the segment's number of steps K.
      state_size: the number of scalars in the state h (all leaves, e.g. B·n for a batch).

    Returns:
      True if ``UNROLL`` is on, ``length <= UNROLL_MAX_STEPS`` and
      ``state_size >= UNROLL_MIN_STATE``.
    """
    return UNROLL and length <= UNROLL_MAX_STEPS and state_size >= UNROLL_MIN_STATE


def _scan_segment(seg: Scan, h, keep: bool):
    def body(h, s):
        return seg.step_at(h, s), (h if keep else None)

    size = sum(int(jnp.size(leaf)) for leaf in jax.tree_util.tree_leaves(h))
    # unroll=True unrolls all K steps; 1 is the rolled loop.
    unroll = True if unroll_for(seg.length, size) else 1
    return jax.lax.scan(body, h, seg.per_step(), length=seg.length, unroll=unroll)


def forward(chain):
    """Runs the chain once, keeping every step's input state (the linearisation points).

    Returns:
      ``(inputs, h_K)``: ``inputs`` is a tuple with one entry per segment — for a :class:`Scan`
      its input states stacked on a leading axis of its length, for a :class:`Layer` its input
      state.
    """
    sc = as_segmented(chain)
    h, inputs = sc.h0, []
    for seg in sc.segments:
        if isinstance(seg, Layer):
            inputs.append(h)
            h = seg.fn(seg.params, h, seg.x)
        else:
            h, hs = _scan_segment(seg, h, keep=True)
            inputs.append(hs)
    return tuple(inputs), h


def trajectory(chain):
    """All states h_0 … h_K along a chain whose states share one structure and shape.

    A :class:`Chain` runs as one ``lax.scan``; a :class:`Segmented` chain (its states must not
    change shape; otherwise use :func:`forward`) stacks each segment's states.

    Returns:
      A pytree like ``h0`` whose leaves have a leading axis of length K + 1.

    Raises:
      TypeError: if ``chain`` is not a chain.
      ValueError: if a Segmented chain's states differ in structure or shape.
    """
    if isinstance(chain, Chain):

        def body(h, s):
            h_next = chain.step_at(h, s)
            return h_next, h_next

        _, hs = jax.lax.scan(body, chain.h0, chain.per_step(), length=chain.length)
        return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), chain.h0, hs)
    sc = as_segmented(chain)
    inputs, last = forward(sc)
    parts = [
        h if isinstance(seg, Scan) else jax.tree_util.tree_map(lambda a: a[None], h)
        for seg, h in zip(sc.segments, inputs)
    ]
    parts.append(jax.tree_util.tree_map(lambda a: a[None], last))
    for part in parts[1:]:
        if not same_shapes(jax.tree_util.tree_map(lambda a: a[0], part), sc.h0):
            raise ValueError(
                "trajectory needs chain states of one shape, got "
                f"{_describe(sc.h0)} and {_describe(jax.tree_util.tree_map(lambda a: a[0], part))}"
                "; for a chain whose shape changes use gradflow.chain.forward"
            )
    return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *parts)


def final_state(chain):
    """h_K, without storing the intermediate states (any chain)."""
    sc = as_segmented(chain)
    h = sc.h0
    for seg in sc.segments:
        if isinstance(seg, Layer):
            h = seg.fn(seg.params, h, seg.x)
        else:
            h, _ = _scan_segment(seg, h, keep=False)
    return h


def flat_step(chain: Chain):
    """The step as a map between flat vectors, with the ravel/unravel pair for the state.

    Returns:
      ``(h0_flat, f)`` where ``h0_flat`` has shape ``(n,)`` and ``f(h_flat, per_step_slice)``
      returns the next flat state.
    """
    h0_flat, unravel = ravel_pytree(chain.h0)

    def f(h_flat, s):
        out, _ = ravel_pytree(chain.step_at(unravel(h_flat), s))
        return out

    return h0_flat, f
