"""Shared test setup: strict rank promotion, a key fixture, a private matplotlib config dir and one
XLA compilation cache for the whole run."""

import os
import shutil
import tempfile

if "MPLCONFIGDIR" not in os.environ:
    os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="gradflow-mpl-")
os.environ.setdefault("MPLBACKEND", "Agg")
# XLA compilation is ~75 % of this suite's time on CPU (tests/test_train.py: 86 s cold, 21 s with
# every program cached). One cache directory for the run, set before JAX is imported and inherited
# by pytest-xdist's workers and the tests' subprocesses, compiles each identical program once per
# run. Set JAX_COMPILATION_CACHE_DIR yourself to keep the cache between runs.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="gradflow-jax-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def x64():
    """Runs the test with float64 enabled, restoring the previous setting afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def pytest_configure(config):
    # The default run compiles ~1,400 small programs and is compile-bound on CPU, so it skips
    # XLA's LLVM backend optimisations (JAX's `jax_disable_most_optimizations`: the HLO passes --
    # fusion, layout, algebraic simplification -- still run, so each test checks the same HLO
    # program a user compiles; only machine-code generation is less optimised). Measured on 2
    # cores: tests/test_train.py 71 -> 54 s, the default run 329 -> 295 s. The slow step (and any
    # run that names its own marker expression) keeps full optimisation, so CI checks both. Set
    # JAX_DISABLE_MOST_OPTIMIZATIONS yourself to choose.
    if "JAX_DISABLE_MOST_OPTIMIZATIONS" in os.environ or config.getoption("markexpr") != "not slow":
        return
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"  # inherited by the tests' subprocesses
    jax.config.update("jax_disable_most_optimizations", True)


def pytest_sessionfinish(session):
    # The process that made the cache directory removes it (with xdist: the controller, after its
    # workers have finished).
    if _OWN_CACHE and not hasattr(session.config, "workerinput"):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
