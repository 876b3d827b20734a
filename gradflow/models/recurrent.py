"""Recurrent models in the chain form: vanilla RNN (Pascanu's form), LSTM and GRU.

All three precompute the input drive ``u_t U + b`` for every step outside the recurrence, so the
chain's step is a map of the hidden state alone whose Jacobian is the backpropagated one
∂x_t/∂x_{t−1}; the recurrent weights are shared by every step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gradflow import _checks
from gradflow import activations as _act
from gradflow import init as _init
from gradflow.chain import Chain, final_state
from gradflow.models import _common

__all__ = ["RNN", "LSTM", "GRU", "RNNStep", "LSTMStep", "GRUStep"]


@dataclasses.dataclass(frozen=True)
class RNNStep:
    """Pascanu et al. 2013 (arXiv:1211.5063) eq. 11: x_t = W σ(x_{t−1}) + U u_t + b.

    In Flax's row-vector layout, ``x_t = σ(x_{t−1}) @ W + drive_t`` with ``drive_t = u_t @ U + b``.
    """

    activation: _act.Activation

    def __call__(self, theta, h, drive):
        return self.activation.fn(h) @ theta["kernel"] + drive


@dataclasses.dataclass(frozen=True)
class LSTMStep:
    """LSTM (Hochreiter & Schmidhuber 1997, with a forget gate): state (c, h), gates i f g o."""

    def __call__(self, theta, state, drive):
        c, h = state
        i, f, g, o = jnp.split(h @ theta["kernel"] + drive, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return c, jax.nn.sigmoid(o) * jnp.tanh(c)


@dataclasses.dataclass(frozen=True)
class GRUStep:
    """GRU (Cho et al. 2014): h' = (1 − z) ⊙ n + z ⊙ h, n = tanh(x_n + r ⊙ (h W_n + b_n))."""

    def __call__(self, theta, h, drive):
        rec = h @ theta["kernel"]
        xr, xz, xn = jnp.split(drive, 3, axis=-1)
        hr, hz, hn = jnp.split(rec, 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * (hn + _common.bcast(theta["bias"], hn)))
        return (1.0 - z) * n + z * h


class _Recurrent(nn.Module):
    """Shared machinery: params ``input`` (U, b), ``recurrent`` (W), ``readout``; u is (…, T, d)."""

    width: int
    input_init: Any = dataclasses.field(default_factory=_init.lecun)
    recurrent_init: Any = dataclasses.field(default_factory=_init.orthogonal)
    bias_init: Any = dataclasses.field(default_factory=_init.zeros)
    out_features: int = 1
    param_dtype: Any = None

    gates = 1  # how many n-wide blocks the input drive and the recurrent kernel have

    def __post_init__(self):
        _checks.positive_int("width", self.width)
        _checks.positive_int("out_features", self.out_features)
        super().__post_init__()

    # --- per-model hooks --------------------------------------------------------------------
    @property
    def step(self):
        raise NotImplementedError

    def _h0(self, batch_shape, dtype):
        return jnp.zeros(batch_shape + (self.width,), dtype)

    def output_state(self, state):
        """The hidden vector read out from a chain state: the state itself (the LSTM's h).

        Args:
          state: a chain state, shape ``(n,)`` or ``(B, n)``.

        Returns:
          The same array.
        """
        return state

    def _input_extra(self):
        return None

    def _recurrent_params(self, key, dtype):
        n = self.width
        return {"kernel": self.recurrent_init(key, (n, self.gates * n), dtype)}

    # --- shared -------------------------------------------------------------------------------
    def chain(self, params, u) -> Chain:
        """The chain of T state-to-state maps for inputs ``u``.

        Args:
          params: as returned by ``init``.
          u: inputs of shape ``(T, d)`` or a batch ``(B, T, d)``.

        Returns:
          A :class:`Chain` of length T with shared parameters and h_0 = 0.
        """
        p = _common.unwrap(params)
        u = _checks.as_float_array("u", u, (2, 3))
        d = p["input"]["kernel"].shape[0]
        if u.shape[-1] != d:
            raise ValueError(
                f"u must have {d} features per step (the model's input width), got {u.shape}"
            )
        drive = _common.readout(p["input"], u)  # (…, T, gates·n)
        if drive.ndim == 3:
            drive = jnp.swapaxes(drive, 0, 1)  # time-major for the scan
        h0 = self._h0(drive.shape[1:-1], drive.dtype)
        return Chain(
            params=p["recurrent"],
            xs=drive,
            h0=h0,
            step=self.step,
            length=drive.shape[0],
            shared=True,
        )

    def features(self, params, u):
        """The final hidden vector h_T, shape ``(n,)`` or ``(B, n)``."""
        return self.output_state(final_state(self.chain(params, u)))

    def readout(self, params, state):
        """The readout layer; ``apply(params, u) == readout(params, features(params, u))``.

        Args:
          params: as returned by ``init`` (or the inner dict).
          state: the final hidden vector h_T (:meth:`features`), shape ``(n,)`` or ``(B, n)``, or
            the chain's final state (for an LSTM the ``(c, h)`` pair), as :meth:`output_state`
            takes.

        Returns:
          Array ``(out_features,)`` or ``(B, out_features)``.
        """
        return _common.model_readout(params, self.output_state(state))

    @nn.compact
    def __call__(self, u):
        """Reads out h_T; ``u`` ``(T, d)`` -> ``(out,)``, ``(B, T, d)`` -> ``(B, out)``."""
        u = _checks.as_float_array("u", u, (2, 3))
        _common.check_input_width(self, u, "u")
        dtype = _common.resolve_dtype(self.param_dtype)
        n = self.width
        p = {
            "input": self.param(
                "input",
                _common.dense_params(
                    self.input_init, self.bias_init, u.shape[-1], self.gates * n, dtype
                ),
            ),
            "recurrent": self.param("recurrent", self._recurrent_params, dtype),
            "readout": self.param(
                "readout",
                _common.dense_params(_init.lecun(), _init.zeros(), n, self.out_features, dtype),
            ),
        }
        return self.readout(p, self.features(p, u))


