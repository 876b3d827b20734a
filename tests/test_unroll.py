"""Full unrolling of scanned chain segments: the chooser's decisions, and unrolled == rolled.

Unrolling changes only how XLA schedules the same operations, so an unrolled chain must give the
rolled chain's numbers. Both are also checked against independent references: the forward pass
in NumPy float64 and gradients of a plain Python loop (no ``lax.scan``) in float64.

Tolerance (float64, 1e-12): the same operations in the same order; fusion (and the references'
summation order) may only change where a product is rounded, a few eps ≈ 1e-16 per operation. The
tanh MLPs here (σ_w = 1, near the edge of chaos) have per-layer Jacobians of norm O(1), so rounding
grows at most linearly over ≤ 65 steps (+ the backward pass): ~1e-14, a 100x margin under 1e-12.
The states are tanh outputs, |h| ≤ 1, whose rounding is absolute (an entry near 0 is a sum that
cancels), so they get atol = 1e-12 as well; the gradient norms are sums of squares, no
cancellation, so rtol alone.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
import gradflow.chain.core as core
from gradflow.chain import Chain, final_state

_TOL = dict(rtol=1e-12, atol=0.0)  # gradient norms
_TOL_H = dict(rtol=1e-12, atol=1e-12)  # states, |h| <= 1


def _force(monkeypatch, unrolled: bool):
    """Makes every segment traced from now on unrolled (True) or rolled (False)."""
    if unrolled:
        monkeypatch.setattr(core, "UNROLL_MAX_STEPS", 10**9)
        monkeypatch.setattr(core, "UNROLL_MIN_STATE", 0)
    else:
        monkeypatch.setattr(core, "UNROLL", False)


def _scan_unroll(chain) -> int:
    """The ``unroll`` parameter of the one scan in ``final_state(chain)``'s jaxpr."""
    # A fresh function each time: make_jaxpr caches traces by function, and the choice is made
    # when tracing.
    eqns = jax.make_jaxpr(lambda c: final_state(c))(chain).jaxpr.eqns
    (eqn,) = [e for e in eqns if e.primitive.name == "scan"]
    return eqn.params["unroll"]


def _tiny_chain(length: int, batch: int, width: int) -> Chain:
    step = lambda theta, h, x: jnp.tanh(h @ theta)  # noqa: E731
    params = jnp.zeros((length, width, width))
    return Chain(params=params, xs=None, h0=jnp.ones((batch, width)), step=step, length=length)


def test_unroll_for_thresholds():
    big, k = core.UNROLL_MIN_STATE, core.UNROLL_MAX_STEPS
    assert core.UNROLL  # on by default (the test run does not set GRADFLOW_UNROLL)
    assert core.unroll_for(1, big)
    assert core.unroll_for(k, big)
    assert core.unroll_for(k, 100 * big)
    assert not core.unroll_for(k + 1, big)  # too many steps: compile time
    assert not core.unroll_for(k, big - 1)  # too small a state: no speed-up
    assert not core.unroll_for(5, 32)


def test_unroll_switch_turns_it_off(monkeypatch):
    monkeypatch.setattr(core, "UNROLL", False)
    assert not core.unroll_for(2, core.UNROLL_MIN_STATE)
    assert _scan_unroll(_tiny_chain(3, 64, 64)) == 1


@pytest.mark.slow  # a fresh interpreter importing jax and flax: ~3-6 s
def test_environment_variable_turns_it_off():
    code = "import gradflow.chain.core as c; print(c.UNROLL, c.unroll_for(2, 10**6))"
    env = {**os.environ, "GRADFLOW_UNROLL": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False False"


def test_scan_segment_applies_the_choice():
    # State 64·64 = 4096 = UNROLL_MIN_STATE: unrolled; 2·64 scalars: rolled; one step over the
    # length limit: rolled (tracing only, nothing compiles).
    assert core.UNROLL_MIN_STATE == 64 * 64
    assert _scan_unroll(_tiny_chain(3, 64, 64)) == 3
    assert _scan_unroll(_tiny_chain(3, 2, 64)) == 1
    k = core.UNROLL_MAX_STEPS
    assert _scan_unroll(_tiny_chain(k, 64, 64)) == k
    assert _scan_unroll(_tiny_chain(k + 1, 64, 64)) == 1


def _mlp_problem(depth: int, batch: int, width: int = 64):
    model = gf.models.MLP(width=width, depth=depth, kernel_init=gf.init.gaussian(1.0))
    kx, ky, kp = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, (batch, width), jnp.float64)
    y = jax.random.normal(ky, (batch, 1), jnp.float64)
    params = model.init(kp, x)
    assert params["params"]["hidden"]["kernel"].dtype == jnp.float64
    return model, params, x, y


def _reference_final_state(params, x):
    """h_depth by a NumPy float64 loop."""
    p = jax.tree_util.tree_map(np.asarray, params["params"])
    h = np.tanh(np.asarray(x) @ p["input"]["kernel"] + p["input"]["bias"])
    for w, b in zip(p["hidden"]["kernel"], p["hidden"]["bias"]):
        h = np.tanh(h @ w + b)
    return h


