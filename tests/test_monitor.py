"""gradflow.monitor: the optax monitor, read_monitor, and the gradient noise scale."""

import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gradflow as gf
from gradflow import gradients
from gradflow.monitor import (
    GradientNoiseScale,
    MonitorRecord,
    MonitorState,
    find_monitor,
    gradient_noise_scale,
    monitor,
    noise_scale,
    read_monitor,
)

# ------------------------------------------------------------------------------------------------
# problems
# ------------------------------------------------------------------------------------------------


class _Net(nnx.Module):
    """Attribute names sort against the forward pass: z_in runs first, a_out last."""

    def __init__(self, rngs):
        self.z_in = nnx.Linear(3, 8, rngs=rngs)
        self.m_mid = nnx.Linear(8, 8, rngs=rngs)
        self.a_out = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        return self.a_out(jnp.tanh(self.m_mid(jnp.tanh(self.z_in(x)))))


def _nnx_loss(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def _mlp(key, steps, batch=16):
    """gradflow's linen MLP (input, stacked hidden/0..1, readout) and `steps` batches."""
    model = gf.models.MLP(width=8, depth=3, activation="tanh", out_features=1)
    kp, kx, ky = jax.random.split(key, 3)
    x = jax.random.normal(kx, (steps, batch, 3))
    y = jax.random.normal(ky, (steps, batch, 1))
    params = model.init(kp, x[0])

    def loss(p, b):
        return jnp.mean((model.apply(p, b[0]) - b[1]) ** 2)

    return params, (x, y), loss


def _small(key, steps, batch=8):
    """A two-layer tanh net on plain dict parameters: cheap to compile."""
    k1, k2, kx, ky = jax.random.split(key, 4)
    params = {"w1": jax.random.normal(k1, (3, 8)) / 2, "w2": jax.random.normal(k2, (8, 1)) / 3}
    x = jax.random.normal(kx, (steps, batch, 3))
    y = jax.random.normal(ky, (steps, batch, 1))

    def loss(p, b):
        return jnp.mean((jnp.tanh(b[0] @ p["w1"]) @ p["w2"] - b[1]) ** 2)

    return params, (x, y), loss


def _linen_loop(tx, params, batches, loss):
    """A hand-written jitted loop; returns the params before each step and the records after."""

    @jax.jit
    def step(params, opt_state, batch):
        grads = jax.grad(loss)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    before, records = [], []
    for t in range(batches[0].shape[0]):
        before.append(params)
        params, opt_state = step(params, opt_state, jax.tree.map(lambda a, t=t: a[t], batches))
        records.append(read_monitor(opt_state))
    return before, records, opt_state


# ------------------------------------------------------------------------------------------------
# the monitor in nnx.Optimizer and in a linen loop
# ------------------------------------------------------------------------------------------------


def test_nnx_optimizer_chain_equals_layer_grad_norms(key):
    """optax.chain(monitor(), adam) in nnx.Optimizer under nnx.jit: the record of each step is
    gradients.layer_grad_norms at that step's params and batch, in forward order."""
    model = _Net(nnx.Rngs(0))
    graphdef, _ = nnx.split(model)

    def pure_loss(state, batch):
        return _nnx_loss(nnx.merge(graphdef, state), *batch)

    kx, ky = jax.random.split(key)
    xs, ys = jax.random.normal(kx, (3, 16, 3)), jax.random.normal(ky, (3, 16, 2))
    order = gradients.forward_order(pure_loss, nnx.state(model, nnx.Param), (xs[0], ys[0]))
    assert order == ("z_in", "m_mid", "a_out")
    tx = optax.chain(monitor(order=order, realised_updates=True), optax.adam(1e-2))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x, y):
        opt.update(model, nnx.grad(_nnx_loss)(model, x, y))

    # the references, jitted once each (eager dispatch of every op would cost more than the
    # test): the gradient and parameter norms in one program, the update ratios in another
    def norms(tree):
        return gradients.named_norms(tree, order=order).values

    reference = jax.jit(lambda p, b: (gradients.layer_grad_norms(pure_loss, p, b), norms(p)))
    ratios = jax.jit(lambda p, q: norms(jax.tree.map(jnp.subtract, p, q)) / norms(q))
    prev = None
    for t in range(3):
        params = jax.tree.map(np.array, nnx.as_pure(nnx.state(model, nnx.Param)))  # host copy
        want, param_norms = reference(params, (xs[t], ys[t]))
        step(model, opt, xs[t], ys[t])
        for rec in (read_monitor(opt), read_monitor(opt.opt_state)):
            assert isinstance(rec, MonitorRecord)
            assert rec.step == t and rec.count == t + 1 and rec.names == want.names
            # float32, the same gradient computed inside nnx.jit and eagerly: XLA may fuse and
            # reorder the sums (a few ulp per op over <= 64-term reductions), so 1e-5 relative.
            np.testing.assert_allclose(rec.grad_norms, want.values, rtol=1e-5)
            np.testing.assert_allclose(rec.param_norms, param_norms, rtol=1e-6)
            np.testing.assert_allclose(
                rec.global_grad_norm,
                np.sqrt(np.sum(np.asarray(want.values, np.float64) ** 2)),
                1e-5,
            )
            assert not rec.nonfinite and rec.first_nonfinite_step == -1
        # chain mode: the previous step's realised update ‖θ_t − θ_{t−1}‖ / ‖θ_{t−1}‖, never
        # this step's (which the monitor cannot see).
        if prev is None:
            assert rec.update_step == -1 and np.all(np.isnan(rec.update_ratios))
        else:
            assert rec.update_step == t - 1
            ratio = ratios(params, prev)
            # float32 differences of parameters of size ~0.5 that moved ~1e-2: the difference
            # itself is exact (Sterbenz), the norms agree to a few ulp.
            np.testing.assert_allclose(rec.update_ratios, ratio, rtol=1e-5)
        prev = params


