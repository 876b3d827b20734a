"""Vanilla tanh CNNs at the edge of chaos, delta-orthogonal vs Gaussian (Xiao et al. 2018).

Xiao, Bahri, Sohl-Dickstein, Schoenholz & Pennington 2018, "Dynamical isometry and a mean field
theory of CNNs: how to train 10,000-layer vanilla convolutional neural networks" (ICML,
arXiv:1806.05393). At a critical point (χ₁ = 1) of a circular 1-D tanh CNN we measure:

(a) the exact singular values of ∂h_L/∂h_{L−d} for d up to the full depth (1,000; 10,000 with
    ``full=True``), in float64 log-scale products (:func:`gradflow.jacobians.backward_products`):
    delta-orthogonal kernels keep the bulk near 1, Gaussian kernels spread it over many decades;
(b) the per-layer state-gradient norms ‖∂L/∂h_l‖ of a readout loss;
(c) the empirical length q^l and cross-input correlation c^l over layers against the mean-field
    q- and c-maps (the same for both kernels: orthogonal and Gaussian weights share the forward
    mean field);
(d) the decay of each spatial Fourier mode of a covariance perturbation against the theory
    (λ_m χ_c*)^l (:func:`gradflow.meanfield.cnn_mode_rates`; λ_m = 1 for a delta kernel), at the
    critical point and at an ordered point.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradflow import gradients, init, jacobians, meanfield, plots
from gradflow.experiments import _io
from gradflow.models.cnn import CNN, mode_decay

NAME = "cnn"
DESCRIPTION = (
    "tanh CNN at the edge of chaos to depth 1,000: delta-orthogonal vs Gaussian, Fourier-mode "
    "depth scales (Xiao et al. 2018)"
)

INITS = ("Gaussian", "delta-orthogonal")
KERNEL = 3
LN10 = math.log(10.0)


class Settings(NamedTuple):
    """Sizes of the three measurements.

    Attributes:
      depth: layers of the signal-propagation nets (a, b, c).
      positions: n, spatial positions (1-D, circular).
      jac_channels: C of the nets whose full Jacobians are formed (a, b): state n·C.
      jac_seeds: networks per (init, critical point) for (a, b).
      fwd_channels, fwd_seeds: C and seeds of the forward q/c measurement (c).
      mode_channels, mode_seeds, mode_depth: the Fourier-mode measurement (d).
      sigma_b2: bias variances of the critical points of (a, b).
      main_sigma_b2: the critical point of (c, d).
      ordered: (σ_w², σ_b²) of the ordered point of (d).
    """

    depth: int
    positions: int
    jac_channels: int
    jac_seeds: int
    fwd_channels: int
    fwd_seeds: int
    mode_channels: int
    mode_seeds: int
    mode_depth: int
    sigma_b2: tuple
    main_sigma_b2: float
    ordered: tuple = (1.4, 0.05)


def settings(full: bool) -> Settings:
    if full:
        # Forward nets: 10,000 layers of 128 channels are 2 GB of float32 kernels (256: 8 GB).
        return Settings(10_000, 16, 8, 4, 128, 4, 512, 32, 16, (1e-5, 0.05), 0.05)
    return Settings(1_000, 16, 8, 2, 64, 2, 128, 16, 12, (1e-5, 0.05), 0.05)


def critical_pair(sigma_b2: float) -> tuple[float, float, float]:
    """(σ_w², σ_b², q*) on the tanh edge of chaos χ₁ = 1."""
    sw2 = float(meanfield.critical_sigma_w2("tanh", sigma_b2))
    return sw2, float(sigma_b2), float(meanfield.q_star("tanh", sw2, sigma_b2))


def _unit_model(depth: int, channels: int, init_name: str) -> CNN:
    """A CNN with unit-scale kernels (σ_w = 1) and N(0, 1) biases, rescaled per point later."""
    kernel_init = init.gaussian(1.0) if init_name == "Gaussian" else init.delta_orthogonal(1.0)
    return CNN(
        depth=depth,
        channels=channels,
        kernel_size=KERNEL,
        activation="tanh",
        kernel_init=kernel_init,
        bias_init=init.gaussian_bias(1.0),
    )


@functools.cache
def _init_fn(init_name: str, depth: int, channels: int):
    """jit(model.init) of the unit model. The analyses below are compiled once per architecture
    and shared by both initialisers (applying a CNN does not depend on its ``kernel_init``)."""
    return jax.jit(_unit_model(depth, channels, init_name).init)


def _scaled(params, sw2, sb2):
    """Kernels × σ_w and biases × σ_b in the conv layers (one compiled function serves all σ)."""
    p = params["params"]
    scale = lambda d: {"kernel": d["kernel"] * jnp.sqrt(sw2), "bias": d["bias"] * jnp.sqrt(sb2)}  # noqa: E731
    return {
        "params": {
            "input": scale(p["input"]),
            "hidden": scale(p["hidden"]),
            "readout": p["readout"],
        }
    }


def _per_position_inputs(key, n: int, c_in: int, sw2: float, sb2: float, q: float, corr: float):
    """Two inputs ``(2, n, c_in)`` whose first pre-activations have length q and correlation
    ``corr``·(q − σ_b²)/q + σ_b²/q at every position, in expectation over the first kernel.

    Every position has |x_α|² = c_in·s with σ_w² s + σ_b² = q, and the second input is
    corr·x_α + √(1 − corr²)·w_α with w_α ⊥ x_α of the same norm.
    """
    k1, k2 = jax.random.split(key)
    a = jax.random.normal(k1, (n, c_in))
    w = jax.random.normal(k2, (n, c_in))
    w = w - jnp.sum(w * a, axis=1, keepdims=True) / jnp.sum(a * a, axis=1, keepdims=True) * a
    unit = lambda v: v / jnp.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    r = math.sqrt(c_in * (q - sb2) / sw2)
    xa = r * unit(a)
    xb = r * (corr * unit(a) + math.sqrt(1.0 - corr**2) * unit(w))
    return jnp.stack([xa, xb])


# --------------------------------------------------------------------------------------------
# (a, b) Jacobian spectra and state-gradient norms
# --------------------------------------------------------------------------------------------


def depths_from_top(depth: int) -> np.ndarray:
    """Log-spaced d = 1 … depth − 1 (the chain has depth − 1 steps)."""
    d = np.unique(np.round(np.logspace(0, math.log10(depth - 1), 25)).astype(int))
    return d[d <= depth - 1]


@functools.cache
def _jacobian_fn(depth: int, positions: int, channels: int):
    """One jitted network analysis per architecture; σ_w², σ_b², q* are traced arguments."""
    model = _unit_model(depth, channels, "Gaussian")
    idx = (depth - 1) - depths_from_top(depth)  # products[k] = ∂h_K/∂h_k, K = depth − 1

    @jax.jit
    def analyse(params, x, ky, sw2, sb2):
        params = _scaled(params, sw2, sb2)
        chain = model.chain(params, x)
        products = jacobians.backward_products(chain)
        sub = jacobians.JacobianProducts(products.unit[idx], products.log_norm[idx])
        log10_sv = sub.log_singular_values() / LN10
        floor = log10_sv[:, :1] + jnp.log10(log10_sv.shape[1] * jnp.finfo(log10_sv.dtype).eps)
        resolved = log10_sv > floor
        readout = params["params"]["readout"]
        y = jax.random.normal(ky, (1,), x.dtype)

        def loss(h):  # global average pool, Dense readout, squared error
            out = jnp.mean(h, axis=0) @ readout["kernel"] + readout["bias"]
            return jnp.mean((out - y) ** 2)

        grads = gradients.state_grad_norms(chain, loss, log10=True)
        return jnp.where(resolved, log10_sv, floor), resolved, grads

    def one(init_one, key, sw2, sb2, q):
        kp, kx, ky = jax.random.split(key, 3)
        x = jnp.sqrt(q) * jax.random.normal(kx, (positions, channels), jnp.result_type(q))
        return analyse(init_one(kp, x), x, ky, sw2, sb2)

    return one


def measure_jacobians(init_name: str, s: Settings, sigma_b2: float, keys) -> dict:
    """log10 singular values of ∂h_L/∂h_{L−d} and log10 ‖∂L/∂h_l‖ at a critical point.

    Input x ~ N(0, q*) per channel (C input channels); parameters at the critical (σ_w², σ_b²).
    Run under float64: singular values of the unit-norm products are resolved down to about
    n_state·eps·σ_max (the SVD is backward stable, not relatively accurate); smaller ones are
    returned at that floor and flagged in ``resolved``.

    Returns:
      dict with ``d`` ``(D,)``, ``log10_sv`` ``(seeds, D, n·C)`` (descending), ``resolved``
      (same shape, bool), ``log10_state_grad`` ``(seeds, depth)`` (h_1 … h_depth).
    """
    sw2, sb2, q = critical_pair(sigma_b2)
    one = _jacobian_fn(s.depth, s.positions, s.jac_channels)
    init_one = _init_fn(init_name, s.depth, s.jac_channels)
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    args = [jnp.asarray(v, dtype) for v in (sw2, sb2, q)]
    rows = [one(init_one, k, *args) for k in keys]  # one at a time: K products of (n·C)² each
    sv, ok, g = (np.stack([np.asarray(r[i]) for r in rows]) for i in range(3))
    return {"d": depths_from_top(s.depth), "log10_sv": sv, "resolved": ok, "log10_state_grad": g}


# --------------------------------------------------------------------------------------------
# (c) q^l and c^l against the mean-field maps
# --------------------------------------------------------------------------------------------


@functools.cache
def _forward_fn(depth: int, channels: int):
    model = _unit_model(depth, channels, "Gaussian")

    @jax.jit
    def analyse(params, x, sw2, sb2):
        z = model.preactivations(_scaled(params, sw2, sb2), x)  # (depth, 2, n, C)
        norms = jnp.sqrt(jnp.sum(z**2, axis=(2, 3), keepdims=True))  # (depth, 2, 1, 1)
        unit = z / norms
        # 1 − c = ‖â − b̂‖²/2 for unit vectors: no cancellation as c → 1 (1 − c from c itself
        # bottoms out at float32's 6e-8).
        gap = 0.5 * jnp.sum((unit[:, 0] - unit[:, 1]) ** 2, axis=(1, 2))
        return jnp.mean(z[:, 0] ** 2, axis=(1, 2)), gap

    return analyse


def measure_forward(init_name: str, s: Settings, sigma_b2: float, keys, corr: float = 0.5):
    """Per-layer length q^l and cross-input correlation c^l of two inputs, one row per key.

    q^l = mean of (z^l)² over positions and channels of the first input; c^l = Σ z^a z^b /
    √(Σ (z^a)² Σ (z^b)²) over positions and channels, returned as 1 − c^l. The inputs start
    every position at length q* and at the same correlation, so the mean-field prediction is the
    fully connected q-map and c-map (:func:`gradflow.meanfield.c_layers`): the window average of
    a spatially uniform covariance is itself.

    Returns:
      ``(q (seeds, depth), 1 − c (seeds, depth), q_theory (depth,), 1 − c_theory (depth,))``;
      the theory in float64 (in float32 the critical c-map stalls near 1 − c ≈ 1e-3).
    """
    sw2, sb2, q = critical_pair(sigma_b2)
    analyse = _forward_fn(s.depth, s.fwd_channels)
    init_one = _init_fn(init_name, s.depth, s.fwd_channels)
    rows = []
    for key in keys:
        kp, kx = jax.random.split(key)
        # c_in = C: a delta-orthogonal first layer is then square and, like the Gaussian one,
        # maps per-position |x_α|²/c_in to q¹ = σ_w² |x_α|²/c_in + σ_b².
        x = _per_position_inputs(kx, s.positions, s.fwd_channels, sw2, sb2, q, corr)
        rows.append(analyse(init_one(kp, x[0]), x, sw2, sb2))
    qs, cs = (np.stack([np.asarray(r[i]) for r in rows]) for i in range(2))
    # Layer 1: E[z^a z^b] = σ_w² ⟨x_a, x_b⟩/c_in + σ_b² = corr (q* − σ_b²) + σ_b², over q*.
    c1 = (corr * (q - sb2) + sb2) / q
    with jax.enable_x64(True):
        q_th, c_th = meanfield.c_layers("tanh", sw2, sb2, q, c1, s.depth - 1)
        q_th, gap_th = np.asarray(q_th), 1.0 - np.asarray(c_th)
    return qs, cs, q_th, gap_th


# --------------------------------------------------------------------------------------------
# (d) Fourier modes of a covariance perturbation
# --------------------------------------------------------------------------------------------


@functools.cache
def _mode_fn(depth: int, channels: int):
    model = _unit_model(depth, channels, "Gaussian")

    @jax.jit
    def jets(params, x, direction, sw2, sb2):
        return model.covariance_curvature(_scaled(params, sw2, sb2), x, direction)

    # One network per call, not vmapped over seeds: XLA:CPU's multi-threaded Eigen pool was seen
    # to wedge (all workers idle, the result never ready) on the vmapped program at C = 128-512,
    # as reported for vmap graphs elsewhere (PyAutoFit #1528/#1530; XLA flag
    # --xla_cpu_multi_thread_eigen=false avoids it there).
    def run(init_one, keys, x, direction, sw2, sb2):
        return np.stack([np.asarray(jets(init_one(k, x), x, direction, sw2, sb2)) for k in keys])

    return run


def measure_modes(init_name: str, s: Settings, sw2: float, sb2: float, keys):
    """Per-mode decay of a covariance perturbation around the spatially uniform fixed point.

    As ``tests/test_cnn.py`` (there with c_in = 3 < C, Gaussian kernels only): base input r·u
    at every position (length q*), perturbed along
    x_α(t) = r(u cos t + v_α sin t) with a chirp of angles θ_α = πα²/n in a plane ⊥ u (every
    Fourier mode excited alike); d²Σ^l/dt² per seed by :meth:`CNN.covariance_curvature`, then
    :func:`mode_decay`.

    Returns:
      ``(ModeDecay, theory_rates (n,))``; the theory is λ_m χ_c* for Gaussian kernels and χ_c*
      for every mode of a delta kernel (no spatial mixing: λ_m = 1).
    """
    n, c_in = s.positions, s.mode_channels  # c_in = C: see measure_forward
    q = float(meanfield.q_star("tanh", sw2, sb2))
    r = math.sqrt(c_in * (q - sb2) / sw2)
    angles = np.pi * np.arange(n) ** 2 / n
    eye = np.eye(c_in)
    x = jnp.asarray(np.broadcast_to(r * eye[0], (n, c_in)), jnp.float32)
    direction = r * (np.outer(np.cos(angles), eye[1]) + np.outer(np.sin(angles), eye[2]))
    run = _mode_fn(s.mode_depth, s.mode_channels)
    init_one = _init_fn(init_name, s.mode_depth, s.mode_channels)
    samples = run(init_one, keys, x, jnp.asarray(direction, jnp.float32), sw2, sb2)
    res = mode_decay(samples, min_snr=10.0)
    if init_name == "Gaussian":
        theory = np.asarray(meanfield.cnn_mode_rates("tanh", sw2, sb2, n, KERNEL).rates)
    else:
        theory = np.full(n, float(meanfield.chi_c("tanh", sw2, sb2)))
    return res, theory


# --------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------


def _label(init_name: str, sigma_b2: float) -> str:
    return f"{init_name}, σ_b² = {sigma_b2:g}"


def _jacobian_section(out: Path, s: Settings, keys) -> dict:
    summary, arrays = {}, {}
    with jax.enable_x64(True):
        for sb2 in s.sigma_b2:
            sw2, _, q = critical_pair(sb2)
            for name in INITS:
                label = _label(name, sb2)
                r = measure_jacobians(name, s, sb2, keys)
                sv, ok = r["log10_sv"], r["resolved"]
                full = sv[:, -1]
                summary[label] = {
                    "sigma_w2": sw2,
                    "sigma_b2": sb2,
                    "q_star": q,
                    "log10_sigma_max_full_depth": float(np.median(full[:, 0])),
                    "median_log10_sigma_full_depth": float(np.median(full)),
                    "log10_sigma_min_resolved_full_depth": float(
                        np.median([f[o].min() for f, o in zip(full, ok[:, -1])])
                    ),
                    "fraction_resolved_full_depth": float(ok[:, -1].mean()),
                    "log10_condition_number_at_d": {
                        str(int(dd)): float(np.median(sv[:, i, 0] - sv[:, i, -1]))
                        for i, dd in enumerate(r["d"])
                        if ok[:, i].all()
                    },
                    "log10_state_grad_first_over_last": float(
                        np.median(r["log10_state_grad"][:, 0] - r["log10_state_grad"][:, -1])
                    ),
                }
                arrays |= {
                    f"log10_sv/{label}": sv,
                    f"resolved/{label}": ok,
                    f"log10_state_grad/{label}": r["log10_state_grad"],
                }
    arrays["d"] = depths_from_top(s.depth)
    _io.save_npz(arrays, out / "jacobians.npz")
    _io.save_figure(figure_jacobian_spread(arrays, s), out / "jacobian_spread.png")
    fig = figure_jacobian_singular_values(arrays, s)
    _io.save_figure(fig, out / "jacobian_singular_values.png")
    _io.save_figure(figure_state_grad_norms(arrays, s), out / "state_grad_norms.png")
    return summary


def _forward_section(out: Path, s: Settings, keys) -> dict:
    sb2 = s.main_sigma_b2
    sw2, _, q = critical_pair(sb2)
    qs, cs, summary = {}, {}, {}
    q_th = c_th = None
    for name in INITS:
        qm, cm, q_th, c_th = measure_forward(name, s, sb2, keys)
        qs[name], cs[name] = qm, cm
        summary[name] = {
            "mean_q_over_q_star": float(np.mean(qm) / q),
            "max_abs_q_over_q_star_minus_1": float(np.max(np.abs(np.median(qm, 0) / q - 1))),
            "one_minus_c_last_layer": float(np.median(cm[:, -1])),
            "one_minus_c_theory_last_layer": float(c_th[-1]),
            # First layer where the measured 1 − c falls below half the mean-field value.
            "first_layer_below_half_theory": int(
                np.argmax(np.append(np.median(cm, 0) < 0.5 * c_th, True)) + 1
            ),
        }
    arrays = {f"q/{k}": v for k, v in qs.items()}
    arrays |= {f"one_minus_c/{k}": v for k, v in cs.items()}
    arrays |= {"q_theory": q_th, "one_minus_c_theory": c_th}
    _io.save_npz(arrays, out / "q_c.npz")
    _io.save_figure(figure_q_c(arrays, s, sigma_w2=sw2), out / "q_c.png")
    return {"sigma_w2": sw2, "sigma_b2": sb2, "q_star": q, "channels": s.fwd_channels} | summary


def _mode_section(out: Path, s: Settings, keys) -> dict:
    sw2c, sb2c, _ = critical_pair(s.main_sigma_b2)
    cases = {
        f"Gaussian, critical ({sw2c:.4f}, {sb2c:g})": ("Gaussian", sw2c, sb2c),
        f"delta-orthogonal, critical ({sw2c:.4f}, {sb2c:g})": ("delta-orthogonal", sw2c, sb2c),
        f"Gaussian, ordered {s.ordered}": ("Gaussian", *s.ordered),
    }
    summary, arrays = {}, {}
    half = s.positions // 2 + 1
    for label, (name, sw2, sb2) in cases.items():
        res, theory = measure_modes(name, s, sw2, sb2, keys)
        summary[label] = {
            "chi_c": float(meanfield.chi_c("tanh", sw2, sb2)),
            "modes": [
                {
                    "m": m,
                    "theory": float(theory[m]),
                    "measured": float(res.rate[m]),
                    "stderr": float(res.rate_stderr[m]),
                    "fit_layers": [int(w) for w in res.window[m]],
                    "relative_error": float(res.rate[m] / theory[m] - 1),
                }
                for m in range(half)
            ],
        }
        arrays |= {
            f"amplitude/{label}": res.amplitude,
            f"stderr/{label}": res.stderr,
            f"rate/{label}": res.rate,
            f"theory/{label}": theory,
        }
    _io.save_npz(arrays, out / "fourier_modes.npz")
    _io.save_figure(figure_fourier_modes(arrays, s), out / "fourier_modes.png")
    return summary


def run(out_dir, *, full: bool = False) -> dict:
    """Writes the figures and numbers to ``out_dir/cnn``; returns a summary."""
    out = Path(out_dir) / NAME
    s = settings(full)
    key = jax.random.key(0)
    timings = {}
    t = time.perf_counter()
    jac = _jacobian_section(out, s, jax.random.split(jax.random.fold_in(key, 1), s.jac_seeds))
    timings["jacobians_s"] = time.perf_counter() - t
    t = time.perf_counter()
    fwd = _forward_section(out, s, jax.random.split(jax.random.fold_in(key, 2), s.fwd_seeds))
    timings["forward_s"] = time.perf_counter() - t
    t = time.perf_counter()
    modes = _mode_section(out, s, jax.random.split(jax.random.fold_in(key, 3), s.mode_seeds))
    timings["modes_s"] = time.perf_counter() - t
    summary = {
        "settings": s._asdict(),
        "jacobians": jac,
        "forward": fwd,
        "fourier_modes": modes,
        "timings": timings,
    }
    _io.save_json(summary, out / "summary.json")
    return summary


# ---------------------------------------------------------------------------------------------
# Figures, from the numbers run() saves (so figures() can redraw them from the files). Each takes
# the figure's .npz contents and the run's Settings (or summary.json's "settings" dict).


def _settings(s) -> Settings:
    return s if isinstance(s, Settings) else Settings(**s)


def figure_jacobian_spread(
    data: Mapping[str, np.ndarray], settings, *, ax: Axes | None = None
) -> Figure:
    """Singular values of ∂h_L/∂h_(L−d) against d, one band per (init, critical point).

    Args:
      data: the contents of ``jacobians.npz``: ``d`` ``(D,)`` and, per network label,
        ``"log10_sv/<label>"`` ``(seeds, D, k)`` (descending) and ``"resolved/<label>"`` (bool,
        same shape).
      settings: :class:`Settings` (or its dict) of the run (for the title).
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    s = _settings(settings)
    return plots.cnn_singular_value_spread(
        data["d"],
        _io.with_prefix(data, "log10_sv"),
        resolved=_io.with_prefix(data, "resolved"),
        title=f"Singular values of ∂h_L/∂h_(L−d), tanh CNN at χ₁ = 1 (n = {s.positions}, "
        f"C = {s.jac_channels}, L = {s.depth})",
        ax=ax,
    )


