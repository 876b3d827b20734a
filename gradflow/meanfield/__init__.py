"""Mean-field signal propagation: the infinite-width limit of a deep network's chain.

A layer ``z^{l+1} = W φ(z^l) + b`` with ``W_ij ~ N(0, σ_w²/N)`` and ``b_i ~ N(0, σ_b²)`` maps the
pre-activation second moment q^l (the *length*) and the correlation c^l of two inputs
deterministically as N → ∞ (Poole et al. 2016, "Exponential expressivity in deep neural networks
through transient chaos", arXiv:1606.05340; Schoenholz et al. 2017, "Deep Information
Propagation", arXiv:1611.01232):

    q^{l+1}    = σ_w² E[φ(√q^l z)²] + σ_b²                               (Schoenholz eq. 3)
    q_12^{l+1} = σ_w² E[φ(u_1) φ(u_2)] + σ_b²,   c = q_12 / q               (Schoenholz eq. 4)
    χ₁         = σ_w² E[φ'(√q* z)²]                                      (Poole eq. 7)
    χ_c        = σ_w² E[φ'(u_1) φ'(u_2)] at (q*, c*)                      (Schoenholz eq. 8)
    ξ_q⁻¹      = −log(χ₁ + σ_w² E[φ''(√q* z) φ(√q* z)])                   (Schoenholz eq. 7)
    ξ_c⁻¹      = −log χ_c                                                (Schoenholz eq. 9)

with z ~ N(0, 1) and (u_1, u_2) ~ N(0, q* [[1, c], [c, 1]]). χ₁ < 1 is the ordered phase (c* = 1,
gradients vanish as χ₁^L), χ₁ > 1 the chaotic phase (c* < 1, gradients explode) and χ₁ = 1 the
edge of chaos, where ξ_c diverges. The same recursion on a whole Gram matrix is the NNGP kernel
(Lee et al. 2018, "Deep Neural Networks as Gaussian Processes", arXiv:1711.00165).

Gaussian integrals
------------------
ReLU, leaky ReLU and linear (positively homogeneous) and erf have closed forms: the arc-cosine
kernel of Cho & Saul 2009 (arXiv:1112.3712, eq. 6 with n = 0, 1) and the arcsine kernel of
Williams 1997 ("Computing with infinite networks", eq. 11). Every other activation (tanh, sigmoid,
GELU, SiLU, callables) uses a trapezoidal rule after the substitution z = a·sinh(t) with
a = 1/√max(q, 1): plain Gauss–Hermite converges slowly once √q·z resolves the O(1)-wide bend of a
saturating φ (tanh at q = 3: 4e-5 relative error with 100 nodes), while the sinh map keeps the
nearest complex singularity of tanh(√q a sinh t) a fixed distance π/2 from the real t axis, so
the rule converges geometrically for every q. The 2-D integrals (c-map, χ_c, NNGP) nest two such
rules, the inner one (over z2 given z1) centred on φ's bend at c z1 + s z2 = 0. In float64, with
61 nodes the 1-D integrals (q-map, χ₁) are good to 1e-9 relative for q <= 1e3 and to 5e-6 up to
q = 1e6; with 81 × 81 nodes the 2-D ones to 1e-13 for q <= 100, 2e-12 at q = 1e3 and 2e-10 at
q = 1e4, for equal and unequal lengths alike (measured for erf against its closed form).
tests/test_meanfield.py checks erf by quadrature against its closed form and tanh against an
independent NumPy trapezoid.

Every function broadcasts over its numeric arguments and is ``jit``/``vmap``-compatible in them;
the activation is static. Fixed points are found inside ``lax`` loops (Illinois regula falsi in
log q for q*, bisection for c*), never by Python loops that depend on values.

The package, one concern per module: ``maps`` (the one-layer maps, their fixed points, χ's,
depth scales and the critical line), ``layers`` (finite depth: q_layers, c_layers, nngp_kernel),
``cnn`` (spatial Fourier modes), ``residual`` (pre-LN residual networks); underneath,
``_kernels`` (the Gaussian expectations, the quadrature rule, the vectoriser and the root finder)
and ``_cores`` (the scalar fixed-point and slope computations the public functions vectorise).
"""

from gradflow.meanfield._kernels import Q_MAX, Q_MIN
from gradflow.meanfield.cnn import CNNModes, cnn_mode_rates, cnn_window_eigenvalues
from gradflow.meanfield.layers import c_layers, nngp_kernel, q_layers
from gradflow.meanfield.maps import (
    c_map,
    c_star,
    chi1,
    chi_c,
    critical_point,
    critical_sigma_w2,
    q_map,
    q_star,
    xi_c,
    xi_q,
)
from gradflow.meanfield.residual import ResidualLNLayers, residual_ln_layers, residual_ln_zeta

__all__ = [
    "q_map",
    "q_star",
    "c_map",
    "c_star",
    "chi1",
    "chi_c",
    "xi_q",
    "xi_c",
    "critical_sigma_w2",
    "critical_point",
    "q_layers",
    "c_layers",
    "nngp_kernel",
    "Q_MIN",
    "Q_MAX",
    "CNNModes",
    "cnn_window_eigenvalues",
    "cnn_mode_rates",
    "ResidualLNLayers",
    "residual_ln_layers",
    "residual_ln_zeta",
]
