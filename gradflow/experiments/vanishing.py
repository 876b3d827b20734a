"""The core claim: gradients vanish (or explode) layer by layer and step by step.

(a) per-layer gradient norms of deep MLPs at their textbook initialisations; (b) the singular
values of the Jacobian through all their hidden layers; (c) ‖∂x_T/∂x_k‖ in a tanh RNN at three
spectral radii around 1/γ with Pascanu's bound (γλ₁)^(T−k) over it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradflow import activations, gradients, init, jacobians, models, plots, spectra
from gradflow.experiments import _io

NAME = "vanishing"
DESCRIPTION = "per-layer gradient norms, Jacobian spectra and BPTT norms vs Pascanu's bound (core)"

# Spectral radii of figure (c), in units of 1/γ (γ = max φ' = 1 for tanh).
RADII = {"below": 0.8, "at": 1.0, "above": 1.5}
# Input scales of figure (c): weak inputs keep tanh near its linear regime, strong ones saturate it.
RNN_INPUTS = {"weak_input": 0.1, "strong_input": 1.0}


class NetSpec(NamedTuple):
    label: str
    activation: str
    kernel_init: object
    residual: bool = False


def mlp_specs(depth: int) -> list[NetSpec]:
    """The networks of figures (a) and (b): each activation at its textbook initialisation."""
    return [
        NetSpec("sigmoid, Glorot", "sigmoid", init.glorot()),
        NetSpec("sigmoid, Kumar (3.6/√N)", "sigmoid", init.kumar("sigmoid")),
        NetSpec("sigmoid, Yilmaz–Poli", "sigmoid", init.yilmaz_poli()),
        NetSpec("tanh, Glorot", "tanh", init.glorot()),
        NetSpec("ReLU, He", "relu", init.he()),
        NetSpec("residual ReLU, He", "relu", init.he(), residual=True),
    ]


def _mlp(spec: NetSpec, width: int, depth: int) -> models.MLP:
    # Residual branches scaled by 1/√depth keep the forward variance O(1) over depth
    # (with scale 1 a He-initialised residual ReLU net's activations grow like 1.5^depth).
    return models.MLP(
        width=width,
        depth=depth,
        activation=spec.activation,
        kernel_init=spec.kernel_init,
        residual=spec.residual,
        residual_scale=1.0 / math.sqrt(depth) if spec.residual else 1.0,
        out_features=1,
    )


def measure_mlp(spec: NetSpec, width: int, depth: int, batch: int, keys: jax.Array):
    """Per-layer gradient norms and log10 singular values of ∂h_depth/∂h_1, one row per key.

    Data: x ~ N(0, I_width), targets ~ N(0, 1), loss = mean squared error of the readout.

    Singular values of the product are resolved down to about n·eps·σ_max (the SVD of the
    unit-norm product is backward stable, not relatively accurate); smaller ones, including the
    exact zeros of dead ReLU units, are returned as that floor.

    Returns:
      ``(layer_norms (seeds, depth + 1), log10_sv (seeds, width), resolved (seeds, width))``.
    """
    model = _mlp(spec, width, depth)

    def one(key):
        kp, kx, ky = jax.random.split(key, 3)
        x = jax.random.normal(kx, (batch, width))
        y = jax.random.normal(ky, (batch, 1))
        params = model.init(kp, x[0])
        loss = lambda p, b: jnp.mean((model.apply(p, b[0]) - b[1]) ** 2)
        norms = gradients.layer_grad_norms(loss, params, (x, y)).values
        products = jacobians.backward_products(model.chain(params, x[0]))
        log10_sv = products.log_singular_values()[0] / jnp.log(10.0)
        floor = log10_sv[0] + jnp.log10(width * jnp.finfo(log10_sv.dtype).eps)
        resolved = log10_sv > floor
        return norms, jnp.where(resolved, log10_sv, floor), resolved

    return jax.jit(jax.vmap(one))(keys)


def measure_rnn(radius: float, width: int, steps: int, keys: jax.Array, input_scale: float = 0.1):
    """‖∂x_T/∂x_k‖₂ for k = 0 … T−1 in a tanh RNN with W = radius · orthogonal.

    Inputs are u_t ~ N(0, input_scale² I_4): weak inputs leave the state near the linear regime,
    where ρ > 1/γ makes gradients explode; strong inputs saturate tanh and damp them (ρ > 1/γ is
    necessary for explosion, not sufficient — Pascanu et al. 2013, §3.1).

    An orthogonal W scaled by ρ has spectral radius and largest singular value both equal to ρ,
    so Pascanu's bound (γλ₁)^(T−k) with γ = 1 is ρ^(T−k).

    Returns:
      ``(norms (seeds, T), lambda1 (seeds,), rho (seeds,))``; norms[:, j] is at T − k = T − j.
    """
    model = models.RNN(width=width, activation="tanh", recurrent_init=init.orthogonal(radius))

    def one(key):
        kp, ku = jax.random.split(key)
        u = input_scale * jax.random.normal(ku, (steps, 4))
        params = model.init(kp, u)
        products = jacobians.backward_products(model.chain(params, u))
        w = params["params"]["recurrent"]["kernel"]
        return jnp.exp(products.log_spectral_norm()), spectra.singular_values(w)[0], w

    norms, lam1, w = jax.jit(jax.vmap(one))(keys)
    return norms, lam1, spectra.spectral_radius(w)


def _mlp_section(out: Path, depth: int, width: int, batch: int, keys) -> dict:
    norms, svs, summary = {}, {}, {}
    # float64: at depth 50 the sigmoid nets' first-layer gradients (~1e-40) underflow float32.
    with jax.enable_x64(True):
        for spec in mlp_specs(depth):
            n, s, ok = (np.asarray(a) for a in measure_mlp(spec, width, depth, batch, keys))
            # unresolved values sit at the float64 floor; the figure finds it again from the
            # saved values (unresolved_floor), so it can be redrawn from mlp.npz alone
            norms[spec.label], svs[spec.label] = n, s.ravel()
            summary[spec.label] = {
                # first vs last hidden layer (the readout's gradient crosses no hidden Jacobian)
                "log10_first_over_last_hidden": float(np.median(np.log10(n[:, 0] / n[:, -2]))),
                "median_log10_singular_value": float(np.median(s)),
                "log10_max_singular_value": float(np.median(s.max(1))),
                "fraction_below_float64_floor": float(1.0 - ok.mean()),
            }
    arrays = {f"layer_norms/{k}": v for k, v in norms.items()}
    arrays |= {f"log10_sv/{k}": v for k, v in svs.items()}
    _io.save_npz(arrays, out / "mlp.npz")
    fig = figure_layer_grad_norms(arrays, depth=depth, width=width)
    _io.save_figure(fig, out / "layer_grad_norms.png")
    fig = figure_jacobian_singular_values(arrays, depth=depth, width=width)
    _io.save_figure(fig, out / "jacobian_singular_values.png")
    return summary


def _rnn_section(out: Path, width: int, steps: int, keys, input_scale: float, tag: str) -> dict:
    gamma = activations.get("tanh").gamma
    radii = {where: r / gamma for where, r in RADII.items()}
    arrays, summary = {}, {"input_scale": input_scale}
    distance = np.arange(steps, 0, -1)  # entry j of the products is k = j, so T − k = T − j
    for where, rho in radii.items():
        n, lam1, rad = (np.asarray(a) for a in measure_rnn(rho, width, steps, keys, input_scale))
        bound = (gamma * np.median(lam1)) ** distance.astype(np.float64)
        summary[where] = {
            "rho": float(np.median(rad)),
            "lambda1": float(np.median(lam1)),
            # mean log growth per step of ‖∂x_T/∂x_0‖ over the whole sequence
            "log_rate_per_step": float(np.median(np.log(n[:, 0]) / steps)),
            "bound_violated": bool(np.any(n > bound * (1 + 1e-4))),
        }
        arrays[where] = {
            "distance": distance,
            "norms": n,
            "bound": bound,
            "lambda1": lam1,
            "rho": rad,
        }
        _io.save_npz(arrays[where], out / f"rnn_{tag}_{where}.npz")
    fig = figure_rnn(arrays, width=width, input_scale=input_scale)
    _io.save_figure(fig, out / f"rnn_{tag}.png")
    return summary


def run(out_dir, *, full: bool = False) -> dict:
    """Writes figures (a)–(c) and their numbers to ``out_dir/vanishing``; returns a summary."""
    out = Path(out_dir) / NAME
    depth, width, batch, seeds = (100, 256, 256, 8) if full else (50, 128, 64, 4)
    steps, rnn_width = (300, 128) if full else (100, 64)
    keys = jax.random.split(jax.random.key(0), seeds)
    summary = {
        "depth": depth,
        "width": width,
        "seeds": seeds,
        "mlp": _mlp_section(out, depth, width, batch, keys),
        "rnn": {"steps": steps, "width": rnn_width},
    }
    for tag, input_scale in RNN_INPUTS.items():
        summary["rnn"][tag] = _rnn_section(out, rnn_width, steps, keys, input_scale, tag)
    _io.save_json(summary, out / "summary.json")
    return summary


# ---------------------------------------------------------------------------------------------
# Figures, from the numbers run() saves (so figures() can redraw them from the files)


def figure_layer_grad_norms(
    data: Mapping[str, np.ndarray], *, depth: int, width: int, ax: Axes | None = None
) -> Figure:
    """Figure (a): ‖∂L/∂θ_l‖ against layer l for each network of :func:`mlp_specs`.

    Args:
      data: the contents of ``mlp.npz``: ``"layer_norms/<label>"`` arrays ``(seeds, depth + 1)``
        (other keys are ignored).
      depth, width: of the MLPs, for the title.
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    title = f"Per-layer gradient norm, depth-{depth} width-{width} MLPs at initialisation"
    return plots.layer_grad_norms(_io.with_prefix(data, "layer_norms"), title=title, ax=ax)


