"""Lyapunov spectra by QR: closed forms (Newman, scaled orthogonal, linear maps), chain vs stored
Jacobians, finite-time convergence, jit/vmap, and argument errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import polygamma

from gradflow import init, jacobians, lyapunov, theory
from gradflow.chain import Chain
from gradflow.models import RNN

EPS32 = float(np.finfo(np.float32).eps)


def _linear_rnn_chain(kernel_init, n, steps, key=0):
    """A linear RNN with zero input and h_0 = 0: the state stays 0 and every J_k = Wᵀ."""
    model = RNN(width=n, activation="linear", recurrent_init=kernel_init)
    u = jnp.zeros((steps, 1))
    params = model.init(jax.random.key(key), u)
    return model.chain(params, u), params["params"]["recurrent"]["kernel"]


def _newman_standard_errors(n, steps):
    """Exact standard error of each QR exponent estimate for products of N(0, 1/n) matrices.

    With Q_k orthonormal and independent of the Gaussian J_k, J_k Q_k is again an i.i.d. Gaussian
    matrix (rotation invariance), so by Bartlett's decomposition n·R_ii² ~ χ²_{n−i+1}, independent
    over i and over steps. Var(log χ²_ν) = ψ'(ν/2), hence Var(log R_ii) = ψ'((n−i+1)/2)/4 and the
    mean over K steps has standard error √(ψ'((n−i+1)/2) / (4K)).
    """
    i = jnp.arange(1, n + 1)
    return np.asarray(jnp.sqrt(polygamma(1, (n - i + 1) / 2.0) / (4.0 * steps)))


def test_gaussian_products_match_newman():
    n, steps = 8, 10_000
    jac = jax.random.normal(jax.random.key(1), (steps, n, n)) / np.sqrt(n)
    lam = np.asarray(lyapunov.lyapunov_spectrum(jac))
    exact = np.asarray(theory.newman_lyapunov_exponents(n))
    se = _newman_standard_errors(n, steps)
    # 5 standard errors per exponent: a false failure has probability 6e-7 per exponent; float32
    # rounding (~1e-6 on the mean) is far below se (0.003 … 0.011 here).
    np.testing.assert_array_less(np.abs(lam - exact), 5 * se)
    # The estimate is also statistically *efficient*: the sum of squared z-scores is χ²_8-like
    # (mean 8); 40 is its 1 − 2e-6 quantile. A biased estimator fails this long before 5σ.
    assert np.sum(((lam - exact) / se) ** 2) < 40


def test_gaussian_products_scaled_variance():
    # σ² only shifts every exponent by ½ log σ² (Newman eq. 4); check it with a different scale.
    n, steps, sigma2 = 4, 4000, 3.0
    jac = jax.random.normal(jax.random.key(2), (steps, n, n)) * np.sqrt(sigma2 / n)
    lam = np.asarray(lyapunov.lyapunov_spectrum(jac))
    exact = np.asarray(theory.newman_lyapunov_exponents(n, sigma2))
    # 5 standard errors, as above (the scale does not change the log-variance).
    np.testing.assert_array_less(np.abs(lam - exact), 5 * _newman_standard_errors(n, steps))


@pytest.mark.parametrize("scale", [1e-3, 0.5, 2.0, 1e3])
def test_scaled_orthogonal_exact_in_float32(scale):
    n, steps = 16, 10_000
    jac = jax.random.orthogonal(jax.random.key(3), n, shape=(steps,)) * jnp.float32(scale)
    assert jac.dtype == jnp.float32
    # The raw product would be 0 or inf in float32: scale^10000 is far outside its range.
    with np.errstate(over="ignore", under="ignore"):
        raw = np.float32(scale) ** np.float32(steps)
    assert raw == 0 or np.isinf(raw)
    lam = np.asarray(lyapunov.lyapunov_spectrum(jac))
    assert lam.dtype == np.float32
    # Each log|R_ii| equals log(scale) to a few ulps (QR of s·O is s·O up to rounding) and the
    # compensated sum adds no growing error, so the mean is log(scale) to a few float32 ulps:
    # 4 eps relative to max(1, |log s|) (observed: 0 or 1 ulp).
    tol = 4 * EPS32 * max(1.0, abs(np.log(scale)))
    np.testing.assert_allclose(lam, np.log(np.float32(scale)), rtol=0, atol=tol)


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_scaled_orthogonal_chain_exact_in_float32(scale):
    # The same on a chain (J computed on the fly): W = s·O, so every exponent is log s.
    chain, _ = _linear_rnn_chain(init.orthogonal(scale), n=16, steps=10_000)
    lam = np.asarray(lyapunov.lyapunov_spectrum(chain))
    assert lam.dtype == np.float32 and np.all(np.isfinite(lam))
    # Same few-ulp tolerance as for the stored orthogonal products above.
    np.testing.assert_allclose(lam, np.log(np.float32(scale)), rtol=0, atol=4 * EPS32)


def test_linear_rnn_top_exponent_is_log_spectral_radius(x64):
    steps = 4000
    chain, kernel = _linear_rnn_chain(init.gaussian(1.0), n=8, steps=steps, key=5)
    kernel = np.asarray(kernel)
    log_eigs = np.sort(np.log(np.abs(np.linalg.eigvals(kernel))))[::-1]
    lam = np.asarray(lyapunov.lyapunov_spectrum(chain))
    # For a fixed linear map the finite-K error is (1/K)·log of a constant set by the eigenvector
    # conditioning and the initial frame's overlap with the eigenvectors (measured ≈ 1.05/K for
    # this key); 20/K = 0.005 leaves a 20× margin. A wrong target — log of the largest singular
    # value — differs by > 0.3, so the test discriminates.
    tol = 20.0 / steps
    assert abs(lam[0] - log_eigs[0]) < tol
    assert abs(np.log(np.linalg.norm(kernel, 2)) - log_eigs[0]) > 50 * tol
    # All exponents of a linear map are log|eigenvalues| (complex pairs give equal exponents).
    np.testing.assert_allclose(lam, log_eigs, atol=tol)


def test_finite_time_converges():
    steps = 4000
    chain, kernel = _linear_rnn_chain(init.gaussian(1.0), n=8, steps=steps, key=5)
    top = np.max(np.log(np.abs(np.linalg.eigvals(np.asarray(kernel, np.float64)))))
    ft = lyapunov.finite_time_spectrum(chain, k=2)
    assert ft.running.shape == ft.log_growth.shape == (steps, 2)
    # The last running estimate is the spectrum; running is the cumulative mean of log_growth.
    np.testing.assert_allclose(np.sort(ft.running[-1])[::-1], ft.exponents, rtol=1e-6)
    cummean = (
        np.cumsum(np.asarray(ft.log_growth, np.float64), axis=0) / np.arange(1, steps + 1)[:, None]
    )
    # float32 running sums vs a float64 cumsum of the same terms: 1e-5 absolute covers rounding.
    np.testing.assert_allclose(ft.running, cummean, atol=1e-5)
    err = np.abs(np.asarray(ft.running[:, 0], np.float64) - top)
    t = np.array([10, 100, 1000, 4000])
    # O(1/t) convergence for a linear map: t·err stays bounded (≈ 1 here; 3 is a 3× margin) while
    # err itself falls by over two decades from t = 10 to t = 4000.
    assert np.all(t * err[t - 1] < 3.0)
    assert err[-1] < err[9] / 100


def test_finite_time_gaussian_within_standard_error():
    # i.i.d. products: the finite-time error shrinks like 1/√t (the exact standard errors above).
    n, steps = 4, 10_000
    jac = jax.random.normal(jax.random.key(7), (steps, n, n)) / np.sqrt(n)
    ft = lyapunov.finite_time_spectrum(jac)
    exact = np.asarray(theory.newman_lyapunov_exponents(n))
    for t in (100, 1000, 10_000):
        # 5 standard errors at each checkpoint (3 checkpoints × 4 exponents: ~7e-6 false alarms).
        err = np.abs(np.asarray(ft.running[t - 1]) - exact)
        np.testing.assert_array_less(err, 5 * _newman_standard_errors(n, t))


def _tanh_chain(n=6, steps=300, gain=2.0):
    model = RNN(
        width=n,
        activation="tanh",
        recurrent_init=init.gaussian(gain),
        input_init=init.gaussian(1.0),
    )
    u = jax.random.normal(jax.random.key(3), (steps, 2))
    params = model.init(jax.random.key(0), u)
    return model.chain(params, u)


def test_chain_matches_stored_jacobians(x64):
    chain = _tanh_chain()
    a = lyapunov.lyapunov_spectrum(chain)
    b = lyapunov.lyapunov_spectrum(jacobians.step_jacobians(chain))
    # Same states, same frame, jvp vs jacfwd of the same step: equal up to float64 rounding.
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_top_k_is_leading_part_of_full_spectrum(x64):
    chain = _tanh_chain()
    full = lyapunov.finite_time_spectrum(chain)
    top = lyapunov.finite_time_spectrum(chain, k=2)
    # The k-frame is the leading k columns of the full frame and QR is Gram–Schmidt, so the first
    # k growth rates agree at every step up to rounding.
    np.testing.assert_allclose(top.log_growth, full.log_growth[:, :2], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(top.exponents, full.exponents[:2], rtol=1e-10, atol=1e-12)


def test_descending_and_discard():
    chain = _tanh_chain(steps=200)
    lam = lyapunov.lyapunov_spectrum(chain, discard=50)
    assert np.all(np.diff(np.asarray(lam)) <= 0)
    ft = lyapunov.finite_time_spectrum(chain, discard=50)
    assert ft.running.shape == (150, 6)
    # Discarded steps still move the frame: the counted growth rates are the full run's tail.
    full = lyapunov.finite_time_spectrum(chain)
    np.testing.assert_allclose(ft.log_growth, full.log_growth[50:], rtol=1e-6)
    np.testing.assert_allclose(np.sort(ft.log_growth.mean(0))[::-1], lam, rtol=1e-5, atol=1e-6)


def test_singular_step_gives_minus_inf_without_nan():
    jac = jnp.stack([jnp.diag(jnp.array([2.0, 0.0]))] + [jnp.eye(2)] * 9)
    lam = np.asarray(lyapunov.lyapunov_spectrum(jac))
    assert not np.any(np.isnan(lam))
    assert lam[1] == -np.inf
    # The surviving direction grows by 2|q_1| ≤ 2 once, then is preserved: 0 < λ₁ ≤ log(2)/10
    # (q is the random initial frame's first column), up to float32 rounding.
    assert 0 < lam[0] <= np.log(2.0) / 10 * (1 + 1e-6)


def test_jit_and_vmap():
    chain = _tanh_chain(steps=100)
    eager = lyapunov.lyapunov_spectrum(chain, k=3)
    jitted = jax.jit(lambda c: lyapunov.lyapunov_spectrum(c, k=3))(chain)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)
    stacks = jax.random.normal(jax.random.key(4), (3, 50, 4, 4))
    batched = jax.vmap(lyapunov.lyapunov_spectrum)(stacks)
    one_by_one = jnp.stack([lyapunov.lyapunov_spectrum(s) for s in stacks])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-6)


def test_key_changes_frame_not_limit():
    jac = jnp.broadcast_to(jnp.diag(jnp.array([2.0, 1.0, 0.5])), (2000, 3, 3))
    a = lyapunov.lyapunov_spectrum(jac, key=jax.random.key(1))
    b = lyapunov.lyapunov_spectrum(jac, key=jax.random.key(2))
    # Different frames, same limit; the finite-K frame error is O(1/K) = O(5e-4) — use 5e-3.
    np.testing.assert_allclose(a, np.log([2.0, 1.0, 0.5]), atol=5e-3)
    np.testing.assert_allclose(b, np.log([2.0, 1.0, 0.5]), atol=5e-3)


@pytest.mark.parametrize(
    "arg, kwargs, exc, match",
    [
        (jnp.ones((4, 3)), {}, ValueError, "dimensions"),
        (jnp.ones((4, 3, 2)), {}, ValueError, "square"),
        (jnp.ones((0, 3, 3)), {}, ValueError, "at least one"),
        (jnp.full((4, 3, 3), jnp.nan), {}, ValueError, "non-finite"),
        (jnp.ones((4, 3, 3)), {"k": 0}, ValueError, "k must be >= 1"),
        (jnp.ones((4, 3, 3)), {"k": 4}, ValueError, "k must be <="),
        (jnp.ones((4, 3, 3)), {"k": 1.5}, TypeError, "k must be an integer"),
        (jnp.ones((4, 3, 3)), {"discard": 4}, ValueError, "discard"),
        (jnp.ones((4, 3, 3)), {"discard": -1}, ValueError, "discard"),
        (lambda x: x, {}, TypeError, "Chain or an array"),
        ("abc", {}, TypeError, "array"),
    ],
)
def test_bad_arguments(arg, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        lyapunov.lyapunov_spectrum(arg, **kwargs)


def test_bad_chain_arguments():
    empty = Chain(
        params={"kernel": jnp.eye(2)},
        xs=None,
        h0=jnp.zeros(2),
        step=lambda p, h, x: h,
        length=0,
        shared=True,
    )
    with pytest.raises(ValueError, match="at least one step"):
        lyapunov.lyapunov_spectrum(empty)
    chain = _tanh_chain(steps=10)
    with pytest.raises(ValueError, match="k must be <="):
        lyapunov.lyapunov_spectrum(chain, k=7)


def test_chain_memory_does_not_grow_with_length():
    # Compiled scratch memory of the on-the-fly spectrum is the same at T = 50 and T = 5000
    # (state, frame and one step's tangents), while storing the Jacobians grows like T·n².
    # (benchmarks/bench_lyapunov.py reports the same up to T = 10,000.)
    def temp_bytes(steps, stored):
        model = RNN(width=8, activation="tanh")
        u = jnp.zeros((steps, 1))
        chain = model.chain(model.init(jax.random.key(0), u), u)
        if stored:
            f = lambda p, xs, h0: lyapunov.lyapunov_spectrum(
                jacobians.step_jacobians(chain.replace(params=p, xs=xs, h0=h0))
            )
        else:
            f = lambda p, xs, h0: lyapunov.lyapunov_spectrum(chain.replace(params=p, xs=xs, h0=h0))
        lowered = jax.jit(f).lower(chain.params, chain.xs, chain.h0)
        return lowered.compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(50, stored=False) == temp_bytes(5000, stored=False)
    assert temp_bytes(5000, stored=True) > 50 * temp_bytes(5000, stored=False)
