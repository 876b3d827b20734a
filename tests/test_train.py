"""gradflow.train: monitors, divergence detection, clipping, Rprop, Pascanu's regulariser."""

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradflow as gf
from gradflow import gradients, monitor, train

S = 6  # steps per test run: enough for several monitored records, cheap to compile


def _mlp_problem(key, depth=4, width=8, steps=S, batch=16):
    model = gf.models.MLP(width=width, depth=depth, activation="tanh", out_features=1)
    kp, kx, ky = jax.random.split(key, 3)
    x = jax.random.normal(kx, (steps, batch, 3))
    y = jax.random.normal(ky, (steps, batch, 1))
    params = model.init(kp, x[0])

    def loss(p, b):
        return jnp.mean((model.apply(p, b[0]) - b[1]) ** 2)

    return model, params, (x, y), loss


def _optax_step(loss, opt, p, state, b):
    """One optax step of a hand-written loop (jit it once; reused for every step)."""
    value, g = jax.value_and_grad(loss)(p, b)
    u, state = opt.update(g, state, p)
    return optax.apply_updates(p, u), state, value


def test_monitor_equals_layer_grad_norms_at_the_same_step(key, x64):
    """history.layer_grad_norms[m] is gradients.layer_grad_norms at the params of step steps[m]."""
    _, params, batches, loss = _mlp_problem(key)
    opt = optax.sgd(0.1, momentum=0.9)
    res = train.fit(loss, params, batches, opt, monitor_every=2)
    np.testing.assert_array_equal(res.history.steps, [0, 2, 4])
    assert res.history.layer_grad_norms.shape == (3, 5)  # input, 3 hidden, readout
    # The reference: a hand-written loop of one jitted optax step (an independent program from
    # fit's scan, compiled once for every k, where fitting each prefix compiled a scan per k),
    # and layer_grad_norms / layer_norms jitted once each.
    step = jax.jit(lambda p, s, b: _optax_step(loss, opt, p, s, b)[:2])
    grad_norms = jax.jit(lambda p, b: gradients.layer_grad_norms(loss, p, b))
    param_norms = jax.jit(lambda p: gradients.layer_norms(p).values)
    p_k, state, done = params, opt.init(params), 0
    for m, k in enumerate(np.asarray(res.history.steps)):
        for t in range(done, k):
            p_k, state = step(p_k, state, jax.tree.map(lambda a, t=t: a[t], batches))
        done = k
        want = grad_norms(p_k, jax.tree.map(lambda a, k=k: a[k], batches))
        # float64: the two computations differ only in operation order (a few ulp per op,
        # amplified by at most k <= 4 momentum steps), far below 1e-10 relative.
        np.testing.assert_allclose(res.history.layer_grad_norms[m], want.values, rtol=1e-10)
        np.testing.assert_allclose(res.history.layer_grad_log10_norms[m], want.log10, rtol=1e-10)
        np.testing.assert_allclose(
            res.history.global_grad_norm[m], np.sqrt(np.sum(np.square(want.values))), rtol=1e-10
        )
        np.testing.assert_allclose(res.history.param_norms[m], param_norms(p_k), rtol=1e-10)
    assert res.history.loss.shape == (S,)
    assert np.all(np.isfinite(res.history.loss))


def test_monitor_uses_forward_order_for_any_params(key):
    """A plain dict whose names sort against the forward pass (z_in runs first, a_out last): the
    history's columns are layer_grad_norms' forward order, and the readout is the last column."""
    kx, ky, k1, k2 = jax.random.split(key, 4)
    params = {
        "z_in": 0.5 * jax.random.normal(k1, (3, 8)),
        "a_out": 0.5 * jax.random.normal(k2, (8, 1)),
    }
    batches = (jax.random.normal(kx, (3, 16, 3)), jax.random.normal(ky, (3, 16, 1)))

    def loss(p, b):
        return jnp.mean((jnp.tanh(b[0] @ p["z_in"]) @ p["a_out"] - b[1]) ** 2)

    h = train.fit(loss, params, batches, optax.sgd(0.1)).history
    # jitted reference (one compile; eager dispatch compiled each primitive)
    want = jax.jit(lambda p, b: gradients.layer_grad_norms(loss, p, b))(
        params, jax.tree.map(lambda a: a[0], batches)
    )
    assert want.names == ("z_in", "a_out")
    # float32, the scan vs a separate jitted program: a few ulp.
    np.testing.assert_allclose(h.layer_grad_norms[0], want.values, rtol=1e-5)
    np.testing.assert_allclose(h.layer_grad_log10_norms[0], want.log10, rtol=1e-5, atol=1e-6)


