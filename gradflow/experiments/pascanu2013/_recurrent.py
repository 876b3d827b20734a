"""Pascanu et al. 2013's figures (c)–(e): RNN stability thresholds, Lyapunov spectra across the
order-to-chaos transition, and the QR estimator checked against Newman's closed form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gradflow import activations, init, jacobians, lyapunov, models, spectra, theory
from gradflow.chain import Chain
from gradflow.models.recurrent import RNNStep


def rnn_threshold_sweep(activation: str, scales, *, width: int, steps: int, keys, input_scale=0.1):
    """For W_rec ~ scale · N(0, 1/n): ρ, λ₁, ‖∂x_T/∂x_0‖₂ and the top Lyapunov exponent.

    A Gaussian W has ρ ≈ scale (circular law) and λ₁ ≈ 2·scale (quarter-circle law), so ρ and λ₁
    are distinct abscissae for the same network. Inputs u_t ~ N(0, input_scale² I_4) drive the
    state; the top exponent is averaged over the last 4/5 of the sequence.

    The RNN is centred so that x = 0 is a fixed point without input: its bias is −φ(0)·1 W (zero
    for tanh; −½ 1 W for the sigmoid, whose φ(0) = ½ would otherwise add a mean drive that
    saturates every unit). At x = 0 the step Jacobian is φ'(0) Wᵀ = γ Wᵀ for both, so the
    thresholds 1/γ (1 for tanh, 4 for the sigmoid) are where the linearisation turns unstable.

    Returns:
      dict of arrays ``(len(scales), len(keys))``: rho, lambda1, log_norm (log‖∂x_T/∂x_0‖₂),
      top_exponent.
    """
    act = activations.get(activation)

    def one(scale, key):
        kp, ku = jax.random.split(key)
        model = models.RNN(width=width, activation=act.name, recurrent_init=init.gaussian(1.0))
        u = input_scale * jax.random.normal(ku, (steps, 4))
        p = model.init(kp, u)["params"]
        w = scale * p["recurrent"]["kernel"]
        bias = -act.value_at_zero * jnp.sum(w, axis=0)
        p = {**p, "recurrent": {"kernel": w}, "input": {**p["input"], "bias": bias}}
        chain = model.chain(p, u)
        log_norm = jacobians.backward_products(chain).log_spectral_norm()[0]
        top = lyapunov.lyapunov_spectrum(chain, k=1, discard=steps // 5)[0]
        return w, spectra.singular_values(w)[0], log_norm, top

    run = jax.jit(jax.vmap(jax.vmap(one, (None, 0)), (0, None)))
    w, lam1, log_norm, top = run(jnp.asarray(scales, jnp.float32), keys)
    return {
        "rho": np.asarray(spectra.spectral_radius(w)),
        "lambda1": np.asarray(lam1),
        "log_norm": np.asarray(log_norm),
        "top_exponent": np.asarray(top),
    }


def chaos_spectra(gains, *, width: int, steps: int, discard: int, key):
    """Full Lyapunov spectra of the autonomous tanh RNN x ← W tanh(x), W ~ N(0, g²/n).

    The same W direction (one key) is scaled by each gain, so the curves differ only by g. The
    initial state is N(0, 1) so that for g > 1 the chain leaves the unstable fixed point 0.

    Returns:
      array ``(len(gains), width)``, each spectrum descending.
    """
    kw, kh = jax.random.split(key)
    w0 = init.gaussian(1.0)(kw, (width, width), jnp.float32)
    h0 = jax.random.normal(kh, (width,), jnp.float32)
    step = RNNStep(activations.get("tanh"))
    zero_drive = jnp.zeros((steps, width), jnp.float32)

    def one(g):
        # Pascanu's RNN step (gradflow.models.RNN's) with no input and a random initial state.
        c = Chain(
            params={"kernel": g * w0}, xs=zero_drive, h0=h0, step=step, length=steps, shared=True
        )
        return lyapunov.lyapunov_spectrum(c, discard=discard)

    return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(gains, jnp.float32)))


def newman_convergence(n: int, steps: int, key) -> tuple[np.ndarray, np.ndarray]:
    """Finite-time QR exponents of products of N(0, 1/n) matrices and Newman's exact values.

    Returns:
      ``(running (steps, n), exact (n,))``.
    """
    jac = jax.random.normal(key, (steps, n, n), jnp.float32) / np.sqrt(n)
    running = lyapunov.finite_time_spectrum(jac).running
    return np.asarray(running), np.asarray(theory.newman_lyapunov_exponents(n))
