"""Activation registry: name -> (φ, φ', γ = sup|φ'|).

γ is the constant in Pascanu, Mikolov & Bengio (2013, arXiv:1211.5063, §3.1): for a recurrent map
``x_t = W σ(x_{t-1}) + U u_t + b`` the step Jacobian obeys ‖∂x_t/∂x_{t-1}‖ ≤ γ λ₁, with λ₁ the
largest singular value of W. Everything in gradflow that takes an activation accepts either a
registry name or a callable; :func:`get` turns both into an :class:`Activation`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Activation", "get", "names", "ActivationLike"]


class Activation(NamedTuple):
    """An elementwise nonlinearity with its derivative.

    Attributes:
      name: registry name, or ``"custom"`` for a user callable.
      fn: φ, elementwise, any shape.
      deriv: φ', elementwise, any shape.
      gamma: sup_x |φ'(x)| (a float; ``inf`` if unbounded).
      value_at_zero: φ(0), used by Kumar's initialisation.
      deriv_at_zero: φ'(0) (for ReLU-like functions, the right derivative), used by Kumar's rule.
      relu_like: True for piecewise-linear rectifiers, which Kumar treats separately (variance 2/N).
    """

    name: str
    fn: Callable[[jax.Array], jax.Array]
    deriv: Callable[[jax.Array], jax.Array]
    gamma: float
    value_at_zero: float
    deriv_at_zero: float
    relu_like: bool = False

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fn(x)


ActivationLike = Union[str, Callable[[jax.Array], jax.Array], Activation]

LEAKY_RELU_SLOPE = 0.01  # flax/optax default negative slope


def _sigmoid_deriv(x):
    s = jax.nn.sigmoid(x)
    return s * (1.0 - s)


def _gelu(x):
    # The exact (erf) GELU; jax.nn.gelu defaults to the tanh approximation.
    return jax.nn.gelu(x, approximate=False)


def _gelu_deriv(x):
    cdf = 0.5 * (1.0 + jax.scipy.special.erf(x / math.sqrt(2.0)))
    pdf = jnp.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return cdf + x * pdf


def _silu_deriv(x):
    s = jax.nn.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


# sup|φ'| for GELU and SiLU has no elementary closed form. GELU: φ'' = φ_N(x)(2 - x²) vanishes at
# x = √2, so γ = Φ(√2) + √2 φ_N(√2). SiLU: the maximiser x* ≈ 2.39936 solves φ''(x) = 0; the value
# 1.0998393 was found by a 2·10⁶-point grid and is checked in tests/test_activations.py.
_GELU_GAMMA = 0.5 * (1.0 + math.erf(1.0)) + math.sqrt(2.0) * math.exp(-1.0) / math.sqrt(
    2.0 * math.pi
)
_SILU_GAMMA = 1.0998393201

_REGISTRY: dict[str, Activation] = {
    "sigmoid": Activation("sigmoid", jax.nn.sigmoid, _sigmoid_deriv, 0.25, 0.5, 0.25),
    "tanh": Activation("tanh", jnp.tanh, lambda x: 1.0 - jnp.tanh(x) ** 2, 1.0, 0.0, 1.0),
    "relu": Activation(
        "relu", jax.nn.relu, lambda x: (x > 0).astype(x.dtype), 1.0, 0.0, 1.0, relu_like=True
    ),
    "leaky_relu": Activation(
        "leaky_relu",
        lambda x: jax.nn.leaky_relu(x, LEAKY_RELU_SLOPE),
        lambda x: jnp.where(x > 0, 1.0, LEAKY_RELU_SLOPE).astype(x.dtype),
        1.0,
        0.0,
        1.0,
        relu_like=True,
    ),
    "gelu": Activation("gelu", _gelu, _gelu_deriv, _GELU_GAMMA, 0.0, 0.5),
    "silu": Activation("silu", jax.nn.silu, _silu_deriv, _SILU_GAMMA, 0.0, 0.5),
    "erf": Activation(
        "erf",
        jax.scipy.special.erf,
        lambda x: 2.0 / math.sqrt(math.pi) * jnp.exp(-x * x),
        2.0 / math.sqrt(math.pi),
        0.0,
        2.0 / math.sqrt(math.pi),
    ),
    "linear": Activation("linear", lambda x: x, jnp.ones_like, 1.0, 0.0, 1.0),
}


def names() -> tuple[str, ...]:
    """The registry's activation names, in a fixed order."""
    return tuple(_REGISTRY)


def _from_callable(fn: Callable[[jax.Array], jax.Array]) -> Activation:
    """Wraps a user callable: φ' by autodiff, γ estimated on a grid (documented as an estimate)."""
    deriv = jnp.vectorize(jax.grad(lambda x: fn(x)))
    try:
        # Models resolve their activation when traced (e.g. inside jax.jit(model.apply)); without
        # this context the grid evaluation would be staged into that trace and float() would fail.
        with jax.ensure_compile_time_eval():
            grid = np.linspace(-20.0, 20.0, 40001, dtype=np.float32)
            gamma = float(np.nanmax(np.abs(np.asarray(deriv(jnp.asarray(grid))))))
            at0 = float(fn(jnp.float32(0.0)))
            d0 = float(deriv(jnp.float32(0.0)))
    except Exception as exc:  # pragma: no cover - message path
        raise TypeError(
            f"activation callable {fn!r} must map a float array elementwise to a float array; "
            f"evaluating it failed with {type(exc).__name__}: {exc}"
        ) from exc
    return Activation("custom", fn, deriv, gamma, at0, d0)


# One Activation per callable: the models resolve their activation on every call, and a fresh
# Activation (new φ' closure) would compare unequal, so every jitted analysis taking the chain
# (whose step is static) would retrace, besides re-evaluating the γ grid each time.
_from_callable_cached = functools.lru_cache(maxsize=256)(_from_callable)


def get(activation: ActivationLike) -> Activation:
    """Resolves a name or callable to an :class:`Activation`.

    Args:
      activation: one of :func:`names`, an :class:`Activation`, or an elementwise callable. For a
        callable, φ' comes from ``jax.grad`` and γ is the maximum of |φ'| on a 40,001-point grid
        over [-20, 20] (an estimate, exact for monotone-derivative shapes peaked inside the grid).

    Returns:
      The :class:`Activation`.

    Raises:
      ValueError: for an unknown name (the message lists the valid ones).
      TypeError: for anything that is neither a string nor a callable.
    """
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        try:
            return _REGISTRY[activation]
        except KeyError:
            raise ValueError(
                f"unknown activation {activation!r}; expected one of {', '.join(names())} "
                "or a callable"
            ) from None
    if callable(activation):
        try:
            hash(activation)
        except TypeError:  # an unhashable callable object: wrap it afresh each time
            return _from_callable(activation)
        return _from_callable_cached(activation)
    raise TypeError(
        f"activation must be a name ({', '.join(names())}) or a callable, "
        f"got {type(activation).__name__}"
    )
