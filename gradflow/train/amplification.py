"""Gradient amplification (Basodi, Ji, Zhang & Pan 2020) as an optax transform.

:func:`amplify` multiplies the gradients of a set of layers by a factor during scheduled steps
and passes every other gradient through unchanged; chain it before an optimiser::

    tx = optax.chain(gf.train.amplify(4.0, fraction=0.5, key=key, active=(0, 500)),
                     optax.sgd(0.05))

Basodi et al.'s scheme, as far as the published summaries state it: the layers that may be
amplified are grouped (here: the ``layers`` that ``layers=`` selects, all by default), a subset of
them is drawn at random (here: ``round(fraction · L)`` of the L candidates, without replacement,
from ``key``), their gradients are multiplied by an amplification factor, and amplification is
switched on in some epochs and off in others (here: ``active``, a step range or a function of the
step). Whether the paper draws the subset once or anew in every epoch is not in the summaries we
could read; :func:`amplify` draws it once (``redraw_every=None``) or afresh every
``redraw_every`` steps. The paper's PyTorch implementation works on the back-propagated gradient
of the selected layers during backpropagation; this transform scales the *parameter* gradients of
the selected layers only (lower layers are not affected through them), which is what an optax
transform can see.

Layers are named as :func:`gradflow.gradients.named_norms` names them (``"input"``,
``"hidden/0"`` … ``"hidden/{depth-2}"``, ``"readout"`` for gradflow's MLP; the stacked
``hidden`` kernel ``(depth-1, n, n)`` gives one layer per leading index), so the selection matches
the per-layer norms that :func:`gradflow.train.fit` records.

References:
  S. Basodi, C. Ji, H. Zhang, Y. Pan, "Gradient amplification: an efficient way to train deep
  neural networks", Big Data Mining and Analytics 3(3):196–207 (2020), arXiv:2006.10560.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradflow import _checks, gradients

__all__ = ["AmplifyState", "amplify", "amplified_layers"]


class AmplifyState(NamedTuple):
    """State of :func:`amplify`: the number of updates applied so far.

    Attributes:
      count: int32 array of shape ``()``, the step the next update is (0 first).
    """

    count: jax.Array


def _is_wrapped(tree) -> bool:
    # {"params": …} from linen's init: gradients.named_norms drops that outer component
    return isinstance(tree, Mapping) and set(tree) == {"params"}


def _leaf_group(path, depth: int, wrapped: bool) -> str:
    """The part a leaf belongs to: its first ``depth`` path components, as named_norms names it
    (dict keys, attribute names, list indices)."""
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return "/".join(names[int(wrapped) :][:depth])


def _layer_names(tree, depth: int, stacked) -> tuple[str, ...]:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return _names_of(treedef, tuple(np.shape(x) for x in leaves), depth, stacked)


@functools.lru_cache(maxsize=64)
def _names_of(treedef, shapes, depth: int, stacked) -> tuple[str, ...]:
    # The names depend only on the tree's structure and shapes; eval_shape traces named_norms
    # once per structure (only its static names are wanted, not the norms).
    tree = jax.tree_util.tree_unflatten(
        treedef, [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    )
    return jax.eval_shape(lambda t: gradients.named_norms(t, depth, stacked=stacked), tree).names


def _check_tree(tree) -> None:
    if not jax.tree_util.tree_leaves(tree):
        raise ValueError("amplify: the gradient tree has no arrays")


def _candidates(names: Sequence[str], layers) -> np.ndarray:
    if layers is None:
        chosen = np.ones(len(names), bool)
    elif callable(layers):
        chosen = np.array([bool(layers(n)) for n in names], bool)
    else:
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ValueError(f"layers: {unknown} are not layer names; the layers are {names}")
        chosen = np.array([n in layers for n in names], bool)
    if not chosen.any():
        raise ValueError(f"layers selects none of the layers {list(names)}")
    return chosen


def _draw(key, candidates: np.ndarray, fraction: float | None) -> jax.Array:
    """A boolean mask ``(L,)``: the candidates, or ``round(fraction · #candidates)`` of them
    drawn uniformly without replacement (at least one)."""
    if fraction is None:
        return jnp.asarray(candidates)
    idx = np.flatnonzero(candidates)
    m = max(1, int(round(fraction * idx.size)))
    pick = jax.random.permutation(key, idx.size)[:m]
    return jnp.zeros(candidates.size, bool).at[jnp.asarray(idx)[pick]].set(True)


def _check_active(active):
    if active is None or callable(active):
        return active
    if (
        not isinstance(active, Sequence)
        or len(active) != 2
        or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in active)
        or not 0 <= active[0] < active[1]
    ):
        raise ValueError(
            "active must be None, a callable step -> bool or a step range (start, stop) of "
            f"integers with 0 <= start < stop, got {active!r}"
        )
    start, stop = int(active[0]), int(active[1])
    return lambda count: (count >= start) & (count < stop)


def amplify(
    factor,
    *,
    layers: Sequence[str] | Callable[[str], bool] | None = None,
    fraction: float | None = None,
    key: jax.Array | None = None,
    active: tuple[int, int] | Callable[[jax.Array], Any] | None = None,
    redraw_every: int | None = None,
    stacked: Sequence[str] | None = None,
    depth: int = 1,
) -> optax.GradientTransformation:
    """Multiplies the gradients of selected layers by ``factor`` on scheduled steps.

    At step t (the count of updates so far) the update of layer l is ``factor · g_l`` if l is
    selected and ``active(t)`` holds, and ``g_l`` itself otherwise: the same arrays, bit for bit,
    so the ratio amplified/plain is exactly ``factor`` or exactly 1 (up to the rounding of the
    product ``factor · g``, which is exact for a power of two).

    Args:
      factor: the amplification factor, > 0 (may be a traced scalar: amplified and plain runs
        can share one ``vmap`` with ``factor = 1``).
      layers: the candidate layers: a sequence of layer names, or a predicate ``name -> bool``;
        None: every layer. Names as :func:`gradflow.gradients.named_norms` gives them.
      fraction: None to amplify every candidate; else draw ``round(fraction · L)`` (≥ 1) of the
        L candidates at random, without replacement, from ``key``: Basodi et al.'s random choice.
        In (0, 1].
      key: PRNG key of the draw (required with ``fraction``; may be traced, e.g. vmapped).
      active: when to amplify: None (always), a step range ``(start, stop)`` (start ≤ t < stop)
        or a function ``t -> bool`` of the int32 step (jittable), e.g.
        ``lambda t: (t // steps_per_epoch) % 2 == 0`` for every other epoch.
      redraw_every: None to draw the subset once; an int ≥ 1 to draw it afresh every this many
        steps (from ``fold_in(key, t // redraw_every)``). Only with ``fraction``.
      stacked: groups stacked on a leading layer axis (see :func:`gradflow.gradients.named_norms`;
        None: ``hidden`` of gradflow's own models).
      depth: path components in a layer name, ≥ 1.

    Returns:
      An optax ``GradientTransformation`` with state :class:`AmplifyState`.

    Raises:
      ValueError, TypeError: for a bad argument (named); at the first ``update`` (the layer names
        are known only then): for ``layers`` that name no layer.

    References:
      Basodi, Ji, Zhang & Pan 2020, "Gradient amplification: an efficient way to train deep
      neural networks", Big Data Mining and Analytics 3(3), §3 (arXiv:2006.10560).
    """
    if not isinstance(factor, jax.core.Tracer):
        _checks.as_float("factor", factor, minimum=0.0, strict=True)
    if layers is not None and not callable(layers):
        layers = _checks.names_or_none("layers", layers, "layer names")
    if fraction is not None:
        _checks.as_float("fraction", fraction, minimum=0.0, strict=True)
        fraction = float(fraction)  # static: it sets how many layers are drawn
        if fraction > 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if key is None:
            raise ValueError("key is required with fraction (the random draw of layers)")
    elif key is not None or redraw_every is not None:
        raise ValueError("key and redraw_every are only used with fraction; pass fraction")
    if redraw_every is not None:
        redraw_every = _checks.positive_int("redraw_every", redraw_every)
    when = _check_active(active)
    depth = _checks.positive_int("depth", depth)
    stacked = _checks.names_or_none("stacked", stacked, "group names")

    def init(params):
        del params
        return AmplifyState(count=jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        del params
        count = state.count
        mask = amplified_layers(
            updates,
            layers=layers,
            fraction=fraction,
            key=key if redraw_every is None else jax.random.fold_in(key, count // redraw_every),
            stacked=stacked,
            depth=depth,
        )
        if when is not None:
            mask = {k: m & jnp.asarray(when(count), bool) for k, m in mask.items()}
        updates = _scale(updates, mask, factor, depth)
        return updates, AmplifyState(count=optax.safe_int32_increment(count))

    return optax.GradientTransformation(init, update)


def amplified_layers(
    tree,
    *,
    layers=None,
    fraction: float | None = None,
    key: jax.Array | None = None,
    stacked: Sequence[str] | None = None,
    depth: int = 1,
) -> dict[str, jax.Array]:
    """Which layers :func:`amplify` selects for a tree of this structure (ignoring ``active``).

    Args:
      tree: parameters or gradients (a dict tree, as from a linen model's ``init``).
      layers, fraction, key, stacked, depth: as for :func:`amplify`.

    Returns:
      ``{group: mask}``: per top-level part (``depth`` path components), a bool array of shape
      ``()`` (a plain part) or ``(L,)`` (a stacked part, one entry per layer).
    """
    _check_tree(tree)
    if fraction is not None and key is None:
        raise ValueError("key is required with fraction (the random draw of layers)")
    names = _layer_names(tree, depth, stacked)
    mask = _draw(key, _candidates(names, layers), fraction)
    wrapped = _is_wrapped(tree)
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    groups = {_leaf_group(path, depth, wrapped) for path, _ in leaves}
    out: dict[str, list] = {}
    for i, name in enumerate(names):
        # a stacked part's layers are named "<part>/<index>"
        out.setdefault(name if name in groups else name.rsplit("/", 1)[0], []).append(mask[i])
    return {g: (ms[0] if g in names else jnp.stack(ms)) for g, ms in out.items()}


def _scale(updates, mask: dict[str, jax.Array], factor, depth: int):
    wrapped = _is_wrapped(updates)

    def one(path, g):
        m = mask[_leaf_group(path, depth, wrapped)]
        f = jnp.where(m, jnp.asarray(factor, g.dtype), jnp.ones((), g.dtype))
        # a stacked part: one factor per leading index, broadcast over the layer's own axes
        f = f.reshape(f.shape + (1,) * (g.ndim - f.ndim))
        return g * f

    return jax.tree_util.tree_map_with_path(one, updates)
