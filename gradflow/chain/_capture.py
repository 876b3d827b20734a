"""The capture-and-replay machinery shared by :func:`~gradflow.chain.from_module` (linen) and
:func:`~gradflow.chain.from_nnx`: record the named layers' calls once, then replay the forward
pass up to call k for step k (see :mod:`gradflow.chain.adapters` for how and why).

Package-private: only the adapters in ``gradflow.chain`` import it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import flax.errors
import jax
import jax.numpy as jnp

from gradflow.chain.core import Layer, Segmented, state_shapes


class Stop(Exception):
    """Raised inside a replayed forward pass to return the target layer's output."""

    def __init__(self, value):
        super().__init__("gradflow replay stop")
        self.value = value


def select_layers(found: list[str], layers, default: list[str], what: str) -> tuple[str, ...]:
    """The chosen layer names: ``layers`` checked against the ``found`` calls, or ``default``."""
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


def find_path(tree, path):
    """``tree[path[0]]…[path[-1]]``, or None where the path does not exist (a layer without
    parameters has no entry)."""
    try:
        for p in path:
            tree = tree[p]
    except (KeyError, TypeError, IndexError):
        return None
    return tree


def layer_params(tree, path):
    """A layer's parameters at ``path``, ``{}`` for a layer without any."""
    found = find_path(tree, path)
    return {} if found is None else found


def set_path(tree, path, value):
    """A copy of nested dict ``tree`` with ``tree[path[0]]…[path[-1]] = value`` (path copied)."""
    if not path:
        return value
    out = dict(tree)
    out[path[0]] = set_path(tree[path[0]], path[1:], value)
    return out


def split_kwargs(kwargs: dict):
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


def build_segmented(names, outputs, params, fn_for, dyn, x, owner: str) -> Segmented:
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
def stateful_hint(arg: str):
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


def is_traced(*trees) -> bool:
    """Whether any leaf of ``trees`` is a JAX tracer (we are inside a transformation)."""
    return any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(trees))


class Recorder:
    """An ``on_call`` hook that runs each intercepted layer and records its name and output."""

    def __init__(self, eager: bool = True):
        self.names, self.outputs, self.eager = [], [], eager
        self.modules, self.args, self.lifted = [], [], {}

    def __call__(self, name, run, module=None, args=()):
        out = run()
        # In an eager capture a traced output means the call ran inside a lifted transform
        # (the blocks of an nn.scan stack): not a state of the model's own forward pass. It is
        # remembered (where it ran, the block, its arguments) so from_module can scan it.
        if self.eager and is_traced(out):
            self.lifted.setdefault(name, (len(self.names), module, args))
            return out
        self.names.append(name)
        self.outputs.append(out)
        self.modules.append(module)
        self.args.append(args)
        return out


def replay_interceptor(k: int, h):
    """State for a replay: call ``k − 1`` returns ``h`` (if k > 0), call ``k`` raises its output."""
    counter = [0]

    def on_call(run):
        i = counter[0]
        counter[0] += 1
        if i == k - 1:
            return h
        if i == k:
            raise Stop(run())
        return run()

    return on_call
