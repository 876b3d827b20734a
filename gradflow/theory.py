"""Closed forms to overlay on measurements: Pascanu's bounds, Newman's exponents, free spectra."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma
from numpy.polynomial.hermite_e import hermegauss

from gradflow import _checks
from gradflow import activations as _act

__all__ = [
    "newman_lyapunov_exponents",
    "pascanu_bound",
    "pascanu_log_bound",
    "pascanu_vanishing_sufficient",
    "pascanu_exploding_necessary",
    "fuss_catalan_moments",
    "fuss_catalan_edge",
    "fuss_catalan_density",
    "JacobianSpectrum",
    "jacobian_spectrum",
    "jacobian_spectrum_moments",
    "linear_jacobian_spectrum",
    "relu_jacobian_spectrum",
    "hard_tanh_jacobian_spectrum",
    "hard_tanh_critical",
    "bernoulli_d2",
    "gaussian_d2",
    "WEIGHTS",
]


def newman_lyapunov_exponents(n: int, sigma2: float = 1.0):
    """Exact Lyapunov spectrum of products of i.i.d. n×n Gaussian matrices, entries N(0, σ²/n).

    λ_i = ½ [log(2σ²/n) + ψ((n − i + 1)/2)], i = 1 … n (descending), with ψ the digamma function —
    Newman 1986, "The distribution of Lyapunov exponents: exact results for random matrices",
    Commun. Math. Phys. 103:121–126, eq. (4) (there for σ² = 1; σ² only shifts every exponent by
    ½ log σ²).

    Args:
      n: matrix size >= 1.
      sigma2: entry variance times n.

    Returns:
      Array ``(n,)``, descending.
    """
    n = _checks.positive_int("n", n)
    sigma2 = _checks.as_float("sigma2", sigma2, minimum=0.0, strict=True)
    i = jnp.arange(1, n + 1, dtype=_checks.default_float())
    return 0.5 * (jnp.log(2.0 * sigma2 / n) + digamma((n - i + 1) / 2.0))


# --------------------------------------------------------------------------------------------
# Pascanu, Mikolov & Bengio (2013): the bound (γ λ₁)^(t−k) and its two conditions
# --------------------------------------------------------------------------------------------


def _gamma(activation_or_gamma) -> float:
    """γ = sup|φ'| from an activation (name/callable) or given directly as a number."""
    if isinstance(activation_or_gamma, (int, float, np.integer, np.floating)) and not isinstance(
        activation_or_gamma, bool
    ):
        gamma = float(activation_or_gamma)
    else:
        gamma = float(_act.get(activation_or_gamma).gamma)
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    return gamma


def _nonneg(name: str, x):
    arr = np.asarray(x, dtype=float)
    if np.any(~(arr >= 0)):
        raise ValueError(f"{name} must be >= 0 (and not NaN), got {x!r}")
    return arr


def pascanu_bound(lambda1, activation, steps):
    """Pascanu's bound on the backpropagated Jacobian of a vanilla RNN, (γ λ₁)^(t−k).

    For x_t = W σ(x_{t−1}) + U u_t + b, ‖∂x_t/∂x_k‖ <= ∏ ‖Wᵀ‖ ‖diag σ'(x_{j−1})‖ <= (γ λ₁)^(t−k),
    with λ₁ the largest singular value of W and γ = sup|σ'| (1 for tanh, 1/4 for sigmoid) —
    Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent neural networks",
    arXiv:1211.5063, §3.1 (the bound ‖∂x_{k+1}/∂x_k‖ <= ‖Wᵀ‖ ‖diag σ'‖ < 1/γ · γ = η < 1 and its
    power η^(t−k)).

    Args:
      lambda1: λ₁ >= 0, array.
      activation: a registry name, callable, or γ itself as a number.
      steps: t − k >= 0, array broadcastable with ``lambda1``.

    Returns:
      NumPy array of the broadcast shape (may under/overflow: see :func:`pascanu_log_bound`).
    """
    return np.exp(pascanu_log_bound(lambda1, activation, steps))


