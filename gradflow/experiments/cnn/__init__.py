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

The measurements are in ``_measure.py``, the drawing in :mod:`gradflow.plots.cnn`; this module
holds the settings, ``run`` and the figures.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradflow import meanfield, plots
from gradflow.experiments import _io
from gradflow.experiments.cnn._measure import (
    KERNEL,
    LN10,
    critical_pair,
    depths_from_top,
    measure_forward,
    measure_jacobians,
    measure_modes,
)
from gradflow.models.cnn import CNN, mode_decay  # noqa: F401 (importable from here, as before)

__all__ = [
    "NAME",
    "DESCRIPTION",
    "INITS",
    "KERNEL",
    "LN10",
    "Settings",
    "settings",
    "critical_pair",
    "depths_from_top",
    "measure_jacobians",
    "measure_forward",
    "measure_modes",
    "run",
    "figure_jacobian_spread",
    "figure_jacobian_singular_values",
    "figure_state_grad_norms",
    "figure_q_c",
    "figure_fourier_modes",
    "figures",
]

NAME = "cnn"
DESCRIPTION = (
    "tanh CNN at the edge of chaos to depth 1,000: delta-orthogonal vs Gaussian, Fourier-mode "
    "depth scales (Xiao et al. 2018)"
)

INITS = ("Gaussian", "delta-orthogonal")


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