def test_linen_jit_loop_wrapping_sgd_every_3(key, x64):
    """monitor(sgd) in a hand-written jax.jit loop, every=3: records on steps 0, 3, 6 only; the
    gradient norms are layer_grad_norms at that step, and the update ratios are lr·‖g‖/‖θ‖."""
    lr = 0.05
    params, batches, loss = _mlp(key, steps=7)
    before, records, _ = _linen_loop(monitor(optax.sgd(lr), every=3), params, batches, loss)
    assert [r.step for r in records] == [0, 0, 0, 3, 3, 3, 6]
    assert [r.count for r in records] == list(range(1, 8))
    # both references in one jitted program (one compile; layer_norms was eager)
    reference = jax.jit(
        lambda p, b: (gradients.layer_grad_norms(loss, p, b), gradients.layer_norms(p).values)
    )
    for t in (0, 3, 6):
        rec = records[t]
        want, p = reference(before[t], jax.tree.map(lambda a, t=t: a[t], batches))
        assert rec.names == want.names == ("input", "hidden/0", "hidden/1", "readout")
        # float64: jit-vs-eager operation order only, a few ulp.
        np.testing.assert_allclose(rec.grad_norms, want.values, rtol=1e-12)
        np.testing.assert_allclose(rec.param_norms, p, rtol=1e-12)
        # sgd: Δθ = −lr·g exactly, so ‖Δθ_l‖/‖θ_l‖ = lr·‖g_l‖/‖θ_l‖ of the same step.
        assert rec.update_step == t
        np.testing.assert_allclose(rec.update_ratios, lr * want.values / p, rtol=1e-12)
        # the record does not move between monitored steps
        for later in records[t + 1 : t + 3]:
            np.testing.assert_array_equal(later.grad_norms, rec.grad_norms)


@pytest.mark.parametrize("wrap", [True, False], ids=["wrap", "chain"])
def test_nan_at_step_k_sets_first_nonfinite_step(key, wrap):
    every, k = 3, 4  # k is not a monitored step
    params, batches, loss = _small(key, steps=7)
    x, y = batches
    batches = (x.at[k, 0, 0].set(jnp.nan), y)
    tx = monitor(optax.sgd(0.1), every=every) if wrap else optax.chain(monitor(every=every))
    _, records, _ = _linen_loop(tx, params, batches, loss)
    assert [r.first_nonfinite_step for r in records] == [-1] * k + [k] * (7 - k)
    # the record of step 3 was clean; that of step 6 (NaN parameters after sgd) is flagged
    assert not records[3].nonfinite
    assert records[6].nonfinite
    if not wrap:
        # chain mode without realised_updates: the update is unknown (NaN), which is reported
        # as such, not as a non-finite update.
        assert records[3].update_step == -1 and np.all(np.isnan(records[3].update_ratios))