def unresolved_floor(log10_sv: np.ndarray, width: int) -> float | None:
    """The log10 value at which :func:`measure_mlp` placed unresolved singular values, or None.

    Per network (row of ``width`` values, largest first) the floor is the largest value plus
    log10(width · eps₆₄); unresolved values were set to exactly it, so they are the row's minimum
    and lie at the floor (1e-9 absorbs the last-ulp difference of NumPy's and XLA's log10).

    Args:
      log10_sv: array ``(seeds · width,)`` or ``(seeds, width)``, as saved in ``mlp.npz``.
      width: values per network.

    Returns:
      The median of the unresolved values (the floor drawn in figure (b)), or None if every
      singular value was resolved.
    """
    s = np.asarray(log10_sv, np.float64).reshape(-1, width)
    floor = s[:, :1] + np.log10(width * np.finfo(np.float64).eps)
    unresolved = (s == s.min(axis=1, keepdims=True)) & (s <= floor + 1e-9)
    return float(np.median(s[unresolved])) if unresolved.any() else None


def figure_jacobian_singular_values(
    data: Mapping[str, np.ndarray], *, depth: int, width: int, axes=None
) -> Figure:
    """Figure (b): histograms of log10 singular values of ∂h_depth/∂h_1, one panel per network.

    Args:
      data: the contents of ``mlp.npz``: ``"log10_sv/<label>"`` arrays ``(seeds · width,)``
        (other keys are ignored).
      depth, width: of the MLPs (the title; ``width`` also locates the float64 floor, see
        :func:`unresolved_floor`).
      axes: one axes per network (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    svs = _io.with_prefix(data, "log10_sv")
    floors = {k: f for k, v in svs.items() if (f := unresolved_floor(v, width)) is not None}
    title = rf"Singular values of $\partial h_{{{depth}}}/\partial h_1$ (width {width})"
    return plots.log_singular_value_density(svs, floors=floors, title=title, axes=axes)


def figure_rnn(
    data: Mapping[str, Mapping[str, np.ndarray]],
    *,
    width: int,
    input_scale: float,
    ax: Axes | None = None,
) -> Figure:
    """Figure (c): ‖∂x_T/∂x_k‖ against T − k at each spectral radius, Pascanu's bound dashed.

    Args:
      data: ``{"below" | "at" | "above": contents of rnn_<tag>_<where>.npz}`` — ``distance``
        ``(T,)``, ``norms`` ``(seeds, T)`` and ``bound`` ``(T,)``; the keys are those of
        :data:`RADII`.
      width: of the RNN (for the title).
      input_scale: the inputs' standard deviation (for the title).
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    gamma = activations.get("tanh").gamma
    norms, bounds, distance = {}, {}, None
    for where, arrays in data.items():
        label = rf"$\rho = \lambda_1$ = {RADII[where] / gamma:g} ({where} 1/γ)"
        norms[label], bounds[label] = arrays["norms"], arrays["bound"]
        distance = arrays["distance"]
    title = f"BPTT in a width-{width} tanh RNN, inputs N(0, {input_scale:g}²): W = ρ·orthogonal"
    return plots.rnn_backprop_norms(distance, norms, bounds, title=title, ax=ax)


def figures(out_dir) -> dict[str, Figure]:
    """Redraws every figure of :func:`run` from the numbers it saved in ``out_dir/vanishing``.

    Args:
      out_dir: the directory given to :func:`run`.

    Returns:
      ``{file stem: Figure}``, the stems of the PNG/PDF files :func:`run` wrote.
    """
    out = Path(out_dir) / NAME
    summary = _io.load_json(out / "summary.json")
    mlp = _io.load_npz(out / "mlp.npz")
    size = {"depth": summary["depth"], "width": summary["width"]}
    figs = {
        "layer_grad_norms": figure_layer_grad_norms(mlp, **size),
        "jacobian_singular_values": figure_jacobian_singular_values(mlp, **size),
    }
    for tag in RNN_INPUTS:
        rnn = {where: _io.load_npz(out / f"rnn_{tag}_{where}.npz") for where in RADII}
        input_scale = summary["rnn"][tag]["input_scale"]
        figs[f"rnn_{tag}"] = figure_rnn(rnn, width=summary["rnn"]["width"], input_scale=input_scale)
    return figs