def pascanu_log_bound(lambda1, activation, steps):
    """log of :func:`pascanu_bound`: (t − k) · log(γ λ₁), finite for any depth (−inf at λ₁ = 0)."""
    gamma = _gamma(activation)
    lam = _nonneg("lambda1", lambda1)
    steps = _nonneg("steps", steps)
    with np.errstate(divide="ignore"):
        log_eta = np.log(gamma * lam)
    return np.where(steps == 0, 0.0, steps * log_eta)


def pascanu_vanishing_sufficient(lambda1, activation):
    """λ₁ < 1/γ: *sufficient* for the long-term gradient components to vanish (Pascanu 2013 §3.1).

    Returns:
      Boolean NumPy array of ``lambda1``'s shape.
    """
    return _nonneg("lambda1", lambda1) < 1.0 / _gamma(activation)


def pascanu_exploding_necessary(lambda1, activation):
    """λ₁ > 1/γ: *necessary* for gradients to explode (Pascanu 2013 §3.1); not sufficient.

    Returns:
      Boolean NumPy array of ``lambda1``'s shape.
    """
    return _nonneg("lambda1", lambda1) > 1.0 / _gamma(activation)


# --------------------------------------------------------------------------------------------
# Products of Ginibre matrices: Fuss–Catalan
# --------------------------------------------------------------------------------------------


def _depth(depth) -> int:
    return _checks.positive_int("depth", depth)


def fuss_catalan_moments(depth: int, k_max: int) -> np.ndarray:
    """Moments of the squared singular values of a product of ``depth`` Ginibre matrices.

    For X = G_L ⋯ G_1 with i.i.d. N(0, 1/N) entries and N → ∞, the eigenvalues of X Xᵀ have
    moments given by the Fuss–Catalan numbers m_k = C((L+1)k, k) / (Lk + 1) — Penson & Życzkowski
    2011, "Product of Ginibre matrices: Fuss–Catalan and Raney distributions", Phys. Rev. E 83,
    061118, eq. (2). For L = 1 these are the Catalan numbers (Marchenko–Pastur, ratio 1); for L = 2,
    1, 1, 3, 12, 55, 273 (OEIS A001764).

    Args:
      depth: L >= 1.
      k_max: highest moment >= 0.

    Returns:
      Float array ``(k_max + 1,)`` with m_0 = 1, m_1 = 1, m_2 = L + 1, ….
    """
    L = _depth(depth)
    k_max = _checks.positive_int("k_max", k_max, minimum=0)
    return np.array([math.comb((L + 1) * k, k) / (L * k + 1) for k in range(k_max + 1)], float)


def fuss_catalan_edge(depth: int) -> float:
    """Upper edge of the Fuss–Catalan support, (L+1)^(L+1) / L^L (≈ e (L + 1) for large L)."""
    L = _depth(depth)
    return float(math.exp((L + 1) * math.log(L + 1) - L * math.log(L)))


