"""gradflow.tasks: long-term-dependency tasks (hand-built targets) and the image datasets."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import chain as gf_chain
from gradflow import tasks


def _onehot(symbols, n):
    return jax.nn.one_hot(jnp.asarray(symbols), n)


# --- hand-built sequences ---------------------------------------------------------------------


def test_adding_target_hand_built():
    values = [[0.3, 0.9, 0.1, 0.5, 0.7], [0.2, 0.4, 0.6, 0.8, 1.0]]
    markers = [[1, 0, 0, 1, 0], [0, 1, 0, 0, 1]]
    u = jnp.stack([jnp.array(values), jnp.array(markers, jnp.float32)], axis=-1)
    np.testing.assert_allclose(tasks.adding_target(u), [[0.8], [1.4]], rtol=1e-6)  # float32 sums


def test_temporal_order_target_hand_built():
    a, b, c, d, X, Y = range(6)
    seqs = [
        [a, X, b, c, X, d],  # XX -> 0
        [X, a, b, Y, c, d],  # XY -> 1
        [b, Y, c, d, X, a],  # YX -> 2
        [Y, Y, a, b, c, d],  # YY -> 3
    ]
    np.testing.assert_array_equal(tasks.temporal_order_target(_onehot(seqs, 6)), [0, 1, 2, 3])
    # three relevant symbols (task 6b): YXY -> 0b101 = 5; padding (all-zero) steps are ignored
    u = _onehot([[a, Y, b, X, c, Y]], 6)
    u = jnp.concatenate([jnp.zeros((1, 3, 6)), u], axis=1)
    np.testing.assert_array_equal(tasks.temporal_order_target(u), [5])


def test_memorization_target_hand_built():
    zero, one, blank, trigger = range(4)
    seqs = [[one, zero, one, blank, blank, trigger], [zero, zero, one, blank, blank, trigger]]
    np.testing.assert_array_equal(
        tasks.memorization_target(_onehot(seqs, 4)), [[1, 0, 1], [0, 0, 1]]
    )


# --- generators agree with the definitions ----------------------------------------------------


@pytest.mark.parametrize("name", list(tasks.TASKS))
@pytest.mark.parametrize("start", [0, 13])
def test_generated_targets_follow_the_definition(key, name, start):
    task = tasks.get(name)
    u, y = task.generate(key, 64, 40, start=start)
    assert u.shape == (64, 40, task.in_features)
    np.testing.assert_array_equal(task.target(u), y)  # same float32 products, so exact
    # padding steps are all zero, task steps are not
    assert np.all(np.asarray(u[:, :start]) == 0)
    if task.kind != "regression":
        assert np.all(np.asarray(u[:, start:]).sum(-1) == 1)


def test_adding_markers_one_per_half(key):
    u, _ = tasks.adding(key, 500, 30, start=10)
    marks = np.asarray(u[..., 1])
    assert np.all(marks.sum(1) == 2)
    # effective sequence is steps 10…29: first marker in 10…19, second in 20…29
    assert np.all(marks[:, 10:20].sum(1) == 1) and np.all(marks[:, 20:].sum(1) == 1)
    values = np.asarray(u[..., 0])
    assert values.min() >= 0 and values.max() < 1


def test_temporal_order_windows_and_balance(key):
    T = 100
    u, y = tasks.temporal_order(key, 2000, T)
    sym = np.asarray(jnp.argmax(u, -1))
    rel = np.argwhere(sym >= 4)
    first = rel[::2, 1]
    second = rel[1::2, 1]
    # Hochreiter & Schmidhuber's windows at T = 100: t1 in [10, 20), t2 in [50, 60)
    assert first.min() >= 10 and first.max() < 20
    assert second.min() >= 50 and second.max() < 60
    # four classes, each about a quarter (binomial sd of a count ~ 19 at n = 2000)
    counts = np.bincount(np.asarray(y), minlength=4)
    assert np.all(np.abs(counts - 500) < 100)


def test_traced_start_matches_static(key):
    """Under jit (start traced) the generators produce the sequences of a static start."""
    names = ("adding", "temporal_order", "memorization")

    # The sizes and start of test_generated_targets_follow_the_definition: the eager static
    # runs reuse the primitives compiled there (any size shows a traced/static mismatch).
    def all_tasks(start):
        return [tasks.get(n).generate(key, 64, 40, start=start) for n in names]

    for static, traced in zip(all_tasks(13), jax.jit(all_tasks)(13)):  # one compile for all three
        for a, b in zip(static, traced):
            np.testing.assert_array_equal(a, b)


# --- masked steps: several effective lengths in one compiled run ----------------------------


def _tanh_step(theta, h, x):
    return jnp.tanh(h @ theta["w"] + x)


def _lstm_like_step(theta, h, x):
    """A step whose state is a pytree (the (c, h) pair of an LSTM)."""
    c, hh = h
    c = 0.5 * c + jnp.tanh(hh @ theta["w"] + x)
    return c, jnp.tanh(c)


def test_masked_step_freezes_inactive_steps(key):
    kw, kh, kx = jax.random.split(key, 3)
    theta = {"w": jax.random.normal(kw, (4, 4)) / 2}
    h = (jax.random.normal(kh, (4,)), jax.random.normal(kx, (4,)))
    x = jnp.ones(4)
    masked = tasks.MaskedStep(_lstm_like_step)
    for a, b in zip(masked(theta, h, (x, jnp.array(False))), h):
        np.testing.assert_array_equal(a, b)  # exactly the old state, leaf by leaf
    for a, b in zip(masked(theta, h, (x, jnp.array(True))), _lstm_like_step(theta, h, x)):
        np.testing.assert_array_equal(a, b)


def test_masked_step_jacobian_is_identity_on_padding(key):
    kw, kh = jax.random.split(key)
    theta = {"w": jax.random.normal(kw, (5, 5))}
    h, x = jax.random.normal(kh, (5,)), jnp.zeros(5)
    masked = tasks.MaskedStep(_tanh_step)
    jac = lambda active: jax.jacrev(lambda h: masked(theta, h, (x, active)))(h)  # noqa: E731
    np.testing.assert_array_equal(jac(jnp.array(False)), jnp.eye(5))
    np.testing.assert_array_equal(
        jac(jnp.array(True)), jax.jacrev(lambda h: _tanh_step(theta, h, x))(h)
    )


def test_masked_chain_runs_only_the_active_steps(key):
    """A sequence padded at the start ends in the state of the unpadded sequence (h0 is held
    through the padding), and the masked step is hashable so jit traces once per shape."""
    kw, kh, kx = jax.random.split(key, 3)
    theta = {"w": jax.random.normal(kw, (3, 3)) / 2}
    h0, xs = jax.random.normal(kh, (3,)), jax.random.normal(kx, (12, 3))
    start = 5
    traces = []

    @jax.jit
    def padded_final(start):
        traces.append(1)
        full = gf_chain.Chain(params=theta, xs=xs, h0=h0, step=_tanh_step, length=12, shared=True)
        masked = tasks.masked_chain(full, tasks.active_steps(12, start))
        assert masked.step == tasks.MaskedStep(_tanh_step)  # equal wrappers: one cache entry
        assert (masked.length, masked.shared, masked.name) == (12, True, full.name)
        return gf_chain.final_state(masked)

    short = gf_chain.Chain(
        params=theta, xs=xs[start:], h0=h0, step=_tanh_step, length=7, shared=True
    )
    # float32 scans of different lengths: equal up to rounding of the same operations
    np.testing.assert_allclose(padded_final(start), gf_chain.final_state(short), rtol=1e-6)
    np.testing.assert_array_equal(padded_final(12), h0)  # every step padding: h0 unchanged
    assert len(traces) == 1  # start is traced: one compilation serves every effective length


def test_same_key_same_data(key):
    # the sizes of test_generated_targets_follow_the_definition (its eager primitives are
    # compiled already); determinism does not depend on the size
    a = tasks.temporal_order(key, 64, 40)
    b = tasks.temporal_order(key, 64, 40)
    np.testing.assert_array_equal(a[0], b[0])


def test_losses_and_errors():
    out = jnp.array([[0.0, 5.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
    y = jnp.array([1, 2])
    assert float(tasks.task_error("classification", out, y)) == 0.5
    bits_out = jnp.array([[3.0, -3.0, 3.0]])
    assert float(tasks.task_error("bits", bits_out, jnp.array([[1, 0, 1]]))) == 0.0
    assert float(tasks.task_error("bits", bits_out, jnp.array([[1, 1, 1]]))) == 1.0
    # sigmoid cross-entropy of logit 0 is log 2 (float32: 1e-6 relative)
    np.testing.assert_allclose(
        tasks.task_loss("bits", jnp.zeros((1, 3)), jnp.ones((1, 3))), np.log(2), rtol=1e-6
    )
    with pytest.raises(ValueError, match="kind"):
        tasks.task_loss("ranking", out, y)


def test_argument_errors(key):
    with pytest.raises(ValueError, match="length"):
        tasks.adding(key, 4, 1)
    with pytest.raises(ValueError, match="start"):
        tasks.temporal_order(key, 4, 20, start=15)
    with pytest.raises(ValueError, match="n_relevant"):
        tasks.temporal_order(key, 4, 20, n_relevant=4)
    with pytest.raises(TypeError, match="batch"):
        tasks.memorization(key, 2.5, 10)
    with pytest.raises(ValueError, match="unknown task"):
        tasks.get("parity")


# --- image data -------------------------------------------------------------------------------


def test_digits_ships_with_scikit_learn():
    pytest.importorskip("sklearn")
    d = tasks.digits()
    assert d.name == "digits" and d.n_classes == 10
    assert d.x_train.shape[1] == 64 and d.x_train.shape[0] + d.x_test.shape[0] == 1797
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    # standardised on the training set: mean 0, sd 1 on non-constant pixels (float32 rounding)
    np.testing.assert_allclose(d.x_train.mean(0), 0, atol=1e-5)
    sd = d.x_train.std(0)
    np.testing.assert_allclose(sd[sd > 0], 1, rtol=1e-4)


def test_synthetic_images_shape_and_determinism():
    a = tasks.synthetic_images(seed=3)
    b = tasks.synthetic_images(seed=3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.name == "synthetic_digits" and a.x_train.shape[1] == 64
    assert set(np.unique(a.y_train)) == set(range(10))


def test_image_classification_falls_back_without_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn…` raise ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="gradflow\\[data\\]"):
        tasks.digits()
    assert tasks.image_classification().name == "synthetic_digits"


# --- multiplication, random permutation, noiseless memorisation (Pascanu et al. 2013, §4.1.2) --


def _brute_product(u):
    """Product of the marked values, by Python loops in float64."""
    out = []
    for seq in np.asarray(u, np.float64):
        p = 1.0
        for value, marker in seq:
            if marker > 0:
                p *= value
        out.append([p])
    return np.array(out)


def _brute_first_symbol(u):
    """The symbol of each sequence's first non-padding step, by Python loops."""
    out = []
    for seq in np.asarray(u):
        for step in seq:
            if step.sum() > 0:
                out.append(int(np.flatnonzero(step)[0]))
                break
    return np.array(out)


