"""Chains from your own model: any sequence of callables, linen module, RNN cell or nnx module.

One call each turns a model into a :class:`~gradflow.chain.Segmented` chain (or a
:class:`~gradflow.chain.Chain` for a recurrent cell), after which every analysis applies:

- :func:`from_layers` — a sequence of callables ``h -> h'``;
- :func:`from_module` — a ``flax.linen`` module; the states are the outputs of the named
  submodules (default: the top-level submodules, in the order the forward pass calls them,
  captured with Flax's method interception — not by sorting names);
- :func:`from_cell` — a linen ``RNNCellBase`` (or ``nn.RNN``) unrolled over time;
- :func:`from_nnx` — the same as :func:`from_module` for a ``flax.nnx`` module.

How a module becomes a chain. The forward pass is run once with the named submodules'
``__call__`` intercepted, recording the order of the calls and their outputs h_0, h_1, … . Step k
maps h_{k−1} to h_k: it *replays* the model's own forward pass with call k−1's output replaced by
the state h and stops when call k returns. Whatever the model does between two submodules
(an activation, a reshape, a residual add, a positional embedding) is therefore part of the step,
exactly as the model computes it; parameters of call k enter as the step's parameters, so gradient
norms per layer come out too. The first named layer is the chain's ``stem`` (input → h_0).
Under ``jit`` the replayed prefix feeds nothing and XLA drops it, so a step costs what its own
layers cost.

An ``nn.scan`` stack of blocks (its blocks run inside a ``lax.scan``, so they are not calls of the
model's own forward pass) becomes one :class:`~gradflow.chain.Scan` segment with a state per block
when its carry comes straight from the previous named layer and goes straight into the next (checked
by running the blocks one by one); otherwise it is folded, exactly, into the next layer's step.

The chain is exact when the named layers form a chain: each state depends on the input only through
the previous state. A skip connection that bypasses a named layer (a U-Net, a residual around a
named block) makes the per-step Jacobians partial derivatives that do not multiply to the
end-to-end one; name the enclosing block instead.

Recompilation: the steps are frozen dataclasses that compare equal for the same module (linen
modules compare by their configuration, nnx graphs by their structure) and the same layer names, so
building the chain twice — e.g. for new parameters or inputs of the same shapes — reuses the
compiled analyses. A :func:`from_layers` chain is keyed on the callables' identity: pass the same
function objects to avoid a recompilation.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import unfreeze

from gradflow.chain.core import Chain, Layer, Scan, Segmented, same_shapes, state_shapes

__all__ = ["from_layers", "from_module", "from_cell", "from_nnx"]


class _Stop(Exception):
    """Raised inside a replayed forward pass to return the target layer's output."""

    def __init__(self, value):
        super().__init__("gradflow replay stop")
        self.value = value


# --- from_layers ---------------------------------------------------------------------------------
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


# --- shared: captured calls -> segments ----------------------------------------------------------
def _select(found: list[str], layers, default: list[str], what: str) -> tuple[str, ...]:
    if layers is None:
        if not default:
            raise ValueError(f"the {what} calls no submodule: pass layers=[...] naming its layers")
        return tuple(default)
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise TypeError(f"layers must be a non-empty sequence of layer names, got {layers!r}")
    missing = [n for n in layers if n not in found]
    if missing:
        raise ValueError(
            f"layers names {missing} that the {what} does not call; the layers it calls, in "
            f"forward order, are: {list(dict.fromkeys(found))}"
        )
    return tuple(dict.fromkeys(layers))


def _find(tree, path):
    """``tree[path[0]]…[path[-1]]``, or None where the path does not exist (a layer without
    parameters has no entry)."""
    try:
        for p in path:
            tree = tree[p]
    except (KeyError, TypeError, IndexError):
        return None
    return tree


def _layer_params(tree, path):
    found = _find(tree, path)
    return {} if found is None else found


def _set_path(tree, path, value):
    """A copy of nested dict ``tree`` with ``tree[path[0]]…[path[-1]] = value`` (path copied)."""
    if not path:
        return value
    out = dict(tree)
    out[path[0]] = _set_path(tree[path[0]], path[1:], value)
    return out


def _split_kwargs(kwargs: dict):
    """Call keyword arguments: hashable ones stay static, arrays travel as traced inputs."""
    static, dynamic = {}, {}
    for k, v in kwargs.items():
        leaves = jax.tree_util.tree_leaves(v)
        if any(
            isinstance(leaf, (jax.Array, jnp.ndarray)) or hasattr(leaf, "__array__")
            for leaf in leaves
        ):
            dynamic[k] = v
        else:
            static[k] = v
    return tuple(sorted(static.items())), dynamic


