"""Greedy layer-wise pre-training: stacked autoencoders or RBMs, one level at a time.

Level 0 (the MLP's ``input`` layer) is trained on the data x; level l ≥ 1 (``hidden/{l-1}``) on
the *frozen* outputs h_l = φ(h_{l−1} W_{l−1} + b_{l−1}) of the levels below, which are computed
once, after level l−1 has finished, and never change again. Each level is one ``lax.scan`` over
its training steps (an optax optimiser on minibatches drawn inside the scan); the ``depth − 1``
hidden levels, which share their shapes, are a second ``lax.scan`` over levels, so the compiled
program does not grow with depth. The result is in the parameter layout of
:class:`gradflow.models.MLP` (the readout is left as given), ready to be fine-tuned by
:func:`gradflow.train.fit` or :func:`gradflow.train.make_fit`.

Two kinds of level:

- ``"autoencoder"`` (Bengio et al. 2007): encoder h' = φ(h W + b) — exactly the MLP's layer —
  and a linear decoder ĥ = h' W' + c (``tied=True``: W' = Wᵀ), trained to minimise the mean
  squared reconstruction error mean((ĥ − h)²) over examples and features. The decoder starts
  at W' = Wᵀ, c = 0. A linear autoencoder's minima span the top principal subspace of the data
  (Baldi & Hornik 1989), which the tests check.
- ``"rbm"`` (Hinton, Osindero & Teh 2006): a restricted Boltzmann machine with sigmoid hidden
  units, trained by contrastive divergence CD-k (:func:`cd_gradient`). Level 0 is
  Gaussian–Bernoulli with unit-variance visible units (for standardised inputs,
  ``visible="gaussian"``) or Bernoulli–Bernoulli (``visible="bernoulli"``, inputs in [0, 1]);
  levels ≥ 1 are Bernoulli–Bernoulli, their visible data the hidden probabilities of the level
  below. Needs ``activation="sigmoid"``: the RBM's p(h = 1 | v) = σ(v W + b) is then the layer.

References:
  J. Schmidhuber, "Learning complex, extended sequences using the principle of history
  compression", Neural Computation 4(2), 1992 (the multi-level hierarchy, trained level by level).
  G. E. Hinton, S. Osindero, Y.-W. Teh, "A fast learning algorithm for deep belief nets", Neural
  Computation 18(7), 2006. Y. Bengio, P. Lamblin, D. Popovici, H. Larochelle, "Greedy layer-wise
  training of deep networks", NIPS 2006 (2007). P. Baldi, K. Hornik, "Neural networks and
  principal component analysis: learning from examples without local minima", Neural Networks
  2(1), 1989. G. E. Hinton, "A practical guide to training restricted Boltzmann machines",
  UTML TR 2010-003.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradflow import _checks, activations, models

__all__ = [
    "LevelResult",
    "PretrainResult",
    "cd_gradient",
    "train_level",
    "make_pretrain",
    "pretrain",
]

METHODS = ("autoencoder", "rbm")
VISIBLE = ("gaussian", "bernoulli")


class LevelResult(NamedTuple):
    """One level trained by :func:`train_level`.

    Attributes:
      layer: the encoder ``{"kernel": (m, n), "bias": (n,)}`` (the MLP layer).
      decoder: autoencoder: ``{"kernel": (n, m), "bias": (m,)}`` (no ``kernel`` when tied);
        RBM: ``{"bias": (m,)}``, the visible biases.
      losses: array ``(steps,)``, the reconstruction error at each step (on that step's batch,
        before its update): autoencoder, its loss; RBM, mean((v − E[v | p(h | v)])²).
    """

    layer: Any
    decoder: Any
    losses: jax.Array


class PretrainResult(NamedTuple):
    """Greedy layer-wise pre-training of an MLP (:func:`pretrain`).

    Attributes:
      params: in :class:`gradflow.models.MLP`'s layout (``{"params": {"input", "hidden",
        "readout"}}``), the pre-trained layers in ``input``/``hidden`` and the readout as given.
      losses: array ``(depth, steps)``, the reconstruction-error curve of each level (level 0 =
        the input layer).
      decoders: ``{"input": …, "hidden": …}``, each level's decoder (see :class:`LevelResult`;
        the ``hidden`` ones stacked on a leading axis of ``depth − 1``).
    """

    params: Any
    losses: jax.Array
    decoders: Any


def _affine(h, kernel, bias):
    z = h @ kernel
    return z + jnp.broadcast_to(bias, z.shape)


def cd_gradient(rbm, v, key, *, k: int = 1, visible: str = "bernoulli"):
    """Contrastive-divergence (CD-k) estimate of −∂(mean log-likelihood)/∂θ of an RBM.

    With energy E(v, h) = −aᵀv − bᵀh − vᵀWh (Bernoulli visible units) or ½‖v − a‖² − bᵀh − vᵀWh
    (Gaussian visible units of unit variance), ∂ log p(v)/∂W = v p(h | v)ᵀ − ⟨v hᵀ⟩_model. CD-k
    replaces the model expectation by v_k p(h | v_k)ᵀ, v_k the end of a k-step block-Gibbs chain
    started at the data (hidden and visible states *sampled* at every step). As k → ∞ the chain
    reaches the model distribution and the estimate's expectation is the exact gradient; for
    small k it is biased (Carreira-Perpiñán & Hinton 2005). Returned as a gradient to *minimise*
    (the negative log-likelihood), so it can go straight to an optax optimiser.

    Args:
      rbm: ``{"kernel": W (m, n), "bias": b (n,), "visible_bias": a (m,)}``.
      v: data, array ``(B, m)``.
      key: PRNG key of the Gibbs chain.
      k: Gibbs steps, >= 1.
      visible: ``"bernoulli"`` or ``"gaussian"`` (unit variance).

    Returns:
      ``(grads, recon)``: ``grads`` shaped like ``rbm``; ``recon`` the mean squared
      reconstruction error mean((v − E[v | p(h | v)])²), shape ``()``.

    References:
      Hinton 2002, "Training products of experts by minimizing contrastive divergence", Neural
      Computation 14(8); Hinton, "A practical guide to training RBMs" (2010), §3 and §13.2.
    """
    k = _checks.positive_int("k", k)
    if visible not in VISIBLE:
        raise ValueError(f"visible must be one of {VISIBLE}, got {visible!r}")
    w, b, a = rbm["kernel"], rbm["bias"], rbm["visible_bias"]

    def visible_mean(h):
        z = _affine(h, w.T, a)
        return z if visible == "gaussian" else jax.nn.sigmoid(z)

    def gibbs(vt, key_t):
        kh, kv = jax.random.split(key_t)
        h = jax.random.bernoulli(kh, jax.nn.sigmoid(_affine(vt, w, b))).astype(vt.dtype)
        mean = visible_mean(h)
        if visible == "gaussian":
            return mean + jax.random.normal(kv, mean.shape, mean.dtype), None
        return jax.random.bernoulli(kv, mean).astype(vt.dtype), None

    ph0 = jax.nn.sigmoid(_affine(v, w, b))
    vk, _ = jax.lax.scan(gibbs, v, jax.random.split(key, k))
    phk = jax.nn.sigmoid(_affine(vk, w, b))
    n = v.shape[0]
    grads = {
        "kernel": -(v.T @ ph0 - vk.T @ phk) / n,
        "bias": -jnp.mean(ph0 - phk, axis=0),
        "visible_bias": -jnp.mean(v - vk, axis=0),
    }
    recon = jnp.mean((v - visible_mean(ph0)) ** 2)
    return grads, recon


class _Level(NamedTuple):
    """Static settings of one level's training."""

    act: Callable
    method: str
    steps: int
    batch: int | None
    optimizer: Any
    cd_k: int
    tied: bool


