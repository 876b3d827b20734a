"""gradflow.gradient_free: the evolution strategy and random search (the mitigation study's
gradient-free baselines)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import gradient_free


def _quadratic(dim=5):
    target = jnp.linspace(-1.0, 1.0, dim)
    return {"w": jnp.zeros(dim)}, lambda p, b: jnp.sum((p["w"] - target) ** 2), target


def test_evolution_strategy_minimises_a_quadratic(key):
    params, loss, target = _quadratic()
    res = gradient_free.evolution_strategy(
        loss,
        params,
        jnp.zeros((200,)),
        key=key,
        population=8,
        sigma=0.1,
        learning_rate=0.05,
        eval_fn=lambda p: loss(p, None),
        monitor_every=50,
    )
    assert res.loss.shape == (200,) and res.metrics.shape == (4,)
    # from loss 2.5 (‖target‖²) to < 1 % of it: Adam steps of 0.05 over 200 steps cover the
    # distance ≤ 1 per coordinate with room to settle; the ES estimate is noisy, not biased.
    assert float(res.final_metrics) < 0.01 * float(jnp.sum(target**2))
    assert res.evaluations_per_step == 17


def test_evolution_strategy_needs_no_gradient(key):
    """A piecewise-constant loss (zero gradient almost everywhere) is still minimised."""
    params = {"w": jnp.zeros(4)}
    loss = lambda p, b: jnp.sum(p["w"] < 1.0).astype(jnp.float32)
    assert float(jnp.abs(jax.grad(lambda p: loss(p, None) + 0.0)(params)["w"]).sum()) == 0
    res = gradient_free.evolution_strategy(
        loss, params, jnp.zeros((150,)), key=key, population=8, sigma=1.0, learning_rate=0.05
    )
    assert float(loss(res.params, None)) == 0.0


def test_random_search_never_gets_worse_on_a_fixed_batch(key):
    params, loss, _ = _quadratic()
    res = gradient_free.random_search(loss, params, jnp.zeros((60,)), key=key, sigma=0.1)
    assert np.all(np.diff(np.asarray(res.loss)) <= 0)  # it keeps θ when no candidate is better
    assert float(res.loss[-1]) < float(loss(params, None))


def test_searches_vmap_over_keys(key):
    params, loss, _ = _quadratic()
    keys = jax.random.split(key, 3)
    run = lambda k: gradient_free.random_search(loss, params, jnp.zeros((10,)), key=k).loss
    batched = jax.vmap(run)(keys)
    # vmap vs separate runs of the same float32 program: equal to rounding (~1e-6 relative).
    np.testing.assert_allclose(batched[1], run(keys[1]), rtol=1e-5)
    with pytest.raises(ValueError, match="sigma"):
        gradient_free.evolution_strategy(loss, params, jnp.zeros((2,)), key=key, sigma=0.0)
