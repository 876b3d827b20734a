"""Hand-written reference forward passes for the models, independent of gradflow's code.

Every function takes the parameter dict returned by ``model.init`` and an array module ``xp``
(``numpy`` for plain forward checks, ``jax.numpy`` where the reference is differentiated), and
spells the model's equations out with an explicit Python loop over layers or time steps. The tests
compare gradflow's scans, chains and Jacobian machinery against these.
"""

from __future__ import annotations

import numpy as np

NORM_EPS = 1e-5  # flax.linen's BatchNorm/LayerNorm default, which the MLP documents it uses


def sigmoid(z, xp=np):
    # 1/(1+e^{-z}) written through tanh: no overflow warning for large |z| in NumPy.
    return 0.5 * (1.0 + xp.tanh(0.5 * z))


def activation(name: str, xp=np):
    return {
        "tanh": xp.tanh,
        "sigmoid": lambda z: sigmoid(z, xp),
        "relu": lambda z: xp.maximum(z, 0.0),
        "linear": lambda z: z,
    }[name]


def as_numpy(params):
    """The ``params`` dict (with or without the outer "params" key) as float64 NumPy arrays."""
    if set(params) == {"params"}:
        params = params["params"]
    return {
        k: as_numpy(v) if isinstance(v, dict) else np.asarray(v, np.float64)
        for k, v in params.items()
    }


def row(v, like, xp=np):
    """A per-feature vector reshaped to ``like``'s rank (rank promotion is 'raise' in the tests)."""
    return xp.reshape(v, (1,) * (like.ndim - 1) + v.shape)


# --- MLP ------------------------------------------------------------------------------------------
def mlp_layer(theta, h, act, *, norm=None, residual=False, residual_scale=1.0, xp=np):
    """One hidden layer: φ(norm(h W + b)·scale + offset), plus h for residual layers."""
    z = h @ theta["kernel"]
    z = z + row(theta["bias"], z, xp)
    if norm is not None:
        axis = -1 if norm == "layer" else 0  # "batch": statistics over the examples
        mean = xp.mean(z, axis=axis, keepdims=True)
        var = xp.mean((z - mean) ** 2, axis=axis, keepdims=True)  # biased, as BatchNorm/LayerNorm
        z = (z - mean) / xp.sqrt(var + NORM_EPS)
        z = z * row(theta["scale"], z, xp) + row(theta["offset"], z, xp)
    a = act(z)
    return h + residual_scale * a if residual else a


def hidden_layer(p, layer: int):
    """Layer ``layer`` (0-based) of the stacked ``hidden`` group."""
    return {k: v[layer] for k, v in p["hidden"].items()}


def mlp_states(p, x, act_name, *, norm=None, residual=False, residual_scale=1.0, xp=np):
    """Hidden states [h_1, …, h_depth]; the first layer is never residual."""
    act = activation(act_name, xp)
    kw = dict(norm=norm, residual_scale=residual_scale, xp=xp)
    hs = [mlp_layer(p["input"], x, act, **kw)]
    for layer in range(p["hidden"]["kernel"].shape[0]):
        hs.append(mlp_layer(hidden_layer(p, layer), hs[-1], act, residual=residual, **kw))
    return hs


def readout(p, h, xp=np):
    z = h @ p["readout"]["kernel"]
    return z + row(p["readout"]["bias"], z, xp)


# --- recurrent ------------------------------------------------------------------------------------
def drive(p, u, xp=np):
    """u_t U + b for every t; u of shape (T, d) -> (T, gates·n)."""
    z = u @ p["input"]["kernel"]
    return z + row(p["input"]["bias"], z, xp)


def rnn_step(p, act_name, xp=np):
    """Pascanu's x_t = W σ(x_{t−1}) + U u_t + b, in the (in, out) kernel layout."""
    act = activation(act_name, xp)
    return lambda h, d: act(h) @ p["recurrent"]["kernel"] + d


def lstm_step(p, n, forget_bias, xp=np):
    """LSTM with the forget bias added to the forget gate's pre-activation; flat state [c, h]."""

    def step(state, d):
        c, h = state[:n], state[n:]
        z = h @ p["recurrent"]["kernel"] + d
        i, f, g, o = z[:n], z[n : 2 * n] + forget_bias, z[2 * n : 3 * n], z[3 * n :]
        c = sigmoid(f, xp) * c + sigmoid(i, xp) * xp.tanh(g)
        h = sigmoid(o, xp) * xp.tanh(c)
        return xp.concatenate([c, h])

    return step


def gru_step(p, n, xp=np):
    """GRU with the reset gate applied after the recurrent matmul (Flax's GRUCell convention)."""

    def step(h, d):
        rec = h @ p["recurrent"]["kernel"]
        r = sigmoid(d[:n] + rec[:n], xp)
        z = sigmoid(d[n : 2 * n] + rec[n : 2 * n], xp)
        cand = xp.tanh(d[2 * n :] + r * (rec[2 * n :] + p["recurrent"]["bias"]))
        return (1.0 - z) * cand + z * h

    return step


def roll(step, h, drives):
    """Applies ``step`` along ``drives`` with a Python loop; returns [h_0, h_1, …, h_T]."""
    hs = [h]
    for d in drives:
        hs.append(step(hs[-1], d))
    return hs


# --- parameters without jax.random ----------------------------------------------------------------
def random_params(model, x, seed=0, bias_scale=0.3):
    """Random parameters with ``model.init``'s structure, shapes and dtypes, drawn by NumPy.

    Only ``jax.eval_shape`` runs the model, so no threefry kernel is compiled (each new parameter
    shape would cost ~0.5 s of XLA compilation). Kernels ``(…, fan_in, fan_out)`` are
    N(0, 1/fan_in); biases, norm offsets and (norm scales − 1) are N(0, bias_scale²), nonzero so
    that a dropped term shows.
    """
    import jax

    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path[-1:])
        z = rng.standard_normal(s.shape)
        if "kernel" in name:
            z = z / np.sqrt(s.shape[-2])
        else:
            z = bias_scale * z + (1.0 if "scale" in name else 0.0)
        return np.asarray(z, s.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)
