"""The chain of maps h_{k+1} = step(θ_k, h_k, x_k), k = 0 … K−1, shared by depth and time.

An MLP of depth L is a chain whose θ_k are stacked per-layer parameters and whose x_k are empty; an
RNN unrolled over T steps is a chain whose θ is shared by every step and whose x_k are the inputs.
Every analysis in gradflow (Jacobians, gradient norms, spectra, Lyapunov exponents) takes a
:class:`Chain`, so "through depth" and "through time" are one code path.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct
from jax.flatten_util import ravel_pytree

__all__ = ["Chain", "trajectory", "final_state", "flat_step"]

StepFn = Callable[[Any, Any, Any], Any]


@struct.dataclass
class Chain:
    """A chain of K maps h_{k+1} = step(θ_k, h_k, x_k).

    Attributes:
      step: ``step(theta, h, x) -> h_next``, a pure function; ``h`` may be any pytree of arrays
        (e.g. the (c, h) pair of an LSTM), and ``h_next`` has the same structure.
      params: the parameters. If ``shared`` is False, every leaf has a leading axis of length K
        and step k receives the k-th slice; if True, every step receives the whole pytree.
      xs: per-step inputs, a pytree whose leaves have a leading axis of length K, or None.
      h0: the initial state h_0 (any pytree of arrays).
      length: K, the number of steps (static).
      shared: whether ``params`` is shared by every step (static).
    """

    params: Any
    xs: Any
    h0: Any
    step: StepFn = struct.field(pytree_node=False)
    length: int = struct.field(pytree_node=False)
    shared: bool = struct.field(pytree_node=False, default=False)

    def __post_init__(self):
        if not isinstance(self.length, int) or self.length < 0:
            raise ValueError(f"Chain length must be an integer >= 0, got {self.length!r}")
        for name, tree, stacked in (("params", self.params, not self.shared), ("xs", self.xs, True)):
            if not stacked or tree is None:
                continue
            for leaf in jax.tree_util.tree_leaves(tree):
                if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != self.length:
                    raise ValueError(
                        f"Chain {name} leaves must have a leading axis of length {self.length} "
                        f"(one slice per step), got shape {jnp.shape(leaf)}"
                    )

    @property
    def state_size(self) -> int:
        """n, the number of scalars in the state (the Jacobians are n × n)."""
        return int(sum(jnp.size(x) for x in jax.tree_util.tree_leaves(self.h0)))

    def per_step(self) -> tuple[Any, Any]:
        """The (θ_k, x_k) pytree scanned over, with a leading axis K where present."""
        return (None if self.shared else self.params), self.xs

    def step_at(self, h, per_step_slice):
        """Applies one step given the slice ``(θ_k or None, x_k or None)`` of :meth:`per_step`."""
        theta, x = per_step_slice
        return self.step(self.params if self.shared else theta, h, x)


def trajectory(chain: Chain):
    """All states h_0 … h_K along the chain, by one ``lax.scan``.

    Returns:
      A pytree like ``h0`` whose leaves have a leading axis of length K + 1.
    """

    def body(h, s):
        h_next = chain.step_at(h, s)
        return h_next, h_next

    _, hs = jax.lax.scan(body, chain.h0, chain.per_step(), length=chain.length)
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), chain.h0, hs)


def final_state(chain: Chain):
    """h_K, without storing the intermediate states."""
    h, _ = jax.lax.scan(
        lambda h, s: (chain.step_at(h, s), None), chain.h0, chain.per_step(), length=chain.length
    )
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
