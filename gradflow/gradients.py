"""Per-layer gradient norms ‖∂L/∂θ_l‖ and per-step state-gradient norms ‖∂L/∂h_k‖."""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from gradflow import _checks
from gradflow.chain import Chain

__all__ = ["layer_grad_norms", "layer_norms", "global_norm", "state_grad_norms", "LAYER_ORDER"]

# The order in which gradflow's models name their parameter groups (input layer first). Keys not
# listed here come after, in natural order (so Flax's Dense_2 precedes Dense_10).
LAYER_ORDER = ("input", "hidden", "recurrent", "readout")
# Groups whose leaves are stacked layers on a leading axis: each slice is one layer.
STACKED = ("hidden",)


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(name))]


def _sq_norm(tree) -> jax.Array:
    return sum(jnp.sum(jnp.square(jnp.abs(x))) for x in jax.tree_util.tree_leaves(tree))


def layer_norms(tree, *, stacked: Sequence[str] = STACKED) -> jax.Array:
    """Frobenius norm of each layer's parameters (weights, biases and norm scales together).

    Layers are the top-level groups of ``tree`` (``tree["params"]`` if present) in
    :data:`LAYER_ORDER`, then natural order; a group named in ``stacked`` contributes one layer per
    slice of its leading axis.

    Args:
      tree: a parameter-shaped pytree (parameters, gradients or updates).
      stacked: names of stacked groups.

    Returns:
      Array ``(L,)``, input layer first; ``sqrt(sum(out**2))`` is the global norm.
    """
    if isinstance(tree, dict) and set(tree) == {"params"}:
        tree = tree["params"]
    if not isinstance(tree, dict):
        raise TypeError(f"expected a dict of layers (as from model.init), got {type(tree).__name__}")
    rank = {k: i for i, k in enumerate(LAYER_ORDER)}
    keys = sorted(tree, key=lambda k: (rank.get(k, len(rank)), _natural_key(k)))
    parts = []
    for k in keys:
        if k in stacked:
            leaves = jax.tree_util.tree_leaves(tree[k])
            parts.append(sum(jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), axis=1) for x in leaves))
        else:
            parts.append(jnp.reshape(_sq_norm(tree[k]), (1,)))
    return jnp.sqrt(jnp.concatenate(parts))


def global_norm(tree) -> jax.Array:
    """√(Σ‖leaf‖²) over the whole pytree (as ``optax.global_norm``)."""
    return jnp.sqrt(_sq_norm(tree))


def layer_grad_norms(
    loss_fn: Callable[[Any, Any], jax.Array], params, batch, *, stacked: Sequence[str] = STACKED
) -> jax.Array:
    """‖∂L/∂θ_l‖ for every layer l, from one ``jax.grad``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: parameters (as from ``model.init``).
      batch: whatever ``loss_fn`` takes.
      stacked: names of stacked parameter groups (see :func:`layer_norms`).

    Returns:
      Array ``(L,)``, input layer first, whose root-sum-of-squares is the global gradient norm.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    _checks.check_finite("params", params)
    return layer_norms(jax.grad(loss_fn)(params, batch), stacked=stacked)


def state_grad_norms(chain: Chain, loss_fn: Callable[[Any], jax.Array]) -> jax.Array:
    """‖∂L/∂h_k‖ for every state h_0 … h_K of a chain, where L = loss_fn(h_K).

    Each state gets a zero perturbation ε_k (h_k + ε_k feeds step k); ∂L/∂ε_k = ∂L/∂h_k, so one
    reverse pass gives all K + 1 norms.

    Args:
      chain: the chain.
      loss_fn: scalar loss of the final state (e.g. a readout followed by a squared error).

    Returns:
      Array ``(K + 1,)``; entry k is ‖∂L/∂h_k‖ (Euclidean norm of the flattened state).
    """
    if not isinstance(chain, Chain):
        raise TypeError(f"chain must be a gradflow.chain.Chain, got {type(chain).__name__}")
    h0_flat, unravel = ravel_pytree(chain.h0)

    def loss_of_eps(eps):  # eps: (K + 1, n)
        def body(h, s_e):
            s, e = s_e
            h = unravel(ravel_pytree(h)[0] + e)
            return chain.step_at(h, s), None

        h, _ = jax.lax.scan(body, chain.h0, (chain.per_step(), eps[:-1]), length=chain.length)
        return loss_fn(unravel(ravel_pytree(h)[0] + eps[-1]))

    eps = jnp.zeros((chain.length + 1, h0_flat.shape[0]), h0_flat.dtype)
    return jnp.linalg.norm(jax.grad(loss_of_eps)(eps), axis=-1)
