"""A chain through a ``flax.nnx`` module's layers: :func:`from_nnx`.

The model is split into a graph definition and its state; each capture or replay merges a fresh
copy (the user's model is never changed) whose named children's ``__call__`` is routed through a
hook. Step k replays the forward pass up to call k (see :mod:`gradflow.chain.adapters`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.errors
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gradflow.chain._capture import (
    Recorder,
    Stop,
    build_segmented,
    find_path,
    is_traced,
    layer_params,
    replay_interceptor,
    select_layers,
    set_path,
    split_kwargs,
    stateful_hint,
)
from gradflow.chain.core import Segmented

__all__ = ["from_nnx"]


def _nnx_children(model, prefix: str = ""):
    """(name, module) of the direct children, expanding nnx.List/Sequential containers."""
    out = []
    for key, child in nnx.iter_children(model):
        name = f"{prefix}{key}"
        if isinstance(child, nnx.List) or type(child).__name__ == "Sequential":
            out.extend(_nnx_children(child, name + "/"))
        elif isinstance(child, nnx.Module):
            out.append((name, child))
    return out


def _resolve(model, name: str):
    for part in name.split("/"):
        model = model[int(part)] if part.isdigit() else getattr(model, part)
    return model


@contextlib.contextmanager
def _nnx_hook(targets: dict, on_call):
    """Temporarily routes ``__call__`` of the objects in ``targets`` (id -> name) to ``on_call``."""
    classes = {type(m) for m in targets.values()}
    saved = []
    for cls in classes:
        original = cls.__call__
        own = "__call__" in cls.__dict__

        def wrapper(self, *args, __original=original, **kw):
            name = ids.get(id(self))
            if name is None:
                return __original(self, *args, **kw)
            return on_call(name, lambda: __original(self, *args, **kw))

        saved.append((cls, original, own))
        cls.__call__ = wrapper
    ids = {id(m): n for n, m in targets.items()}
    try:
        yield
    finally:
        for cls, original, own in saved:
            if own:
                cls.__call__ = original
            else:
                del cls.__call__


def _check_nnx_pure(graphdef, params, rest, x, kwargs) -> None:
    """Raises the stateful-model ValueError if a forward pass changes any non-parameter state."""
    snapshot = lambda tree: [
        np.array(jax.random.key_data(a) if _is_key(a) else a)
        for a in jax.tree_util.tree_leaves(tree)
    ]
    # nnx.merge may share Variables with ``rest``: copy the values before running.
    before = snapshot(rest)
    model = nnx.merge(graphdef, _fresh(params), _fresh(rest))
    model(x, **kwargs)
    after = snapshot(nnx.split(model, nnx.Param, ...)[2])
    if len(before) != len(after) or any(not np.array_equal(a, b) for a, b in zip(before, after)):
        with stateful_hint("model"):
            raise flax.errors.TraceContextError("the forward pass changed the model's state")


def _is_key(a) -> bool:
    return jnp.issubdtype(jnp.result_type(a), jax.dtypes.prng_key)


def _fresh(state):
    """A copy of an nnx State with new Variables: merging the original would share them, and a
    stateful forward pass would then change the user's model."""
    return jax.tree_util.tree_map(lambda a: a, state)


def _run_nnx(graphdef, params, rest, x, kwargs, names, on_call):
    model = nnx.merge(graphdef, _fresh(params), _fresh(rest))
    targets = {n: _resolve(model, n) for n in names}
    with _nnx_hook(targets, on_call):
        return model(x, **kwargs)


@dataclasses.dataclass(frozen=True)
class _NnxStep:
    """Step k of an nnx module's chain: replays the forward pass up to call k (see module doc)."""

    graphdef: Any
    names: tuple
    k: int
    kwargs: tuple

    def __call__(self, params_k, h, dyn):
        params = _fresh(dyn["state"])  # a fresh State to fill
        pure = dyn["pure"]
        if (
            find_path(pure, _nnx_path(self.names[self.k])) is not None
        ):  # parameter-free layers have none
            pure = set_path(pure, _nnx_path(self.names[self.k]), params_k)
        nnx.replace_by_pure_dict(params, pure)
        on_call = replay_interceptor(self.k, h)
        try:
            _run_nnx(
                self.graphdef,
                params,
                dyn["rest"],
                dyn["input"],
                {**dict(self.kwargs), **dyn["kwargs"]},
                self.names,
                lambda n, run: on_call(run),
            )
        except Stop as stop:
            return stop.value
        raise RuntimeError(f"the forward pass did not call layer {self.names[self.k]!r} again")


def _nnx_path(name: str):
    return tuple(int(p) if p.isdigit() else p for p in name.split("/"))


def from_nnx(model, x, layers: Sequence[str] | None = None, **kwargs) -> Segmented:
    """A chain through a ``flax.nnx`` module's layers, for input ``x`` (see :func:`from_module`).

    Args:
      model: an ``nnx.Module``; it is not modified (the chain holds a functional copy).
      x: its input.
      layers: names of the child modules whose outputs are the states (``"blocks/0"`` for an
        element of an ``nnx.List``); default: every child module, in the order the forward pass
        calls them (containers such as ``nnx.List`` are expanded).
      **kwargs: keyword arguments of ``model.__call__``.

    Returns:
      A :class:`~gradflow.chain.Segmented` chain; each step's parameters are the layer's
      ``nnx.Param`` values as a pure dict.

    Raises:
      TypeError: if ``model`` is not an nnx module.
      ValueError: for a name in ``layers`` the forward pass does not call (the message lists the
        ones it does), or fewer than two called layers.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be a flax.nnx Module, got {type(model).__name__}")
    graphdef, state, rest = nnx.split(model, nnx.Param, ...)
    pure = nnx.to_pure_dict(state)
    children = [n for n, _ in _nnx_children(model)]
    static, dynamic = split_kwargs(kwargs)
    record = Recorder(eager=not is_traced(x, state))
    _check_nnx_pure(graphdef, state, rest, x, kwargs)
    _run_nnx(graphdef, state, rest, x, kwargs, children, record)
    found, outs = record.names, record.outputs
    what = f"model {type(model).__name__}"
    if layers is not None:
        # Named layers may be deeper than the direct children: capture those calls instead.
        for n in layers:
            if n not in children:
                try:
                    _resolve(model, n)
                except (AttributeError, IndexError, TypeError):
                    continue
                children.append(n)
        record = Recorder(eager=record.eager)
        _run_nnx(graphdef, state, rest, x, kwargs, tuple(children), record)
        found, outs = record.names, record.outputs
    names = select_layers(found, layers, found, what)
    chosen = [o for n, o in zip(found, outs) if n in names]
    order = tuple(n for n in found if n in names)
    params = [layer_params(pure, _nnx_path(n)) for n in order]
    dyn = {"state": state, "pure": pure, "rest": rest, "input": x, "kwargs": dynamic}
    with stateful_hint("model"):
        return build_segmented(
            order, chosen, params, lambda k: _NnxStep(graphdef, order, k, static), dyn, x, what
        )
