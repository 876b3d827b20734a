"""A corpus of bad inputs across the public API: each gives one clear error naming the argument.

Every case is something a careful user could pass by mistake: a NaN or inf in data, Jacobians or
hyper-parameters; a value that passes a float64 check and overflows float32; a wrong shape, type
or name; a count of 0. None may return NaN or a wrong result, none may fail deep inside JAX. The
TOML configs (tests/test_sweep.py) and the sweep store (tests/test_sweep_store.py) have their own
corpora. Nothing here compiles more than a few tiny programs: parameters come from
``jax.eval_shape`` (zeros of the right shapes), and every check fires before any tracing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradflow as gf

NAN, INF = float("nan"), float("inf")
KEY = jax.random.key(0)


def _with_zero_params(model, x):
    """``(model, zero parameters of the right shapes, x)``: nothing is compiled."""
    shapes = jax.eval_shape(model.init, KEY, x)
    return model, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), x


@functools.cache
def _mlp():
    return _with_zero_params(gf.models.MLP(width=4, depth=3), jnp.ones((4,)))


@functools.cache
def _rnn():
    return _with_zero_params(gf.models.RNN(width=3), jnp.ones((5, 2)))


def _mlp_apply(x):
    model, params, _ = _mlp()
    return model.apply(params, x)


def _mlp_chain(x):
    model, params, _ = _mlp()
    return model.chain(params, x)


def _rnn_apply(u):
    model, params, _ = _rnn()
    return model.apply(params, u)


def _rnn_chain(u):
    model, params, _ = _rnn()
    return model.chain(params, u)


def _with_nan(shape, index=0):
    return jnp.ones(shape).at[np.unravel_index(index, shape)].set(NAN)


def _fit(batches, opt=None, **kw):
    model, params, _ = _mlp()
    loss = lambda p, b: jnp.mean((model.apply(p, b[0]) - b[1]) ** 2)  # noqa: E731
    return gf.train.fit(loss, params, batches, opt or optax.sgd(0.1), **kw)


def _sweep(**kw):
    s = gf.sweep.Sweep.create({"depth": [2], "width": [3]}, "jacobian_spectrum")
    return gf.sweep.run(s, **kw)


J = jnp.ones((3, 2, 2))
XS = jnp.ones((2, 3))

# (id, thunk, error class, regex the message must match: it names the argument)
CASES = [
    # --- models: data, shapes, hyper-parameters ---------------------------------------------
    ("mlp x NaN", lambda: _mlp_apply(_with_nan((4,))), ValueError, "^x contains non-finite"),
    ("mlp x inf", lambda: _mlp_apply(jnp.full((2, 4), INF)), ValueError, "^x contains non-finite"),
    ("mlp x width", lambda: _mlp_apply(jnp.ones(5)), ValueError, "x must have 4 features"),
    ("mlp x 3-d", lambda: _mlp_apply(jnp.ones((2, 2, 4))), ValueError, "x must have 1 or 2 dim"),
    ("mlp x str", lambda: _mlp_apply("abc"), TypeError, "x must be an array"),
    (
        "mlp params NaN",
        lambda: _mlp()[0].apply(jax.tree.map(lambda a: a + NAN, _mlp()[1]), _mlp()[2]),
        ValueError,
        r"params\[",
    ),
    ("mlp chain x NaN", lambda: _mlp_chain(_with_nan((4,), 2)), ValueError, "^x contains"),
    (
        "mlp width 0",
        lambda: gf.models.MLP(width=0, depth=3).init(KEY, jnp.ones(4)),
        ValueError,
        "width must be >= 1",
    ),
    (
        "mlp depth -1",
        lambda: gf.models.MLP(width=4, depth=-1).init(KEY, jnp.ones(4)),
        ValueError,
        "depth must be >= 1",
    ),
    (
        "mlp depth 2.5",
        lambda: gf.models.MLP(width=4, depth=2.5).init(KEY, jnp.ones(4)),
        TypeError,
        "depth must be an integer",
    ),
    (
        "mlp activation",
        lambda: gf.models.MLP(width=4, depth=2, activation="tanhh").init(KEY, jnp.ones(4)),
        ValueError,
        "activation 'tanhh'",
    ),
    ("rnn u NaN", lambda: _rnn_apply(_with_nan((5, 2), 3)), ValueError, "^u contains non-finite"),
    ("rnn u -inf", lambda: _rnn_apply(jnp.full((5, 2), -INF)), ValueError, "^u contains"),
    ("rnn chain u NaN", lambda: _rnn_chain(_with_nan((5, 2), 7)), ValueError, "^u contains"),
    (
        "rnn u 1-d",
        lambda: gf.models.RNN(width=3).init(KEY, jnp.ones(3)),
        ValueError,
        "u must have 2 or 3 dim",
    ),
    (
        "rnn width 0",
        lambda: gf.models.RNN(width=0).init(KEY, jnp.ones((3, 2))),
        ValueError,
        "width must be >= 1",
    ),
    (
        "rnn activation int",
        lambda: gf.models.RNN(width=3, activation=5).init(KEY, jnp.ones((3, 2))),
        TypeError,
        "activation must be a name",
    ),
    (
        "lstm u 4-d",
        lambda: gf.models.LSTM(width=3).init(KEY, jnp.ones((1, 1, 3, 2))),
        ValueError,
        "u must have 2 or 3 dim",
    ),
    # --- Jacobians and spectra ----------------------------------------------------------------
    (
        "products NaN",
        lambda: gf.jacobians.products_from_jacobians(J.at[1, 0, 0].set(NAN)),
        ValueError,
        "^jacobians contains non-finite",
    ),
    (
        "products inf",
        lambda: gf.jacobians.products_from_jacobians(J * INF),
        ValueError,
        "^jacobians contains",
    ),
    (
        "products 2-d",
        lambda: gf.jacobians.products_from_jacobians(jnp.ones((3, 3))),
        ValueError,
        r"jacobians must have shape \(K, n, n\)",
    ),
    (
        "products non-square",
        lambda: gf.jacobians.products_from_jacobians(jnp.ones((3, 2, 3))),
        ValueError,
        r"jacobians must have shape \(K, n, n\)",
    ),
    (
        "step_jacobians mode",
        lambda: gf.jacobians.step_jacobians(_mlp_chain(jnp.ones(4)), mode="sideways"),
        ValueError,
        "mode must be one of",
    ),
    (
        "backward_products method",
        lambda: gf.jacobians.backward_products(_mlp_chain(jnp.ones(4)), method="magic"),
        ValueError,
        "method must be one of",
    ),
    (
        "backward_products array",
        lambda: gf.jacobians.backward_products(jnp.ones((3, 3))),
        TypeError,
        "chain must be a gradflow.chain.Chain",
    ),
    ("end_to_end str", lambda: gf.jacobians.end_to_end("chain"), TypeError, "chain must be"),
    (
        "input_output_jacobian fn",
        lambda: gf.jacobians.input_output_jacobian(3, jnp.ones(2)),
        TypeError,
        "fn",
    ),
    (
        "input_output_jacobian x NaN",
        lambda: gf.jacobians.input_output_jacobian(jnp.tanh, jnp.array([NAN, 1.0])),
        ValueError,
        "^x contains",
    ),
    (
        "singular_values NaN",
        lambda: gf.spectra.singular_values(jnp.full((2, 2), NAN)),
        ValueError,
        "^a contains non-finite",
    ),
    (
        "singular_values 1-d",
        lambda: gf.spectra.singular_values(jnp.ones(3)),
        ValueError,
        r"a must have shape \(\.\.\., m, n\)",
    ),
    (
        "singular_values str",
        lambda: gf.spectra.singular_values("a"),
        TypeError,
        "a must be an array of numbers",
    ),
    (
        "spectral_radius inf",
        lambda: gf.spectra.spectral_radius(jnp.full((2, 2), INF)),
        ValueError,
        "^a contains",
    ),
    (
        "spectral_radius non-square",
        lambda: gf.spectra.spectral_radius(jnp.ones((2, 3))),
        ValueError,
        "a must be square",
    ),
    (
        "condition_number NaN",
        lambda: gf.spectra.condition_number(jnp.full((2, 2), NAN)),
        ValueError,
        "^a contains",
    ),
    (
        "eigenvalues NaN",
        lambda: gf.spectra.eigenvalues(jnp.eye(2).at[0, 1].set(NAN)),
        ValueError,
        "^a contains",
    ),
    (
        "top_singular_values NaN",
        lambda: gf.spectra.top_singular_values(jnp.full((4, 4), NAN), 2),
        ValueError,
        "^chain_or_matrix contains",
    ),
    (
        "top_singular_values k 0",
        lambda: gf.spectra.top_singular_values(jnp.eye(4), 0),
        ValueError,
        "k must be >= 1",
    ),
    (
        "top_singular_values k 9",
        lambda: gf.spectra.top_singular_values(jnp.eye(4), 9),
        ValueError,
        "k must be <= min",
    ),
    (
        "top_singular_values num_iters",
        lambda: gf.spectra.top_singular_values(jnp.eye(4), 2, num_iters=1),
        ValueError,
        "num_iters must satisfy",
    ),
    (
        "spectral_norm start",
        lambda: gf.spectra.spectral_norm(_mlp_chain(jnp.ones(4)), start=-1),
        ValueError,
        "start and stop must satisfy",
    ),
    # --- Lyapunov -----------------------------------------------------------------------------
    (
        "lyapunov NaN",
        lambda: gf.lyapunov.lyapunov_spectrum(J.at[0].set(NAN), key=KEY),
        ValueError,
        "^jacobians contains",
    ),
    (
        "finite_time inf",
        lambda: gf.lyapunov.finite_time_spectrum(J * INF, key=KEY),
        ValueError,
        "^jacobians contains",
    ),
    ("lyapunov k 0", lambda: gf.lyapunov.lyapunov_spectrum(J, k=0), ValueError, "k must be >= 1"),
    ("lyapunov k 3", lambda: gf.lyapunov.lyapunov_spectrum(J, k=3), ValueError, "k must be <="),
    (
        "lyapunov discard",
        lambda: gf.lyapunov.lyapunov_spectrum(J, discard=3),
        ValueError,
        "discard must satisfy",
    ),
    (
        "lyapunov discard -1",
        lambda: gf.lyapunov.lyapunov_spectrum(J, discard=-1),
        ValueError,
        "discard must satisfy",
    ),
    (
        "lyapunov 2-d",
        lambda: gf.lyapunov.lyapunov_spectrum(jnp.ones((2, 2))),
        ValueError,
        "jacobians must have 3 dim",
    ),
    # --- mean field ---------------------------------------------------------------------------
    (
        "q_map q 1e300",
        lambda: gf.meanfield.q_map("tanh", 1.0, 0.0, 1e300),
        ValueError,
        "q = 1e.300 overflows float32",
    ),
    (
        "q_map sigma_w2 1e40",
        lambda: gf.meanfield.q_map("tanh", 1e40, 0.0, 1.0),
        ValueError,
        "sigma_w2 = 1e.40 overflows",
    ),
    (
        "q_map q -1",
        lambda: gf.meanfield.q_map("tanh", 1.0, 0.0, -1.0),
        ValueError,
        "q must be finite and >= 0",
    ),
    (
        "q_map q NaN",
        lambda: gf.meanfield.q_map("tanh", 1.0, 0.0, NAN),
        ValueError,
        "q must be finite",
    ),
    (
        "q_map sigma_w2 0",
        lambda: gf.meanfield.q_map("tanh", 0.0, 0.0, 1.0),
        ValueError,
        "sigma_w2 must be finite and > 0",
    ),
    (
        "q_map sigma_b2 -0.1",
        lambda: gf.meanfield.q_map("tanh", 1.0, -0.1, 1.0),
        ValueError,
        "sigma_b2 must be finite and >= 0",
    ),
    (
        "q_map sigma_w2 str",
        lambda: gf.meanfield.q_map("tanh", "1", 0.0, 1.0),
        TypeError,
        "sigma_w2 must be a real number",
    ),
    (
        "q_map sigma_w2 complex",
        lambda: gf.meanfield.q_map("tanh", 1 + 1j, 0.0, 1.0),
        TypeError,
        "sigma_w2 must be real",
    ),
    (
        "q_map activation",
        lambda: gf.meanfield.q_map("nope", 1.0, 0.0, 1.0),
        ValueError,
        "activation 'nope'",
    ),
    (
        "c_map c 2",
        lambda: gf.meanfield.c_map("tanh", 1.0, 0.0, 2.0),
        ValueError,
        "c must be finite and >= -1.0 and <= 1.0",
    ),
    (
        "c_map c NaN",
        lambda: gf.meanfield.c_map("tanh", 1.0, 0.0, NAN),
        ValueError,
        "c must be finite",
    ),
    (
        "chi1 sigma_w2 NaN",
        lambda: gf.meanfield.chi1("tanh", NAN, 0.0),
        ValueError,
        "sigma_w2 must be finite",
    ),
    (
        "q_star sigma_w2 -1",
        lambda: gf.meanfield.q_star("tanh", -1.0, 0.0),
        ValueError,
        "sigma_w2 must be finite and > 0",
    ),
    (
        "q_layers q0 NaN",
        lambda: gf.meanfield.q_layers("tanh", 1.0, 0.0, NAN, 3),
        ValueError,
        "q0 must be finite",
    ),
    (
        "q_layers depth 2.5",
        lambda: gf.meanfield.q_layers("tanh", 1.0, 0.0, 1.0, 2.5),
        ValueError,
        "depth must be an integer >= 0",
    ),
    (
        "c_layers depth -1",
        lambda: gf.meanfield.c_layers("tanh", 1.0, 0.0, 1.0, 0.5, -1),
        ValueError,
        "depth must be an integer >= 0",
    ),
    (
        "nngp x NaN",
        lambda: gf.meanfield.nngp_kernel(XS.at[1, 2].set(NAN), "tanh", 1.0, 0.0, 2),
        ValueError,
        "^x contains non-finite",
    ),
    (
        "nngp x 1-d",
        lambda: gf.meanfield.nngp_kernel(jnp.ones(3), "tanh", 1.0, 0.0, 2),
        ValueError,
        r"x must have shape \(n_points, d\)",
    ),
    (
        "nngp sigma_w 0",
        lambda: gf.meanfield.nngp_kernel(XS, "tanh", 0.0, 0.0, 2),
        ValueError,
        "sigma_w must be finite and > 0",
    ),
    (
        "nngp depth -1",
        lambda: gf.meanfield.nngp_kernel(XS, "tanh", 1.0, 0.0, -1),
        ValueError,
        "depth must be an integer >= 0",
    ),
    (
        "critical_sigma_w2 sigma_b2 -1",
        lambda: gf.meanfield.critical_sigma_w2("tanh", -1.0),
        ValueError,
        "sigma_b2 must be finite",
    ),
    (
        "critical_point q -1",
        lambda: gf.meanfield.critical_point("tanh", -1.0),
        ValueError,
        "q must be finite",
    ),
    (
        "cnn_window even kernel",
        lambda: gf.meanfield.cnn_window_eigenvalues((8,), 2),
        ValueError,
        "kernel_size must be odd",
    ),
    (
        "cnn_mode_rates sigma_w2 NaN",
        lambda: gf.meanfield.cnn_mode_rates("tanh", NAN, 0.0, (4,), 3),
        ValueError,
        "sigma_w2 must be finite",
    ),
    (
        "residual_ln q0 NaN",
        lambda: gf.meanfield.residual_ln_layers("tanh", 1.0, 0.0, NAN, 3),
        ValueError,
        "q0 must be finite",
    ),
    (
        "residual_ln mu -1",
        lambda: gf.meanfield.residual_ln_layers("tanh", 1.0, 0.0, 1.0, 3, mu=-1),
        ValueError,
        "mu must be finite and >= 0",
    ),
    # --- theory -------------------------------------------------------------------------------
    (
        "newman sigma2 NaN",
        lambda: gf.theory.newman_lyapunov_exponents(3, NAN),
        ValueError,
        "sigma2 must be finite and > 0",
    ),
    (
        "newman sigma2 0",
        lambda: gf.theory.newman_lyapunov_exponents(3, 0.0),
        ValueError,
        "sigma2 must be finite and > 0",
    ),
    ("newman n 0", lambda: gf.theory.newman_lyapunov_exponents(0), ValueError, "n must be >= 1"),
    (
        "pascanu lambda1 NaN",
        lambda: gf.theory.pascanu_bound(NAN, "tanh", 3),
        ValueError,
        "lambda1 must be",
    ),
    (
        "pascanu activation",
        lambda: gf.theory.pascanu_bound(1.0, "nope", 3),
        ValueError,
        "activation 'nope'",
    ),
    (
        "fuss_catalan depth 0",
        lambda: gf.theory.fuss_catalan_moments(0, 3),
        ValueError,
        "depth must be >= 1",
    ),
    (
        "fuss_catalan k_max -1",
        lambda: gf.theory.fuss_catalan_moments(2, -1),
        ValueError,
        "k_max must be >= 0",
    ),
    (
        "fuss_catalan_edge depth 2.5",
        lambda: gf.theory.fuss_catalan_edge(2.5),
        TypeError,
        "depth must be an integer",
    ),
    (
        "fuss_catalan_density x NaN",
        lambda: gf.theory.fuss_catalan_density(np.array([NAN]), 2),
        ValueError,
        "^x contains",
    ),
    (
        "linear spectrum weights",
        lambda: gf.theory.linear_jacobian_spectrum(jnp.ones(3), 2, weights="cauchy"),
        ValueError,
        "weights must be one of",
    ),
    (
        "spectrum moments NaN",
        lambda: gf.theory.jacobian_spectrum_moments(
            3, d2_mean=NAN, d2_second_moment=1.0, sigma_w2=1.0
        ),
        ValueError,
        "d2_mean",
    ),
    ("bernoulli_d2 p NaN", lambda: gf.theory.bernoulli_d2(NAN), ValueError, "p must be in"),
    (
        "gaussian_d2 q_star NaN",
        lambda: gf.theory.gaussian_d2("tanh", NAN),
        ValueError,
        "q_star must be finite",
    ),
    (
        "hard_tanh_critical q_star NaN",
        lambda: gf.theory.hard_tanh_critical(NAN),
        ValueError,
        "q_star must be finite",
    ),
    # --- Doya and cliffs ----------------------------------------------------------------------
    (
        "doya_map w NaN",
        lambda: gf.dynamics.doya_map(0.5, NAN, 0.0),
        ValueError,
        "^w must be finite, got nan",
    ),
    (
        "doya_map x inf",
        lambda: gf.dynamics.doya_map(INF, 5.0, 0.0),
        ValueError,
        "^x must be finite",
    ),
    (
        "doya_map b 1e300",
        lambda: gf.dynamics.doya_map(0.5, 5.0, 1e300),
        ValueError,
        "b = 1e.300 overflows float32",
    ),
    (
        "doya_map dt 0",
        lambda: gf.dynamics.doya_map(0.5, 1.0, 0.0, dt=0.0),
        ValueError,
        r"dt must be in \(0, 1\]",
    ),
    (
        "doya_map dt 2",
        lambda: gf.dynamics.doya_map(0.5, 1.0, 0.0, dt=2.0),
        ValueError,
        r"dt must be in \(0, 1\]",
    ),
    (
        "doya_fixed_points w NaN",
        lambda: gf.dynamics.doya_fixed_points(NAN, 0.0),
        ValueError,
        "^w must be finite",
    ),
    (
        "doya_fixed_points b inf",
        lambda: gf.dynamics.doya_fixed_points(5.0, -INF),
        ValueError,
        "^b must be finite",
    ),
    (
        "doya_saddle_nodes w NaN",
        lambda: gf.dynamics.doya_saddle_nodes(NAN),
        ValueError,
        "^w must be finite",
    ),
    (
        "doya_trajectory x0 NaN",
        lambda: gf.dynamics.doya_trajectory(1.0, 0.0, NAN, 3),
        ValueError,
        "^x0 must be finite",
    ),
    (
        "doya_trajectory steps 0",
        lambda: gf.dynamics.doya_trajectory(1.0, 0.0, 0.5, 0),
        ValueError,
        "steps must be >= 1",
    ),
    (
        "doya_trajectory w vector",
        lambda: gf.dynamics.doya_trajectory(jnp.ones(2), 0.0, 0.5, 3),
        ValueError,
        "w must be a scalar",
    ),
    (
        "doya_hysteresis w NaN",
        lambda: gf.dynamics.doya_hysteresis(NAN, jnp.array([0.0, 1.0])),
        ValueError,
        "^w must be finite",
    ),
    (
        "doya_hysteresis b_values NaN",
        lambda: gf.dynamics.doya_hysteresis(5.0, jnp.array([0.0, NAN])),
        ValueError,
        "^b_values contains",
    ),
    (
        "doya_hysteresis descending",
        lambda: gf.dynamics.doya_hysteresis(5.0, jnp.array([1.0, 0.0])),
        ValueError,
        "b_values must be strictly ascending",
    ),
    (
        "doya_hysteresis settle 0",
        lambda: gf.dynamics.doya_hysteresis(5.0, jnp.array([0.0, 1.0]), settle=0),
        ValueError,
        "settle must be >= 1",
    ),
    ("cliff_loss w NaN", lambda: gf.dynamics.cliff_loss(NAN, 0.0), ValueError, "^w must be finite"),
    (
        "cliff_loss x0 NaN",
        lambda: gf.dynamics.cliff_loss(5.0, 0.0, x0=NAN),
        ValueError,
        "^x0 must be finite",
    ),
    (
        "cliff_loss steps -1",
        lambda: gf.dynamics.cliff_loss(5.0, 0.0, steps=-1),
        ValueError,
        "steps must be >= 1",
    ),
    (
        "cliff_landscape b_values NaN",
        lambda: gf.dynamics.cliff_landscape(jnp.array([0.0, NAN])),
        ValueError,
        "^b_values contains",
    ),
    (
        "cliff_landscape target inf",
        lambda: gf.dynamics.cliff_landscape(jnp.array([0.0, 1.0]), target=INF),
        ValueError,
        "^target must be finite",
    ),
    # --- initialisers -------------------------------------------------------------------------
    (
        "gaussian 1e300 in float32",
        lambda: gf.init.gaussian(1e300)(KEY, (3, 3)),
        ValueError,
        "overflows float32",
    ),
    ("gaussian 0", lambda: gf.init.gaussian(0.0), ValueError, "sigma_w must be a finite positive"),
    ("gaussian -1", lambda: gf.init.gaussian(-1.0), ValueError, "sigma_w must be a finite pos"),
    ("gaussian NaN", lambda: gf.init.gaussian(NAN), ValueError, "sigma_w must be a finite pos"),
    ("gaussian str", lambda: gf.init.gaussian("1"), TypeError, "sigma_w must be a number"),
    ("orthogonal gain 0", lambda: gf.init.orthogonal(0.0), ValueError, "gain must be a finite"),
    ("orthogonal gain NaN", lambda: gf.init.orthogonal(NAN), ValueError, "gain must be a finite"),
    ("lecun fan-in 0", lambda: gf.init.lecun()(KEY, (0, 3)), ValueError, r"shape \(0, 3\) has fan"),
    ("he fan-in 0", lambda: gf.init.he()(KEY, (2, 0, 3)), ValueError, "has fan-in 0"),
    ("kumar fan-in 0", lambda: gf.init.kumar("sigmoid")(KEY, (0, 3)), ValueError, "fan-in 0"),
    ("yilmaz_poli fan-in 0", lambda: gf.init.yilmaz_poli()(KEY, (0, 3)), ValueError, "fan-in 0"),
    ("critical fan-in 0", lambda: gf.init.critical("tanh")(KEY, (0, 3)), ValueError, "fan-in 0"),
    (
        "kumar_std fan_in 0",
        lambda: gf.init.kumar_std("sigmoid", 0),
        ValueError,
        "fan_in must be >= 1",
    ),
    (
        "yilmaz_poli_mean fan_in 0",
        lambda: gf.init.yilmaz_poli_mean(0),
        ValueError,
        "fan_in must be >= 1",
    ),
    ("yilmaz_poli std NaN", lambda: gf.init.yilmaz_poli(NAN), ValueError, "std must be a finite"),
    ("gaussian_bias NaN", lambda: gf.init.gaussian_bias(NAN), ValueError, "sigma_b must be finite"),
    (
        "critical sigma_b2 NaN",
        lambda: gf.init.critical("tanh", NAN),
        ValueError,
        "sigma_b2 must be finite",
    ),
    ("init.get name", lambda: gf.init.get("xavierr"), ValueError, "init must be one of"),
    (
        "glorot distribution",
        lambda: gf.init.glorot("cauchy"),
        ValueError,
        "glorot distribution must be",
    ),
    ("fan_in ()", lambda: gf.init.fan_in(()), ValueError, "at least one axis"),
    (
        "delta_orthogonal even window",
        lambda: gf.init.delta_orthogonal()(KEY, (2, 3, 3)),
        ValueError,
        "odd window sizes",
    ),
    ("activations.get", lambda: gf.activations.get("relu6x"), ValueError, "activation 'relu6x'"),
    # --- gradients, attention, tasks ----------------------------------------------------------
    (
        "named_norms depth 0",
        lambda: gf.gradients.named_norms({"a": jnp.ones(2)}, depth=0),
        ValueError,
        "depth must be >= 1",
    ),
    (
        "layer_grad_norms loss_fn",
        lambda: gf.gradients.layer_grad_norms(3, {"a": jnp.ones(2)}, 0),
        TypeError,
        "loss_fn must be callable",
    ),
    (
        "state_grad_norms chain",
        lambda: gf.gradients.state_grad_norms(3, jnp.sum),
        TypeError,
        "chain must be",
    ),
    (
        "chain_grad_norms loss_fn",
        lambda: gf.gradients.chain_grad_norms(_mlp_chain(jnp.ones(4)), 3),
        TypeError,
        "loss_fn must be callable",
    ),
    (
        "rank_collapse x NaN",
        lambda: gf.attention.rank_collapse(jnp.full((3, 4), NAN)),
        ValueError,
        "^x contains",
    ),
    (
        "token_cosine x inf",
        lambda: gf.attention.token_cosine(jnp.full((3, 4), INF)),
        ValueError,
        "^x contains",
    ),
    (
        "composite_norm x NaN",
        lambda: gf.attention.composite_norm(jnp.ones((3, 4)).at[0, 0].set(NAN)),
        ValueError,
        "^x contains",
    ),
    (
        "rank_collapse norm",
        lambda: gf.attention.rank_collapse(jnp.ones((3, 4)), norm="l7"),
        ValueError,
        "norm must be one of",
    ),
    (
        "rank_collapse x 1-d",
        lambda: gf.attention.rank_collapse(jnp.ones(3)),
        ValueError,
        "x must be a token matrix",
    ),
    (
        "uniform_attention_growth alpha NaN",
        lambda: gf.attention.uniform_attention_growth(NAN, 1.0, 3),
        ValueError,
        "alpha must be finite",
    ),
    (
        "uniform_attention_growth layers -1",
        lambda: gf.attention.uniform_attention_growth(0.5, 1.0, -1),
        ValueError,
        "layers must be an integer >= 0",
    ),
    (
        "adding_target u NaN",
        lambda: gf.tasks.adding_target(jnp.full((2, 5, 2), NAN)),
        ValueError,
        "^u contains",
    ),
    (
        "temporal_order_target u NaN",
        lambda: gf.tasks.temporal_order_target(jnp.full((2, 5, 6), NAN)),
        ValueError,
        "^u contains",
    ),
    (
        "memorization_target u inf",
        lambda: gf.tasks.memorization_target(jnp.full((2, 5, 6), INF)),
        ValueError,
        "^u contains",
    ),
    ("adding batch 0", lambda: gf.tasks.adding(KEY, 0, 5), ValueError, "batch must be >= 1"),
    ("adding length 1", lambda: gf.tasks.adding(KEY, 2, 1), ValueError, "length must be >= 2"),
    ("adding start 7", lambda: gf.tasks.adding(KEY, 2, 5, start=7), ValueError, "start must"),
    (
        "temporal_order n_relevant",
        lambda: gf.tasks.temporal_order(KEY, 2, 10, n_relevant=5),
        ValueError,
        "n_relevant must be 2 or 3",
    ),
    (
        "memorization n_bits 0",
        lambda: gf.tasks.memorization(KEY, 2, 10, n_bits=0),
        ValueError,
        "n_bits must be >= 1",
    ),
    ("tasks.get", lambda: gf.tasks.get("nope"), ValueError, "unknown task 'nope'"),
    (
        "digits test_fraction",
        lambda: gf.tasks.digits(test_fraction=1.5),
        ValueError,
        "test_fraction must be in",
    ),
    ("synthetic_images n 0", lambda: gf.tasks.synthetic_images(n=0), ValueError, "n must be >="),
    (
        "image_classification prefer",
        lambda: gf.tasks.image_classification(prefer="mnist"),
        ValueError,
        "prefer must be",
    ),
    # --- training -----------------------------------------------------------------------------
    (
        "fit data NaN",
        lambda: _fit((jnp.ones((3, 2, 4)), jnp.zeros((3, 2, 1)).at[1, 0].set(NAN))),
        ValueError,
        r"^batches\[1\] contains non-finite values \(NaN\)",
    ),
    (
        "fit iterator data NaN",
        lambda: _fit(iter([(np.ones((2, 4)), np.full((2, 1), NAN))])),
        ValueError,
        r"batches \(the batch at step 0\)\[1\] contains",
    ),
    (
        "fit optimizer str",
        lambda: _fit(jnp.ones((2, 1)), "sgd"),
        TypeError,
        "optimizer must be an optax",
    ),
    (
        "fit monitor_every 0",
        lambda: _fit(jnp.ones((2, 1)), monitor_every=0),
        ValueError,
        "monitor_every must be >= 1",
    ),
    ("fit steps 0", lambda: _fit(jnp.ones((2, 1)), steps=0), ValueError, "steps must be >= 1"),
    ("fit batch_fn without steps", lambda: _fit(lambda k, s: 1.0), ValueError, "steps is required"),
    (
        "fit progress str",
        lambda: _fit(jnp.ones((2, 1)), progress="yes"),
        TypeError,
        "progress must be",
    ),
    (
        "sgd learning_rate -1",
        lambda: gf.train.sgd(-1.0),
        ValueError,
        "learning_rate must be finite and > 0",
    ),
    ("sgd learning_rate NaN", lambda: gf.train.sgd(NAN), ValueError, "learning_rate must be"),
    (
        "sgd momentum -0.5",
        lambda: gf.train.sgd(0.1, momentum=-0.5),
        ValueError,
        "momentum must be finite and >= 0",
    ),
    (
        "sgd momentum 1",
        lambda: gf.train.sgd(0.1, momentum=1.0),
        ValueError,
        r"momentum must be in \[0, 1\)",
    ),
    ("adam learning_rate 0", lambda: gf.train.adam(0.0), ValueError, "learning_rate must be"),
    ("rprop learning_rate -0.1", lambda: gf.train.rprop(-0.1), ValueError, "learning_rate must"),
    (
        "with_clipping max_norm -1",
        lambda: gf.train.with_clipping(optax.sgd(0.1), -1),
        ValueError,
        "max_norm must be a positive",
    ),
    ("monitor every 0", lambda: gf.train.monitor(every=0), ValueError, "every must be >= 1"),
    (
        "gradient_noise_scale num_splits 1",
        lambda: gf.train.gradient_noise_scale(
            lambda p, b: 0.0, {"a": jnp.ones(2)}, jnp.ones((4, 1)), num_splits=1
        ),
        ValueError,
        "num_splits must be >= 2",
    ),
    (
        "pascanu_regularizer chain",
        lambda: gf.train.pascanu_regularizer(3, jnp.sum),
        TypeError,
        "chain must be",
    ),
    # --- chains and sweeps (API side) ---------------------------------------------------------
    (
        "from_layers empty",
        lambda: gf.chain.from_layers([], jnp.ones(3)),
        ValueError,
        "layers must hold at least one",
    ),
    (
        "from_layers not callable",
        lambda: gf.chain.from_layers([3], jnp.ones(3)),
        TypeError,
        r"layers\[0\] must be callable",
    ),
    (
        "from_module variables",
        lambda: gf.chain.from_module(_mlp()[0], "params", jnp.ones(4)),
        TypeError,
        "variables must be",
    ),
    ("sweep.run sweep", lambda: gf.sweep.run("x"), TypeError, "sweep must be a gradflow"),
    ("sweep.run batch_size 0", lambda: _sweep(batch_size=0), ValueError, "batch_size must be"),
    (
        "sweep.run memory_budget",
        lambda: _sweep(memory_budget="lots"),
        ValueError,
        "memory_budget must be",
    ),
    (
        "sweep.run on_mismatch",
        lambda: _sweep(on_mismatch="merge"),
        ValueError,
        "on_mismatch must be",
    ),
    ("sweep.run devices []", lambda: _sweep(devices=[]), ValueError, "devices must name"),
    ("sweep.run vmap_size 0", lambda: _sweep(vmap_size=0), ValueError, "vmap_size must be"),
    (
        "sweep.run compile_workers 0",
        lambda: _sweep(compile_workers=0),
        ValueError,
        "compile_workers must be",
    ),
    (
        "sweep.load missing",
        lambda: gf.sweep.load("/nonexistent/dir"),
        ValueError,
        "has no manifest.json",
    ),
    (
        "Sweep.create axes {}",
        lambda: gf.sweep.Sweep.create({}, "jacobian_spectrum"),
        ValueError,
        "axes must be a non-empty mapping",
    ),
    (
        "Sweep.create axis name",
        lambda: gf.sweep.Sweep.create({"1x": [1]}, "jacobian_spectrum"),
        ValueError,
        "axis names must be identifiers",
    ),
    (
        "Sweep.create sigma_W",
        lambda: gf.sweep.Sweep.create(
            {"depth": [2], "width": [3], "sigma_W": [1.0]}, "jacobian_spectrum"
        ),
        ValueError,
        "axis 'sigma_W' is not used by 'jacobian_spectrum'",
    ),
    (
        "Sweep.create option residual str",
        lambda: gf.sweep.Sweep.create(
            {"depth": [2], "width": [3]}, "jacobian_spectrum", residual="false"
        ),
        TypeError,
        "option 'residual'",
    ),
]


@pytest.mark.parametrize("thunk, error, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error_naming_the_argument(thunk, error, message):
    with pytest.raises(error, match=message):
        thunk()


def test_the_corpus_is_large_and_its_ids_unique():
    # With the 35 TOML configs (tests/test_sweep.py) and the store's damage cases
    # (tests/test_sweep_store.py), the bar of 150 bad inputs is met by this file alone.
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 150, len(ids)


def test_doya_fixed_points_at_large_scale():
    """doya_fixed_points(1e10, -5e9) used to miss two of its three fixed points in float32 (the
    bracket's margin of 1 rounded away, the folds' σ₋ = (1 − √(1 − 4/w))/2 rounded to 0). The
    roots of x = w σ(x) + b for w = 1e10, b = −5e9 are −5e9, 0 and 5e9 (σ = 0, ½, 1 to within
    e^(−5e9))."""
    fp = gf.dynamics.doya_fixed_points(1e10, -5e9)
    assert int(fp.count) == 3
    # float32 spacing at 5e9 is 512: one ulp; the middle root is exact to float32's ~1e-7.
    np.testing.assert_allclose(np.asarray(fp.x), [-5e9, 0.0, 5e9], atol=1024)
    np.testing.assert_array_equal(np.asarray(fp.stable), [True, False, True])


def test_checked_mode_reports_the_argument_under_jit():
    """Under jit the eager checks cannot see values; gf.checked compiles them in (checkify) and
    raises with the same message at run time; good values pass through unchanged."""
    from jax.experimental import checkify

    svals = gf.checked(jax.jit(lambda a: gf.spectra.singular_values(a)))
    np.testing.assert_allclose(svals(2 * jnp.eye(3)), [2.0, 2.0, 2.0])
    with pytest.raises(checkify.JaxRuntimeError, match="^a contains non-finite"):
        svals(jnp.eye(3).at[1, 2].set(NAN))
    model, params, _ = _mlp()
    apply = gf.checked(jax.jit(model.apply))
    with pytest.raises(checkify.JaxRuntimeError, match="^x contains non-finite"):
        apply(params, jnp.ones(4).at[3].set(INF))
    # Without checked mode the same jitted call returns NaN silently: what the mode is for.
    assert np.isnan(jax.jit(lambda a: gf.spectra.singular_values(a))(jnp.full((2, 2), NAN))).all()
