"""Running several experiment programs at once: each traced on the calling thread, then compiled
and run on a small thread pool, so that XLA's single-threaded compilation of one program overlaps
another's compilation or run (shared by the mitigations, init_training and long_memory studies)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import jax

__all__ = ["Pending", "compile_pool"]


class Pending(NamedTuple):
    """Training runs on their way: traced, then compiled and run on a thread pool.

    Attributes:
      results: per run, a :class:`concurrent.futures.Future` of its outputs (on the device).
      to_records: per run, ``f(host outputs) -> list[dict]``, its records.
    """

    results: list[Future]
    to_records: list[Callable[[Any], list[dict]]]

    def add(self, pool: Executor, fn: Callable, args: tuple, to_records) -> None:
        """Traces ``jax.jit(fn)`` at ``args`` here (under this thread's JAX settings), then
        compiles and runs it on ``pool``: the program that ``jax.jit(fn)(*args)`` would run."""
        lowered = jax.jit(fn).lower(*args)
        # Waiting for the run inside the worker matters: programs dispatched from one thread run
        # one after another, and eager operations dispatched after them wait for them too.
        self.results.append(pool.submit(lambda: jax.block_until_ready(lowered.compile()(*args))))
        self.to_records.append(to_records)

    def collect(self) -> list[dict]:
        """Waits for every run and returns their records, in the order added."""
        return [
            r
            for res, to_records in zip(self.results, self.to_records)
            for r in to_records(jax.device_get(res.result()))
        ]


@contextlib.contextmanager
def compile_pool():
    """A thread pool for :func:`start_mlp`/:func:`start_rnn`: one thread per core, at most 4
    (each XLA compilation holds a few hundred MB). Leaving the block waits for its threads."""
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        yield pool
