"""Mean-field signal propagation laid over finite networks (Poole et al. 2016; Schoenholz et al.
2017; Pennington, Schoenholz & Ganguli 2017).

(a) tanh phase diagram: log χ₁ over (σ_w², σ_b²) with the edge of chaos, and the per-layer growth
    of ‖∂h_L/∂h_1‖ measured in finite MLPs on a coarse grid drawn over it as contours;
(b) q^l and c^l through depth: the length and correlation maps against width-512 networks;
(c) singular values of ∂h_L/∂h_1 at criticality: tanh and ReLU nets with Gaussian or orthogonal
    weights against the free-probability prediction (dynamical isometry);
(d) the correlation depth scale ξ_c against σ_w², with Schoenholz et al.'s trainable depth 6 ξ_c.
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

from gradflow import init, jacobians, meanfield, models, plots, theory
from gradflow.chain import trajectory
from gradflow.experiments import _io
from gradflow.experiments._scales import rescaled

NAME = "meanfield"
DESCRIPTION = (
    "tanh phase diagram, q/c maps vs finite nets, Jacobian spectra vs free probability, ξ_c"
)

SIGMA_B2 = 0.05  # Schoenholz et al. 2017 draw their tanh experiments at σ_b² = 0.05


class Settings(NamedTuple):
    grid: int  # theory phase diagram is grid × grid
    sw2_range: tuple[float, float]
    sb2_range: tuple[float, float]
    measured_sw2: tuple[float, ...]  # coarse grid of finite networks for (a)
    measured_sb2: tuple[float, ...]
    chi_width: int
    chi_depth: int
    chi_seeds: int
    prop_width: int  # (b)
    prop_depth: int
    prop_seeds: int
    spec_width: int  # (c)
    spec_depth: int
    spec_seeds: int
    tanh_q_star: float
    xi_points: int  # (d)


def settings(full: bool) -> Settings:
    if full:
        return Settings(
            grid=256,
            sw2_range=(0.5, 4.0),
            sb2_range=(0.0, 0.5),
            measured_sw2=tuple(np.linspace(0.75, 3.75, 13)),
            measured_sb2=tuple(np.linspace(0.0, 0.45, 10)),
            chi_width=256,
            chi_depth=48,
            chi_seeds=4,
            prop_width=512,
            prop_depth=40,
            prop_seeds=8,
            spec_width=512,
            spec_depth=32,
            spec_seeds=8,
            tanh_q_star=0.1,
            xi_points=400,
        )
    return Settings(
        grid=96,
        sw2_range=(0.5, 4.0),
        sb2_range=(0.0, 0.5),
        measured_sw2=(1.0, 1.5, 2.0, 2.5, 3.0, 3.5),
        measured_sb2=(0.0, 0.15, 0.3, 0.45),
        chi_width=128,
        chi_depth=24,
        chi_seeds=2,
        prop_width=512,
        prop_depth=24,
        prop_seeds=3,
        spec_width=256,
        spec_depth=16,
        spec_seeds=4,
        tanh_q_star=0.1,
        xi_points=160,
    )


# ---------------------------------------------------------------------------------------------
# (a) phase diagram


def phase_diagram(st: Settings) -> dict:
    """Theory: log χ₁ on the grid (one jitted call) and the critical line σ_w²*(σ_b²)."""
    sw2 = jnp.linspace(*st.sw2_range, st.grid)
    sb2 = jnp.linspace(*st.sb2_range, st.grid)
    grid = jax.jit(lambda a, b: meanfield.chi1("tanh", a[None, :], b[:, None]))
    log_chi1 = np.log(np.asarray(grid(sw2, sb2)))  # (σ_b², σ_w²): rows are σ_b²
    line_sb2 = jnp.linspace(*st.sb2_range, 64)
    line_sw2 = meanfield.critical_sigma_w2("tanh", line_sb2)
    return {
        "sigma_w2": np.asarray(sw2),
        "sigma_b2": np.asarray(sb2),
        "log_chi1": log_chi1,
        "critical_sigma_b2": np.asarray(line_sb2),
        "critical_sigma_w2": np.asarray(line_sw2),
    }


def measured_log_chi1(st: Settings, key) -> dict:
    """Per-layer log growth of ‖∂h_L/∂h_1‖_F² / n in tanh MLPs on the coarse (σ_w², σ_b²) grid.

    E‖J v‖² = χ₁ ‖v‖² for each layer's Jacobian J, so (2/K)·log(‖P‖_F/√n) over a product P of K
    layers estimates log χ₁. Inputs are scaled so that q^1 = q*: the estimate then measures χ₁
    at the fixed point rather than along the transient of the length map. Weights are drawn
    once per seed with σ = 1 and rescaled, so one jitted map covers the grid.
    """
    n, depth = st.chi_width, st.chi_depth
    model = models.MLP(
        width=n,
        depth=depth,
        activation="tanh",
        kernel_init=init.gaussian(1.0),
        bias_init=init.gaussian_bias(1.0),
    )
    sw, sb = np.meshgrid(np.sqrt(st.measured_sw2), np.sqrt(st.measured_sb2))
    q_star = np.asarray(meanfield.q_star("tanh", jnp.asarray(sw**2), jnp.asarray(sb**2)))
    # ‖x‖²/n = (q* − σ_b²)/σ_w² puts the first pre-activations at q*.
    in_scale = np.sqrt(np.maximum(q_star - sb**2, 0.0) / sw**2)
    configs = jnp.stack([sw.ravel(), sb.ravel(), in_scale.ravel()], axis=1)
    keys = jax.random.split(key, st.chi_seeds)

    def one(config, k):
        kx, kp = jax.random.split(k)
        s_w, s_b, s_x = config
        x = jax.random.normal(kx, (n,))
        x = s_x * jnp.sqrt(n) * x / jnp.linalg.norm(x)
        params = model.init(kp, x)
        products = jacobians.backward_products(model.chain(rescaled(params, s_w, s_b), x))
        return 2.0 * (products.log_norm[0] - 0.5 * jnp.log(n)) / (depth - 1)

    per_config = lambda c: jax.vmap(lambda k: one(c, k))(keys)  # noqa: E731
    est = jax.jit(lambda cs: jax.lax.map(per_config, cs, batch_size=8))(configs)
    est = np.asarray(est).reshape(len(st.measured_sb2), len(st.measured_sw2), st.chi_seeds)
    theory_at = np.log(np.asarray(meanfield.chi1("tanh", jnp.asarray(sw**2), jnp.asarray(sb**2))))
    return {"sigma_w2": sw**2, "sigma_b2": sb**2, "log_chi1": est, "theory_log_chi1": theory_at}


def figure_phase_diagram(
    data: Mapping[str, np.ndarray], *, width: int, depth: int, ax: Axes | None = None
) -> Figure:
    """Figure (a): the tanh phase diagram, log χ₁ over (σ_w², σ_b²), with finite nets over it.

    Args:
      data: the contents of ``phase_diagram.npz``: theory ``sigma_w2`` ``(G,)``, ``sigma_b2``
        ``(G,)``, ``log_chi1`` ``(G, G)`` (rows σ_b²), the edge of chaos ``critical_sigma_w2``,
        ``critical_sigma_b2`` ``(C,)``; measured ``measured_sigma_w2``, ``measured_sigma_b2``
        ``(B, W)`` and ``measured_log_chi1`` ``(B, W, seeds)`` (:func:`measured_log_chi1`).
      width, depth: of the measured networks (for the legend).
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into (:func:`gradflow.plots.chi1_phase_diagram`).
    """
    names = ("sigma_w2", "sigma_b2", "log_chi1", "critical_sigma_w2", "critical_sigma_b2")
    names += ("measured_sigma_w2", "measured_sigma_b2", "measured_log_chi1")
    arrays = (data[k] for k in names)
    return plots.chi1_phase_diagram(*arrays, width=width, depth=depth, ax=ax)


# ---------------------------------------------------------------------------------------------
# (b) q^l and c^l through depth


PROPAGATION = (("ordered", 1.2), ("critical", None), ("chaotic", 3.0))
STARTS = ((3.0, 0.1), (0.2, 0.9))  # (q^1, c^1) of two kinds of input pair
PAIRS = 4  # input pairs of each kind per network: one network's c^l wanders (its fluctuations
# are correlated over ~ξ_c layers), so several pairs and seeds are needed for a clean mean


def _input_pairs(starts, d, sigma_w2, sigma_b2, key) -> jax.Array:
    """Pairs of inputs (rows 2i, 2i+1) whose first pre-activations have length/correlation
    ``starts[i]``; shape (2 · len(starts), d)."""
    basis = np.linalg.qr(np.asarray(jax.random.normal(key, (d, 2 * len(starts)))))[0].T
    rows = []
    for i, (q1, c1) in enumerate(starts):
        r2 = (q1 - sigma_b2) / sigma_w2  # ‖x‖²/d giving σ_w² ‖x‖²/d + σ_b² = q1
        cin = (c1 * q1 - sigma_b2) / (sigma_w2 * r2)
        a, b = basis[2 * i], basis[2 * i + 1]
        scale = math.sqrt(r2 * d)
        rows += [scale * a, scale * (cin * a + math.sqrt(1 - cin * cin) * b)]
    return jnp.asarray(np.stack(rows), jnp.float32)


def signal_propagation(st: Settings, key) -> dict:
    """Measured and predicted (q^l, c^l), l = 1 … depth, for three σ_w² at σ_b² = 0.05."""
    n, depth = st.prop_width, st.prop_depth
    sw2s = [
        float(meanfield.critical_sigma_w2("tanh", SIGMA_B2)) if v is None else v
        for _, v in PROPAGATION
    ]
    model = models.MLP(
        width=n,
        depth=depth,
        activation="tanh",
        kernel_init=init.gaussian(1.0),
        bias_init=init.gaussian_bias(1.0),
    )
    kx, kp = jax.random.split(key)
    xs = jnp.stack(
        [
            _input_pairs(STARTS * PAIRS, 64, v, SIGMA_B2, jax.random.fold_in(kx, i))
            for i, v in enumerate(sw2s)
        ]
    )

    def one(sw2, x, k):
        params = rescaled(model.init(k, x), jnp.sqrt(sw2), math.sqrt(SIGMA_B2))
        hs = trajectory(model.chain(params, x))  # post-activations h_1 … h_L
        p = params["params"]
        z1 = x @ p["input"]["kernel"] + p["input"]["bias"][None, :]
        zs = jnp.einsum("kbn,knm->kbm", hs[:-1], p["hidden"]["kernel"])
        zs = zs + p["hidden"]["bias"][:, None, :]
        z = jnp.concatenate([z1[None], zs])  # pre-activations of layers 1 … L
        q = jnp.mean(z * z, axis=-1)  # (L, 2P)
        c = jnp.mean(z[:, 0::2] * z[:, 1::2], axis=-1) / jnp.sqrt(q[:, 0::2] * q[:, 1::2])
        return q, c

    keys = jax.random.split(kp, st.prop_seeds)
    per_sigma = jax.vmap(lambda sw2, x: jax.vmap(lambda k: one(sw2, x, k))(keys))
    q_all, c_all = jax.jit(per_sigma)(jnp.asarray(sw2s), xs)
    q0 = jnp.array([s[0] for s in STARTS])
    c0 = jnp.array([s[1] for s in STARTS])
    kinds = len(STARTS)
    out = {}
    for i, ((label, _), sw2) in enumerate(zip(PROPAGATION, sw2s)):
        q_th, c_th = meanfield.c_layers("tanh", sw2, SIGMA_B2, q0, c0, depth - 1)
        q = np.asarray(q_all[i]).reshape(st.prop_seeds, depth, PAIRS, kinds, 2)
        c = np.asarray(c_all[i]).reshape(st.prop_seeds, depth, PAIRS, kinds)
        out[label] = {
            "sigma_w2": sw2,
            # samples (seeds × pairs) first: q (S, L, kinds) averaged over a pair's two inputs
            "q": q.mean(-1).transpose(0, 2, 1, 3).reshape(-1, depth, kinds),
            "c": c.transpose(0, 2, 1, 3).reshape(-1, depth, kinds),
            "q_theory": np.asarray(q_th),  # (L, P)
            "c_theory": np.asarray(c_th),
            "q_star": float(meanfield.q_star("tanh", sw2, SIGMA_B2)),
            "c_star": float(meanfield.c_star("tanh", sw2, SIGMA_B2)),
        }
    return out


def figure_signal_propagation(
    data: Mapping[str, np.ndarray], *, width: int, seeds: int, axes=None
) -> Figure:
    """Figure (b): q^l and c^l through depth, finite networks against the mean-field maps.

    Args:
      data: the contents of ``signal_propagation.npz``: for each regime of
        :data:`PROPAGATION` (``"ordered"``, ``"critical"``, ``"chaotic"``), ``"<regime>/q"`` and
        ``"<regime>/c"`` ``(samples, L, len(STARTS))``, ``"<regime>/q_theory"`` and
        ``"<regime>/c_theory"`` ``(L, len(STARTS))``, and the scalar ``"<regime>/sigma_w2"``.
      width, seeds: of the networks (for the legend).
      axes: 2 axes, for q^l and c^l (default: a new figure).

    Returns:
      The Figure drawn into (:func:`gradflow.plots.q_c_maps`).
    """
    return plots.q_c_maps(
        _io.by_label(data),
        sigma_b2=SIGMA_B2,
        starts=STARTS,
        pairs=PAIRS,
        width=width,
        seeds=seeds,
        axes=axes,
    )


# ---------------------------------------------------------------------------------------------
# (c) Jacobian spectra at criticality


def _spectrum_nets(st: Settings):
    """(label, activation, σ_w², σ_b², input length q^1, D² atoms) of the four critical networks."""
    sw2_t, sb2_t = (float(v) for v in meanfield.critical_point("tanh", st.tanh_q_star))
    d2_tanh = theory.gaussian_d2("tanh", st.tanh_q_star)
    d2_relu = theory.bernoulli_d2(0.5)
    return [
        ("tanh", "tanh", sw2_t, sb2_t, st.tanh_q_star, d2_tanh),
        ("ReLU", "relu", 2.0, 0.0, 1.0, d2_relu),
    ]


def jacobian_spectra(st: Settings, key) -> dict:
    """Squared singular values of ∂h_L/∂h_1 for critical tanh/ReLU nets, measured and predicted."""
    n, depth = st.spec_width, st.spec_depth
    steps = depth - 1
    out = {}
    for act_label, act, sw2, sb2, q1, (d2v, d2w) in _spectrum_nets(st):
        for weights in theory.WEIGHTS:
            kinit = init.gaussian(1.0) if weights == "gaussian" else init.orthogonal(1.0)
            model = models.MLP(
                width=n,
                depth=depth,
                activation=act,
                kernel_init=kinit,
                bias_init=init.gaussian_bias(1.0),
            )

            def one(k, model=model, sw2=sw2, sb2=sb2, q1=q1):
                kx, kp = jax.random.split(k)
                x = jax.random.normal(kx, (n,))
                x = x * jnp.sqrt((q1 - sb2) / sw2 * n) / jnp.linalg.norm(x)  # q^1 = q1
                params = rescaled(model.init(kp, x), math.sqrt(sw2), math.sqrt(sb2))
                products = jacobians.backward_products(model.chain(params, x))
                # Only the full product ∂h_L/∂h_1 is needed: one SVD, not one per partial product.
                sv = jnp.linalg.svd(products.unit[0], compute_uv=False)
                return 2.0 * (jnp.log(sv) + products.log_norm[0])  # log λ, (n,)

            keys = jax.random.split(jax.random.fold_in(key, len(out)), st.spec_seeds)
            # lax.map, not vmap: batched LAPACK calls (the orthogonal init's QR, the SVD) are
            # slow on CPU, and one network at a time also bounds the memory.
            log_lam = np.asarray(jax.jit(lambda ks, f=one: jax.lax.map(f, ks))(keys)).ravel()
            grid = np.geomspace(1e-6, 1e3, 500)
            pred = theory.jacobian_spectrum(
                grid, steps, d2_values=d2v, d2_weights=d2w, sigma_w2=sw2, weights=weights
            )
            # float32 products resolve λ down to ~(n·eps)² of the largest; below that they are
            # rounding (ReLU's exact zeros land there).
            floor = np.max(log_lam) + 2 * np.log(n * np.finfo(np.float32).eps)
            out[f"{act_label}/{weights}"] = {
                "log_lambda": log_lam,
                "resolved": log_lam > floor,
                "grid": grid,
                "density": pred.density,
                "atom_at_zero": pred.atom_at_zero,
                "mean": pred.mean,
                "variance": pred.variance,
                "sigma_w2": sw2,
                "sigma_b2": sb2,
            }
    return out


def figure_jacobian_spectra(
    data: Mapping[str, np.ndarray], *, width: int, depth: int, seeds: int, q_star: float, axes=None
) -> Figure:
    """Figure (c): squared singular values of ∂h_L/∂h_1 at criticality against free probability.

    Args:
      data: the contents of ``jacobian_spectra.npz``: for ``<net>`` in ``"tanh/gaussian"``,
        ``"tanh/orthogonal"``, ``"ReLU/gaussian"``, ``"ReLU/orthogonal"``:
        ``"<net>/log_lambda"`` and ``"<net>/resolved"`` ``(seeds · width,)``, the prediction
        ``"<net>/grid"`` and ``"<net>/density"`` ``(500,)``, its ``"<net>/variance"``, and the
        scalars ``"<net>/sigma_w2"``, ``"<net>/sigma_b2"``.
      width, depth, seeds: of the networks (for the titles).
      q_star: the tanh nets' q* (for the title).
      axes: 2 axes, tanh then ReLU (default: a new figure with a shared y axis).

    Returns:
      The Figure drawn into (:func:`gradflow.plots.isometry_spectra`).
    """
    sizes = {"width": width, "depth": depth, "seeds": seeds, "q_star": q_star}
    return plots.isometry_spectra(_io.by_label(data), **sizes, axes=axes)


# ---------------------------------------------------------------------------------------------
# (d) depth scales


XI_SIGMA_B2 = (0.01, 0.05, 0.3)


def depth_scales(st: Settings) -> dict:
    sw2 = jnp.linspace(0.5, 4.0, st.xi_points)
    out = {"sigma_w2": np.asarray(sw2)}
    for sb2 in XI_SIGMA_B2:
        out[f"xi_c/{sb2}"] = np.asarray(meanfield.xi_c("tanh", sw2, sb2))
        out[f"xi_q/{sb2}"] = np.asarray(meanfield.xi_q("tanh", sw2, sb2))
        out[f"critical/{sb2}"] = float(meanfield.critical_sigma_w2("tanh", sb2))
    return out


def figure_depth_scales(data: Mapping[str, np.ndarray], *, ax: Axes | None = None) -> Figure:
    """Figure (d): the depth scales ξ_c, 6 ξ_c and ξ_q of tanh networks against σ_w².

    Args:
      data: the contents of ``depth_scales.npz``: ``sigma_w2`` ``(P,)`` and, for each σ_b² of
        :data:`XI_SIGMA_B2`, ``"xi_c/<σ_b²>"``, ``"xi_q/<σ_b²>"`` ``(P,)`` and the scalar
        ``"critical/<σ_b²>"`` (:func:`depth_scales`).
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into (:func:`gradflow.plots.depth_scales`).
    """
    fields = ("xi_c", "xi_q", "critical")
    xi_c, xi_q, critical = ({s: data[f"{k}/{s}"] for s in XI_SIGMA_B2} for k in fields)
    return plots.depth_scales(
        data["sigma_w2"], xi_c, xi_q, critical, trainable_sigma_b2=SIGMA_B2, ax=ax
    )


# ---------------------------------------------------------------------------------------------


def run(out_dir, *, full: bool = False) -> dict:
    """Writes figures (a)–(d) and their numbers to ``out_dir/meanfield``; returns a summary."""
    out = Path(out_dir) / NAME
    st = settings(full)
    key = jax.random.key(0)
    k_chi, k_prop, k_spec = jax.random.split(key, 3)

    pd = phase_diagram(st)
    meas = measured_log_chi1(st, k_chi)
    arrays = pd | {f"measured_{k}": v for k, v in meas.items()}
    _io.save_npz(arrays, out / "phase_diagram.npz")
    _io.save_figure(
        figure_phase_diagram(arrays, **_sizes(st)["phase_diagram"]), out / "phase_diagram.png"
    )

    prop = signal_propagation(st, k_prop)
    arrays = {f"{label}/{k}": v for label, r in prop.items() for k, v in r.items()}
    _io.save_npz(arrays, out / "signal_propagation.npz")
    fig = figure_signal_propagation(arrays, **_sizes(st)["signal_propagation"])
    _io.save_figure(fig, out / "signal_propagation.png")

    spec = jacobian_spectra(st, k_spec)
    arrays = {f"{label}/{k}": v for label, r in spec.items() for k, v in r.items()}
    _io.save_npz(arrays, out / "jacobian_spectra.npz")
    fig = figure_jacobian_spectra(arrays, **_sizes(st)["jacobian_spectra"])
    _io.save_figure(fig, out / "jacobian_spectra.png")

    xi = depth_scales(st)
    _io.save_npz(xi, out / "depth_scales.npz")
    _io.save_figure(figure_depth_scales(xi), out / "depth_scales.png")

    med = np.median(meas["log_chi1"], axis=-1)
    summary = {
        "settings": st._asdict(),
        "critical_sigma_w2_at_sigma_b2_0.05": float(meanfield.critical_sigma_w2("tanh", SIGMA_B2)),
        "phase_diagram": {
            "grid": st.grid,
            "measured_vs_theory_log_chi1_rms": float(
                np.sqrt(np.mean((med - meas["theory_log_chi1"]) ** 2))
            ),
            "measured_vs_theory_log_chi1_max_abs": float(
                np.max(np.abs(med - meas["theory_log_chi1"]))
            ),
        },
        "signal_propagation": {
            label: {
                "sigma_w2": r["sigma_w2"],
                "q_star": r["q_star"],
                "c_star": r["c_star"],
                "q_last_layer_measured": r["q"][:, -1].mean(axis=0).tolist(),
                "c_last_layer_measured": r["c"][:, -1].mean(axis=0).tolist(),
                "c_last_layer_theory": r["c_theory"][-1].tolist(),
            }
            for label, r in prop.items()
        },
        "jacobian_spectra": {
            label: {
                "predicted_mean": r["mean"],
                "predicted_variance": r["variance"],
                "measured_mean": float(np.exp(r["log_lambda"]).mean()),
                "measured_variance": float(np.exp(r["log_lambda"]).var()),
                "fraction_zero": float(1 - r["resolved"].mean()),
            }
            for label, r in spec.items()
        },
        "depth_scales": {
            f"xi_c_at_sigma_w2={s}": float(np.interp(s, xi["sigma_w2"], xi[f"xi_c/{SIGMA_B2}"]))
            for s in (1.0, 1.5, 2.5, 3.5)
        },
    }
    _io.save_json(summary, out / "summary.json")
    return summary


def _sizes(st) -> dict[str, dict]:
    """The settings each figure prints, from :class:`Settings` or its saved dict."""
    st = st if isinstance(st, Mapping) else st._asdict()
    return {
        "phase_diagram": {"width": st["chi_width"], "depth": st["chi_depth"]},
        "signal_propagation": {"width": st["prop_width"], "seeds": st["prop_seeds"]},
        "jacobian_spectra": {
            "width": st["spec_width"],
            "depth": st["spec_depth"],
            "seeds": st["spec_seeds"],
            "q_star": st["tanh_q_star"],
        },
        "depth_scales": {},
    }


def figures(out_dir) -> dict[str, Figure]:
    """Redraws every figure of :func:`run` from the numbers it saved in ``out_dir/meanfield``.

    Args:
      out_dir: the directory given to :func:`run`.

    Returns:
      ``{file stem: Figure}``, the stems of the PNG/PDF files :func:`run` wrote.
    """
    out = Path(out_dir) / NAME
    sizes = _sizes(_io.load_json(out / "summary.json")["settings"])
    draw = {
        "phase_diagram": figure_phase_diagram,
        "signal_propagation": figure_signal_propagation,
        "jacobian_spectra": figure_jacobian_spectra,
        "depth_scales": figure_depth_scales,
    }
    return {k: f(_io.load_npz(out / f"{k}.npz"), **sizes[k]) for k, f in draw.items()}
