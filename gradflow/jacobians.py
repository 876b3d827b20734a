"""Exact Jacobians along a chain: step Jacobians, their backward products, input–output Jacobian.

Products of many Jacobians under- or overflow in float32 after a few dozen steps, so
:func:`backward_products` keeps every product as a unit-Frobenius-norm matrix times
``exp(log_norm)``, renormalising after each step: the direction is exact and the scale lives in
log space.

By default the products are pulled back by reverse mode: ∂h_K/∂h_k = ∂h_K/∂h_{k+1} · J_k is one
``jax.vjp`` of step k applied to the m rows of the running product (m = the size of h_K). That is
one pass of m cotangents per step, where forming J_k by ``jacfwd`` and multiplying costs about twice
as much and stores K Jacobians; the dense step Jacobians stay available (``method="jacobians"``,
:func:`step_jacobians`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct
from jax.flatten_util import ravel_pytree

from gradflow import _checks, _numerics
from gradflow.chain import Chain, Segmented, check_chain, final_state
from gradflow.chain.passes import flat_segments, identity_rows, pullback, scan_or_call

__all__ = [
    "JacobianProducts",
    "SegmentedProducts",
    "step_jacobians",
    "backward_products",
    "products_from_jacobians",
    "end_to_end",
    "input_output_jacobian",
]

_MODES = ("auto", "fwd", "rev")
_METHODS = ("vjp", "jacobians")


class JacobianProducts(NamedTuple):
    """Products of step Jacobians held in log-scale form, P = exp(log_norm) · unit.

    Attributes:
      unit: array ``(K, m, n)``, each product divided by its Frobenius norm (norm 1, or 0 if the
        product is exactly 0); m is the size of h_K, n of h_k (m = n for a :class:`Chain`).
      log_norm: array ``(K,)``, log of each product's Frobenius norm (``-inf`` for a zero product).
    """

    unit: jax.Array
    log_norm: jax.Array

    @property
    def matrices(self) -> jax.Array:
        """The products themselves, ``(K, m, n)`` (may under/overflow: prefer the log form)."""
        return self.unit * jnp.exp(self.log_norm)[:, None, None]

    def log_singular_values(self) -> jax.Array:
        """log σ_i of every product, ``(K, min(m, n))``, descending; finite at any depth."""
        s = jnp.linalg.svd(self.unit, compute_uv=False)
        return jnp.log(s) + self.log_norm[:, None]

    def log_spectral_norm(self) -> jax.Array:
        """log ‖P‖₂ of every product, ``(K,)``."""
        return self.log_singular_values()[:, 0]

    def log_condition_number(self) -> jax.Array:
        """log σ_max/σ_min of every product, ``(K,)`` (``inf`` for a singular product)."""
        ls = self.log_singular_values()
        return ls[:, 0] - ls[:, -1]


@struct.dataclass
class SegmentedProducts:
    """∂h_K/∂h_k for every step k of a :class:`~gradflow.chain.Segmented` chain, segment by segment.

    The states of different segments may differ in size, so the products are kept per segment:
    ``parts[i]`` holds segment i's steps, ``unit`` ``(L_i, m, n_i)``.

    Attributes:
      parts: tuple of :class:`JacobianProducts`, one per segment, in forward order.
      names: the name of every step, ``(K,)`` strings (static).
    """

    parts: tuple
    names: tuple = struct.field(pytree_node=False, default=())

    @property
    def log_norm(self) -> jax.Array:
        """log ‖∂h_K/∂h_k‖_F for every step, ``(K,)``."""
        return jnp.concatenate([p.log_norm for p in self.parts])

    def log_singular_values(self) -> tuple:
        """Per segment, log σ_i of every product, ``(L_i, min(m, n_i))``, descending."""
        return tuple(p.log_singular_values() for p in self.parts)

    def log_spectral_norm(self) -> jax.Array:
        """log ‖∂h_K/∂h_k‖₂ for every step, ``(K,)``."""
        return jnp.concatenate([p.log_spectral_norm() for p in self.parts])

    def log_condition_number(self) -> jax.Array:
        """log σ_max/σ_min of every product, ``(K,)``."""
        return jnp.concatenate([p.log_condition_number() for p in self.parts])

    def at(self, k: int) -> JacobianProducts:
        """The product for step k (0 ≤ k < K) as a length-1 :class:`JacobianProducts`."""
        for p in self.parts:
            if k < p.log_norm.shape[0]:
                return JacobianProducts(p.unit[k : k + 1], p.log_norm[k : k + 1])
            k -= p.log_norm.shape[0]
        raise IndexError(f"k must be < the number of steps {len(self.names)}")


def _check_mode(mode: str) -> str:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    return mode


def _jac_fn(f, mode: str, n_in: int, n_out: int):
    if mode == "auto":
        # Forward mode pushes n_in tangents and stores no residuals; reverse pulls n_out
        # cotangents: take whichever is fewer (a square step goes forward).
        mode = "rev" if n_out < n_in else "fwd"
    return jax.jacrev(f) if mode == "rev" else jax.jacfwd(f)


def _segment_jacobians(seg, mode: str):
    """The ``(L, n_out, n_in)`` Jacobians of one flat segment's steps, vmapped."""
    n_in = seg.inputs.shape[-1]
    probe = lambda h: seg.f(seg.theta(_first(seg.thetas)), h, _first(seg.xs))
    n_out = jax.eval_shape(probe, seg.inputs[0]).shape[0]

    def jac(h, t, x):
        return _jac_fn(lambda hh: seg.f(seg.theta(t), hh, x), mode, n_in, n_out)(h)

    return jax.vmap(jac)(seg.inputs, seg.thetas, seg.xs)