def _fit_level(cfg: _Level, layer, h, key, visible: str) -> LevelResult:
    """Trains one level on data ``h`` (N, m): a lax.scan over ``cfg.steps`` optimiser steps."""
    m = h.shape[-1]
    if cfg.method == "rbm":
        theta = dict(layer, visible_bias=jnp.zeros((m,), h.dtype))

        def loss_and_grad(theta, hb, k):
            grads, recon = cd_gradient(theta, hb, k, k=cfg.cd_k, visible=visible)
            return recon, grads

    else:
        dec = {"bias": jnp.zeros((m,), h.dtype)}
        if not cfg.tied:
            dec["kernel"] = layer["kernel"].T
        theta = {"enc": layer, "dec": dec}

        def loss(theta, hb):
            enc, dec = theta["enc"], theta["dec"]
            code = cfg.act(_affine(hb, enc["kernel"], enc["bias"]))
            w = enc["kernel"].T if cfg.tied else dec["kernel"]
            return jnp.mean((_affine(code, w, dec["bias"]) - hb) ** 2)

        grad_fn = jax.value_and_grad(loss)

        def loss_and_grad(theta, hb, k):
            del k
            return grad_fn(theta, hb)

    def body(carry, t):
        theta, state = carry
        kb, ks = jax.random.split(jax.random.fold_in(key, t))
        hb = h if cfg.batch is None else h[jax.random.randint(kb, (cfg.batch,), 0, h.shape[0])]
        value, grads = loss_and_grad(theta, hb, ks)
        updates, state = cfg.optimizer.update(grads, state, theta)
        return (optax.apply_updates(theta, updates), state), value

    init = (theta, cfg.optimizer.init(theta))
    (theta, _), losses = jax.lax.scan(body, init, jnp.arange(cfg.steps))
    if cfg.method == "rbm":
        layer = {"kernel": theta["kernel"], "bias": theta["bias"]}
        return LevelResult(layer, {"bias": theta["visible_bias"]}, losses)
    return LevelResult(theta["enc"], theta["dec"], losses)


