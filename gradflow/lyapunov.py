"""Lyapunov spectra along a chain by QR re-orthonormalisation (Benettin et al. 1980).

The i-th Lyapunov exponent of a chain of step Jacobians J_0, J_1, … is the mean log growth rate per
step of the i-th singular direction of the product J_{K−1} ⋯ J_0:

    λ_i = lim_{K→∞} (1/K) log σ_i(J_{K−1} ⋯ J_0).

The raw product under- or overflows in float32 within a few dozen steps, so it is never formed.
Instead an orthonormal frame Q_k (n × k) is pushed through one step at a time and
re-orthonormalised,

    J_k Q_k = Q_{k+1} R_{k+1},        λ_i ≈ (1/K) Σ_k log |(R_k)_ii|,

which is exact in log space: every step multiplies a well-conditioned n × k matrix and only the
logarithms of the diagonal of R are accumulated (Benettin, Galgani, Giorgilli & Strelcyn 1980,
"Lyapunov characteristic exponents for smooth dynamical systems…", Meccanica 15:9–30; Eckmann &
Ruelle 1985, Rev. Mod. Phys. 57:617, §III.C). Keeping k < n columns gives the top k exponents only.

On a :class:`~gradflow.chain.Chain` the step Jacobian is never materialised either: each step
computes J_k Q_k as k Jacobian-vector products of the step at the current state (``jax.linearize``
inside the ``lax.scan``), so memory is O(n k) whatever the chain's length, and the cost per step is
that of k forward-mode derivatives plus one n × k QR.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from gradflow import _checks
from gradflow.chain import Chain, Layer, Segmented, check_chain, flat_step, state_shapes
from gradflow.chain.core import same_shapes
from gradflow.chain.passes import flat_fn

__all__ = ["FiniteTimeSpectrum", "lyapunov_spectrum", "finite_time_spectrum"]


class FiniteTimeSpectrum(NamedTuple):
    """Finite-time Lyapunov exponents: the running estimate after every counted step.

    Attributes:
      exponents: array ``(k,)``, the estimate after the last step, sorted descending (equal to
        :func:`lyapunov_spectrum`).
      running: array ``(K − discard, k)``; row t is the mean of the first t + 1 counted log growth
        rates, i.e. the finite-time exponents after t + 1 steps. Columns are in QR (Gram–Schmidt)
        order, which is descending asymptotically for a generic initial frame.
      log_growth: array ``(K − discard, k)``, the per-step local growth rates log |(R_k)_ii|.
    """

    exponents: jax.Array
    running: jax.Array
    log_growth: jax.Array


def _qr_step(z):
    """QR of ``z`` (n × k) with the sign fixed so that diag(R) ≥ 0; returns (Q, log|diag R|).

    LAPACK/XLA's Householder QR leaves the signs of diag(R) arbitrary; flipping the matching
    columns of Q makes the frame a deterministic function of the product (the unique QR with
    positive diagonal), so the frame evolves continuously and the finite-time data are reproducible.
    """
    q, r = jnp.linalg.qr(z, mode="reduced")
    d = jnp.diagonal(r)
    sign = jnp.where(d < 0, -1.0, 1.0).astype(q.dtype)
    return q * sign[None, :], jnp.log(jnp.abs(d))


def _kahan_add(total, comp, x):
    """Compensated (Kahan) summation: ``total + x`` with the rounding error carried in ``comp``.

    A float32 running sum over 10,000 steps of log|R_ii| ≈ O(1) loses ~K·eps relative accuracy;
    compensation keeps the sum exact to a few ulps, which is what makes (1/K) Σ log(scale) come
    out as log(scale) to float32 precision. A -inf growth rate (an exactly singular step) would
    turn the compensation into NaN, so the compensation is reset wherever the sum is not finite.
    """
    y = x - comp
    t = total + y
    new_comp = (t - total) - y
    return t, jnp.where(jnp.isfinite(t), new_comp, jnp.zeros_like(new_comp))


def _initial_frame(n: int, k: int, dtype, key) -> jax.Array:
    """A Haar-random n × k orthonormal frame; a generic frame makes the QR order descending.

    The frame is the first k columns of the n × n one drawn with the same key, so (QR being
    Gram–Schmidt) the top-k run reproduces the first k exponents of the full run exactly.
    """
    if key is None:
        # A fixed key keeps ``lyapunov_spectrum(x)`` deterministic; pass ``key`` to vary the frame.
        key = jax.random.key(0)
    z = jax.random.normal(key, (n, n), dtype)[:, :k]
    q, _ = _qr_step(z)
    return q


def _resolve_k(k, n: int) -> int:
    if k is None:
        return n
    k = _checks.positive_int("k", k)
    if k > n:
        raise ValueError(f"k must be <= the state size n = {n}, got k = {k}")
    return k


def _scan_spectrum(parts, carry0, discard: int, n: int, k: int, dtype, key, record: bool):
    """Shared Benettin loop over ``parts``: ``(advance, xs, length)`` triples run in order.

    ``advance(carry, x, q) -> (carry, J q)`` applies one step; a chain has one part, a
    :class:`~gradflow.chain.Segmented` chain one per segment (the frame and sums carry over).
    With ``record`` False the scan emits nothing per step, so its memory is O(n k) whatever the
    length (nothing is left for dead-code elimination to find).
    """
    q0 = _initial_frame(n, k, dtype, key)
    zeros = jnp.zeros((k,), dtype)
    state = (carry0, q0, zeros, zeros, jnp.zeros((), jnp.int32))
    recorded = []
    for advance, xs, length in parts:

        def body(state, x, advance=advance):
            carry, q, total, comp, t = state
            carry, z = advance(carry, x, q)
            q, log_r = _qr_step(z)
            counted = t >= discard
            new_total, new_comp = _kahan_add(total, comp, log_r)
            total = jnp.where(counted, new_total, total)
            comp = jnp.where(counted, new_comp, comp)
            # The step counter lives in the carry (not an arange scanned over) so that nothing
            # of size K is allocated unless per-step outputs are requested.
            return (carry, q, total, comp, t + 1), ((log_r, total) if record else None)

        state, per_step = jax.lax.scan(body, state, xs, length=length)
        recorded.append(per_step)
    total = state[2]
    if not record:
        return total, None, None
    log_r = jnp.concatenate([r[0] for r in recorded])
    totals = jnp.concatenate([r[1] for r in recorded])
    return total, log_r, totals


def _advance(f):
    def advance(h, s, q):
        # One forward pass and k tangents at the current state: J_k q without forming J_k.
        h_next, jvp = jax.linearize(lambda x: f(x, s), h)
        return h_next, jax.vmap(jvp, in_axes=1, out_axes=1)(q)

    return advance


def _run_segmented(sc: Segmented, k, key, discard, record):
    """Benettin along a Segmented chain whose steps all keep the state's shape."""
    sc = check_chain(sc)
    shapes = state_shapes(sc)
    for i, (a, b) in enumerate(zip(shapes[:-1], shapes[1:])):
        if not same_shapes(a, b):
            name = sc.segments[i].step_names()[0]
            raise ValueError(
                "a Lyapunov spectrum needs a shape-preserving chain (one state space), but step "
                f"{name!r} maps a state of shape {jax.tree_util.tree_map(lambda s: s.shape, a)} to "
                f"{jax.tree_util.tree_map(lambda s: s.shape, b)}; analyse the shape-preserving "
                "part of the chain instead"
            )
    h0, _ = ravel_pytree(sc.h0)
    n, length = h0.shape[0], sc.length
    if length < 1:
        raise ValueError(f"chain must have at least one step, got length {length}")
    k = _resolve_k(k, n)
    discard = _check_discard(discard, length)
    parts = []
    for seg in sc.segments:
        fn = seg.fn if isinstance(seg, Layer) else seg.step
        g = flat_fn(fn, sc.h0)
        if isinstance(seg, Layer):
            step = lambda h, x, g=g, seg=seg: g(seg.params, h, seg.x)
            xs = None
        else:
            step = lambda h, s, g=g, seg=seg: g(seg.params if seg.shared else s[0], h, s[1])
            xs = seg.per_step()
        parts.append((_advance(step), xs, seg.length))
    out = _scan_spectrum(parts, h0, discard, n, k, h0.dtype, key, record)
    return (*out, length - discard, discard)