def _build(names, outputs, params, fn_for, dyn, x, owner: str) -> Segmented:
    """Segmented chain: stem = call 0 (input → h_0), one Layer per later call."""
    if len(names) < 2:
        raise ValueError(
            f"the {owner} must call at least two of the named layers to make a chain (the first "
            f"gives h_0, each later one a step); it called {list(names)}"
        )
    stem = Layer(params[0], dyn, fn_for(0), names[0])
    segments = tuple(Layer(params[k], dyn, fn_for(k), names[k]) for k in range(1, len(names)))
    chain = Segmented(h0=outputs[0], segments=segments, stem=stem, x=x).validate()
    state_shapes(chain)
    return chain


@contextlib.contextmanager
def _stateful_hint(arg: str):
    """Turns Flax's errors about mutating state inside a trace into one clear ValueError."""
    try:
        yield
    except flax.errors.FlaxError as exc:
        raise ValueError(
            f"{arg}'s forward pass must be a pure function of its input to form a chain, but it "
            "updates state (BatchNorm statistics in training mode, a Dropout RNG, a cache): put it "
            "in evaluation mode (nnx: model.eval(); linen: the module's train/deterministic "
            f"argument as a keyword) — Flax said: {str(exc).splitlines()[0]}"
        ) from exc


def _traced(*trees) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(trees))


class _Recorder:
    """An ``on_call`` hook that runs each intercepted layer and records its name and output."""

    def __init__(self, eager: bool = True):
        self.names, self.outputs, self.eager = [], [], eager
        self.modules, self.args, self.lifted = [], [], {}

    def __call__(self, name, run, module=None, args=()):
        out = run()
        # In an eager capture a traced output means the call ran inside a lifted transform
        # (the blocks of an nn.scan stack): not a state of the model's own forward pass. It is
        # remembered (where it ran, the block, its arguments) so from_module can scan it.
        if self.eager and _traced(out):
            self.lifted.setdefault(name, (len(self.names), module, args))
            return out
        self.names.append(name)
        self.outputs.append(out)
        self.modules.append(module)
        self.args.append(args)
        return out


def _replay_interceptor(k: int, h):
    """State for a replay: call ``k − 1`` returns ``h`` (if k > 0), call ``k`` raises its output."""
    counter = [0]

    def on_call(run):
        i = counter[0]
        counter[0] += 1
        if i == k - 1:
            return h
        if i == k:
            raise _Stop(run())
        return run()

    return on_call


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
            _find(variables["params"], self.names[self.k].split("/")) is not None
        ):  # parameter-free layers have none
            path = ("params", *self.names[self.k].split("/"))
            variables = _set_path(variables, path, params_k)
        on_call = _replay_interceptor(self.k, h)
        targets = set(self.names)
        try:
            with _linen_hook(lambda n, run, *_: on_call(run) if n in targets else run()):
                self.module.apply(variables, dyn["input"], **dict(self.kwargs), **dyn["kwargs"])
        except _Stop as stop:
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
    static, dynamic = _split_kwargs(kwargs)
    record = _Recorder(eager=not _traced(x, variables))
    with _stateful_hint("module"), _linen_hook(record):
        module.apply(variables, x, **kwargs)
    found = record.names
    top = [n for n in found if "/" not in n]
    names = _select(found, layers, top, f"module {type(module).__name__}")
    keep = [i for i, n in enumerate(found) if n in names]
    order = tuple(found[i] for i in keep)
    chosen = [record.outputs[i] for i in keep]
    params = [_layer_params(variables["params"], n.split("/")) for n in order]
    dyn = {"variables": variables, "input": x, "kwargs": dynamic}
    scans = _lifted_stacks(record, keep, chosen, variables["params"])

    def fn_for(k):
        return _LinenStep(module, order, k, static)

    with _stateful_hint("module"):
        chain = _build(order, chosen, params, fn_for, dyn, x, f"module {type(module).__name__}")
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


def _lifted_stacks(record: _Recorder, keep, chosen, params) -> dict:
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
            or _find(params, name.split("/")) is None
            or block is None
            or len(args) < 1
        ):
            continue
        i = keep[k]
        rest = tuple(args[1:])
        theta = _find(params, name.split("/"))
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


# --- from_nnx -------------------------------------------------------------------------------------
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
        with _stateful_hint("model"):
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
            _find(pure, _nnx_path(self.names[self.k])) is not None
        ):  # parameter-free layers have none
            pure = _set_path(pure, _nnx_path(self.names[self.k]), params_k)
        nnx.replace_by_pure_dict(params, pure)
        on_call = _replay_interceptor(self.k, h)
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
        except _Stop as stop:
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
    static, dynamic = _split_kwargs(kwargs)
    record = _Recorder(eager=not _traced(x, state))
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
        record = _Recorder(eager=record.eager)
        _run_nnx(graphdef, state, rest, x, kwargs, tuple(children), record)
        found, outs = record.names, record.outputs
    names = _select(found, layers, found, what)
    chosen = [o for n, o in zip(found, outs) if n in names]
    order = tuple(n for n in found if n in names)
    params = [_layer_params(pure, _nnx_path(n)) for n in order]
    dyn = {"state": state, "pure": pure, "rest": rest, "input": x, "kwargs": dynamic}
    with _stateful_hint("model"):
        return _build(
            order, chosen, params, lambda k: _NnxStep(graphdef, order, k, static), dyn, x, what
        )


