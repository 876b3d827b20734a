"""Gradient flossing: the differentiable Lyapunov spectrum against central finite differences
and closed forms (a diagonal linear map: λ_i = log|a_i|, ∂λ_i/∂a_j = δ_ij/a_i), pre-flossing
driving |a_i| to 1, the per-sequence spectrum against lyapunov_spectrum, the regularised loss,
and bad arguments."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradflow import init, lyapunov
from gradflow.chain import Chain
from gradflow.models import RNN
from gradflow.train import flossing

# Four distinct moduli, one negative (flossing must keep the sign: |a| -> 1 means a -> -1).
A = np.array([1.3, -0.9, 0.6, 0.25])


def _diag_step(a, h, x):
    return a * h


def _diag_chain(a, steps):
    return Chain(params=a, xs=None, h0=jnp.ones_like(a), step=_diag_step, length=steps, shared=True)


def _tanh_model(n=4, gain=1.5):
    # σ_w = 1.5: mildly chaotic without input, so the exponents span both signs.
    return RNN(width=n, activation="tanh", recurrent_init=init.gaussian(gain))


def test_diagonal_linear_map_exponents_and_gradient_closed_form(x64):
    # After `discard` steps the frame is aligned with the axes to within max|a_{i+1}/a_i|^discard
    # = 0.69^100 ≈ 1e-16, so every counted R_ii is |a_i| to rounding: λ_i = log|a_i| exactly
    # (not merely to O(1/T)), and ∂λ_i/∂a_j = δ_ij / a_i.
    @jax.jit
    def jacobian_and_exponents(a):
        def lam(a):
            out = lyapunov.lyapunov_spectrum(_diag_chain(a, 120), discard=100)
            return out, out

        return jax.jacrev(lam, has_aux=True)(a)

    jac, lam = jacobian_and_exponents(jnp.asarray(A))
    np.testing.assert_allclose(lam, np.log(np.abs(A)), rtol=0, atol=1e-13)  # already descending
    # Rounding in 20 counted steps of float64 QR: 1e-12 is ~3 decades above it. The zero
    # off-diagonal also says that flossing the top k exponents leaves the others alone.
    np.testing.assert_allclose(jac, np.diag(1 / A), rtol=1e-12, atol=1e-13)


def test_gradient_matches_central_finite_differences(x64):
    # A tanh RNN, one sequence, top 3 of 4 exponents, target 0.1, with a burn-in: the gradient
    # flows through the trajectory, the frame, the QR and the discarded steps.
    model = _tanh_model()
    u = jax.random.normal(jax.random.key(1), (16, 2))
    params = model.init(jax.random.key(0), u)
    loss = flossing.flossing_loss_fn(model, 3, target=0.1, discard=3, examples=None)
    # One compiled program gives the gradient and every finite-difference evaluation.
    value_and_grad = jax.jit(jax.value_and_grad(loss))
    _, grads = value_and_grad(params, u)
    leaves, tree = jax.tree_util.tree_flatten(params)
    h = 1e-6
    for i in range(3):
        keys = jax.random.split(jax.random.key(10 + i), len(leaves))
        d = tree.unflatten([jax.random.normal(kk, x.shape, x.dtype) for kk, x in zip(keys, leaves)])
        plus, minus = (
            value_and_grad(jax.tree_util.tree_map(lambda p, v, s=s: p + s * v, params, d), u)[0]
            for s in (h, -h)
        )
        exact = sum(jnp.vdot(g, v) for g, v in zip(jax.tree.leaves(grads), jax.tree.leaves(d)))
        # Central differences in float64: the error is truncation, h²·f'''/6, measured at 5e-5,
        # 5e-7 and 5e-9 relative for h = 1e-4, 1e-5, 1e-6 (O(h²): the gradient is right), and
        # rounding, eps·|f|/h ~ 1e-10: only a gradient right to ~7 digits passes.
        np.testing.assert_allclose((plus - minus) / (2 * h), exact, rtol=3e-8)


def test_per_sequence_spectrum_and_the_regularised_loss():
    model = _tanh_model()
    u = jax.random.normal(jax.random.key(2), (3, 12, 2))
    y = jax.random.normal(jax.random.key(4), (3, 1))
    params = model.init(jax.random.key(0), u)

    def mse(out, y):
        return jnp.mean(jnp.square(out - y))

    # E + w·F with F measured on the first 2 sequences.
    total = flossing.with_flossing_regularizer(
        model, mse, 2, 0.5, target=-0.2, discard=2, examples=2
    )

    @jax.jit  # one compiled program for every quantity compared
    def measure(params, u, y):
        # One sequence at a time (lax.map: a loop, not a batch) against the vmapped version.
        one = lambda s: lyapunov.lyapunov_spectrum(model.chain(params, s), 2, discard=2)  # noqa: E731
        return (
            flossing.recurrent_exponents(model, params, u, 2, discard=2),
            jax.lax.map(one, u),
            total(params, (u, y)),
            mse(model.apply(params, u), y),
        )

    got, want, total_loss, task = measure(params, u, y)
    assert got.shape == (3, 2)
    # The same float32 computation, batched or not: rounding only.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    penalty = np.mean(np.sum(np.square(np.asarray(want[:2]) + 0.2), -1))
    np.testing.assert_allclose(total_loss, task + 0.5 * penalty, rtol=1e-5)


def test_flossing_drives_diagonal_moduli_to_one(x64):
    # Gradient descent on F = Σ_i λ_i² of the diagonal map: a_i -= η · 2 log|a_i| / a_i while the
    # frame is aligned (exactly, as above), so |a_i| -> 1 with the sign kept.
    @jax.jit
    def descend(a):
        def step(a, _):
            regularizer = lambda a: flossing.flossing_regularizer(  # noqa: E731
                _diag_chain(a, 120), 4, discard=100
            )
            f, g = jax.value_and_grad(regularizer)(a)
            return a - 0.1 * g, (f, a)

        return jax.lax.scan(step, a, None, length=60)

    a, (losses, path) = descend(jnp.asarray(A))
    np.testing.assert_allclose(path[1], A - 0.1 * 2 * np.log(np.abs(A)) / A, rtol=1e-12)
    assert losses[0] == pytest.approx(np.sum(np.log(np.abs(A)) ** 2), rel=1e-12)
    assert np.all(np.diff(losses) < 0) and losses[-1] < 1e-6
    # max | |a_i| − 1 | from 0.75 to below 1e-3 (measured 4.2e-4; exact gradient descent on
    # log²|a| would reach 1.4e-6: once the moduli are close, the burn-in no longer aligns the
    # frame and the finite-time exponents mix the directions, which slows the last digits).
    np.testing.assert_allclose(np.abs(a), 1.0, atol=1e-3)
    np.testing.assert_array_equal(np.sign(a), np.sign(A))


@pytest.mark.slow
def test_preflossing_drives_diagonal_moduli_to_one(x64):
    # A linear RNN whose recurrent kernel is diag(a): J_t = diag(a) whatever the input, so F =
    # Σ log²|a_i| while the frame is aligned, and gradient descent moves a_i by −η·2 log|a_i|/a_i.
    # A second run, vmapped beside it, starts with a zero modulus (λ_4 = −inf): it must stop at
    # step 0 with its parameters unchanged.
    model = RNN(width=4, activation="linear")
    u = jnp.zeros((60, 1, 120, 1))
    params = model.init(jax.random.key(0), u[0])
    kernels = jnp.stack([jnp.diag(jnp.asarray(A)), jnp.diag(jnp.asarray([*A[:3], 0.0]))])
    both = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), params)
    both["params"]["recurrent"]["kernel"] = kernels
    run = flossing.make_preflossing(model, 4, optax.sgd(0.1), discard=100)
    res_both = jax.jit(jax.vmap(run, in_axes=(0, None)))(both, u)
    res, bad = (jax.tree_util.tree_map(lambda x, i=i: x[i], res_both) for i in (0, 1))

    np.testing.assert_allclose(res.exponents_before[0], np.log(np.abs(A)), atol=1e-12)
    loss = np.asarray(res.loss)
    assert loss[0] == pytest.approx(np.sum(np.log(np.abs(A)) ** 2), rel=1e-12)
    assert np.all(np.diff(loss) < 0) and loss[-1] < 1e-5
    assert not bool(res.diverged) and int(res.divergence_step) == -1
    np.testing.assert_allclose(res.exponents_after, 0.0, atol=2e-3)
    kernel = np.asarray(res.params["params"]["recurrent"]["kernel"])
    # |a_i| − 1 from up to 0.75 to below 2e-3 (measured 1.5e-3 after 60 steps: once the moduli
    # are close, the burn-in no longer aligns the frame, the finite-time exponents mix the
    # directions, and the kernel picks up O(1e-3) off-diagonal entries on its way to an
    # orthogonal matrix, whose exponents are exactly 0), signs kept.
    np.testing.assert_allclose(np.abs(np.diag(kernel)), 1.0, atol=2e-3)
    np.testing.assert_array_equal(np.sign(np.diag(kernel)), np.sign(A))
    # The input and readout weights only shape the drive, not a linear map's Jacobian.
    for name in ("input", "readout"):
        for new, old in zip(
            jax.tree.leaves(res.params["params"][name]), jax.tree.leaves(params["params"][name])
        ):
            np.testing.assert_array_equal(new, old)

    assert bool(bad.diverged) and int(bad.divergence_step) == 0
    assert np.isposinf(bad.loss[0]) and np.all(np.isnan(bad.loss[1:]))
    np.testing.assert_array_equal(bad.params["params"]["recurrent"]["kernel"], kernels[1])


@functools.cache
def _model_and_data():
    model = _tanh_model()
    u = jnp.zeros((2, 8, 2))
    return model, model.init(jax.random.key(0), u), u


def _model_and_data():
    model = _tanh_model()
    u = jnp.zeros((2, 8, 2))
    return model, model.init(jax.random.key(0), u), u


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda m, p, u: flossing.recurrent_exponents(m, p, u, 0), ValueError, "k must be >= 1"),
        (lambda m, p, u: flossing.recurrent_exponents(m, p, u, 2.0), TypeError, "k must be an"),
        (lambda m, p, u: flossing.recurrent_exponents(m, p, u, True), TypeError, "k must be an"),
        (lambda m, p, u: flossing.recurrent_exponents(m, p, u, 5), ValueError, "k must be <="),
        (
            lambda m, p, u: flossing.recurrent_exponents(m, p, u, 2, discard=-1),
            ValueError,
            "discard must be",
        ),
        (
            lambda m, p, u: flossing.recurrent_exponents(m, p, u, 2, discard=8),
            ValueError,
            "discard must satisfy",
        ),
        (lambda m, p, u: flossing.recurrent_exponents(m, p, u[0, 0], 2), ValueError, "u must"),
        (lambda m, p, u: flossing.recurrent_exponents("rnn", p, u, 2), TypeError, "model must"),
        (lambda m, p, u: flossing.flossing_regularizer(u, 2), TypeError, "chain must"),
        (
            lambda m, p, u: flossing.flossing_regularizer(m.chain(p, u[0]), 2, target=np.inf),
            ValueError,
            "target must be finite",
        ),
        (lambda m, p, u: flossing.flossing_loss_fn(m, 2, examples=0), ValueError, "examples"),
        (
            lambda m, p, u: flossing.with_flossing_regularizer(m, None, 2, 1.0),
            TypeError,
            "output_loss must be callable",
        ),
        (
            lambda m, p, u: flossing.with_flossing_regularizer(m, jnp.mean, 2, -1.0),
            ValueError,
            "weight must be finite and >= 0",
        ),
        (
            lambda m, p, u: flossing.with_flossing_regularizer(m, jnp.mean, 2, np.nan),
            ValueError,
            "weight must be finite",
        ),
        (
            lambda m, p, u: flossing.make_preflossing(m, 2, optax.sgd(0.1))(p, u),
            ValueError,
            "inputs must have 4 dimensions",
        ),
    ],
)
def test_bad_arguments(call, exc, match):
    model, params, u = _model_and_data()
    with pytest.raises(exc, match=match):
        call(model, params, u)


@pytest.mark.slow
def test_study_runs_and_preflossing_moves_the_top_exponents_to_zero():
    from gradflow.experiments._io import to_jsonable
    from gradflow.experiments.mitigations import flossing as study

    cfg = study.FLOSSING_QUICK._replace(
        length=12, width=6, k=2, seeds=2, batch=4, steps=8, preflossing_steps=30, n_test=16
    )
    summary, curves = study.run_flossing(config=cfg)
    json.dumps(to_jsonable(summary))
    assert len(summary["records"]) == 3 * 2 and len(summary["rows"]) == 3
    assert curves["flossing/plain/loss"].shape == (2, 8)
    assert curves["flossing/preflossing/state_grads_start"].shape == (2, 13)
    init = curves["flossing/exponents_init"][:, :2]
    flossed = curves["flossing/preflossing/exponents_start"][:, :2]
    # 30 Adam steps on F bring the flossed exponents closer to 0 on every seed; the arms that
    # were not pre-flossed start from the initial weights.
    assert np.all(np.abs(flossed).sum(1) < np.abs(init).sum(1))
    np.testing.assert_array_equal(
        curves["flossing/flossing/exponents_start"], curves["flossing/plain/exponents_start"]
    )
    assert "| plain Adam |" in study.flossing_table(summary)
    fig = study.figure_flossing(curves)
    assert len(fig.axes) == 4
