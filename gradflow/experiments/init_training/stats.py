"""Statistics over seeds: Student-t confidence intervals and steps to a target (censored).

Pure NumPy/Python in float64; nothing here depends on JAX, so the numbers a summary quotes can be
recomputed from the saved arrays alone.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

__all__ = [
    "student_t_cdf",
    "student_t_quantile",
    "MeanInterval",
    "t_interval",
    "steps_to_target",
    "TargetSteps",
    "summarise_steps",
]


def _t_central(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df``, t >= 0 (Abramowitz & Stegun 26.7.3/4).

    With θ = atan(t/√ν) and c = cos²θ:
    ν odd:  (2/π) [θ + sinθ cosθ (1 + (2/3) c + (2·4)/(3·5) c² + … + c^{(ν−3)/2} term)]
    (ν = 1: 2θ/π);
    ν even: sinθ [1 + (1/2) c + (1·3)/(2·4) c² + … up to c^{(ν−2)/2}].
    Finite sums of positive terms: accurate to a few ulps for every ν (no cancellation).
    """
    theta = math.atan2(t, math.sqrt(df))
    c = math.cos(theta) ** 2
    if df % 2:
        total, term = 0.0, 1.0
        for k in range((df - 1) // 2):  # terms c^0 … c^{(ν−3)/2}
            total += term
            term *= c * (2 * k + 2) / (2 * k + 3)
        return (2.0 / math.pi) * (theta + math.sin(theta) * math.cos(theta) * total)
    total, term = 0.0, 1.0
    for k in range(df // 2):  # terms c^0 … c^{(ν−2)/2}
        total += term
        term *= c * (2 * k + 1) / (2 * k + 2)
    return math.sin(theta) * total


def _check_df(df) -> int:
    if isinstance(df, bool) or not isinstance(df, (int, np.integer)) or df < 1:
        raise ValueError(f"df must be an integer >= 1, got {df!r}")
    return int(df)


def student_t_cdf(t: float, df: int) -> float:
    """The CDF of Student's t distribution with integer ``df`` >= 1 degrees of freedom at ``t``."""
    df = _check_df(df)
    a = _t_central(abs(float(t)), df)
    return 0.5 + 0.5 * a if t >= 0 else 0.5 - 0.5 * a


@functools.lru_cache(maxsize=256)  # a summary asks for the same few (p, df) hundreds of times
def student_t_quantile(p: float, df: int) -> float:
    """The ``p``-quantile of Student's t with integer ``df`` >= 1, for 0.5 <= p < 1.

    Bisection on :func:`student_t_cdf` in float64 to 1e-12 absolute (the CDF is monotone).

    Raises:
      ValueError: ``p`` outside [0.5, 1) or ``df`` not an integer >= 1.
    """
    df = _check_df(df)
    p = float(p)
    if not 0.5 <= p < 1.0:
        raise ValueError(f"p must be in [0.5, 1), got {p}")
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:  # bracket: the tails are polynomial, so doubling suffices
        hi *= 2.0
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if student_t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


class MeanInterval(NamedTuple):
    """The mean of n values and its two-sided Student-t confidence interval.

    Attributes:
      mean: the sample mean.
      low, high: the interval's ends, mean ∓ t_{(1+level)/2, n−1} · s/√n (NaN for n < 2).
      n: the number of finite values used.
      level: the confidence level (0.95 for a 95 % interval).
    """

    mean: float
    low: float
    high: float
    n: int
    level: float


def t_interval(values, level: float = 0.95) -> MeanInterval:
    """The mean of the finite entries of ``values`` with its Student-t confidence interval.

    The interval assumes independent, roughly normal values (here: one per seed); for bounded,
    bimodal quantities such as the accuracy of runs that either train or stay at chance it is a
    statement about the mean, not about a typical run. A zero spread gives a zero-width interval.

    Args:
      values: array of any shape (flattened); NaNs are ignored.
      level: confidence level in (0, 1).

    Returns:
      :class:`MeanInterval` (all NaN for no finite value; ends NaN for one).

    Raises:
      ValueError: ``level`` outside (0, 1).
    """
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    x = np.asarray(values, np.float64).ravel()
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return MeanInterval(math.nan, math.nan, math.nan, 0, level)
    mean = float(np.mean(x))
    if n < 2:
        return MeanInterval(mean, math.nan, math.nan, 1, level)
    half = student_t_quantile(0.5 + level / 2, n - 1) * float(np.std(x, ddof=1)) / math.sqrt(n)
    return MeanInterval(mean, mean - half, mean + half, n, level)


def steps_to_target(curves, steps, target: float) -> np.ndarray:
    """The first recorded step at which each curve reaches ``target``; +inf where it never does.

    Args:
      curves: array ``(..., M)``: a metric (accuracy) at the M recorded steps; NaN (a diverged
        run's records) never counts as reaching it.
      steps: array ``(M,)``, increasing: the step of each record.
      target: the threshold (reached when the metric is >= it).

    Returns:
      float array ``(...)``: the step, or +inf for a run censored at ``steps[-1]`` (never reached).
    """
    curves = np.asarray(curves, np.float64)
    steps = np.asarray(steps, np.float64)
    if steps.ndim != 1 or curves.shape[-1:] != steps.shape:
        raise ValueError(
            f"curves must have shape (..., M) with steps (M,), got {curves.shape} and {steps.shape}"
        )
    with np.errstate(invalid="ignore"):
        hit = curves >= target  # NaN >= t is False
    first = np.argmax(hit, axis=-1)
    return np.where(hit.any(axis=-1), steps[first], np.inf)


class TargetSteps(NamedTuple):
    """Steps to a target over seeds, with the runs that never reached it counted as censored.

    Attributes:
      reached: how many runs reached the target.
      n: how many runs there were.
      median: the median over all n runs, never-reached ones counting as +inf (so finite only
        when more than half reached it; a censored median is +inf, reported "not reached").
      low, high: the fastest and slowest reaching run's steps (NaN if none reached).
    """

    reached: int
    n: int
    median: float
    low: float
    high: float

    @property
    def fraction(self) -> float:
        return self.reached / self.n if self.n else math.nan


def summarise_steps(steps) -> TargetSteps:
    """:class:`TargetSteps` of an array of :func:`steps_to_target` results (+inf: censored).

    The median is taken over the sorted values with +inf for censored runs, which is exact: every
    censored run is censored at the same (last) step, so it is slower than every reaching run.
    With an even n the median is the mean of the two middle values (+inf if either is).
    """
    s = np.sort(np.asarray(steps, np.float64).ravel())
    n = int(s.size)
    finite = s[np.isfinite(s)]
    if n == 0:
        return TargetSteps(0, 0, math.nan, math.nan, math.nan)
    mid = s[(n - 1) // 2 : n // 2 + 1]
    median = math.inf if np.isinf(mid).any() else float(np.mean(mid))
    low = float(finite.min()) if finite.size else math.nan
    high = float(finite.max()) if finite.size else math.nan
    return TargetSteps(int(finite.size), n, median, low, high)
