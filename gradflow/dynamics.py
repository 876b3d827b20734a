"""Doya's one-neuron recurrent network: fixed points, saddle-node bifurcations, hysteresis, cliffs.

The smallest recurrent network that shows why gradients explode: one unit with self-weight w and
bias b (Doya 1993, "Bifurcations in the learning of recurrent neural networks", ISCAS; Pascanu,
Mikolov & Bengio 2013, arXiv:1211.5063, §2.2, eq. 8),

    discrete:    x_{t+1} = w σ(x_t) + b,
    continuous:  τ dx/dt = −x + w σ(x) + b,

with σ the logistic sigmoid. Both have the same fixed points x* = w σ(x*) + b. The discrete map is
the Euler step with dt = τ, so every iterating function here takes ``dt``: ``dt = 1`` is the
discrete network, small ``dt`` integrates the continuous one.

For w > 4 the map has three fixed points on the interval b ∈ (b₋, b₊) between two saddle-node
bifurcations (two stable, one unstable between them) and one outside it; for w ≤ 4 it has exactly
one. Crossing a saddle-node, the state jumps from one branch to the other, and near the jump
∂x_T/∂b is exponentially large in T: the loss L(b) = (x_T(b) − target)² has a wall — Pascanu's
"cliff" (§3.3, Fig. 6) — while far from it ∂x_T/∂x_0 decays like |w σ'(x*)|^T (vanishing).

This module depends only on :mod:`gradflow.activations` (DESIGN.md).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow import _checks
from gradflow import activations as _act

__all__ = [
    "DoyaFixedPoints",
    "DoyaSaddleNodes",
    "DoyaTrajectory",
    "Hysteresis",
    "CliffLandscape",
    "doya_map",
    "doya_fixed_points",
    "doya_saddle_nodes",
    "doya_trajectory",
    "doya_hysteresis",
    "cliff_loss",
    "cliff_landscape",
]

_SIGMOID = _act.get("sigmoid")
_BISECTION_STEPS = 200  # enough to reach adjacent floats from a width-(|w|+2) bracket in float64


class DoyaFixedPoints(NamedTuple):
    """The fixed points of x = w σ(x) + b, at most three, in three slots ordered by x.

    Slot i holds the root on the i-th interval of monotonicity of g(x) = w σ(x) + b − x (split at
    the two folds where w σ'(x) = 1, which exist for w > 4). When all three exist they are the lower
    stable, middle unstable and upper stable branch; empty slots hold NaN.

    Attributes:
      x: array ``(..., 3)``, the fixed points (NaN where absent).
      multiplier: array ``(..., 3)``, μ = ∂x_{t+1}/∂x_t at the fixed point = w σ'(x*).
      stable: array ``(..., 3)`` bool; discrete map: |μ| < 1; continuous form: μ < 1.
      valid: array ``(..., 3)`` bool, which slots hold a fixed point.
      count: array ``(...)`` int, the number of fixed points (1 or 3; 2 only exactly at a fold).
    """

    x: jax.Array
    multiplier: jax.Array
    stable: jax.Array
    valid: jax.Array
    count: jax.Array


class DoyaSaddleNodes(NamedTuple):
    """The two saddle-node (fold) bifurcations of x = w σ(x) + b, for w > 4.

    Attributes:
      b: array ``(..., 2)``, ascending: the upper pair of fixed points is born at b[0] and the lower
        pair dies at b[1]; three fixed points coexist for b[0] < b < b[1]. NaN for w ≤ 4.
      x: array ``(..., 2)``, the double fixed point at each fold, x[0] = logit(σ₊) > 0 >
        x[1] = logit(σ₋) (module docstring of :func:`doya_saddle_nodes`).
    """

    b: jax.Array
    x: jax.Array


class DoyaTrajectory(NamedTuple):
    """A trajectory of the one-neuron network and its forward-mode derivatives.

    Attributes:
      x: array ``(T + 1,)``, x_0 … x_T.
      dx_db: array ``(T + 1,)``, ∂x_t/∂b.
      dx_dw: array ``(T + 1,)``, ∂x_t/∂w.
      dx_dx0: array ``(T + 1,)``, ∂x_t/∂x_0 (the product of the step multipliers).
    """

    x: jax.Array
    dx_db: jax.Array
    dx_dw: jax.Array
    dx_dx0: jax.Array


class Hysteresis(NamedTuple):
    """A quasi-static sweep of b, up then back down, following the state.

    Attributes:
      b_up, x_up: arrays ``(M,)``, b ascending and the settled state at each b.
      b_down, x_down: arrays ``(M,)``, b descending and the settled state.
      b_jump_up: scalar, midpoint of the largest upward jump of x on the way up.
      b_jump_down: scalar, midpoint of the largest jump of x on the way down.
    """

    b_up: jax.Array
    x_up: jax.Array
    b_down: jax.Array
    x_down: jax.Array
    b_jump_up: jax.Array
    b_jump_down: jax.Array


class CliffLandscape(NamedTuple):
    """The cliff loss sampled on a grid of b.

    Attributes:
      b: array ``(M,)``.
      loss: array ``(M,)``, L(b) = (x_T(b) − target)².
      grad: array ``(M,)``, dL/db.
      x_final: array ``(M,)``, x_T(b).
    """

    b: jax.Array
    loss: jax.Array
    grad: jax.Array
    x_final: jax.Array


def _check_dt(dt) -> float:
    dt = float(dt)
    if not (np.isfinite(dt) and 0 < dt <= 1):
        raise ValueError(f"dt must be in (0, 1] (1 = the discrete map), got {dt}")
    return dt


def _check_steps(steps) -> int:
    return _checks.positive_int("steps", steps)


def doya_map(x, w, b, *, dt: float = 1.0):
    """One step x ↦ x + dt (−x + w σ(x) + b); ``dt = 1`` is the discrete network w σ(x) + b.

    Args:
      x: the state, an array broadcasting with ``w`` and ``b`` (any shape).
      w: self-weight, broadcasting with ``x`` and ``b``.
      b: bias, broadcasting with ``x`` and ``w``.
      dt: Euler step of the continuous form, in units of τ; in (0, 1].

    Returns:
      The next state, broadcast shape.
    """
    dt = _check_dt(dt)
    x, w, b = _checks.as_float("x", x), _checks.as_float("w", w), _checks.as_float("b", b)
    if dt == 1.0:
        return w * _SIGMOID.fn(x) + b
    return x + dt * (-x + w * _SIGMOID.fn(x) + b)


def _fold_sigmoids(w):
    """σ₊ ≥ σ₋ solving σ(1 − σ) = 1/w (w σ'(x) = 1); NaN for w ≤ 4.

    σ₋ = (1 − √(1 − 4/w))/2 is computed as (2/w)/(1 + √(1 − 4/w)): the difference would round to
    0 for large w (σ₋ ≈ 1/w), and with it both folds would be lost.
    """
    w_safe = jnp.where(w > 4, w, 8.0)
    root = jnp.where(w > 4, jnp.sqrt(1.0 - 4.0 / w_safe), jnp.nan)
    s_minus = (2.0 / w_safe) / (1.0 + root)
    return 1.0 - s_minus, s_minus


def _fold_xs(w):
    """The folds x₋ = logit(σ₋) < 0 < x₊ = −x₋ (σ₊ = 1 − σ₋): x₊ from σ₋, as σ₊ rounds to 1."""
    _, s_minus = _fold_sigmoids(w)
    x_minus = _logit(s_minus)
    return -x_minus, x_minus


def _logit(s):
    return jnp.log(s) - jnp.log1p(-s)


def doya_saddle_nodes(w) -> DoyaSaddleNodes:
    """The two b at which fixed points of x = w σ(x) + b appear or disappear (closed form).

    At a saddle-node the fixed point is double: g(x) = w σ(x) + b − x = 0 and
    g'(x) = w σ'(x) − 1 = 0.
    With σ' = σ(1 − σ) the second condition gives σ(1 − σ) = 1/w, so σ± = (1 ± √(1 − 4/w))/2,
    x± = logit(σ±) and b± = x± − w σ±. Real only for w > 4; h(x) = x − w σ(x) decreases between
    x₋ and x₊, so b(σ₊) < b(σ₋). The two are symmetric about b = −w/2.

    Args:
      w: self-weight, any shape.

    Returns:
      :class:`DoyaSaddleNodes` with ``b`` and ``x`` of shape ``w.shape + (2,)``; NaN for w ≤ 4.
    """
    w = _checks.as_float("w", w)
    s = jnp.stack(_fold_sigmoids(w), axis=-1)
    x = jnp.stack(_fold_xs(w), axis=-1)
    return DoyaSaddleNodes(b=x - w[..., None] * s, x=x)


def _bisect(g, lo, hi):
    """Root of g on [lo, hi] with g(lo) > 0 ≥ g(hi) or the reverse, by bisection (vectorised)."""
    g_lo_pos = g(lo) > 0

    def body(_, bracket):
        a, c = bracket
        m = 0.5 * (a + c)
        same = (g(m) > 0) == g_lo_pos
        return jnp.where(same, m, a), jnp.where(same, c, m)

    a, c = jax.lax.fori_loop(0, _BISECTION_STEPS, body, (lo, hi))
    return 0.5 * (a + c)


def _fixed_points_scalar(w, b, continuous: bool):
    g = lambda x: w * _SIGMOID.fn(x) + b - x
    # σ ∈ (0, 1) so every fixed point lies in (b + min(w, 0), b + max(w, 0)); a margin m makes
    # g(lo) ≥ m > 0 and g(hi) ≤ −m < 0 strictly. m grows with |b| + |w| so that the bracket's ends
    # stay distinct floats from the roots at any scale (1 alone is rounded away at |b| ~ 1e9 in
    # float32, and the roots near b + min(w, 0) were missed).
    margin = 1.0 + (jnp.abs(b) + jnp.abs(w)) * 2.0**-10
    lo = b + jnp.minimum(w, 0.0) - margin
    hi = b + jnp.maximum(w, 0.0) + margin
    x_plus, x_minus = _fold_xs(w)
    # g is monotone between the folds x₋ < x₊ (where w σ' = 1): split [lo, hi] there. Without
    # folds (w ≤ 4) the two inner breakpoints collapse onto hi and only the first piece is used.
    has_folds = w > 4
    c1 = jnp.where(has_folds, jnp.clip(x_minus, lo, hi), hi)
    c2 = jnp.where(has_folds, jnp.clip(x_plus, lo, hi), hi)
    left = jnp.stack([lo, c1, c2])
    right = jnp.stack([c1, c2, hi])
    valid = (g(left) > 0) != (g(right) > 0)
    roots = jnp.where(valid, _bisect(g, left, right), jnp.nan)
    mult = w * _SIGMOID.deriv(roots)
    stable = (mult < 1.0) if continuous else (jnp.abs(mult) < 1.0)
    return roots, mult, stable & valid, valid, jnp.sum(valid)


def doya_fixed_points(w, b, *, continuous: bool = False) -> DoyaFixedPoints:
    """All fixed points of x = w σ(x) + b with their stability.

    g(x) = w σ(x) + b − x is monotone on each of at most three intervals (split at the folds
    where w σ'(x) = 1), and every root lies in [b + min(w, 0) − 1, b + max(w, 0) + 1], where g
    changes sign. Each interval with a sign change is bisected to machine precision, so no root is
    missed and none is found twice (except exactly at a fold, where the double root may be
    reported in two slots). Each root is exact up to the rounding of g itself: to machine
    precision for a simple root, to ~√eps (~eps^⅓ at the w = 4 pitchfork) at a multiple one.

    Stability: discrete map, |w σ'(x*)| < 1 (for w < −4 a fixed point can lose stability by period
    doubling); continuous form τ ẋ = −x + w σ(x) + b, w σ'(x*) < 1.

    Args:
      w: self-weight, an array broadcasting with ``b``.
      b: bias, an array broadcasting with ``w``.
      continuous: use the continuous-time stability criterion.

    Returns:
      :class:`DoyaFixedPoints`, fields of shape ``broadcast(w, b).shape + (3,)`` (``count``
      without the trailing axis).
    """
    w, b = jnp.broadcast_arrays(_checks.as_float("w", w), _checks.as_float("b", b))
    return DoyaFixedPoints(*_fixed_points(w, b, bool(continuous)))


@functools.partial(jax.jit, static_argnums=2)
def _fixed_points(w, b, continuous):
    fn = jnp.vectorize(
        lambda ww, bb: _fixed_points_scalar(ww, bb, continuous),
        signature="(),()->(k),(k),(k),(k),()",
    )
    return fn(w, b)


def doya_trajectory(w, b, x0, steps: int, *, dt: float = 1.0) -> DoyaTrajectory:
    """Iterates the network and propagates ∂x_t/∂(b, w, x_0) forward, exactly.

    With a_t = ∂x_{t+1}/∂x_t = 1 + dt (w σ'(x_t) − 1):
    ∂x_{t+1}/∂b = a_t ∂x_t/∂b + dt,  ∂x_{t+1}/∂w = a_t ∂x_t/∂w + dt σ(x_t),
    ∂x_{t+1}/∂x_0 = a_t ∂x_t/∂x_0. Near a bifurcation (or a separatrix) a_t > 1 for many steps
    and ∂x_T/∂b explodes; on a stable branch ∂x_T/∂x_0 ~ |w σ'(x*)|^T vanishes.

    Args:
      w: self-weight, a scalar (use ``jax.vmap`` for batches).
      b: bias, a scalar.
      x0: initial state, a scalar.
      steps: T ≥ 1 (static).
      dt: see :func:`doya_map`.

    Returns:
      :class:`DoyaTrajectory`, arrays ``(T + 1,)``.
    """
    steps = _check_steps(steps)
    dt = _check_dt(dt)
    w, b, x0 = (_checks.as_float(n, v) for n, v in (("w", w), ("b", b), ("x0", x0)))
    for name, v in (("w", w), ("b", b), ("x0", x0)):
        if v.ndim != 0:
            raise ValueError(f"{name} must be a scalar (vmap for batches), got shape {v.shape}")
    dtype = jnp.result_type(w, b, x0)
    return _trajectory(*(v.astype(dtype) for v in (w, b, x0)), steps, dt)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _trajectory(w, b, x0, steps, dt):
    dtype = w.dtype

    def body(carry, _):
        x, db, dw, dx0 = carry
        a = 1.0 + dt * (w * _SIGMOID.deriv(x) - 1.0)
        out = (
            x + dt * (-x + w * _SIGMOID.fn(x) + b),
            a * db + dt,
            a * dw + dt * _SIGMOID.fn(x),
            a * dx0,
        )
        return out, out

    zero = jnp.zeros((), dtype)
    init = (x0, zero, zero, jnp.ones((), dtype))
    _, traj = jax.lax.scan(body, init, None, length=steps)
    return DoyaTrajectory(*(jnp.concatenate([i[None], t]) for i, t in zip(init, traj, strict=True)))


def doya_hysteresis(w, b_values, *, x0=None, settle: int = 200, dt: float = 1.0) -> Hysteresis:
    """Quasi-static sweep: b slowly up through ``b_values`` then back down, the state followed.

    At each b the network is iterated ``settle`` steps starting from the state reached at the
    previous b, so it stays on its current branch until that branch dies at a saddle-node, then
    jumps. Going up the jump is at the upper fold b[1]; going down at the lower fold b[0] — the
    hysteresis loop spans the bistable interval. (Near a fold convergence slows down, as
    1/√(distance to the fold), so a finite ``settle`` can delay a jump by a grid step or so.)

    Args:
      w: scalar self-weight.
      b_values: array ``(M,)``, ascending.
      x0: initial state; default b_values[0] + min(w, 0), below every fixed point (lower branch).
      settle: steps per value of b.
      dt: see :func:`doya_map`.

    Returns:
      :class:`Hysteresis`.
    """
    settle = _checks.positive_int("settle", settle)
    dt = _check_dt(dt)
    b_values = _checks.as_float_array("b_values", b_values, (1,))
    if b_values.shape[0] < 2:
        raise ValueError(f"b_values must hold at least 2 values, got shape {b_values.shape}")
    if not isinstance(b_values, jax.core.Tracer) and np.any(np.diff(np.asarray(b_values)) <= 0):
        raise ValueError("b_values must be strictly ascending")
    w = _checks.as_float("w", w).astype(b_values.dtype)
    if w.ndim != 0:
        raise ValueError(f"w must be a scalar, got shape {w.shape}")
    x0 = (
        b_values[0] + jnp.minimum(w, 0.0)
        if x0 is None
        else _checks.as_float("x0", x0).astype(b_values.dtype)
    )
    return _hysteresis(w, b_values, x0, settle, dt)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _hysteresis(w, b_values, x0, settle, dt):
    def at_b(x, b):
        x = jax.lax.fori_loop(0, settle, lambda _, x: doya_map(x, w, b, dt=dt), x)
        return x, x

    x_end, x_up = jax.lax.scan(at_b, x0, b_values)
    b_down = b_values[::-1]
    _, x_down = jax.lax.scan(at_b, x_end, b_down)

    def jump(bs, xs):
        i = jnp.argmax(jnp.abs(jnp.diff(xs)))
        return 0.5 * (bs[i] + bs[i + 1])

    return Hysteresis(b_values, x_up, b_down, x_down, jump(b_values, x_up), jump(b_down, x_down))


def cliff_loss(w, b, *, x0=0.5, steps: int = 20, target=1.0, dt: float = 1.0):
    """Pascanu's geometric model: L(w, b) = (x_T − target)² after T steps from x_0.

    Pascanu, Mikolov & Bengio 2013 (arXiv:1211.5063), §3.3 and Fig. 6: one unit x_t = w σ(x_{t−1})
    + b trained so that x after 50 steps hits a target. Where x_0 sits on the separatrix between
    two basins (the middle, unstable fixed point), x_T(b) switches branches over a width that
    shrinks like μ^−T (μ = w σ'(x_mid) > 1): the loss has a near-vertical wall whose gradient is
    exponentially large, surrounded by plateaus. Pascanu plot (σ(x_50) − 0.7)² over (w, b); we use
    the state itself, as in the "dynamical systems model" description, with the same geometry:
    the default target 1 lies between the two branches (x ≈ −1.9 and x ≈ 1.6 near the wall), so
    the minimum sits on the wall, as 0.7 does for σ(x) in Pascanu's Fig. 6. The default T = 20
    (not 50) keeps the wall ~μ^−T wide enough to be sampled on a plot grid and hit by descent; at
    T = 50 it is ~10⁻⁵ wide in b.

    Args:
      w: self-weight, a scalar (differentiable; ``vmap`` for grids).
      b: bias, a scalar (differentiable).
      x0: initial state.
      steps: T (static).
      target: the target value for x_T.
      dt: see :func:`doya_map`.

    Returns:
      Scalar loss.
    """
    steps = _check_steps(steps)
    dt = _check_dt(dt)
    w, b = _checks.as_float("w", w), _checks.as_float("b", b)
    x0 = _checks.as_float("x0", x0).astype(jnp.result_type(w, b))
    target = _checks.as_float("target", target)
    x = jax.lax.fori_loop(0, steps, lambda _, x: doya_map(x, w, b, dt=dt), x0)
    return (x - target) ** 2


def cliff_landscape(b_values, *, w=5.0, x0=0.5, steps: int = 20, target=1.0, dt: float = 1.0):
    """The cliff loss, its gradient and x_T sampled on a (fine) grid of b.

    Args:
      b_values: array ``(M,)``.
      w: as in :func:`cliff_loss`.
      x0: as in :func:`cliff_loss`.
      steps: as in :func:`cliff_loss`.
      target: as in :func:`cliff_loss`.
      dt: as in :func:`cliff_loss`.

    Returns:
      :class:`CliffLandscape` with arrays ``(M,)``.
    """
    b_values = _checks.as_float_array("b_values", b_values, (1,))
    steps = _check_steps(steps)
    dt = _check_dt(dt)
    w = _checks.as_float("w", w).astype(b_values.dtype)
    x0, target = _checks.as_float("x0", x0), _checks.as_float("target", target)
    return _landscape(b_values, w, x0, steps, target, dt)


@functools.partial(jax.jit, static_argnums=(3, 5))
def _landscape(b_values, w, x0, steps, target, dt):
    def one(b):
        loss, grad = jax.value_and_grad(
            lambda bb: cliff_loss(w, bb, x0=x0, steps=steps, target=target, dt=dt)
        )(b)
        return loss, grad

    loss, grad = jax.vmap(one)(b_values)
    x_final = jax.vmap(
        lambda b: jax.lax.fori_loop(
            0, steps, lambda _, x: doya_map(x, w, b, dt=dt), jnp.asarray(x0, b_values.dtype)
        )
    )(b_values)
    return CliffLandscape(b_values, loss, grad, x_final)
