"""Kumar vs Yilmaz–Poli: which initialisation keeps deep logistic-sigmoid MLPs trainable?

Kumar (2017, arXiv:1704.08863, §3) keeps the pre-activation variance fixed: for the logistic
function that is N(0, v²) with v = √(12.8/N) ≈ 3.6/√N. Yilmaz & Poli (2022, Neural Networks
153:87–103) instead give the weights a negative mean, max(−1, −8/N), and claim that this alone keeps
gradients from vanishing in logistic MLPs of 10–15 layers. We measure, across seeds and depths
5–30, on networks at initialisation:

- log10 of the ratio of the first to the last hidden layer's gradient norm (mean-squared error on
  N(0, 1) data and targets): 0 means no loss across depth, −5 means five orders of magnitude;
- the top Lyapunov exponent λ₁ of the chain of hidden-layer Jacobians (nats per layer): the
  asymptotic growth rate of the most amplified direction;
- χ₁, measured as the mean ‖J_k‖_F²/N over layers and, for the zero-mean initialisations, from
  mean-field theory (:mod:`gradflow.meanfield`, when present).

Everything is one :mod:`gradflow.sweep` run per family: depth is static (one compile each); seeds
and the scale and mean of the weights are batched. Kumar's and Yilmaz–Poli's rules are points of
the Gaussian family W = s·N(0, 1/N) + m/N (s = √12.8, m = 0 and s = 1, m = −8), which
:func:`gradflow.sweep.mlp_from_point` draws from the same normal numbers as ``init.kumar`` /
``init.yilmaz_poli`` (checked in the tests); Glorot's uniform rule is a family of its own. A third
sweep maps the gradient ratio over (m, s) at one depth.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradflow import gradients, init, jacobians, plots
from gradflow import sweep as sw
from gradflow.experiments import _io
from gradflow.sweep.measurements import log10_first_over_last, mse_at_init, top_lyapunov

NAME = "init_study"
DESCRIPTION = (
    "Gaussian/Glorot/Kumar/Yilmaz–Poli init of deep logistic MLPs: gradient ratio, λ₁, χ₁ (sweep)"
)

# Kumar's scale for the logistic function, in units of 1/√N: 1/√(φ'(0)² (1 + φ(0)²)) = √12.8.
KUMAR_SCALE = init.kumar_std("sigmoid", 1)
# Yilmaz–Poli's mean times the fan-in, for fan-in >= 8 (below that the mean is capped at −1).
YP_MEAN = -8.0
VANISHING_LOG10 = -1.0  # "vanishing": the first hidden layer gets < 1/10 of the last one's gradient


class InitSpec(NamedTuple):
    """An initialisation as a sweep point: ``init`` name, scale s and mean × fan-in m."""

    label: str
    init: str
    scale: float
    mean: float


SPECS = (
    InitSpec("Gaussian σ_w=1", "gaussian", 1.0, 0.0),
    InitSpec("Glorot (uniform)", "glorot", 1.0, 0.0),
    InitSpec("Kumar (3.6/√N)", "gaussian", KUMAR_SCALE, 0.0),
    InitSpec("Yilmaz–Poli (mean −8/N)", "gaussian", 1.0, YP_MEAN),
    # Not in either paper: Kumar's spread with Yilmaz–Poli's mean, which the grid gives for free.
    InitSpec("Kumar spread + YP mean", "gaussian", KUMAR_SCALE, YP_MEAN),
)


class Settings(NamedTuple):
    width: int
    depths: tuple[int, ...]
    seeds: int
    batch: int
    heat_depth: int
    heat_means: tuple[float, ...]
    heat_scales: tuple[float, ...]
    heat_seeds: int


def settings(full: bool) -> Settings:
    """CPU-sized (default) or paper-sized (``full``) settings."""
    if full:
        return Settings(
            width=256,
            depths=(5, 10, 12, 15, 20, 25, 30),
            seeds=32,
            batch=64,
            heat_depth=15,
            heat_means=tuple(float(m) for m in np.linspace(-20.0, 4.0, 13)),
            heat_scales=(0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, KUMAR_SCALE, 4.5, 6.0),
            heat_seeds=8,
        )
    return Settings(
        width=64,
        depths=(5, 10, 15, 30),  # each depth is a compile per family: the CPU budget
        seeds=8,
        batch=16,
        heat_depth=15,
        heat_means=(-16.0, -12.0, -8.0, -6.0, -4.0, -2.0, 0.0, 2.0),
        heat_scales=(0.5, 1.0, 2.0, KUMAR_SCALE, 5.0),
        heat_seeds=4,
    )


def gradient_diagnostics(point, *, batch: int = 16, residual: bool = False):
    """Everything this study needs about one network, from one set of parameters.

    Mean-squared error of the readout on ``batch`` rows x ~ N(0, I_width), y ~ N(0, 1)
    (:func:`gradflow.sweep.measurements.mse_at_init`).

    Returns:
      dict with

      - ``layer_grad_norms`` ``(depth + 1,)``: ‖∂L/∂θ_l‖, input layer first, readout last;
      - ``log10_first_over_last``: log10 of the first over the last hidden layer's entry;
      - ``state_grad_norms`` ``(depth,)``: ‖∂L/∂h_l‖ for the hidden states h_1 … h_depth (the
        back-propagated error signal, without the activations that weight gradients multiply in);
      - ``log10_state_first_over_last``: log10 ‖∂L/∂h_1‖ / ‖∂L/∂h_depth‖;
      - ``lyapunov``: the top Lyapunov exponent across depth (nats per layer) of the chain of
        hidden-layer Jacobians at the first input row;
      - ``chi1_empirical``: mean over those layers of ‖J_k‖_F²/width, the finite-width estimate
        of the mean-field χ₁ = σ_w² E[φ'(z)²] (which it equals for zero-mean weights).
    """
    if int(point["depth"]) < 2:
        raise ValueError(f"gradient_diagnostics needs depth >= 2, got {point['depth']}")
    at = mse_at_init(point, batch=batch, residual=residual)
    states = gradients.state_grad_norms(
        at.model.chain(at.params, at.x), functools.partial(at.loss, at.head), log10=True
    )
    jac = jacobians.step_jacobians(at.model.chain(at.params, at.x[0]))
    chi1 = jnp.mean(jnp.sum(jac**2, axis=(1, 2))) / jac.shape[-1]
    return {
        "layer_grad_norms": at.norms.values,
        "log10_first_over_last": log10_first_over_last(at.norms),
        "state_grad_norms": jnp.power(10.0, states),
        # A difference of logs: finite where the norms themselves underflow.
        "log10_state_first_over_last": states[0] - states[-1],
        "lyapunov": top_lyapunov(jac, jax.random.fold_in(at.key, 1)),
        "chi1_empirical": chi1,
    }


# The sweep measurement; its name is the registry name it had in gradflow.sweep, which
# gradflow.sweep.measurement still resolves to this object (examples/init_study.toml uses it).
GRADIENT_DIAGNOSTICS = sw.mlp_measurement(
    gradient_diagnostics,
    "gradient_diagnostics",
    layer_grad_norms=("layer",),
    state_grad_norms=("layer",),
)


def _run(sweep: sw.Sweep, out: Path):
    """One resumable sweep under ``out``, all of a static combination's configs in one batch."""
    per_shape = math.prod(sweep.batched_shape)
    n_dev = len(jax.devices())
    # CPU: many small programs, so compile time dominates; XLA's -O0 backend compiles them
    # several times faster and the code it makes is fast enough at these sizes.
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return sw.run(
        sweep,
        out,
        batch_size=min(64, -(-per_shape // n_dev)),
        compiler_options=options,
        # The store is a cache of this figure's numbers: a different config or gradflow version
        # (e.g. --full after a CPU-sized run) starts it over instead of failing.
        on_mismatch="replace",
        quiet=True,
    )


def measure(st: Settings, out: Path) -> dict:
    """Runs the three sweeps; returns arrays keyed by init label (and the heatmap).

    Returns:
      dict with ``log10_ratio`` (weight gradients), ``log10_state_ratio`` (error signals
      ‖∂L/∂h‖), ``lyapunov``, ``chi1``: label -> ``(depths, seeds)``; ``profiles``: label ->
      ``(seeds, heat_depth + 1)`` per-layer gradient norms at ``heat_depth`` (if it is among the
      depths); ``heat`` and ``heat_state``: the two ratios, ``(means, scales, seeds)``.
    """
    common = {"width": [st.width], "activation": ["sigmoid"], "depth": list(st.depths)}
    seeds = list(range(st.seeds))
    gauss = [s for s in SPECS if s.init == "gaussian"]
    scales = sorted({s.scale for s in gauss})
    means = sorted({s.mean for s in gauss})
    kw = dict(dtype="float64", batch=st.batch)
    families = {
        "gaussian": sw.Sweep.create(
            {
                "init": ["gaussian"],
                **common,
                "init_scale": scales,
                "init_mean": means,
                "seed": seeds,
            },
            GRADIENT_DIAGNOSTICS,
            **kw,
        ),
        "glorot": sw.Sweep.create(
            {"init": ["glorot"], **common, "seed": seeds}, GRADIENT_DIAGNOSTICS, **kw
        ),
    }
    results = {name: _run(s, out / "sweeps" / name) for name, s in families.items()}
    keys = {
        "log10_ratio": "log10_first_over_last",
        "log10_state_ratio": "log10_state_first_over_last",
        "lyapunov": "lyapunov",
        "chi1": "chi1_empirical",
    }
    data = {name: {} for name in keys} | {"profiles": {}}
    for spec in SPECS:
        res = results[spec.init]
        sel = {"init": spec.init, "width": st.width, "activation": "sigmoid"}
        if spec.init == "gaussian":
            sel |= {"init_scale": spec.scale, "init_mean": spec.mean}
        for name, key in keys.items():
            data[name][spec.label] = res[key].sel(**sel).values  # (depths, seeds)
        if st.heat_depth in st.depths:
            norms = res["layer_grad_norms"].sel(**sel, depth=st.heat_depth).values
            data["profiles"][spec.label] = norms[:, : st.heat_depth + 1]  # drop NaN padding
    heat = sw.Sweep.create(
        {
            "init": ["gaussian"],
            "width": [st.width],
            "activation": ["sigmoid"],
            "depth": [st.heat_depth],
            "init_mean": list(st.heat_means),
            "init_scale": list(st.heat_scales),
            "seed": list(range(st.heat_seeds)),
        },
        GRADIENT_DIAGNOSTICS,
        **kw,
    )
    heat_res = _run(heat, out / "sweeps" / "mean_scale")
    shape = (len(st.heat_means), len(st.heat_scales), st.heat_seeds)
    for name, key in (("heat", "log10_first_over_last"), ("heat_state", keys["log10_state_ratio"])):
        data[name] = heat_res[key].sel(init="gaussian").values.reshape(shape)
    return data


def mean_field_chi1(st: Settings) -> dict[str, float]:
    """χ₁ from :mod:`gradflow.meanfield` for the zero-mean inits (σ_b = 0); NaN where undefined.

    Glorot's uniform rule has variance 2/(fan_in + fan_out) = 1/N on square layers: σ_w² = 1.
    A nonzero weight mean is outside the zero-mean mean-field theory, so Yilmaz–Poli gets NaN.
    Returns an empty dict if ``gradflow.meanfield`` is not available.
    """
    try:
        from gradflow import meanfield
    except ImportError:  # pragma: no cover - meanfield is optional
        return {}
    out = {}
    for spec in SPECS:
        if spec.mean != 0.0:
            out[spec.label] = float("nan")
        else:
            out[spec.label] = float(meanfield.chi1("sigmoid", spec.scale**2, 0.0))
    return out


# ---------------------------------------------------------------------------------------------
# Figures, from the arrays :func:`study` saves in ``init_study.npz`` (so :func:`figures` can
# redraw them from the file): ``depths`` ``(D,)``, ``"<quantity>/<init label>"`` arrays
# ``(D, seeds)`` for quantity in log10_ratio, log10_state_ratio, lyapunov, chi1, and the
# heatmap's ``heat/log10_ratio``, ``heat/log10_state_ratio`` ``(means, scales, seeds)`` on the
# axes ``heat/means``, ``heat/scales``.


def figure_grad_ratio_heatmap(
    data: Mapping[str, np.ndarray], *, width: int, ax: Axes | None = None
) -> Figure:
    """Median log10 first/last hidden-layer gradient ratio per initialisation and depth.

    Args:
      data: the contents of ``init_study.npz`` (``depths`` and ``"log10_ratio/<label>"``).
      width: of the networks (for the title).
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    ratio = _io.with_prefix(data, "log10_ratio")
    depths = [int(d) for d in data["depths"]]
    seeds = next(iter(ratio.values())).shape[1]
    labels = list(ratio)
    med = np.array([np.median(ratio[k], axis=1) for k in labels])  # (inits, depths)
    created = ax is None
    fig, ax = plots.new_axes(ax, figsize=(1.2 * len(depths) + 3.5, 0.55 * len(labels) + 1.8))
    vmax = max(1.0, float(np.nanmax(np.abs(med))))
    im = ax.imshow(med, cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto")
    for i in range(med.shape[0]):
        for j in range(med.shape[1]):
            ax.text(
                j,
                i,
                f"{med[i, j]:.1f}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if abs(med[i, j]) > 0.6 * vmax else "black",
            )
    ax.set_xticks(range(len(depths)), [str(d) for d in depths])
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("depth (hidden layers)")
    fig.colorbar(im, ax=ax, label="median log10 ‖g_first‖ / ‖g_last‖")
    ax.set_title(f"Gradient ratio across depth, logistic MLPs of width {width} ({seeds} seeds)")
    if created:
        fig.tight_layout()
    return fig


def _bands(ax, x, data: dict[str, np.ndarray]):
    for (label, ys), c in zip(data.items(), plots.palette(len(data))):
        ys = np.asarray(ys)  # (len(x), seeds)
        ax.plot(x, np.median(ys, axis=1), "o-", color=c, lw=1.6, ms=4, label=label)
        ax.fill_between(x, ys.min(1), ys.max(1), color=c, alpha=0.2, lw=0)


def figure_grad_ratio_vs_depth(data: Mapping[str, np.ndarray], *, width: int, axes=None) -> Figure:
    """First/last hidden-layer ratio of weight gradients and of error signals against depth.

    Args:
      data: the contents of ``init_study.npz`` (``depths``, ``"log10_ratio/<label>"`` and
        ``"log10_state_ratio/<label>"``).
      width: of the networks (for the title).
      axes: 2 axes, weight gradients then error signals (default: a new figure, shared y).

    Returns:
      The Figure drawn into.
    """
    ratio = _io.with_prefix(data, "log10_ratio")
    state_ratio = _io.with_prefix(data, "log10_state_ratio")
    seeds = next(iter(ratio.values())).shape[1]
    created = axes is None
    fig, axes = plots.new_axes_grid(axes, nrows=1, ncols=2, figsize=(13, 4.8), sharey=True)
    panels = (
        (ratio, "log10 first / last hidden layer", "weight gradients ‖∂L/∂W‖"),
        (state_ratio, "log10 ‖∂L/∂h_1‖ / ‖∂L/∂h_L‖", "back-propagated error ‖∂L/∂h‖"),
    )
    for ax, (values, ylabel, title) in zip(axes, panels):
        ax.axvspan(10, 15, color="0.9", lw=0, label="Yilmaz–Poli's 10–15 layers")
        ax.axhline(VANISHING_LOG10, color="0.4", ls="--", lw=1, label="vanishing threshold (10×)")
        _bands(ax, np.asarray(data["depths"]), values)
        ax.set_xlabel("depth (hidden layers)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"First vs last layer: {title}")
    axes[0].legend(fontsize=8)
    if created:
        fig.suptitle(f"Logistic MLPs of width {width} (median, min–max over {seeds} seeds)")
        fig.tight_layout()
    return fig


def figure_lyapunov_chi1(
    data: Mapping[str, np.ndarray],
    *,
    chi1_mean_field: Mapping[str, float] | None = None,
    axes=None,
) -> Figure:
    """Top Lyapunov exponent and ½ log χ₁ against depth, mean-field χ₁ dashed.

    Args:
      data: the contents of ``init_study.npz`` (``depths``, ``"lyapunov/<label>"`` and
        ``"chi1/<label>"``).
      chi1_mean_field: init label -> mean-field χ₁ (NaN where the theory does not apply), drawn
        dashed in the label's colour (:func:`mean_field_chi1`); None draws none.
      axes: 2 axes, λ₁ then χ₁ (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    lyap, chi1 = _io.with_prefix(data, "lyapunov"), _io.with_prefix(data, "chi1")
    chi1_mf = chi1_mean_field or {}
    x = np.asarray(data["depths"])
    created = axes is None
    fig, (a1, a2) = plots.new_axes_grid(axes, nrows=1, ncols=2, figsize=(12, 4.5))
    _bands(a1, x, lyap)
    a1.axhline(0.0, color="0.4", lw=1)
    a1.set_xlabel("depth (hidden layers)")
    a1.set_ylabel("λ₁ (nats per layer)")
    a1.set_title("Top Lyapunov exponent across depth")
    _bands(a2, x, {k: np.log(v) / 2 for k, v in chi1.items()})
    for v, c in zip(chi1_mf.values(), plots.palette(len(chi1_mf))):
        if np.isfinite(v):
            a2.axhline(np.log(v) / 2, color=c, ls="--", lw=1)
    a2.axhline(0.0, color="0.4", lw=1)
    a2.set_xlabel("depth (hidden layers)")
    a2.set_ylabel("½ log χ₁ (nats per layer)")
    a2.set_title("χ₁: mean ‖J_k‖²_F/N (lines), mean-field (dashed, zero-mean inits)")
    a1.legend(fontsize=8)
    if created:
        fig.tight_layout()
    return fig


def figure_mean_scale_heatmap(
    data: Mapping[str, np.ndarray], *, width: int, depth: int, axes=None
) -> Figure:
    """log10 first/last ratios over the Gaussian family's (mean, scale), Kumar/YP/… marked.

    Args:
      data: the contents of ``init_study.npz`` (``heat/log10_ratio``,
        ``heat/log10_state_ratio`` ``(means, scales, seeds)``, ``heat/means``, ``heat/scales``).
      width, depth: of the networks (for the title).
      axes: 2 axes, weight gradients then error signals (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    heat, heat_state = data["heat/log10_ratio"], data["heat/log10_state_ratio"]
    means = [float(m) for m in data["heat/means"]]
    scales = [float(s) for s in data["heat/scales"]]
    created = axes is None
    fig, axes = plots.new_axes_grid(axes, nrows=1, ncols=2, figsize=(14, 5))
    panels = ((heat, "weight gradients"), (heat_state, "error signal ‖∂L/∂h‖"))
    vmax = max(1.0, float(np.nanmax(np.abs(np.median(np.stack([heat, heat_state]), -1)))))
    for ax, (values, what) in zip(axes, panels):
        med = np.median(values, axis=-1)  # (means, scales)
        im = ax.imshow(med.T, origin="lower", cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(means)), [f"{m:g}" for m in means])
        ax.set_yticks(range(len(scales)), [f"{s:.2g}" for s in scales])
        for spec, mk in zip(SPECS, "osD^v"):
            if spec.init != "gaussian":
                continue
            if spec.mean in means and spec.scale in scales:
                i, j = means.index(spec.mean), scales.index(spec.scale)
                ax.plot(i, j, mk, mfc="none", mec="k", ms=12, mew=1.5, label=spec.label)
        ax.set_xlabel("weight mean × fan-in (Yilmaz–Poli: −8)")
        ax.set_ylabel("weight scale s (W = s·N(0, 1/N) + mean/N)")
        ax.set_title(f"log10 first / last layer, {what}")
        fig.colorbar(im, ax=ax)
    axes[0].legend(fontsize=8, loc="upper left")
    if created:
        fig.suptitle(
            f"Depth-{depth} logistic MLPs of width {width}, median of {heat.shape[-1]} seeds"
        )
        fig.tight_layout()
    return fig


def figure_layer_grad_norms(
    data: Mapping[str, np.ndarray], *, width: int, depth: int, ax: Axes | None = None
) -> Figure:
    """Per-layer gradient norms at depth ``depth``, one band per initialisation.

    Args:
      data: the contents of ``init_study.npz`` (``"layer_grad_norms_depth<depth>/<label>"``
        arrays ``(seeds, depth + 1)``).
      width, depth: of the networks (the title; ``depth`` also picks the arrays).
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    profiles = _io.with_prefix(data, f"layer_grad_norms_depth{depth}")
    title = f"Per-layer gradient norm, depth-{depth} width-{width} logistic MLPs"
    return plots.layer_grad_norms(profiles, title=title, ax=ax)


# ---------------------------------------------------------------------------------------------


def _stats(a: np.ndarray) -> dict:
    return {
        "median": float(np.median(a)),
        "min": float(np.min(a)),
        "max": float(np.max(a)),
    }


def summarise(st: Settings, data: dict, chi1_mf: dict) -> dict:
    """The numbers behind the figures and the verdict on Yilmaz–Poli's claim."""
    per_init = {}
    for label in data["log10_ratio"]:
        per_init[label] = {
            f"depth_{d}": {
                "log10_first_over_last": _stats(data["log10_ratio"][label][i]),
                "log10_state_first_over_last": _stats(data["log10_state_ratio"][label][i]),
                "lyapunov": _stats(data["lyapunov"][label][i]),
                "chi1_empirical": _stats(data["chi1"][label][i]),
            }
            for i, d in enumerate(st.depths)
        }
        if label in chi1_mf:
            per_init[label]["chi1_mean_field"] = chi1_mf[label]
        # orders of magnitude lost per layer: slope of the median ratio against depth
        if len(st.depths) > 1:
            slope = np.polyfit(st.depths, np.median(data["log10_ratio"][label], axis=1), 1)[0]
            per_init[label]["log10_ratio_per_layer"] = float(slope)
    verdict = {}
    yp = next(s.label for s in SPECS if s.label.startswith("Yilmaz"))
    for d in (10, 15):
        if d not in st.depths:
            continue
        i = st.depths.index(d)
        med = {k: float(np.median(v[i])) for k, v in data["log10_ratio"].items()}
        verdict[f"depth_{d}"] = {
            "median_log10_first_over_last": med,
            "median_log10_state_first_over_last": {
                k: float(np.median(v[i])) for k, v in data["log10_state_ratio"].items()
            },
            "median_lyapunov": {k: float(np.median(v[i])) for k, v in data["lyapunov"].items()},
            "yilmaz_poli_out_of_vanishing_regime": med[yp] >= VANISHING_LOG10,
            "yilmaz_poli_best_of_papers": med[yp]
            >= max(v for k, v in med.items() if not k.startswith("Kumar spread")),
        }
    lines = []
    for d, v in verdict.items():
        m = v["median_log10_first_over_last"]
        others = ", ".join(f"{k} {x:+.1f}" for k, x in m.items() if k != yp)
        state = "out of" if v["yilmaz_poli_out_of_vanishing_regime"] else "in"
        lines.append(
            f"{d.replace('_', ' ')}: Yilmaz–Poli log10 ratio {m[yp]:+.2f} ({state} the vanishing "
            f"regime, threshold {VANISHING_LOG10:+.0f}); {others}"
        )
    return {
        "settings": st._asdict(),
        "vanishing_threshold_log10": VANISHING_LOG10,
        "per_init": per_init,
        "verdict": verdict,
        "finding": "; ".join(lines),
        "chi1_source": "gradflow.meanfield" if chi1_mf else "meanfield unavailable",
    }


def study(out: Path, st: Settings) -> dict:
    """Measures, plots and summarises into ``out`` with settings ``st``."""
    out = Path(out)
    data = measure(st, out)
    chi1_mf = mean_field_chi1(st)
    summary = summarise(st, data, chi1_mf)
    arrays = {
        "depths": np.asarray(st.depths),
        "heat/log10_ratio": data["heat"],
        "heat/log10_state_ratio": data["heat_state"],
        "heat/means": np.asarray(st.heat_means),
        "heat/scales": np.asarray(st.heat_scales),
    }
    for name in ("log10_ratio", "log10_state_ratio", "lyapunov", "chi1"):
        arrays |= {f"{name}/{k}": v for k, v in data[name].items()}
    arrays |= {f"layer_grad_norms_depth{st.heat_depth}/{k}": v for k, v in data["profiles"].items()}
    _io.save_npz(arrays, out / "init_study.npz")
    for name, fig in _figures(arrays, st.width, st.heat_depth, chi1_mf).items():
        _io.save_figure(fig, out / f"{name}.png")
    _io.save_json(summary, out / "summary.json")
    return summary


def _figures(arrays, width: int, heat_depth: int, chi1_mf) -> dict[str, Figure]:
    figs = {
        "grad_ratio_heatmap": figure_grad_ratio_heatmap(arrays, width=width),
        "grad_ratio_vs_depth": figure_grad_ratio_vs_depth(arrays, width=width),
        "lyapunov_chi1": figure_lyapunov_chi1(arrays, chi1_mean_field=chi1_mf),
        "mean_scale_heatmap": figure_mean_scale_heatmap(arrays, width=width, depth=heat_depth),
    }
    # the profiles exist when heat_depth is among the depths
    if _io.with_prefix(arrays, f"layer_grad_norms_depth{heat_depth}"):
        figs["layer_grad_norms"] = figure_layer_grad_norms(arrays, width=width, depth=heat_depth)
    return figs


def figures(out_dir) -> dict[str, Figure]:
    """Redraws every figure of :func:`run` from the numbers it saved in ``out_dir/init_study``.

    Args:
      out_dir: the directory given to :func:`run` (for :func:`study`, the parent of its
        ``out``).

    Returns:
      ``{file stem: Figure}``, the stems of the PNG/PDF files :func:`study` wrote.
    """
    out = Path(out_dir) / NAME
    summary = _io.load_json(out / "summary.json")
    st = summary["settings"]
    chi1_mf = {
        label: v["chi1_mean_field"]
        for label, v in summary["per_init"].items()
        if "chi1_mean_field" in v
    }
    arrays = _io.load_npz(out / "init_study.npz")
    return _figures(arrays, st["width"], st["heat_depth"], chi1_mf)


def run(out_dir, *, full: bool = False) -> dict:
    """Writes the study's figures and numbers to ``out_dir/init_study``; returns the summary.

    The sweeps are stored (resumably) under ``out_dir/init_study/sweeps``: a rerun into the same
    directory reuses every finished chunk.
    """
    return study(Path(out_dir) / NAME, settings(full))
