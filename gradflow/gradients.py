"""Named, forward-ordered, log-scale gradient norms, and per-step state-gradient norms.

:func:`named_norms` gives one norm per named part of any pytree (nested dicts, linen variables,
``flax.nnx.State``, dataclass pytrees, lists); :func:`layer_grad_norms` gives ‖∂L/∂θ_l‖ for every
layer from one ``jax.grad``, in the order the forward pass uses the layers
(:func:`forward_order`). Both return :class:`NamedNorms`, which keeps log10 of each norm: a
gradient of 1e-25 in float32 has squares of 1e-50, below float32's range, so ``sqrt(sum(x**2))``
would report 0 for a perfectly representable gradient (see :mod:`gradflow._numerics`).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from gradflow import _checks, _numerics
from gradflow.chain import Segmented, check_chain
from gradflow.chain.passes import flat_segments, pullback

__all__ = [
    "NamedNorms",
    "named_norms",
    "forward_order",
    "layer_grad_norms",
    "layer_norms",
    "global_norm",
    "state_grad_norms",
    "chain_grad_norms",
    "LAYER_ORDER",
]

# The order in which gradflow's models name their parameter groups (input layer first). Without a
# forward order, groups come in this order, then in natural order (so Dense_2 precedes Dense_10).
LAYER_ORDER = ("input", "hidden", "recurrent", "readout")


@flax.struct.dataclass
class NamedNorms:
    """Norms of the named parts of a pytree, kept as log10 so that none underflows.

    A pytree whose only array is ``log10`` (``names`` is static metadata), so it passes through
    ``jax.jit`` and ``jax.vmap``; under ``vmap`` ``log10`` gains leading batch axes.

    Attributes:
      names: the L names, e.g. ``("input", "hidden/0", "hidden/1", "readout")``.
      log10: array of shape ``(..., L)``, log10 of each part's Frobenius norm: finite wherever
        the part has a non-zero entry, ``-inf`` for an all-zero part, NaN if it holds a NaN.
    """

    names: tuple[str, ...] = flax.struct.field(pytree_node=False)
    log10: jax.Array

    @property
    def values(self) -> jax.Array:
        """The plain norms ``10 ** log10``, array of shape ``(..., L)``.

        Accurate wherever the norm itself is representable, however small its entries' squares:
        the relative error is |ln ‖x‖|·eps from rounding the logarithm (≤ 5e-6 across float32's
        range, ~1e-14 in float64). 0 only for an all-zero part.
        """
        return jnp.power(10.0, self.log10)

    @property
    def global_log10(self) -> jax.Array:
        """log10 of the root-sum-of-squares of the values (``optax.global_norm`` of the whole
        tree), computed in log form; array of shape ``(...)``."""
        if not self.names:
            return jnp.full(jnp.shape(self.log10)[:-1], -jnp.inf)
        return _numerics.combine_log_norms(_numerics.LN10 * self.log10, axis=-1) / _numerics.LN10

    def as_dict(self, *, log10: bool = False) -> dict[str, jax.Array]:
        """``{name: norm}`` in order (``{name: log10 norm}`` with ``log10=True``); each value has
        shape ``(...)``, the batch shape."""
        arr = self.log10 if log10 else self.values
        return {name: arr[..., i] for i, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)


# ------------------------------------------------------------------------------------------------
# names and groups
# ------------------------------------------------------------------------------------------------


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(name))]


def _default_key(name: str):
    rank = {k: i for i, k in enumerate(LAYER_ORDER)}
    return (rank.get(name.split("/")[0], len(rank)), _natural_key(name))


def _key_name(key) -> str:
    # DictKey.key, GetAttrKey.name, SequenceKey.idx, FlattenedIndexKey.key.
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, int, float, complex))


def _unwrap(tree):
    # linen's init returns {"params": {...}}; its gradient has the same wrapper.
    if isinstance(tree, Mapping) and set(tree.keys()) == {"params"}:
        return tree["params"]
    return tree


def _groups(arg: str, tree, depth: int) -> dict[str, list[tuple[int, Any]]]:
    """``{name: [(leaf index, leaf), …]}`` in tree order; leaf indices follow ``tree_leaves(tree)``.

    Raises TypeError naming ``arg`` if a leaf is not an array.
    """
    groups: dict[str, list[tuple[int, Any]]] = {}
    index = 0
    # An nnx.Variable flattens to its value under a trailing ".value" key; stopping at the
    # Variable keeps that key out of the names.
    for path, node in jax.tree_util.tree_flatten_with_path(
        _unwrap(tree), is_leaf=_checks.is_nnx_variable
    )[0]:
        name = "/".join(_key_name(k) for k in path[:depth])
        for leaf in jax.tree_util.tree_leaves(node):
            if not _is_array(leaf):
                raise TypeError(
                    f"{arg} must be a pytree of arrays; {arg}{jax.tree_util.keystr(path)} is a "
                    f"{type(leaf).__name__}"
                )
            groups.setdefault(name, []).append((index, leaf))
            index += 1
    return groups


def _stack_problem(shapes: list[tuple[int, ...]]) -> str | None:
    """Why leaves of these shapes are not L layers stacked on a leading axis (None if they are).

    The rule: every leaf has the same leading length L; each is one array per layer (ndim >= 2)
    or one scalar per layer (ndim 1), and at least one is an array per layer. Scalars per layer
    are accepted only beside a leaf of ndim >= 3: a 2-D leaf beside a 1-D leaf of its leading
    length is an ordinary square Dense layer (kernel (n, n), bias (n,)), not a stack.
    """
    ndims = [len(s) for s in shapes]
    if min(ndims) == 0:
        return "a leaf is a scalar, with no layer axis"
    if len({s[0] for s in shapes}) > 1:
        return "the leaves' leading lengths differ"
    if max(ndims) < 2:
        return "every leaf is 1-D (a plain vector such as a bias or a norm scale)"
    if 1 in ndims and max(ndims) < 3:
        return "a 2-D leaf beside a 1-D leaf is a plain Dense layer (kernel, bias)"
    return None


def _shapes(leaves) -> list[tuple[int, ...]]:
    return [tuple(np.shape(leaf)) for _, leaf in leaves]


def _resolve_stacked(groups, stacked, depth: int) -> tuple[str, ...]:
    """The stacked group names: checked if given, gradflow's ``hidden`` by default."""
    stacked = _checks.names_or_none("stacked", stacked, "group names")
    if stacked is None:
        # gradflow's own models: input, hidden (stacked layers), recurrent, readout.
        own = (
            depth == 1
            and set(groups) <= set(LAYER_ORDER)
            and {"input", "hidden"} <= set(groups)
            and min(len(s) for s in _shapes(groups["hidden"])) >= 2
            and _stack_problem(_shapes(groups["hidden"])) is None
        )
        return ("hidden",) if own else ()
    for name in stacked:
        if name not in groups:
            raise ValueError(
                f"stacked: {name!r} is not a group of the tree; the groups are "
                f"{_sorted_names(groups, None)}"
            )
        problem = _stack_problem(_shapes(groups[name]))
        if problem is not None:
            raise ValueError(
                f"stacked: group {name!r} is not layers stacked on a leading axis: {problem} "
                f"(leaf shapes {_shapes(groups[name])})"
            )
    return stacked