def figure_jacobian_singular_values(
    data: Mapping[str, np.ndarray], settings, *, axes=None
) -> Figure:
    """Histograms of the log10 singular values of ∂h_L/∂h_1, one panel per network.

    Args:
      data: the contents of ``jacobians.npz`` (``"log10_sv/<label>"`` and
        ``"resolved/<label>"``; the last depth, d = L − 1, is drawn). Unresolved values sit at
        the numerical floor, drawn at their median.
      settings: :class:`Settings` (or its dict) of the run (for the title).
      axes: one axes per network (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    s = _settings(settings)
    resolved = _io.with_prefix(data, "resolved")
    density, floors = {}, {}
    for label, sv in _io.with_prefix(data, "log10_sv").items():
        full, ok = sv[:, -1], resolved[label][:, -1]
        density[label] = full.ravel()
        if not ok.all():
            floors[label] = float(np.median(full[~ok]))
    state = s.positions * s.jac_channels
    return plots.log_singular_value_density(
        density,
        floors=floors,
        title=f"Singular values of ∂h_L/∂h_1 through {s.depth - 1} conv layers ({state} × {state})",
        axes=axes,
    )


def figure_state_grad_norms(
    data: Mapping[str, np.ndarray], settings, *, ax: Axes | None = None
) -> Figure:
    """log10 ‖∂L/∂h_l‖ against layer l, flat at χ₁ = 1 in mean field.

    Args:
      data: the contents of ``jacobians.npz`` (``"log10_state_grad/<label>"`` ``(seeds, L)``).
      settings: :class:`Settings` (or its dict) of the run (for the title).
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    s = _settings(settings)
    return plots.cnn_state_gradient_norms(
        _io.with_prefix(data, "log10_state_grad"),
        title=f"‖∂L/∂h_l‖ at χ₁ = 1 (mean field: flat), depth {s.depth}",
        ax=ax,
    )