@functools.partial(jax.jit, static_argnames=("mode",))
def _step_jacobians(sc: Segmented, mode: str):
    return tuple(_segment_jacobians(seg, mode) for seg in flat_segments(sc)[0])


def _first(tree):
    return jax.tree_util.tree_map(lambda a: a[0], tree)


def step_jacobians(chain, *, mode: str = "auto"):
    """J_k = ∂h_{k+1}/∂h_k for every step, exact, vmapped over each segment's steps.

    Args:
      chain: a :class:`~gradflow.chain.Chain` or :class:`~gradflow.chain.Segmented` chain;
        states are flattened, so J_k is ``(n_{k+1}, n_k)``.
      mode: "fwd" (``jax.jacfwd``), "rev" (``jax.jacrev``) or "auto" (the fewer passes).

    Returns:
      For a Chain, array ``(K, n, n)``; for a Segmented chain, a tuple with one array
      ``(L_i, n_out, n_in)`` per segment.
    """
    _check_mode(mode)
    sc = check_chain(chain)
    out = _step_jacobians(sc, mode)
    return out[0] if isinstance(chain, Chain) else out


def products_from_jacobians(jacobians) -> JacobianProducts:
    """Backward products P_k = J_{K−1} ⋯ J_k for k = 0 … K−1, by one reverse ``lax.scan``.

    Args:
      jacobians: array ``(K, n, n)`` of step Jacobians.

    Returns:
      :class:`JacobianProducts`; entry k is ∂h_K/∂h_k.
    """
    jacobians = jnp.asarray(jacobians)
    if jacobians.ndim != 3 or jacobians.shape[1] != jacobians.shape[2]:
        raise ValueError(f"jacobians must have shape (K, n, n), got {jacobians.shape}")
    _checks.check_finite("jacobians", jacobians)
    return _products_by_matmul((jacobians,), jacobians.shape[-1])[0]


def _products_by_matmul(jacs, m: int):
    """Per segment of step Jacobians ``(L_i, n_out, n_in)``, the renormalised running products."""
    unit, log_c = identity_rows(m, jacs[-1].dtype)
    parts = []
    for j in reversed(jacs):

        def body(carry, jk):
            un, c = _numerics.renormalise(carry[0] @ jk, carry[1])
            return (un, c), (un, c)

        (unit, log_c), (units, logs) = scan_or_call(body, (unit, log_c), j, j.shape[0], True)
        parts.append(JacobianProducts(units, logs))
    return parts[::-1]


