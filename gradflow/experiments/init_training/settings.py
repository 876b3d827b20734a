"""The study's initialisations, optimisers, learning-rate rule and sizes (quick and full)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from gradflow import _checks, init, meanfield

__all__ = [
    "InitSpec",
    "INITS",
    "OPTIMIZERS",
    "Settings",
    "QUICK",
    "FULL",
    "settings",
    "check_settings",
]


class InitSpec(NamedTuple):
    """One initialisation: a short key (array names), a label (figures) and its initialiser.

    Attributes:
      key: identifier used in file and summary keys.
      label: human-readable name.
      make: ``() -> initialiser`` (``(key, shape, dtype) -> array``), applied to every layer.
      sigma_w2: the weight variance × fan-in on square layers, for mean-field χ₁; None where
        the weights have a nonzero mean (outside the zero-mean theory).
    """

    key: str
    label: str
    make: Callable
    sigma_w2: Callable[[], float] | None


def _critical_sw2() -> float:
    # The edge of chaos of the logistic function at σ_b² = 0 (biases are zero here).
    return float(meanfield.critical_sigma_w2("sigmoid", 0.0))


INITS: tuple[InitSpec, ...] = (
    InitSpec("gaussian", "N(0, 1/N)", lambda: init.gaussian(1.0), lambda: 1.0),
    # Glorot's uniform rule has variance 2/(fan_in + fan_out) = 1/N on the square hidden layers.
    InitSpec("glorot", "Glorot (uniform)", init.glorot, lambda: 1.0),
    InitSpec(
        "kumar",
        "Kumar (3.6/√N)",
        lambda: init.kumar("sigmoid"),
        lambda: init.kumar_std("sigmoid", 1) ** 2,
    ),
    InitSpec("yilmaz_poli", "Yilmaz–Poli (mean −8/N)", init.yilmaz_poli, None),
    InitSpec("critical", "critical (χ₁ = 1)", lambda: init.critical("sigmoid"), _critical_sw2),
)

# Plain SGD (no momentum: the "standard back-propagation" of Yilmaz & Poli) and Adam.
OPTIMIZERS = ("sgd", "adam")


class Settings(NamedTuple):
    """Sizes and the learning-rate rule of one run (see :func:`settings`).

    Learning rates: every (depth, optimiser, init) trains with every rate of its optimiser's grid
    (``sgd_rates`` / ``adam_rates``) on the same seeds; the rate with the highest mean final
    *validation* accuracy (a held-out part of the training split, never the test set; ties go to
    the smaller rate) is the one reported. The rule and the grid are the same for every init, so no
    init gets tuning the others do not. Adam's grid is centred on Kingma & Ba's default 1e-3; plain
    SGD's on 0.1. Neither paper's learning rates were available to this project.

    Attributes:
      depths: numbers of hidden layers (each >= 2).
      width: hidden width.
      batch: minibatch size.
      steps: optimisation steps per run.
      seeds: independent initialisations and minibatch orders, vmapped in one program.
      monitor_every: test/validation accuracy is recorded every this many steps.
      target: the test accuracy whose first crossing is "steps to target".
      sgd_rates, adam_rates: learning-rate grids.
      validation_fraction: of the training split held out to choose the rate.
      chi1_inputs: test inputs at which the empirical χ₁ is averaged.
    """

    depths: tuple[int, ...]
    width: int
    batch: int
    steps: int
    seeds: int
    monitor_every: int
    target: float
    sgd_rates: tuple[float, ...]
    adam_rates: tuple[float, ...]
    validation_fraction: float = 0.2
    chi1_inputs: int = 8

    def rates(self, optimizer: str) -> tuple[float, ...]:
        """The learning-rate grid of ``optimizer`` ("sgd" or "adam")."""
        return {"sgd": self.sgd_rates, "adam": self.adam_rates}[optimizer]


# Quick: the depths Yilmaz & Poli name, few steps (the main job's time budget: ~25 s on 2 cores).
QUICK = Settings(
    depths=(10, 15),
    width=32,
    batch=32,
    steps=120,
    seeds=8,
    monitor_every=10,
    target=0.9,
    sgd_rates=(0.3,),
    adam_rates=(1e-3,),
)
FULL = Settings(
    depths=(5, 10, 15, 20),
    width=32,
    batch=32,
    steps=1500,
    seeds=16,
    monitor_every=50,
    target=0.9,
    sgd_rates=(0.1, 0.3, 1.0),
    adam_rates=(3e-4, 1e-3, 3e-3),
)


def settings(full: bool) -> Settings:
    """CPU-sized (default) or paper-sized (``full``) settings."""
    return FULL if full else QUICK


def check_settings(st: Settings) -> Settings:
    """``st`` if every field is valid; one ValueError/TypeError naming the field otherwise."""
    if not isinstance(st, Settings):
        raise TypeError(f"settings must be a Settings, got {type(st).__name__}")
    depths = tuple(st.depths)
    if not depths:
        raise ValueError("depths must name at least one depth")
    for d in depths:
        _checks.positive_int("depths[...]", d, 2)  # χ₁ needs one hidden-to-hidden layer
    if len(set(depths)) != len(depths):
        raise ValueError(f"depths must be distinct, got {depths}")
    for name in ("width", "batch", "steps", "monitor_every", "chi1_inputs"):
        _checks.positive_int(name, getattr(st, name))
    # Two seeds at least: a confidence interval over one value does not exist.
    _checks.positive_int("seeds", st.seeds, 2)
    if st.monitor_every > st.steps:
        raise ValueError(f"monitor_every must be <= steps = {st.steps}, got {st.monitor_every}")
    if not 0.0 < float(st.target) <= 1.0:
        raise ValueError(f"target must be an accuracy in (0, 1], got {st.target!r}")
    if not 0.0 < float(st.validation_fraction) < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {st.validation_fraction!r}")
    for name in ("sgd_rates", "adam_rates"):
        rates = tuple(getattr(st, name))
        if not rates or not all(
            isinstance(r, (int, float)) and math.isfinite(r) and r > 0 for r in rates
        ):
            raise ValueError(f"{name} must be a non-empty tuple of positive rates, got {rates!r}")
    if len(st.sgd_rates) != len(st.adam_rates):
        # Both optimisers train in one vmap over (optimiser, init, rate, seed).
        raise ValueError(
            f"sgd_rates and adam_rates must have the same length, got {len(st.sgd_rates)} and "
            f"{len(st.adam_rates)}"
        )
    return st._replace(depths=depths)