def test_updates_are_unchanged(key):
    """The monitor returns the updates it was given (chain) or inner's (wrap): eagerly they equal
    the plain optimiser's bit for bit. Under jit the whole step is one XLA program, and the
    monitor's extra reads of the gradients and updates change how XLA fuses the optimiser's
    arithmetic, which can move the last bit (FMA contraction) — as jit-vs-eager does for the
    plain optimiser itself: at most 4 ulp."""
    params, batches, loss = _small(key, steps=3)
    g = jax.grad(loss)(params, jax.tree.map(lambda a: a[0], batches))
    tx = monitor(every=2)
    assert tx.update(g, tx.init(params), params)[0] is g  # chain mode: the same object

    def run(tx, jit):
        def step(p, s, batch):
            u, s = tx.update(jax.grad(loss)(p, batch), s, p)
            return optax.apply_updates(p, u), s, u

        step = jax.jit(step) if jit else step
        p, s, out = params, tx.init(params), []
        for t in range(3):
            p, s, u = step(p, s, jax.tree.map(lambda a, t=t: a[t], batches))
            out.append(u)
        return out

    for a, b in zip(run(optax.adam(1e-2), False), run(monitor(optax.adam(1e-2), every=2), False)):
        jax.tree.map(np.testing.assert_array_equal, a, b)
    plain = run(optax.adam(1e-2), True)
    for tx in (
        monitor(optax.adam(1e-2), every=2),
        optax.chain(monitor(every=2, realised_updates=True), optax.adam(1e-2)),
    ):
        for a, b in zip(plain, run(tx, True)):
            jax.tree.map(lambda u, v: np.testing.assert_array_max_ulp(u, v, 4), a, b)


def test_found_inside_multisteps_inject_hyperparams_and_nested_chains(key):
    params, batches, loss = _small(key, steps=4)
    tx = optax.MultiSteps(
        optax.inject_hyperparams(
            lambda lr: optax.chain(optax.clip(1.0), optax.chain(monitor(optax.sgd(lr))))
        )(0.1),
        every_k_schedule=2,
    )
    _, records, state = _linen_loop(tx, params, batches, loss)
    assert isinstance(find_monitor(state), MonitorState)
    # MultiSteps calls its inner optimiser once per 2 steps: the monitor saw 2 (mean) gradients.
    assert [r.count for r in records] == [0, 1, 1, 2]
    assert records[-1].step == 1 and np.all(np.isfinite(records[-1].grad_norms))


def test_update_is_jittable_without_callbacks_and_skips_with_cond():
    params = {"a": jnp.ones((4, 3)), "b": jnp.ones(3)}
    tx = monitor(optax.adam(1e-3), every=5, noise_scale_batch=8)
    jaxpr = str(jax.make_jaxpr(tx.update)(params, tx.init(params), params))
    assert "callback" not in jaxpr
    assert "cond[" in jaxpr  # the monitored quantities sit behind a lax.cond on the count


