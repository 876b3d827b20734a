"""The core claim: gradients vanish (or explode) layer by layer and step by step.

(a) per-layer gradient norms of deep MLPs at their textbook initialisations; (b) the singular
values of the Jacobian through all their hidden layers; (c) ‖∂x_T/∂x_k‖ in a tanh RNN at three
spectral radii around 1/γ with Pascanu's bound (γλ₁)^(T−k) over it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow import activations, gradients, init, jacobians, models, plots, spectra
from gradflow.experiments import _io

NAME = "vanishing"
DESCRIPTION = "per-layer gradient norms, Jacobian spectra and BPTT norms vs Pascanu's bound (core)"


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
    norms, svs, floors, summary = {}, {}, {}, {}
    # float64: at depth 50 the sigmoid nets' first-layer gradients (~1e-40) underflow float32.
    with jax.enable_x64(True):
        for spec in mlp_specs(depth):
            n, s, ok = (np.asarray(a) for a in measure_mlp(spec, width, depth, batch, keys))
            norms[spec.label], svs[spec.label] = n, s.ravel()
            if not ok.all():  # the floor is where unresolved values were placed
                floors[spec.label] = float(np.median(s[~ok]))
            summary[spec.label] = {
                # first vs last hidden layer (the readout's gradient crosses no hidden Jacobian)
                "log10_first_over_last_hidden": float(np.median(np.log10(n[:, 0] / n[:, -2]))),
                "median_log10_singular_value": float(np.median(s)),
                "log10_max_singular_value": float(np.median(s.max(1))),
                "fraction_below_float64_floor": float(1.0 - ok.mean()),
            }
    _io.save_npz(
        {f"layer_norms/{k}": v for k, v in norms.items()}
        | {f"log10_sv/{k}": v for k, v in svs.items()},
        out / "mlp.npz",
    )
    title = f"Per-layer gradient norm, depth-{depth} width-{width} MLPs at initialisation"
    _io.save_figure(plots.layer_grad_norms(norms, title=title), out / "layer_grad_norms.png")
    title = rf"Singular values of $\partial h_{{{depth}}}/\partial h_1$ (width {width})"
    _io.save_figure(
        plots.log_singular_value_density(svs, floors=floors, title=title),
        out / "jacobian_singular_values.png",
    )
    return summary


def _rnn_section(out: Path, width: int, steps: int, keys, input_scale: float, tag: str) -> dict:
    gamma = activations.get("tanh").gamma
    radii = {"below": 0.8 / gamma, "at": 1.0 / gamma, "above": 1.5 / gamma}
    norms, bounds, summary = {}, {}, {"input_scale": input_scale}
    distance = np.arange(steps, 0, -1)  # entry j of the products is k = j, so T − k = T − j
    for where, rho in radii.items():
        n, lam1, rad = (np.asarray(a) for a in measure_rnn(rho, width, steps, keys, input_scale))
        label = rf"$\rho = \lambda_1$ = {rho:g} ({where} 1/γ)"
        norms[label] = n
        bounds[label] = (gamma * np.median(lam1)) ** distance.astype(np.float64)
        summary[where] = {
            "rho": float(np.median(rad)),
            "lambda1": float(np.median(lam1)),
            # mean log growth per step of ‖∂x_T/∂x_0‖ over the whole sequence
            "log_rate_per_step": float(np.median(np.log(n[:, 0]) / steps)),
            "bound_violated": bool(np.any(n > bounds[label] * (1 + 1e-4))),
        }
        _io.save_npz(
            {"distance": distance, "norms": n, "bound": bounds[label], "lambda1": lam1, "rho": rad},
            out / f"rnn_{tag}_{where}.npz",
        )
    title = f"BPTT in a width-{width} tanh RNN, inputs N(0, {input_scale:g}²): W = ρ·orthogonal"
    _io.save_figure(
        plots.rnn_backprop_norms(distance, norms, bounds, title=title), out / f"rnn_{tag}.png"
    )
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
    summary["rnn"]["weak_input"] = _rnn_section(out, rnn_width, steps, keys, 0.1, "weak_input")
    summary["rnn"]["strong_input"] = _rnn_section(out, rnn_width, steps, keys, 1.0, "strong_input")
    _io.save_json(summary, out / "summary.json")
    return summary