def test_update_ratios_are_update_over_param_norms(key, x64):
    """Plain SGD updates by −lr·g, so ‖Δθ_l‖/‖θ_l‖ = lr·‖g_l‖/‖θ_l‖ (to rounding, in float64)."""
    # the two-layer net (half the MLP's compile time): the identity holds layer by layer
    params, batches, loss = _tiny_problem(key, S, jnp.float64)
    lr = 0.05
    h = train.fit(loss, params, batches, optax.sgd(lr)).history
    np.testing.assert_allclose(h.update_ratios, lr * h.layer_grad_norms / h.param_norms, rtol=1e-12)


def test_loss_history_matches_a_manual_loop(key, x64):
    # the two-layer net (half the MLP's compile time): any loss shows a wrong step or state
    params, batches, loss = _tiny_problem(key, S, jnp.float64)
    opt = optax.adam(1e-2)
    res = train.fit(loss, params, batches, opt, monitor_every=4)
    # The manual loop jits its step (compiled once; eager dispatch compiled every primitive):
    # still a program independent of fit's scan.
    step = jax.jit(lambda p, s, b: _optax_step(loss, opt, p, s, b))
    p, state, losses = params, opt.init(params), []
    for t in range(S):
        p, state, value = step(p, state, jax.tree.map(lambda a, t=t: a[t], batches))
        losses.append(value)
    # float64, same operations in a different order (scan vs a loop of steps): ~1e-12.
    np.testing.assert_allclose(res.history.loss, losses, rtol=1e-10)
    for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(p)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # S = 6 with monitor_every = 4: records at steps 0 and 4.
    np.testing.assert_array_equal(res.history.steps, [0, 4])


def _planted(params, plant_step, plant_layer):
    """A loss whose layer ``plant_layer`` gets an infinite gradient at step ``plant_step`` only."""
    n_layers = len(jax.eval_shape(gradients.layer_norms, params))  # names only, nothing computed
    plant = np.zeros((S, n_layers), np.float32)
    plant[plant_step, plant_layer] = np.inf

    def loss(p, c):
        # Σ_l c_l ‖θ_l‖²: layer l's gradient is 2 c_l θ_l, infinite only where c_l = inf.
        return jnp.sum(c * gradients.layer_norms(p).values ** 2) + sum(
            jnp.sum(jnp.square(x)) for x in jax.tree.leaves(p)
        )

    return loss, jnp.asarray(plant)


@pytest.mark.parametrize("plant_step,plant_layer", [(3, 2), (0, 4), (5, 0)])
def test_nan_detector_reports_planted_step_and_layer(key, plant_step, plant_layer):
    _, params, _, _ = _mlp_problem(key)
    loss, plant = _planted(params, plant_step, plant_layer)
    with pytest.raises(train.DivergenceError) as info:
        train.fit(loss, params, plant, optax.sgd(0.01))
    err = info.value
    assert err.step == plant_step
    assert err.layer == plant_layer
    assert not err.loss_finite
    assert f"step {plant_step}" in str(err) and f"layer {plant_layer}" in str(err)
    # Never trained on the NaN: the returned params are those after plant_step clean steps,
    # read from a clean run over all S steps that records its params at every step (eval_fn
    # sees the params a step starts from). That run is one compiled program for every
    # plant_step, where fitting each clean prefix compiled a scan per length.
    if plant_step:
        clean = train.fit(
            loss, params, jnp.zeros_like(plant), optax.sgd(0.01), eval_fn=lambda p: p
        ).history.metrics
    want = jax.tree.map(lambda a: a[plant_step], clean) if plant_step else params
    for a, b in zip(jax.tree.leaves(err.result.params), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)
    h = err.result.history
    assert np.all(np.isfinite(h.loss[:plant_step])) and not np.isfinite(h.loss[plant_step])
    assert np.all(np.isnan(h.loss[plant_step + 1 :]))


def test_forward_overflow_names_no_layer(key):
    """A NaN input at step 2 makes the loss and every gradient non-finite: layer −1, not the
    readout (which the last-bad-index rule alone would name). (An infinite input would not do:
    tanh saturates it, and only the input layer's gradient is non-finite — reported as layer 0.)

    Data given to ``fit`` is checked first, so a NaN there is reported as bad data; one that
    appears inside the compiled loop (a ``batch_fn``'s batch) reaches the divergence detector."""
    _, params, (x, y), loss = _mlp_problem(key)
    x = x.at[2, 0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match=r"^batches\[0\] contains non-finite values \(NaN\)"):
        train.fit(loss, params, (x, y), optax.sgd(0.01))
    with pytest.raises(train.DivergenceError) as info:
        train.fit(loss, params, lambda k, t: (x[t], y[t]), optax.sgd(0.01), steps=S, key=key)
    err = info.value
    assert (err.step, err.layer, err.loss_finite) == (2, -1, False)
    assert np.all(~np.isfinite(np.asarray(err.result.divergence.layer_grad_norms)))
    assert "no single layer" in str(err)