def test_jit_with_sharded_params_on_a_mesh(key):
    """Parameters placed with a NamedSharding on a mesh of this process's devices: the jitted
    update runs, keeps the sharding, and records what the unsharded run records."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()), ("x",))
    params, batches, loss = _small(key, steps=3)
    shard = {"w1": NamedSharding(mesh, P(None, "x")), "w2": NamedSharding(mesh, P())}
    tx = monitor(optax.adam(1e-2), every=2)
    _, plain, _ = _linen_loop(tx, params, batches, loss)
    _, sharded, state = _linen_loop(tx, jax.device_put(params, shard), batches, loss)
    assert state.inner_state[0].mu["w1"].sharding.spec == P(None, "x")
    np.testing.assert_allclose(sharded[-1].grad_norms, plain[-1].grad_norms, rtol=1e-6)
    np.testing.assert_allclose(sharded[-1].update_ratios, plain[-1].update_ratios, rtol=1e-6)


@pytest.mark.slow
def test_sharded_params_on_8_cpu_devices():
    """Parameters sharded over an 8-device mesh, the update jitted: the record equals the
    unsharded one and the monitor's arrays stay on the mesh (a fresh process: XLA's device
    count is fixed at start-up)."""
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np, optax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from gradflow.monitor import monitor, read_monitor
        assert jax.device_count() == 8
        mesh = Mesh(np.array(jax.devices()), ("x",))
        k = jax.random.split(jax.random.key(0), 3)
        params = {"a": jax.random.normal(k[0], (16, 8)), "b": jax.random.normal(k[1], (8,))}
        grads = {"a": jax.random.normal(k[2], (16, 8)), "b": jnp.linspace(-1.0, 1.0, 8)}
        shard = {"a": NamedSharding(mesh, P("x")), "b": NamedSharding(mesh, P())}
        tx = monitor(optax.adam(1e-2), every=2, noise_scale_batch=4)
        step = jax.jit(tx.update)
        out = {}
        for name, put in (("sharded", lambda t: jax.device_put(t, shard)), ("plain", lambda t: t)):
            p, g = put(params), put(grads)
            s = tx.init(p)
            for t in range(4):  # gradients that vary over the window, so tr Σ > 0
                u, s = step(jax.tree.map(lambda x: x * (1.0 + 0.5 * t * x), g), s, p)
                p = optax.apply_updates(p, u)
            out[name] = (read_monitor(s), p, s)
        assert out["sharded"][1]["a"].sharding.spec == P("x")
        # the monitor's parameter-sized buffers follow the parameters' sharding
        assert out["sharded"][2].noise.grad_sum["a"].sharding.spec == P("x")
        chain = monitor(every=2, realised_updates=True)
        p = jax.device_put(params, shard)
        s2 = jax.jit(chain.update)(grads, chain.init(p), p)[1]
        assert s2.prev_params["a"].sharding.spec == P("x")
        a, b = out["sharded"][0], out["plain"][0]
        np.testing.assert_allclose(a.grad_norms, b.grad_norms, rtol=1e-6)
        np.testing.assert_allclose(a.update_ratios, b.update_ratios, rtol=1e-6)
        np.testing.assert_allclose(a.noise.layers.trace_cov, b.noise.layers.trace_cov, rtol=1e-4)
        print("ok")
        """
    )
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


# ------------------------------------------------------------------------------------------------
# gradient noise scale on linear regression
# ------------------------------------------------------------------------------------------------
# y = x·w* + ε, x ~ N(0, I_d), ε ~ N(0, σ²); per-example loss ½(x·w − y)², at a fixed w with
# δ = w − w*. The per-example gradient is g = (x·δ − ε) x, so
#   G = E g = E[x xᵀ] δ = δ,
#   E[g gᵀ] = E[(x·δ)² x xᵀ] + σ² I = (|δ|² + σ²) I + 2 δ δᵀ
# by Isserlis (E x_i x_j x_k x_l = δ_ij δ_kl + δ_ik δ_jl + δ_il δ_jk), hence
#   Σ = (|δ|² + σ²) I + δ δᵀ,   tr Σ = d (|δ|² + σ²) + |δ|²,   |G|² = |δ|².
# For the layer blocks a (first D_A coordinates) and b (the rest): |G_l|² = |δ_l|² and
# tr Σ_l = d_l (|δ|² + σ²) + |δ_l|²; the global values are the sums.

D, D_A, SIGMA = 20, 6, 0.5
DELTA = 0.25 * np.ones(D)  # |δ|² = 1.25
W_STAR = np.linspace(-1.0, 1.0, D)
SEEDS = 16


def _truth():
    d2, c = DELTA @ DELTA, DELTA @ DELTA + SIGMA**2
    blocks = [slice(0, D_A), slice(D_A, D)]
    grad_sq = np.array([DELTA[s] @ DELTA[s] for s in blocks])
    trace_cov = np.array([(s.stop - s.start) * c + DELTA[s] @ DELTA[s] for s in blocks])
    assert math.isclose(trace_cov.sum(), D * c + d2) and math.isclose(grad_sq.sum(), d2)
    return trace_cov, grad_sq


def _regression_params():
    w = W_STAR + DELTA
    return {"a": jnp.asarray(w[:D_A], jnp.float32), "b": jnp.asarray(w[D_A:], jnp.float32)}


def _regression_loss(params, batch):
    x, y = batch
    w = jnp.concatenate([params["a"], params["b"]])
    return jnp.mean(0.5 * (x @ w - y) ** 2)


def _regression_batch(key, n):
    kx, ke = jax.random.split(key)
    x = jax.random.normal(kx, (n, D))
    return x, x @ jnp.asarray(W_STAR, jnp.float32) + SIGMA * jax.random.normal(ke, (n,))


