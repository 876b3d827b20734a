"""Deep MLP (plain, residual, BatchNorm, LayerNorm) exposing its chain of hidden layers."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn

from gradflow import _checks
from gradflow import activations as _act
from gradflow import init as _init
from gradflow.chain import Chain, Layer, Segmented, final_state
from gradflow.models import _common

__all__ = ["MLP", "MLPStep", "NORMS"]

NORMS = (None, "batch", "layer")


@dataclasses.dataclass(frozen=True)
class MLPStep:
    """One hidden layer h -> φ(norm(h W + b)) (+ h for residual nets), hashable so jit caches it.

    With ``norm`` the normalised pre-activation is rescaled by the layer's learnt ``scale`` and
    ``offset`` (BatchNorm is always in training mode: statistics of the current batch, as at
    initialisation, which is where gradient propagation is analysed).
    """

    activation: _act.Activation
    norm: str | None = None
    residual: bool = False
    residual_scale: float = 1.0

    def __call__(self, theta, h, x=None):
        z = _common.readout(theta, h)
        if self.norm is not None:
            # over the feature axis ("layer") or the batch axis ("batch")
            z = _common.normalize(z, -1 if self.norm == "layer" else 0, theta)
        a = self.activation.fn(z)
        return h + self.residual_scale * a if self.residual else a


class MLP(nn.Module):
    """Deep MLP: ``depth`` hidden (Dense, [norm], activation) layers of ``width``, then a readout.

    Parameters (``params["params"]``): ``input`` (the first hidden layer, kernel ``(d, n)``),
    ``hidden`` (layers 2…depth stacked: kernel ``(depth-1, n, n)``, bias ``(depth-1, n)``, plus
    ``scale``/``offset`` with a norm) and ``readout`` (kernel ``(n, out_features)``). Residual nets
    add ``residual_scale · φ(…)`` to the state in every hidden layer after the first.

    The chain (see :meth:`chain`) is the sequence of the ``depth − 1`` hidden-to-hidden maps; its
    states are the post-activation hidden vectors h_1 … h_depth.

    Attributes:
      width: hidden width n >= 1.
      depth: number of hidden layers >= 1.
      activation: registry name or callable.
      kernel_init: weight initialiser (``gradflow.init``), called per layer.
      bias_init: bias initialiser.
      residual: whether hidden layers 2…depth are residual.
      residual_scale: multiplier on the residual branch (1/√depth keeps the forward pass bounded).
      norm: None, "batch" or "layer" (applied to every hidden pre-activation).
      out_features: readout width.
      param_dtype: parameter dtype; None for float64 under ``jax_enable_x64``, else float32.
    """

    width: int
    depth: int
    activation: _act.ActivationLike = "tanh"
    kernel_init: Any = dataclasses.field(default_factory=_init.lecun)
    bias_init: Any = dataclasses.field(default_factory=_init.zeros)
    residual: bool = False
    residual_scale: float = 1.0
    norm: str | None = None
    out_features: int = 1
    param_dtype: Any = None

    def __post_init__(self):
        _checks.positive_int("width", self.width)
        _checks.positive_int("depth", self.depth)
        _checks.positive_int("out_features", self.out_features)
        _act.get(self.activation)
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of None, 'batch', 'layer'; got {self.norm!r}")
        super().__post_init__()

    @property
    def step(self) -> MLPStep:
        return MLPStep(_act.get(self.activation), self.norm, self.residual, self.residual_scale)

    def _check_input(self, p, x):
        x = _checks.as_float_array("x", x, (1, 2))
        d = p["input"]["kernel"].shape[0]
        if x.shape[-1] != d:
            raise ValueError(
                f"x must have {d} features (the model's input width), got shape {x.shape}"
            )
        if self.norm == "batch" and (x.ndim != 2 or x.shape[0] < 2):
            raise ValueError(f"norm='batch' needs a batch x of shape (B >= 2, {d}), got {x.shape}")
        return x

    def chain(self, params, x) -> Chain:
        """The chain of hidden-to-hidden maps for input ``x``.

        Args:
          params: as returned by ``init``.
          x: input of shape ``(d,)`` or a batch ``(B, d)``; the state is then ``(n,)`` or ``(B, n)``
            (a batch is one state for BatchNorm, whose layers couple the examples).

        Returns:
          A :class:`Chain` of length ``depth − 1`` with h_0 = the first hidden layer's output.
        """
        p = _common.unwrap(params)
        x = self._check_input(p, x)
        step = self.step
        # The first layer maps d -> n; it is never residual (the shapes differ).
        h0 = dataclasses.replace(step, residual=False)(p["input"], x)
        return Chain(params=p["hidden"], xs=None, h0=h0, step=step, length=self.depth - 1)

    def full_chain(self, params, x) -> Segmented:
        """The whole network up to its last hidden state, as a Segmented chain with a stem.

        The same steps as :meth:`chain`, plus the input layer as the ``stem`` (``"input"``), so
        gradient-norm analyses (:func:`gradflow.gradients.chain_grad_norms`) cover every layer:
        step names are ``"hidden/0"`` … ``"hidden/{depth-2}"``.

        Args:
          params: as returned by ``init``.
          x: input ``(d,)`` or a batch ``(B, d)``.

        Returns:
          A :class:`~gradflow.chain.Segmented` chain of ``depth − 1`` steps.
        """
        p = _common.unwrap(params)
        chain = self.chain(params, x)
        x = self._check_input(p, x)
        first = dataclasses.replace(self.step, residual=False)
        stem = Layer(p["input"], None, _common.Stem(first), "input")
        hidden = chain.segment.replace(name="hidden")
        return Segmented(h0=chain.h0, segments=(hidden,), stem=stem, x=x)

    def features(self, params, x):
        """The last hidden state h_depth, shape ``(n,)`` or ``(B, n)``."""
        return final_state(self.chain(params, x))

    def readout(self, params, h):
        """The readout layer h @ kernel + bias: ``apply(params, x) == readout(params, features)``.

        Args:
          params: as returned by ``init`` (or the inner dict).
          h: last hidden state (:meth:`features`), shape ``(n,)`` or ``(B, n)``.

        Returns:
          Array ``(out_features,)`` or ``(B, out_features)``.
        """
        return _common.model_readout(params, h)

    @nn.compact
    def __call__(self, x):
        """Forward pass; ``x`` ``(d,)`` or ``(B, d)`` -> ``(out_features,)`` or ``(B, out)``."""
        x = _checks.as_float_array("x", x, (1, 2))
        _common.check_input_width(self, x, "x")
        dtype = _common.resolve_dtype(self.param_dtype)
        n, extra = self.width, ({"scale": 1.0, "offset": 0.0} if self.norm else None)
        kinit, binit = self.kernel_init, self.bias_init
        p = {
            "input": self.param(
                "input", _common.dense_params(kinit, binit, x.shape[-1], n, dtype, extra=extra)
            ),
            "hidden": self.param(
                "hidden", _common.dense_params(kinit, binit, n, n, dtype, self.depth - 1, extra)
            ),
            "readout": self.param(
                "readout", _common.dense_params(kinit, _init.zeros(), n, self.out_features, dtype)
            ),
        }
        return self.readout(p, self.features(p, x))
