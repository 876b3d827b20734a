"""The activation registry: φ' against autodiff, γ = sup|φ'| against a grid, errors, callables."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import activations

# Points that avoid the kink of relu/leaky_relu at 0, where jax.grad and the registry may
# legitimately disagree (any value in the subdifferential is valid there).
_GRID = np.concatenate([np.linspace(-8.0, -1e-3, 401), np.linspace(1e-3, 8.0, 401)])


def _autodiff_deriv(fn, x):
    return jax.vmap(jax.grad(fn))(x)


def test_registry_names():
    assert set(activations.names()) == {
        "sigmoid",
        "tanh",
        "relu",
        "leaky_relu",
        "gelu",
        "silu",
        "erf",
        "linear",
    }


@pytest.mark.parametrize("name", activations.names())
def test_derivative_matches_autodiff(name, x64):
    act = activations.get(name)
    x = jnp.asarray(_GRID)
    # float64: both sides are the same function to within a few ulps, so 1e-12 absolute on
    # values of order 1 leaves ~10⁴ ulps of room and still catches any wrong formula.
    np.testing.assert_allclose(act.deriv(x), _autodiff_deriv(act.fn, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", activations.names())
def test_values_at_zero(name, x64):
    act = activations.get(name)
    zero = jnp.float64(0.0)
    assert act.value_at_zero == pytest.approx(float(act.fn(zero)), abs=1e-15)
    if not act.relu_like:  # ReLU's φ'(0) is the documented right derivative, not autodiff's
        assert act.deriv_at_zero == pytest.approx(float(jax.grad(act.fn)(zero)), abs=1e-15)
    else:
        assert act.deriv_at_zero == 1.0


@pytest.mark.parametrize("name", activations.names())
def test_gamma_is_sup_of_derivative_on_fine_grid(name, x64):
    act = activations.get(name)
    # φ' by autodiff (checked above against the registry's formula), on a 2·10⁵-interval grid
    # over [-10, 10] that contains 0 and √2 (the GELU maximiser) exactly; every registry
    # function's |φ'| peaks inside it and decays outside. A grid maximum undershoots the sup
    # by at most max|φ'''|·h²/8 ≈ 2.5e-9 for h = 1e-4 (|φ'''| ≤ 2 for all of them), so 1e-8
    # separates a correct γ from a wrong one (the SiLU constant is quoted to 10 digits).
    grid = np.union1d(np.linspace(-10.0, 10.0, 200_001), [math.sqrt(2.0)])
    grid_max = float(np.max(np.abs(np.asarray(_autodiff_deriv(act.fn, jnp.asarray(grid))))))
    assert act.gamma == pytest.approx(grid_max, abs=1e-8)


@pytest.mark.parametrize(
    "name, closed_form",
    [
        ("sigmoid", 0.25),
        ("tanh", 1.0),
        ("erf", 2.0 / math.sqrt(math.pi)),
        ("relu", 1.0),
        ("leaky_relu", 1.0),
        ("linear", 1.0),
        # GELU: φ'' = φ_N(x)(2 − x²) vanishes at x = √2, so γ = Φ(√2) + √2 φ_N(√2).
        ("gelu", 0.5 * (1 + math.erf(1.0)) + math.exp(-1.0) / math.sqrt(math.pi)),
    ],
)
def test_gamma_closed_forms(name, closed_form):
    assert activations.get(name).gamma == pytest.approx(closed_form, rel=1e-12)


def test_activation_is_callable_and_elementwise():
    act = activations.get("tanh")
    x = jnp.linspace(-2.0, 2.0, 12).reshape(3, 4)
    np.testing.assert_array_equal(act(x), jnp.tanh(x))


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        activations.get("swishh")
    message = str(err.value)
    assert "swishh" in message
    for name in activations.names():
        assert name in message


@pytest.mark.parametrize("bad", [3, None, 1.5, ["tanh"]])
def test_non_callable_is_type_error(bad):
    with pytest.raises(TypeError, match="activation"):
        activations.get(bad)


def test_callable_derivative_by_autodiff(x64):
    fn = lambda z: jnp.sin(z) + 0.5 * z  # noqa: E731
    act = activations.get(fn)
    assert act.name == "custom"
    x = jnp.asarray(_GRID)
    # Independent closed form φ' = cos x + ½; float32 grid internals do not enter φ' itself.
    np.testing.assert_allclose(act.deriv(x), np.cos(_GRID) + 0.5, rtol=1e-12, atol=1e-12)
    # sup|cos x + ½| = 3/2, attained at x = 0, a grid point of the γ estimate.
    assert act.gamma == pytest.approx(1.5, rel=1e-6)
    assert act.value_at_zero == 0.0
    assert act.deriv_at_zero == pytest.approx(1.5)


def test_callable_is_resolved_once():
    # The models resolve their activation on every call; equal Activations keep jit caches warm.
    fn = lambda z: 2.0 * jnp.tanh(z)  # noqa: E731
    assert activations.get(fn) == activations.get(fn)
    assert activations.get(fn).gamma == pytest.approx(2.0, rel=1e-6)


def test_callable_resolves_inside_jit():
    fn = lambda z: jnp.tanh(z) ** 3 + z  # noqa: E731

    @jax.jit
    def apply(x):
        # Resolving under a trace must not try to concretise traced values.
        act = activations.get(lambda z: fn(z))
        return act.deriv(x), act.gamma

    d, gamma = apply(jnp.linspace(-1.0, 1.0, 5))
    np.testing.assert_allclose(d, _autodiff_deriv(fn, jnp.linspace(-1.0, 1.0, 5)), rtol=1e-6)
    # φ' = 1 + 3t²(1 − t²) with t = tanh x peaks at t² = ½: γ = 7/4. The float32 grid with
    # spacing 10⁻³ misses the maximiser by at most 5·10⁻⁴, costing < 10⁻⁶ in γ (φ'' = 0 there).
    assert float(gamma) == pytest.approx(1.75, rel=1e-5)


def test_get_passes_activation_through():
    act = activations.get("gelu")
    assert activations.get(act) is act