@functools.partial(jax.jit, static_argnums=1)
def _groups_log10(leaves: tuple[tuple[jax.Array, ...], ...], stacked: tuple[bool, ...]):
    """log10 norm of each group, ``(L,)``; a stacked group gives one entry per leading index.

    Jitted (and cached on the tree's structure and shapes) so that an eager call is one compiled
    program rather than a dozen small ops per leaf.
    """
    logs = []
    for group, is_stacked in zip(leaves, stacked):
        # Below float32 (bfloat16, float16) the logarithm itself would be too coarse.
        group = [x.astype(jnp.promote_types(x.dtype, jnp.float32)) for x in group]
        if is_stacked:
            per_leaf = jnp.stack([jax.vmap(_numerics.log_norm)(x) for x in group])  # (leaves, L)
        else:
            per_leaf = jnp.stack([_numerics.log_norm(x) for x in group])[:, None]  # (leaves, 1)
        logs.append(per_leaf[0] if len(group) == 1 else _numerics.combine_log_norms(per_leaf))
    return jnp.concatenate(logs) / _numerics.LN10 if logs else jnp.zeros((0,), jnp.float32)


def _log_norms(groups, names: Sequence[str], stacked: Sequence[str]) -> NamedNorms:
    out_names = []
    for name in names:
        if name in stacked:
            length = np.shape(groups[name][0][1])[0]
            out_names += [f"{name}/{i}" for i in range(length)]
        else:
            out_names.append(name)
    leaves = tuple(tuple(x for _, x in groups[name]) for name in names)
    log10 = _groups_log10(leaves, tuple(name in stacked for name in names))
    return NamedNorms(names=tuple(out_names), log10=log10)


