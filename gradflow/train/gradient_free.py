"""Gradient-free baselines: an evolution strategy and random search over the weights, in JAX.

Back-propagation is what vanishes or explodes; methods that only *evaluate* the loss sidestep it
(Wikipedia's "vanishing gradient problem" lists them among the remedies). They do not sidestep the
loss landscape itself: if early layers barely change the output, perturbing them barely changes
the loss either, and an evolution strategy's gradient estimate for them is as small as the true
gradient (it estimates the gradient of the Gaussian-smoothed loss). What they trade is precision
for robustness to exploding/ill-conditioned backward passes, at the price of many evaluations.

Both run as one ``lax.scan`` over steps, take ``batches`` with a leading axis of S steps like
:func:`gradflow.train.fit`, and ``vmap`` over keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from gradflow import _checks
from gradflow.train._batches import num_steps

__all__ = ["SearchResult", "evolution_strategy", "random_search"]


class SearchResult(NamedTuple):
    """Output of a gradient-free search.

    Attributes:
      params: the final parameters (the search mean for the evolution strategy).
      loss: ``(S,)`` the loss of the current parameters on each step's batch.
      metrics: ``eval_fn(params)`` at steps 0, E, 2E, … (leaves ``(M, …)``), or None.
      steps: ``(M,)`` the steps of ``metrics``.
      final_metrics: ``eval_fn`` at the final parameters, or None.
      evaluations_per_step: loss evaluations (forward passes over a batch) used per step.
    """

    params: Any
    loss: jax.Array
    metrics: Any
    steps: jax.Array
    final_metrics: Any
    evaluations_per_step: int


def _centred_ranks(x):
    """Ranks mapped to [−0.5, 0.5] (Salimans et al. 2017's fitness shaping): scale-free."""
    ranks = jnp.argsort(jnp.argsort(x)).astype(x.dtype)
    return ranks / (x.shape[0] - 1) - 0.5


def _search(step_fn, init_state, params_of, batches, eval_fn, monitor_every, evals):
    s = num_steps(batches)
    monitor_every = _checks.positive_int("monitor_every", monitor_every)

    def body(carry, batch):
        state, t = carry
        state, loss = step_fn(state, batch)
        return (state, t + 1), loss

    def chunk(state, batches):
        metrics = eval_fn(params_of(state)) if eval_fn is not None else None
        (state, _), loss = jax.lax.scan(body, (state, 0), batches)
        return state, (loss, metrics)

    full, r = divmod(s, monitor_every)
    state, losses, metrics = init_state, [], []
    if full:
        head = jax.tree_util.tree_map(
            lambda x: x[: full * monitor_every].reshape((full, monitor_every) + x.shape[1:]),
            batches,
        )
        state, (loss, m) = jax.lax.scan(chunk, state, head)
        losses.append(loss.reshape(-1))
        metrics.append(m)
    if r:
        tail = jax.tree_util.tree_map(lambda x: x[full * monitor_every :], batches)
        state, (loss, m) = chunk(state, tail)
        losses.append(loss)
        metrics.append(jax.tree_util.tree_map(lambda x: x[None], m))
    metrics = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *metrics)
    params = params_of(state)
    steps = jnp.arange(0, s, monitor_every)
    final = eval_fn(params) if eval_fn is not None else None
    return SearchResult(params, jnp.concatenate(losses), metrics, steps, final, evals)


def evolution_strategy(
    loss_fn: Callable[[Any, Any], jax.Array],
    params,
    batches,
    *,
    key,
    population: int = 16,
    sigma: float = 0.02,
    learning_rate: float = 0.01,
    eval_fn: Callable[[Any], Any] | None = None,
    monitor_every: int = 1,
) -> SearchResult:
    """Evolution strategy with antithetic sampling (Salimans et al. 2017, arXiv:1703.03864).

    Each step draws ``population`` directions ε_i ~ N(0, I) over the flattened weights, evaluates
    the loss at θ ± σ ε_i on that step's batch, replaces the 2·population losses by centred ranks
    f_i^± and moves θ with Adam along the estimate ĝ = Σ_i (f_i⁺ − f_i⁻) ε_i / (2 population σ)
    of the smoothed loss's gradient. No derivative of ``loss_fn`` is ever taken.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (must ``vmap`` over params).
      params: initial parameters (the search mean).
      batches: pytree with a leading axis of S steps.
      key: PRNG key.
      population: number of antithetic pairs per step (2·population + 1 evaluations).
      sigma: perturbation scale σ > 0.
      learning_rate: Adam's step size on ĝ.
      eval_fn: optional ``params -> pytree``, recorded every ``monitor_every`` steps and at the end.
      monitor_every: interval for ``eval_fn``.

    Returns:
      :class:`SearchResult`.
    """
    population = _checks.positive_int("population", population)
    if not float(sigma) > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    flat, unravel = ravel_pytree(params)
    opt = optax.adam(learning_rate)

    def step(state, batch):
        theta, opt_state, k = state
        k, sub = jax.random.split(k)
        eps = jax.random.normal(sub, (population, flat.shape[0]), flat.dtype)
        cand = jnp.concatenate([theta[None] + sigma * eps, theta[None] - sigma * eps])
        losses = jax.vmap(lambda th: loss_fn(unravel(th), batch))(cand)
        # Non-finite losses rank worst instead of poisoning the estimate.
        losses = jnp.where(jnp.isfinite(losses), losses, jnp.finfo(losses.dtype).max)
        f = _centred_ranks(losses)
        g = (f[:population] - f[population:]) @ eps / (2 * population * sigma)
        updates, opt_state = opt.update(g, opt_state, theta)
        theta = optax.apply_updates(theta, updates)
        return (theta, opt_state, k), loss_fn(unravel(theta), batch)

    init = (flat, opt.init(flat), key)
    return _search(
        step, init, lambda st: unravel(st[0]), batches, eval_fn, monitor_every, 2 * population + 1
    )


def random_search(
    loss_fn: Callable[[Any, Any], jax.Array],
    params,
    batches,
    *,
    key,
    population: int = 16,
    sigma: float = 0.02,
    eval_fn: Callable[[Any], Any] | None = None,
    monitor_every: int = 1,
) -> SearchResult:
    """(1 + λ) random search: keep the best of θ and λ = ``population`` Gaussian perturbations.

    Each step evaluates θ and θ + σ ε_i (i = 1 … λ) on that step's batch and moves to the best
    of them (Rastrigin 1963; Hochreiter & Schmidhuber's "weight guessing" baseline perturbs
    nothing and redraws everything, which is hopeless at this many weights).

    Args: as :func:`evolution_strategy` (no learning rate).

    Returns:
      :class:`SearchResult`.
    """
    population = _checks.positive_int("population", population)
    if not float(sigma) > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    flat, unravel = ravel_pytree(params)

    def step(state, batch):
        theta, k = state
        k, sub = jax.random.split(k)
        eps = jax.random.normal(sub, (population, flat.shape[0]), flat.dtype)
        cand = jnp.concatenate([theta[None], theta[None] + sigma * eps])
        losses = jax.vmap(lambda th: loss_fn(unravel(th), batch))(cand)
        losses = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
        best = jnp.argmin(losses)
        return (cand[best], k), losses[best]

    return _search(
        step,
        (flat, key),
        lambda st: unravel(st[0]),
        batches,
        eval_fn,
        monitor_every,
        population + 1,
    )
