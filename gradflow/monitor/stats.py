"""One step's gradient statistics: :class:`GradStats`, :func:`grad_stats`,
:func:`stats_from_norms`."""

from __future__ import annotations

from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp

from gradflow import gradients as _gradients
from gradflow.monitor._common import bad_log10

__all__ = ["GradStats", "grad_stats", "stats_from_norms"]


@flax.struct.dataclass
class GradStats:
    """One step's gradient statistics, per layer and global, kept as log10 so none underflows.

    A pytree whose arrays pass through ``jit``/``vmap``/``lax.scan`` (``names`` is static); under
    ``vmap`` or stacked over steps every array gains leading axes ``(...)``.

    Attributes:
      names: the L layer names (as :func:`gradflow.gradients.named_norms`).
      grad_log10: ``(..., L)`` log10 ‖∂L/∂θ_l‖ (−inf for a zero gradient, NaN/+inf if bad).
      update_log10: ``(..., L)`` log10 ‖Δθ_l‖ of the update the optimiser made.
      param_log10: ``(..., L)`` log10 ‖θ_l‖ of the parameters the update is applied to.
      global_grad_log10: ``(...)`` log10 ‖∂L/∂θ‖ over all layers.
      nonfinite: ``(...)`` bool, whether any gradient or update entry is NaN or ±inf.
    """

    names: tuple[str, ...] = flax.struct.field(pytree_node=False)
    grad_log10: jax.Array
    update_log10: jax.Array
    param_log10: jax.Array
    global_grad_log10: jax.Array
    nonfinite: jax.Array

    @property
    def grad_norms(self) -> jax.Array:
        """``(..., L)`` ‖∂L/∂θ_l‖ (0 only for a zero gradient)."""
        return jnp.power(10.0, self.grad_log10)

    @property
    def param_norms(self) -> jax.Array:
        """``(..., L)`` ‖θ_l‖."""
        return jnp.power(10.0, self.param_log10)

    @property
    def update_ratios(self) -> jax.Array:
        """``(..., L)`` ‖Δθ_l‖ / ‖θ_l‖, as a difference of logs (exact where both are tiny);
        ‖Δθ_l‖ itself for a layer whose parameters are all zero."""
        ratio = jnp.power(10.0, self.update_log10 - self.param_log10)
        return jnp.where(self.param_log10 > -jnp.inf, ratio, jnp.power(10.0, self.update_log10))

    @property
    def global_grad_norm(self) -> jax.Array:
        """``(...)`` ‖∂L/∂θ‖."""
        return jnp.power(10.0, self.global_grad_log10)


def stats_from_norms(
    grads: _gradients.NamedNorms, updates: _gradients.NamedNorms, params: _gradients.NamedNorms
) -> GradStats:
    """:class:`GradStats` from the three :class:`~gradflow.gradients.NamedNorms` of one step.

    Args:
      grads, updates, params: norms with the same ``names`` (``log10`` of shape ``(..., L)``).

    Returns:
      :class:`GradStats`.

    Raises:
      ValueError: if the three do not name the same layers in the same order.
    """
    if not grads.names == updates.names == params.names:
        raise ValueError(
            "grads, updates and params must have the same layers in the same order, got "
            f"{grads.names}, {updates.names} and {params.names}"
        )
    return GradStats(
        names=grads.names,
        grad_log10=grads.log10,
        update_log10=updates.log10,
        param_log10=params.log10,
        global_grad_log10=grads.global_log10,
        nonfinite=bad_log10(grads.log10) | bad_log10(updates.log10),
    )


def grad_stats(
    grads,
    updates,
    params,
    *,
    stacked: Sequence[str] | None = None,
    order: Sequence[str] | None = None,
    depth: int = 1,
) -> GradStats:
    """Per-layer gradient norms, update/parameter ratios and parameter norms of one step.

    Jittable: call it inside your own ``jax.jit`` step after ``optimizer.update``. Norms are taken
    in log form (:func:`gradflow._numerics.log_norm`), so a float32 gradient of 1e-25 is not
    reported as 0.

    Args:
      grads: the gradient pytree (linen variables, ``nnx.State``, dicts, …).
      updates: the optimiser's updates, same structure as ``grads``.
      params: the parameters the updates are applied to, same structure.
      stacked: parameter groups stacked on a leading layer axis (see
        :func:`gradflow.gradients.named_norms`; None: ``hidden`` of gradflow's own models only).
      order: layer names in forward order, e.g. from
        ``gradflow.gradients.forward_order(loss_fn, params, batch)``; None: gradflow's default
        (``input, hidden, recurrent, readout``, then natural order).
      depth: number of path components in a layer name, >= 1.

    Returns:
      :class:`GradStats` with arrays of shape ``(L,)`` and ``()``.

    Raises:
      TypeError, ValueError: as :func:`gradflow.gradients.named_norms`.
    """

    def norms(tree):
        return _gradients.named_norms(tree, depth, stacked=stacked, order=order)

    return stats_from_norms(norms(grads), norms(updates), norms(params))
