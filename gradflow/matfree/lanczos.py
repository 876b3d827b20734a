"""Matrix-free spectra of Jacobian products: Golub–Kahan–Lanczos on ``jax.jvp`` / ``jax.vjp``.

The product P = J_{stop−1} ⋯ J_start of a chain's step Jacobians is never formed: P v is one
forward-mode pass (a jvp per step at the stored states) and Pᵀ u one reverse-mode pass (a vjp
per step), so a width-n chain costs O(n) memory per vector instead of O(n²) per matrix. Every
step's vector is renormalised and its scale kept as a logarithm (:mod:`gradflow._numerics`), so
the singular values are finite at any depth in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from gradflow import _checks, _numerics
from gradflow.chain import Chain, Segmented, check_chain, flat_step, trajectory
from gradflow.chain.passes import flat_segments, scan_or_call
from gradflow.matfree._common import flat_sizes

__all__ = ["TopSingular", "lanczos_svd", "top_singular_values", "spectral_norm"]


class TopSingular(NamedTuple):
    """The top-k singular triplets of a linear operator A, computed without forming A.

    Attributes:
      values: array ``(k,)``, σ_1 ≥ … ≥ σ_k (``exp(log_values)``; may under/overflow for very deep
        products: prefer ``log_values``).
      log_values: array ``(k,)``, log σ_i, finite at any depth (``-inf`` for σ_i = 0).
      right: array ``(n, k)``, unit right singular vectors v_i (A v_i ≈ σ_i u_i).
      left: array ``(m, k)``, unit left singular vectors u_i (Aᵀ u_i ≈ σ_i v_i).
      residuals: array ``(k,)``, ‖Aᵀ u_i − σ_i v_i‖ / σ_1 from the Lanczos recurrence. For the
        symmetric embedding [[0, A], [Aᵀ, 0]] this is an a-posteriori bound: some true singular
        value lies within ``residuals[i] · σ_1`` of σ_i (Parlett, *The Symmetric Eigenvalue
        Problem*, Thm 4.5.1), so it says how far to trust each value.
    """

    values: jax.Array
    log_values: jax.Array
    right: jax.Array
    left: jax.Array
    residuals: jax.Array


def _reorthogonalise(x, basis):
    # Classical Gram–Schmidt twice ("twice is enough", Giraud et al. 2005): without full
    # reorthogonalisation Lanczos vectors lose orthogonality and produce spurious copies of σ_1.
    # Unfilled rows of ``basis`` are zero and drop out.
    x = x - basis.T @ (basis @ x)
    return x - basis.T @ (basis @ x)


def _normalise_or_restart(x, basis, key, tol):
    """x/‖x‖, or a fresh random unit vector orthogonal to ``basis`` if ‖x‖ <= tol (breakdown).

    A breakdown means the Krylov space is invariant (e.g. a rank-deficient product through dead
    ReLUs); a zero coefficient decouples the bidiagonal matrix, so restarting is exact.
    """
    nrm = jnp.linalg.norm(x)
    ok = nrm > tol
    fresh = _reorthogonalise(jax.random.normal(key, x.shape, x.dtype), basis)
    fresh = fresh / jnp.linalg.norm(fresh)
    return jnp.where(ok, x / jnp.where(ok, nrm, 1.0), fresh), jnp.where(ok, nrm, 0.0)


def _golub_kahan(apply, apply_t, v1, m_out: int, num_iters: int, key):
    """``num_iters`` steps of Golub–Kahan bidiagonalisation with full reorthogonalisation.

    A V_j = U_j B_j and Aᵀ U_j = V_j B_jᵀ + β_j v_{j+1} e_jᵀ with B upper bidiagonal
    (Golub & Kahan 1965; Golub & Van Loan, *Matrix Computations*, 4th ed., §10.4). Memory is
    O((m + n) · num_iters): linear in the width.

    Returns:
      ``(alphas (j,), betas (j,), V (j + 1, n), U (j, m))`` with j = ``num_iters``.
    """
    n, dtype = v1.shape[0], v1.dtype
    eps = jnp.finfo(dtype).eps
    state = (
        jnp.zeros((num_iters + 1, n), dtype).at[0].set(v1),
        jnp.zeros((num_iters, m_out), dtype),
        jnp.zeros((num_iters,), dtype),
        jnp.zeros((num_iters,), dtype),
    )

    def body(j, state):
        vs, us, alphas, betas = state
        # Breakdown threshold relative to the largest coefficient seen so far (the scale of A).
        scale = jnp.maximum(jnp.max(alphas), jnp.max(betas))
        tol = eps * max(n, m_out) * scale
        beta_prev = jnp.where(j > 0, betas[j - 1], 0.0)
        u = apply(vs[j]) - beta_prev * us[jnp.maximum(j - 1, 0)]
        u, alpha = _normalise_or_restart(
            _reorthogonalise(u, us), us, jax.random.fold_in(key, 2 * j), tol
        )
        us, alphas = us.at[j].set(u), alphas.at[j].set(alpha)
        tol = eps * max(n, m_out) * jnp.maximum(scale, alpha)
        v = apply_t(u) - alpha * vs[j]
        v, beta = _normalise_or_restart(
            _reorthogonalise(v, vs), vs, jax.random.fold_in(key, 2 * j + 1), tol
        )
        return vs.at[j + 1].set(v), us, alphas, betas.at[j].set(beta)

    vs, us, alphas, betas = jax.lax.fori_loop(0, num_iters, body, state)
    return alphas, betas, vs, us


def _ritz(alphas, betas, vs, us, k: int, log_scale):
    """Top-k singular triplets of A from the bidiagonal B (its SVD is tiny: num_iters²)."""
    j = alphas.shape[0]
    b = jnp.diag(alphas) + jnp.diag(betas[:-1], 1)
    x, s, yt = jnp.linalg.svd(b)
    s, x, y = s[:k], x[:, :k], yt[:k].T
    right = vs[:j].T @ y
    left = us.T @ x
    # ‖Aᵀ(U x_i) − σ_i V y_i‖ = β_j |x_i[j]|: the only term the j-step recurrence leaves out.
    top = jnp.where(s[0] > 0, s[0], 1.0)
    residuals = betas[-1] * jnp.abs(x[-1]) / top
    log_values = jnp.log(s) + log_scale
    return TopSingular(jnp.exp(log_values), log_values, right, left, residuals)


def _check_k_iters(k, num_iters, m_out: int, n: int) -> tuple[int, int]:
    size = min(m_out, n)
    k = _checks.positive_int("k", k)
    if k > size:
        raise ValueError(f"k must be <= min(m, n) = {size} for this operator, got k = {k}")
    if num_iters is None:
        # Enough Krylov steps for the top k of a clustered spectrum (the edge of a random
        # product's bulk); ``residuals`` report whether it sufficed.
        num_iters = min(size, 2 * k + 40)
    num_iters = _checks.positive_int("num_iters", num_iters)
    if not k <= num_iters <= size:
        raise ValueError(f"num_iters must satisfy k = {k} <= num_iters <= {size}, got {num_iters}")
    return k, num_iters


def _start_vector(key, n: int, dtype):
    if key is None:
        # A fixed key keeps results deterministic (as lyapunov_spectrum); pass ``key`` to vary.
        key = jax.random.key(0)
    k_v, k_restart = jax.random.split(key)
    v1 = jax.random.normal(k_v, (n,), dtype)
    return v1 / jnp.linalg.norm(v1), k_restart


def lanczos_svd(
    matvec: Callable[[jax.Array], jax.Array],
    rmatvec: Callable[[jax.Array], jax.Array],
    n: int,
    k: int = 6,
    *,
    num_iters: int | None = None,
    key=None,
    dtype=None,
) -> TopSingular:
    """Top-k singular triplets of a linear operator given only A v and Aᵀ u.

    Golub–Kahan–Lanczos bidiagonalisation with full reorthogonalisation, ``num_iters`` steps
    (each one ``matvec`` and one ``rmatvec``), then the SVD of the small bidiagonal matrix.
    Memory is O((m + n) · num_iters), never m × n.

    Args:
      matvec: ``v (n,) -> A v (m,)``, linear and traceable by JAX.
      rmatvec: ``u (m,) -> Aᵀ u (n,)``.
      n: the input dimension.
      k: how many singular values, 1 <= k <= min(m, n).
      num_iters: Lanczos steps, k <= num_iters <= min(m, n); default ``min(m, n, 2k + 40)``.
      key: ``jax.random`` key for the start vector; None uses a fixed key.
      dtype: dtype of the vectors; default float32 (float64 under ``jax_enable_x64``).

    Returns:
      :class:`TopSingular`; check ``residuals`` for convergence.

    References:
      Golub & Kahan 1965, "Calculating the singular values and pseudo-inverse of a matrix",
      SIAM J. Numer. Anal. B 2:205; Larsen 1998, "Lanczos bidiagonalization with partial
      reorthogonalization" (PROPACK), DAIMI PB-537.
    """
    if not callable(matvec) or not callable(rmatvec):
        raise TypeError("matvec and rmatvec must be callables v -> A v and u -> Aᵀ u")
    n = _checks.positive_int("n", n)
    dtype = _checks.default_float() if dtype is None else jnp.dtype(dtype)
    m_out = int(np.prod(jax.eval_shape(matvec, jax.ShapeDtypeStruct((n,), dtype)).shape))
    k, num_iters = _check_k_iters(k, num_iters, m_out, n)
    return _lanczos(matvec, rmatvec, n, m_out, dtype, key, num_iters, k)


def _lanczos(apply, apply_t, n, m_out, dtype, key, num_iters, k, log_scale=None) -> TopSingular:
    """Golub–Kahan bidiagonalisation and its Ritz triplets; ``log_scale`` is added to log σ.

    Golub–Kahan's square B_j drops β_j; for a wide operator (m < n) that term carries part of the
    spectrum even when U spans all of R^m. A wide operator is therefore bidiagonalised through its
    tall transpose, with left and right singular vectors swapped back.
    """
    if m_out < n:
        out = _lanczos(apply_t, apply, m_out, n, dtype, key, num_iters, k, log_scale)
        return out._replace(right=out.left, left=out.right)
    v1, key = _start_vector(key, n, dtype)
    out = _golub_kahan(apply, apply_t, v1, m_out, num_iters, key)
    return _ritz(*out, k, jnp.zeros((), dtype) if log_scale is None else log_scale)


def _chain_operator(chain: Chain, start, stop):
    """(push, pull, n, dtype) for P = ∂h_stop/∂h_start in log-scale form.

    ``push(v)`` returns ``(w, log_c)`` with P v = exp(log_c) · w and ‖w‖ = 1 (or w = 0): the
    vector is renormalised after every step, so a product that under- or overflows float32 still
    yields its direction and log scale. ``pull`` does the same for Pᵀ u in a reverse scan.
    ``start``/``stop`` may be traced integers: steps outside [start, stop) are skipped by
    ``lax.cond``, so one compiled program serves every sub-product (and ``vmap`` over start).
    """
    _, f = flat_step(chain)
    hs = trajectory(chain)
    # Linearisation points h_0 … h_{K−1}, flattened.
    states = jax.vmap(lambda h: ravel_pytree(h)[0])(jax.tree_util.tree_map(lambda a: a[:-1], hs))
    steps = jnp.arange(chain.length)
    xs = (states, chain.per_step(), steps)

    def scan(apply_step, vec, reverse):
        def body(carry, inp):
            h, s, j = inp
            inside = (j >= start) & (j < stop)
            carry = jax.lax.cond(
                inside,
                lambda c: _numerics.renormalise(apply_step(h, s, c[0]), c[1]),
                lambda c: c,
                carry,
            )
            return carry, None

        (w, log_c), _ = jax.lax.scan(body, (vec, jnp.zeros((), vec.dtype)), xs, reverse=reverse)
        return w, log_c

    # Only the tangent is used: XLA drops the primal step as dead code.
    jvp = lambda h, s, v: jax.jvp(lambda x: f(x, s), (h,), (v,))[1]
    vjp = lambda h, s, u: jax.vjp(lambda x: f(x, s), h)[1](u)[0]
    push = lambda v: scan(jvp, v, reverse=False)
    pull = lambda u: scan(vjp, u, reverse=True)
    return push, pull, states.shape[-1], states.dtype


def _check_range(chain: Chain, start, stop) -> tuple[int, int]:
    stop = chain.length if stop is None else stop
    start, stop = _checks.integer("start", start), _checks.integer("stop", stop)
    if not 0 <= start < stop <= chain.length:
        raise ValueError(
            f"start and stop must satisfy 0 <= start < stop <= chain.length = {chain.length}, "
            f"got start = {start}, stop = {stop}"
        )
    return start, stop


def top_singular_values(
    chain_or_matrix,
    k: int = 6,
    *,
    start: int = 0,
    stop: int | None = None,
    num_iters: int | None = None,
    key=None,
) -> TopSingular:
    """Top-k singular values of a Jacobian product P = ∂h_stop/∂h_start, matrix-free.

    P = J_{stop−1} ⋯ J_start is applied as one ``jax.jvp`` per step (P v) and one ``jax.vjp``
    per step (Pᵀ u) at the chain's stored states; :func:`lanczos_svd` does the rest. Memory is
    O(n · (K + num_iters)) for state size n and K steps — linear in the width, where the dense
    route (:func:`gradflow.jacobians.backward_products` then
    :func:`gradflow.spectra.singular_values`) needs O(K n²) memory and O(K n³) time. Every step's
    vector is renormalised and the scale kept in log space, so ``log_values`` are finite at any
    depth.

    Args:
      chain_or_matrix: a :class:`~gradflow.chain.Chain`, or a dense matrix ``(m, n)`` (then
        ``start``/``stop`` are ignored and A v is a matmul — useful as a reference).
      k: how many singular values.
      start: first step of the product (0 <= start < stop).
      stop: one past its last step; default ``chain.length`` (so P = ∂h_K/∂h_start).
      num_iters: Lanczos steps; default ``min(n, 2k + 40)``. Raise it if ``residuals`` are large
        (clustered top singular values converge slowly).
      key: ``jax.random`` key for the start vector; None uses a fixed key.

    Returns:
      :class:`TopSingular` with ``values``/``log_values`` ``(k,)``, ``right``/``left`` ``(n, k)``
      and ``residuals`` ``(k,)``.

    Raises:
      TypeError: if the input is neither a Chain nor a 2-D array, or ``start``/``stop``/``k`` are
        not integers.
      ValueError: for ``k``/``num_iters``/``start``/``stop`` out of range or non-finite inputs.
    """
    key = jax.random.key(0) if key is None else key
    if isinstance(chain_or_matrix, Chain):
        chain = chain_or_matrix
        # Also checks h0 and every step's output are floating point (state_shapes).
        check_chain(chain)
        start, stop = _check_range(chain, start, stop)
        k, num_iters = _check_k_iters(k, num_iters, chain.state_size, chain.state_size)
        return _first(_top_chain(chain, key, start, stop, num_iters=num_iters), k)
    if isinstance(chain_or_matrix, Segmented):
        sc = check_chain(chain_or_matrix)
        start, stop = _check_range(sc, start, stop)
        sizes = flat_sizes(sc)
        n_in, m_out = sizes[start], sizes[stop]
        k, num_iters = _check_k_iters(k, num_iters, m_out, n_in)
        return _first(_top_segmented(sc, key, start, stop, num_iters=num_iters), k)
    if callable(chain_or_matrix) and not hasattr(chain_or_matrix, "shape"):
        raise TypeError(
            "chain_or_matrix must be a Chain or a matrix (m, n), got "
            f"{type(chain_or_matrix).__name__}; for a general operator use lanczos_svd"
        )
    a = _checks.as_matrices("chain_or_matrix", chain_or_matrix)
    if a.ndim != 2:
        raise ValueError(f"chain_or_matrix must be a Chain or a 2-D matrix, got shape {a.shape}")
    _checks.check_finite("chain_or_matrix", a)
    m_out, n = a.shape
    k, num_iters = _check_k_iters(k, num_iters, m_out, n)
    return _first(_top_dense(a, key, num_iters=num_iters), k)


def _first(out: TopSingular, k: int) -> TopSingular:
    # The compiled programs return all num_iters Ritz triplets, so k does not recompile them.
    return TopSingular(*(x[..., :k] for x in out))


@functools.partial(jax.jit, static_argnames=("num_iters",))
def _top_chain(chain: Chain, key, start, stop, *, num_iters: int):
    # Compiled as one program: eager callers pay one compilation, not one per operation.
    push, pull, n, dtype = _chain_operator(chain, start, stop)
    return _lanczos_log_scaled(push, pull, n, n, dtype, key, num_iters)


def _segmented_operator(sc: Segmented, start: int, stop: int):
    """(push, pull, n_in, m_out, dtype) for P = ∂h_stop/∂h_start of a Segmented chain.

    As :func:`_chain_operator`, with static ``start``/``stop``: only the steps in [start, stop) are
    traced, and the vector changes size where a Layer changes the state's shape.
    """
    segs = flat_segments(sc)[0]
    pieces, offset = [], 0
    for seg in segs:
        lo, hi = max(start - offset, 0), min(stop - offset, seg.length)
        if lo < hi:
            cut = lambda t, lo=lo, hi=hi: jax.tree_util.tree_map(lambda a: a[lo:hi], t)
            pieces.append((seg, (seg.inputs[lo:hi], cut(seg.thetas), cut(seg.xs)), hi - lo))
        offset += seg.length

    def run(vec, reverse: bool):
        carry = (vec, jnp.zeros((), vec.dtype))
        for seg, xs, length in pieces[::-1] if reverse else pieces:

            def body(c, inp, seg=seg):
                h, t, x = inp
                f = lambda hh: seg.f(seg.theta(t), hh, x)
                if reverse:
                    y = jax.vjp(f, h)[1](c[0])[0]
                else:
                    y = jax.jvp(f, (h,), (c[0],))[1]
                return _numerics.renormalise(y, c[1]), None

            carry, _ = scan_or_call(body, carry, xs, length, reverse=reverse)
        return carry

    n_in = pieces[0][1][0].shape[-1]
    dtype = pieces[0][1][0].dtype
    m_out = jax.eval_shape(lambda: run(jnp.zeros((n_in,), dtype), False)[0]).shape[0]
    return (lambda v: run(v, False)), (lambda u: run(u, True)), n_in, m_out, dtype


@functools.partial(jax.jit, static_argnames=("start", "stop", "num_iters"))
def _top_segmented(sc: Segmented, key, start: int, stop: int, *, num_iters: int):
    push, pull, n, m_out, dtype = _segmented_operator(sc, start, stop)
    return _lanczos_log_scaled(push, pull, n, m_out, dtype, key, num_iters)


def _lanczos_log_scaled(push, pull, n, m_out, dtype, key, num_iters):
    # One application to the start vector (of whichever side _lanczos bidiagonalises) fixes the
    # overall scale c = log‖P v_1‖; Lanczos then runs on exp(−c) P, whose top singular values
    # are O(1) whatever the depth, and c is added back to log σ.
    first, n_first = (push, n) if m_out >= n else (pull, m_out)
    log_scale = first(_start_vector(key, n_first, dtype)[0])[1]
    log_scale = jnp.where(jnp.isfinite(log_scale), log_scale, 0.0)
    apply = lambda v: (lambda w, c: w * jnp.exp(c - log_scale))(*push(v))
    apply_t = lambda u: (lambda w, c: w * jnp.exp(c - log_scale))(*pull(u))
    return _lanczos(apply, apply_t, n, m_out, dtype, key, num_iters, num_iters, log_scale)


@functools.partial(jax.jit, static_argnames=("num_iters",))
def _top_dense(a, key, *, num_iters: int):
    m_out, n = a.shape
    matvec, rmatvec = (lambda v: a @ v), (lambda u: a.T @ u)
    return _lanczos(matvec, rmatvec, n, m_out, a.dtype, key, num_iters, num_iters)


def spectral_norm(
    chain_or_matrix,
    *,
    start: int = 0,
    stop: int | None = None,
    num_iters: int | None = None,
    key=None,
) -> jax.Array:
    """‖P‖₂ = σ_1 of a Jacobian product (or matrix), matrix-free; see :func:`top_singular_values`.

    For a product that may under/overflow use ``top_singular_values(..., k=1).log_values[0]``.

    Returns:
      Array ``()``.
    """
    out = top_singular_values(
        chain_or_matrix, 1, start=start, stop=stop, num_iters=num_iters, key=key
    )
    return out.values[0]
