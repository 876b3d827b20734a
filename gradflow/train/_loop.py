"""The compiled training step (package-private), shared by :func:`make_fit` and :func:`fit`.

:func:`build_loop` checks the arguments once and returns the step; :func:`single_scan` runs it as
one ``lax.scan`` over stacked batches; the segmented loop of ``fit`` (``_stream``) runs the very
same step, so both give bitwise the same parameters and :class:`History`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradflow import gradients as _gradients
from gradflow import monitor as _monitor
from gradflow.train._batches import filled, num_steps
from gradflow.train.results import Divergence, FitResult, History, LayerNames

__all__ = ["LossFn", "Loop", "build_loop", "initial_carry", "make_history", "single_scan"]

LossFn = Callable[[Any, Any], jax.Array]


def _tree_where(cond, a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.where(cond, x, y), a, b)


class Loop(NamedTuple):
    """The pieces of the training loop that :func:`make_fit`'s single scan and :func:`fit`'s
    segmented scan share, so that both run the very same step."""

    optimizer: optax.GradientTransformation
    monitor_every: int
    stacked: Sequence[str] | None
    eval_fn: Callable[[Any], Any] | None
    loss_fn: LossFn
    # step(order, carry, batch) -> (carry, (loss, record)); carry = (params, state, div, t)
    step: Callable[..., Any]


def build_loop(
    loss_fn, optimizer, monitor_every, max_grad_norm, state_grad_fn, eval_fn, stacked
) -> Loop:
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
        raise TypeError(f"optimizer must be an optax GradientTransformation, got {optimizer!r}")
    monitor_every = int(monitor_every)
    if monitor_every < 1:
        raise ValueError(f"monitor_every must be >= 1, got {monitor_every}")
    if max_grad_norm is not None and not float(max_grad_norm) > 0:
        raise ValueError(f"max_grad_norm must be positive or None, got {max_grad_norm!r}")
    if state_grad_fn is not None and not callable(state_grad_fn):
        raise TypeError(f"state_grad_fn must be callable or None, got {state_grad_fn!r}")
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable or None, got {eval_fn!r}")
    limit = np.inf if max_grad_norm is None else float(max_grad_norm)
    value_and_grad = jax.value_and_grad(loss_fn)

    def train_step(order, carry, batch):
        params, opt_state, div, t = carry

        def layer_norms(tree):
            # Log form: a layer whose gradient is 1e-25 in float32 is not reported as 0. The
            # same call as monitor.grad_stats makes, so fit and a user's own loop agree.
            return _gradients.named_norms(tree, 1, stacked=stacked, order=order)

        def live(_):
            loss, grads = value_and_grad(params, batch)
            g_norms = layer_norms(grads)
            g = g_norms.values
            bad = ~jnp.isfinite(g) | (g > limit)
            updates, new_state = optimizer.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            u_norms = layer_norms(updates)
            u = u_norms.values
            bad_now = ~jnp.isfinite(loss) | jnp.any(bad) | ~jnp.all(jnp.isfinite(u))
            # Back-propagation visits the readout first: the started-layer is the last bad index.
            layer = jnp.max(jnp.where(bad, jnp.arange(g.shape[0], dtype=jnp.int32), -1))
            # A forward overflow poisons every gradient alike: no layer can be singled out, and
            # naming the readout (the last bad index) would point at the wrong end.
            layer = jnp.where(~jnp.isfinite(loss) & jnp.all(bad), -1, layer)
            return new_params, new_state, (loss, bad_now, layer, g_norms, u_norms)

        def dead(_):
            # Once diverged, nothing is computed: the record is NaN and the state is frozen.
            return params, opt_state, filled(jax.eval_shape(live, None)[2], jnp.nan)

        new_params, new_state, (loss, bad_now, layer, g_norms, u_norms) = jax.lax.cond(
            div.diverged, dead, live, None
        )
        first = ~div.diverged & bad_now
        ok = ~div.diverged & ~bad_now

        def monitor(_):
            stats = _monitor.stats_from_norms(g_norms, u_norms, layer_norms(params))
            # History's plain-number columns are derived here, inside the step, so that a
            # single scan and a segmented one produce them with the same operations.
            rec = {
                "stats": stats,
                "g": stats.grad_norms,
                "ratio": stats.update_ratios,
                "p": stats.param_norms,
                "gnorm": stats.global_grad_norm,
            }
            if state_grad_fn is not None:
                rec["state"] = state_grad_fn(params, batch)
            if eval_fn is not None:
                rec["metrics"] = eval_fn(params)
            return rec

        def skip(_):
            return filled(jax.eval_shape(monitor, None), 0)

        # t is never batched (it does not depend on the data), so under vmap this stays a cond
        # and the monitored quantities cost nothing on the other steps.
        rec = jax.lax.cond(t % monitor_every == 0, monitor, skip, None)
        keep = ~div.diverged | first  # the divergent step's own record is kept, later ones NaN

        def mask(x):
            return jnp.where(keep, x, jnp.nan) if jnp.issubdtype(x.dtype, jnp.inexact) else x

        rec = jax.tree_util.tree_map(mask, rec)
        params = _tree_where(ok, new_params, params)
        opt_state = _tree_where(ok, new_state, opt_state)
        div = Divergence(
            diverged=div.diverged | bad_now,
            step=jnp.where(first, t, div.step).astype(jnp.int32),
            layer=jnp.where(first, layer, div.layer).astype(jnp.int32),
            loss_finite=jnp.where(first, jnp.isfinite(loss), div.loss_finite),
            layer_grad_norms=jnp.where(first, g_norms.values, div.layer_grad_norms),
        )
        return (params, opt_state, div, t + 1), (jnp.where(keep, loss, jnp.nan), rec)

    return Loop(optimizer, monitor_every, stacked, eval_fn, loss_fn, train_step)


def initial_carry(loop: Loop, params, opt_state):
    if opt_state is None:
        opt_state = loop.optimizer.init(params)
    n_layers = len(
        jax.eval_shape(lambda p: _gradients.layer_norms(p, stacked=loop.stacked), params)
    )
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
    div = Divergence(
        diverged=jnp.array(False),
        step=jnp.array(-1, jnp.int32),
        layer=jnp.array(-1, jnp.int32),
        loss_finite=jnp.array(True),
        layer_grad_norms=jnp.zeros((n_layers,), dtype),
    )
    return (params, opt_state, div, jnp.array(0, jnp.int32))


def make_history(losses, rec, steps) -> History:
    """:class:`History` from the per-step losses and the records of the monitored steps."""
    stats = rec["stats"]
    return History(
        loss=losses,
        steps=steps,
        layer_grad_norms=rec["g"],
        update_ratios=rec["ratio"],
        param_norms=rec["p"],
        global_grad_norm=rec["gnorm"],
        state_grad_norms=rec.get("state"),
        metrics=rec.get("metrics"),
        layer_grad_log10_norms=stats.grad_log10,
        layer_names=LayerNames(stats.names),
    )


def single_scan(loop: Loop, params, batches, opt_state):
    """The whole run as one ``lax.scan``: ``(FitResult, records of the monitored steps)``."""
    s = num_steps(batches)
    carry = initial_carry(loop, params, opt_state)
    # The layers in the order the forward pass uses them, as gradients.layer_grad_norms.
    order = _gradients.forward_order(loop.loss_fn, params, jax.tree.map(lambda a: a[0], batches))
    step = functools.partial(loop.step, order)
    carry, (losses, rec) = jax.lax.scan(step, carry, batches, length=s)
    rec = jax.tree_util.tree_map(lambda x: x[:: loop.monitor_every], rec)
    params, opt_state, div, _ = carry
    history = make_history(losses, rec, jnp.arange(0, s, loop.monitor_every))
    final = loop.eval_fn(params) if loop.eval_fn is not None else None
    return FitResult(params, opt_state, history, div, final), rec
