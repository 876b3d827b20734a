"""A chain through a ``flax.linen`` module's layers: :func:`from_module`.

The forward pass is captured once with Flax's method interception (``nn.intercept_methods``);
step k replays it up to call k. An ``nn.scan`` stack between two named layers becomes a
:class:`~gradflow.chain.Scan` segment where that is exact (see :mod:`gradflow.chain.adapters`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import unfreeze

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
from gradflow.chain.core import Scan, same_shapes, state_shapes

__all__ = ["from_module"]


def _unwrap_variables(variables):
    variables = unfreeze(variables)
    if not isinstance(variables, dict) or "params" not in variables:
        raise TypeError(
            "variables must be the dict returned by module.init (with a 'params' collection), got "
            f"{type(variables).__name__}"
        )
    return variables


# --- from_module (linen) -------------------------------------------------------------------------
def _path_name(module) -> str | None:
    scope = getattr(module, "scope", None)
    return None if scope is None else "/".join(scope.path)


@contextlib.contextmanager
def _linen_hook(on_call):
    """Routes each ``__call__`` of a bound submodule to ``on_call(name, run, module, args)``."""

    active = set()

    def interceptor(next_fun, args, kwargs, context):
        name = _path_name(context.module)
        # A lifted transform (nn.scan, nn.remat) calls its inner module under the same path:
        # that inner call is part of the outer one, not a layer of its own.
        if context.method_name != "__call__" or not name or name in active:
            return next_fun(*args, **kwargs)
        active.add(name)
        try:
            return on_call(name, lambda: next_fun(*args, **kwargs), context.module, args)
        finally:
            active.discard(name)

    with nn.intercept_methods(interceptor):
        yield


@dataclasses.dataclass(frozen=True)
class _LinenStep:
    """Step k of a linen module's chain: replays the forward pass up to call k (see module doc)."""

    module: nn.Module
    names: tuple
    k: int
    kwargs: tuple

    def __call__(self, params_k, h, dyn):
        variables = dyn["variables"]
        if (
            find_path(variables["params"], self.names[self.k].split("/")) is not None
        ):  # parameter-free layers have none
            path = ("params", *self.names[self.k].split("/"))
            variables = set_path(variables, path, params_k)
        on_call = replay_interceptor(self.k, h)
        targets = set(self.names)
        try:
            with _linen_hook(lambda n, run, *_: on_call(run) if n in targets else run()):
                self.module.apply(variables, dyn["input"], **dict(self.kwargs), **dyn["kwargs"])
        except Stop as stop:
            return stop.value
        raise RuntimeError(f"the forward pass did not call layer {self.names[self.k]!r} again")


def from_module(module: nn.Module, variables, x, layers: Sequence[str] | None = None, **kwargs):
    """A chain through a ``flax.linen`` module's layers, for input ``x``.

    Args:
      module: an (unbound) linen module.
      variables: as returned by ``module.init`` (``{"params": …}``, plus e.g. ``batch_stats``).
      x: the module's input (one example or a batch; integer token ids are fine: the chain
        starts at the first layer's output).
      layers: names of the submodules whose outputs are the chain's states, as paths
        (``"Block_0"``, ``"encoder/layers_1"``); default: every top-level submodule, in the order
        the forward pass calls them. The first is the stem (h_0 = its output).
      **kwargs: keyword arguments of ``module.__call__`` (e.g. ``deterministic=True``).

    Returns:
      A :class:`~gradflow.chain.Segmented` chain whose step names are the layer names.

    Raises:
      TypeError: if ``module`` is not a linen module or ``variables`` is not an init dict.
      ValueError: if a name in ``layers`` is not a layer the forward pass calls (the message lists
        the ones it does), or fewer than two layers are called.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a flax.linen Module, got {type(module).__name__}")
    variables = _unwrap_variables(variables)
    static, dynamic = split_kwargs(kwargs)
    record = Recorder(eager=not is_traced(x, variables))
    with stateful_hint("module"), _linen_hook(record):
        module.apply(variables, x, **kwargs)
    found = record.names
    top = [n for n in found if "/" not in n]
    names = select_layers(found, layers, top, f"module {type(module).__name__}")
    keep = [i for i, n in enumerate(found) if n in names]
    order = tuple(found[i] for i in keep)
    chosen = [record.outputs[i] for i in keep]
    params = [layer_params(variables["params"], n.split("/")) for n in order]
    dyn = {"variables": variables, "input": x, "kwargs": dynamic}
    scans = _lifted_stacks(record, keep, chosen, variables["params"])

    def fn_for(k):
        return _LinenStep(module, order, k, static)

    with stateful_hint("module"):
        chain = build_segmented(
            order, chosen, params, fn_for, dyn, x, f"module {type(module).__name__}"
        )
    if not scans:
        return chain
    segments = []
    for k, seg in enumerate(chain.segments, start=1):
        if k in scans:  # the stack, then the next layer applied to its output directly
            stack, direct = scans[k]
            segments += [stack, seg.replace(fn=direct, x=None)]
        else:
            segments.append(seg)
    chain = chain.replace(segments=tuple(segments)).validate()
    state_shapes(chain)
    return chain


@dataclasses.dataclass(frozen=True)
class _ScannedBlock:
    """One block of an ``nn.scan`` stack, applied on its own to the carry."""

    block: nn.Module
    rest: tuple

    def __call__(self, theta, h, x=None):
        return self.block.apply({"params": theta}, h, *self.rest)[0]


@dataclasses.dataclass(frozen=True)
class _DirectChild:
    """A submodule applied to the state directly (its input is exactly the previous state)."""

    child: nn.Module

    def __call__(self, theta, h, x=None):
        return self.child.apply({"params": theta}, h)


def _lifted_stacks(record: Recorder, keep, chosen, params) -> dict:
    """Scan segments for ``nn.scan`` stacks between two chosen layers: ``{k: (Scan, step_k)}``.

    A stack recorded just before chosen call k becomes a :class:`Scan` over its blocks when it
    is provably a plain chain link: its per-block parameters share a leading axis L, its blocks
    take (carry, None-like extras), running the blocks one by one from the state h_{k−1}
    reproduces the input of call k to rounding, and call k takes nothing but that input. Then
    call k is applied directly to the stack's output. Anything else stays folded into call k's
    replayed step, which is exact in every case.
    """
    out = {}
    for name, (position, block, args) in record.lifted.items():
        k = next((j for j, i in enumerate(keep) if i >= position), None)
        if (
            k is None
            or k == 0
            or find_path(params, name.split("/")) is None
            or block is None
            or len(args) < 1
        ):
            continue
        i = keep[k]
        rest = tuple(args[1:])
        theta = find_path(params, name.split("/"))
        lengths = {jnp.shape(a)[0] for a in jax.tree_util.tree_leaves(theta) if jnp.ndim(a)}
        if jax.tree_util.tree_leaves(rest) or len(lengths) != 1 or len(record.args[i]) != 1:
            continue
        length = lengths.pop()
        step = _ScannedBlock(block.clone(parent=None), rest)
        try:
            h = chosen[k - 1]
            for layer in range(length):
                h = step(jax.tree_util.tree_map(lambda a, j=layer: a[j], theta), h)
            target = record.args[i][0]
            matches = same_shapes(h, target) and all(
                np.allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
                for a, b in zip(jax.tree_util.tree_leaves(h), jax.tree_util.tree_leaves(target))
            )
        except Exception:  # a block that cannot run on its own: keep the exact fold
            continue
        if matches:
            direct = _DirectChild(record.modules[i].clone(parent=None))
            out[k] = (Scan(theta, None, step, length, name=name), direct)
    return out