def _sorted_names(groups, order) -> list[str]:
    order = _checks.names_or_none("order", order, "group names")
    rank = {} if order is None else {name: i for i, name in enumerate(order)}
    return sorted(groups, key=lambda n: (rank.get(n, len(rank)), _default_key(n)))


def named_norms(
    tree,
    depth: int = 1,
    *,
    stacked: Sequence[str] | None = None,
    order: Sequence[str] | None = None,
) -> NamedNorms:
    """Frobenius norm of each named part of a pytree, in log form.

    Parts are the leaves' paths truncated to ``depth`` components and joined with "/": dict keys,
    attribute names and list indices (``{"params": …}`` from linen's ``init`` is unwrapped; the
    ``value`` inside an ``nnx.Variable`` is not a component). For a linen Transformer, ``depth=1``
    gives ``"Embed_0", "Block_0", …`` and ``depth=2`` ``"Block_0/Dense_0", …``. A part's norm
    covers all its leaves (weights, biases and norm scales together); the root-sum-of-squares of
    the values is ``optax.global_norm(tree)``.

    Args:
      tree: a pytree of arrays (parameters, gradients or updates).
      depth: number of path components in a name, >= 1.
      stacked: names of parts whose leaves hold L layers on a leading axis; each becomes
        ``name/0 … name/{L−1}`` in place. Every leaf of such a part needs the same leading
        length L and ndim >= 2, except per-layer scalars (ndim 1) beside a leaf of ndim >= 3 —
        so a plain Dense (kernel ``(n, m)``, bias ``(m,)``) is refused. None (default): only
        ``hidden`` of gradflow's own models (parts ⊆ :data:`LAYER_ORDER` with ``input`` and a
        stacked ``hidden``) at ``depth=1``; nothing for other trees.
      order: part names in the order wanted (e.g. from :func:`forward_order`); parts not listed
        follow. None: :data:`LAYER_ORDER`, then natural order (``Dense_2`` before ``Dense_10``).

    Returns:
      :class:`NamedNorms` with L names and ``log10`` of shape ``(L,)``.

    Raises:
      TypeError: if a leaf of ``tree`` is not an array, or ``stacked``/``order`` is not a
        sequence of names.
      ValueError: if ``depth`` < 1, or a ``stacked`` name is not a part or not a stack.
    """
    depth = _checks.positive_int("depth", depth)
    groups = _groups("tree", tree, depth)
    stacked = _resolve_stacked(groups, stacked, depth)
    return _log_norms(groups, _sorted_names(groups, order), stacked)


def layer_norms(
    tree, *, stacked: Sequence[str] | None = None, order: Sequence[str] | None = None
) -> NamedNorms:
    """Norm of each layer (top-level group) of a parameter-shaped tree: ``named_norms(tree, 1)``.

    See :func:`named_norms` for ``stacked`` and ``order``.

    Returns:
      :class:`NamedNorms`, ``log10`` of shape ``(L,)``, input layer first.
    """
    return named_norms(tree, 1, stacked=stacked, order=order)


def global_norm(tree) -> jax.Array:
    """√(Σ‖leaf‖²) over the whole pytree (as ``optax.global_norm``), computed in log form so
    that it does not underflow; array of shape ``()``."""
    return jnp.exp(_numerics.tree_log_norm(tree))