def fuss_catalan_density(x, depth: int) -> np.ndarray:
    """Density of the Fuss–Catalan distribution with parameter L = ``depth``.

    The parametric closed form of Haagerup & Möller (2012, "The law of large numbers for the free
    multiplicative convolution") and Neuschel (2014, "Plancherel–Rotach formulae for average
    characteristic polynomials of products of Ginibre random matrices and the Fuss–Catalan
    distribution"); tests check it against :func:`fuss_catalan_moments`. For φ ∈ (0, π/(L+1)),

        x(φ) = sin((L+1)φ)^(L+1) / (sin φ · sin(Lφ)^L),
        ρ(x(φ)) = sin(φ)² sin(Lφ)^(L−1) / (π sin((L+1)φ)^L);

    x(φ) decreases from the upper edge (:func:`fuss_catalan_edge`) to 0, and is inverted here by 80
    bisection steps. L = 1 gives the Marchenko–Pastur law √(4 − x)/(2π√x).

    Args:
      x: points, any shape; the density is 0 outside (0, edge).
      depth: L >= 1.

    Returns:
      NumPy float64 array of ``x``'s shape.
    """
    L = _depth(depth)
    _checks.check_finite("x", np.asarray(x, dtype=float))  # computed in NumPy float64 below
    x = np.asarray(x, dtype=float)
    lo = np.zeros_like(x)
    hi = np.full_like(x, math.pi / (L + 1))

    def x_of(phi):
        return np.sin((L + 1) * phi) ** (L + 1) / (np.sin(phi) * np.sin(L * phi) ** L)

    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(80):  # x(φ) is decreasing: keep x(lo) >= x > x(hi)
            mid = 0.5 * (lo + hi)
            bigger = x_of(mid) >= x
            lo = np.where(bigger, mid, lo)
            hi = np.where(bigger, hi, mid)
        phi = 0.5 * (lo + hi)
        rho = np.sin(phi) ** 2 * np.sin(L * phi) ** (L - 1) / (math.pi * np.sin((L + 1) * phi) ** L)
    inside = (x > 0) & (x < fuss_catalan_edge(L))
    return np.where(inside & np.isfinite(rho), rho, 0.0)


# --------------------------------------------------------------------------------------------
# Free probability: the spectrum of J Jᵀ for J = D_L W_L ⋯ D_1 W_1
# --------------------------------------------------------------------------------------------

WEIGHTS = ("gaussian", "orthogonal")


class JacobianSpectrum(NamedTuple):
    """Squared singular values λ of an input–output Jacobian, as predicted by free probability.

    Attributes:
      eigenvalues: λ, array ``(K,)``, as passed in.
      density: the continuous part of the density of λ at ``eigenvalues``, array ``(K,)``.
      atom_at_zero: mass of the point mass at λ = 0 (the fraction of units with φ' = 0, e.g. ½ for
        ReLU); the continuous part integrates to 1 − atom_at_zero.
      mean: E λ = (σ_w² μ₁)^L.
      variance: Var λ = mean² · L (μ₂/μ₁² − 1 + [1 for Gaussian weights]).
    """

    eigenvalues: np.ndarray
    density: np.ndarray
    atom_at_zero: float
    mean: float
    variance: float


def jacobian_spectrum_moments(depth, *, d2_mean, d2_second_moment, sigma_w2, weights="gaussian"):
    """Mean and variance of the squared singular values of J = D_L W_L ⋯ D_1 W_1.

    The S-transform is multiplicative over free factors, S_{JJᵀ} = (S_{D²} S_{WWᵀ})^L
    (Pennington, Schoenholz & Ganguli 2017, "Resurrecting the sigmoid in deep learning through
    dynamical isometry", arXiv:1711.04735, §2.3 and §3). Writing S_X(z) = (1 + s₁ z + …)/m₁,
    s₁ = −Var X / m₁², so the first two orders give

        E λ = (σ_w² μ₁)^L,      Var λ / (E λ)² = L (μ₂/μ₁² − 1 − s₁^W),

    with μ_k = E[D^(2k)] and s₁^W = −1 for Gaussian weights (Marchenko–Pastur), 0 for orthogonal
    ones. At criticality (σ_w² μ₁ = 1) only orthogonal weights and μ₂ → μ₁² keep the variance
    small: dynamical isometry.

    Args:
      depth: L >= 1.
      d2_mean: μ₁ = E φ'(h)² over the pre-activation distribution.
      d2_second_moment: μ₂ = E φ'(h)⁴.
      sigma_w2: σ_w².
      weights: "gaussian" or "orthogonal".

    Returns:
      ``(mean, variance)`` as floats.
    """
    L = _depth(depth)
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    mu1, mu2, sw2 = float(d2_mean), float(d2_second_moment), float(sigma_w2)
    if not (mu1 > 0 and mu2 >= mu1 * mu1 * (1 - 1e-12) and sw2 > 0):
        raise ValueError(
            f"need d2_mean > 0, d2_second_moment >= d2_mean², sigma_w2 > 0; got {mu1}, {mu2}, {sw2}"
        )
    mean = (sw2 * mu1) ** L
    rel = L * (mu2 / mu1**2 - 1.0 + (1.0 if weights == "gaussian" else 0.0))
    return mean, mean * mean * rel