def _brute_pattern(u, n_bits):
    """The first n_bits data symbols (channel 0 = bit 0, channel 1 = bit 1), by Python loops."""
    out = []
    for seq in np.asarray(u):
        bits = [int(step[1] > 0) for step in seq if step[0] + step[1] > 0]
        out.append(bits[:n_bits])
    return np.array(out)


@pytest.mark.parametrize("start", [0, 13])
def test_new_tasks_targets_match_brute_force(key, start):
    u, y = tasks.get("multiplication").generate(key, 64, 40, start=start)
    # float32 product of two values vs the float64 loop: one rounding, 1e-6 relative
    np.testing.assert_allclose(y, _brute_product(u), rtol=1e-6)
    u, y = tasks.get("random_permutation").generate(key, 64, 40, start=start)
    np.testing.assert_array_equal(y, _brute_first_symbol(u))
    u, y = tasks.get("noiseless_memorization").generate(key, 64, 40, start=start)
    np.testing.assert_array_equal(y, _brute_pattern(u, 5))


def test_multiplication_marker_windows_and_permutation_symbols(key):
    """Pascanu et al.'s windows: one marker in [0, T/10), the other in [T/10, T/2); the
    permutation's first symbol is 0 or 1, the rest are 2 … 99. (The sizes of the tests above,
    whose eager primitives are compiled already.)"""
    u, y = tasks.multiplication(key, 64, 40, start=13)  # effective T = 27: [0, 2), [2, 13)
    marks = np.asarray(u[..., 1])
    assert np.all(marks.sum(1) == 2)
    assert np.all(marks[:, 13:15].sum(1) == 1) and np.all(marks[:, 15:26].sum(1) == 1)
    assert np.all((np.asarray(y) >= 0) & (np.asarray(y) < 1))
    u, y = tasks.random_permutation(key, 64, 40, start=13)
    sym = np.asarray(jnp.argmax(u, -1))
    assert set(np.unique(sym[:, 13])) == {0, 1} and np.all(sym[:, 14:] >= 2)
    np.testing.assert_array_equal(y, sym[:, 13])
    with pytest.raises(ValueError, match="n_symbols"):
        tasks.random_permutation(key, 4, 30, n_symbols=2)


