"""What a training run returns: the recorded :class:`History`, :class:`Divergence`, results.

:class:`History` holds the per-step losses and the per-layer records of the monitored steps,
:class:`Divergence` where (step, layer) a run blew up, :class:`FitResult` the whole output of
:func:`gradflow.train.fit` / :func:`gradflow.train.make_fit`, and :class:`StepStats` one monitored
step as ``fit``'s ``callback`` receives it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from gradflow import monitor as _monitor

__all__ = [
    "LayerNames",
    "History",
    "Divergence",
    "FitResult",
    "DivergenceError",
    "StepStats",
]


class LayerNames(tuple):
    """The L layer names of a :class:`History`'s columns, input layer first: a tuple of str.

    A pytree with no leaves (the names are static metadata, like ``GradStats.names``), so a
    :class:`History` that holds it still passes through ``jit``, ``vmap``, ``lax.scan`` and
    ``jax.device_get``; ``jax.tree.map`` over a History keeps it as it is.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"LayerNames({tuple(self)!r})"


jax.tree_util.register_pytree_node(
    LayerNames, lambda names: ((), tuple(names)), lambda names, _: LayerNames(names)
)


class History(NamedTuple):
    """What :func:`fit` recorded. S steps, M = ⌈S / monitor_every⌉ monitored steps, L layers.

    Monitored quantities are measured at the parameters *before* that step's update, with that
    step's batch, so ``layer_grad_norms[m]`` equals ``gradients.layer_grad_norms(loss_fn,
    params_at(steps[m]), batches[steps[m]])``. Entries from the divergent step on are NaN.

    Attributes:
      loss: ``(S,)`` the loss at every step (NaN after a divergence).
      steps: ``(M,)`` int, the step of each monitored record (0, E, 2E, … for E = monitor_every).
      layer_grad_norms: ``(M, L)`` ‖∂L/∂θ_l‖, layers in forward order, input layer first (as
        ``gradients.layer_grad_norms``; computed in log form, so 0 only for a zero gradient).
      update_ratios: ``(M, L)`` ‖Δθ_l‖ / ‖θ_l‖ for the update the optimiser made at that step.
      param_norms: ``(M, L)`` ‖θ_l‖.
      global_grad_norm: ``(M,)`` ‖∂L/∂θ‖ (before any clipping).
      state_grad_norms: ``(M, K + 1)`` ‖∂L/∂h_k‖ from ``state_grad_fn``, or None.
      metrics: ``eval_fn(params)`` stacked over monitored steps (leaves ``(M, …)``), or None.
      layer_grad_log10_norms: ``(M, L)`` log10 ‖∂L/∂θ_l‖, finite where ``layer_grad_norms``
        would underflow (−inf for a zero gradient).
      layer_names: the L layer names of the ``(M, L)`` columns (:class:`LayerNames`, static, so
        not an array leaf), or None for a History built without them.
    """

    loss: jax.Array
    steps: jax.Array
    layer_grad_norms: jax.Array
    update_ratios: jax.Array
    param_norms: jax.Array
    global_grad_norm: jax.Array
    state_grad_norms: jax.Array | None = None
    metrics: Any = None
    layer_grad_log10_norms: jax.Array | None = None
    layer_names: LayerNames | None = None

    def to_dataframe(self):
        """The monitored steps as a ``pandas.DataFrame``: one row per monitored step.

        The index is ``step`` (``steps``); the columns are ``loss`` (the loss at that step),
        ``global_grad_norm``, then for every layer ``name`` (from ``layer_names``; its index
        ``0 … L−1`` if None) ``grad_norm/<name>``, ``grad_log10_norm/<name>``,
        ``update_ratio/<name>`` and ``param_norm/<name>``; ``state_grad_norm/<k>`` for k = 0 … K
        with ``state_grad_norms``; and ``metrics/<path>`` for every leaf of ``metrics``
        (``metrics/<path>/<i>`` for the entries of a non-scalar one). Values are the History's
        own arrays (same dtype, NaN after a divergence). Select a family with
        ``df.filter(like="grad_norm/")``.

        Returns:
          ``pandas.DataFrame`` of M rows.

        Raises:
          ImportError: without pandas (``pip install 'gradflow[xarray]'``).
          ValueError: for a History with extra leading axes (from ``vmap``): index one run
            first, e.g. ``jax.tree.map(lambda a: a[0], history)``.
        """
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "History.to_dataframe needs pandas: pip install 'gradflow[xarray]'"
            ) from err
        steps = np.asarray(self.steps)
        if steps.ndim != 1:
            raise ValueError(
                f"to_dataframe takes one run's History, got steps of shape {steps.shape} (a "
                "vmapped History?): index one run first, e.g. jax.tree.map(lambda a: a[0], h)"
            )
        grads = np.asarray(self.layer_grad_norms)
        names = self.layer_names
        if names is None:
            names = [str(i) for i in range(grads.shape[-1])]
        columns = {
            "loss": np.asarray(self.loss)[steps],
            "global_grad_norm": np.asarray(self.global_grad_norm),
        }
        per_layer = [
            ("grad_norm", grads),
            ("grad_log10_norm", self.layer_grad_log10_norms),
            ("update_ratio", self.update_ratios),
            ("param_norm", self.param_norms),
        ]
        for prefix, values in per_layer:
            if values is not None:
                values = np.asarray(values)
                columns.update({f"{prefix}/{n}": values[:, i] for i, n in enumerate(names)})
        if self.state_grad_norms is not None:
            state = np.asarray(self.state_grad_norms)
            columns.update({f"state_grad_norm/{k}": state[:, k] for k in range(state.shape[1])})
        for path, leaf in jax.tree_util.tree_leaves_with_path(self.metrics):
            name = "/".join(
                ["metrics"]
                + ([jax.tree_util.keystr(path, simple=True, separator="/")] if path else [])
            )
            leaf = np.asarray(leaf)
            if leaf.ndim == 1:
                columns[name] = leaf
            else:
                flat = leaf.reshape(leaf.shape[0], -1)
                columns.update({f"{name}/{i}": flat[:, i] for i in range(flat.shape[1])})
        return pd.DataFrame(columns, index=pd.Index(steps, name="step"))


