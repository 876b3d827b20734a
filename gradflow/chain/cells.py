"""A recurrent cell unrolled over time: :func:`from_cell`."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import unfreeze

from gradflow.chain.core import Chain, same_shapes

__all__ = ["from_cell"]


@dataclasses.dataclass(frozen=True)
class _CellStep:
    """One time step of a linen RNN cell: the carry is the chain's state."""

    cell: nn.Module

    def __call__(self, theta, carry, x):
        return self.cell.apply({"params": theta}, carry, x)[0]


def from_cell(cell, params, inputs, carry=None) -> Chain:
    """A recurrent cell unrolled over time: h_{t+1} = cell(θ, h_t, x_t), θ shared by every step.

    Args:
      cell: a linen ``RNNCellBase`` (``LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell``,
        ``SimpleCell``, a user cell) or an ``nn.RNN`` wrapping one.
      params: the cell's parameters (``cell.init(...)`` output or its ``"params"``); for an
        ``nn.RNN``, its own init output (whose ``"cell"`` entry is used).
      inputs: array ``(T, d)`` or a batch ``(B, T, d)`` (batch-major, as ``nn.RNN``).
      carry: the initial carry; default ``cell.initialize_carry`` (zeros for Flax's cells).

    Returns:
      A :class:`~gradflow.chain.Chain` of length T with shared parameters: the state is the
      carry (for an LSTM the (c, h) pair), the step inputs are ``inputs`` time-major.

    Raises:
      TypeError: if ``cell`` is not a linen module or ``inputs`` is not a floating array.
      ValueError: if ``inputs`` does not have 2 or 3 dimensions or does not fit the cell (wrong
        feature size), or ``carry`` does not match the cell's carry.
    """
    if isinstance(cell, nn.RNN):
        params = unfreeze(params)
        params = params.get("params", params)
        params = params.get("cell", params)
        cell = cell.cell
    if not isinstance(cell, nn.Module):
        raise TypeError(f"cell must be a flax.linen RNN cell, got {type(cell).__name__}")
    params = unfreeze(params)
    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]
    try:
        inputs = jnp.asarray(inputs)
    except TypeError as exc:
        raise TypeError(
            f"inputs must be an array (T, d) or (B, T, d), got {type(inputs).__name__}"
        ) from exc
    if inputs.ndim not in (2, 3):
        raise ValueError(f"inputs must have shape (T, d) or (B, T, d), got {inputs.shape}")
    if not jnp.issubdtype(inputs.dtype, jnp.inexact):
        raise TypeError(f"inputs must be floating point, got dtype {inputs.dtype}")
    xs = inputs if inputs.ndim == 2 else jnp.swapaxes(inputs, 0, 1)  # time-major
    default_carry = carry is None
    if default_carry:
        carry = cell.initialize_carry(jax.random.key(0), xs.shape[1:])
    step = _CellStep(cell)
    if not default_carry:
        expected = jax.eval_shape(lambda: cell.initialize_carry(jax.random.key(0), xs.shape[1:]))
        if not same_shapes(expected, carry):
            raise ValueError(
                f"carry must have the shapes {jax.tree_util.tree_map(lambda a: a.shape, expected)}"
                f" for cell {type(cell).__name__} and these inputs, got "
                f"{jax.tree_util.tree_map(jnp.shape, carry)}"
            )
    try:
        new = jax.eval_shape(step, params, carry, xs[0])
    except Exception as exc:  # Flax raises many kinds on a shape mismatch; report one
        raise ValueError(
            f"inputs of shape {inputs.shape} (step input {xs.shape[1:]}) and carry "
            f"{jax.tree_util.tree_map(jnp.shape, carry)} do not fit cell "
            f"{type(cell).__name__} with these params: {exc}"
        ) from exc
    if not same_shapes(new, carry):
        raise ValueError(
            f"carry {jax.tree_util.tree_map(jnp.shape, carry)} does not match the carry the cell "
            f"returns, {jax.tree_util.tree_map(lambda a: a.shape, new)}"
        )
    if default_carry:
        # Flax's initialize_carry follows the cell's param_dtype, not the params it is given
        # (float64 params would meet a float32 carry): use the dtype the step returns.
        carry = jax.tree_util.tree_map(lambda c, o: jnp.asarray(c, o.dtype), carry, new)
    elif any(
        jnp.result_type(c) != o.dtype for c, o in zip(*map(jax.tree_util.tree_leaves, (carry, new)))
    ):
        raise ValueError(
            f"carry dtypes {jax.tree_util.tree_map(jnp.result_type, carry)} differ from those the "
            f"cell returns, {jax.tree_util.tree_map(lambda a: a.dtype, new)}"
        )
    return Chain(params, xs, carry, step, xs.shape[0], shared=True, name=type(cell).__name__)