def test_linear_regression_covariance_closed_form_isserlis():
    """The closed forms above against 2·10⁵ per-example gradients (independent of gradflow)."""
    n = 200_000
    rng = np.random.default_rng(42)
    x = rng.standard_normal((n, D))
    y = x @ W_STAR + SIGMA * rng.standard_normal(n)
    g = (x @ (W_STAR + DELTA) - y)[:, None] * x  # per-example gradients, (n, D)
    trace_cov, grad_sq = _truth()
    for i, s in enumerate([slice(0, D_A), slice(D_A, D)]):
        gl = g[:, s]
        # mean: each coordinate's sample mean has SE sqrt(Σ_jj / n)
        se = np.sqrt(np.diag(np.cov(gl.T)) / n)
        assert np.all(np.abs(gl.mean(0) - DELTA[s]) < 4 * se)
        # tr Σ_l: the mean of |g − G|², SE from its sample spread
        q = np.sum((gl - DELTA[s]) ** 2, axis=1)
        assert abs(q.mean() - trace_cov[i]) < 4 * q.std() / np.sqrt(n)
        assert math.isclose(np.sum(DELTA[s] ** 2), grad_sq[i])


def _check_against_truth(trace_cov, grad_sq, b_simple, small_sq, big_sq, b_small, b_big):
    """Each (seeds, L) estimate's mean over seeds is within 4 standard errors of the closed form,
    the standard errors are small enough to reject a 40% error, and the estimator with B_small
    and B_big swapped is rejected."""
    true_t, true_g = _truth()
    truth = {
        "trace_cov": (trace_cov, true_t),
        "grad_sq": (grad_sq, true_g),
        "global trace_cov": (trace_cov.sum(1), true_t.sum()),
        "global grad_sq": (grad_sq.sum(1), true_g.sum()),
        # B_simple is a ratio of estimates, biased at second order (~var(|G|²)/|G|², < 1% here,
        # below one SE): checked against the ratio of the truths with the same 4 SE.
        "b_simple": (b_simple, true_t / true_g),
    }
    for name, (est, want) in truth.items():
        mean, se = est.mean(0), est.std(0, ddof=1) / np.sqrt(est.shape[0])
        assert np.all(np.abs(mean - want) < 4 * se), (name, mean, want, se)
        assert np.all(se < 0.1 * np.abs(want)), (name, se, want)  # a 40% error would fail
    # Swapping the batch sizes in the |G|² formula biases it by
    # tr Σ (B_b/B_s − B_s/B_b) / (B_b − B_s): +0.27 on |G|² = 1.25 here.
    swapped = (b_big * small_sq - b_small * big_sq) / (b_big - b_small)
    mean, se = swapped.mean(0), swapped.std(0, ddof=1) / np.sqrt(swapped.shape[0])
    assert np.all(np.abs(mean - true_g) > 4 * se), (mean, true_g, se)


def test_gradient_noise_scale_linear_regression():
    """B = 1024 split in 8 (B_small = 128), 16 seeds: tr Σ, |G|², B_simple per layer and global
    match the closed forms within their standard error over seeds."""
    params = _regression_params()
    ests = [
        gradient_noise_scale(
            _regression_loss, params, _regression_batch(jax.random.key(s), 1024), num_splits=8
        )
        for s in range(SEEDS)
    ]
    assert isinstance(ests[0], GradientNoiseScale) and ests[0].names == ("a", "b")
    assert (ests[0].b_small, ests[0].b_big) == (128, 1024)

    def stack(f):
        return np.stack([np.asarray(f(e), np.float64) for e in ests])

    _check_against_truth(
        stack(lambda e: e.layers.trace_cov),
        stack(lambda e: e.layers.grad_sq),
        stack(lambda e: e.layers.b_simple),
        10 ** stack(lambda e: e.small_sq_log10),
        10 ** stack(lambda e: e.big_sq_log10),
        128,
        1024,
    )
    # global = the same estimator on the whole vector
    e = ests[0]
    np.testing.assert_allclose(e.total.trace_cov, np.sum(e.layers.trace_cov), rtol=1e-5)
    np.testing.assert_allclose(e.total.b_simple, e.total.trace_cov / e.total.grad_sq, rtol=1e-5)


