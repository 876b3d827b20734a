"""Forward and reverse passes along any chain, on flattened states, renormalised at every step.

A segment's step is seen as a map between flat vectors, ``f(theta, h_flat, x) -> h_next_flat``, so a
state of any pytree structure (an LSTM's (c, h) pair, a CNN's feature map) and any change of shape
between segments is handled by one code path; Jacobians are ``(n_out, n_in)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from gradflow import _numerics
from gradflow.chain.core import Layer, as_segmented, forward, unroll_for

__all__ = [
    "FlatSegment",
    "Pulled",
    "flat_fn",
    "flat_segments",
    "identity_rows",
    "pullback",
    "scan_or_call",
]


class FlatSegment(NamedTuple):
    """One segment as a map between flat vectors (built inside a trace; not a pytree).

    Attributes:
      f: ``f(theta, h_flat, x) -> h_next_flat``.
      inputs: the flat input state of every step, ``(L, n_in)``.
      thetas: per-step parameters with a leading axis L, or None when ``shared``.
      xs: per-step extra inputs with a leading axis L, or None.
      params: the shared parameters (``shared``) or None.
      shared: whether every step uses ``params``.
      length: L.
    """

    f: Callable
    inputs: jax.Array
    thetas: Any
    xs: Any
    params: Any
    shared: bool
    length: int

    def theta(self, t):
        return self.params if self.shared else t


def flat_fn(fn, h_example):
    """``fn(theta, h, x)`` as a map of flat states, for states shaped like ``h_example``."""
    _, unravel = ravel_pytree(h_example)

    def f(theta, h_flat, x):
        return ravel_pytree(fn(theta, unravel(h_flat), x))[0]

    return f


def flat_segments(chain) -> tuple[list[FlatSegment], jax.Array, Callable]:
    """Runs the chain forward: its segments as :class:`FlatSegment` s, flat h_K, h_K's unravel.

    Layers become length-1 segments, so every segment is scanned the same way.
    """
    sc = as_segmented(chain)
    inputs, h_last = forward(sc)
    out = []
    for seg, hin in zip(sc.segments, inputs):
        if isinstance(seg, Layer):
            f = flat_fn(seg.fn, hin)
            flat_in = ravel_pytree(hin)[0][None]
            lift = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], t)
            out.append(FlatSegment(f, flat_in, lift(seg.params), lift(seg.x), None, False, 1))
        else:
            example = jax.tree_util.tree_map(lambda a: a[0], hin)
            f = flat_fn(seg.step, example)
            flat_in = jax.vmap(lambda h: ravel_pytree(h)[0])(hin)
            thetas = None if seg.shared else seg.params
            out.append(
                FlatSegment(
                    f,
                    flat_in,
                    thetas,
                    seg.xs,
                    seg.params if seg.shared else None,
                    seg.shared,
                    seg.length,
                )
            )
    return (out, *ravel_pytree(h_last))


class Pulled(NamedTuple):
    """One segment's share of a renormalised reverse pass.

    Attributes:
      units: ``(L, m, n_in)``, the pulled-back cotangents at each step's input, unit Frobenius norm.
      log_scale: ``(L,)``, their log scale: the true cotangents are ``exp(log_scale) · units``.
      param_log_norms: ``(L,)``, log ‖vjp of step l w.r.t. its parameters‖ (natural log; for
        ``m > 1`` the Frobenius norm over all m rows), or None if not requested.
    """

    units: jax.Array
    log_scale: jax.Array
    param_log_norms: Any


def pullback(segments: list[FlatSegment], u, log_c, *, params: bool = False) -> list[Pulled]:
    """Pulls m cotangent rows back from h_K through every step, renormalising after each.

    Row i of the result at step k is ``u_i^T ∂h_K/∂h_k`` (times the log scale): with u = I this is
    the backward product ∂h_K/∂h_k itself, with u = ∂L/∂h_K it is the state gradient ∂L/∂h_k. Each
    step is one ``jax.vjp`` vmapped over the rows — the step Jacobian is never formed.

    Args:
      segments: from :func:`flat_segments`.
      u: array ``(m, n_K)`` of unit Frobenius norm.
      log_c: array ``()``, the log scale of ``u``.
      params: also return each step's parameter-gradient log-norm.

    Returns:
      list of :class:`Pulled`, one per segment, in forward order.
    """
    out = []
    for seg in reversed(segments):

        def body(carry, inp, seg=seg):
            un, c = carry
            h, theta, x = inp
            th = seg.theta(theta)
            if params:
                _, vjp = jax.vjp(lambda hh, tt: seg.f(tt, hh, x), h, th)
                gh, gth = jax.vmap(vjp)(un)
                plog = c + _numerics.tree_log_norm(gth)
            else:
                _, vjp = jax.vjp(lambda hh: seg.f(th, hh, x), h)
                (gh,) = jax.vmap(vjp)(un)
                plog = None
            un, c = _numerics.renormalise(gh, c)
            return (un, c), (un, c, plog)

        # The same unrolling rule as the forward scans (unroll_for): the m × n cotangent block is
        # the state here.
        (u, log_c), (units, logs, plogs) = scan_or_call(
            body,
            (u, log_c),
            (seg.inputs, seg.thetas, seg.xs),
            seg.length,
            reverse=True,
            unroll=unroll_for(seg.length, u.size),
        )
        out.append(Pulled(units, logs, plogs))
    return out[::-1]


def scan_or_call(body, carry, xs, length: int, reverse: bool = False, unroll: bool = False):
    """``lax.scan``, or for one step a plain call (a shape-changing Layer changes the carry).

    ``unroll``: fully unroll the scan (see :func:`gradflow.chain.core.unroll_for`).
    """
    if length != 1:
        return jax.lax.scan(
            body, carry, xs, length=length, reverse=reverse, unroll=True if unroll else 1
        )
    carry, y = body(carry, jax.tree_util.tree_map(lambda a: a[0], xs))
    return carry, jax.tree_util.tree_map(lambda a: a[None], y)


def identity_rows(n: int, dtype):
    """``(I_n / √n, log √n)``: the identity as unit-norm rows and its log scale."""
    return (
        jnp.eye(n, dtype=dtype) / jnp.sqrt(jnp.asarray(n, dtype)),
        0.5 * jnp.log(jnp.asarray(n, dtype)),
    )
