"""Convolutional networks: spatial Fourier modes of the covariance (Xiao et al. 2018)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow import _checks
from gradflow.meanfield._cores import depth_scale
from gradflow.meanfield._kernels import variances
from gradflow.meanfield.maps import chi_c

__all__ = ["CNNModes", "cnn_window_eigenvalues", "cnn_mode_rates"]


class CNNModes(NamedTuple):
    """Per spatial Fourier mode m: the window-average eigenvalue, the decay rate, the depth scale.

    Attributes:
      eigenvalues: λ_m of the filter-window average (:func:`cnn_window_eigenvalues`), array of
        the spatial shape (DFT order, m = 0 first, as ``jnp.fft.fftn``).
      rates: λ_m χ_c*, the factor by which mode m of a covariance perturbation shrinks per layer.
      depth_scales: ξ_m = −1/log|λ_m χ_c*| (inf where |λ_m χ_c*| >= 1, 0 where λ_m = 0).
    """

    eigenvalues: jax.Array
    rates: jax.Array
    depth_scales: jax.Array


def _spatial_args(spatial_shape, kernel_size) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(n_1, …), (k_1, …)``: positive sizes, odd kernels, one per spatial axis."""

    def ints(name, value):
        vals = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be positive integers, got {value!r}")
        return tuple(int(v) for v in vals)

    n = ints("spatial_shape", spatial_shape)
    k = ints("kernel_size", kernel_size)
    if len(k) == 1 and len(n) > 1:
        k = k * len(n)
    if len(k) != len(n):
        raise ValueError(
            f"kernel_size must be an int or one size per spatial axis {n}, got {kernel_size!r}"
        )
    if any(kk % 2 == 0 for kk in k):
        raise ValueError(f"kernel_size must be odd (a centred window), got {kernel_size!r}")
    return n, k


def _window_eigenvalues_1d(n: int, size: int) -> np.ndarray:
    """λ_m = sin(size·πm/n) / (size·sin(πm/n)), λ_0 = 1, in float64 (a Dirichlet kernel)."""
    m = np.arange(n)
    # Reduce size·m mod 2n in integers first: exact zeros where size·m/n is an integer
    # (the window is a whole number of periods of mode m), and no rounding growth with size·m.
    top = (size * m) % (2 * n)
    num = np.where(top % n == 0, 0.0, np.sin(np.pi * top / n))
    den = size * np.sin(np.pi * m / n)
    return np.where(m == 0, 1.0, num / np.where(m == 0, 1.0, den))


def cnn_window_eigenvalues(spatial_shape, kernel_size) -> jax.Array:
    """Eigenvalues of the filter-window average 𝒜 on a periodic grid, one per Fourier mode.

    A circular convolution with i.i.d. N(0, σ_w²/(window·C)) weights maps the pre-activation
    covariance Σ_{α,α'} of one input through 𝒜: [𝒜 Σ]_{α,α'} = (1/|window|) Σ_β Σ_{α+β, α'+β}, the
    average over the window's offsets β along each diagonal α' − α = δ (Xiao et al. 2018, §2, the
    covariance recursion Σ^{l+1} = σ_w² 𝒜 ⋆ C(Σ^l) + σ_b²). On n periodic positions 𝒜 is
    circulant along α, so its eigenvectors are the Fourier modes e^{2πimα/n}, with eigenvalues, for
    a window of 2k + 1 taps,

        λ_m = sin((2k+1)πm/n) / ((2k+1) sin(πm/n)),   λ_0 = 1,

    (the Dirichlet kernel; exact also when 2k + 1 > n, counting wrapped taps with multiplicity, as
    circular padding does). In 2-D the average factorises, λ_{m1,m2} = λ_{m1} λ_{m2}.

    Args:
      spatial_shape: n (1-D) or (n_1, n_2) (2-D), the number of positions per axis.
      kernel_size: odd window size, an int or one per axis.

    Returns:
      λ, array of shape ``spatial_shape`` in DFT order (index m, modes m and n − m coincide),
      float64 under ``jax_enable_x64`` else float32.

    Raises:
      ValueError: for non-positive sizes, an even kernel size or mismatched lengths.

    References:
      Xiao, Bahri, Sohl-Dickstein, Schoenholz & Pennington 2018, "Dynamical isometry and a mean
      field theory of CNNs: how to train 10,000-layer vanilla convolutional neural networks",
      ICML, arXiv:1806.05393, §2.
    """
    n, k = _spatial_args(spatial_shape, kernel_size)
    lam = np.ones((), np.float64)
    for nn_, kk in zip(n, k):
        lam = np.multiply.outer(lam, _window_eigenvalues_1d(nn_, kk))
    return jnp.asarray(lam, _checks.default_float())


def cnn_mode_rates(activation, sigma_w2, sigma_b2, spatial_shape, kernel_size) -> CNNModes:
    """Decay rate λ_m χ_c* and depth scale ξ_m of every spatial Fourier mode of a circular CNN.

    Linearising the covariance recursion around its fixed point Σ* (q* on the diagonal, q* c* off
    it), an off-diagonal perturbation ε^l_{α,α+δ} (δ ≠ 0) obeys

        ε^{l+1}_{α,α+δ} = χ_c* · (1/(2k+1)) Σ_j ε^l_{α+j, α+δ+j},

    (Xiao et al. 2018, §2; χ_c* = :func:`chi_c` at c*), so its m-th Fourier component along α
    shrinks by λ_m χ_c* per layer: ε̂^l_m ∝ (λ_m χ_c*)^l, with depth scale
    ξ_m = −1/log|λ_m χ_c*|. Mode 0 is the fully connected network's ξ_c; every other mode decays
    faster, so at the edge of chaos (χ_c* = 1) only the spatially uniform mode survives — unless
    the kernel is a delta (delta-orthogonal), for which λ_m = 1 for every m. The diagonal
    (δ = 0, the lengths) follows the same averaging with the q-map's slope instead of χ_c*.

    Args:
      activation: registry name or callable.
      sigma_w2: σ_w² > 0, scalar.
      sigma_b2: σ_b² >= 0, scalar.
      spatial_shape: n or (n_1, n_2), positions per axis.
      kernel_size: odd window size, an int or one per axis.

    Returns:
      :class:`CNNModes`, each field of shape ``spatial_shape`` (DFT order).

    Raises:
      ValueError: for bad sizes (see :func:`cnn_window_eigenvalues`), non-scalar or out-of-range
        variances, or an unknown activation.

    References:
      Xiao, Bahri, Sohl-Dickstein, Schoenholz & Pennington 2018, arXiv:1806.05393, §2;
      Schoenholz, Gilmer, Ganguli & Sohl-Dickstein 2017, arXiv:1611.01232, eq. 9 (ξ_c).
    """
    lam = cnn_window_eigenvalues(spatial_shape, kernel_size)
    sw2, sb2 = variances(sigma_w2, sigma_b2)
    if sw2.ndim or sb2.ndim:
        raise ValueError("sigma_w2 and sigma_b2 must be scalars (vmap over them for a sweep)")
    chi = chi_c(activation, sw2, sb2)
    rates = lam * chi.astype(lam.dtype)
    return CNNModes(lam, rates, depth_scale(jnp.abs(rates)))
