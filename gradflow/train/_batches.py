"""Batch sources of the training loops (package-private): counting, stacking, pulling, indexing.

Batches come stacked (a pytree with a leading axis of S steps), from an iterator, or from a
``batch_fn(key, step)``; these helpers tell them apart, validate them before tracing and turn an
iterator's batches into fixed-size stacked segments.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gradflow import _checks

__all__ = ["num_steps", "filled", "source_kind", "check_key", "pull", "index"]


def num_steps(batches) -> int:
    leaves = jax.tree_util.tree_leaves(batches)
    if not leaves:
        raise ValueError("batches must be a pytree of arrays with a leading axis of S steps")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "batches leaves must share a leading axis of S steps, got shapes "
            f"{[np.shape(x) for x in leaves]}"
        )
    (s,) = sizes
    if s < 1:
        raise ValueError("batches must hold at least one step (leading axis S >= 1)")
    return int(s)


def filled(shapes, value):
    """Arrays of ``shapes`` (a pytree of ``ShapeDtypeStruct``) filled with ``value`` (0 where the
    dtype is not inexact)."""
    return jax.tree_util.tree_map(
        lambda s: jnp.full(s.shape, value if jnp.issubdtype(s.dtype, jnp.inexact) else 0, s.dtype),
        shapes,
    )


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def source_kind(batches) -> str:
    """``"stacked"`` (a pytree of arrays), ``"fn"`` (batch_fn) or ``"iter"`` (an iterable that is
    not a pytree container: an iterator, a generator, a data loader)."""
    if _is_array(batches):
        return "stacked"
    if callable(batches) and not hasattr(batches, "__next__"):
        return "fn"
    leaves = jax.tree_util.tree_leaves(batches)
    if (
        len(leaves) == 1
        and leaves[0] is batches
        and not isinstance(batches, (str, bytes))
        and (hasattr(batches, "__iter__") or hasattr(batches, "__next__"))
    ):
        return "iter"
    return "stacked"


def check_key(key) -> None:
    if key is None:
        raise ValueError(
            "key is required with a batch_fn (batches=callable): pass key=jax.random.key(…)"
        )
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    raw = dtype == np.uint32 and np.shape(key) == (2,)
    if not ((typed and np.shape(key) == ()) or raw):
        raise TypeError(
            f"key must be a PRNG key (jax.random.key or jax.random.PRNGKey), got {key!r}"
        )


def _signature(batch):
    leaves, treedef = jax.tree_util.tree_flatten(batch)
    return treedef, tuple((np.shape(x), np.result_type(x)) for x in leaves)


def _describe(signature) -> str:
    treedef, leaves = signature
    shapes = ", ".join(f"{dtype}{list(shape)}" for shape, dtype in leaves)
    return f"{treedef} with leaves [{shapes}]"


def pull(iterator, want: int, length: int, signature, t0: int):
    """Up to ``want`` batches from ``iterator``, checked against ``signature`` (step 0's) and
    stacked on a leading axis of ``length`` (the last batch repeated as padding).

    Returns:
      ``(count, stacked or None, signature)``.
    """
    batches = []
    for i in range(want):
        try:
            batch = next(iterator)
        except StopIteration:
            break
        sig = _signature(batch)
        if signature is None:
            if not sig[1]:
                raise ValueError(f"batches: the iterator's first batch has no arrays: {batch!r}")
            signature = sig
        elif sig != signature:
            raise ValueError(
                f"batches: the batch at step {t0 + i} is {_describe(sig)}, but step 0's was "
                f"{_describe(signature)}; every batch must have the same structure, shapes and "
                "dtypes"
            )
        # Host data is checked as it arrives (device arrays are not pulled back for it): a NaN
        # in the data is named as such, not reported later as a diverging loss.
        host = [x for x in jax.tree_util.tree_leaves(batch) if isinstance(x, np.ndarray)]
        _checks.check_finite(f"batches (the batch at step {t0 + i})", host, allow_inf=True)
        batches.append(batch)
    count = len(batches)
    if not count:
        return 0, None, signature
    # Always `length` batches, so that every segment, the last one included, runs the one
    # compiled segment function (the padding steps are skipped inside it).
    batches += [batches[-1]] * (length - count)
    on_device = all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(batches[0]))
    stack = jnp.stack if on_device else np.stack
    return count, jax.tree_util.tree_map(lambda *xs: stack(xs), *batches), signature


def index(tree, i):
    return jax.tree_util.tree_map(
        lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), tree
    )
