"""Partial-Jacobian norms of a chain from random probes, without forming a Jacobian.

The averaged partial Jacobian norm (APJN) of Doshi, He & Gromov ("Critical initialization of wide
and deep neural networks using partial Jacobians: general theory and applications", NeurIPS 2023,
arXiv:2111.12143, §2, Def. 2.2) is

    J^{l0,l} = (1/N_l) Σ_ij (∂h_i^l / ∂h_j^{l0})² = ‖∂h_l/∂h_{l0}‖_F² / N_l,

the mean squared entry of the partial Jacobian times the input width: the factor by which a
random perturbation's squared norm grows from layer l0 to layer l. A chain is critical when
J^{l0,l} grows or decays at most polynomially in l; the paper's APJN also averages over the
weights, which here is the caller's job (one chain is one draw of them).

Forming ∂h_l/∂h_{l0} costs N_{l0} JVPs, or N_l VJPs, for every l. Hutchinson's trick avoids it:
for a probe u with E[u uᵀ] = I, E‖P u‖² = tr(Pᵀ P) = ‖P‖_F². Which end the probe sits at decides
the cost:

- :func:`partial_jacobian_norms` (forward mode, fixed l0, every l > l0): m probes u_i at h_{l0}
  pushed forward by one JVP per step give ‖J^{l0,l} u_i‖² for *every* l in one pass: O(m · K)
  step-JVPs in all. Pulling random cotangents back from each l instead (VJPs) would take one
  reverse pass per l, O(m · K²).
- :func:`partial_jacobian_norms_to` (reverse mode, fixed l, every l0 < l): m cotangents v_i at h_l
  pulled back by one VJP per step (the shared :func:`gradflow.chain.passes.pullback`) give
  ‖v_iᵀ ∂h_l/∂h_{l0}‖² for every l0 — the profile of a gradient arriving at layer l.

Variance. Write P's singular values σ_k and its effective rank r = (Σσ_k²)² / Σσ_k⁴ (between 1
and rank P). For Gaussian probes ‖P u‖² = Σ σ_k² g_k² with g_k iid N(0, 1), so one probe has
relative variance 2/r and the mean of m probes a relative standard error √(2/(m r)). Rademacher
probes (±1 entries) drop the diagonal terms of the variance, 2 Σ_{j≠k} (PᵀP)_jk², never more than
Gaussian ones. Deep products concentrate on few directions, so r is well below N: measured
r ≈ 100 for a width-1000, depth-100 pre-LN residual net (128 probes: 1.3 %) and r ≈ 12 at width
256, depth 200. The estimate of the error from the probes' spread is returned with every value
(``rel_std_err``).

Scale. Each probe is renormalised after every step and its norm kept as a logarithm
(:mod:`gradflow._numerics`), so the values are finite at any depth in float32.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from gradflow import _checks, _numerics
from gradflow.chain import Layer, check_chain, state_shapes
from gradflow.chain.passes import flat_fn, flat_segments, pullback, scan_or_call
from gradflow.matfree._common import PROBES, flat_sizes

__all__ = [
    "PartialJacobianNorms",
    "partial_jacobian_norms",
    "partial_jacobian_norms_to",
    "exact_partial_jacobian_norms",
]


class PartialJacobianNorms(NamedTuple):
    """APJNs J^{l0,l} = ‖∂h_l/∂h_{l0}‖_F² / N_l for a set of (l0, l) pairs, in log form.

    Entry i is the pair (l0, l) = (``source[i]``, ``target[i]``): for
    :func:`partial_jacobian_norms` l0 is fixed and l = l0 + 1 … K; for
    :func:`partial_jacobian_norms_to` l is fixed and l0 = 0 … l − 1.

    Attributes:
      log_values: array ``(P,)``, natural log of J^{l0,l} (of its estimate); finite at any
        depth, ``-inf`` where the product is exactly 0.
      rel_std_err: array ``(P,)``, the Monte Carlo standard error of J^{l0,l} relative to its
        value, from the sample spread of the probes (also the standard error of ``log_values``
        to first order); 0 for exact values, nan with a single probe.
      source: int array ``(P,)``, l0, the input layer of each pair.
      target: int array ``(P,)``, l, the output layer of each pair.
      widths: int array ``(P,)``, N_l, the size of h_l (the normalisation).
    """

    log_values: jax.Array
    rel_std_err: jax.Array
    source: jax.Array
    target: jax.Array
    widths: jax.Array

    @property
    def values(self) -> jax.Array:
        """J^{l0,l} itself, ``(P,)`` (may over/underflow at depth: prefer ``log_values``)."""
        return jnp.exp(self.log_values)

    @property
    def log10_values(self) -> jax.Array:
        """log10 J^{l0,l}, ``(P,)``."""
        return self.log_values / _numerics.LN10


# --------------------------------------------------------------------------------------------
# Argument checks (static, before tracing)
# --------------------------------------------------------------------------------------------


def _check_key(key):
    if key is None:
        raise TypeError("key must be a jax.random key, got None")
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single key (shape ()), got shape {key.shape}")
        return key
    arr = np.asarray(key) if not isinstance(key, jax.core.Tracer) else key
    if getattr(arr, "dtype", None) == np.uint32 and tuple(arr.shape) == (2,):
        return jax.random.wrap_key_data(jnp.asarray(arr))  # a legacy PRNGKey
    raise TypeError(
        "key must be a jax.random key (jax.random.key(seed) or PRNGKey(seed)), "
        f"got {type(key).__name__} {getattr(key, 'shape', '')}"
    )


def _check_layer(name: str, value, lo: int, hi: int) -> int:
    value = _checks.integer(name, value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must satisfy {lo} <= {name} <= {hi}, got {value}")
    return value


def _check_probes(probes) -> str:
    if probes not in PROBES:
        raise ValueError(f"probes must be one of {PROBES}, got {probes!r}")
    return probes


# --------------------------------------------------------------------------------------------
# Passes
# --------------------------------------------------------------------------------------------


def _draw(key, m: int, n: int, dtype, probes: str):
    if probes == "rademacher":
        return jax.random.rademacher(key, (m, n), dtype)
    return jax.random.normal(key, (m, n), dtype)


def _renormalise_rows(y, log_c):
    """Each row of ``y`` ``(m, n)`` to unit norm, its log norm added to ``log_c`` ``(m,)``."""
    return jax.vmap(_numerics.renormalise)(y, log_c)


def _flat_pieces(sc):
    """Every segment as ``(f, per_step, shared_params, shared, length)`` on flat states.

    ``f(theta, h_flat, x)`` is the step between flat vectors (:func:`flat_fn`); ``per_step`` is
    the ``(θ_k, x_k)`` pytree scanned over (a Layer as a run of length 1).
    """
    out = []
    for seg, shape in zip(sc.segments, state_shapes(sc)[:-1]):
        # Zeros of the entry state's shape only supply ravel_pytree's unravel (dead code after).
        example = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), shape)
        if isinstance(seg, Layer):
            lift = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], t)
            per_step = (lift(seg.params), lift(seg.x))
            out.append((flat_fn(seg.fn, example), per_step, None, False, 1))
        else:
            per_step = (None if seg.shared else seg.params, seg.xs)
            out.append((flat_fn(seg.step, example), per_step, seg.params, seg.shared, seg.length))
    return out


def _push_forward(sc, start: int, rows):
    """Pushes the rows of ``rows`` ``(m, N_start)`` from h_start to h_K, one JVP per step.

    One fused pass: each step's primal and its m tangents come from one vmapped ``jax.jvp`` (the
    primal is not batched), so the states are never stored and a step that draws its weights
    on the fly draws them once. Steps before ``start`` run the primal only.

    Returns:
      array ``(K − start, m)``: log ‖∂h_l/∂h_start · row_i‖ for l = start + 1 … K.
    """
    h = ravel_pytree(sc.h0)[0]
    u = log_c = None
    logs, offset = [], 0
    for f, per_step, shared_params, shared, length in _flat_pieces(sc):
        theta_of = lambda t, shared=shared, p=shared_params: p if shared else t
        lo = min(max(start - offset, 0), length)
        offset += length
        cut = lambda a, b, per_step=per_step: jax.tree_util.tree_map(lambda x: x[a:b], per_step)
        if lo > 0:  # steps before h_start: the state only

            def primal(h, inp, f=f, theta_of=theta_of):
                return f(theta_of(inp[0]), h, inp[1]), None

            h, _ = scan_or_call(primal, h, cut(0, lo), lo)
        if lo == length:
            continue
        if u is None:  # this segment holds h_start
            u, log_c = _renormalise_rows(rows, jnp.zeros(rows.shape[:1], rows.dtype))

        def body(carry, inp, f=f, theta_of=theta_of):
            h, un, c = carry
            g = lambda hh: f(theta_of(inp[0]), hh, inp[1])
            h_next, y = jax.vmap(lambda v: jax.jvp(g, (h,), (v,)), out_axes=(None, 0))(un)
            un, c = _renormalise_rows(y, c)
            return (h_next, un, c), c

        (h, u, log_c), step_logs = scan_or_call(body, (h, u, log_c), cut(lo, length), length - lo)
        logs.append(step_logs)
    return jnp.concatenate(logs)


def _summarise(log_norms, m_eff: int, exact: bool):
    """log mean (or sum) of ‖P u_i‖² over probes and its relative standard error.

    Args:
      log_norms: ``(P, m)`` log ‖P u_i‖ per pair and probe.
    """
    sq = 2.0 * log_norms
    if exact:  # columns of the identity: ‖P‖_F² = Σ_j ‖P e_j‖², no sampling error
        return jax.nn.logsumexp(sq, axis=1), jnp.zeros(sq.shape[:1], sq.dtype)
    log_mean = jax.nn.logsumexp(sq, axis=1) - math.log(m_eff)
    # Relative spread of exp(sq) computed at the scale of the largest probe (no overflow).
    top = jnp.max(sq, axis=1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    s = jnp.exp(sq - top)
    mean = jnp.mean(s, axis=1)
    if m_eff < 2:
        return log_mean, jnp.full(mean.shape, jnp.nan, mean.dtype)
    sd = jnp.std(s, axis=1, ddof=1)
    rel = sd / (jnp.where(mean > 0, mean, 1.0) * math.sqrt(m_eff))
    return log_mean, jnp.where(mean > 0, rel, jnp.nan)


@functools.partial(jax.jit, static_argnames=("start", "num_samples", "probes"))
def _forward_estimate(sc, key, *, start: int, num_samples: int, probes: str):
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(sc.h0))
    n = flat_sizes(sc)[start]
    rows = _draw(key, num_samples, n, dtype, probes)
    return _summarise(_push_forward(sc, start, rows), num_samples, exact=False)


@functools.partial(jax.jit, static_argnames=("start",))
def _forward_exact(sc, *, start: int):
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(sc.h0))
    n = flat_sizes(sc)[start]
    return _summarise(_push_forward(sc, start, jnp.eye(n, dtype=dtype)), n, exact=True)


def _result(log_values, rel, sizes, source, target) -> PartialJacobianNorms:
    widths = np.asarray(sizes)[np.asarray(target)]
    return PartialJacobianNorms(
        log_values=log_values - jnp.log(jnp.asarray(widths, log_values.dtype)),
        rel_std_err=rel,
        source=jnp.asarray(source),
        target=jnp.asarray(target),
        widths=jnp.asarray(widths),
    )


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def partial_jacobian_norms(
    chain, *, key, num_samples: int = 64, start: int = 0, probes: str = "normal"
) -> PartialJacobianNorms:
    """J^{l0,l} for l0 = ``start`` and every l = l0 + 1 … K, by forward-mode random probes.

    ``num_samples`` probes u_i (N(0, I) entries, or ±1 with ``probes="rademacher"``) of the size of
    h_{l0} are pushed forward with the state, one vmapped ``jax.jvp`` per step, each renormalised
    after every step with its log norm kept. Then J^{l0,l} ≈ mean_i ‖(∂h_l/∂h_{l0}) u_i‖² / N_l
    for every l at once.

    Cost: one forward pass carrying ``num_samples`` tangents from l0 on — about a forward pass on
    a batch of ``num_samples`` — and memory O(m · n) (no state is stored). Relative standard error
    √(2/(m r)) for Gaussian probes, r the effective rank of the partial Jacobian (module
    docstring); the estimate from the probes' spread is returned.

    Args:
      chain: a :class:`~gradflow.chain.Chain` or :class:`~gradflow.chain.Segmented` chain (states
        may change shape between segments: N_l is the size of h_l).
      key: ``jax.random`` key for the probes (same key, same numbers).
      num_samples: number of probes m >= 1 (the error estimate needs m >= 2).
      start: l0, 0 <= start < K (static: a new value compiles again).
      probes: ``"normal"`` or ``"rademacher"``.

    Returns:
      :class:`PartialJacobianNorms` with ``K − start`` entries, l = start + 1 … K.

    Raises:
      TypeError: for a non-chain, a non-key ``key`` or non-integer ``num_samples``/``start``.
      ValueError: for ``start`` outside [0, K), ``num_samples`` < 1, an unknown ``probes`` or a
        chain with non-finite values.

    References:
      Doshi, He & Gromov, "Critical initialization of wide and deep neural networks using partial
      Jacobians: general theory and applications", arXiv:2111.12143, §2 (Def. 2.2) and App. (the
      numerical test). Hutchinson, "A stochastic estimator of the trace of the influence matrix
      for Laplacian smoothing splines", 1990.
    """
    sc = check_chain(chain)
    if sc.length < 1:
        raise ValueError("chain must have at least one step")
    start = _check_layer("start", start, 0, sc.length - 1)
    num_samples = _checks.positive_int("num_samples", num_samples)
    probes = _check_probes(probes)
    key = _check_key(key)
    log_sq, rel = _forward_estimate(sc, key, start=start, num_samples=num_samples, probes=probes)
    targets = np.arange(start + 1, sc.length + 1)
    return _result(log_sq, rel, flat_sizes(sc), np.full_like(targets, start), targets)


def exact_partial_jacobian_norms(chain, *, start: int = 0) -> PartialJacobianNorms:
    """J^{l0,l} exactly, for l0 = ``start`` and every l > l0, by the dense Jacobians.

    The columns of the identity at h_{l0} are pushed forward (the dense ∂h_l/∂h_{l0} built by
    forward mode, one column per JVP, renormalised per column), so
    ‖∂h_l/∂h_{l0}‖_F² = Σ_j ‖∂h_l/∂h_{l0} e_j‖². Costs N_{l0} JVPs per step: a reference for
    small chains and the tests of :func:`partial_jacobian_norms`.

    Args:
      chain: a :class:`~gradflow.chain.Chain` or :class:`~gradflow.chain.Segmented` chain.
      start: l0, 0 <= start < K.

    Returns:
      :class:`PartialJacobianNorms` with ``K − start`` entries and ``rel_std_err`` = 0.
    """
    sc = check_chain(chain)
    if sc.length < 1:
        raise ValueError("chain must have at least one step")
    start = _check_layer("start", start, 0, sc.length - 1)
    log_sq, rel = _forward_exact(sc, start=start)
    targets = np.arange(start + 1, sc.length + 1)
    return _result(log_sq, rel, flat_sizes(sc), np.full_like(targets, start), targets)


@functools.partial(jax.jit, static_argnames=("stop", "num_samples", "probes"))
def _reverse_estimate(sc, key, *, stop: int, num_samples: int, probes: str):
    segments, _, _ = flat_segments(sc)
    # Keep the steps before h_stop: whole segments, and the head of the one that h_stop cuts.
    kept, offset = [], 0
    for seg in segments:
        if offset >= stop:
            break
        take = min(stop - offset, seg.length)
        cut = lambda t, take=take: jax.tree_util.tree_map(lambda a: a[:take], t)
        kept.append(
            seg._replace(
                inputs=seg.inputs[:take], thetas=cut(seg.thetas), xs=cut(seg.xs), length=take
            )
        )
        offset += take
    dtype = segments[0].inputs.dtype
    n = flat_sizes(sc)[stop]
    rows = _draw(key, num_samples, n, dtype, probes)
    # pullback renormalises the whole block of rows jointly; each row's own norm is recovered
    # from the unit block (rows of one block differ in norm by O(1) factors, no underflow).
    unit, log_c = _numerics.renormalise(rows, jnp.zeros((), dtype))
    pulled = pullback(kept, unit, log_c)
    # Per segment (widths differ between segments): log ‖v_iᵀ ∂h_stop/∂h_k‖, (L_i, m).
    row_logs = [
        jax.vmap(jax.vmap(_numerics.log_norm))(p.units) + p.log_scale[:, None] for p in pulled
    ]
    return _summarise(jnp.concatenate(row_logs), num_samples, exact=False)


def partial_jacobian_norms_to(
    chain, *, key, num_samples: int = 64, stop: int | None = None, probes: str = "normal"
) -> PartialJacobianNorms:
    """J^{l0,l} for l = ``stop`` and every l0 = 0 … l − 1, by reverse-mode random probes (VJPs).

    ``num_samples`` cotangents v_i at h_l are pulled back by one vmapped ``jax.vjp`` per step
    (:func:`gradflow.chain.passes.pullback`), giving E‖v_iᵀ ∂h_l/∂h_{l0}‖² = ‖∂h_l/∂h_{l0}‖_F²
    for every l0 in one reverse pass. Same variance as :func:`partial_jacobian_norms` (PPᵀ and
    PᵀP share their nonzero spectrum); use this one when the output layer is fixed (how a
    gradient arriving at layer l spreads back), that one when the input layer is.

    Args:
      chain: a :class:`~gradflow.chain.Chain` or :class:`~gradflow.chain.Segmented` chain.
      key: ``jax.random`` key for the probes.
      num_samples: number of probes m >= 1.
      stop: l, 1 <= stop <= K; default K.
      probes: ``"normal"`` or ``"rademacher"``.

    Returns:
      :class:`PartialJacobianNorms` with ``stop`` entries, l0 = 0 … stop − 1.

    Raises:
      TypeError, ValueError: as :func:`partial_jacobian_norms`, for ``stop`` outside [1, K].

    References:
      Doshi, He & Gromov, arXiv:2111.12143, §2 (Def. 2.2).
    """
    sc = check_chain(chain)
    if sc.length < 1:
        raise ValueError("chain must have at least one step")
    stop = sc.length if stop is None else stop
    stop = _check_layer("stop", stop, 1, sc.length)
    num_samples = _checks.positive_int("num_samples", num_samples)
    probes = _check_probes(probes)
    key = _check_key(key)
    log_sq, rel = _reverse_estimate(sc, key, stop=stop, num_samples=num_samples, probes=probes)
    sources = np.arange(stop)
    return _result(log_sq, rel, flat_sizes(sc), sources, np.full_like(sources, stop))
