"""Checked mode: gradflow's argument checks inside ``jit``, reported when the function runs.

Called eagerly, every public function checks its array arguments (data, Jacobians, kernel inputs)
for NaN and inf and raises a ``ValueError`` naming the argument. Under ``jax.jit`` the arguments
are traced and their values unknown while the function is built, so those checks cannot run in
Python; :func:`checked` turns them into ``jax.experimental.checkify`` checks compiled into the
program, which raise with the same message when a bad value arrives. Off by default: each check
costs a reduction over its argument.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from jax.experimental import checkify

from gradflow import _checks

__all__ = ["checked"]


def checked(fn: Callable) -> Callable:
    """``fn`` with gradflow's finiteness checks kept under ``jit`` (``checkify``).

    Wrap the jitted function (``checked(jax.jit(f))``), not the reverse: ``checkify`` must see the
    whole program. Wrap it before its first call: ``jax.jit`` keeps the program it traced first,
    and one traced outside checked mode has no checks in it.

    Example::

        svals = gf.checked(jax.jit(gf.spectra.singular_values))
        svals(a_with_a_nan)  # JaxRuntimeError: a contains non-finite values (NaN or inf)

    Args:
      fn: any function calling gradflow's public functions, jitted or not.

    Returns:
      A function with ``fn``'s signature and results that raises
      ``jax.experimental.checkify.JaxRuntimeError`` naming the bad argument.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    checked_fn = checkify.checkify(fn)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with _checks.checking_traced():
            error, out = checked_fn(*args, **kwargs)
        error.throw()
        return out

    return run