def _check_discard(discard, length: int) -> int:
    discard = _checks.integer("discard", discard)
    if not 0 <= discard < length:
        raise ValueError(
            f"discard must satisfy 0 <= discard < the number of steps ({length}), got {discard}"
        )
    return discard


def _run(jacobians_or_chain, k, key, discard, record):
    """Dispatches on the input type; returns (total (k,), log_r (K, k), totals (K, k), counted)."""
    if isinstance(jacobians_or_chain, Chain):
        chain = jacobians_or_chain
        # Also checks h0 and every step's output are floating point (state_shapes).
        check_chain(chain)
        if chain.length < 1:
            raise ValueError(f"chain must have at least one step, got length {chain.length}")
        h0, f = flat_step(chain)
        n = h0.shape[0]
        k = _resolve_k(k, n)
        discard = _check_discard(discard, chain.length)

        parts = [(_advance(f), chain.per_step(), chain.length)]
        out = _scan_spectrum(parts, h0, discard, n, k, h0.dtype, key, record)
        return (*out, chain.length - discard, discard)

    if isinstance(jacobians_or_chain, Segmented):
        return _run_segmented(jacobians_or_chain, k, key, discard, record)
    if callable(jacobians_or_chain) and not hasattr(jacobians_or_chain, "shape"):
        raise TypeError(
            "jacobians_or_chain must be a Chain or an array of step Jacobians (K, n, n), got "
            f"{type(jacobians_or_chain).__name__}"
        )
    jac = _checks.as_float_array("jacobians", jacobians_or_chain, (3,))
    if jac.shape[1] != jac.shape[2]:
        raise ValueError(f"jacobians must have shape (K, n, n) (square steps), got {jac.shape}")
    if jac.shape[0] < 1 or jac.shape[1] < 1:
        raise ValueError(f"jacobians must hold at least one non-empty step, got shape {jac.shape}")
    _checks.check_finite("jacobians", jac)
    length, n = jac.shape[0], jac.shape[1]
    k = _resolve_k(k, n)
    discard = _check_discard(discard, length)
    advance = lambda carry, j, q: (carry, j @ q)
    out = _scan_spectrum([(advance, jac, length)], None, discard, n, k, jac.dtype, key, record)
    return (*out, length - discard, discard)


