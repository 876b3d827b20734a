"""Finite-depth mean-field recursions: lengths, correlations and the NNGP kernel layer by layer."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from gradflow import _checks
from gradflow.meanfield._cores import c_map_core, q_map_at
from gradflow.meanfield._kernels import broadcast, common, kernel, variances

__all__ = ["q_layers", "c_layers", "nngp_kernel"]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _q_layers_jit(k, depth, sw2, sb2, q0):
    step = jnp.vectorize(functools.partial(q_map_at, k))
    _, qs = jax.lax.scan(lambda q, _: (step(sw2, sb2, q),) * 2, q0, None, length=depth)
    return jnp.concatenate([q0[None], qs])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _c_layers_jit(k, depth, sw2, sb2, q0, c0):
    step_q = jnp.vectorize(functools.partial(q_map_at, k))
    step_c = jnp.vectorize(functools.partial(c_map_core, k))

    def body(carry, _):
        q, c = carry
        nxt = (step_q(sw2, sb2, q), step_c(sw2, sb2, c, q))
        return nxt, nxt

    _, (qs, cs) = jax.lax.scan(body, (q0, c0), None, length=depth)
    return jnp.concatenate([q0[None], qs]), jnp.concatenate([c0[None], cs])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _nngp_jit(k, depth, x, sw2, sb2):
    pair = jnp.vectorize(k.phiphi)

    def layer(_, kmat):
        d = jnp.diagonal(kmat)
        n = d.shape[0]
        q1 = jnp.broadcast_to(d[:, None], (n, n))
        q2 = jnp.broadcast_to(d[None, :], (n, n))
        out = sw2 * pair(q1, q2, kmat) + sb2
        return 0.5 * (out + out.T)  # exact symmetry despite rounding in the two orders

    k0 = sw2 * (x @ x.T) / x.shape[1] + sb2
    return jax.lax.fori_loop(0, depth, layer, k0)


def q_layers(activation, sigma_w2, sigma_b2, q0, depth: int) -> jax.Array:
    """Iterates the length map: q^0, q^1, …, q^depth (one ``lax.scan``).

    Args:
      activation: registry name or callable.
      sigma_w2: σ_w², a scalar (or an array broadcast with ``q0``).
      sigma_b2: σ_b², a scalar (or an array broadcast with ``q0``).
      q0: initial length(s).
      depth: number of layers >= 0.

    Returns:
      Array ``(depth + 1, *broadcast shape)``.
    """
    depth = _checks.nonnegative_int("depth", depth)
    k = kernel(activation)
    sw2, sb2 = variances(sigma_w2, sigma_b2)
    q0 = _checks.as_float("q0", q0, minimum=0.0)
    return _q_layers_jit(k, depth, *broadcast(*common(sw2, sb2, q0)))


def c_layers(activation, sigma_w2, sigma_b2, q0, c0, depth: int) -> tuple[jax.Array, jax.Array]:
    """Iterates length and correlation of two equal-length inputs through ``depth`` layers.

    q^{l+1} = q_map(q^l) and c^{l+1} = c_map(c^l, q=q^l): the mean-field prediction for a finite
    network whose two inputs start at length q0 and correlation c0 (Poole et al. 2016, Fig. 2).

    Returns:
      ``(q, c)``, each ``(depth + 1, *broadcast shape)``.
    """
    depth = _checks.nonnegative_int("depth", depth)
    k = kernel(activation)
    sw2, sb2 = variances(sigma_w2, sigma_b2)
    q0 = _checks.as_float("q0", q0, minimum=0.0)
    c0 = _checks.as_float("c0", c0, minimum=-1.0, maximum=1.0)
    return _c_layers_jit(k, depth, *broadcast(*common(sw2, sb2, q0, c0)))


def nngp_kernel(x, activation, sigma_w, sigma_b, depth: int) -> jax.Array:
    """The NNGP kernel of a deep MLP's readout (Lee et al. 2018, arXiv:1711.00165, eq. 4).

    K⁰ = σ_w² x xᵀ/d + σ_b² is the covariance of the first hidden pre-activations; each of the
    ``depth`` hidden (Dense, φ) layers then applies K ← σ_w² E_{u~N(0,K)}[φ(u_i)φ(u_j)] + σ_b²,
    the last application being the Dense readout. ``depth = 0`` is a linear model.

    Args:
      x: inputs, array ``(n_points, d)``.
      activation: registry name or callable.
      sigma_w: weight scale σ_w > 0 (weights N(0, σ_w²/fan_in)), scalar.
      sigma_b: bias scale σ_b >= 0 (biases N(0, σ_b²)), scalar.
      depth: number of hidden layers >= 0.

    Returns:
      The readout's covariance, array ``(n_points, n_points)``.
    """
    depth = _checks.nonnegative_int("depth", depth)
    k = kernel(activation)
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n_points, d), got {x.shape}")
    _checks.check_finite("x", x)
    x = _checks.floating(x)
    sw = _checks.as_float("sigma_w", sigma_w, minimum=0.0, strict=True)
    sb = _checks.as_float("sigma_b", sigma_b, minimum=0.0)
    if sw.ndim or sb.ndim:
        raise ValueError("sigma_w and sigma_b must be scalars (vmap over them for a sweep)")
    x, sw, sb = common(x, sw, sb)
    return _nngp_jit(k, depth, x, sw * sw, sb * sb)
