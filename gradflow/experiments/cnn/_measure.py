"""The measurements of the CNN experiment: Jacobian spectra and state-gradient norms (a, b), the
q- and c-maps (c) and the Fourier-mode decay of a covariance perturbation (d), each at a point
(σ_w², σ_b²) of the tanh phase diagram.

Every network is drawn at unit scale (σ_w = 1, N(0, 1) biases) and rescaled inside one jitted
analysis per architecture, so the two initialisers and every (σ_w², σ_b²) share compilations.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from gradflow import gradients, init, jacobians, meanfield
from gradflow.experiments._scales import rescaled
from gradflow.models.cnn import CNN, mode_decay

if TYPE_CHECKING:
    from gradflow.experiments.cnn import Settings


KERNEL = 3
LN10 = math.log(10.0)


def critical_pair(sigma_b2: float) -> tuple[float, float, float]:
    """(σ_w², σ_b², q*) on the tanh edge of chaos χ₁ = 1."""
    sw2 = float(meanfield.critical_sigma_w2("tanh", sigma_b2))
    return sw2, float(sigma_b2), float(meanfield.q_star("tanh", sw2, sigma_b2))


def _unit_model(depth: int, channels: int, init_name: str) -> CNN:
    """A CNN with unit-scale kernels (σ_w = 1) and N(0, 1) biases, rescaled per point later."""
    kernel_init = init.gaussian(1.0) if init_name == "Gaussian" else init.delta_orthogonal(1.0)
    return CNN(
        depth=depth,
        channels=channels,
        kernel_size=KERNEL,
        activation="tanh",
        kernel_init=kernel_init,
        bias_init=init.gaussian_bias(1.0),
    )


@functools.cache
def _init_fn(init_name: str, depth: int, channels: int):
    """jit(model.init) of the unit model. The analyses below are compiled once per architecture
    and shared by both initialisers (applying a CNN does not depend on its ``kernel_init``)."""
    return jax.jit(_unit_model(depth, channels, init_name).init)


def _scaled(params, sw2, sb2):
    """Kernels × σ_w and biases × σ_b in the conv layers (one compiled function serves all σ)."""
    p = params["params"]
    conv = rescaled({"input": p["input"], "hidden": p["hidden"]}, jnp.sqrt(sw2), jnp.sqrt(sb2))
    return {"params": conv | {"readout": p["readout"]}}


def _per_position_inputs(key, n: int, c_in: int, sw2: float, sb2: float, q: float, corr: float):
    """Two inputs ``(2, n, c_in)`` whose first pre-activations have length q and correlation
    ``corr``·(q − σ_b²)/q + σ_b²/q at every position, in expectation over the first kernel.

    Every position has |x_α|² = c_in·s with σ_w² s + σ_b² = q, and the second input is
    corr·x_α + √(1 − corr²)·w_α with w_α ⊥ x_α of the same norm.
    """
    k1, k2 = jax.random.split(key)
    a = jax.random.normal(k1, (n, c_in))
    w = jax.random.normal(k2, (n, c_in))
    w = w - jnp.sum(w * a, axis=1, keepdims=True) / jnp.sum(a * a, axis=1, keepdims=True) * a
    unit = lambda v: v / jnp.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    r = math.sqrt(c_in * (q - sb2) / sw2)
    xa = r * unit(a)
    xb = r * (corr * unit(a) + math.sqrt(1.0 - corr**2) * unit(w))
    return jnp.stack([xa, xb])


# --------------------------------------------------------------------------------------------
# (a, b) Jacobian spectra and state-gradient norms
# --------------------------------------------------------------------------------------------


def depths_from_top(depth: int) -> np.ndarray:
    """Log-spaced d = 1 … depth − 1 (the chain has depth − 1 steps)."""
    d = np.unique(np.round(np.logspace(0, math.log10(depth - 1), 25)).astype(int))
    return d[d <= depth - 1]


@functools.cache
def _jacobian_fn(depth: int, positions: int, channels: int):
    """One jitted network analysis per architecture; σ_w², σ_b², q* are traced arguments."""
    model = _unit_model(depth, channels, "Gaussian")
    idx = (depth - 1) - depths_from_top(depth)  # products[k] = ∂h_K/∂h_k, K = depth − 1

    @jax.jit
    def analyse(params, x, ky, sw2, sb2):
        params = _scaled(params, sw2, sb2)
        chain = model.chain(params, x)
        products = jacobians.backward_products(chain)
        sub = jacobians.JacobianProducts(products.unit[idx], products.log_norm[idx])
        log10_sv = sub.log_singular_values() / LN10
        floor = log10_sv[:, :1] + jnp.log10(log10_sv.shape[1] * jnp.finfo(log10_sv.dtype).eps)
        resolved = log10_sv > floor
        readout = params["params"]["readout"]
        y = jax.random.normal(ky, (1,), x.dtype)

        def loss(h):  # global average pool, Dense readout, squared error
            out = jnp.mean(h, axis=0) @ readout["kernel"] + readout["bias"]
            return jnp.mean((out - y) ** 2)

        grads = gradients.state_grad_norms(chain, loss, log10=True)
        return jnp.where(resolved, log10_sv, floor), resolved, grads

    def one(init_one, key, sw2, sb2, q):
        kp, kx, ky = jax.random.split(key, 3)
        x = jnp.sqrt(q) * jax.random.normal(kx, (positions, channels), jnp.result_type(q))
        return analyse(init_one(kp, x), x, ky, sw2, sb2)

    return one


def measure_jacobians(init_name: str, s: Settings, sigma_b2: float, keys) -> dict:
    """log10 singular values of ∂h_L/∂h_{L−d} and log10 ‖∂L/∂h_l‖ at a critical point.

    Input x ~ N(0, q*) per channel (C input channels); parameters at the critical (σ_w², σ_b²).
    Run under float64: singular values of the unit-norm products are resolved down to about
    n_state·eps·σ_max (the SVD is backward stable, not relatively accurate); smaller ones are
    returned at that floor and flagged in ``resolved``.

    Returns:
      dict with ``d`` ``(D,)``, ``log10_sv`` ``(seeds, D, n·C)`` (descending), ``resolved``
      (same shape, bool), ``log10_state_grad`` ``(seeds, depth)`` (h_1 … h_depth).
    """
    sw2, sb2, q = critical_pair(sigma_b2)
    one = _jacobian_fn(s.depth, s.positions, s.jac_channels)
    init_one = _init_fn(init_name, s.depth, s.jac_channels)
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    args = [jnp.asarray(v, dtype) for v in (sw2, sb2, q)]
    rows = [one(init_one, k, *args) for k in keys]  # one at a time: K products of (n·C)² each
    sv, ok, g = (np.stack([np.asarray(r[i]) for r in rows]) for i in range(3))
    return {"d": depths_from_top(s.depth), "log10_sv": sv, "resolved": ok, "log10_state_grad": g}


# --------------------------------------------------------------------------------------------
# (c) q^l and c^l against the mean-field maps
# --------------------------------------------------------------------------------------------


@functools.cache
def _forward_fn(depth: int, channels: int):
    model = _unit_model(depth, channels, "Gaussian")

    @jax.jit
    def analyse(params, x, sw2, sb2):
        z = model.preactivations(_scaled(params, sw2, sb2), x)  # (depth, 2, n, C)
        norms = jnp.sqrt(jnp.sum(z**2, axis=(2, 3), keepdims=True))  # (depth, 2, 1, 1)
        unit = z / norms
        # 1 − c = ‖â − b̂‖²/2 for unit vectors: no cancellation as c → 1 (1 − c from c itself
        # bottoms out at float32's 6e-8).
        gap = 0.5 * jnp.sum((unit[:, 0] - unit[:, 1]) ** 2, axis=(1, 2))
        return jnp.mean(z[:, 0] ** 2, axis=(1, 2)), gap

    return analyse


def measure_forward(init_name: str, s: Settings, sigma_b2: float, keys, corr: float = 0.5):
    """Per-layer length q^l and cross-input correlation c^l of two inputs, one row per key.

    q^l = mean of (z^l)² over positions and channels of the first input; c^l = Σ z^a z^b /
    √(Σ (z^a)² Σ (z^b)²) over positions and channels, returned as 1 − c^l. The inputs start
    every position at length q* and at the same correlation, so the mean-field prediction is the
    fully connected q-map and c-map (:func:`gradflow.meanfield.c_layers`): the window average of
    a spatially uniform covariance is itself.

    Returns:
      ``(q (seeds, depth), 1 − c (seeds, depth), q_theory (depth,), 1 − c_theory (depth,))``;
      the theory in float64 (in float32 the critical c-map stalls near 1 − c ≈ 1e-3).
    """
    sw2, sb2, q = critical_pair(sigma_b2)
    analyse = _forward_fn(s.depth, s.fwd_channels)
    init_one = _init_fn(init_name, s.depth, s.fwd_channels)
    rows = []
    for key in keys:
        kp, kx = jax.random.split(key)
        # c_in = C: a delta-orthogonal first layer is then square and, like the Gaussian one,
        # maps per-position |x_α|²/c_in to q¹ = σ_w² |x_α|²/c_in + σ_b².
        x = _per_position_inputs(kx, s.positions, s.fwd_channels, sw2, sb2, q, corr)
        rows.append(analyse(init_one(kp, x[0]), x, sw2, sb2))
    qs, cs = (np.stack([np.asarray(r[i]) for r in rows]) for i in range(2))
    # Layer 1: E[z^a z^b] = σ_w² ⟨x_a, x_b⟩/c_in + σ_b² = corr (q* − σ_b²) + σ_b², over q*.
    c1 = (corr * (q - sb2) + sb2) / q
    with jax.enable_x64(True):
        q_th, c_th = meanfield.c_layers("tanh", sw2, sb2, q, c1, s.depth - 1)
        q_th, gap_th = np.asarray(q_th), 1.0 - np.asarray(c_th)
    return qs, cs, q_th, gap_th


# --------------------------------------------------------------------------------------------
# (d) Fourier modes of a covariance perturbation
# --------------------------------------------------------------------------------------------


@functools.cache
def _mode_fn(depth: int, channels: int):
    model = _unit_model(depth, channels, "Gaussian")

    @jax.jit
    def jets(params, x, direction, sw2, sb2):
        return model.covariance_curvature(_scaled(params, sw2, sb2), x, direction)

    # One network per call, not vmapped over seeds: XLA:CPU's multi-threaded Eigen pool was seen
    # to wedge (all workers idle, the result never ready) on the vmapped program at C = 128-512,
    # as reported for vmap graphs elsewhere (PyAutoFit #1528/#1530; XLA flag
    # --xla_cpu_multi_thread_eigen=false avoids it there).
    def run(init_one, keys, x, direction, sw2, sb2):
        return np.stack([np.asarray(jets(init_one(k, x), x, direction, sw2, sb2)) for k in keys])

    return run


def measure_modes(init_name: str, s: Settings, sw2: float, sb2: float, keys):
    """Per-mode decay of a covariance perturbation around the spatially uniform fixed point.

    As ``tests/test_cnn.py`` (there with c_in = 3 < C, Gaussian kernels only): base input r·u
    at every position (length q*), perturbed along
    x_α(t) = r(u cos t + v_α sin t) with a chirp of angles θ_α = πα²/n in a plane ⊥ u (every
    Fourier mode excited alike); d²Σ^l/dt² per seed by :meth:`CNN.covariance_curvature`, then
    :func:`mode_decay`.

    Returns:
      ``(ModeDecay, theory_rates (n,))``; the theory is λ_m χ_c* for Gaussian kernels and χ_c*
      for every mode of a delta kernel (no spatial mixing: λ_m = 1).
    """
    n, c_in = s.positions, s.mode_channels  # c_in = C: see measure_forward
    q = float(meanfield.q_star("tanh", sw2, sb2))
    r = math.sqrt(c_in * (q - sb2) / sw2)
    angles = np.pi * np.arange(n) ** 2 / n
    eye = np.eye(c_in)
    x = jnp.asarray(np.broadcast_to(r * eye[0], (n, c_in)), jnp.float32)
    direction = r * (np.outer(np.cos(angles), eye[1]) + np.outer(np.sin(angles), eye[2]))
    run = _mode_fn(s.mode_depth, s.mode_channels)
    init_one = _init_fn(init_name, s.mode_depth, s.mode_channels)
    samples = run(init_one, keys, x, jnp.asarray(direction, jnp.float32), sw2, sb2)
    res = mode_decay(samples, min_snr=10.0)
    if init_name == "Gaussian":
        theory = np.asarray(meanfield.cnn_mode_rates("tanh", sw2, sb2, n, KERNEL).rates)
    else:
        theory = np.full(n, float(meanfield.chi_c("tanh", sw2, sb2)))
    return res, theory