def test_error_rate_with_tolerance():
    """Regression scored by Pascanu's rule: wrong when the squared error exceeds the tolerance."""
    out = jnp.array([[0.5], [0.5], [0.5], [0.5]])
    y = jnp.array([[0.6], [0.75], [0.2], [0.5]])  # squared errors .01, .0625, .09, 0
    assert float(tasks.task_error("regression", out, y, 0.04)) == 0.5
    np.testing.assert_allclose(tasks.task_error("regression", out, y), 0.1625 / 4, rtol=1e-6)
    mult = tasks.pascanu_criterion(tasks.get("multiplication"))
    assert (mult.threshold, mult.tolerance) == (0.01, 0.04)
    assert float(mult.error(out, y)) == 0.5
    # adding's target is the sum of two values, twice Pascanu's mean: 4 × 0.04
    assert tasks.pascanu_criterion(tasks.get("adding")).tolerance == 0.16
    order = tasks.pascanu_criterion(tasks.get("temporal_order"))
    assert (order.threshold, order.tolerance) == (0.01, None)
    with pytest.raises(ValueError, match="tolerance"):
        tasks.pascanu_criterion(tasks.get("adding")._replace(name="subtracting"))
    with pytest.raises(TypeError, match="SequenceTask"):
        tasks.pascanu_criterion("adding")