def test_exploding_threshold_reports_first_layer_in_backprop_order(key):
    """With max_grad_norm, the reported layer is the last (closest to the readout) above it."""
    _, params, batches, loss = _mlp_problem(key)
    norms = jax.jit(lambda p, b: gradients.layer_grad_norms(loss, p, b).values)  # one compile
    g0 = np.asarray(norms(params, jax.tree.map(lambda a: a[0], batches)))
    threshold = float(np.median(g0))
    want = int(np.max(np.nonzero(g0 > threshold)[0]))
    with pytest.raises(train.DivergenceError) as info:
        train.fit(loss, params, batches, optax.sgd(0.01), max_grad_norm=threshold)
    assert (info.value.step, info.value.layer, info.value.loss_finite) == (0, want, True)


def test_forward_overflow_is_caught(key):
    """An infinite input at step 2 makes the forward pass NaN (inf − inf in the first matmul)."""
    _, params, (x, y), loss = _mlp_problem(key)
    x = x.at[2].set(jnp.inf)
    with pytest.raises(train.DivergenceError) as info:
        train.fit(loss, params, (x, y), optax.sgd(0.01))
    assert info.value.step == 2 and not info.value.loss_finite


def test_make_fit_reports_instead_of_raising_and_vmaps(key):
    # The two-layer net of _tiny_problem compiles in half the MLP's time; the property holds
    # for any net.
    params, _, _ = _tiny_problem(key, 1)
    loss, plant = _planted(params, 2, 1)
    run = train.make_fit(loss, optax.sgd(0.01))
    both = jax.vmap(run)(
        jax.tree.map(lambda a: jnp.stack([a, a]), params), jnp.stack([plant, jnp.zeros_like(plant)])
    )
    np.testing.assert_array_equal(both.divergence.diverged, [True, False])
    np.testing.assert_array_equal(both.divergence.step, [2, -1])
    np.testing.assert_array_equal(both.divergence.layer, [1, -1])
    single = jax.jit(run)(params, jnp.zeros_like(plant))
    # vmap vs a single run: identical programs up to batching, float32 agreement to ~1e-6.
    np.testing.assert_allclose(both.history.loss[1], single.history.loss, rtol=1e-5)


def test_clipping_bounds_the_update_norm(key):
    """SGD(lr) after clipping at c moves the parameters by at most lr·c, whatever the gradient."""
    # The two-layer net of _tiny_problem (half the MLP's compile time); the bound holds for any
    # net, and test_clipping_threshold_can_be_traced reuses the unclipped run's program.
    params, (x, y), loss = _tiny_problem(key, S)
    big = (100.0 * x, 100.0 * y)  # gradients far above the threshold
    lr, c = 0.1, 0.5
    for opt, bounded in ((train.sgd(lr, clip_norm=c), True), (optax.sgd(lr), False)):
        h = train.fit(loss, params, big, opt).history
        update_norm = np.sqrt(np.sum(np.square(h.update_ratios * h.param_norms), axis=1))
        if bounded:
            # the clipped update has norm exactly lr·c when clipping triggers; 1e-5 relative
            # allows float32 rounding in the rescaling and in the ratio·norm reconstruction.
            assert np.all(h.global_grad_norm > c)
            np.testing.assert_array_less(update_norm, lr * c * (1 + 1e-5))
            np.testing.assert_allclose(update_norm, lr * c, rtol=1e-5)
        else:
            assert np.all(update_norm > 10 * lr * c)


def test_clipping_threshold_can_be_traced(key):
    """max_norm = inf under vmap disables clipping: equal to the unclipped run."""
    # The two-layer net of _tiny_problem compiles in half the MLP's time; the property holds
    # for any net.
    params, batches, loss = _tiny_problem(key, S)

    def one(c):
        return train.make_fit(loss, train.with_clipping(optax.sgd(0.1), c))(params, batches)

    both = jax.jit(jax.vmap(one))(jnp.array([jnp.inf, 1e-3]))
    # fit's program of test_clipping_bounds_the_update_norm's unclipped run (compiled once)
    plain = train.fit(loss, params, batches, optax.sgd(0.1))
    # the same scan, batched vs not: float32 agreement to ~1e-6 relative.
    np.testing.assert_allclose(both.history.loss[0], plain.history.loss, rtol=1e-5)
    assert not np.allclose(both.history.loss[1], plain.history.loss, rtol=1e-3)


def test_rprop_is_invariant_to_the_gradient_scale(key):
    """Rprop uses only gradient signs: scaling the loss by 1e-6 changes nothing.

    (1e-6, not smaller: Rprop compares signs of g_t·g_{t−1}, which must not underflow float32.)
    """
    # The two-layer net of _tiny_problem compiles in half the MLP's time; the property holds
    # for any net.
    params, (x, y), loss = _tiny_problem(key, S)
    # The scale travels with the batches (1.0 · loss is exactly loss), so both runs are one
    # compiled program.
    scaled = lambda p, bt: bt[2][0] * loss(p, bt[:2])  # noqa: E731
    a = train.fit(scaled, params, (x, y, jnp.ones((S, 1))), train.rprop(1e-3))
    b = train.fit(scaled, params, (x, y, jnp.full((S, 1), 1e-6)), train.rprop(1e-3))
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(u, v)