# ------------------------------------------------------------------------------------------------
# forward order
# ------------------------------------------------------------------------------------------------

# Tag of a value computed from the non-parameter inputs (the batch) or from closed-over constants.
_DATA = None


def _open_jaxpr(value):
    if hasattr(value, "eqns") and hasattr(value, "invars"):  # a Jaxpr
        return value
    inner = getattr(value, "jaxpr", None)  # a ClosedJaxpr
    return inner if hasattr(inner, "eqns") else None


def _sub_jaxprs(eqn) -> list:
    """``(jaxpr, outer vars feeding its invars)`` for each sub-jaxpr whose inputs are known."""
    params, invars = eqn.params, list(eqn.invars)
    if eqn.primitive.name == "while":
        nc, nb = params["cond_nconsts"], params["body_nconsts"]
        carry = invars[nc + nb :]
        subs = [(params["cond_jaxpr"], invars[:nc] + carry)]
        subs.append((params["body_jaxpr"], invars[nc : nc + nb] + carry))
    elif eqn.primitive.name == "cond":
        subs = [(branch, invars[1:]) for branch in params["branches"]]
    else:  # pjit, scan, custom_jvp/vjp, remat: the sub-jaxpr takes the equation's inputs
        subs = [(value, invars) for value in params.values()]
    out = []
    for value, outer in subs:
        jaxpr = _open_jaxpr(value)
        if jaxpr is not None and len(jaxpr.invars) == len(outer):
            out.append((jaxpr, outer))
    return out


def _first_uses(jaxpr, tags: dict, prefix: tuple, meets: dict, touches: dict) -> None:
    """Records, per parameter leaf, the position of the first equation that combines it with data
    (``meets``) and of the first that consumes it at all (``touches``).

    A value's tag is the set of parameter leaves it is computed from alone, or ``_DATA`` once the
    batch enters. Positions are tuples (equation index, index inside its sub-jaxpr, …).
    """

    def tag(v):
        return frozenset() if isinstance(v, jex_core.Literal) else tags.get(v, _DATA)

    for i, eqn in enumerate(jaxpr.eqns):
        pos = prefix + (i,)
        ins = [tag(v) for v in eqn.invars]
        data = any(t is _DATA for t in ins)
        used = frozenset().union(*(t for t in ins if t is not _DATA))
        for sub, outer in _sub_jaxprs(eqn):
            inner = {iv: tag(ov) for iv, ov in zip(sub.invars, outer)}
            _first_uses(sub, inner, pos, meets, touches)
        # After the recursion, so that a use inside a sub-jaxpr (pos, k) wins over (pos, inf).
        for leaf in used:
            touches.setdefault(leaf, pos + (math.inf,))
            if data:
                meets.setdefault(leaf, pos + (math.inf,))
        for v in eqn.outvars:
            tags[v] = _DATA if data else used


def _check_callable(arg: str, fn) -> None:
    if not callable(fn):
        raise TypeError(f"{arg} must be callable, got {type(fn).__name__}")


def _check_params(groups) -> None:
    if not groups:
        raise TypeError("params must be a pytree of arrays, got one with no array leaves")


def _forward_names(fn, params, args, groups) -> tuple[str, ...]:
    closed = jax.make_jaxpr(lambda p: fn(p, *args))(params)
    jaxpr = closed.jaxpr
    meets: dict[int, tuple] = {}
    touches: dict[int, tuple] = {}
    tags = {v: frozenset((i,)) for i, v in enumerate(jaxpr.invars)}
    _first_uses(jaxpr, tags, (), meets, touches)
    never = (math.inf,)

    def position(name):
        return min((meets.get(i, never), touches.get(i, never), i) for i, _ in groups[name])

    return tuple(sorted(groups, key=position))


