"""The training loops: :func:`make_fit` (pure, ``vmap``-able) and :func:`fit` (streams, raises).

Both run the same compiled step (``_loop``): :func:`make_fit` as one ``lax.scan`` over stacked
batches, reporting a divergence in :class:`~gradflow.train.results.Divergence`; :func:`fit`
also takes an iterator or a ``batch_fn``, runs in segments, shows progress, calls back, and
raises :class:`~gradflow.train.results.DivergenceError`.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax

from gradflow import _checks
from gradflow.train._batches import check_key, num_steps, source_kind
from gradflow.train._loop import LossFn, build_loop, single_scan
from gradflow.train._stream import DEFAULT_SEGMENT, Display, run_segments, to_host
from gradflow.train.results import DivergenceError, FitResult, StepStats

__all__ = ["fit", "make_fit"]


def make_fit(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    monitor_every: int = 1,
    max_grad_norm: float | None = None,
    state_grad_fn: Callable[[Any, Any], jax.Array] | None = None,
    eval_fn: Callable[[Any], Any] | None = None,
    stacked: Sequence[str] | None = None,
) -> Callable[..., FitResult]:
    """The pure training loop behind :func:`fit`: ``run(params, batches, opt_state=None)``.

    It never raises on divergence (it reports it in ``FitResult.divergence``), so it can be
    ``jit``-ed and ``vmap``-ed over seeds, data and traced optimiser hyper-parameters. The whole
    run is one ``lax.scan`` over a stacked ``batches`` pytree (leading axis S).

    Args: as :func:`fit`.

    Returns:
      ``run(params, batches, opt_state=None) -> FitResult``.
    """
    loop = build_loop(
        loss_fn, optimizer, monitor_every, max_grad_norm, state_grad_fn, eval_fn, stacked
    )

    def run(params, batches, opt_state=None) -> FitResult:
        return single_scan(loop, params, batches, opt_state)[0]

    return run


def _optional_int(name: str, value) -> int | None:
    return None if value is None else _checks.positive_int(name, value)


def _divergence_error(result: FitResult) -> DivergenceError:
    div = result.divergence
    step, layer, finite = int(div.step), int(div.layer), bool(div.loss_finite)
    norms = np.asarray(div.layer_grad_norms)
    what = (
        "loss is finite"
        if finite
        else "loss itself is non-finite (the forward pass overflowed, or that step's batch holds "
        "NaN or inf)"
    )
    where = (
        f"first in back-propagation order at layer {layer} (0 = input layer, "
        f"{norms.shape[0] - 1} = readout)"
        if layer >= 0
        else "no single layer: every gradient is non-finite"
        if not finite
        else "no layer's gradient norm was bad"
    )
    return DivergenceError(
        f"training diverged at step {step}: {what}; non-finite or exploding gradient "
        f"{where}; per-layer gradient norms there: {np.array2string(norms, precision=3)}. "
        "The returned parameters are those before that step (see .result).",
        step=step,
        layer=layer,
        loss_finite=finite,
        result=result,
    )


def fit(
    loss_fn: LossFn,
    params,
    batches,
    optimizer: optax.GradientTransformation,
    *,
    monitor_every: int = 1,
    max_grad_norm: float | None = None,
    state_grad_fn: Callable[[Any, Any], jax.Array] | None = None,
    eval_fn: Callable[[Any], Any] | None = None,
    opt_state=None,
    stacked: Sequence[str] | None = None,
    jit: bool = True,
    steps: int | None = None,
    key: jax.Array | None = None,
    segment: int | None = None,
    progress: bool | None = None,
    callback: Callable[[int, StepStats], Any] | None = None,
) -> FitResult:
    """Trains ``params`` with an optax optimiser, monitoring the gradients.

    Each step computes the loss and gradient of one batch, checks them for divergence, applies
    the optimiser's update and, every ``monitor_every`` steps, records the per-layer statistics
    of :func:`gradflow.monitor.stats_from_norms` (the numbers ``monitor.grad_stats`` gives a
    hand-written loop, from the same code). At the first step whose loss is non-finite, or whose
    gradient has a non-finite layer norm (or one above ``max_grad_norm``), or whose update is
    non-finite, the update is skipped and training stops; :class:`DivergenceError` is then raised
    with the step and the layer.

    Batches come in one of three forms:

    - a **stacked** pytree whose leaves have a leading axis of S steps (step t gets the t-th
      slice). Without ``segment`` the whole run is one jitted ``lax.scan``, as in
      :func:`make_fit`. A list or tuple is a pytree, hence stacked: pass ``iter(list_of_batches)``
      to stream one.
    - an **iterable** that is not a pytree container (an iterator, a generator, a data loader)
      yielding one batch pytree per step, every one with the same structure, shapes and dtypes;
      it runs until exhausted or ``steps``.
    - a **batch_fn** ``batch_fn(key, step) -> batch``, jittable (``step`` is a traced int32
      scalar), called inside the compiled loop with ``jax.random.fold_in(key, step)``, so no
      batch crosses from the host; needs ``steps`` and ``key``.

    Streamed batches (and stacked ones with ``segment``) run in segments of ``segment`` steps:
    one compiled ``lax.scan`` function serves every segment (a short last segment is padded and
    the padding skipped), and after each segment only its losses and monitored records come to
    the host, so memory does not grow with the number of steps beyond the :class:`History`. The
    same data gives bitwise the same parameters and History whatever the form or the segment.
    After a divergence no further batch is pulled; the History then ends with the segment in
    which it diverged (its later steps NaN), where a single scan records all S steps.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: initial parameters (as from ``model.init``): any pytree of arrays; layers are
        named and ordered as by ``gradients.layer_grad_norms``.
      batches: a stacked pytree (leading axis S), an iterable of batch pytrees, or
        ``batch_fn(key, step)`` (see above).
      optimizer: any optax ``GradientTransformation`` (see :func:`sgd`, :func:`adam`,
        :func:`rprop`, :func:`with_clipping`), also one whose state holds a gradient monitor.
      monitor_every: record the monitored quantities every this many steps (the loss is
        recorded at every step).
      max_grad_norm: treat a layer gradient norm above this as an explosion (None: only
        non-finite values count). Clipping does not change this check: it sees raw gradients.
      state_grad_fn: optional ``(params, batch) -> (K + 1,)`` state-gradient norms recorded at
        monitored steps, e.g. :func:`recurrent_state_grad_fn`.
      eval_fn: optional ``params -> pytree`` of metrics recorded at monitored steps and at the end.
      opt_state: optimiser state to resume from (default ``optimizer.init(params)``).
      stacked: parameter groups stacked on a leading layer axis (see ``gradients.named_norms``;
        None: ``hidden`` of gradflow's own models only).
      jit: whether to ``jax.jit`` the loop (False is for debugging).
      steps: the number of steps: required with a ``batch_fn``; with an iterable, stop after this
        many (None: when it is exhausted); with stacked batches, the first ``steps`` ≤ S.
      key: the PRNG key of a ``batch_fn`` (only with one).
      segment: steps per compiled segment, >= 1 (default: 256 for an iterable or a
        ``batch_fn``; None with stacked batches: one scan over all S).
      progress: show a progress bar over steps with the loss and the global gradient norm on
        stderr (rich), updated after each segment; None: only when stderr is a terminal.
      callback: ``callback(step, stats)``, called on the host after each segment (after the whole
        scan without segments), once for every monitored step in it, in order, up to and
        including a divergent step; ``stats`` is a :class:`StepStats` of NumPy values. Its return
        value is ignored; an exception it raises stops training.

    Returns:
      :class:`FitResult` with ``.params``, ``.opt_state``, ``.history``, ``.divergence`` and
      ``.final_metrics``.

    Raises:
      DivergenceError: with ``.step``, ``.layer`` and ``.result`` (the run up to that step).
      ValueError, TypeError: for malformed arguments (before anything is traced), and for an
        iterable whose batches change structure, shape or dtype (naming the step).
    """
    loop = build_loop(
        loss_fn, optimizer, monitor_every, max_grad_norm, state_grad_fn, eval_fn, stacked
    )
    steps = _optional_int("steps", steps)
    segment = _optional_int("segment", segment)
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None, got {progress!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable(step, stats) or None, got {callback!r}")
    kind = source_kind(batches)
    if kind == "fn":
        if steps is None:
            raise ValueError("steps is required with a batch_fn (batches=callable)")
        check_key(key)
    elif key is not None:
        raise ValueError("key is only used with a batch_fn (batches=callable); got a key and data")
    total = steps
    if kind == "stacked":
        s = num_steps(batches)  # validate before tracing
        # NaN in the data is reported as bad data (an inf may be a deliberate overflow test).
        _checks.check_finite("batches", batches, allow_inf=True)
        if steps is not None and steps > s:
            raise ValueError(f"steps must be <= S = {s} for stacked batches, got {steps}")
        total = s if steps is None else steps
        if total < s:
            batches = jax.tree_util.tree_map(lambda a: a[:total], batches)
    elif segment is None:
        segment = DEFAULT_SEGMENT
    if progress is None:
        progress = sys.stderr.isatty()

    display = Display(progress, total, callback)
    try:
        if segment is None:
            run = functools.partial(single_scan, loop)
            result, rec = (jax.jit(run) if jit else run)(params, batches, opt_state)
            if progress or callback is not None:
                display.segment(
                    0,
                    np.asarray(result.history.loss),
                    np.asarray(result.history.steps),
                    to_host(rec),
                    to_host(result.divergence),
                )
        else:
            result = run_segments(
                loop,
                params,
                opt_state,
                kind,
                batches,
                steps=total,
                key=key,
                length=segment if total is None else min(segment, total),
                jit=jit,
                display=display,
            )
    finally:
        display.close()
    if bool(result.divergence.diverged):
        raise _divergence_error(result)
    return result