def jacobian_spectrum(
    eigenvalues,
    depth: int,
    *,
    d2_values,
    d2_weights,
    sigma_w2: float,
    weights: str = "gaussian",
    eta: float = 1e-3,
    steps_per_decade: int = 400,
) -> JacobianSpectrum:
    """Free-probability density of the squared singular values of a deep network's Jacobian.

    J = D_L W_L ⋯ D_1 W_1 with D = diag φ'(h) at the fixed point and W either Gaussian (entries
    N(0, σ_w²/N)) or σ_w × Haar-orthogonal, N → ∞. With M_X(z) = E[X/(z − X)] and
    S_X(m) = (1 + m)/(m M_X⁻¹(m)), free multiplicativity (Pennington et al. 2017, §2.3, §3.1) gives

        S_{JJᵀ}(m) = [S_{D²}(m) S_{WWᵀ}(m)]^L,
        S_{WWᵀ}(m) = 1/(σ_w²(1 + m)) (Gaussian)  or  1/σ_w² (orthogonal),
        S_{D²}(m) = (1 + m)/(m w),  with w solving M_{D²}(w) = Σ_i p_i d_i/(w − d_i) = m,

    for D² given as atoms d_i with weights p_i (two atoms {0, 1} for ReLU and hard-tanh, whose
    S_{D²}(m) = (1 + m)/(p + m)). The density follows from M_{JJᵀ}(z) = m solving
    z m S_{JJᵀ}(m) = 1 + m and G(z) = (1 + m)/z, ρ(λ) = −Im G(λ + i0)/π. The pair (m, w) is found
    by 2×2 complex Newton iterations continued from z = ∞ (m ≈ E λ / z) down the line
    z = λ(1 + iη), log-spaced; η is a relative broadening (the atom at 0 is subtracted exactly).

    Args:
      eigenvalues: λ > 0 at which to evaluate, any order, shape ``(K,)``.
      depth: L >= 1.
      d2_values: atoms d_i >= 0 of the distribution of φ'(h)², shape ``(A,)``.
      d2_weights: their probabilities p_i (normalised here), shape ``(A,)``.
      sigma_w2: σ_w² > 0.
      weights: "gaussian" or "orthogonal".
      eta: relative imaginary part of z: the density is smoothed over a relative width ~η (so
        its error is O(η), 1e-3 by default), and beyond the support it has an O(η/λ) tail, so
        compute moments with :func:`jacobian_spectrum_moments`, not by integrating it.
      steps_per_decade: continuation steps per decade of λ (halved adaptively where needed).

    Returns:
      :class:`JacobianSpectrum`.

    Raises:
      ValueError: for bad arguments; RuntimeError if the continuation loses the root.
    """
    L = _depth(depth)
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    lam = np.asarray(eigenvalues, dtype=float)
    if lam.ndim != 1 or lam.size == 0 or np.any(~(lam > 0)) or np.any(~np.isfinite(lam)):
        raise ValueError(
            f"eigenvalues must be a non-empty 1-D array of finite values > 0, got {lam}"
        )
    d = np.asarray(d2_values, dtype=float).ravel()
    p = np.asarray(d2_weights, dtype=float).ravel()
    if d.shape != p.shape or d.size == 0 or np.any(d < 0) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError("d2_values and d2_weights must be equal-length arrays of values >= 0")
    sw2 = float(sigma_w2)
    if not sw2 > 0:
        raise ValueError(f"sigma_w2 must be > 0, got {sigma_w2}")
    p = p / p.sum()
    atom = float(p[d == 0].sum())
    keep = d > 0
    d, p = d[keep], p[keep]
    mu1, mu2 = float(p @ d), float(p @ d**2)
    mean, variance = jacobian_spectrum_moments(
        L, d2_mean=mu1, d2_second_moment=mu2 + atom * 0.0, sigma_w2=sw2, weights=weights
    )
    gauss = weights == "gaussian"

    def residual(m, w, z):
        a = (1.0 if gauss else 1.0 + m) / (sw2 * m * w)
        pw = a**L
        e1 = np.sum(p * d / (w - d)) - m
        e2 = z * m * pw - (1.0 + m)
        de1_dw = -np.sum(p * d / (w - d) ** 2)
        de2_dm = z * pw * ((1.0 - L) if gauss else (1.0 - L / (1.0 + m))) - 1.0
        de2_dw = -z * m * L * pw / w
        return e1, e2, de1_dw, de2_dm, de2_dw

    def newton(m, w, z, iters):
        for _ in range(iters):
            e1, e2, a12, a21, a22 = residual(m, w, z)
            # [[∂e1/∂m, ∂e1/∂w], [∂e2/∂m, ∂e2/∂w]] = [[-1, a12], [a21, a22]]
            det = -a22 - a12 * a21
            dm = (e1 * a22 - a12 * e2) / det  # Cramer's rule for J·(dm, dw) = (e1, e2)
            dw = (-e2 - a21 * e1) / det
            m, w = m - dm, w - dw
            if abs(dm) <= 1e-13 * abs(m) and abs(dw) <= 1e-13 * abs(w):
                break
        return m, w

    def converged(m, w, z):
        e1, e2, *_ = residual(m, w, z)
        tol = 1e-9 * (1.0 + abs(m))
        return bool(np.isfinite(m) and np.isfinite(w) and abs(e1) < tol and abs(e2) < tol)

    def advance(m, w, x_from, x_to, level=0):
        """Newton at x_to from the root at x_from; halves the step (in log λ) where it fails."""
        z = x_to * (1 + 1j * eta)
        m1, w1 = newton(m, w, z, 30)
        if converged(m1, w1, z):
            return m1, w1
        if level >= 12:
            raise RuntimeError(f"free-probability continuation lost the root at λ = {x_to:.3g}")
        x_mid = math.sqrt(x_from * x_to)
        m, w = advance(m, w, x_from, x_mid, level + 1)
        return advance(m, w, x_mid, x_to, level + 1)

    top = max(float(lam.max()) * 10.0, 1e4 * mean)
    bottom = float(lam.min())
    n_path = int(np.ceil(np.log10(top / bottom) * steps_per_decade)) + 1
    path = np.unique(np.concatenate([np.geomspace(top, bottom, n_path), lam]))[::-1]
    dens = {}
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        z0 = path[0] * (1 + 1j * eta)
        m = mean / z0
        w = mu1 / m + mu2 / mu1  # M_{D²}(w) ≈ μ₁/w + μ₂/w² for large w
        m, w = newton(complex(m), complex(w), z0, 50)
        if not converged(m, w, z0):
            raise RuntimeError("free-probability continuation found no root at large λ")
        x_prev = path[0]
        for x in path:
            m, w = advance(m, w, x_prev, x)
            x_prev = x
            z = x * (1 + 1j * eta)
            g = (1.0 + m) / z - atom / z  # remove the atom at 0 so its Lorentzian does not leak in
            dens[x] = max(-g.imag / math.pi, 0.0)
    return JacobianSpectrum(lam, np.array([dens[x] for x in lam]), atom, mean, variance)