def _wilson_by_quadratic(k, n, z):
    """Wilson's interval as the roots p of (k/n − p)² = z² p (1 − p) / n, solved directly."""
    ph = k / n
    a = 1 + z * z / n
    b = -(2 * ph + z * z / n)
    c = ph * ph
    disc = np.sqrt(b * b - 4 * a * c)
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


@pytest.mark.parametrize("k, n", [(0, 8), (3, 8), (8, 8), (1, 5), (37, 100)])
def test_wilson_interval_closed_forms(k, n):
    z = 1.959963984540054
    rate, lo, hi = tasks.wilson_interval(k, n)
    want_lo, want_hi = _wilson_by_quadratic(k, n, z)
    # both are float64 closed forms of a few operations: agreement to 1e-12
    np.testing.assert_allclose([rate, lo, hi], [k / n, want_lo, want_hi], rtol=0, atol=1e-12)
    if k == 0:  # the upper end at k = 0 is z²/(n + z²)
        np.testing.assert_allclose(hi, z * z / (n + z * z), rtol=1e-12)
        assert lo == 0
    if k == n:
        np.testing.assert_allclose(lo, n / (n + z * z), rtol=1e-12)
        assert hi == 1


def test_wilson_interval_vectorised_and_bad_input():
    rate, lo, hi = tasks.wilson_interval(np.array([0, 4, 8]), 8)
    assert rate.shape == lo.shape == hi.shape == (3,)
    assert np.all((lo <= rate) & (rate <= hi))
    np.testing.assert_allclose(lo[0], 1 - hi[2], atol=1e-12)  # symmetric in k <-> n − k
    with pytest.raises(ValueError, match="successes"):
        tasks.wilson_interval(9, 8)
    with pytest.raises(ValueError, match="trials"):
        tasks.wilson_interval(0, 0)
    with pytest.raises(ValueError, match="z"):
        tasks.wilson_interval(1, 2, z=-1.0)
