"""Deep vanilla CNN (1-D or 2-D, circular or zero padding) exposing its chain of hidden convs.

The model of Xiao, Bahri, Sohl-Dickstein, Schoenholz & Pennington 2018, "Dynamical isometry and a
mean field theory of CNNs: how to train 10,000-layer vanilla convolutional neural networks"
(ICML, arXiv:1806.05393): an input convolution c_in → C, ``depth − 1`` convolutions C → C with a
pointwise nonlinearity after each (stacked parameters, one ``lax.scan``), then global average
pooling and a Dense readout. With circular padding every layer commutes with spatial shifts, which
is what makes the spatial Fourier modes of the covariance decouple
(:func:`gradflow.meanfield.cnn_mode_rates`) and a delta-orthogonal kernel an exact isometry.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gradflow import _checks
from gradflow import activations as _act
from gradflow import init as _init
from gradflow.chain import Chain, Layer, Segmented, final_state
from gradflow.models import _common

__all__ = [
    "CNN",
    "ConvStep",
    "ModeDecay",
    "PADDINGS",
    "conv",
    "lag_modes",
    "mode_decay",
    "spatial_covariance",
]

PADDINGS = ("circular", "same")
_DIMENSION_NUMBERS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}


def _check_padding(padding) -> str:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    return padding


def conv(x: jax.Array, kernel: jax.Array, *, padding: str = "circular") -> jax.Array:
    """Stride-1 convolution (cross-correlation, as ``flax.linen.Conv``) with an odd window.

    Circular padding wraps the feature map (``jnp.pad(mode="wrap")``, then a VALID convolution),
    so the map commutes with cyclic shifts; "same" pads with zeros. Either way the output has the
    input's spatial shape.

    Args:
      x: feature map ``(*spatial, c_in)`` or a batch ``(B, *spatial, c_in)``, with ``len(spatial)``
        = ``kernel.ndim − 2``.
      kernel: ``(*window, c_in, c_out)`` with odd window sizes (Flax's layout).
      padding: "circular" or "same".

    Returns:
      Array ``(*spatial, c_out)`` or ``(B, *spatial, c_out)``.

    Raises:
      ValueError: for an unknown ``padding``, an even window or mismatched ranks/channels.
    """
    _check_padding(padding)
    dims = kernel.ndim - 2
    if dims not in _DIMENSION_NUMBERS:
        raise ValueError(
            f"kernel must have shape (*window, c_in, c_out) with 1 or 2 window axes, "
            f"got {kernel.shape}"
        )
    window = kernel.shape[:dims]
    if any(w % 2 == 0 for w in window):
        raise ValueError(f"kernel window sizes must be odd, got kernel shape {kernel.shape}")
    if x.ndim not in (dims + 1, dims + 2) or x.shape[-1] != kernel.shape[-2]:
        raise ValueError(
            f"x must have shape (*spatial, {kernel.shape[-2]}) or (B, *spatial, "
            f"{kernel.shape[-2]}) with {dims} spatial axes, got {x.shape}"
        )
    batched = x.ndim == dims + 2
    y = x if batched else x[None]
    if padding == "circular":
        # Wrap k//2 entries on each side; a VALID window then sees the periodic neighbourhood.
        pads = ((0, 0),) + tuple((w // 2, w // 2) for w in window) + ((0, 0),)
        y = jnp.pad(y, pads, mode="wrap")
        pad_arg = "VALID"
    else:
        pad_arg = "SAME"
    y = jax.lax.conv_general_dilated(
        y,
        kernel.astype(y.dtype),
        window_strides=(1,) * dims,
        padding=pad_arg,
        dimension_numbers=_DIMENSION_NUMBERS[dims],
    )
    return y if batched else y[0]


@dataclasses.dataclass(frozen=True)
class ConvStep:
    """One hidden layer h -> φ(conv(h, W) + b) (+ h for residual nets), hashable so jit caches it.

    ``__call__(theta, h, x=None)`` with ``theta = {"kernel": (*window, C, C), "bias": (C,)}`` and
    ``h`` a feature map ``(*spatial, C)`` or ``(B, *spatial, C)``.
    """

    activation: _act.Activation
    padding: str = "circular"
    residual: bool = False
    residual_scale: float = 1.0

    def preactivation(self, theta, h):
        """z = conv(h, W) + b, shaped like ``h`` (with the kernel's output channels)."""
        z = conv(h, theta["kernel"], padding=self.padding)
        return z + _common.bcast(theta["bias"], z)

    def __call__(self, theta, h, x=None):
        a = self.activation.fn(self.preactivation(theta, h))
        return h + self.residual_scale * a if self.residual else a


class CNN(nn.Module):
    """Vanilla deep CNN: ``depth`` (convolution, activation) layers of ``channels``, then a readout.

    Parameters (``params["params"]``): ``input`` (the first convolution, kernel
    ``(*window, c_in, C)``, bias ``(C,)``), ``hidden`` (layers 2…depth stacked: kernel
    ``(depth−1, *window, C, C)``, bias ``(depth−1, C)``) and ``readout`` (Dense on the globally
    average-pooled features, kernel ``(C, out_features)``). Each kernel is drawn by
    ``kernel_init(key, (*window, c_in, c_out))``: ``gradflow.init.gaussian(σ_w)`` gives the
    mean-field weights N(0, σ_w²/(window·c_in)) of Xiao et al. 2018, and
    ``gradflow.init.delta_orthogonal(g)`` their delta-orthogonal kernels.

    The chain (:meth:`chain`) is the sequence of the ``depth − 1`` hidden convolutions; its states
    are the post-activation feature maps h_1 … h_depth, shaped ``(*spatial, C)`` (or batched).

    Attributes:
      depth: number of convolution layers >= 1.
      channels: C >= 1.
      kernel_size: odd window size (an int, or one per spatial axis).
      activation: registry name or callable.
      padding: "circular" (periodic; shift-equivariant) or "same" (zero padding).
      dims: number of spatial axes, 1 or 2.
      residual: whether hidden layers 2…depth are residual, h + residual_scale · φ(conv(h) + b).
      residual_scale: multiplier on the residual branch.
      kernel_init: kernel initialiser (``gradflow.init``), called once per layer.
      bias_init: bias initialiser.
      out_features: readout width.
      param_dtype: parameter dtype; None for float64 under ``jax_enable_x64``, else float32.

    References:
      Xiao, Bahri, Sohl-Dickstein, Schoenholz & Pennington 2018, arXiv:1806.05393, §2 (the
      network and its mean field theory) and Algorithm 2 (delta-orthogonal kernels).
    """

    depth: int
    channels: int
    kernel_size: Any = 3
    activation: _act.ActivationLike = "tanh"
    padding: str = "circular"
    dims: int = 1
    residual: bool = False
    residual_scale: float = 1.0
    kernel_init: Any = dataclasses.field(default_factory=_init.lecun)
    bias_init: Any = dataclasses.field(default_factory=_init.zeros)
    out_features: int = 1
    param_dtype: Any = None

    def __post_init__(self):
        _checks.positive_int("depth", self.depth)
        _checks.positive_int("channels", self.channels)
        _checks.positive_int("out_features", self.out_features)
        if self.dims not in (1, 2) or isinstance(self.dims, bool):
            raise ValueError(f"dims must be 1 or 2, got {self.dims!r}")
        _check_padding(self.padding)
        self.window  # noqa: B018 - validates kernel_size eagerly
        _act.get(self.activation)
        super().__post_init__()

    @property
    def window(self) -> tuple[int, ...]:
        """The kernel's window, one odd size per spatial axis."""
        ks = self.kernel_size
        sizes = (ks,) * self.dims if not isinstance(ks, (tuple, list)) else tuple(ks)
        if len(sizes) != self.dims:
            raise ValueError(
                f"kernel_size must be an int or {self.dims} ints (dims={self.dims}), got {ks!r}"
            )
        for s in sizes:
            _checks.positive_int("kernel_size", s)
            if s % 2 == 0:
                raise ValueError(f"kernel_size must be odd (a centred window), got {ks!r}")
        return sizes

    @property
    def step(self) -> ConvStep:
        return ConvStep(
            _act.get(self.activation), self.padding, self.residual, float(self.residual_scale)
        )

    @property
    def _first(self) -> ConvStep:
        # The first layer maps c_in -> C; it is never residual (the shapes differ).
        return dataclasses.replace(self.step, residual=False)

    def _check_input(self, x, c_in: int | None = None):
        """``x`` as a floating array of rank dims+1 (single) or dims+2 (batch), c_in channels."""
        try:
            x = _checks.as_float_array("x", x, (self.dims + 1, self.dims + 2))
        except ValueError as exc:
            raise ValueError(
                f"{exc}: expected (*spatial, c_in) or a batch (B, *spatial, c_in) with "
                f"{self.dims} spatial axes (dims={self.dims})"
            ) from None
        if c_in is not None and x.shape[-1] != c_in:
            raise ValueError(
                f"x must have {c_in} channels (the model's input channels), got shape {x.shape}"
            )
        if any(s < 1 for s in x.shape):
            raise ValueError(f"x must have no empty axis, got shape {x.shape}")
        return x

    def chain(self, params, x) -> Chain:
        """The chain of hidden convolutions for input ``x``.

        Args:
          params: as returned by ``init``.
          x: input ``(*spatial, c_in)`` or a batch ``(B, *spatial, c_in)``; the state is the feature
            map ``(*spatial, C)`` or ``(B, *spatial, C)``.

        Returns:
          A :class:`~gradflow.chain.Chain` of length ``depth − 1`` with h_0 = the first
          convolution's output.
        """
        p = _common.unwrap(params)
        x = self._check_input(x, p["input"]["kernel"].shape[-2])
        h0 = self._first(p["input"], x)
        return Chain(params=p["hidden"], xs=None, h0=h0, step=self.step, length=self.depth - 1)

    def full_chain(self, params, x) -> Segmented:
        """The whole network up to its last feature map, as a Segmented chain with a stem.

        The steps of :meth:`chain` (``"hidden/0"`` … ``"hidden/{depth-2}"``) plus the input
        convolution as the ``stem`` (``"input"``), so gradient-norm analyses
        (:func:`gradflow.gradients.chain_grad_norms`) cover every layer.

        Args:
          params: as returned by ``init``.
          x: input ``(*spatial, c_in)`` or a batch ``(B, *spatial, c_in)``.

        Returns:
          A :class:`~gradflow.chain.Segmented` chain of ``depth − 1`` steps.
        """
        p = _common.unwrap(params)
        chain = self.chain(p, x)
        x = self._check_input(x)
        stem = Layer(p["input"], None, _common.Stem(self._first), "input")
        return Segmented(
            h0=chain.h0, segments=(chain.segment.replace(name="hidden"),), stem=stem, x=x
        )

    def preactivations(self, params, x) -> jax.Array:
        """The pre-activations z^1 … z^depth of every layer, by one ``lax.scan``.

        z^1 = conv(x, W^1) + b^1 and z^{l+1} = conv(h^l, W^{l+1}) + b^{l+1}: the fields whose
        spatial covariance Σ^l_{αα'} = E[z^l_{α,c} z^l_{α',c}] the mean field theory follows.

        Args:
          params: as returned by ``init``.
          x: input ``(*spatial, c_in)`` or a batch ``(B, *spatial, c_in)``.

        Returns:
          Array ``(depth, *spatial, C)`` or ``(depth, B, *spatial, C)``.
        """
        chain = self.chain(params, x)
        p = _common.unwrap(params)
        step = self.step
        z1 = self._first.preactivation(p["input"], self._check_input(x))

        def body(h, theta):
            return step(theta, h), step.preactivation(theta, h)

        _, zs = jax.lax.scan(body, chain.h0, chain.params, length=chain.length)
        return jnp.concatenate([z1[None], zs])

    def covariance_curvature(self, params, x, direction) -> jax.Array:
        """d²Σ^l/dt² at t = 0 along the great circle of inputs x(t) = x cos t + direction sin t.

        Σ^l(t) is the empirical spatial covariance of layer l's pre-activations
        (:func:`spatial_covariance`) for input x(t). When every position of ``x`` and
        ``direction`` has the same norm and x_α ⊥ direction_α, each x_α(t) keeps its norm, so the
        lengths stay put and, at a spatially constant ``x`` (an ordered-phase fixed point, c* = 1),
        Σ^l(t) − Σ^l(0) = (t²/2) · d²Σ^l/dt² + O(t³) is a pure correlation perturbation: the
        regime of the linearised recursion ε^{l+1} = χ_c* 𝒜 ε^l (Xiao et al. 2018, §2). Exact
        forward-mode derivatives (two nested ``jax.jacfwd``), so no finite-difference
        cancellation and no O(t⁴) mixing of modes.

        Args:
          params: as returned by ``init``.
          x: base input ``(*spatial, c_in)`` (unbatched).
          direction: ``(*spatial, c_in)``.

        Returns:
          Array ``(depth, *spatial, *spatial)``.
        """
        x = self._check_input(x)
        direction = self._check_input(direction)
        if x.ndim != self.dims + 1 or direction.shape != x.shape:
            raise ValueError(
                f"x and direction must be one unbatched input (*spatial, c_in) each, of one "
                f"shape, got {x.shape} and {direction.shape}"
            )

        def cov(t):
            z = self.preactivations(params, x * jnp.cos(t) + direction * jnp.sin(t))
            return spatial_covariance(z, dims=self.dims)

        zero = jnp.zeros((), x.dtype)
        return jax.jacfwd(jax.jacfwd(cov))(zero)

    def features(self, params, x):
        """The last feature map h_depth, ``(*spatial, C)`` or ``(B, *spatial, C)``."""
        return final_state(self.chain(params, x))

    def readout(self, params, h):
        """Global average pooling, then the Dense readout; ``apply == readout ∘ features``.

        Args:
          params: as returned by ``init`` (or the inner dict).
          h: last feature map (:meth:`features`), ``(*spatial, C)`` or ``(B, *spatial, C)``.

        Returns:
          Array ``(out_features,)`` or ``(B, out_features)``.
        """
        pooled = jnp.mean(h, axis=tuple(range(h.ndim - 1 - self.dims, h.ndim - 1)))
        return _common.model_readout(params, pooled)

    @nn.compact
    def __call__(self, x):
        """Forward pass: ``(*spatial, c_in)`` -> ``(out_features,)``, or batched -> ``(B, out)``."""
        x = self._check_input(x)
        if self.has_variable("params", "input"):
            self._check_input(x, self.get_variable("params", "input")["kernel"].shape[-2])
        dtype = _common.resolve_dtype(self.param_dtype)
        c, w = self.channels, self.window
        kinit, binit = self.kernel_init, self.bias_init
        p = {
            "input": self.param(
                "input", _common.kernel_params(kinit, binit, (*w, x.shape[-1], c), dtype)
            ),
            "hidden": self.param(
                "hidden", _common.kernel_params(kinit, binit, (*w, c, c), dtype, self.depth - 1)
            ),
            "readout": self.param(
                "readout", _common.dense_params(kinit, _init.zeros(), c, self.out_features, dtype)
            ),
        }
        return self.readout(p, self.features(p, x))


# --------------------------------------------------------------------------------------------
# Spatial covariance and its Fourier modes (the measured side of meanfield.cnn_mode_rates)
# --------------------------------------------------------------------------------------------


def _check_dims(dims) -> int:
    if isinstance(dims, bool) or dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims!r}")
    return dims


def spatial_covariance(z, *, dims: int = 1) -> jax.Array:
    """Σ_{α,α'} = (1/C) Σ_c z_{α,c} z_{α',c}: the channel-averaged covariance of a feature map.

    With C i.i.d. channels this estimates the mean-field covariance of Xiao et al. 2018 (§2).

    Args:
      z: array ``(..., *spatial, C)`` with ``dims`` spatial axes; leading axes (layers, seeds)
        are kept.
      dims: number of spatial axes, 1 or 2.

    Returns:
      Array ``(..., *spatial, *spatial)``.
    """
    _check_dims(dims)
    z = jnp.asarray(z)
    if z.ndim < dims + 1:
        raise ValueError(
            f"z must have shape (..., *spatial, C) with {dims} spatial axes, got {z.shape}"
        )
    lead, spatial = z.shape[: z.ndim - dims - 1], z.shape[z.ndim - dims - 1 : -1]
    flat = z.reshape(*lead, math.prod(spatial), z.shape[-1])
    cov = jnp.einsum("...pc,...qc->...pq", flat, flat) / z.shape[-1]
    return cov.reshape(*lead, *spatial, *spatial)


def lag_modes(cov, *, dims: int = 1) -> np.ndarray:
    """Fourier transform of a spatial covariance along position α, one transform per lag δ.

    F[m, δ] = (1/n) Σ_α e^{−2πi mα/n} Σ_{α, α+δ} (indices mod n; in 2-D, m, α and δ are pairs):
    on a periodic grid the filter-window average acts on each lag δ separately and is diagonal in
    m, so a perturbation's component F[m, δ] shrinks by λ_m χ_c* per layer
    (:func:`gradflow.meanfield.cnn_mode_rates`). δ = 0 is the diagonal (the lengths).

    Args:
      cov: array ``(..., *spatial, *spatial)`` (e.g. from :func:`spatial_covariance`).
      dims: number of spatial axes, 1 or 2.

    Returns:
      Complex NumPy array ``(..., *spatial_m, *spatial_δ)`` (DFT order in m and in δ).
    """
    _check_dims(dims)
    cov = np.asarray(cov)
    spatial = cov.shape[cov.ndim - dims :]
    if cov.ndim < 2 * dims or cov.shape[cov.ndim - 2 * dims : cov.ndim - dims] != spatial:
        raise ValueError(
            f"cov must have shape (..., *spatial, *spatial) with {dims} spatial "
            f"axes, got {cov.shape}"
        )
    # Index arrays: position α (first dims axes) and lag δ (last dims axes) of the output.
    grids = np.meshgrid(*(np.arange(n) for n in spatial + spatial), indexing="ij")
    alpha, delta = grids[:dims], grids[dims:]
    partner = [(a + d) % n for a, d, n in zip(alpha, delta, spatial)]
    lagged = cov[(..., *alpha, *partner)]
    axes = tuple(range(cov.ndim - 2 * dims, cov.ndim - dims))
    return np.fft.fftn(lagged, axes=axes) / math.prod(spatial)


class ModeDecay(NamedTuple):
    """Measured per-mode decay of covariance perturbations over layers.

    Attributes:
      amplitude: ``(L, *spatial)``, each mode's perturbation at layer l projected on the same
        seed's perturbation at the reference layer, pooled over seeds and normalised to 1 there
        (:func:`mode_decay`).
      stderr: ``(L, *spatial)``, its jackknife standard error over seeds.
      rate: ``(*spatial,)``, exp of the least-squares slope of log amplitude over the fit window
        (nan where the window has fewer than 3 layers).
      rate_stderr: ``(*spatial,)``, the rate's jackknife standard error over seeds.
      window: ``(*spatial, 2)`` integer ``[first, last]`` layers (inclusive) of each fit.
    """

    amplitude: np.ndarray
    stderr: np.ndarray
    rate: np.ndarray
    rate_stderr: np.ndarray
    window: np.ndarray


def _projections(f, reference: int, dims: int):
    """Per seed, Re⟨F^ref, F^l⟩ and ⟨F^ref, F^ref⟩ over lags δ ≠ 0: ``(S, L, M)``, ``(S, M)``."""
    n_seeds, n_layers = f.shape[:2]
    size = math.prod(f.shape[f.ndim - dims :])
    g = f.reshape(n_seeds, n_layers, -1, size)[..., 1:]  # δ = 0 (the lengths) dropped
    ref = g[:, reference]
    cross = np.einsum("smd,slmd->slm", np.conj(ref), g).real
    return cross, np.sum(np.abs(ref) ** 2, axis=-1)


def _fit_slopes(log_amp, windows):
    """Least-squares slope of ``log_amp (L, M)`` over each column's window ``(M, 2)``."""
    layers = np.arange(log_amp.shape[0], dtype=np.float64)
    out = np.full(log_amp.shape[1], np.nan)
    for j, (a, b) in enumerate(windows):
        if b - a >= 2:
            out[j] = np.polyfit(layers[a : b + 1], log_amp[a : b + 1, j], 1)[0]
    return out


def _jackknife_se(values):
    """Jackknife standard error from leave-one-out values ``(S, ...)``."""
    n = values.shape[0]
    return np.sqrt((n - 1) / n * np.sum((values - values.mean(0)) ** 2, axis=0))


def mode_decay(samples, *, dims: int = 1, reference: int = 0, min_snr: float = 10.0) -> ModeDecay:
    """Per-mode decay rates of covariance perturbations, measured over seeds.

    Each seed's perturbation (e.g. :meth:`CNN.covariance_curvature`) is transformed by
    :func:`lag_modes`; mode m's component at layer l, F^l_m(δ), is projected over the lags
    δ ≠ 0 on the same seed's F^ref_m(δ) at the ``reference`` layer, and the projections are
    pooled over seeds: A^l_m = Σ_s Re⟨F^ref_{m,s}, F^l_{m,s}⟩ / Σ_s ‖F^ref_{m,s}‖². The linearised
    recursion acts on every lag alike, F^l_m = (λ_m χ_c*)^{l−ref} F^ref_m, so A^l_m decays as
    (λ_m χ_c*)^{l−ref} whatever the random initial profile; projecting on each seed's own profile
    removes the seed-to-seed randomness of that profile, and summing over δ coherently averages
    the finite-width noise. The rate is exp of the least-squares slope of log A over layers
    ``reference`` … up to the last layer before A first falls below ``min_snr`` jackknife
    standard errors (finite-width fluctuations then dominate); its standard error is the
    jackknife over seeds of the same fit.

    Args:
      samples: array ``(S, L, *spatial, *spatial)``: S >= 2 seeds, L layers.
      dims: number of spatial axes, 1 or 2.
      reference: the layer whose profile each seed's later layers are projected on.
      min_snr: amplitude / standard error below which a layer ends the fit window.

    Returns:
      :class:`ModeDecay`.

    Raises:
      ValueError: for a bad shape, ``dims`` or ``reference``.
    """
    _check_dims(dims)
    samples = np.asarray(samples, np.float64)
    if samples.ndim != 2 + 2 * dims or samples.shape[0] < 2:
        raise ValueError(
            f"samples must have shape (S >= 2, L, *spatial, *spatial) with {dims} spatial axes, "
            f"got {samples.shape}"
        )
    n_seeds, n_layers = samples.shape[:2]
    if isinstance(reference, bool) or not 0 <= int(reference) < n_layers:
        raise ValueError(f"reference must be a layer index in [0, {n_layers}), got {reference!r}")
    spatial = samples.shape[2 + dims :]
    cross, norm = _projections(lag_modes(samples, dims=dims), reference, dims)
    tiny = np.finfo(np.float64).tiny
    amp = cross.sum(0) / np.maximum(norm.sum(0), tiny)  # (L, M)
    loo = (cross.sum(0) - cross) / np.maximum(norm.sum(0) - norm, tiny)[:, None, :]  # (S, L, M)
    err = _jackknife_se(loo)
    ok = amp > min_snr * err
    windows = np.zeros((amp.shape[1], 2), int)
    for j in range(amp.shape[1]):
        bad = np.flatnonzero(~ok[reference:, j])
        windows[j] = reference, reference + (bad[0] if bad.size else n_layers - reference) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        slopes = _fit_slopes(np.log(amp), windows)
        jack = np.stack([_fit_slopes(np.log(loo[s]), windows) for s in range(n_seeds)])
    rate = np.exp(slopes)
    return ModeDecay(
        amplitude=amp.reshape(n_layers, *spatial),
        stderr=err.reshape(n_layers, *spatial),
        rate=rate.reshape(spatial),
        rate_stderr=(rate * _jackknife_se(jack)).reshape(spatial),
        window=windows.reshape(*spatial, 2),
    )