def lyapunov_spectrum(jacobians_or_chain, k: int | None = None, *, key=None, discard: int = 0):
    """The top-k Lyapunov exponents (mean log growth per step), descending, by Benettin's QR method.

    λ_i = (1/K') Σ_k log |(R_k)_ii| with J_k Q_k = Q_{k+1} R_{k+1}, summed over the K' = K − discard
    counted steps (module docstring). For a linear chain (every J_k = A) the exponents converge to
    log|eigenvalues of A|, with error O(1/K); for i.i.d. random J_k, with error O(1/√K).

    Args:
      jacobians_or_chain: either an array of step Jacobians ``(K, n, n)`` (J_k = ∂h_{k+1}/∂h_k,
        as from :func:`gradflow.jacobians.step_jacobians`), or a :class:`~gradflow.chain.Chain`,
        in which case J_k Q is computed on the fly by Jacobian-vector products at the current
        state and no Jacobian is stored (memory independent of K).
      k: how many exponents (the top k): the frame is n × k. ``None`` for all n.
      key: ``jax.random`` key for the initial Haar-random frame; ``None`` uses a fixed key, so the
        result is deterministic.
      discard: number of initial steps that move the frame (and state) but are not counted — a
        burn-in so the frame aligns with the leading directions and a chain's state reaches its
        attractor before averaging.

    Returns:
      Array ``(k,)``, sorted descending, in nats per step. An exactly singular step gives ``-inf``.

    Raises:
      TypeError: if the input is neither a Chain nor an array, or ``k``/``discard`` are not
        integers.
      ValueError: for a wrong shape, non-finite values, ``k`` outside 1 … n, or ``discard`` outside
        0 … K − 1.

    References:
      Benettin et al. 1980 (Meccanica 15:9–30); Eckmann & Ruelle 1985 (Rev. Mod. Phys. 57:617).
    """
    total, _, _, counted, _ = _run(jacobians_or_chain, k, key, discard, record=False)
    return jnp.sort(total / counted)[::-1]


def finite_time_spectrum(
    jacobians_or_chain, k: int | None = None, *, key=None, discard: int = 0
) -> FiniteTimeSpectrum:
    """Finite-time Lyapunov exponents after every step, for convergence plots.

    Same algorithm and arguments as :func:`lyapunov_spectrum`; additionally returns the running
    estimate after each counted step and each step's local growth rates. On a chain the extra
    output is ``(K, k)`` numbers — still no Jacobian is stored.

    Returns:
      :class:`FiniteTimeSpectrum` with ``exponents`` ``(k,)``, ``running`` and ``log_growth``
      ``(K − discard, k)``.
    """
    total, log_r, totals, counted, discard = _run(jacobians_or_chain, k, key, discard, record=True)
    dtype = totals.dtype
    steps = jnp.arange(1, counted + 1, dtype=dtype)[:, None]
    running = totals[discard:] / steps
    return FiniteTimeSpectrum(jnp.sort(total / counted)[::-1], running, log_r[discard:])
