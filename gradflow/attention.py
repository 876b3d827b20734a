"""Rank collapse of token matrices: residual from rank one, token cosine, uniform-attention theory.

Pure self-attention mixes tokens by row-stochastic matrices, so without skips and MLPs the token
matrix X ``(T, d)`` converges to a rank-one matrix 1xᵀ (every token equal), doubly exponentially
in depth (Dong, Cordonnier & Loukas 2021). Everything here acts on a token matrix ``(…, T, d)``:
leading axes (layers, batch, seeds) are carried along, so a trajectory of states ``(K + 1, T, d)``
gives one number per state and the functions ``vmap`` freely. :func:`chain_token_stats` runs them
over every state of a chain.

**Which x in res(X) = X − 1xᵀ.** Dong et al. define x = argmin_x ‖X − 1xᵀ‖; for their composite
norm ‖·‖₁,∞ that minimiser has no closed form (a linear program per matrix). We take x = x̄, the
token mean (X's column means): it is the Frobenius-norm minimiser, it is what the authors' own
code uses for their figures (``paper-plotting/walking_casual_transformers.ipynb`` in
twistedcubic/attention-rank-collapse: ``hidden_states - hidden_states.mean(dim=-2)``), and it is
within a factor 2(1 − 1/T) of the composite-norm minimum: X − 1x̄ᵀ = C(X − 1x*ᵀ) for any x*,
with C = I − 11ᵀ/T, and C's induced ℓ₁ and ℓ∞ norms are both 2(1 − 1/T), so
‖X − 1x̄ᵀ‖₁,∞ ≤ 2(1 − 1/T)·min_x ‖X − 1xᵀ‖₁,∞.

References:
  Dong, Cordonnier & Loukas 2021, "Attention is not all you need: pure attention loses rank
    doubly exponentially with depth", arXiv:2103.03404, §2 (res, the composite norm) and §3.
  Noci, Anagnostidis, Biggio, Orvieto, Singh & Lucchi 2022, "Signal Propagation in Transformers:
    Theoretical Perspectives and the Role of Rank Collapse", arXiv:2206.03126 (token cosine,
    residual scaling 1/√L).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow import _checks
from gradflow.chain import as_segmented, trajectory

__all__ = [
    "RankCollapse",
    "TokenStats",
    "composite_norm",
    "rank_one_residual",
    "rank_collapse",
    "token_cosine",
    "uniform_attention_growth",
    "chain_token_stats",
    "NORMS",
]

NORMS = ("composite", "fro")


def _tokens(x, name: str = "x"):
    """``x`` as a floating array of shape ``(…, T, d)``; ValueError naming ``name`` otherwise."""
    try:
        x = jnp.asarray(x)
    except TypeError as exc:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}") from exc
    if x.ndim < 2:
        raise ValueError(f"{name} must be a token matrix (…, T, d) with >= 2 axes, got {x.shape}")
    _checks.check_finite(name, x)
    return _checks.floating(x)


def _check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def composite_norm(x) -> jax.Array:
    """‖X‖₁,∞ = √(‖X‖₁ ‖X‖∞) (Dong et al. 2021, §2) of every token matrix in ``x``.

    ‖X‖₁ is the induced ℓ₁ norm (largest column absolute sum) and ‖X‖∞ the induced ℓ∞ norm
    (largest row absolute sum, i.e. the largest token ℓ₁ norm).

    Args:
      x: array ``(…, T, d)``.

    Returns:
      Array ``(…)``.
    """
    a = jnp.abs(_tokens(x))
    norm1 = jnp.max(jnp.sum(a, axis=-2), axis=-1)
    norm_inf = jnp.max(jnp.sum(a, axis=-1), axis=-1)
    return jnp.sqrt(norm1 * norm_inf)


def rank_one_residual(x) -> jax.Array:
    """res(X) = X − 1x̄ᵀ, with x̄ the token mean (see the module docstring for the choice).

    Args:
      x: array ``(…, T, d)``.

    Returns:
      Array ``(…, T, d)``; zero exactly when every token is equal.
    """
    x = _tokens(x)
    return x - jnp.mean(x, axis=-2, keepdims=True)


class RankCollapse(NamedTuple):
    """How far token matrices are from rank one (every token equal).

    Attributes:
      residual: ‖res(X)‖, ``(…)``.
      norm: ‖X‖, ``(…)``.
      relative: ‖res(X)‖ / ‖X‖ in [0, 1] for ``norm="fro"`` (0 for X = 0), ``(…)``.
    """

    residual: jax.Array
    norm: jax.Array
    relative: jax.Array


def _norm_fn(norm: str):
    if norm == "composite":
        return composite_norm
    return lambda a: jnp.sqrt(jnp.sum(jnp.square(a), axis=(-2, -1)))


def rank_collapse(x, *, norm: str = "composite") -> RankCollapse:
    """The residual ‖res(X)‖, ‖X‖ and their ratio for every token matrix in ``x``.

    Args:
      x: array ``(…, T, d)``, e.g. a trajectory of states ``(K + 1, T, d)``.
      norm: "composite" (‖·‖₁,∞, Dong et al.) or "fro" (Frobenius).

    Returns:
      :class:`RankCollapse` with arrays of shape ``(…)``.

    Raises:
      ValueError: for an unknown ``norm`` or an ``x`` with fewer than two axes.
    """
    _check_norm(norm)
    x = _tokens(x)
    f = _norm_fn(norm)
    res, tot = f(rank_one_residual(x)), f(x)
    rel = jnp.where(tot > 0, res / jnp.where(tot > 0, tot, 1.0), 0.0)
    return RankCollapse(res, tot, rel)


def token_cosine(x) -> jax.Array:
    """Mean cosine similarity over all pairs of distinct tokens, for every matrix in ``x``.

    (1/(T(T−1))) Σ_{i≠j} ⟨x_i, x_j⟩/(‖x_i‖‖x_j‖) = (‖Σ_i u_i‖² − Σ_i ‖u_i‖²)/(T(T−1)) with
    u_i = x_i/‖x_i‖: O(T·d), no T×T Gram matrix. A zero token has u_i = 0 (cosine 0 with all).

    Args:
      x: array ``(…, T, d)`` with T >= 2.

    Returns:
      Array ``(…)`` in [−1/(T−1), 1]; 1 when all tokens point the same way.

    Raises:
      ValueError: if ``x`` has fewer than two axes or fewer than two tokens.
    """
    x = _tokens(x)
    t = x.shape[-2]
    if t < 2:
        raise ValueError(f"x must have at least 2 tokens (axis -2) for pairwise cosines, got {t}")
    n = jnp.linalg.norm(x, axis=-1, keepdims=True)
    u = x / jnp.where(n > 0, n, 1.0)
    s = jnp.sum(u, axis=-2)
    pairs = jnp.sum(jnp.square(s), axis=-1) - jnp.sum(jnp.square(u), axis=(-2, -1))
    return pairs / (t * (t - 1))


def uniform_attention_growth(alpha, sigma_v2, layers: int) -> np.ndarray:
    """E‖x̄_l‖²/‖x̄_0‖² = (1 + α²σ_v²)^l for l = 0 … layers, under uniform attention.

    With W_Q = W_K = 0 the attention matrix is A = 11ᵀ/T, so AX = 1x̄ᵀ and the layer
    X ← X + α A X W_V adds the same row to every token: the centred part X − 1x̄ᵀ is unchanged and
    the mean follows x̄ ← (I + αW_Vᵀ) x̄. For W_V with i.i.d. N(0, σ_v²/d) entries, fresh per layer,
    E‖(I + αW_Vᵀ)u‖² = (1 + α²σ_v²)‖u‖² for any fixed u, hence the power. With α = 1 the mean
    outgrows the fixed centred part (tokens collapse onto their mean); with α = 1/√L the growth
    after L layers is (1 + σ_v²/L)^L < e^{σ_v²}.

    Args:
      alpha: residual scale α (scalar).
      sigma_v2: σ_v², the variance of W_V's entries times d (scalar, >= 0).
      layers: the number of layers L >= 0.

    Returns:
      NumPy array ``(layers + 1,)`` (float64).
    """
    layers = _checks.nonnegative_int("layers", layers)
    alpha, sigma_v2 = float(alpha), float(sigma_v2)
    if not np.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {alpha}")
    if not (np.isfinite(sigma_v2) and sigma_v2 >= 0):
        raise ValueError(f"sigma_v2 must be finite and >= 0, got {sigma_v2}")
    return (1.0 + alpha**2 * sigma_v2) ** np.arange(layers + 1, dtype=np.float64)


class TokenStats(NamedTuple):
    """Rank-collapse statistics of every state h_0 … h_K of a chain.

    Attributes:
      relative_residual: ‖res(h_k)‖/‖h_k‖, ``(K + 1, …)``.
      residual: ‖res(h_k)‖, ``(K + 1, …)``.
      norm: ‖h_k‖, ``(K + 1, …)``.
      token_cosine: mean pairwise token cosine of h_k, ``(K + 1, …)``.
    """

    relative_residual: jax.Array
    residual: jax.Array
    norm: jax.Array
    token_cosine: jax.Array


def chain_token_stats(chain, *, norm: str = "composite") -> TokenStats:
    """:func:`rank_collapse` and :func:`token_cosine` of every state of a chain.

    Args:
      chain: a :class:`~gradflow.chain.Chain` (or a Segmented chain with states of one shape)
        whose state is a token matrix ``(T, d)`` or a batch ``(B, T, d)``, e.g.
        ``Transformer.chain(params, x)``.
      norm: "composite" or "fro", see :func:`rank_collapse`.

    Returns:
      :class:`TokenStats` with arrays ``(K + 1,)`` (or ``(K + 1, B)``).

    Raises:
      TypeError: if ``chain`` is not a chain or its state is not an array.
      ValueError: for an unknown ``norm`` or states that are not token matrices.
    """
    _check_norm(norm)
    h0 = as_segmented(chain).h0
    if not hasattr(h0, "shape"):
        raise TypeError(f"chain state must be one array, got {type(h0).__name__}")
    hs = trajectory(chain)
    if hs.ndim < 3:
        raise ValueError(f"chain state must be a token matrix (…, T, d), got {hs.shape[1:]}")
    rc = rank_collapse(hs, norm=norm)
    return TokenStats(rc.relative, rc.residual, rc.norm, token_cosine(hs))
