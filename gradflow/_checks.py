"""Argument checks shared by the public API: fail in Python, before tracing, with one message."""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

__all__ = [
    "integer",
    "positive_int",
    "nonnegative_int",
    "names_or_none",
    "check_finite",
    "checking_traced",
    "check_representable",
    "working_dtype",
    "floating",
    "as_float",
    "as_float_array",
    "as_matrices",
    "default_float",
    "is_nnx_variable",
]


def _is_int(value) -> bool:
    # bool is an int subclass, but True as a depth or a step count is a bug, not a 1.
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def integer(name: str, value) -> int:
    """Returns ``value`` as an int, or raises TypeError naming ``name`` if it is not an integer."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    return int(value)


def positive_int(name: str, value, minimum: int = 1) -> int:
    """Returns ``value`` as an int, or raises naming ``name`` if it is not an integer >= minimum."""
    value = integer(name, value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def nonnegative_int(name: str, value) -> int:
    """A count >= 0 (a depth, a number of layers); ValueError naming ``name`` for anything else.

    Unlike :func:`positive_int` a non-integer is a ValueError too: the mean-field and attention
    recursions have always reported both cases with one message.
    """
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def names_or_none(name: str, value, what: str = "names") -> tuple[str, ...] | None:
    """A sequence of names (not a single string) as a tuple of str, or None; TypeError otherwise.

    ``what`` says what the names name in the message (e.g. ``"group names"``).
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of {what} or None, got {value!r}")
    return tuple(str(v) for v in value)


def is_nnx_variable(x) -> bool:
    """Whether ``x`` is a ``flax.nnx.Variable`` (without importing flax.nnx: if it was never
    imported there can be none)."""
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(x, nnx.Variable)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


# Set while gradflow.checking.checked traces a function under checkify: traced arguments are then
# checked too, with checkify.check (which may only be traced inside checkify).
_TRACED_CHECKS = contextvars.ContextVar("gradflow_traced_checks", default=False)


@contextlib.contextmanager
def checking_traced() -> Iterator[None]:
    """Within the block, :func:`check_finite` also checks *traced* leaves (``checkify.check``);
    the function being traced must be wrapped in ``checkify.checkify``."""
    token = _TRACED_CHECKS.set(True)
    try:
        yield
    finally:
        _TRACED_CHECKS.reset(token)


def check_finite(name: str, tree, *, allow_inf: bool = False) -> None:
    """Raises ValueError if any concrete leaf of ``tree`` holds NaN or ±inf (traced leaves pass,
    or under :func:`checking_traced` become a ``checkify`` check with the same message).

    ``allow_inf``: only NaN is an error (training data, where an infinity can be deliberate).
    """
    bad, what = (np.isnan, "NaN") if allow_inf else (lambda a: ~np.isfinite(a), "NaN or inf")
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not _is_concrete(leaf):
            if _TRACED_CHECKS.get() and jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
                ok = ~jnp.any(jnp.isnan(leaf)) if allow_inf else jnp.all(jnp.isfinite(leaf))
                where = jax.tree_util.keystr(path)
                checkify.check(ok, f"{name}{where} contains non-finite values ({what})")
            continue
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            # NumPy, not jnp: inside an outer trace (eval_shape, jit of a closure) a jnp op on a
            # concrete constant would itself be traced and could not be tested in Python.
            if np.any(bad(np.asarray(leaf))):
                where = jax.tree_util.keystr(path)
                raise ValueError(f"{name}{where} contains non-finite values ({what})")


def floating(x) -> jax.Array:
    """``x`` as a JAX array, integers and bools cast to :func:`default_float` (floats kept)."""
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(default_float())


