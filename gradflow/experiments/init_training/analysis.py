"""From the runs' arrays to the numbers the summary reports: chosen rates, per-configuration
rows (steps to target, accuracy with its interval, gradient ratio and χ₁ at init) and cells for
the claims."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from gradflow.experiments.init_training.claims import Cell
from gradflow.experiments.init_training.stats import steps_to_target, summarise_steps, t_interval

__all__ = ["choose_rates", "spread", "rows_and_cells"]


def choose_rates(final_val) -> np.ndarray:
    """The index of the rate with the highest mean final validation accuracy over seeds.

    Args:
      final_val: array ``(..., R, S)``.

    Returns:
      int array ``(...)``; ties (and all-NaN) go to the smaller index, i.e. the smaller rate of
      an increasing grid.
    """
    mean = np.nanmean(np.where(np.isnan(final_val), -np.inf, final_val), axis=-1)
    return np.argmax(mean, axis=-1)


def spread(values) -> dict:
    """Median, min and max of the finite entries (NaN when there are none)."""
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}


def rows_and_cells(
    data: Mapping[str, np.ndarray],
    *,
    init_keys: Sequence[str],
    init_labels: Sequence[str],
    optimizers: Sequence[str],
    target: float,
    chi1_mean_field: Sequence[float],
) -> tuple[list[dict], dict]:
    """One summary row per (depth, init, optimiser) and the claims' :class:`Cell` of each.

    Args:
      data: the saved arrays (see :mod:`~gradflow.experiments.init_training.plotting`).
      init_keys, init_labels: the I inits, in the arrays' order.
      optimizers: the optimisers run.
      target: the target test accuracy.
      chi1_mean_field: ``(I,)`` mean-field χ₁ (NaN where the theory does not apply).

    Returns:
      ``(rows, cells)``: rows are JSON-able dicts; cells map (optimizer, init key, depth) to
      :class:`Cell`.
    """
    steps = np.asarray(data["steps"])
    rows, cells = [], {}
    for o in optimizers:
        rates = np.asarray(data[f"{o}/rates"])
        pick = np.asarray(data[f"{o}/chosen"])
        for k, depth in enumerate(int(d) for d in data["depths"]):
            for i, (key, label) in enumerate(zip(init_keys, init_labels)):
                r = int(pick[k, i])
                curves = data[f"{o}/test_accuracy"][k, i, r]  # (S, M)
                final = data[f"{o}/final_test_accuracy"][k, i, r]  # (S,)
                hit = summarise_steps(steps_to_target(curves, steps, target))
                ci = t_interval(final)
                chi1 = spread(data["chi1"][k, i])
                rows.append(
                    {
                        "depth": depth,
                        "init": key,
                        "init_label": label,
                        "optimizer": o,
                        "learning_rate": float(rates[r]),
                        "steps_to_target": {
                            "target": target,
                            "reached": hit.reached,
                            "seeds": hit.n,
                            # +inf ("inf" in JSON): half or more of the seeds never reached it
                            "median": hit.median,
                            "fastest": hit.low,
                            "slowest_reached": hit.high,
                            "censored_at": float(steps[-1]),
                        },
                        "final_test_accuracy": {
                            "mean": ci.mean,
                            "ci95_t": [ci.low, ci.high],
                            **spread(final),
                        },
                        "diverged": int(np.sum(data[f"{o}/diverged"][k, i, r])),
                        "log10_grad_ratio_at_init": spread(data["log10_grad_ratio"][k, i]),
                        "chi1_empirical": chi1,
                        "chi1_mean_field": float(chi1_mean_field[i]),
                    }
                )
                cells[o, key, depth] = Cell(
                    hit.reached, hit.n, hit.median, ci.mean, ci.low, ci.high, chi1["median"]
                )
    return rows, cells
