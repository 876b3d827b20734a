"""Pascanu et al. 2013's figure (b): gradient descent on the cliff, with and without clipping.

The cliff is the one-neuron loss L(b) = (x_T(b) − target)² of
:func:`gradflow.dynamics.cliff_loss`; its wall is where |dL/db| peaks (Pascanu §3.3, Fig. 6).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradflow import dynamics

# Figure (b) setting: the cliff model of gradflow.dynamics.cliff_loss (w = 5, x_0 = 0.5, T = 20,
# target 1 between the branches) and the plotted window of b.
CLIFF = {"w": 5.0, "x0": 0.5, "steps": 20, "target": 1.0}
B_RANGE = (-4.0, -1.0)


class Descent(NamedTuple):
    """A gradient-descent run.

    Attributes:
      params: pytree like the start with a leading axis ``S + 1`` (start included).
      loss: array ``(S + 1,)``, the loss at each iterate.
      grad_norm: array ``(S,)``, the global gradient norm before clipping at each step.
    """

    params: object
    loss: jax.Array
    grad_norm: jax.Array


def descend(loss_fn, params0, *, learning_rate: float, steps: int, clip_norm=None) -> Descent:
    """Plain SGD on ``loss_fn``, optionally after ``optax.clip_by_global_norm(clip_norm)``.

    Clipping rescales the gradient g to clip_norm · g/‖g‖ when ‖g‖ > clip_norm (Pascanu et al.
    2013, §3.2, Algorithm 1), so no step is longer than learning_rate · clip_norm.

    Args:
      loss_fn: ``params -> scalar``.
      params0: starting parameters (any pytree).
      learning_rate: SGD step size.
      steps: number of updates S.
      clip_norm: None for no clipping.

    Returns:
      :class:`Descent`.
    """
    opt = optax.sgd(learning_rate)
    if clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(clip_norm), opt)
    value_and_grad = jax.value_and_grad(loss_fn)

    def body(carry, _):
        p, state = carry
        loss, g = value_and_grad(p)
        updates, state = opt.update(g, state, p)
        return (optax.apply_updates(p, updates), state), (p, loss, optax.tree.norm(g))

    (p_last, _), (ps, losses, norms) = jax.lax.scan(
        body, (params0, opt.init(params0)), None, length=steps
    )
    params = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b[None]]), ps, p_last)
    return Descent(params, jnp.concatenate([losses, loss_fn(p_last)[None]]), norms)


def cliff_wall(b_values=None, **cliff) -> float:
    """b at which |dL/db| of the cliff loss peaks (on a fine grid over :data:`B_RANGE`)."""
    cliff = {**CLIFF, **cliff}
    if b_values is None:
        b_values = jnp.linspace(*B_RANGE, 30_001)
    land = dynamics.cliff_landscape(b_values, **cliff)
    return float(land.b[jnp.argmax(jnp.abs(land.grad))])


class ClippingResult(NamedTuple):
    """Descents from the same starts at the same learning rate, unclipped and clipped.

    Attributes:
      b_unclipped, b_clipped: arrays ``(R, S + 1)``, b along each run.
      loss_unclipped, loss_clipped: arrays ``(R, S + 1)``.
      wall: the b of the wall (steepest point).
    """

    b_unclipped: np.ndarray
    b_clipped: np.ndarray
    loss_unclipped: np.ndarray
    loss_clipped: np.ndarray
    wall: float


def clipping_experiment(
    starts, *, learning_rate: float = 0.01, steps: int = 200, clip_norm: float = 1.0, **cliff
) -> ClippingResult:
    """Gradient descent on the 1-D cliff loss L(b) from each start, with and without clipping.

    Args:
      starts: array ``(R,)`` of initial b (left of the wall).
      learning_rate, steps, clip_norm: see :func:`descend`.
      **cliff: overrides of :data:`CLIFF` (w, x0, steps, target) for the loss.

    Returns:
      :class:`ClippingResult`.
    """
    cliff = {**CLIFF, **cliff}
    w = cliff.pop("w")
    loss = lambda b: dynamics.cliff_loss(w, b, **cliff)
    runs = {}
    for clip in (None, clip_norm):
        run = jax.jit(
            jax.vmap(
                lambda b0, clip=clip: descend(
                    loss, b0, learning_rate=learning_rate, steps=steps, clip_norm=clip
                )
            )
        )
        d = run(jnp.asarray(starts, jnp.float32))
        runs[clip] = (np.asarray(d.params), np.asarray(d.loss))
    (b_u, loss_u), (b_c, loss_c) = runs[None], runs[clip_norm]
    return ClippingResult(b_u, b_c, loss_u, loss_c, cliff_wall(w=w, **cliff))


def clipping_stats(result: ClippingResult, b_range=B_RANGE) -> dict:
    """Per method: the fraction of runs that leave ``b_range``, that cross the wall, the largest
    single step, and the median final loss."""
    lo, hi = b_range
    out = {}
    for name, b, loss in (
        ("unclipped", result.b_unclipped, result.loss_unclipped),
        ("clipped", result.b_clipped, result.loss_clipped),
    ):
        finite = np.where(np.isfinite(b), b, np.inf)
        out[name] = {
            "fraction_left_range": float(np.mean(np.any((finite < lo) | (finite > hi), axis=1))),
            "fraction_crossed_wall": float(np.mean(np.any(finite > result.wall, axis=1))),
            "max_step": float(np.max(np.abs(np.diff(finite, axis=1)))),
            "max_abs_b": float(np.max(np.abs(finite))),
            "median_final_loss": float(np.median(loss[:, -1])),
            "median_initial_loss": float(np.median(loss[:, 0])),
        }
    return out


def _cliff_surface(ws, bs, **cliff):
    cliff = {**CLIFF, **cliff}
    cliff.pop("w")
    f = jax.vmap(jax.vmap(lambda w, b: dynamics.cliff_loss(w, b, **cliff), (None, 0)), (0, None))
    return np.asarray(f(jnp.asarray(ws), jnp.asarray(bs)))


def _descents_2d(starts, learning_rate, steps, clip_norm, **cliff):
    cliff = {**CLIFF, **cliff}
    cliff.pop("w")
    loss = lambda p: dynamics.cliff_loss(p[0], p[1], **cliff)
    out = {}
    for clip in (None, clip_norm):
        run = jax.jit(
            jax.vmap(
                lambda p0, clip=clip: (
                    descend(
                        loss, p0, learning_rate=learning_rate, steps=steps, clip_norm=clip
                    ).params
                )
            )
        )
        out["clipped" if clip else "unclipped"] = np.asarray(run(jnp.asarray(starts, jnp.float32)))
    return out
