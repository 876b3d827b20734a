"""Random wide networks whose weights are drawn inside each step, for mean-field checks.

A chain of :class:`Block` s holds O(L) numbers (a key and the variances per layer), not L·N²
weights, so networks of width ≥ 1000 and depth ≥ 1000 fit in memory, and the variances are
traced (one compilation serves a whole (σ_w, σ_b) grid). With LayerNorm and μ = 1 they are the
pre-LN residual networks of Doshi, He & Gromov (2023, arXiv:2111.12143); with μ = 0 and no
LayerNorm, the plain networks of Poole et al. (2016) on pre-activations.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from gradflow import activations
from gradflow.chain import Chain, trajectory

__all__ = ["Block", "block_chain", "product_formula"]


@dataclasses.dataclass(frozen=True)
class Block:
    """One block h' = μ h + φ(LN(h)) W + b (``layer_norm``) or μ h + φ(h) W + b, weights on the fly.

    The per-step parameters are ``{"key": uint32 (2,), "sigma_w": (), "sigma_b": (), "mu": ()}``:
    W_ij ~ N(0, σ_w²/N) and b_i ~ N(0, σ_b²) are drawn from ``key`` inside the step, so a chain of
    depth L holds O(L) numbers, not L·N² (a width-1000, depth-1000 net would need 4 GB), and the
    variances are traced (one compilation serves a whole (σ_w, σ_b) grid). LN(h) is
    (h − mean h)/std h over the N units, without gain, bias or ε (the paper's LayerNorm).

    With μ = 1 and ``layer_norm`` this is the pre-LN residual network of Doshi et al. (2023); with
    μ = 0 and no LayerNorm, the plain network z^{l+1} = W φ(z^l) + b on pre-activations of Poole
    et al. (2016). (:class:`gradflow.models.MLP` with ``norm="layer", residual=True`` is another
    architecture, h + φ(LN(h W + b)), whose mean field differs.)
    """

    activation: activations.Activation
    layer_norm: bool = True

    def __call__(self, theta, h, x=None):
        kw, kb = jax.random.split(jax.random.wrap_key_data(theta["key"]))
        n = h.shape[-1]
        w = jax.random.normal(kw, (n, n), h.dtype) * (theta["sigma_w"] / math.sqrt(n))
        b = jax.random.normal(kb, (n,), h.dtype) * theta["sigma_b"]
        z = (h - jnp.mean(h)) * jax.lax.rsqrt(jnp.var(h)) if self.layer_norm else h
        return theta["mu"] * h + self.activation.fn(z) @ w + b


def block_chain(
    key,
    *,
    width: int,
    depth: int,
    activation="tanh",
    sigma_w=1.0,
    sigma_b=0.0,
    mu=1.0,
    layer_norm: bool = True,
    dtype=jnp.float32,
) -> Chain:
    """A random network of :class:`Block` s as a :class:`~gradflow.chain.Chain`, h^0 ~ N(0, I_N).

    ``sigma_w``, ``sigma_b`` and ``mu`` may be traced (``vmap`` over a grid of them).

    Returns:
      A :class:`~gradflow.chain.Chain` of length ``depth`` with state ``(width,)``.
    """
    k_layers, k_h0 = jax.random.split(key)
    keys = jax.random.key_data(jax.random.split(k_layers, depth))
    full = lambda v: jnp.full((depth,), v, dtype)
    params = {"key": keys, "sigma_w": full(sigma_w), "sigma_b": full(sigma_b), "mu": full(mu)}
    h0 = jax.random.normal(k_h0, (width,), dtype)
    step = Block(activations.get(activation), layer_norm)
    return Chain(params=params, xs=None, h0=h0, step=step, length=depth)


def product_formula(chain: Chain, states=None) -> jax.Array:
    """log J^{0,l}, l = 1 … K, from the product formula on the network's own layer statistics.

    With LayerNorm, J^{0,l} = ∏_{k<l} (μ² + σ_w² ⟨φ'(z^k)²⟩ / q^k), with q^k = var(h^k) over the
    units and ⟨φ'(z^k)²⟩ the average over the units of z^k = LN(h^k): the mean-field recursion
    of :func:`gradflow.meanfield.residual_ln_layers` with its expectations replaced by this
    finite network's layer averages, which removes the O(1/√N) scatter of q^k between networks.
    Without LayerNorm, χ_J^k = μ² + σ_w² ⟨φ'(h^k)²⟩ (Doshi et al. 2023, residual MLP; μ = 0 is
    Poole et al.'s χ₁ at the current length).

    Args:
      chain: from :func:`block_chain`.
      states: its ``trajectory`` ``(K + 1, N)`` if already computed (the weights are drawn
        again on every pass).

    Returns:
      array ``(K,)``.
    """
    hs = (trajectory(chain) if states is None else states)[:-1]
    var = jnp.var(hs, axis=1)
    p = chain.params
    if chain.step.layer_norm:
        z = (hs - jnp.mean(hs, axis=1, keepdims=True)) * jax.lax.rsqrt(var)[:, None]
        gain = jnp.mean(chain.step.activation.deriv(z) ** 2, axis=1) / var
    else:
        gain = jnp.mean(chain.step.activation.deriv(hs) ** 2, axis=1)
    return jnp.cumsum(jnp.log(p["mu"] ** 2 + p["sigma_w"] ** 2 * gain))