def _settings(activation, method, steps, batch, optimizer, cd_k, tied, visible) -> _Level:
    """Checks the static arguments (before anything is traced)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if visible not in VISIBLE:
        raise ValueError(f"visible must be one of {VISIBLE}, got {visible!r}")
    act = activations.get(activation)
    if method == "rbm" and act.name != "sigmoid":
        raise ValueError(
            f"method='rbm' needs activation 'sigmoid' (the RBM's p(h | v)), got {act.name!r}"
        )
    steps = _checks.positive_int("steps", steps)
    batch = None if batch is None else _checks.positive_int("batch", batch)
    cd_k = _checks.positive_int("cd_k", cd_k)
    if not isinstance(tied, bool):
        raise TypeError(f"tied must be True or False, got {tied!r}")
    if optimizer is None:
        optimizer = optax.adam(1e-3)
    elif not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"optimizer must be an optax GradientTransformation, got {optimizer!r}")
    return _Level(act.fn, method, steps, batch, optimizer, cd_k, tied)


def _check_data(name: str, h, width: int | None = None):
    h = _checks.as_float_array(name, h, (2,))
    if width is not None and h.shape[-1] != width:
        raise ValueError(f"{name} must have {width} features, got shape {h.shape}")
    return h


def train_level(
    layer,
    h,
    *,
    key: jax.Array,
    steps: int,
    activation="sigmoid",
    method: str = "autoencoder",
    batch: int | None = None,
    optimizer: optax.GradientTransformation | None = None,
    cd_k: int = 1,
    tied: bool = False,
    visible: str = "gaussian",
) -> LevelResult:
    """Trains one level on data ``h``: the building block :func:`pretrain` stacks.

    Args:
      layer: the encoder's starting point ``{"kernel": (m, n), "bias": (n,)}``.
      h: training data, array ``(N, m)``.
      key: PRNG key: step t draws its batch (and the RBM its Gibbs chain) from
        ``fold_in(key, t)``.
      steps: optimiser steps, >= 1.
      activation: the encoder's φ (registry name or callable).
      method: ``"autoencoder"`` or ``"rbm"`` (see the module docstring).
      batch: examples per step, drawn with replacement; None: all N every step.
      optimizer: optax optimiser (default ``optax.adam(1e-3)``).
      cd_k: Gibbs steps of CD-k (RBM only).
      tied: autoencoder decoder W' = Wᵀ.
      visible: the RBM's visible units: ``"gaussian"`` (unit variance) or ``"bernoulli"``.

    Returns:
      :class:`LevelResult`.

    Raises:
      ValueError, TypeError: for a bad argument (named).
    """
    cfg = _settings(activation, method, steps, batch, optimizer, cd_k, tied, visible)
    h = _check_data("h", h, jnp.shape(layer["kernel"])[0])
    return jax.jit(_fit_level, static_argnums=(0, 4))(cfg, layer, h, key, visible)


def _check_model(model) -> None:
    if not isinstance(model, models.MLP):
        raise TypeError(f"model must be a gradflow.models.MLP, got {type(model).__name__}")
    if model.residual or model.norm is not None:
        raise ValueError(
            "greedy pre-training needs a plain MLP (residual=False, norm=None): each level must "
            f"be one layer φ(h W + b); got residual={model.residual}, norm={model.norm!r}"
        )


def make_pretrain(
    model: models.MLP,
    *,
    steps: int,
    method: str = "autoencoder",
    batch: int | None = None,
    optimizer: optax.GradientTransformation | None = None,
    cd_k: int = 1,
    tied: bool = False,
    visible: str = "gaussian",
) -> Callable[..., PretrainResult]:
    """The pure pre-training run behind :func:`pretrain`: ``run(params, x, key)``.

    Jittable and ``vmap``-able over parameters, data and keys (the study pre-trains every seed in
    one program). Level l uses the key ``fold_in(key, l)``.

    Args: as :func:`pretrain`.

    Returns:
      ``run(params, x, key) -> PretrainResult``.
    """
    _check_model(model)
    cfg = _settings(model.activation, method, steps, batch, optimizer, cd_k, tied, visible)
    step = model.step  # φ(h W + b): the MLP's own layer, so the frozen outputs are its own

    def run(params, x, key) -> PretrainResult:
        wrapped = isinstance(params, dict) and set(params) == {"params"}
        p = params["params"] if wrapped else params
        first = _fit_level(cfg, p["input"], x, jax.random.fold_in(key, 0), visible)
        h1 = step(first.layer, x)

        def level(h, xs):
            layer, index = xs
            # Levels >= 1 see sigmoid/other hidden activations, never standardised data.
            res = _fit_level(cfg, layer, h, jax.random.fold_in(key, index), "bernoulli")
            return step(res.layer, h), res

        index = jnp.arange(1, model.depth)
        _, rest = jax.lax.scan(level, h1, (p["hidden"], index))
        hidden = dict(p["hidden"], **rest.layer)
        new = dict(p, input=dict(p["input"], **first.layer), hidden=hidden)
        losses = jnp.concatenate([first.losses[None], rest.losses])
        decoders = {"input": first.decoder, "hidden": rest.decoder}
        return PretrainResult({"params": new} if wrapped else new, losses, decoders)

    return run


def pretrain(
    model: models.MLP,
    params,
    x,
    *,
    key: jax.Array,
    steps: int,
    method: str = "autoencoder",
    batch: int | None = None,
    optimizer: optax.GradientTransformation | None = None,
    cd_k: int = 1,
    tied: bool = False,
    visible: str = "gaussian",
) -> PretrainResult:
    """Greedy layer-wise pre-training of a plain MLP's hidden layers, one level at a time.

    Level 0 (``input``) is trained on ``x``; level l (``hidden/{l−1}``) on the frozen outputs of
    levels 0 … l−1 (see the module docstring). The readout is returned unchanged.

    Args:
      model: a :class:`gradflow.models.MLP` with ``residual=False`` and ``norm=None``.
      params: its parameters (from ``model.init``), the starting point of every level.
      x: training inputs, array ``(N, d)`` (standardised for ``visible="gaussian"``).
      key: PRNG key (level l uses ``fold_in(key, l)``).
      steps: optimiser steps per level, >= 1.
      method: ``"autoencoder"`` or ``"rbm"`` (``"rbm"`` needs ``activation="sigmoid"``).
      batch: examples per step (drawn with replacement); None: all N.
      optimizer: optax optimiser for every level (default ``optax.adam(1e-3)``).
      cd_k: Gibbs steps of CD-k (RBM only), >= 1.
      tied: tied autoencoder weights.
      visible: level 0's RBM visible units, ``"gaussian"`` (unit variance) or ``"bernoulli"``.

    Returns:
      :class:`PretrainResult`: ``params`` in the model's layout, ``losses`` ``(depth, steps)``.

    Raises:
      TypeError: ``model`` is not an MLP; a bad ``optimizer`` or ``tied``.
      ValueError: a residual/normalised MLP, a bad ``method``/``visible``/count, ``x`` not a
        finite ``(N, d)`` array of the model's input width.
    """
    run = make_pretrain(
        model,
        steps=steps,
        method=method,
        batch=batch,
        optimizer=optimizer,
        cd_k=cd_k,
        tied=tied,
        visible=visible,
    )
    wrapped = isinstance(params, dict) and set(params) == {"params"}
    p = params["params"] if wrapped else params
    if not isinstance(p, dict) or not {"input", "hidden", "readout"} <= set(p):
        raise ValueError("params must be an MLP's parameters (input, hidden, readout)")
    _checks.check_finite("params", params)
    x = _check_data("x", x, p["input"]["kernel"].shape[0])
    return jax.jit(run)(params, x, key)
