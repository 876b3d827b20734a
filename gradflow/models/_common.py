"""Helpers shared by the models: parameter unwrapping, layer initialisation, readout."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradflow import _checks

__all__ = ["unwrap", "dense_params", "readout", "resolve_dtype", "bcast"]


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


def dense_params(kernel_init, bias_init, fan_in: int, fan_out: int, dtype, count=None, extra=None):
    """An init function ``key -> {"kernel", "bias", **extra}``; stacked on a leading axis if count.

    Stacked layers are initialised one at a time under ``vmap`` so each initialiser sees the
    single-layer shape ``(fan_in, fan_out)`` and computes the right fan-in.
    """

    def one(key):
        kk, kb = jax.random.split(key)
        layer = {
            "kernel": kernel_init(kk, (fan_in, fan_out), dtype),
            "bias": bias_init(kb, (fan_out,), dtype),
        }
        for name, fill in (extra or {}).items():
            layer[name] = jnp.full((fan_out,), fill, dtype)
        return layer

    if count is None:
        return one
    return lambda key: jax.vmap(one)(jax.random.split(key, count))


def bcast(v, like):
    """Broadcasts a per-feature vector to ``like``'s shape explicitly (rank promotion may raise)."""
    return jnp.broadcast_to(v, like.shape)


def readout(layer, h):
    """The affine map ``h @ kernel + bias``; h of shape (..., n) -> (..., out)."""
    z = h @ layer["kernel"]
    return z + bcast(layer["bias"], z)


def check_input_width(module, x, name: str = "x") -> None:
    """In ``apply``, raises ValueError if x's last axis differs from the stored input kernel's."""
    if module.has_variable("params", "input"):
        d = module.get_variable("params", "input")["kernel"].shape[0]
        if x.shape[-1] != d:
            raise ValueError(
                f"{name} must have {d} features (the model's input width), got shape {x.shape}"
            )
