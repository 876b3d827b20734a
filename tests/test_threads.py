"""gradflow.threads: jaxlib's LAPACK pinned to one OpenBLAS thread at import, with a switch."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow import threads

FOUND = threads.lapack_info().library is not None
needs_lib = pytest.mark.skipif(not FOUND, reason="no SciPy OpenBLAS in this process")


def _info_in_subprocess(value, full=False):
    env = dict(os.environ)
    env.pop(threads.ENV_VAR, None)
    if value is not None:
        env[threads.ENV_VAR] = value
    # The module alone (it imports nothing from gradflow): 0.3 s instead of 3 s for all of gradflow;
    # that importing gradflow applies the variable is checked in this process and in the slow test.
    code = (
        "import importlib.util as u, sys; s = u.spec_from_file_location('t', sys.argv[1]); "
        "t = u.module_from_spec(s); s.loader.exec_module(t); i = t.configure_from_env(); "
        "print(i.num_threads, i.setting)"
    )
    if full:
        code = (
            "import gradflow as gf; i = gf.threads.lapack_info(); print(i.num_threads, i.setting)"
        )
    return subprocess.run(
        [sys.executable, "-c", code, threads.__file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@needs_lib
def test_import_pins_the_library_jaxlib_calls():
    info = threads.lapack_info()
    assert "scipy" in info.library and "numpy.libs" not in info.library
    # The conftest may not set the variable: the default is one thread.
    if os.environ.get(threads.ENV_VAR) is None:
        assert info.num_threads == 1 and info.setting == "1"


@needs_lib
def test_context_manager_sets_and_restores():
    before = threads.lapack_info().num_threads
    with threads.lapack_threads(2) as inside:
        assert inside.num_threads == 2 and threads.lapack_info().num_threads == 2
    assert threads.lapack_info().num_threads == before


@needs_lib
def test_thread_count_does_not_change_the_answer():
    # The same batched SVD with 1 and 2 OpenBLAS threads: threads only split independent work
    # (blocked updates), so the values agree to float32 rounding of the bidiagonalisation.
    a = jax.random.normal(jax.random.key(0), (6, 64, 64), jnp.float32)
    svd = jax.jit(lambda m: jnp.linalg.svd(m, compute_uv=False))
    one = np.asarray(svd(a))
    with threads.lapack_threads(2):
        two = np.asarray(svd(a + 0.0).block_until_ready())
    ref = np.linalg.svd(np.asarray(a, np.float64), compute_uv=False)
    np.testing.assert_allclose(one, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(two, ref, rtol=1e-4, atol=1e-4)


@needs_lib
@pytest.mark.parametrize(("value", "expect"), [(None, "1 1"), ("2", "2 2"), ("off", " off")])
def test_environment_switch(value, expect):
    out = _info_in_subprocess(value)
    assert out.returncode == 0, out.stderr
    count, setting = out.stdout.split()
    want_count, want_setting = expect.split(" ") if value != "off" else (None, "off")
    assert setting == want_setting
    if want_count is not None:
        assert int(count) == int(want_count)
    else:  # "off": OpenBLAS's own default (its thread count is the core count or its cap)
        assert int(count) >= 1


@pytest.mark.parametrize("full", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_bad_environment_value_names_the_variable(full):
    out = _info_in_subprocess("two", full)
    assert out.returncode != 0
    assert threads.ENV_VAR in out.stderr and "ValueError" in out.stderr


@pytest.mark.parametrize("bad", [0, -1, "x", 1.5, True, None])
def test_bad_thread_count(bad):
    with pytest.raises(ValueError, match="n must be"):
        threads.set_lapack_threads(bad)


def test_public_module():
    assert gf.threads is threads
    assert set(threads.__all__) >= {"lapack_info", "set_lapack_threads", "lapack_threads"}