def _reference_norms(params, x, y):
    """Per-layer gradient norms of the MSE loss of a plain Python-loop MLP, in forward order."""

    def loss(p):
        h = jnp.tanh(x @ p["input"]["kernel"] + p["input"]["bias"][None])
        for j in range(p["hidden"]["kernel"].shape[0]):
            h = jnp.tanh(h @ p["hidden"]["kernel"][j] + p["hidden"]["bias"][j][None])
        return jnp.mean((h @ p["readout"]["kernel"] + p["readout"]["bias"][None] - y) ** 2)

    g = jax.jit(jax.grad(loss))(params["params"])
    layer = lambda d: np.sqrt(sum(np.sum(np.asarray(a) ** 2) for a in d))  # noqa: E731
    hidden = zip(g["hidden"]["kernel"], g["hidden"]["bias"])
    return np.array(
        [layer(g["input"].values())] + [layer(kb) for kb in hidden] + [layer(g["readout"].values())]
    )


def _run(model, params, x, y):
    """final_state and layer_grad_norms, traced afresh (so under the current unroll setting)."""
    h = jax.jit(lambda p, x: final_state(model.chain(p, x)))(params, x)
    loss = lambda p, b: jnp.mean((model.apply(p, b[0]) - b[1]) ** 2)  # noqa: E731
    norms = jax.jit(lambda p, b: gf.gradients.layer_grad_norms(loss, p, b))(params, (x, y))
    return np.asarray(h), norms


def _check_both_ways(monkeypatch, depth, batch, expect_unrolled):
    model, params, x, y = _mlp_problem(depth, batch)
    chain = model.chain(params, x)
    assert (_scan_unroll(chain) > 1) == expect_unrolled
    h_default, n_default = _run(model, params, x, y)
    _force(monkeypatch, not expect_unrolled)
    assert (_scan_unroll(chain) > 1) == (not expect_unrolled)
    h_other, n_other = _run(model, params, x, y)
    assert n_default.names == n_other.names
    assert n_default.names[0] == "input" and n_default.names[-1] == "readout"
    for h in (h_default, h_other):
        np.testing.assert_allclose(h, _reference_final_state(params, x), **_TOL_H)
    ref = _reference_norms(params, x, y)
    for n in (n_default, n_other):
        np.testing.assert_allclose(np.asarray(n.values), ref, **_TOL)
    np.testing.assert_allclose(h_default, h_other, **_TOL_H)
    np.testing.assert_allclose(np.asarray(n_default.values), np.asarray(n_other.values), **_TOL)


@pytest.mark.parametrize("batch, unrolled", [(63, False), (64, True)])
def test_unrolled_equals_rolled_across_the_state_threshold(x64, monkeypatch, batch, unrolled):
    # width 64: a batch of 63 is just below UNROLL_MIN_STATE = 4096 scalars, 64 just at it.
    _check_both_ways(monkeypatch, depth=3, batch=batch, expect_unrolled=unrolled)


@pytest.mark.parametrize("steps, unrolled", [(4, True), (5, False)])
def test_unrolled_equals_rolled_across_a_length_threshold(x64, monkeypatch, steps, unrolled):
    # The length rule with the limit lowered to 4 steps (the real limit's programs compile for
    # seconds; the slow test below checks it).
    monkeypatch.setattr(core, "UNROLL_MAX_STEPS", 4)
    _check_both_ways(monkeypatch, depth=steps + 1, batch=64, expect_unrolled=unrolled)


@pytest.mark.slow
@pytest.mark.parametrize("offset, unrolled", [(0, True), (1, False)])
def test_unrolled_equals_rolled_at_the_real_length_threshold(x64, monkeypatch, offset, unrolled):
    steps = core.UNROLL_MAX_STEPS + offset
    _check_both_ways(monkeypatch, depth=steps + 1, batch=64, expect_unrolled=unrolled)


def test_backward_products_unrolled_equal_rolled(monkeypatch):
    # The reverse pass (chain.passes.pullback) follows the same rule, its state being the m × n
    # cotangent block; a float64 width-8 chain of 5 steps, forced either way, against the
    # products formed from jacfwd step Jacobians (an independent route).
    model = gf.models.MLP(width=8, depth=6, activation="tanh", param_dtype=jnp.float64)
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(1), (8,), jnp.float64)
        params = model.init(jax.random.key(0), x)
        chain = model.chain(params, x)
        out = {}
        for unrolled in (False, True):
            with monkeypatch.context() as m:
                _force(m, unrolled)
                jax.clear_caches()  # the jitted pass must be traced again under the new rule
                out[unrolled] = gf.jacobians.backward_products(chain)
        jax.clear_caches()
        ref = gf.jacobians.backward_products(chain, method="jacobians")
        for p in out.values():
            np.testing.assert_allclose(p.unit, ref.unit, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(p.log_norm, ref.log_norm, rtol=1e-12)
        np.testing.assert_allclose(out[True].unit, out[False].unit, rtol=1e-12, atol=1e-14)