@functools.partial(jax.jit, static_argnames=("method", "mode"))
def _products(sc: Segmented, method: str, mode: str):
    if method == "jacobians":
        jacs = _step_jacobians(sc, mode)
        return tuple(_products_by_matmul(jacs, jacs[-1].shape[1]))
    segs, h_last, _ = flat_segments(sc)
    u, log_c = identity_rows(h_last.shape[0], h_last.dtype)
    return tuple(JacobianProducts(p.units, p.log_scale) for p in pullback(segs, u, log_c))


def backward_products(chain, *, method: str = "vjp", mode: str = "auto"):
    """∂h_K/∂h_k for every k = 0 … K−1 (backprop through depth or time), in log-scale form.

    One forward pass for the states, then one reverse pass that pulls the running product back
    through each step with ``jax.vjp`` (vmapped over its m rows), renormalised after every step,
    so it is finite at any depth. ``method="jacobians"`` instead forms every step Jacobian
    (``mode``) and multiplies them — the older route, kept for comparison.

    Args:
      chain: a :class:`~gradflow.chain.Chain` or :class:`~gradflow.chain.Segmented` chain.
      method: "vjp" (default) or "jacobians".
      mode: Jacobian mode for ``method="jacobians"``, see :func:`step_jacobians`.

    Returns:
      For a Chain, :class:`JacobianProducts` with ``unit`` ``(K, n, n)`` and ``log_norm``
      ``(K,)``; for a Segmented chain, :class:`SegmentedProducts` (products ``(m, n_k)`` with m
      the size of h_K).

    Raises:
      TypeError: if ``chain`` is not a chain or a step returns something other than arrays.
      ValueError: for an unknown ``method``/``mode`` or non-finite parameters or state.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    _check_mode(mode)
    sc = check_chain(chain)
    parts = _products(sc, method, mode)
    if isinstance(chain, Chain):
        return parts[0]
    return SegmentedProducts(parts, sc.step_names())


def end_to_end(chain) -> jax.Array:
    """∂h_K/∂h_0 by differentiating the whole rolled-out chain (the brute-force reference).

    Returns:
      Array ``(m, n)``: sizes of h_K and h_0.
    """
    sc = check_chain(chain)
    h0_flat, unravel = ravel_pytree(sc.h0)

    def run(h):
        return ravel_pytree(final_state(sc.replace(h0=unravel(h))))[0]

    return jax.jacfwd(run)(h0_flat)


def input_output_jacobian(fn, *args, mode: str = "auto") -> jax.Array:
    """The Jacobian of any callable's output with respect to its input.

    Two forms:

    - ``input_output_jacobian(fn, x)``: ``fn(x) -> y`` with any shapes; returns an array of
      shape ``y.shape + x.shape``;
    - ``input_output_jacobian(model, params, x)``: a gradflow model's ∂h_L/∂x, the last hidden
      state with respect to the input (``(n, d)`` for an MLP — Pennington et al. 2017's
      input–output Jacobian when d = n; ``(n, T, d)`` for a recurrent model).

    Args:
      fn: a callable, or a gradflow model (anything with ``features(params, x)``).
      *args: ``x``, or ``params, x``; one input without a batch axis.
      mode: "fwd", "rev" or "auto" (reverse mode when the input has more entries than the output).

    Raises:
      TypeError: if ``fn`` is not callable, or the arguments match neither form.
    """
    if len(args) == 2 and hasattr(fn, "features"):
        params, x = args
        f = lambda xx: fn.features(params, xx)
    elif len(args) == 1 and callable(fn):
        (x,), f = args, fn
    else:
        raise TypeError(
            "input_output_jacobian takes (fn, x) with fn callable, or (model, params, x) with a "
            f"gradflow model; got fn={type(fn).__name__} and {len(args)} more positional arguments"
        )
    x = _checks.as_float_array("x", x, tuple(range(8)))
    _check_mode(mode)
    try:
        y = jax.eval_shape(f, x)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"fn could not be applied to x of shape {x.shape}: {exc}") from exc
    if not hasattr(y, "shape") or not jnp.issubdtype(y.dtype, jnp.inexact):
        raise TypeError(f"fn must return one floating-point array, got {y!r}")
    return _jac_fn(f, mode, x.size, y.size)(x)