# --- from_cell ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _CellStep:
    """One time step of a linen RNN cell: the carry is the chain's state."""

    cell: nn.Module

    def __call__(self, theta, carry, x):
        return self.cell.apply({"params": theta}, carry, x)[0]


def from_cell(cell, params, inputs, carry=None) -> Chain:
    """A recurrent cell unrolled over time: h_{t+1} = cell(θ, h_t, x_t), θ shared by every step.

    Args:
      cell: a linen ``RNNCellBase`` (``LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell``,
        ``SimpleCell``, a user cell) or an ``nn.RNN`` wrapping one.
      params: the cell's parameters (``cell.init(...)`` output or its ``"params"``); for an
        ``nn.RNN``, its own init output (whose ``"cell"`` entry is used).
      inputs: array ``(T, d)`` or a batch ``(B, T, d)`` (batch-major, as ``nn.RNN``).
      carry: the initial carry; default ``cell.initialize_carry`` (zeros for Flax's cells).

    Returns:
      A :class:`~gradflow.chain.Chain` of length T with shared parameters: the state is the
      carry (for an LSTM the (c, h) pair), the step inputs are ``inputs`` time-major.

    Raises:
      TypeError: if ``cell`` is not a linen module or ``inputs`` is not a floating array.
      ValueError: if ``inputs`` does not have 2 or 3 dimensions or does not fit the cell (wrong
        feature size), or ``carry`` does not match the cell's carry.
    """
    if isinstance(cell, nn.RNN):
        params = unfreeze(params)
        params = params.get("params", params)
        params = params.get("cell", params)
        cell = cell.cell
    if not isinstance(cell, nn.Module):
        raise TypeError(f"cell must be a flax.linen RNN cell, got {type(cell).__name__}")
    params = unfreeze(params)
    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]
    try:
        inputs = jnp.asarray(inputs)
    except TypeError as exc:
        raise TypeError(
            f"inputs must be an array (T, d) or (B, T, d), got {type(inputs).__name__}"
        ) from exc
    if inputs.ndim not in (2, 3):
        raise ValueError(f"inputs must have shape (T, d) or (B, T, d), got {inputs.shape}")
    if not jnp.issubdtype(inputs.dtype, jnp.inexact):
        raise TypeError(f"inputs must be floating point, got dtype {inputs.dtype}")
    xs = inputs if inputs.ndim == 2 else jnp.swapaxes(inputs, 0, 1)  # time-major
    default_carry = carry is None
    if default_carry:
        carry = cell.initialize_carry(jax.random.key(0), xs.shape[1:])
    step = _CellStep(cell)
    if not default_carry:
        expected = jax.eval_shape(lambda: cell.initialize_carry(jax.random.key(0), xs.shape[1:]))
        if not same_shapes(expected, carry):
            raise ValueError(
                f"carry must have the shapes {jax.tree_util.tree_map(lambda a: a.shape, expected)}"
                f" for cell {type(cell).__name__} and these inputs, got "
                f"{jax.tree_util.tree_map(jnp.shape, carry)}"
            )
    try:
        new = jax.eval_shape(step, params, carry, xs[0])
    except Exception as exc:  # Flax raises many kinds on a shape mismatch; report one
        raise ValueError(
            f"inputs of shape {inputs.shape} (step input {xs.shape[1:]}) and carry "
            f"{jax.tree_util.tree_map(jnp.shape, carry)} do not fit cell "
            f"{type(cell).__name__} with these params: {exc}"
        ) from exc
    if not same_shapes(new, carry):
        raise ValueError(
            f"carry {jax.tree_util.tree_map(jnp.shape, carry)} does not match the carry the cell "
            f"returns, {jax.tree_util.tree_map(lambda a: a.shape, new)}"
        )
    if default_carry:
        # Flax's initialize_carry follows the cell's param_dtype, not the params it is given
        # (float64 params would meet a float32 carry): use the dtype the step returns.
        carry = jax.tree_util.tree_map(lambda c, o: jnp.asarray(c, o.dtype), carry, new)
    elif any(
        jnp.result_type(c) != o.dtype for c, o in zip(*map(jax.tree_util.tree_leaves, (carry, new)))
    ):
        raise ValueError(
            f"carry dtypes {jax.tree_util.tree_map(jnp.result_type, carry)} differ from those the "
            f"cell returns, {jax.tree_util.tree_map(lambda a: a.dtype, new)}"
        )
    return Chain(params, xs, carry, step, xs.shape[0], shared=True, name=type(cell).__name__)
