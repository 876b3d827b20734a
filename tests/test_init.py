"""Initialisers: closed-form scales, empirical moments with standard-error tolerances, errors."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow import init

# Empirical moments below are taken over ~2·10⁵ entries, so standard errors are ~0.2–0.3 %; every
# tolerance is 5 standard errors (a false failure has probability < 10⁻⁶) and a wrong constant
# (e.g. variance 1/N instead of 2/N, or Kumar's 12.8 vs 3.6² = 12.96) is many of them away.
_SIGMAS = 5.0


def _std_tolerance(std, count):
    # The sample standard deviation of `count` Gaussian draws has standard error ≈ σ/√(2·count).
    return _SIGMAS * std / math.sqrt(2 * count)


def _var_tolerance(var, count, kurtosis=3.0):
    # The sample variance has standard error σ²·√((κ − 1)/count), κ the kurtosis (3 if Gaussian).
    return _SIGMAS * var * math.sqrt((kurtosis - 1.0) / count)


# --- Kumar ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fan_in", [16, 256, 1000])
def test_kumar_sigmoid_formula(fan_in):
    # Kumar 2017 eq. 9 with φ'(0) = 1/4, φ(0) = 1/2: v² = 1/(N/16 · 5/4) = 12.8/N exactly.
    v = init.kumar_std("sigmoid", fan_in)
    assert v == pytest.approx(math.sqrt(12.8 / fan_in), rel=1e-12)
    # The paper quotes 3.6/√N: √12.8 = 3.578 rounds to 3.6 at one decimal, so the exact value
    # must lie within the rounding interval [3.55, 3.65)/√N.
    assert abs(v * math.sqrt(fan_in) - 3.6) <= 0.05


@pytest.mark.parametrize(
    "activation, variance_times_n",
    [("tanh", 1.0), ("relu", 2.0), ("linear", 1.0), ("leaky_relu", 2.0 / (1 + 0.01**2))],
)
def test_kumar_other_activations(activation, variance_times_n):
    # tanh: φ'(0) = 1, φ(0) = 0 -> 1/N; ReLU: He's 2/N (Kumar §3.2); leaky ReLU: 2/((1+a²)N).
    assert init.kumar_std(activation, 64) ** 2 == pytest.approx(variance_times_n / 64, rel=1e-12)


@pytest.mark.parametrize(
    "activation, v_sqrt_n", [("sigmoid", math.sqrt(12.8)), ("tanh", 1.0), ("relu", math.sqrt(2))]
)
def test_kumar_empirical_std(key, activation, v_sqrt_n):
    fan_in, fan_out = 256, 800
    w = np.asarray(init.kumar(activation)(key, (fan_in, fan_out), jnp.float32), np.float64)
    std = v_sqrt_n / math.sqrt(fan_in)
    assert abs(w.mean()) < _SIGMAS * std / math.sqrt(w.size)
    assert abs(w.std() - std) < _std_tolerance(std, w.size)


def test_kumar_sigmoid_empirical_std_resolves_the_rounding(key):
    # 3.6 vs √12.8 = 3.578 is a 0.6 % difference. With 2·10⁶ entries the 5-standard-error band is
    # 0.24 % of σ, so the sample matches √(12.8/N) and is distinguishable from the rounded 3.6/√N.
    fan_in = 1024
    w = np.asarray(init.kumar("sigmoid")(key, (fan_in, 2048), jnp.float32), np.float64)
    exact, rounded = math.sqrt(12.8 / fan_in), 3.6 / math.sqrt(fan_in)
    assert abs(w.std() - exact) < _std_tolerance(exact, w.size)
    assert abs(w.std() - rounded) > _std_tolerance(rounded, w.size)


def test_kumar_rejects_activation_with_zero_slope_at_origin():
    with pytest.raises(ValueError, match="φ'\\(0\\)"):
        init.kumar(lambda z: z**3)


def test_kumar_unknown_activation():
    with pytest.raises(ValueError, match="nope"):
        init.kumar("nope")


# --- Yilmaz & Poli --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fan_in, mean", [(1, -1.0), (4, -1.0), (8, -1.0), (16, -0.5), (800, -0.01)]
)
def test_yilmaz_poli_mean_formula(fan_in, mean):
    assert init.yilmaz_poli_mean(fan_in) == pytest.approx(mean, rel=1e-15)


@pytest.mark.parametrize("fan_in, fan_out", [(4, 50_000), (256, 800)])
def test_yilmaz_poli_empirical_mean(key, fan_in, fan_out):
    w = np.asarray(init.yilmaz_poli()(key, (fan_in, fan_out), jnp.float32), np.float64)
    mean, std = max(-1.0, -8.0 / fan_in), 1.0 / math.sqrt(fan_in)  # default spread 1/√N
    # Standard error of the mean σ/√count: 2e-3 for N = 4, 1.4e-4 for N = 256 (mean −0.03).
    assert abs(w.mean() - mean) < _SIGMAS * std / math.sqrt(w.size)
    assert abs(w.std() - std) < _std_tolerance(std, w.size)


def test_yilmaz_poli_custom_std(key):
    w = np.asarray(init.yilmaz_poli(std=0.3)(key, (256, 800), jnp.float32), np.float64)
    assert abs(w.mean() - (-8 / 256)) < _SIGMAS * 0.3 / math.sqrt(w.size)
    assert abs(w.std() - 0.3) < _std_tolerance(0.3, w.size)


# --- orthogonal -----------------------------------------------------------------------------------
@pytest.mark.parametrize("gain", [0.5, 1.0, 2.5])
def test_orthogonal_square(key, gain):
    w = np.asarray(init.orthogonal(gain)(key, (16, 16), jnp.float32), np.float64)
    # float32 QR: entries of W Wᵀ carry ~√n·eps ≈ 1e-6 relative error; 1e-5·gain² is 10× that.
    np.testing.assert_allclose(w @ w.T, gain**2 * np.eye(16), atol=1e-5 * gain**2)
    np.testing.assert_allclose(w.T @ w, gain**2 * np.eye(16), atol=1e-5 * gain**2)


def test_orthogonal_rectangular(key):
    wide = np.asarray(init.orthogonal(2.0)(key, (8, 20), jnp.float32), np.float64)
    np.testing.assert_allclose(wide @ wide.T, 4.0 * np.eye(8), atol=4e-5)  # orthonormal rows
    tall = np.asarray(init.orthogonal(2.0)(key, (20, 8), jnp.float32), np.float64)
    np.testing.assert_allclose(tall.T @ tall, 4.0 * np.eye(8), atol=4e-5)  # orthonormal columns


def test_orthogonal_float64(key, x64):
    w = np.asarray(init.orthogonal(0.7)(key, (16, 16), jnp.float64))
    assert w.dtype == np.float64
    np.testing.assert_allclose(w @ w.T, 0.49 * np.eye(16), atol=1e-13)


# --- variance-scaling families --------------------------------------------------------------------
_FAN_IN, _FAN_OUT = 256, 800


@pytest.mark.parametrize(
    "make, variance, kurtosis",
    [
        (lambda: init.gaussian(1.0), 1.0 / _FAN_IN, 3.0),
        (lambda: init.gaussian(0.3), 0.09 / _FAN_IN, 3.0),
        (lambda: init.gaussian(2.0), 4.0 / _FAN_IN, 3.0),
        (init.he, 2.0 / _FAN_IN, 3.0),
        (init.lecun, 1.0 / _FAN_IN, 3.0),
        (init.glorot_normal, 2.0 / (_FAN_IN + _FAN_OUT), 3.0),  # truncated normal: kurtosis < 3
        (lambda: init.glorot("normal"), 2.0 / (_FAN_IN + _FAN_OUT), 3.0),
        (init.glorot, 2.0 / (_FAN_IN + _FAN_OUT), 1.8),  # uniform: kurtosis 9/5
        (init.glorot_uniform, 2.0 / (_FAN_IN + _FAN_OUT), 1.8),
    ],
)
def test_variance(key, make, variance, kurtosis):
    w = np.asarray(make()(key, (_FAN_IN, _FAN_OUT), jnp.float32), np.float64)
    assert abs(w.mean()) < _SIGMAS * math.sqrt(variance / w.size)
    assert abs(w.var() - variance) < _var_tolerance(variance, w.size, kurtosis)


def test_glorot_uniform_support(key):
    w = np.asarray(init.glorot()(key, (_FAN_IN, _FAN_OUT), jnp.float32))
    limit = math.sqrt(6.0 / (_FAN_IN + _FAN_OUT))  # Glorot & Bengio 2010, eq. 16
    assert np.abs(w).max() <= limit * (1 + 1e-6)
    assert np.abs(w).max() > 0.99 * limit  # 2·10⁵ uniform draws reach the edge


def test_fan_in_is_second_to_last_axis(key):
    # Flax's (fan_in, fan_out) layout: the scale follows shape[-2], not shape[-1].
    a = np.asarray(init.gaussian(1.0)(key, (256, 800), jnp.float32))
    b = np.asarray(init.gaussian(1.0)(key, (800, 256), jnp.float32))
    assert abs(a.std() - 1 / 16) < _std_tolerance(1 / 16, a.size)
    assert abs(b.std() - 1 / math.sqrt(800)) < _std_tolerance(1 / math.sqrt(800), b.size)


def test_biases(key):
    assert np.all(np.asarray(init.zeros()(key, (7,), jnp.float32)) == 0)
    b = np.asarray(init.gaussian_bias(0.5)(key, (256, 800), jnp.float32), np.float64)
    assert abs(b.std() - 0.5) < _std_tolerance(0.5, b.size)  # σ_b, no fan-in scaling
    assert np.all(np.asarray(init.gaussian_bias(0.0)(key, (3, 4), jnp.float32)) == 0)


# --- Flax compatibility and determinism -----------------------------------------------------------
_ALL = [
    init.glorot,
    init.glorot_normal,
    init.glorot_uniform,
    init.he,
    init.lecun,
    init.orthogonal,
    lambda: init.gaussian(1.3),
    lambda: init.kumar("sigmoid"),
    init.yilmaz_poli,
]


@pytest.mark.parametrize("make", _ALL)
def test_same_key_same_numbers(key, make):
    f = make()
    a, b = f(key, (3, 4), jnp.float32), f(key, (3, 4), jnp.float32)
    assert a.shape == (3, 4) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
    c = f(jax.random.key(1), (3, 4), jnp.float32)
    assert not np.array_equal(np.asarray(a), np.asarray(c))


@pytest.mark.parametrize("make", _ALL)
def test_float64(key, make, x64):
    assert make()(key, (3, 4), jnp.float64).dtype == jnp.float64


# --- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma_w", [0.0, -1.0, float("nan"), float("inf")])
def test_gaussian_rejects_bad_sigma(sigma_w):
    with pytest.raises(ValueError, match="sigma_w"):
        init.gaussian(sigma_w)


@pytest.mark.parametrize("gain", [0.0, -2.0])
def test_orthogonal_rejects_bad_gain(gain):
    with pytest.raises(ValueError, match="gain"):
        init.orthogonal(gain)


def test_glorot_rejects_unknown_distribution():
    with pytest.raises(ValueError, match="'foo'"):
        init.glorot("foo")


def test_yilmaz_poli_rejects_bad_std():
    with pytest.raises(ValueError, match="std"):
        init.yilmaz_poli(std=0.0)


def test_gaussian_bias_rejects_negative():
    with pytest.raises(ValueError, match="sigma_b"):
        init.gaussian_bias(-0.1)


def test_scalar_shape_rejected(key):
    with pytest.raises(ValueError, match="shape"):
        init.gaussian(1.0)(key, (), jnp.float32)


# --- delta-orthogonal convolutions (Xiao et al. 2018) ---------------------------------------------
class _LinearCircularCNN(nn.Module):
    channels: tuple = (4, 4, 6, 6)
    gain: float = 1.3
    dims: int = 1

    @nn.compact
    def __call__(self, x):
        for c in self.channels:
            x = nn.Conv(
                c,
                (3,) * self.dims,
                padding="CIRCULAR",
                param_dtype=jnp.float64,
                kernel_init=gf.init.delta_orthogonal(self.gain),
            )(x)
        return x


# The 2-D case compiles a ~7 s program: in the slow step; the 1-D case checks the same claim.
@pytest.mark.parametrize("dims", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_delta_orthogonal_linear_cnn_has_all_singular_values_gain_to_the_depth(x64, dims):
    # Independent closed form: with circular padding each layer maps x to g·(x Q) at every
    # position, Q with orthonormal rows (c_in <= c_out), so every singular value of the
    # input–output Jacobian of L layers is exactly g^L. Checked by jax.jacrev of the whole
    # network (not the chain machinery) and by the chain's log-scale products.
    model = _LinearCircularCNN(dims=dims)
    x = jax.random.normal(jax.random.key(0), (5,) * dims + (3,), jnp.float64)
    variables = model.init(jax.random.key(1), x)
    jac = jax.jacrev(lambda v: model.apply(variables, v.reshape(x.shape)).ravel())(x.ravel())
    s = np.linalg.svd(np.asarray(jac), compute_uv=False)
    # float64 rounding through 4 layers: 1e-10 relative is a wide margin.
    np.testing.assert_allclose(s, 1.3**4, rtol=1e-10)
    chain = gf.chain.from_module(model, variables, x)
    log_sv = gf.jacobians.backward_products(chain).log_singular_values()[0][0]
    np.testing.assert_allclose(np.exp(np.asarray(log_sv)), 1.3**3, rtol=1e-10)  # stem excluded


def test_delta_orthogonal_is_zero_off_centre_and_checks_its_arguments():
    k = gf.init.delta_orthogonal(2.0)(jax.random.key(0), (3, 5, 4, 6))
    centre = np.asarray(k[1, 2])
    np.testing.assert_allclose(centre @ centre.T, 4.0 * np.eye(4), atol=1e-5)  # float32
    assert float(jnp.sum(jnp.abs(k))) == pytest.approx(float(np.sum(np.abs(centre))), rel=1e-6)
    with pytest.raises(ValueError, match="odd"):
        gf.init.delta_orthogonal()(jax.random.key(0), (2, 4, 4))
    with pytest.raises(ValueError, match="gain"):
        gf.init.delta_orthogonal(0.0)
    with pytest.raises(ValueError, match="kernel shape"):
        gf.init.delta_orthogonal()(jax.random.key(0), (4,))
