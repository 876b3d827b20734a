"""Measurements: what a sweep computes at one point, and the built-in ones on gradflow's MLP.

A :class:`Measurement` wraps ``fn(point, **options) -> pytree of arrays``; :func:`measurement`
builds one from a registry name (:data:`MEASUREMENTS`), a ``"module:function"`` path or a
callable. The built-in measurements draw an MLP from the point (:func:`mlp_from_point`) with
these axes (defaults in brackets): depth, width, activation ["tanh"], init ["gaussian"], seed
[0], sigma_w [1] (gaussian only), init_scale [1], init_mean [0], sigma_b [0].

This is the only module of :mod:`gradflow.sweep` that imports :mod:`gradflow.models`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradflow import _checks, activations, gradients, init, jacobians, lyapunov, models

# DEFAULT_STATIC, MEASUREMENTS and MLP_AXES are public too, listed in the package's __all__.
__all__ = [
    "option_kinds",
    "Measurement",
    "measurement",
    "mlp_from_point",
    "mlp_measurement",
    "MSEAtInit",
    "mse_at_init",
    "log10_first_over_last",
    "top_lyapunov",
    "jacobian_spectrum",
    "layer_grad_norms",
    "lyapunov_exponent",
]

# Axis names that change shapes or code unless a sweep says otherwise; any axis with a
# non-numeric value (a string, a bool) is static too.
DEFAULT_STATIC = frozenset(
    {"depth", "width", "activation", "init", "norm", "residual", "batch", "input_dim", "steps", "k"}
)

# Registry names of measurements that moved out of this package; they still resolve, by their
# "module:attribute" path, so that sweep files naming them keep working.
_MOVED = {"gradient_diagnostics": "gradflow.experiments.init_study:GRADIENT_DIAGNOSTICS"}


# The axes an MLP sweep point may have (:func:`mlp_from_point`) and the kind of their values:
# what the built-in measurements accept. ``float`` axes take ints too.
MLP_AXES: Mapping[str, type] = {
    "depth": int,
    "width": int,
    "activation": str,
    "init": str,
    "seed": int,
    "sigma_w": float,
    "init_scale": float,
    "init_mean": float,
    "sigma_b": float,
}
_REQUIRED_MLP_AXES = ("depth", "width")


def option_kinds(fn: Callable) -> dict[str, type | None] | None:
    """The keyword options ``fn(point, **options)`` accepts, name -> kind of value.

    The kind is the type of the default (bool, int, float or str), ``None`` for any other
    default or none. ``None`` overall when ``fn`` takes ``**kwargs`` or has no inspectable
    signature (then any option is passed through).
    """
    try:
        params = list(inspect.signature(fn).parameters.values())[1:]  # after the point
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    kinds = {}
    for p in params:
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
            d = p.default
            kinds[p.name] = type(d) if type(d) in (bool, int, float, str) else None
    return kinds


@dataclasses.dataclass(frozen=True)
class Measurement:
    """A measurement of one configuration.

    Attributes:
      fn: ``fn(point, **options) -> pytree of arrays``; ``point`` maps every axis name to its value
        (Python values for static axes, 0-d traced arrays for batched ones).
      name: identifies the measurement in the manifest (a registry name or ``module:qualname``).
      options: keyword options for ``fn``; part of the sweep's identity, so JSON values only.
      static_axes: axis names that change shapes or code for this measurement.
      output_dims: output name -> names of its trailing dimensions (optional).
      axes: the axes it reads, name -> kind of value (``int``, ``float``, ``str``, ``bool``);
        a sweep with any other axis, or a value of another kind, is refused before any work.
        ``None`` (default for your own functions): any axis.
      required_axes: axes every sweep of it must have.
    """

    fn: Callable[..., Any]
    name: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    static_axes: frozenset = DEFAULT_STATIC
    output_dims: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    axes: Mapping[str, type] | None = None
    required_axes: tuple[str, ...] = ()

    def __call__(self, point: Mapping[str, Any]):
        return self.fn(point, **self.options)


def measurement(fn_or_name, /, **options) -> Measurement:
    """A :class:`Measurement` from a registry name, a ``"module:function"`` path or a callable.

    Args:
      fn_or_name: a key of :data:`MEASUREMENTS`, ``"package.module:function"`` (imported), a
        callable ``fn(point, **options)``, or a :class:`Measurement` (options are merged).
      **options: keyword options passed to the function on every call (JSON values).

    Raises:
      ValueError: unknown name or non-JSON options. TypeError: not a name or callable.
    """
    if isinstance(fn_or_name, Measurement):
        return dataclasses.replace(fn_or_name, options={**fn_or_name.options, **options})
    if isinstance(fn_or_name, str):
        if fn_or_name in MEASUREMENTS:
            base = MEASUREMENTS[fn_or_name]
            return dataclasses.replace(base, options={**base.options, **options})
        fn_or_name = _MOVED.get(fn_or_name, fn_or_name)
        if ":" not in fn_or_name:
            raise ValueError(
                f"unknown measurement {fn_or_name!r}; expected one of {', '.join(MEASUREMENTS)} "
                "or 'package.module:function'"
            )
        module, _, attr = fn_or_name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot import measurement {fn_or_name!r}: {exc}") from exc
        return measurement(fn, **options)  # a Measurement object or a plain function
    if not callable(fn_or_name):
        raise TypeError(
            f"measure must be a measurement name or a callable, got {type(fn_or_name).__name__}"
        )
    name = f"{getattr(fn_or_name, '__module__', '?')}:{getattr(fn_or_name, '__qualname__', '?')}"
    return Measurement(fn_or_name, name, dict(options))


def mlp_from_point(point: Mapping[str, Any], **mlp_kwargs):
    """The gradflow MLP a sweep point describes; its scales may be traced (batched) values.

    Kernels are ``init_scale · σ_w · W₀ + init_mean / fan_in`` with W₀ drawn by the ``init``
    initialiser (``"gaussian"`` is N(0, 1/fan_in), so with σ_w it is N(0, σ_w²/fan_in), the
    mean-field parametrisation); ``init_mean`` is the mean *times the fan-in*, so −8 is Yilmaz &
    Poli's mean −8/N. Biases are N(0, σ_b²).

    Args:
      point: dict with ``depth`` and ``width`` (static ints) and optionally ``activation``,
        ``init`` (a name of :func:`gradflow.init.get`), ``sigma_w`` (``init="gaussian"`` only),
        ``init_scale``, ``init_mean``, ``sigma_b`` (numbers or 0-d arrays).
      **mlp_kwargs: further :class:`gradflow.models.MLP` fields (``residual``, ``norm`` …).

    Returns:
      The :class:`gradflow.models.MLP`.

    Raises:
      ValueError: missing depth/width, an unknown init, or ``sigma_w`` with another init.
    """
    for k in ("depth", "width"):
        if k not in point:
            raise ValueError(f"the sweep point needs a {k!r} axis (or option), got {sorted(point)}")
    activation = point.get("activation", "tanh")
    name = point.get("init", "gaussian")
    if "sigma_w" in point and name != "gaussian":
        raise ValueError(
            f"axis sigma_w applies to init='gaussian' only (got init={name!r}); "
            "use init_scale to rescale another initialiser"
        )
    base = init.get(name, activations.get(activation))
    scale = point.get("sigma_w", 1.0) * point.get("init_scale", 1.0)
    mean = point.get("init_mean", 0.0)
    sigma_b = point.get("sigma_b", 0.0)

    def kernel_init(key, shape, dtype=jnp.float32):
        return (scale * base(key, shape, dtype) + mean / init.fan_in(shape)).astype(dtype)

    def bias_init(key, shape, dtype=jnp.float32):
        return (sigma_b * jax.random.normal(key, shape, dtype)).astype(dtype)

    return models.MLP(
        width=int(point["width"]),
        depth=int(point["depth"]),
        activation=activation,
        kernel_init=kernel_init,
        bias_init=bias_init,
        **mlp_kwargs,
    )


def _keys(point):
    key = jax.random.key(point.get("seed", 0))
    return jax.random.split(key, 3)


def _input(key, point, batch=None):
    dtype = _checks.default_float()
    d = int(point["width"])
    shape = (d,) if batch is None else (batch, d)
    return jax.random.normal(key, shape, dtype)


class MSEAtInit(NamedTuple):
    """An MLP at initialisation, a mean-squared-error problem on it and its gradient norms.

    Attributes:
      model: the :class:`gradflow.models.MLP` of the point (:func:`mlp_from_point`).
      params: its parameters, ``model.init``'s dict.
      x: inputs x ~ N(0, I_width), array ``(batch, width)``.
      y: targets y ~ N(0, 1), array ``(batch, out_features)``.
      loss: ``loss(head, h) = mean((model.readout(head, h) − y)²)`` of the last hidden state h
        ``(batch, width)``.
      head: the readout's parameters as ``loss`` takes them, ``{"readout": {kernel, bias}}``.
      norms: :class:`gradflow.gradients.NamedNorms` ``(depth + 1,)``: ‖∂L/∂θ_l‖, input layer
        first, readout last.
      key: the point's third key (``y`` was drawn from it), for further draws.
    """

    model: Any
    params: Any
    x: jax.Array
    y: jax.Array
    loss: Callable
    head: Any
    norms: gradients.NamedNorms
    key: jax.Array


def mse_at_init(point: Mapping[str, Any], *, batch: int = 16, residual: bool = False):
    """The point's MLP at initialisation and its MSE loss's per-layer gradient norms.

    The norms come from the renormalised reverse pass along the whole network
    (:func:`gradflow.gradients.chain_grad_norms`): at depth a sigmoid net's float32 ``jax.grad``
    is exactly 0 for most layers, its log-norm is not.

    Args:
      point: a sweep point (see :func:`mlp_from_point`; ``seed`` picks the keys).
      batch: rows of data.
      residual: a residual MLP.

    Returns:
      :class:`MSEAtInit`.
    """
    kp, kx, ky = _keys(point)
    model = mlp_from_point(point, residual=residual)
    params = model.init(kp, jnp.zeros((int(point["width"]),), _checks.default_float()))
    x = _input(kx, {"width": model.width}, batch)
    y = jax.random.normal(ky, (batch, model.out_features), x.dtype)

    def loss(head, h):
        return jnp.mean((model.readout(head, h) - y) ** 2)

    head = {"readout": params["params"]["readout"]}
    chain = model.full_chain(params, x)
    norms = gradients.chain_grad_norms(chain, loss, head_params=head, head_name="readout")
    return MSEAtInit(model, params, x, y, loss, head, norms, ky)


def log10_first_over_last(norms: gradients.NamedNorms) -> jax.Array:
    """log10 of the first over the last *hidden* layer's gradient norm (readout last in ``norms``).

    A difference of logs: the ratio of plain norms would be 0/0 once both underflow.
    """
    return norms.log10[0] - norms.log10[-2]


def top_lyapunov(jacobians_or_chain, key):
    """Top Lyapunov exponent along a chain, in nats per step (mean log growth of one vector).

    :func:`gradflow.lyapunov.lyapunov_spectrum` with k = 1.

    Args:
      jacobians_or_chain: step Jacobians ``(K, n, n)`` or a :class:`~gradflow.chain.Chain`.
      key: ``jax.random`` key for the initial vector.

    Returns:
      Scalar, nats per step.
    """
    return lyapunov.lyapunov_spectrum(jacobians_or_chain, k=1, key=key)[0]


def jacobian_spectrum(point, *, residual: bool = False):
    """Singular values of ∂h_depth/∂h_1 and the norms of every backward product, for one input.

    Input x ~ N(0, I_width); the chain is the MLP's ``depth − 1`` hidden-to-hidden maps.

    Returns:
      dict with ``log_singular_values`` ``(width,)`` (natural log, descending) and ``log_norm``
      ``(depth − 1,)``, log ‖∂h_depth/∂h_k‖_F for k = 1 … depth − 1.
    """
    kp, kx, _ = _keys(point)
    model = mlp_from_point(point, residual=residual)
    x = _input(kx, point)
    params = model.init(kp, x)
    products = jacobians.backward_products(model.chain(params, x))
    # Only the full product's SVD: the others would cost (depth − 2) more SVDs for nothing.
    s = jnp.linalg.svd(products.unit[0], compute_uv=False)
    return {"log_singular_values": jnp.log(s) + products.log_norm[0], "log_norm": products.log_norm}


def layer_grad_norms(point, *, batch: int = 16, residual: bool = False):
    """Per-layer gradient norms of a mean-squared-error loss at initialisation.

    Data x ~ N(0, I_width) (``batch`` rows), targets y ~ N(0, 1).

    Returns:
      dict with ``layer_grad_norms`` ``(depth + 1,)`` (input layer first, readout last) and
      ``log10_first_over_last``: log10 of first over last *hidden* layer's gradient norm.
    """
    norms = mse_at_init(point, batch=batch, residual=residual).norms
    return {"layer_grad_norms": norms.values, "log10_first_over_last": log10_first_over_last(norms)}


def lyapunov_exponent(point, *, residual: bool = False):
    """Top Lyapunov exponent of the MLP's hidden chain for one input x ~ N(0, I) (see
    :func:`top_lyapunov`). Returns ``{"lyapunov": scalar}``."""
    kp, kx, kv = _keys(point)
    model = mlp_from_point(point, residual=residual)
    x = _input(kx, point)
    params = model.init(kp, x)
    return {"lyapunov": top_lyapunov(model.chain(params, x), kv)}


def mlp_measurement(fn: Callable, name: str, **output_dims) -> Measurement:
    """A :class:`Measurement` of an MLP sweep point: it accepts :data:`MLP_AXES` and needs
    ``depth`` and ``width``. ``output_dims``: output name -> its trailing dimensions' names."""
    return Measurement(
        fn,
        name,
        output_dims=output_dims,
        axes=MLP_AXES,
        required_axes=_REQUIRED_MLP_AXES,
    )


MEASUREMENTS: dict[str, Measurement] = {
    "jacobian_spectrum": mlp_measurement(
        jacobian_spectrum,
        "jacobian_spectrum",
        log_singular_values=("singular_value",),
        log_norm=("layer",),
    ),
    "layer_grad_norms": mlp_measurement(
        layer_grad_norms, "layer_grad_norms", layer_grad_norms=("layer",)
    ),
    "lyapunov": mlp_measurement(lyapunov_exponent, "lyapunov"),
}