def forward_order(fn: Callable[..., Any], params, *args, depth: int = 1) -> tuple[str, ...]:
    """The names of ``params``' parts (as :func:`named_norms`) in the order ``fn`` first uses them.

    Traces ``fn(params, *args)`` once with ``jax.make_jaxpr`` (nothing is computed) and finds, for
    every parameter leaf, the first equation where it meets the data — a value computed from
    ``args`` or from arrays ``fn`` closes over — following values computed from parameters alone
    (``stop_gradient``, casts, slicing, weight normalisation) and descending into ``jit``,
    ``scan``, ``while``, ``cond``, ``custom_jvp``/``custom_vjp`` and ``remat``. A part's position
    is that of its earliest leaf. Ties, and parts that never meet the data, are ordered by their
    first use of any kind, then tree order; unused parts come last. The order never depends on
    how the parts are named: a module called ``"z_embed"`` that runs first comes first.

    Args:
      fn: ``fn(params, *args)``, e.g. a loss ``loss_fn(params, batch)``.
      params: a pytree of arrays (linen variables, ``nnx.State``, dicts, dataclasses, lists).
      *args: the other arguments of ``fn``.
      depth: number of path components in a name, >= 1.

    Returns:
      Tuple of the part names (a stacked group is one name here), first used first.

    Raises:
      TypeError: if ``fn`` is not callable or ``params`` is not a pytree of arrays.
      ValueError: if ``depth`` < 1.
    """
    _check_callable("fn", fn)
    depth = _checks.positive_int("depth", depth)
    groups = _groups("params", params, depth)
    _check_params(groups)
    return _forward_names(fn, params, args, groups)


def layer_grad_norms(
    loss_fn: Callable[[Any, Any], jax.Array],
    params,
    batch,
    *,
    stacked: Sequence[str] | None = None,
    depth: int = 1,
) -> NamedNorms:
    """‖∂L/∂θ_l‖ for every layer l, from one ``jax.grad``, named and in forward order.

    Layers are the parts of ``params`` named as in :func:`named_norms` (``depth`` path
    components; stacked groups split into ``name/0 …``), ordered as :func:`forward_order` finds
    them in ``loss_fn``: input layer first, readout last, whatever the modules are called.

    The norms of the gradient ``jax.grad`` returns are taken without underflow (entries of 1e-25
    in float32 give their exact log-norm), but a gradient that ``jax.grad`` itself underflows to 0
    — the early layers of a deep sigmoid net — stays 0 (``log10 = -inf``). For those, build the
    model's chain and use :func:`chain_grad_norms`, which renormalises the backward pass.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: a pytree of arrays (as from ``model.init``, ``nnx.state(model, nnx.Param)`` or
        ``nnx.split``).
      batch: whatever ``loss_fn`` takes.
      stacked: names of groups stacked on a leading layer axis (see :func:`named_norms`); None
        stacks ``hidden`` of gradflow's own models only.
      depth: number of path components in a layer name, >= 1.

    Returns:
      :class:`NamedNorms` with ``log10`` of shape ``(L,)``; the root-sum-of-squares of its
      ``values`` is the global gradient norm.

    Raises:
      TypeError: if ``loss_fn`` is not callable or ``params`` is not a pytree of arrays.
      ValueError: if ``params`` holds non-finite values, ``depth`` < 1, or ``stacked`` names a
        group that does not exist or is not a stack.
    """
    _check_callable("loss_fn", loss_fn)
    depth = _checks.positive_int("depth", depth)
    groups = _groups("params", params, depth)
    _check_params(groups)
    # Checked here, on params, so that a bad `stacked` fails before anything is traced.
    stacked = _resolve_stacked(groups, stacked, depth)
    _checks.check_finite("params", params)
    order = _forward_names(loss_fn, params, (batch,), groups)
    return named_norms(jax.grad(loss_fn)(params, batch), depth, stacked=stacked, order=order)