def figure_q_c(data: Mapping[str, np.ndarray], settings, *, sigma_w2: float, axes=None) -> Figure:
    """q^l/q* and 1 − c^l over layers at the critical point, mean-field maps dashed.

    Args:
      data: the contents of ``q_c.npz``: ``"q/<init>"``, ``"one_minus_c/<init>"``
        ``(seeds, L)`` and the theory ``q_theory``, ``one_minus_c_theory`` ``(L,)``.
      settings: :class:`Settings` (or its dict) of the run (σ_b² and C for the title).
      sigma_w2: the critical σ_w² at ``settings.main_sigma_b2`` (for the title).
      axes: 2 axes (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    s = _settings(settings)
    title = (
        f"Length and correlation over layers at (σ_w², σ_b²) = ({sigma_w2:.4f}, "
        f"{s.main_sigma_b2:g}), C = {s.fwd_channels}"
    )
    return plots.cnn_q_c_layers(
        _io.with_prefix(data, "q"),
        _io.with_prefix(data, "one_minus_c"),
        data["q_theory"],
        data["one_minus_c_theory"],
        title=title,
        axes=axes,
    )


def figure_fourier_modes(data: Mapping[str, np.ndarray], settings, *, axes=None) -> Figure:
    """Per-mode amplitude of a covariance perturbation over layers, (λ_m χ_c*)^l dashed.

    Args:
      data: the contents of ``fourier_modes.npz``: per case label ``"amplitude/<label>"``,
        ``"stderr/<label>"`` ``(L, n)`` and ``"theory/<label>"`` ``(n,)``.
      settings: :class:`Settings` (or its dict) of the run (modes 0 … n/2 are drawn).
      axes: one axes per case (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    s = _settings(settings)
    title = (
        f"Fourier modes of a covariance perturbation, C = {s.mode_channels}, "
        f"n = {s.positions}, {s.mode_seeds} seeds (dashed: (λ_m χ_c*)^l)"
    )
    return plots.cnn_fourier_mode_decay(
        _io.with_prefix(data, "amplitude"),
        _io.with_prefix(data, "stderr"),
        _io.with_prefix(data, "theory"),
        modes=range(s.positions // 2 + 1),
        title=title,
        axes=axes,
    )


def figures(out_dir) -> dict[str, Figure]:
    """Redraws every figure of :func:`run` from the numbers it saved in ``out_dir/cnn``.

    Args:
      out_dir: the directory given to :func:`run`.

    Returns:
      ``{file stem: Figure}``, the stems of the PNG/PDF files :func:`run` wrote.
    """
    out = Path(out_dir) / NAME
    summary = _io.load_json(out / "summary.json")
    s = _settings(summary["settings"])
    jac = _io.load_npz(out / "jacobians.npz")
    return {
        "jacobian_spread": figure_jacobian_spread(jac, s),
        "jacobian_singular_values": figure_jacobian_singular_values(jac, s),
        "state_grad_norms": figure_state_grad_norms(jac, s),
        "q_c": figure_q_c(
            _io.load_npz(out / "q_c.npz"), s, sigma_w2=summary["forward"]["sigma_w2"]
        ),
        "fourier_modes": figure_fourier_modes(_io.load_npz(out / "fourier_modes.npz"), s),
    }
