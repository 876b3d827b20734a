"""Exact Jacobians along a chain: per-step Jacobians, their backward products, input–output Jacobian.

Products of many Jacobians under- or overflow in float32 after a few dozen steps, so
:func:`backward_products` keeps every product as a unit-Frobenius-norm matrix times ``exp(log_norm)``,
renormalising after each multiplication: the direction is exact and the scale lives in log space.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradflow import _checks
from jax.flatten_util import ravel_pytree

from gradflow.chain import Chain, final_state, flat_step, trajectory

__all__ = [
    "JacobianProducts",
    "step_jacobians",
    "backward_products",
    "end_to_end",
    "input_output_jacobian",
]

_MODES = ("auto", "fwd", "rev")


class JacobianProducts(NamedTuple):
    """Products of step Jacobians held in log-scale form, P = exp(log_norm) · unit.

    Attributes:
      unit: array ``(K, n, n)``, each product divided by its Frobenius norm (norm 1, or 0 if the
        product is exactly 0).
      log_norm: array ``(K,)``, log of each product's Frobenius norm (``-inf`` for a zero product).
    """

    unit: jax.Array
    log_norm: jax.Array

    @property
    def matrices(self) -> jax.Array:
        """The products themselves, ``(K, n, n)`` (may under/overflow: prefer the log form)."""
        return self.unit * jnp.exp(self.log_norm)[:, None, None]

    def log_singular_values(self) -> jax.Array:
        """log σ_i of every product, ``(K, n)``, descending; finite at any depth."""
        s = jnp.linalg.svd(self.unit, compute_uv=False)
        return jnp.log(s) + self.log_norm[:, None]

    def log_spectral_norm(self) -> jax.Array:
        """log ‖P‖₂ of every product, ``(K,)``."""
        return self.log_singular_values()[:, 0]


def _check_chain(chain) -> Chain:
    if not isinstance(chain, Chain):
        raise TypeError(f"chain must be a gradflow.chain.Chain, got {type(chain).__name__}")
    _checks.check_finite("chain.params", chain.params)
    _checks.check_finite("chain.h0", chain.h0)
    return chain


def _jac_fn(f, mode: str):
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    # A chain step is square (n -> n): forward mode pushes n tangents, reverse mode pulls n
    # cotangents, and forward mode needs no stored residuals, so "auto" means jacfwd here.
    return jax.jacrev(f) if mode == "rev" else jax.jacfwd(f)


def step_jacobians(chain: Chain, *, mode: str = "auto") -> jax.Array:
    """J_k = ∂h_{k+1}/∂h_k for every step, exact, vmapped over k.

    Args:
      chain: the chain; states are flattened, so J_k is ``(n, n)`` with n = ``chain.state_size``.
      mode: "fwd" (``jax.jacfwd``), "rev" (``jax.jacrev``) or "auto".

    Returns:
      Array of shape ``(K, n, n)``.
    """
    chain = _check_chain(chain)
    _, f = flat_step(chain)
    hs = trajectory(chain)
    # States h_0 … h_{K−1}, flattened: the points at which each step is linearised.
    hs_flat = jax.vmap(lambda h: ravel_pytree(h)[0])(jax.tree_util.tree_map(lambda a: a[:-1], hs))
    jac = _jac_fn(f, mode)
    per_step = chain.per_step()
    in_axes = (0, (None if chain.shared else 0, None if chain.xs is None else 0))
    return jax.vmap(jac, in_axes=in_axes)(hs_flat, per_step)


def _normalise(m):
    norm = jnp.linalg.norm(m)
    safe = jnp.where(norm > 0, norm, 1.0)
    return m / safe, jnp.log(norm)


def products_from_jacobians(jacobians: jax.Array) -> JacobianProducts:
    """Backward products P_k = J_{K−1} ⋯ J_k for k = 0 … K−1, by one reverse ``lax.scan``.

    Args:
      jacobians: array ``(K, n, n)`` of step Jacobians.

    Returns:
      :class:`JacobianProducts`; entry k is ∂h_K/∂h_k.
    """
    jacobians = jnp.asarray(jacobians)
    if jacobians.ndim != 3 or jacobians.shape[1] != jacobians.shape[2]:
        raise ValueError(f"jacobians must have shape (K, n, n), got {jacobians.shape}")
    n = jacobians.shape[-1]

    def body(carry, j):
        unit, log_norm = carry
        new_unit, dlog = _normalise(unit @ j)
        out = (new_unit, log_norm + dlog)
        return out, out

    init = (jnp.eye(n, dtype=jacobians.dtype) / jnp.sqrt(jnp.asarray(n, jacobians.dtype)),
            0.5 * jnp.log(jnp.asarray(n, jacobians.dtype)))
    _, (units, logs) = jax.lax.scan(body, init, jacobians, reverse=True)
    return JacobianProducts(units, logs)


def backward_products(chain: Chain, *, mode: str = "auto") -> JacobianProducts:
    """∂h_K/∂h_k for every k = 0 … K−1 (backprop through depth or time), in log-scale form.

    One forward pass for the states, the K step Jacobians under ``vmap``, then one reverse scan —
    never K separate ``jacrev`` calls.

    Args:
      chain: the chain.
      mode: Jacobian mode, see :func:`step_jacobians`.

    Returns:
      :class:`JacobianProducts` with ``unit`` of shape ``(K, n, n)`` and ``log_norm`` ``(K,)``.
    """
    return products_from_jacobians(step_jacobians(chain, mode=mode))


def end_to_end(chain: Chain) -> jax.Array:
    """∂h_K/∂h_0 by differentiating the whole rolled-out chain (the brute-force reference).

    Returns:
      Array ``(n, n)``.
    """
    chain = _check_chain(chain)
    h0_flat, unravel = ravel_pytree(chain.h0)

    def run(h):
        return ravel_pytree(final_state(chain.replace(h0=unravel(h))))[0]

    return jax.jacfwd(run)(h0_flat)


def input_output_jacobian(model, params, x, *, mode: str = "auto") -> jax.Array:
    """∂h_L/∂x: the Jacobian of the model's last hidden state with respect to its input.

    For an MLP with input width d and width n this is ``(n, d)`` (square, Pennington et al. 2017's
    input–output Jacobian, when d = n); for a recurrent model, ``x`` is the sequence ``(T, d)`` and
    the result is ``(n, T, d)``.

    Args:
      model: a gradflow model (anything with ``features(params, x)``).
      params: its parameters.
      x: one input (no batch axis).
      mode: "fwd", "rev" or "auto" (reverse mode when the input is larger than the state).
    """
    if not hasattr(model, "features"):
        raise TypeError(f"model must be a gradflow model with .features, got {type(model).__name__}")
    x = jnp.asarray(x)
    f = lambda xx: model.features(params, xx)  # noqa: E731
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if mode == "auto":
        n_out = jax.eval_shape(f, x).size
        mode = "rev" if x.size > n_out else "fwd"
    return (jax.jacrev if mode == "rev" else jax.jacfwd)(f)(x)