class RNN(_Recurrent):
    """Vanilla RNN in Pascanu's form x_t = W σ(x_{t−1}) + U u_t + b, read out from x_T.

    Attributes:
      width: state size n.
      activation: σ, registry name or callable.
      input_init, recurrent_init, bias_init: initialisers for U, W and b. For a given spectral
        radius ρ of W use ``recurrent_init=gradflow.init.orthogonal(ρ)`` (then λ₁ = ρ too).
      out_features: readout width.
      param_dtype: None for float64 under ``jax_enable_x64``, else float32.
    """

    activation: _act.ActivationLike = "tanh"

    def __post_init__(self):
        _act.get(self.activation)
        super().__post_init__()

    @property
    def step(self):
        return RNNStep(_act.get(self.activation))


class LSTM(_Recurrent):
    """LSTM with state (c, h); ``forget_bias`` is added to the forget gate's input bias."""

    forget_bias: float = 1.0
    gates = 4

    @property
    def step(self):
        return LSTMStep()

    def _h0(self, batch_shape, dtype):
        z = jnp.zeros(batch_shape + (self.width,), dtype)
        return (z, z)

    def output_state(self, state):
        """h from the chain state ``(c, h)``; an ``h`` alone (:meth:`features`) is returned as is.

        Args:
          state: the pair ``(c, h)`` of arrays ``(n,)`` or ``(B, n)``, or ``h`` alone.

        Returns:
          h, shape ``(n,)`` or ``(B, n)``.
        """
        # readout takes both the chain's final state and features' h_T: an h is an array.
        return state[1] if isinstance(state, (tuple, list)) else state

    def chain(self, params, u) -> Chain:
        ch = super().chain(params, u)
        n = self.width
        # Forget-gate bias: a fixed offset on the drive (Gers et al. 2000; Jozefowicz et al. 2015).
        offset = jnp.zeros((4 * n,), ch.xs.dtype).at[n : 2 * n].set(self.forget_bias)
        return ch.replace(xs=ch.xs + _common.bcast(offset, ch.xs))


class GRU(_Recurrent):
    """GRU with reset gate applied after the recurrent matmul (as cuDNN and flax.linen.GRUCell)."""

    gates = 3

    @property
    def step(self):
        return GRUStep()

    def _recurrent_params(self, key, dtype):
        p = super()._recurrent_params(key, dtype)
        p["bias"] = jnp.zeros((self.width,), dtype)
        return p
