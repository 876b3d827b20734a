"""Helpers shared by the models: parameter unwrapping, layer initialisation, readout."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from gradflow import _checks

__all__ = [
    "unwrap",
    "dense_params",
    "kernel_params",
    "readout",
    "model_readout",
    "resolve_dtype",
    "bcast",
    "normalize",
    "Stem",
    "NORM_EPS",
]

NORM_EPS = 1e-5  # as flax.linen.BatchNorm/LayerNorm


def unwrap(params):
    """Accepts ``{"params": {...}}`` (as returned by ``Module.init``) or the inner dict."""
    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]
    if not isinstance(params, dict):
        raise TypeError(
            f"params must be the dict returned by model.init, got {type(params).__name__}"
        )
    _checks.check_finite("params", params)
    return params


def resolve_dtype(dtype):
    return _checks.default_float() if dtype is None else dtype


def kernel_params(kernel_init, bias_init, kernel_shape, dtype, count=None, extra=None):
    """An init function ``key -> {"kernel", "bias", **extra}``; stacked on a leading axis if count.

    The kernel has ``kernel_shape`` (``(fan_in, fan_out)`` for a dense layer,
    ``(*window, c_in, c_out)`` for a convolution), the bias and every ``extra`` vector
    ``(kernel_shape[-1],)``. Stacked layers are initialised one at a time under ``vmap`` so each
    initialiser sees the single-layer shape and computes the right fan-in.
    """
    kernel_shape = tuple(kernel_shape)
    fan_out = kernel_shape[-1]

    def one(key):
        kk, kb = jax.random.split(key)
        layer = {
            "kernel": kernel_init(kk, kernel_shape, dtype),
            "bias": bias_init(kb, (fan_out,), dtype),
        }
        for name, fill in (extra or {}).items():
            layer[name] = jnp.full((fan_out,), fill, dtype)
        return layer

    if count is None:
        return one
    return lambda key: jax.vmap(one)(jax.random.split(key, count))


def dense_params(kernel_init, bias_init, fan_in: int, fan_out: int, dtype, count=None, extra=None):
    """:func:`kernel_params` for a dense layer, kernel ``(fan_in, fan_out)``."""
    return kernel_params(kernel_init, bias_init, (fan_in, fan_out), dtype, count, extra)


def normalize(z, axis: int, params=None):
    """Zero mean, unit variance along ``axis`` (ε = NORM_EPS); then ``scale``/``offset`` if given.

    ``axis=-1`` is LayerNorm, ``axis=0`` BatchNorm in training mode; ``params`` holds per-feature
    ``scale`` and ``offset`` vectors (the learnt affine map), or None.
    """
    mean = jnp.mean(z, axis=axis, keepdims=True)
    var = jnp.var(z, axis=axis, keepdims=True)
    z = (z - mean) * jax.lax.rsqrt(var + NORM_EPS)
    if params is None:
        return z
    return z * bcast(params["scale"], z) + bcast(params["offset"], z)


@dataclasses.dataclass(frozen=True)
class Stem:
    """A model's input layer ``step`` as a Layer function ``(params, x, _) -> h_1``.

    Hashable (a frozen dataclass of a hashable step), so jitted analyses cache it.
    """

    step: Any

    def __call__(self, params, x, _=None):
        return self.step(params, x)


def bcast(v, like):
    """Broadcasts a per-feature vector to ``like``'s shape explicitly (rank promotion may raise)."""
    return jnp.broadcast_to(v, like.shape)


def readout(layer, h):
    """The affine map ``h @ kernel + bias``; h of shape (..., n) -> (..., out)."""
    z = h @ layer["kernel"]
    return z + bcast(layer["bias"], z)


def model_readout(params, h):
    """A model's ``readout`` layer (params wrapped or bare) applied to h: (..., n) -> (..., out)."""
    return readout(unwrap(params)["readout"], h)


def check_input_width(module, x, name: str = "x") -> None:
    """In ``apply``, raises ValueError if x's last axis differs from the stored input kernel's."""
    if module.has_variable("params", "input"):
        d = module.get_variable("params", "input")["kernel"].shape[0]
        if x.shape[-1] != d:
            raise ValueError(
                f"{name} must have {d} features (the model's input width), got shape {x.shape}"
            )