@pytest.mark.slow  # ~7 s of compilation (two RNN training programs)
def test_state_grad_hook_matches_gradients_state_grad_norms(key):
    model = gf.models.LSTM(width=6, out_features=1)
    ku, ky, kp = jax.random.split(key, 3)
    u = jax.random.normal(ku, (S, 4, 7, 2))
    y = jax.random.normal(ky, (S, 4, 1))
    params = model.init(kp, u[0])
    mse = lambda out, t: jnp.mean((out - t) ** 2)
    loss = lambda p, b: mse(model.apply(p, b[0]), b[1])
    hook = train.recurrent_state_grad_fn(model, mse)
    res = train.fit(loss, params, (u, y), optax.sgd(0.1), monitor_every=3, state_grad_fn=hook)
    assert res.history.state_grad_norms.shape == (2, 8)  # steps 0 and 3, states h_0 … h_7
    readout = params["params"]["readout"]

    def final_loss(state):  # the model's loss as a function of its final (c, h) state
        z = state[1] @ readout["kernel"]
        return mse(z + jnp.broadcast_to(readout["bias"], z.shape), y[0])

    # jitted reference (one compile; eager dispatch compiled each primitive)
    want = jax.jit(lambda p, u: gradients.state_grad_norms(model.chain(p, u), final_loss))(
        params, u[0]
    )
    # float32, two jit compilations of the same scan: ~1e-6 relative; 1e-4 leaves margin.
    np.testing.assert_allclose(res.history.state_grad_norms[0], want, rtol=1e-4)
    assert np.all(res.history.state_grad_norms > 0)


def _linear_rnn(key, c, width=5, steps=9, batch=3):
    model = gf.models.RNN(width=width, activation="linear", recurrent_init=gf.init.orthogonal(c))
    u = jax.random.normal(key, (batch, steps, 2))
    return model, model.init(jax.random.key(7), u), u


@pytest.mark.parametrize("c", [0.5, 1.0, 1.7])
def test_pascanu_regularizer_closed_form(key, c, x64):
    """Linear RNN with W = c·Q (Q orthogonal): every step scales any error by c, so
    Ω = (c − 1)², and ⟨∇_W Ω, W⟩ = d/ds Ω at W(1+s) = 2c(c − 1)."""
    model, params, u = _linear_rnn(key, c)
    final = lambda h: jnp.sum(jnp.sin(h))  # any loss with a non-zero gradient

    def omega(params, u, w):
        p = jax.tree.map(lambda a: a, params)
        p["params"]["recurrent"]["kernel"] = w
        return train.pascanu_regularizer(model.chain(p, u), final)

    # Ω and ⟨∇_W Ω, W⟩ in one jitted program (eager dispatch compiled every primitive); params
    # and u are arguments, not constants, so the three values of c share one compilation.
    both = jax.jit(
        lambda p, u, w: (omega(p, u, w), jnp.sum(jax.grad(omega, argnums=2)(p, u, w) * w))
    )
    value, slope = both(params, u, params["params"]["recurrent"]["kernel"])
    # float64 closed forms: only rounding in the orthogonal init and products (~1e-15).
    np.testing.assert_allclose(value, (c - 1) ** 2, atol=1e-12)
    np.testing.assert_allclose(slope, 2 * c * (c - 1), atol=1e-10)


@pytest.mark.slow  # ~6 s: a 60-step RNN and an LSTM, each differentiated
def test_pascanu_regularizer_survives_vanished_errors_and_lstm_state(key):
    """W = 0.05·Q over 60 steps: the raw error shrinks by 0.05^60 ≈ 1e-78 (below float32), yet Ω
    uses only its direction and stays exact; an LSTM's (c, h) state is handled as one vector."""
    model, params, u = _linear_rnn(key, 0.05, steps=60)
    # Everything jitted: eager dispatch compiled each primitive of the 60-step chain.
    omega = jax.jit(
        lambda p, u: train.pascanu_regularizer(model.chain(p, u), lambda h: jnp.sum(h))
    )(params, u)
    # float32 closed form (0.05 − 1)²: relative rounding ~1e-6.
    np.testing.assert_allclose(omega, 0.95**2, rtol=1e-5)
    lstm = gf.models.LSTM(width=4)
    p = jax.jit(lstm.init)(key, u)
    mse = lambda out, t: jnp.mean((out - t) ** 2)
    loss = train.with_pascanu_regularizer(lstm, mse, 0.5)
    value, g = jax.jit(jax.value_and_grad(loss))(p, (u, jnp.zeros((3, 1))))
    assert np.isfinite(value) and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g))
    assert float(jnp.abs(g["params"]["recurrent"]["kernel"]).sum()) > 0


