"""Weight initialisers, Flax-compatible: each factory returns ``init(key, shape, dtype) -> array``.

Kernels follow Flax's ``(fan_in, fan_out)`` layout, so ``fan_in = shape[-2]`` for matrices
(``shape[0]`` for vectors), and its ``(*window, c_in, c_out)`` layout for convolutions, whose fan-in
is the product of all axes but the last (window size × c_in, as ``jax.nn.initializers``' variance
scaling). Stacked kernels (``(L, fan_in, fan_out)``) are initialised one layer at a time by the
models, so every initialiser here sees a single layer's shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from gradflow import _checks
from gradflow import activations as _act

__all__ = [
    "Initializer",
    "fan_in",
    "get",
    "names",
    "glorot",
    "glorot_normal",
    "glorot_uniform",
    "he",
    "lecun",
    "orthogonal",
    "delta_orthogonal",
    "gaussian",
    "kumar",
    "kumar_std",
    "yilmaz_poli",
    "yilmaz_poli_mean",
    "zeros",
    "gaussian_bias",
    "critical",
]

Initializer = Callable[..., jax.Array]


def fan_in(shape) -> int:
    """The number of inputs feeding one output unit: the product of all axes but the last.

    ``(fan_in, fan_out)`` for a dense kernel; ``(*window, c_in, c_out)`` for a convolution kernel,
    whose fan-in is window size × c_in (as ``flax.linen.Conv``'s default and Xiao et al. 2018,
    whose weights have variance σ_w²/((2k+1)·c)); ``shape[0]`` for a vector.

    Args:
      shape: a kernel's shape, at least one axis.

    Returns:
      The fan-in, an ``int``.

    Raises:
      ValueError: for the empty shape ``()`` or a fan-in of 0 (a zero-sized input axis), where
        every fan-in-scaled initialiser would divide by zero.
    """
    if len(shape) == 0:
        raise ValueError("initialiser shape must have at least one axis, got ()")
    n = math.prod(int(d) for d in shape[:-1]) if len(shape) >= 2 else int(shape[0])
    if n <= 0:
        raise ValueError(f"initialiser shape {tuple(shape)} has fan-in {n}; it must be >= 1")
    return n


_fan_in = fan_in  # the old private name, which tests/test_cnn.py still uses


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, (str, bytes, bool)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {value}")
    return value


def _normal(std_of_fan_in: Callable[[int], float], mean_of_fan_in=lambda n: 0.0) -> Initializer:
    """N(mean(fan_in), std(fan_in)²) elementwise."""

    def init(key, shape, dtype=jnp.float32):
        n = fan_in(shape)
        mean, std = mean_of_fan_in(n), std_of_fan_in(n)
        # Scales were checked as Python floats; in the weights' dtype they must not overflow
        # (σ_w = 1e300 is a fine float64 and inf in float32). 10σ covers every N(0, 1) draw.
        _checks.check_representable("the initialiser's scale", [10 * std, mean], dtype)
        z = jax.random.normal(key, shape, dtype)
        return (mean + std * z).astype(dtype)

    return init


def glorot_uniform() -> Initializer:
    """U(±√(6/(fan_in+fan_out))) — Glorot & Bengio 2010, eq. 16 ("normalized initialization")."""
    return jax.nn.initializers.glorot_uniform()


def glorot_normal() -> Initializer:
    """N(0, 2/(fan_in+fan_out)) — Glorot & Bengio 2010, the variance of eq. 16 as a Gaussian."""
    return jax.nn.initializers.glorot_normal()


def glorot(distribution: str = "uniform") -> Initializer:
    """Glorot/Xavier initialisation, ``distribution`` in {"uniform", "normal"}."""
    if distribution == "uniform":
        return glorot_uniform()
    if distribution == "normal":
        return glorot_normal()
    raise ValueError(f"glorot distribution must be 'uniform' or 'normal', got {distribution!r}")


def he() -> Initializer:
    """N(0, 2/fan_in) — He et al. 2015, "Delving deep into rectifiers", eq. 10."""
    return gaussian(math.sqrt(2.0))


def lecun() -> Initializer:
    """N(0, 1/fan_in) — LeCun et al. 1998, "Efficient BackProp", §4.6."""
    return gaussian(1.0)


def gaussian(sigma_w: float) -> Initializer:
    """N(0, σ_w²/fan_in): the mean-field parametrisation of Poole et al. 2016 (arXiv:1606.05340).

    Args:
      sigma_w: weight scale σ_w > 0.
    """
    sigma_w = _check_positive("sigma_w", sigma_w)
    return _normal(lambda n: sigma_w / math.sqrt(n))


def orthogonal(gain: float = 1.0) -> Initializer:
    """Haar-orthogonal matrix times ``gain``, so W Wᵀ = gain² I for square W (Saxe et al. 2013)."""
    gain = _check_positive("gain", gain)
    return jax.nn.initializers.orthogonal(scale=gain)


def delta_orthogonal(gain: float = 1.0) -> Initializer:
    """Delta-orthogonal convolution kernels (Xiao et al. 2018): zero except the centre tap.

    For a Flax kernel of shape ``(*window, c_in, c_out)`` (odd window sizes) the centre tap is
    ``gain`` times a Haar-orthogonal ``(c_in, c_out)`` matrix (orthonormal rows when
    c_in ≤ c_out, columns otherwise) and every other tap is 0. With circular padding and
    c_in ≤ c_out, a linear convolution then maps every input to an output of exactly ``gain``
    times its norm: all singular values of its Jacobian equal ``gain`` — dynamical isometry at
    any depth. A 2-D shape is an ordinary :func:`orthogonal` matrix.

    Args:
      gain: the scale g > 0 (the critical value of the activation, e.g. 1 for tanh at σ_b = 0).

    Returns:
      ``init(key, shape, dtype) -> array``.

    Raises:
      ValueError: for ``gain`` ≤ 0, a shape with fewer than 2 axes, or an even window size.

    References:
      Xiao, Bahri, Sohl-Dickstein, Schoenholz & Pennington 2018, "Dynamical isometry and a mean
      field theory of CNNs: how to train 10,000-layer vanilla convolutional neural networks",
      ICML, arXiv:1806.05393, Algorithm 2.
    """
    gain = _check_positive("gain", gain)
    base = jax.nn.initializers.orthogonal(scale=gain)

    def init(key, shape, dtype=jnp.float32):
        shape = tuple(int(d) for d in shape)
        if len(shape) < 2:
            raise ValueError(
                f"delta_orthogonal needs a kernel shape (*window, c_in, c_out), got {shape}"
            )
        window = shape[:-2]
        if any(w % 2 == 0 for w in window):
            raise ValueError(
                f"delta_orthogonal needs odd window sizes (a centre tap), got kernel shape {shape}"
            )
        centre = base(key, shape[-2:], dtype)
        kernel = jnp.zeros(shape, dtype)
        return kernel.at[tuple(w // 2 for w in window)].set(centre)

    return init


def kumar_std(activation: _act.ActivationLike, fan_in: int) -> float:
    """Kumar's standard deviation for one layer.

    For φ differentiable at 0, Kumar (2017, arXiv:1704.08863, §3, eq. 9) keeps the pre-activation
    variance fixed by v² = 1 / (N φ'(0)² (1 + φ(0)²)); the logistic function gives
    v = √(12.8/N) ≈ 3.58/√N, which the paper rounds to 3.6/√N. ReLU (not differentiable at 0) gets
    2/N (§3.2, as He et al.); for leaky ReLU with slope a we use He's 2/((1+a²)N).
    """
    act = _act.get(activation)
    fan_in = _checks.positive_int("fan_in", fan_in)
    if act.relu_like:
        slope = _act.LEAKY_RELU_SLOPE if act.name == "leaky_relu" else 0.0
        return math.sqrt(2.0 / ((1.0 + slope**2) * fan_in))
    d0, f0 = act.deriv_at_zero, act.value_at_zero
    if d0 == 0:
        raise ValueError(f"Kumar's rule needs φ'(0) ≠ 0; activation {act.name!r} has φ'(0) = 0")
    return 1.0 / math.sqrt(fan_in * d0**2 * (1.0 + f0**2))


def kumar(activation: _act.ActivationLike) -> Initializer:
    """N(0, v²) with Kumar's per-activation v (see :func:`kumar_std`); 3.6/√N-ish for sigmoid."""
    act = _act.get(activation)
    kumar_std(act, 1)  # validate once, eagerly, so a bad activation fails at construction
    return _normal(lambda n: kumar_std(act, n))


def yilmaz_poli_mean(fan_in: int) -> float:
    """max(−1, −8/N): the mean weight of Yilmaz & Poli 2022 (Neural Networks 153:87–103)."""
    return max(-1.0, -8.0 / _checks.positive_int("fan_in", fan_in))


def yilmaz_poli(std: float | None = None) -> Initializer:
    """Logistic-network weights with the negative mean of Yilmaz & Poli (2022).

    W ~ N(μ, s²) with μ = max(−1, −8/N), N the fan-in (the number of neurons feeding the layer). The
    paper's two theoretical models (the expected back-propagated gradient of a logistic MLP as a
    function of the mean initial weight, and a sufficient condition for it to vanish) fix the
    mean only: gradients do not vanish when it is negative and ∝ 1/N. The paper's full text was
    not available to this project, so the spread is a free parameter here. The default
    s = 1/√N (LeCun scale) keeps the zero-mean part of the pre-activation at unit variance; pass
    ``std`` to use another spread.

    Args:
      std: standard deviation s; ``None`` for 1/√N.
    """
    if std is not None:
        std = _check_positive("std", std)
    return _normal(
        (lambda n: std) if std is not None else (lambda n: 1.0 / math.sqrt(n)), yilmaz_poli_mean
    )


def zeros() -> Initializer:
    """All-zero biases."""
    return jax.nn.initializers.zeros


def gaussian_bias(sigma_b: float) -> Initializer:
    """N(0, σ_b²) biases (no fan-in scaling), as in the mean-field literature."""
    sigma_b = float(sigma_b)
    if not math.isfinite(sigma_b) or sigma_b < 0:
        raise ValueError(f"sigma_b must be finite and >= 0, got {sigma_b}")

    def init(key, shape, dtype=jnp.float32):
        return (sigma_b * jax.random.normal(key, shape, dtype)).astype(dtype)

    return init


def critical(activation: _act.ActivationLike, sigma_b2: float = 0.0) -> Initializer:
    """N(0, σ_w²*/fan_in) on the edge of chaos χ₁ = 1 (Schoenholz et al. 2017, arXiv:1611.01232).

    σ_w²* = ``gradflow.meanfield.critical_sigma_w2(activation, sigma_b2)``: 2 for ReLU (He et al.),
    1 for tanh at σ_b² = 0, ≈ 1.76 for tanh at σ_b² = 0.05. Pair it with
    ``gaussian_bias(sqrt(sigma_b2))`` for the biases, which the critical point assumes.

    Args:
      activation: registry name or callable.
      sigma_b2: bias variance σ_b² >= 0.

    Raises:
      ValueError: for an unknown activation, a negative σ_b², or no critical point.
    """
    # Imported here so that meanfield stays a leaf of activations (DESIGN.md's dependency arrows).
    from gradflow import meanfield

    sw2 = float(meanfield.critical_sigma_w2(activation, sigma_b2))
    if not math.isfinite(sw2) or sw2 <= 0:
        raise ValueError(
            f"no edge of chaos for activation {activation!r} at sigma_b2={sigma_b2} (got {sw2})"
        )
    return gaussian(math.sqrt(sw2))


# Each name's initialiser at its defaults; "gaussian" is σ_w = 1, which a sweep then rescales.
_BY_NAME: dict[str, Callable[[_act.ActivationLike | None], Initializer]] = {
    "gaussian": lambda act: lecun(),
    "glorot": lambda act: glorot(),
    "glorot_normal": lambda act: glorot("normal"),
    "he": lambda act: he(),
    "lecun": lambda act: lecun(),
    "kumar": lambda act: kumar(act),
    "yilmaz_poli": lambda act: yilmaz_poli(),
    "orthogonal": lambda act: orthogonal(),
}


def names() -> tuple[str, ...]:
    """The names :func:`get` knows."""
    return tuple(_BY_NAME)


def get(name: str, activation: _act.ActivationLike | None = None) -> Initializer:
    """The initialiser called ``name``, at its default arguments (a sweep's ``init`` axis).

    ``"gaussian"`` and ``"lecun"`` are N(0, 1/fan_in) (:func:`gaussian` at σ_w = 1),
    ``"glorot"`` is :func:`glorot_uniform`, ``"glorot_normal"`` :func:`glorot_normal`,
    ``"kumar"`` is :func:`kumar` for ``activation``; ``"he"``, ``"yilmaz_poli"`` and
    ``"orthogonal"`` are those factories called without arguments.

    Args:
      name: one of :func:`names`.
      activation: registry name or callable; needed by ``"kumar"`` only.

    Returns:
      The initialiser ``init(key, shape, dtype) -> array``.

    Raises:
      ValueError: for an unknown name (the message lists the valid ones), or ``"kumar"`` without
        an activation.
    """
    if name not in _BY_NAME:
        raise ValueError(f"init must be one of {', '.join(_BY_NAME)}, got {name!r}")
    if name == "kumar" and activation is None:
        raise ValueError("init 'kumar' needs the activation it is derived for")
    return _BY_NAME[name](activation)