class Divergence(NamedTuple):
    """Where training diverged (all fields are arrays, so this passes through ``vmap``).

    Attributes:
      diverged: bool, whether any step diverged.
      step: int, the first divergent step (−1 if none). Its update was not applied.
      layer: int, the layer where it started: the first layer in back-propagation order (readout
        first, input layer last) whose gradient norm was non-finite or above ``max_grad_norm``;
        −1 if none, or if the forward pass overflowed so that every layer's gradient is
        non-finite and none can be singled out.
      loss_finite: bool, whether the loss itself was finite at that step (False means the forward
        pass overflowed, so every gradient is suspect).
      layer_grad_norms: ``(L,)`` the per-layer gradient norms at that step (zeros if none).
    """

    diverged: jax.Array
    step: jax.Array
    layer: jax.Array
    loss_finite: jax.Array
    layer_grad_norms: jax.Array


class FitResult(NamedTuple):
    """The output of :func:`fit`/:func:`make_fit`.

    Attributes:
      params: the parameters after the last step (after the last finite step if it diverged).
      opt_state: the optimiser state that goes with ``params``.
      history: a :class:`History`.
      divergence: a :class:`Divergence`.
      final_metrics: ``eval_fn(params)`` at the returned parameters, or None.
    """

    params: Any
    opt_state: Any
    history: History
    divergence: Divergence
    final_metrics: Any = None


class DivergenceError(FloatingPointError):
    """Raised by :func:`fit` when the loss or a gradient became non-finite or exploded.

    Attributes:
      step: the first divergent step (0-based).
      layer: the layer where it started (see :class:`Divergence`), or −1 when only the loss was
        non-finite.
      loss_finite: whether the loss itself was finite at that step.
      result: the :class:`FitResult` up to that step (parameters before the divergent update).
    """

    def __init__(self, message: str, *, step: int, layer: int, loss_finite: bool, result):
        super().__init__(message)
        self.step = step
        self.layer = layer
        self.loss_finite = loss_finite
        self.result = result


class StepStats(NamedTuple):
    """One monitored step, as :func:`fit` passes it to ``callback(step, stats)``.

    All values are NumPy arrays on the host (``GradStats``' arrays included). For example, to
    log every monitored step::

        def log(step, stats):
            g = stats.grad_stats
            print(step, float(stats.loss), dict(zip(g.names, g.grad_norms.tolist())))

        gf.train.fit(loss_fn, params, batches, optimizer, monitor_every=100, callback=log)

    Attributes:
      loss: ``()`` the loss at that step (before its update).
      grad_stats: :class:`gradflow.monitor.GradStats` with arrays ``(L,)`` and ``()``: per-layer
        log10 gradient, update and parameter norms, the global gradient norm and the non-finite
        flag, exactly as ``monitor.grad_stats`` gives them in a hand-written loop; ``.names`` are
        the layer names. ``.grad_log10`` is History's ``layer_grad_log10_norms`` row bit for
        bit; ``.grad_norms``, ``.update_ratios``, ``.param_norms`` and ``.global_grad_norm`` give
        its other columns (recomputed from the logs, so equal to the last ulp).
      state_grad_norms: ``(K + 1,)`` from ``state_grad_fn``, or None.
      metrics: ``eval_fn(params)`` at that step (a pytree of arrays), or None.
    """

    loss: np.ndarray
    grad_stats: _monitor.GradStats
    state_grad_norms: np.ndarray | None = None
    metrics: Any = None
