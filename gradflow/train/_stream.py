"""The segmented loop of :func:`fit` (package-private): streamed batches, progress, callback.

Streamed batches (an iterator or a ``batch_fn``), and stacked ones with ``segment``, run in
segments of one compiled ``lax.scan`` each, so memory does not grow with the number of steps;
after each segment its losses and monitored records come to the host, feed the progress bar and
the callback, and are appended to the :class:`History`.
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np

from gradflow import gradients as _gradients
from gradflow.train._batches import filled, index, pull
from gradflow.train._loop import Loop, initial_carry, make_history
from gradflow.train.results import FitResult, StepStats

__all__ = ["DEFAULT_SEGMENT", "segment_fn", "Display", "to_host", "run_segments"]


# Steps per compiled segment for streamed batches: large enough that the per-segment host work
# (stacking the batches, one device round trip) is amortised, small enough that a segment's
# per-step outputs and stacked batches stay small.
DEFAULT_SEGMENT = 256


def segment_fn(loop: Loop, order, length: int, get_batch, jit: bool):
    """``seg(carry, source, n_valid) -> (carry, (losses, records))``: ``length`` steps of the
    loop, batch ``get_batch(source, i, t)`` at position i (global step t); positions
    ``i >= n_valid`` are padding: a ``lax.cond`` skips them, leaving the carry untouched, so one
    compiled function serves every segment, the short last one included."""

    def seg(carry, source, n_valid):
        def body(c, i):
            def real(_):
                return loop.step(order, c, get_batch(source, i, c[3]))

            def pad(_):
                return c, filled(jax.eval_shape(real, None)[1], 0)

            return jax.lax.cond(i < n_valid, real, pad, None)

        return jax.lax.scan(body, carry, jnp.arange(length, dtype=jnp.int32))

    return jax.jit(seg) if jit else seg


class Display:
    """The progress bar (rich, on stderr) and the callback, fed once per segment."""

    def __init__(self, progress: bool, total: int | None, callback):
        self.callback = callback
        self.bar = None
        self.loss = self.gnorm = "…"
        if not progress:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("fit"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("‖∇‖ {task.fields[gnorm]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
        )
        self.task = self.bar.add_task("fit", total=total, loss=self.loss, gnorm=self.gnorm)
        self.bar.start()

    def segment(self, t0: int, losses: np.ndarray, steps: np.ndarray, rec, div) -> None:
        """One segment done: ``losses (n,)`` of steps ``t0 … t0 + n − 1``; ``steps (m,)`` and
        ``rec`` (host arrays with leading axis m) of its monitored steps; ``div`` the carry's
        :class:`Divergence` after it."""
        last = int(div.step) if bool(div.diverged) else None
        if self.callback is not None:
            for j, step in enumerate(steps.tolist()):
                if last is not None and step > last:
                    break  # later records are NaN placeholders: no step ran there
                row = jax.tree_util.tree_map(lambda x, j=j: x[j], rec)
                stats = StepStats(
                    losses[step - t0], row["stats"], row.get("state"), row.get("metrics")
                )
                self.callback(step, stats)
        if self.bar is not None:
            finite = losses[np.isfinite(losses)]
            if finite.size:
                self.loss = f"{finite[-1]:.4g}"
            norms = rec["gnorm"][np.isfinite(rec["gnorm"])]
            if norms.size:
                self.gnorm = f"{norms[-1]:.3g}"
            self.bar.update(self.task, advance=losses.shape[0], loss=self.loss, gnorm=self.gnorm)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def to_host(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def run_segments(loop: Loop, params, opt_state, kind, batches, *, steps, key, length, jit, display):
    """:func:`fit`'s segmented loop: ``length`` steps per call of one compiled segment function;
    only the losses and the monitored records come back to the host, so memory does not grow
    with the number of steps beyond the :class:`History` itself."""
    signature = None
    if kind == "iter":
        iterator = iter(batches)
        want = length if steps is None else min(length, steps)
        count, source, signature = pull(iterator, want, length, None, 0)
        if not count:
            raise ValueError("batches: the iterator yielded no batch")
        first = jax.tree_util.tree_map(lambda a: a[0], source)
        get_batch = lambda src, i, t: index(src, i)  # noqa: E731
    elif kind == "fn":
        batch_fn = batches
        try:
            shapes = jax.eval_shape(batch_fn, jax.random.fold_in(key, 0), jnp.int32(0))
        except jax.errors.JAXTypeError as err:
            raise TypeError(
                "batches: batch_fn(key, step) must be jittable (step is a traced int32 scalar)"
            ) from err
        if not jax.tree_util.tree_leaves(shapes):
            raise ValueError(f"batches: batch_fn(key, step) returned no arrays: {shapes!r}")
        # forward_order only traces the loss: zeros of the right shapes name the same layers.
        first = filled(shapes, 0)

        def get_batch(k, i, t):
            # The barrier keeps XLA from fusing batch_fn's arithmetic into the step's (e.g. a
            # multiply-add across the boundary), so the batch is what jax.jit(batch_fn) gives.
            return jax.lax.optimization_barrier(batch_fn(jax.random.fold_in(k, t), t))
    else:
        batches = jax.tree_util.tree_map(jnp.asarray, batches)
        first = jax.tree_util.tree_map(lambda a: a[0], batches)
        get_batch = lambda src, i, t: index(src, t)  # noqa: E731

    order = _gradients.forward_order(loop.loss_fn, params, first)
    init = functools.partial(initial_carry, loop)
    carry = (jax.jit(init) if jit else init)(params, opt_state)
    seg = segment_fn(loop, order, length, get_batch, jit)
    every = loop.monitor_every
    t0, losses, records = 0, [], []
    while True:
        want = length if steps is None else min(length, steps - t0)
        if want <= 0:
            break
        if kind == "iter":
            if t0:  # the first segment was pulled above, to name the layers
                count, source, signature = pull(iterator, want, length, signature, t0)
        elif kind == "fn":
            count, source = want, key
        else:
            count, source = want, batches
        if not count:
            break
        carry, (loss, rec) = seg(carry, source, np.int32(count))
        loss = np.asarray(loss)[:count]
        monitored = np.arange((-t0) % every, count, every)
        rec = jax.tree_util.tree_map(lambda x, m=monitored: np.asarray(x)[m], rec)
        div = to_host(carry[2])
        losses.append(loss)
        records.append(rec)
        display.segment(t0, loss, t0 + monitored, rec, div)
        t0 += count
        if bool(div.diverged) or count < want:
            break
        if kind == "iter":
            source = None  # let the segment's batches go before pulling the next ones

    rec = jax.tree_util.tree_map(lambda *xs: jnp.asarray(np.concatenate(xs)), *records)
    history = make_history(jnp.asarray(np.concatenate(losses)), rec, jnp.arange(0, t0, every))
    params, opt_state, div, _ = carry
    final = None
    if loop.eval_fn is not None:
        final = (jax.jit(loop.eval_fn) if jit else loop.eval_fn)(params)
    return FitResult(params, opt_state, history, div, final)
