"""Reading a :func:`~gradflow.monitor.monitor`'s state: :func:`find_monitor` (jittable) and
:func:`read_monitor` (host numbers, :class:`MonitorRecord`)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from gradflow import _checks
from gradflow.monitor._common import as_pure
from gradflow.monitor._noise import GradientNoiseScale, ema_noise_scale
from gradflow.monitor.transform import MonitorState

__all__ = ["MonitorRecord", "find_monitor", "read_monitor"]


class MonitorRecord(NamedTuple):
    """The latest record of a :func:`monitor`, as host (NumPy) values. L layers.

    Attributes:
      step: the 0-based step the record was taken at (−1: no step monitored yet; arrays NaN).
      count: number of updates the monitor has seen.
      names: the L layer names.
      grad_norms: ``(L,)`` ‖∂L/∂θ_l‖ (float64, so tiny norms do not underflow).
      grad_log10: ``(L,)`` log10 of ``grad_norms``.
      update_ratios: ``(L,)`` ‖Δθ_l‖/‖θ_l‖ of the update of step ``update_step`` (‖Δθ_l‖ for an
        all-zero layer); NaN when the monitor could not see it (chain mode).
      update_log10: ``(L,)`` log10 ‖Δθ_l‖ (NaN when unseen).
      update_step: the step whose update ``update_ratios`` describe (−1: none).
      param_norms: ``(L,)`` ‖θ_l‖ at step ``step``.
      global_grad_norm: ‖∂L/∂θ‖ at step ``step``.
      nonfinite: whether step ``step`` had a NaN/inf gradient (or update).
      first_nonfinite_step: the first step with a NaN/inf gradient or update, −1 if none.
      noise: :class:`GradientNoiseScale` (NumPy float64) with ``noise_scale_batch``, else None.
      noise_windows: number of completed noise-scale windows (0 without the option).
    """

    step: int
    count: int
    names: tuple[str, ...]
    grad_norms: np.ndarray
    grad_log10: np.ndarray
    update_ratios: np.ndarray
    update_log10: np.ndarray
    update_step: int
    param_norms: np.ndarray
    global_grad_norm: float
    nonfinite: bool
    first_nonfinite_step: int
    noise: GradientNoiseScale | None
    noise_windows: int


def find_monitor(opt_state, *, index: int = 0) -> MonitorState:
    """The ``index``-th :class:`MonitorState` (in tree order) inside an optimiser state.

    Searches nested ``optax.chain`` tuples, ``optax.MultiSteps``, ``inject_hyperparams`` and any
    other pytree state; accepts an ``nnx.Optimizer`` (or anything with an ``opt_state``
    attribute, e.g. a flax ``TrainState``) and unwraps nnx Variables. Jittable.

    Args:
      opt_state: an optax state, an ``nnx.Optimizer`` or its ``opt_state``.
      index: which monitor, when there are several (0: the outermost first).

    Returns:
      :class:`MonitorState` with plain array leaves.

    Raises:
      ValueError: if ``opt_state`` holds no monitor, or fewer than ``index + 1``.
    """
    index = _checks.positive_int("index", index, minimum=0)
    tree = opt_state
    if not isinstance(tree, MonitorState) and hasattr(tree, "opt_state"):
        tree = tree.opt_state

    def is_monitor(x):
        return isinstance(x, MonitorState)

    found = [x for x in jax.tree_util.tree_leaves(tree, is_leaf=is_monitor) if is_monitor(x)]
    if len(found) <= index:
        raise ValueError(
            f"opt_state holds {len(found)} monitor state(s), index {index} asked for: build the "
            "optimiser with gradflow's monitor(), e.g. optax.chain(monitor(), optax.adam(1e-3))"
        )
    return as_pure(found[index])


def read_monitor(opt_state, *, index: int = 0) -> MonitorRecord:
    """The latest record of a :func:`monitor`, as host values.

    Args:
      opt_state: an optax state holding a :class:`MonitorState` anywhere (see
        :func:`find_monitor`), an ``nnx.Optimizer``, or its ``opt_state``.
      index: which monitor, when there are several.

    Returns:
      :class:`MonitorRecord` (NumPy arrays ``(L,)``, float64).

    Raises:
      ValueError: if ``opt_state`` holds no monitor.

    Example::

        tx = optax.chain(gf.train.monitor(every=10), optax.adam(1e-3))
        ...
        rec = gf.train.read_monitor(opt_state)
        print(rec.step, dict(zip(rec.names, rec.grad_norms)))
    """
    state = find_monitor(opt_state, index=index)
    # Only the record crosses to the host, not the parameter-sized buffers.
    if state.noise is not None:
        state = state.replace(noise=state.noise.replace(grad_sum=None))
    state = jax.device_get(state.replace(inner_state=None, prev_params=None))
    s = state.stats
    f64 = lambda x: np.asarray(x, np.float64)
    grad_log10, update_log10 = f64(s.grad_log10), f64(s.update_log10)
    applied_log10 = f64(state.update_param_log10)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        # As GradStats.update_ratios: ‖Δθ‖ itself for a layer whose parameters are all zero.
        ratio_log10 = np.where(applied_log10 > -np.inf, update_log10 - applied_log10, update_log10)
        if state.noise is not None:
            state = state.replace(
                noise=state.noise.replace(
                    log_ema_small=f64(state.noise.log_ema_small),
                    log_ema_big=f64(state.noise.log_ema_big),
                    windows=np.asarray(state.noise.windows),
                )
            )
        noise = ema_noise_scale(state, np)
    return MonitorRecord(
        step=int(state.record_step),
        count=int(state.count),
        names=s.names,
        grad_norms=10.0**grad_log10,
        grad_log10=grad_log10,
        update_ratios=10.0**ratio_log10,
        update_log10=update_log10,
        update_step=int(state.update_step),
        param_norms=10.0 ** f64(s.param_log10),
        global_grad_norm=float(10.0 ** f64(s.global_grad_log10)),
        nonfinite=bool(s.nonfinite),
        first_nonfinite_step=int(state.first_nonfinite_step),
        noise=noise,
        noise_windows=0 if state.noise is None else int(state.noise.windows),
    )
