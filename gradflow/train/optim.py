"""Optimisers and gradient clipping as optax pieces: :func:`sgd`, :func:`adam`, :func:`rprop`.

Pascanu et al.'s gradient-norm clipping (:func:`with_clipping`) can wrap any of them
(``clip_norm=``); Rprop's sign-based steps are immune to the gradient's scale.
"""

from __future__ import annotations

import jax
import numpy as np
import optax

from gradflow import _checks

__all__ = ["with_clipping", "sgd", "adam", "rprop"]


def with_clipping(
    optimizer: optax.GradientTransformation, max_norm
) -> optax.GradientTransformation:
    """``optimizer`` applied to gradients rescaled to global norm ≤ ``max_norm``.

    Pascanu, Mikolov & Bengio 2013 (arXiv:1211.5063), §3.2, Algorithm 1: if ‖g‖ ≥ threshold then
    g ← threshold · g/‖g‖. ``max_norm`` may be a traced scalar (``inf`` disables clipping), so
    clipped and unclipped runs can share one ``vmap``.
    """
    if not isinstance(max_norm, jax.Array):
        if not np.isscalar(max_norm) or not float(max_norm) > 0:
            raise ValueError(f"max_norm must be a positive number, got {max_norm!r}")
    return optax.chain(optax.clip_by_global_norm(max_norm), optimizer)


def _maybe_clip(opt, clip_norm):
    return opt if clip_norm is None else with_clipping(opt, clip_norm)


def _check_learning_rate(learning_rate):
    """A positive finite number, or a schedule (a callable step -> rate) or traced value as is:
    a negative rate would train uphill without any error."""
    if not (callable(learning_rate) or isinstance(learning_rate, jax.core.Tracer)):
        # Validation only: the value itself goes to optax unchanged (inside a jit trace the
        # checked copy would be a traced constant).
        _checks.as_float("learning_rate", learning_rate, minimum=0.0, strict=True)
    return learning_rate


def sgd(learning_rate, *, momentum=None, nesterov=False, clip_norm=None):
    """``optax.sgd``, optionally after :func:`with_clipping`.

    Raises:
      ValueError: ``learning_rate`` <= 0 or not finite, ``momentum`` outside [0, 1).
    """
    learning_rate = _check_learning_rate(learning_rate)
    if momentum is not None and not isinstance(momentum, jax.core.Tracer):
        _checks.as_float("momentum", momentum, minimum=0.0)
        if not momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    return _maybe_clip(optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov), clip_norm)


def adam(learning_rate, *, clip_norm=None, **kwargs):
    """``optax.adam``, optionally after :func:`with_clipping`.

    Raises:
      ValueError: ``learning_rate`` <= 0 or not finite.
    """
    return _maybe_clip(optax.adam(_check_learning_rate(learning_rate), **kwargs), clip_norm)


def rprop(learning_rate, *, clip_norm=None, **kwargs):
    """Sign-based Rprop (Riedmiller & Braun 1993) — ``optax.rprop``, optionally clipped.

    Each weight's step adapts to the *sign* history of its own gradient, so a layer whose gradient
    has vanished by orders of magnitude still moves at full speed (the remedy Wikipedia's
    "vanishing gradient problem" lists). It is a full-batch method: use large batches.
    """
    return _maybe_clip(optax.rprop(_check_learning_rate(learning_rate), **kwargs), clip_norm)