def as_float(name: str, x, *, minimum=None, strict=False, maximum=None) -> jax.Array:
    """A real number or array as a floating array; raises naming ``name`` for a bad concrete value.

    Concrete values must be real and finite (``maximum=inf`` allows +inf) and lie in
    [minimum, maximum] (``strict``: above ``minimum``); traced values pass unchecked.

    Args:
      name: the argument's name, for the messages.
      x: a number or an array of any shape.
      minimum: lower bound, or None.
      strict: whether ``minimum`` itself is excluded.
      maximum: upper bound, or None.

    Returns:
      Array of ``x``'s shape (:func:`floating`).

    Raises:
      TypeError: for a non-numeric or complex value.
      ValueError: for a NaN, an infinity or a value out of range.
    """
    if _is_concrete(x):
        try:
            arr = np.asarray(x)
        except Exception as exc:  # pragma: no cover - message path
            raise TypeError(f"{name} must be a number or an array, got {type(x).__name__}") from exc
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
        ):
            raise TypeError(f"{name} must be a real number or array, got {arr.dtype}")
        if np.iscomplexobj(arr):
            raise TypeError(f"{name} must be real, got a complex value")
        bad = ~np.isfinite(arr) if maximum is None or np.isfinite(maximum) else np.isnan(arr)
        if minimum is not None:
            bad = bad | ((arr <= minimum) if strict else (arr < minimum))
        if maximum is not None:
            bad = bad | (arr > maximum)
        if np.any(bad):
            lo = "" if minimum is None else (f"> {minimum}" if strict else f">= {minimum}")
            hi = "" if maximum is None else f"<= {maximum}"
            want = " and ".join(["finite", *(s for s in (lo, hi) if s)])
            shown = arr if arr.size <= 4 else f"an array with {int(np.sum(bad))} bad entries"
            raise ValueError(f"{name} must be {want}, got {shown}")
        check_representable(name, arr)
    return floating(x)


def working_dtype(arr: np.ndarray):
    """The floating dtype JAX computes ``arr`` in: its own float type (float64 only with x64),
    else :func:`default_float`."""
    kind = arr.dtype if np.issubdtype(arr.dtype, np.floating) else default_float()
    return jax.dtypes.canonicalize_dtype(kind)


def check_representable(name: str, arr, dtype=None) -> None:
    """ValueError naming ``name`` if a finite concrete value overflows the dtype it will be used in
    (1e300 passes a float64 check, then becomes inf in float32).

    Args:
      name: the argument's name, for the message.
      arr: real numbers (NumPy or Python; not traced).
      dtype: the dtype they will be cast to; default :func:`working_dtype`.
    """
    try:
        arr = np.asarray(arr)
    except jax.errors.TracerArrayConversionError:  # a traced scale: its values are not known
        return
    if not (np.issubdtype(arr.dtype, np.number) and arr.size) or np.iscomplexobj(arr):
        return
    dtype = working_dtype(arr) if dtype is None else jax.dtypes.canonicalize_dtype(dtype)
    finite = np.abs(arr[np.isfinite(arr)])
    if finite.size and np.max(finite) > np.finfo(dtype).max:
        raise ValueError(
            f"{name} = {np.max(finite):g} overflows {np.dtype(dtype).name} (largest "
            f"{np.finfo(dtype).max:.3g}); enable float64 with "
            "jax.config.update('jax_enable_x64', True)"
        )


def as_float_array(name: str, x, ndims: tuple[int, ...]):
    """Converts to a floating array, checking its rank is one of ``ndims`` and (when concrete) that
    it is finite."""
    try:
        x = jnp.asarray(x)
    except TypeError as exc:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}") from exc
    if x.ndim not in ndims:
        want = " or ".join(str(n) for n in ndims)
        raise ValueError(f"{name} must have {want} dimensions, got shape {x.shape}")
    check_finite(name, x)
    return floating(x)


def as_matrices(name: str, a, square: bool = False) -> jax.Array:
    """A floating array of finite matrices ``(..., m, n)`` (``square``: m = n); ValueError
    otherwise (finiteness checked when concrete)."""
    try:
        a = jnp.asarray(a)
    except TypeError as exc:
        raise TypeError(f"{name} must be an array of numbers, got {type(a).__name__}") from exc
    if a.ndim < 2:
        raise ValueError(f"{name} must have shape (..., m, n), got {a.shape}")
    if square and a.shape[-1] != a.shape[-2]:
        raise ValueError(f"{name} must be square, shape (..., n, n); got {a.shape}")
    check_finite(name, a)
    return floating(a)


def default_float():
    """float64 when ``jax_enable_x64`` is on, float32 otherwise."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)