@pytest.mark.slow  # a statistical regression over many steps, ~5 s
def test_monitor_noise_scale_linear_regression():
    """monitor(every=8, noise_scale_batch=128) at fixed parameters for 4 windows (B_small = 128,
    B_big = 1024), 16 seeds vmapped: the bias-corrected EMAs give unbiased tr Σ and |G|²."""
    params = _regression_params()
    every, b, windows = 8, 128, 4
    tx = monitor(every=every, noise_scale_batch=b, noise_ema=0.9)

    def run(key):
        def body(state, k):
            grads = jax.grad(_regression_loss)(params, _regression_batch(k, b))
            return tx.update(grads, state, params)[1], None

        state, _ = jax.lax.scan(body, tx.init(params), jax.random.split(key, every * windows))
        return state

    states = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(7), SEEDS))
    noise = states.noise_scale()  # jittable form, (SEEDS, L)
    assert int(states.noise.windows[0]) == windows
    rec = read_monitor(jax.tree.map(lambda a: a[0], states))
    assert rec.noise.b_small == b and rec.noise.b_big == every * b and rec.noise_windows == windows
    np.testing.assert_allclose(rec.noise.layers.trace_cov, noise.layers.trace_cov[0], rtol=1e-4)
    f64 = lambda a: np.asarray(a, np.float64)
    _check_against_truth(
        f64(noise.layers.trace_cov),
        f64(noise.layers.grad_sq),
        f64(noise.layers.b_simple),
        10 ** f64(noise.small_sq_log10),
        10 ** f64(noise.big_sq_log10),
        b,
        every * b,
    )


def test_noise_scale_exact_on_expectations_and_log_safe():
    # E|G_B|² = |G|² + tr Σ / B: the estimator inverts it exactly.
    t, g2 = np.array([3.0, 40.0]), np.array([0.5, 2.0])
    ns = noise_scale(g2 + t / 8, g2 + t / 64, 8, 64)
    np.testing.assert_allclose(ns.trace_cov, t, rtol=1e-6)
    np.testing.assert_allclose(ns.grad_sq, g2, rtol=1e-6)
    np.testing.assert_allclose(ns.b_simple, t / g2, rtol=1e-6)
    # A loss scaled by 1e-22: float32 gradient entries ~1e-23 have squares below float32's
    # range, yet B_simple (scale-invariant) is unchanged.
    params, batch = _regression_params(), _regression_batch(jax.random.key(3), 256)
    tiny = lambda p, b: 1e-22 * _regression_loss(p, b)
    g = jax.grad(tiny)(params, batch)
    assert float(jnp.sum(g["a"] ** 2)) == 0.0  # the naive squared norm underflows
    a = gradient_noise_scale(_regression_loss, params, batch, num_splits=4)
    s = gradient_noise_scale(tiny, params, batch, num_splits=4)
    # relative error of r = |G_s|²/|G_b|² is a few ulp; B_simple ∝ (r − 1) with r − 1 ~ 0.2,
    # amplifying it ~10×: 1e-4 is a wide margin.
    np.testing.assert_allclose(s.layers.b_simple, a.layers.b_simple, rtol=1e-4)
    np.testing.assert_allclose(s.small_sq_log10, a.small_sq_log10 - 44, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="every"):
        monitor(every=0)
    with pytest.raises(TypeError, match="every"):
        monitor(every=2.0)
    with pytest.raises(ValueError, match="noise_scale_batch"):
        monitor(every=4, noise_scale_batch=0)
    with pytest.raises(ValueError, match="every >= 2"):
        monitor(noise_scale_batch=32)
    with pytest.raises(ValueError, match="noise_ema"):
        monitor(every=4, noise_scale_batch=32, noise_ema=1.0)
    with pytest.raises(TypeError, match="inner"):
        monitor(optax.adam)  # the factory, not a transformation
    with pytest.raises(ValueError, match="realised_updates"):
        monitor(optax.sgd(0.1), realised_updates=True)
    with pytest.raises(TypeError, match="order"):
        monitor(order="input")
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="params"):
        tx = monitor()
        tx.update(params, tx.init(params))
    with pytest.raises(ValueError, match="monitor"):
        read_monitor(optax.adam(1e-3).init(params))
    with pytest.raises(ValueError, match="b_big"):
        noise_scale(1.0, 1.0, 64, 8)
    batch = _regression_batch(jax.random.key(0), 10)
    with pytest.raises(ValueError, match="num_splits"):
        gradient_noise_scale(_regression_loss, _regression_params(), batch, num_splits=1)
    with pytest.raises(ValueError, match="num_splits"):
        gradient_noise_scale(_regression_loss, _regression_params(), batch, num_splits=3)
    with pytest.raises(TypeError, match="loss_fn"):
        gradient_noise_scale(None, _regression_params(), batch, num_splits=2)