@functools.partial(jax.jit, static_argnames=("loss_fn", "has_head"))
def _chain_log_norms(sc: Segmented, loss_fn, head_params, has_head: bool):
    """Natural-log norms: (state (K + 1,), step params (K,), stem (), head ())."""
    segs, h_last, unravel = flat_segments(sc)
    if has_head:
        loss = lambda hp, h: loss_fn(hp, unravel(h))
    else:
        loss = lambda hp, h: loss_fn(unravel(h))
    g_head, g_last = jax.grad(loss, argnums=(0, 1))(head_params, h_last)
    u, log_c = _numerics.renormalise(g_last[None], jnp.zeros((), h_last.dtype))
    pulled = pullback(segs, u, log_c, params=True)
    states = jnp.concatenate([p.log_scale for p in pulled] + [log_c[None]])
    steps = jnp.concatenate([p.param_log_norms for p in pulled])
    stem = jnp.zeros((0,), h_last.dtype)
    if sc.stem is not None:
        unit0, c0 = pulled[0].units[0, 0], pulled[0].log_scale[0]
        fn = lambda p: ravel_pytree(sc.stem.fn(p, sc.x, sc.stem.x))[0]
        g_stem = jax.vjp(fn, sc.stem.params)[1](unit0)[0]
        stem = (c0 + _numerics.tree_log_norm(g_stem))[None]
    head = _numerics.tree_log_norm(g_head)[None] if has_head else jnp.zeros((0,), h_last.dtype)
    return states, jnp.concatenate([stem, steps, head])


def chain_grad_norms(chain, loss_fn: Callable, *, head_params=None, head_name: str = "head"):
    """Per-layer gradient norms ‖∂L/∂θ_l‖ along a chain, in log scale, finite at any depth.

    L = ``loss_fn(h_K)`` (or ``loss_fn(head_params, h_K)``). The error signal ∂L/∂h_K is pulled back
    through the chain one ``jax.vjp`` per step and renormalised after each, its log scale kept
    apart; each step's parameter gradient is the vjp of the unit signal times that scale. So a
    gradient far below float32's range (10⁻⁶³² at depth 1000 of a sigmoid net) still has an exact
    log-norm, where ``jax.grad`` underflows to 0.

    Args:
      chain: a :class:`~gradflow.chain.Chain` or :class:`~gradflow.chain.Segmented` chain (with a
        stem, the stem's parameters come first).
      loss_fn: ``loss_fn(h_K) -> scalar`` or, with ``head_params``, ``loss_fn(head_params, h_K)``.
        Jitted with the function as a static argument: pass the same object to avoid recompiling.
      head_params: parameters of the head inside ``loss_fn`` (a readout), reported last.
      head_name: the head's name.

    Returns:
      :class:`NamedNorms` in forward order: the stem (if any), every step (a shared-parameter
      RNN's per-step contributions, whose sum is the gradient), then the head (if given). A layer
      without parameters (Dropout, an activation) has norm 0: ``log10`` is ``-inf``.

    Raises:
      TypeError: if ``chain`` is not a chain or ``loss_fn`` is not callable.
    """
    sc = check_chain(chain)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    _, logs = _chain_log_norms(sc, loss_fn, head_params, head_params is not None)
    names = (() if sc.stem is None else (sc.stem.name,)) + sc.step_names()
    names += () if head_params is None else (head_name,)
    return NamedNorms(names=names, log10=logs / _numerics.LN10)


def state_grad_norms(chain, loss_fn: Callable[[Any], jax.Array], *, log10: bool = False):
    """‖∂L/∂h_k‖ for every state h_0 … h_K of a chain, where L = loss_fn(h_K).

    The error signal is pulled back one ``jax.vjp`` per step and renormalised after each (see
    :func:`chain_grad_norms`), so the log form is finite and accurate at any depth.

    Args:
      chain: a :class:`~gradflow.chain.Chain` or :class:`~gradflow.chain.Segmented` chain.
      loss_fn: scalar loss of the final state (e.g. a readout followed by a squared error).
      log10: return log10 ‖∂L/∂h_k‖ instead of the norm (which underflows to 0 in float32 below
        ~1e-38 although the log form stays exact).

    Returns:
      Array ``(K + 1,)``; entry k is ‖∂L/∂h_k‖ (Euclidean norm of the flattened state).
    """
    sc = check_chain(chain)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    states, _ = _chain_log_norms(sc, loss_fn, None, False)
    return states / _numerics.LN10 if log10 else jnp.exp(states)