def bernoulli_d2(p: float) -> tuple[np.ndarray, np.ndarray]:
    """D² for a piecewise-linear φ with slopes 0 and 1: atoms {0, 1} with weights {1 − p, p}.

    ReLU has p = ½ at any q*; hard-tanh (φ = clip(x, −1, 1)) has p = P(|h| < 1) = erf(1/√(2q*))
    (Pennington et al. 2017, §3.2).
    """
    p = float(p)
    if not 0 < p <= 1:
        raise ValueError(f"p must be in (0, 1], got {p}")
    return np.array([0.0, 1.0]), np.array([1.0 - p, p])


def gaussian_d2(activation, q_star: float, n_atoms: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """D² = φ'(h)², h ~ N(0, q*), as ``n_atoms`` Gauss–Hermite atoms (values, weights).

    The atoms reproduce the moments E φ'(h)^(2k) to quadrature accuracy, which is all the
    S-transform sees; adequate for smooth φ at the moderate q* of the critical line.
    """
    act = _act.get(activation)
    q = float(q_star)
    if not (q >= 0 and math.isfinite(q)):
        raise ValueError(f"q_star must be finite and >= 0, got {q_star}")
    n = _checks.positive_int("n_atoms", n_atoms)
    z, w = hermegauss(n)
    values = np.asarray(act.deriv(jnp.asarray(math.sqrt(q) * z)), dtype=float) ** 2
    return values, w / w.sum()


def hard_tanh_critical(q_star: float) -> tuple[float, float, float]:
    """The critical point of a hard-tanh network with fixed length q* (Pennington et al. 2017).

    p = erf(1/√(2q*)) is the fraction of units in the linear region, χ₁ = σ_w² p = 1 fixes
    σ_w² = 1/p, and q* = σ_w² E[clip(h, −1, 1)²] + σ_b² fixes σ_b². With
    E[clip(h)²] = q p − 2√q φ_N(1/√q) + (1 − p), h ~ N(0, q), φ_N the standard normal density.

    Returns:
      ``(sigma_w2, sigma_b2, p)``.
    """
    q = float(q_star)
    if not (q > 0 and math.isfinite(q)):
        raise ValueError(f"q_star must be finite and > 0, got {q_star}")
    p = math.erf(1.0 / math.sqrt(2.0 * q))
    pdf = math.exp(-0.5 / q) / math.sqrt(2.0 * math.pi)
    clip2 = q * p - 2.0 * math.sqrt(q) * pdf + (1.0 - p)
    sw2 = 1.0 / p
    return sw2, q - sw2 * clip2, p


def linear_jacobian_spectrum(eigenvalues, depth: int, *, weights: str = "gaussian", **kwargs):
    """Deep linear network at σ_w² = 1: Fuss–Catalan (Gaussian) or exactly λ = 1 (orthogonal)."""
    d, p = np.array([1.0]), np.array([1.0])
    return jacobian_spectrum(
        eigenvalues, depth, d2_values=d, d2_weights=p, sigma_w2=1.0, weights=weights, **kwargs
    )


def relu_jacobian_spectrum(eigenvalues, depth: int, *, weights: str = "gaussian", **kwargs):
    """Critical ReLU network (σ_w² = 2): D² is Bernoulli(½), so an atom ½ at λ = 0.

    Orthogonal weights do not help ReLU: Var λ = L for orthogonal and 2L for Gaussian weights
    (Pennington et al. 2017, §3.2: ReLU networks cannot be dynamically isometric).
    """
    d, p = bernoulli_d2(0.5)
    return jacobian_spectrum(
        eigenvalues, depth, d2_values=d, d2_weights=p, sigma_w2=2.0, weights=weights, **kwargs
    )


def hard_tanh_jacobian_spectrum(
    eigenvalues, depth: int, q_star: float, *, weights: str = "gaussian", **kwargs
):
    """Critical hard-tanh network with fixed length q* (see :func:`hard_tanh_critical`).

    As q* → 0, p → 1 and with orthogonal weights Var λ = L(1/p − 1) → 0: dynamical isometry.
    """
    sw2, _, p = hard_tanh_critical(q_star)
    d, w = bernoulli_d2(p)
    return jacobian_spectrum(
        eigenvalues, depth, d2_values=d, d2_weights=w, sigma_w2=sw2, weights=weights, **kwargs
    )
