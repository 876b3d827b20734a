"""gradflow.train: monitors, divergence detection, clipping, Rprop, Pascanu's regulariser."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradflow as gf
from gradflow import gradients, train

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


def test_monitor_equals_layer_grad_norms_at_the_same_step(key, x64):
    """history.layer_grad_norms[m] is gradients.layer_grad_norms at the params of step steps[m]."""
    _, params, batches, loss = _mlp_problem(key)
    opt = optax.sgd(0.1, momentum=0.9)
    res = train.fit(loss, params, batches, opt, monitor_every=2)
    np.testing.assert_array_equal(res.history.steps, [0, 2, 4])
    assert res.history.layer_grad_norms.shape == (3, 5)  # input, 3 hidden, readout
    for m, k in enumerate(np.asarray(res.history.steps)):
        p_k = (
            params
            if k == 0
            else train.fit(loss, params, jax.tree.map(lambda a, k=k: a[:k], batches), opt).params
        )
        want = gradients.layer_grad_norms(loss, p_k, jax.tree.map(lambda a, k=k: a[k], batches))
        # float64: the two computations differ only in jit-vs-eager operation order (a few ulp per
        # op, amplified by at most k <= 4 momentum steps), far below 1e-10 relative.
        np.testing.assert_allclose(res.history.layer_grad_norms[m], want.values, rtol=1e-10)
        np.testing.assert_allclose(res.history.layer_grad_log10_norms[m], want.log10, rtol=1e-10)
        np.testing.assert_allclose(
            res.history.global_grad_norm[m], np.sqrt(np.sum(np.square(want.values))), rtol=1e-10
        )
        np.testing.assert_allclose(
            res.history.param_norms[m], gradients.layer_norms(p_k).values, rtol=1e-10
        )
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
    want = gradients.layer_grad_norms(loss, params, jax.tree.map(lambda a: a[0], batches))
    assert want.names == ("z_in", "a_out")
    # float32, jit vs eager: a few ulp.
    np.testing.assert_allclose(h.layer_grad_norms[0], want.values, rtol=1e-5)
    np.testing.assert_allclose(h.layer_grad_log10_norms[0], want.log10, rtol=1e-5, atol=1e-6)


def test_update_ratios_are_update_over_param_norms(key, x64):
    """Plain SGD updates by −lr·g, so ‖Δθ_l‖/‖θ_l‖ = lr·‖g_l‖/‖θ_l‖ (to rounding, in float64)."""
    _, params, batches, loss = _mlp_problem(key)
    lr = 0.05
    h = train.fit(loss, params, batches, optax.sgd(lr)).history
    np.testing.assert_allclose(h.update_ratios, lr * h.layer_grad_norms / h.param_norms, rtol=1e-12)


def test_loss_history_matches_a_manual_loop(key, x64):
    _, params, batches, loss = _mlp_problem(key)
    opt = optax.adam(1e-2)
    res = train.fit(loss, params, batches, opt, monitor_every=4)
    p, state, losses = params, opt.init(params), []
    for t in range(S):
        b = jax.tree.map(lambda a, t=t: a[t], batches)
        value, g = jax.value_and_grad(loss)(p, b)
        u, state = opt.update(g, state, p)
        p = optax.apply_updates(p, u)
        losses.append(value)
    # float64, same operations in a different (jit vs eager) order: agreement to ~1e-12.
    np.testing.assert_allclose(res.history.loss, losses, rtol=1e-10)
    for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(p)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # S = 6 with monitor_every = 4: records at steps 0 and 4.
    np.testing.assert_array_equal(res.history.steps, [0, 4])


def _planted(params, plant_step, plant_layer):
    """A loss whose layer ``plant_layer`` gets an infinite gradient at step ``plant_step`` only."""
    n_layers = len(gradients.layer_norms(params))
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
    # Never trained on the NaN: the returned params are those after plant_step clean steps.
    clean = (
        train.fit(loss, params, jnp.zeros_like(plant[:plant_step]), optax.sgd(0.01))
        if plant_step
        else None
    )
    want = clean.params if clean is not None else params
    for a, b in zip(jax.tree.leaves(err.result.params), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)
    h = err.result.history
    assert np.all(np.isfinite(h.loss[:plant_step])) and not np.isfinite(h.loss[plant_step])
    assert np.all(np.isnan(h.loss[plant_step + 1 :]))


def test_forward_overflow_names_no_layer(key):
    """A NaN input at step 2 makes the loss and every gradient non-finite: layer −1, not the
    readout (which the last-bad-index rule alone would name). (An infinite input would not do:
    tanh saturates it, and only the input layer's gradient is non-finite — reported as layer 0.)"""
    _, params, (x, y), loss = _mlp_problem(key)
    x = x.at[2, 0, 0].set(jnp.nan)
    with pytest.raises(train.DivergenceError) as info:
        train.fit(loss, params, (x, y), optax.sgd(0.01))
    err = info.value
    assert (err.step, err.layer, err.loss_finite) == (2, -1, False)
    assert np.all(~np.isfinite(np.asarray(err.result.divergence.layer_grad_norms)))
    assert "no single layer" in str(err)


def test_exploding_threshold_reports_first_layer_in_backprop_order(key):
    """With max_grad_norm, the reported layer is the last (closest to the readout) above it."""
    _, params, batches, loss = _mlp_problem(key)
    g0 = np.asarray(
        gradients.layer_grad_norms(loss, params, jax.tree.map(lambda a: a[0], batches)).values
    )
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
    _, params, _, _ = _mlp_problem(key)
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
    _, params, (x, y), loss = _mlp_problem(key)
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
    _, params, batches, loss = _mlp_problem(key)

    def one(c):
        return train.make_fit(loss, train.with_clipping(optax.sgd(0.1), c))(params, batches)

    both = jax.jit(jax.vmap(one))(jnp.array([jnp.inf, 1e-3]))
    plain = jax.jit(train.make_fit(loss, optax.sgd(0.1)))(params, batches)
    # same program, batched vs not: float32 agreement to ~1e-6 relative.
    np.testing.assert_allclose(both.history.loss[0], plain.history.loss, rtol=1e-5)
    assert not np.allclose(both.history.loss[1], plain.history.loss, rtol=1e-3)


def test_rprop_is_invariant_to_the_gradient_scale(key):
    """Rprop uses only gradient signs: scaling the loss by 1e-6 changes nothing.

    (1e-6, not smaller: Rprop compares signs of g_t·g_{t−1}, which must not underflow float32.)
    """
    _, params, batches, loss = _mlp_problem(key)
    a = train.fit(loss, params, batches, train.rprop(1e-3))
    b = train.fit(lambda p, bt: 1e-6 * loss(p, bt), params, batches, train.rprop(1e-3))
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(u, v)


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

    want = gradients.state_grad_norms(model.chain(params, u[0]), final_loss)
    # float32, jit vs eager evaluation of the same scan: ~1e-6 relative; 1e-4 leaves margin.
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

    def omega(w):
        p = jax.tree.map(lambda a: a, params)
        p["params"]["recurrent"]["kernel"] = w
        return train.pascanu_regularizer(model.chain(p, u), final)

    w = params["params"]["recurrent"]["kernel"]
    # float64 closed forms: only rounding in the orthogonal init and products (~1e-15).
    np.testing.assert_allclose(omega(w), (c - 1) ** 2, atol=1e-12)
    np.testing.assert_allclose(jnp.sum(jax.grad(omega)(w) * w), 2 * c * (c - 1), atol=1e-10)


def test_pascanu_regularizer_survives_vanished_errors_and_lstm_state(key):
    """W = 0.05·Q over 60 steps: the raw error shrinks by 0.05^60 ≈ 1e-78 (below float32), yet Ω
    uses only its direction and stays exact; an LSTM's (c, h) state is handled as one vector."""
    model, params, u = _linear_rnn(key, 0.05, steps=60)
    omega = train.pascanu_regularizer(model.chain(params, u), lambda h: jnp.sum(h))
    # float32 closed form (0.05 − 1)²: relative rounding ~1e-6.
    np.testing.assert_allclose(omega, 0.95**2, rtol=1e-5)
    lstm = gf.models.LSTM(width=4)
    p = lstm.init(key, u)
    mse = lambda out, t: jnp.mean((out - t) ** 2)
    loss = train.with_pascanu_regularizer(lstm, mse, 0.5)
    value, g = jax.value_and_grad(loss)(p, (u, jnp.zeros((3, 1))))
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
    value, g = jax.value_and_grad(omega)(params)
    assert float(value) >= 5 / 6 - 1e-6  # float32 rounding of the mean only
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g))


def test_argument_errors(key):
    _, params, batches, loss = _mlp_problem(key)
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
