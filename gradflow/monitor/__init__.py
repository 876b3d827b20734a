"""Gradient statistics for any training loop: per-layer norms, update ratios, non-finite flags.

:func:`grad_stats` is the jittable core: from the gradients, the optimiser's updates and the
parameters of one step it returns :class:`GradStats`: per-layer (named, forward-ordered when an
``order`` is given, log-scale) gradient norms, update/parameter ratios and parameter norms, the
global gradient norm and a non-finite flag. It is what :func:`gradflow.train.fit` records.

:func:`monitor` is an optax ``GradientTransformation`` that keeps the latest :class:`GradStats`
(every ``every`` steps) and the first non-finite step in its state, in any loop::

    tx = optax.chain(monitor(every=10), optax.adam(1e-3))  # or monitor(optax.adam(1e-3))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)     # or tx.init(params) in a jit loop
    ...
    record = read_monitor(optimizer)                        # host numbers, MonitorRecord

:func:`noise_scale` and :func:`gradient_noise_scale` estimate McCandlish et al.'s gradient
noise scale B_simple = tr Σ / |G|² from two batch sizes, per layer and global; the monitor does
it over windows of steps with ``noise_scale_batch=B``.
"""

from gradflow.monitor.noise import GradientNoiseScale, NoiseScale, gradient_noise_scale, noise_scale
from gradflow.monitor.record import MonitorRecord, find_monitor, read_monitor
from gradflow.monitor.stats import GradStats, grad_stats, stats_from_norms
from gradflow.monitor.transform import MonitorState, NoiseState, monitor

__all__ = [
    "GradStats",
    "grad_stats",
    "stats_from_norms",
    "monitor",
    "MonitorState",
    "NoiseState",
    "MonitorRecord",
    "read_monitor",
    "find_monitor",
    "NoiseScale",
    "GradientNoiseScale",
    "noise_scale",
    "gradient_noise_scale",
]