def test_pascanu_regularizer_gradient_is_finite_when_every_unit_saturates(key):
    """Inputs of size ~1e3 drive every tanh unit to |x| > 10, where float32's tanh' is exactly 0:
    every step after the first (which starts at x_0 = 0, where tanh' = 1) back-propagates the
    zero vector, so Ω = (5·(0 − 1)² + (r_0 − 1)²)/6 ≥ 5/6, and its gradient must be finite, not
    the NaN of √'(0) — even α = 0 times a NaN gradient would be reported as a divergence."""
    model = gf.models.RNN(width=4, activation="tanh", input_init=gf.init.gaussian(1e3))
    u = jax.random.normal(key, (2, 6, 3))
    params = model.init(jax.random.key(3), u)
    omega = lambda p: train.pascanu_regularizer(model.chain(p, u), lambda h: jnp.sum(h))
    value, g = jax.jit(jax.value_and_grad(omega))(params)  # one compile instead of eager ops
    assert float(value) >= 5 / 6 - 1e-6  # float32 rounding of the mean only
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g))


def test_argument_errors(key):
    params, batches, loss = _tiny_problem(key, S)  # the last run compiles in half the MLP's time
    with pytest.raises(ValueError, match="monitor_every"):
        train.fit(loss, params, batches, optax.sgd(0.1), monitor_every=0)
    with pytest.raises(ValueError, match="leading axis"):
        train.fit(loss, params, (batches[0], batches[1][:3]), optax.sgd(0.1))
    with pytest.raises(TypeError, match="optax"):
        train.fit(loss, params, batches, "sgd")
    with pytest.raises(ValueError, match="max_norm"):
        train.with_clipping(optax.sgd(0.1), -1.0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        train.fit(loss, params, batches, optax.sgd(0.1), max_grad_norm=0.0)
    assert math.isfinite(float(train.fit(loss, params, batches, train.adam(1e-3)).history.loss[-1]))


# --------------------------------------------------------------------------------------------
# streaming fit: iterators, batch_fn, segments, callback, progress, to_dataframe
# --------------------------------------------------------------------------------------------


def _tiny_problem(key, steps, dtype=jnp.float32):
    """A two-layer tanh net on a plain dict (cheap to compile) and S stacked NumPy batches."""
    kx, ky, k1, k2 = jax.random.split(key, 4)
    params = {
        "input": 0.5 * jax.random.normal(k1, (3, 6), dtype),
        "readout": 0.5 * jax.random.normal(k2, (6, 1), dtype),
    }
    x = np.asarray(jax.random.normal(kx, (steps, 8, 3), dtype))
    y = np.asarray(jax.random.normal(ky, (steps, 8, 1), dtype))

    def loss(p, b):
        return jnp.mean((jnp.tanh(b[0] @ p["input"]) @ p["readout"] - b[1]) ** 2)

    return params, (x, y), loss


def _assert_trees_equal(a, b):
    """Bitwise equality of two pytrees (same structure, dtypes and bits; NaN equals NaN)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        u, v = np.asarray(u), np.asarray(v)
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("use_x64", [False, True], ids=["float32", "float64"])
def test_streamed_fit_equals_stacked_bitwise(key, use_x64, capsys, request):
    """The same 11 batches, stacked (one scan) or from a generator in segments of 4 (which do not
    divide 11, so the last segment is padded): bitwise the same parameters, optimiser state,
    History and callback records. One compiled segment function serves every segment: the loss
    is traced while the first segment compiles and never again. Nothing is printed."""
    if use_x64:
        request.getfixturevalue("x64")
    dtype = jnp.float64 if use_x64 else jnp.float32
    s, every, seg = 11, 3, 4
    params, (x, y), loss = _tiny_problem(key, s, dtype)
    traces = []

    def counted_loss(p, b):
        traces.append(None)  # runs only while JAX traces the loss
        return loss(p, b)

    opt = optax.adam(1e-2)
    seen = {"stacked": [], "streamed": []}

    def recorder(name):
        return lambda step, stats: seen[name].append((step, stats, len(traces)))

    stacked = train.fit(
        counted_loss, params, (x, y), opt, monitor_every=every, callback=recorder("stacked")
    )
    gen = ((x[t], y[t]) for t in range(s))
    streamed = train.fit(
        counted_loss, params, gen, opt, monitor_every=every, segment=seg,
        callback=recorder("streamed"),
    )  # fmt: skip
    _assert_trees_equal(stacked.params, streamed.params)
    _assert_trees_equal(stacked.opt_state, streamed.opt_state)
    _assert_trees_equal(stacked.history, streamed.history)
    assert streamed.history.layer_names == ("input", "readout")
    np.testing.assert_array_equal(streamed.history.steps, [0, 3, 6, 9])
    assert capsys.readouterr() == ("", "")  # progress=None: stderr is not a terminal here
    # Callback: once per monitored step, in order, with the History's numbers.
    for name in seen:
        assert [step for step, _, _ in seen[name]] == [0, 3, 6, 9]
    for (step, a, _), (_, b, _) in zip(seen["stacked"], seen["streamed"]):
        _assert_trees_equal(a, b)
        assert isinstance(b, train.StepStats) and isinstance(b.grad_stats.grad_log10, np.ndarray)
        assert b.loss == streamed.history.loss[step]
    m_last = len(seen["streamed"]) - 1
    np.testing.assert_array_equal(
        seen["streamed"][m_last][1].grad_stats.grad_log10,
        streamed.history.layer_grad_log10_norms[m_last],
    )
    # Segments 2 and 3 (steps 4-7, 8-10: monitored 6 and 9) reuse segment 1's compilation.
    assert seen["streamed"][1][2] == seen["streamed"][2][2] == seen["streamed"][3][2]

    # The record of step 0 is monitor.grad_stats of that step's gradient, update and params,
    # computed here by hand: fit and a user's own loop give the same numbers.
    # (One jitted program, separate from fit's: eager dispatch compiled every primitive.)
    @jax.jit
    def by_hand(params, batch0):
        grads = jax.grad(loss)(params, batch0)
        updates, _ = opt.update(grads, opt.init(params), params)
        return monitor.grad_stats(grads, updates, params, order=("input", "readout"))

    want = by_hand(params, (x[0], y[0]))
    got = seen["streamed"][0][1].grad_stats
    assert got.names == want.names
    # two compilations of the same operations: a few ulp of log10 of O(1) norms (float32 eps
    # 1.2e-7, float64 2.2e-16), so 1e-6 / 1e-13 absolute.
    atol = 1e-13 if use_x64 else 1e-6
    for field in ("grad_log10", "update_log10", "param_log10", "global_grad_log10"):
        np.testing.assert_allclose(getattr(got, field), getattr(want, field), rtol=0, atol=atol)
    assert not got.nonfinite


def test_batch_fn_equals_the_same_batches_stacked(key):
    """batch_fn(fold_in(key, t), t), generated inside the segmented scan, against the same
    batches from jax.jit(batch_fn) stacked: bitwise the same run. (fit puts an optimisation
    barrier after batch_fn, so its arithmetic compiles as in jax.jit(batch_fn); op-by-op eager
    calls may round a multiply-add differently.) The targets depend on t and on a matmul, so a
    wrong step or key, or a batch fused into the step, would show."""
    params, _, loss = _tiny_problem(key, 1)
    w = jnp.arange(3.0)

    def batch_fn(k, t):
        kx, ky = jax.random.split(k)
        x = jax.random.normal(kx, (8, 3)) + 0.01 * t.astype(jnp.float32)
        return x, jnp.tanh(x @ w)[:, None] + 0.1 * jax.random.normal(ky, (8, 1))

    data_key, s = jax.random.key(11), 9
    opt = optax.sgd(0.1, momentum=0.9)
    jitted = jax.jit(batch_fn)
    each = [jitted(jax.random.fold_in(data_key, t), jnp.int32(t)) for t in range(s)]
    stacked = train.fit(loss, params, jax.tree.map(lambda *a: jnp.stack(a), *each), opt)
    generated = train.fit(loss, params, batch_fn, opt, steps=s, key=data_key, segment=4)
    _assert_trees_equal(stacked.params, generated.params)
    _assert_trees_equal(stacked.history, generated.history)
    assert generated.history.loss.shape == (s,)


def test_divergence_in_a_middle_segment_stops_pulling_batches(key):
    """An infinite gradient planted in layer 1 at step 9, segments of 4: the error names step 9
    and layer 1, the iterator is consumed through the divergent segment (steps 8-11) and no
    further, the run up to it equals the stacked run's bitwise, and the callback stops at 9."""
    params, _, _ = _tiny_problem(key, 1)
    s, plant_step, seg = 16, 9, 4
    plant = np.zeros((s, 2), np.float32)
    plant[plant_step, 1] = np.inf

    def loss(p, c):
        # Σ_l c_l ‖θ_l‖² + ‖θ‖²: layer l's gradient is infinite only where c_l = inf.
        norms = gradients.layer_norms(p).values
        return jnp.sum(c * norms**2) + jnp.sum(norms**2)

    pulled = []

    def rows():
        for t in range(s):
            pulled.append(t)
            yield plant[t]

    steps_seen = []
    with pytest.raises(train.DivergenceError) as info:
        train.fit(
            loss, params, rows(), optax.sgd(0.01), monitor_every=2, segment=seg,
            callback=lambda step, stats: steps_seen.append(step),
        )  # fmt: skip
    err = info.value
    assert (err.step, err.layer, err.loss_finite) == (plant_step, 1, False)
    assert pulled == list(range(12))  # the divergent segment's batches, none after
    assert steps_seen == [0, 2, 4, 6, 8]  # monitored steps up to the divergent one (9)
    h = err.result.history
    assert h.loss.shape == (12,) and h.steps.shape == (6,)
    assert np.all(np.isfinite(h.loss[:plant_step])) and not np.isfinite(h.loss[plant_step])
    assert np.all(np.isnan(h.loss[plant_step + 1 :]))  # the rest of the divergent segment
    with pytest.raises(train.DivergenceError) as whole:
        train.fit(loss, params, plant, optax.sgd(0.01), monitor_every=2)
    ref = whole.value.result
    _assert_trees_equal(err.result.params, ref.params)
    _assert_trees_equal(err.result.divergence, ref.divergence)
    _assert_trees_equal(h.loss, ref.history.loss[:12])
    _assert_trees_equal(h.layer_grad_log10_norms, ref.history.layer_grad_log10_norms[:6])


def test_progress_bar_only_when_asked(key, capsys):
    """progress=False prints nothing; progress=True draws the bar (steps, loss) on stderr."""
    # 5 steps: the program of test_endless_iterator_stops_at_steps's stacked run (one compile)
    params, batches, loss = _tiny_problem(key, 5)
    train.fit(loss, params, batches, optax.sgd(0.1), progress=False)
    assert capsys.readouterr() == ("", "")
    train.fit(loss, params, batches, optax.sgd(0.1), progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "5/5" in err and "loss" in err


def test_fit_with_a_monitored_optimizer(key):
    """An optimiser wrapped by gradflow's monitor (its state holds GradStats with static names,
    ints and bools): fit runs it, stacked and streamed alike, and the monitor's record of the last
    monitored step holds the gradient norms fit recorded there."""
    params, (x, y), loss = _tiny_problem(key, 5)
    opt = monitor.monitor(optax.adam(1e-2), every=2)
    stacked = train.fit(loss, params, (x, y), opt, monitor_every=2)
    streamed = train.fit(loss, params, zip(x, y), opt, monitor_every=2, segment=2)
    _assert_trees_equal(stacked.params, streamed.params)
    _assert_trees_equal(stacked.opt_state, streamed.opt_state)
    rec = monitor.read_monitor(streamed.opt_state)
    assert rec.step == 4 and rec.names == streamed.history.layer_names
    # The same named_norms of the same gradient inside one program; float32 log10 of O(1) norms
    # to a few ulp (read_monitor converts to float64 exactly).
    np.testing.assert_allclose(
        rec.grad_log10, streamed.history.layer_grad_log10_norms[-1], rtol=0, atol=1e-6
    )


def test_history_to_dataframe(key):
    """One row per monitored step; every column is the History's own array, by layer name."""
    params, batches, loss = _tiny_problem(key, 5)
    metrics = lambda p: {"w": jnp.sum(p["readout"]), "v": p["input"][0, :2]}  # noqa: E731
    h = train.fit(loss, params, batches, optax.sgd(0.1), monitor_every=2, eval_fn=metrics).history
    df = h.to_dataframe()
    assert list(df.index) == [0, 2, 4] and df.index.name == "step"
    names = ("input", "readout")
    assert h.layer_names == names
    want = {
        "loss": np.asarray(h.loss)[[0, 2, 4]],
        "global_grad_norm": h.global_grad_norm,
        "metrics/w": h.metrics["w"],
        "metrics/v/0": h.metrics["v"][:, 0],
        "metrics/v/1": h.metrics["v"][:, 1],
    }
    for prefix, values in [
        ("grad_norm", h.layer_grad_norms),
        ("grad_log10_norm", h.layer_grad_log10_norms),
        ("update_ratio", h.update_ratios),
        ("param_norm", h.param_norms),
    ]:
        want.update({f"{prefix}/{n}": values[:, i] for i, n in enumerate(names)})
    assert sorted(df.columns) == sorted(want)
    for column, values in want.items():
        assert df[column].dtype == np.float32
        np.testing.assert_array_equal(df[column].to_numpy(), values)
    # Without names (a History built by hand) the columns are the layer indices.
    assert "grad_norm/1" in h._replace(layer_names=None).to_dataframe().columns
    with pytest.raises(ValueError, match="one run"):
        jax.tree.map(lambda a: jnp.stack([a, a]), h).to_dataframe()


def test_streaming_argument_errors(key):
    params, batches, loss = _tiny_problem(key, 3)
    opt = optax.sgd(0.1)

    def batch_fn(k, t):
        return jax.random.normal(k, (8, 3)), jnp.zeros((8, 1))

    with pytest.raises(ValueError, match="steps is required"):
        train.fit(loss, params, batch_fn, opt, key=key)
    with pytest.raises(ValueError, match="key is required"):
        train.fit(loss, params, batch_fn, opt, steps=3)
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        train.fit(loss, params, batch_fn, opt, steps=3, key=1.0)
    with pytest.raises(ValueError, match="key is only used"):
        train.fit(loss, params, batches, opt, key=key)
    with pytest.raises(ValueError, match="segment must be >= 1"):
        train.fit(loss, params, iter([]), opt, segment=0)
    with pytest.raises(TypeError, match="steps must be an integer"):
        train.fit(loss, params, batch_fn, opt, steps=2.5, key=key)
    with pytest.raises(ValueError, match="steps must be <= S = 3"):
        train.fit(loss, params, batches, opt, steps=4)
    with pytest.raises(TypeError, match="callback must be callable"):
        train.fit(loss, params, batches, opt, callback="print")
    with pytest.raises(TypeError, match="progress must be"):
        train.fit(loss, params, batches, opt, progress="yes")
    with pytest.raises(ValueError, match="batches: the iterator yielded no batch"):
        train.fit(loss, params, iter([]), opt)
    x, y = batches
    changing = [(x[0], y[0]), (x[1], y[1]), (x[2][:4], y[2][:4])]  # step 2: a smaller batch
    with pytest.raises(ValueError, match=r"batches: the batch at step 2 .* step 0's was"):
        train.fit(loss, params, iter(changing), opt)
    with pytest.raises(ValueError, match="batches: the batch at step 1"):
        train.fit(loss, params, iter([(x[0], y[0]), {"x": x[1], "y": y[1]}]), opt)

    def not_jittable(k, t):
        return np.full((8, 3), float(t)), np.zeros((8, 1))

    with pytest.raises(TypeError, match="batch_fn.*jittable"):
        train.fit(loss, params, not_jittable, opt, steps=3, key=key)


# fit on STEPS steps from a generator (a 3-16-1 tanh net, batches of 32, monitor_every=100):
# prints the process's peak resident set size in MiB. Run in a fresh process per measurement.
_STREAM_MEMORY_SCRIPT = """
import sys
import jax, jax.numpy as jnp, numpy as np, optax
from gradflow import train
steps = int(sys.argv[1])
rng = np.random.default_rng(0)
xs = rng.standard_normal((64, 128, 32)).astype(np.float32)
ys = rng.standard_normal((64, 128, 1)).astype(np.float32)
k1, k2 = jax.random.split(jax.random.key(0))
params = {"input": 0.3 * jax.random.normal(k1, (32, 16)),
          "readout": 0.3 * jax.random.normal(k2, (16, 1))}
loss = lambda p, b: jnp.mean((jnp.tanh(b[0] @ p["input"]) @ p["readout"] - b[1]) ** 2)
batches = ((xs[t % 64], ys[t % 64]) for t in range(steps))
res = train.fit(loss, params, batches, optax.sgd(0.01), monitor_every=100)
assert res.history.loss.shape == (steps,) and np.isfinite(float(res.history.loss[-1]))
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
print(int(peak.split()[1]) / 1024)
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM (Linux)")
def test_streamed_fit_memory_does_not_grow_with_steps():
    """10^4 and 10^5 streamed steps reach the same peak RSS, within allocator noise.

    Each batch is 128 × (32 + 1) float32 = 16.9 kB, so holding the 9·10^4 extra batches, as a
    stacked pytree does, would add ≈ 1.5 GB. A streamed run holds only one segment's batches and
    ~1 MB more History. Margin 100 MiB: peak RSS of one run varies by ±15 MiB between runs of the
    same size here (7 runs of 10^4 … 3·10^5 steps: 374–398 MiB, not growing with steps) and a CI
    run once measured +25 MiB; 100 MiB is still 15× below what retaining the batches costs.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def peak(steps):
        out = subprocess.run(
            [sys.executable, "-c", _STREAM_MEMORY_SCRIPT, str(steps)],
            capture_output=True, text=True, env=env, cwd=root, timeout=120, check=True,
        )  # fmt: skip
        return float(out.stdout.split()[-1])

    small, large = peak(10_000), peak(100_000)
    assert large - small < 100.0, (small, large)


def test_endless_iterator_stops_at_steps(key):
    """steps=5 on an endless iterator, segments of 2: exactly 5 batches are pulled and the run
    is bitwise the stacked run on those 5."""
    params, (x, y), loss = _tiny_problem(key, 5)
    pulled = []

    def endless():
        t = 0
        while True:
            pulled.append(t)
            yield x[t % 5], y[t % 5]
            t += 1

    res = train.fit(loss, params, endless(), optax.sgd(0.1), steps=5, segment=2)
    assert pulled == [0, 1, 2, 3, 4]
    want = train.fit(loss, params, (x, y), optax.sgd(0.1))
    _assert_trees_equal(res.params, want.params)
    _assert_trees_equal(res.history, want.history)
