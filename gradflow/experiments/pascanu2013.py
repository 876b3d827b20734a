"""Pascanu, Mikolov & Bengio 2013 ("On the difficulty of training recurrent neural networks",
arXiv:1211.5063), the dynamical-systems half, with Doya 1993's one-neuron bifurcations.

(a) ``bifurcation.png``: fixed points of x = w σ(x) + b against b (stable solid, unstable dashed),
    the two saddle-nodes and a quasi-static hysteresis sweep; the cusp in the (b, w) plane; and
    ∂x_T/∂x_0, ∂x_T/∂b along trajectories, small far from the folds and huge at the separatrix.
(b) ``cliff.png``: the loss L(b) = (x_T(b) − target)² with its wall (Pascanu §3.3, Fig. 6), and
    gradient descent from the same starts at the same learning rate with and without
    ``optax.clip_by_global_norm``; also the (w, b) surface with 2-D trajectories.
(c) ``rnn_thresholds.png``: tanh and sigmoid RNNs, ‖∂x_T/∂x_0‖ and the top Lyapunov exponent
    against the spectral radius ρ and the largest singular value λ₁ of W_rec, 1/γ marked (§3.1:
    λ₁ < 1/γ is sufficient for vanishing, λ₁ > 1/γ necessary for exploding; ρ ≤ λ₁, so the
    theorem says nothing about ρ, and whether ρ < 1/γ also rules out explosion is measured here).
(d) ``order_to_chaos.png``: Lyapunov spectra of an autonomous tanh RNN x ← W tanh(x),
    W ~ N(0, g²/n), for gains g from 0.5 to 3: the top exponent crosses 0 near g = 1.
(e) ``lyapunov_newman.png``: finite-time QR exponents of Gaussian products converging to
    Newman's closed form (a check of the estimator used in (c) and (d)).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradflow import (
    activations,
    dynamics,
    init,
    jacobians,
    lyapunov,
    models,
    plots,
    spectra,
    theory,
)
from gradflow.chain import Chain
from gradflow.experiments import _io
from gradflow.models.recurrent import RNNStep

NAME = "pascanu2013"
DESCRIPTION = "Doya bifurcations, Pascanu's cliff and clipping, RNN thresholds, Lyapunov spectra"

# Figure (b) setting: the cliff model of gradflow.dynamics.cliff_loss (w = 5, x_0 = 0.5, T = 20,
# target 1 between the branches) and the plotted window of b.
CLIFF = {"w": 5.0, "x0": 0.5, "steps": 20, "target": 1.0}
B_RANGE = (-4.0, -1.0)
# Figure (a) setting: the slice x ← w σ(x) + b at w = 6 and the one-neuron gradients after T = 50
# steps from x₀ = 0.
BIFURCATION = {"w": 6.0, "x0": 0.0, "steps": 50}

# Problem sizes: CPU-sized by default (the whole run takes ~20 s of CPU), paper-sized with --full.
SIZES = {
    False: {
        "bif_points": 401,
        "settle": 200,
        "cliff_starts": 32,
        "surface": (81, 91),
        "rnn": (32, 200, 2, 10),  # width, steps, seeds, scales
        "chaos": (64, 1000, 200, 11),  # width, steps, discard, gains
        "newman_steps": 5000,
    },
    True: {
        "bif_points": 801,
        "settle": 400,
        "cliff_starts": 128,
        "surface": (161, 181),
        "rnn": (128, 500, 4, 16),
        "chaos": (256, 5000, 1000, 21),
        "newman_steps": 20_000,
    },
}


# --------------------------------------------------------------------------------------------
# (b) gradient descent on the cliff, with and without clipping
# --------------------------------------------------------------------------------------------
class Descent(NamedTuple):
    """A gradient-descent run.

    Attributes:
      params: pytree like the start with a leading axis ``S + 1`` (start included).
      loss: array ``(S + 1,)``, the loss at each iterate.
      grad_norm: array ``(S,)``, the global gradient norm before clipping at each step.
    """

    params: object
    loss: jax.Array
    grad_norm: jax.Array


def descend(loss_fn, params0, *, learning_rate: float, steps: int, clip_norm=None) -> Descent:
    """Plain SGD on ``loss_fn``, optionally after ``optax.clip_by_global_norm(clip_norm)``.

    Clipping rescales the gradient g to clip_norm · g/‖g‖ when ‖g‖ > clip_norm (Pascanu et al.
    2013, §3.2, Algorithm 1), so no step is longer than learning_rate · clip_norm.

    Args:
      loss_fn: ``params -> scalar``.
      params0: starting parameters (any pytree).
      learning_rate: SGD step size.
      steps: number of updates S.
      clip_norm: None for no clipping.

    Returns:
      :class:`Descent`.
    """
    opt = optax.sgd(learning_rate)
    if clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(clip_norm), opt)
    value_and_grad = jax.value_and_grad(loss_fn)

    def body(carry, _):
        p, state = carry
        loss, g = value_and_grad(p)
        updates, state = opt.update(g, state, p)
        return (optax.apply_updates(p, updates), state), (p, loss, optax.tree.norm(g))

    (p_last, _), (ps, losses, norms) = jax.lax.scan(
        body, (params0, opt.init(params0)), None, length=steps
    )
    params = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b[None]]), ps, p_last)
    return Descent(params, jnp.concatenate([losses, loss_fn(p_last)[None]]), norms)


def cliff_wall(b_values=None, **cliff) -> float:
    """b at which |dL/db| of the cliff loss peaks (on a fine grid over :data:`B_RANGE`)."""
    cliff = {**CLIFF, **cliff}
    if b_values is None:
        b_values = jnp.linspace(*B_RANGE, 30_001)
    land = dynamics.cliff_landscape(b_values, **cliff)
    return float(land.b[jnp.argmax(jnp.abs(land.grad))])


class ClippingResult(NamedTuple):
    """Descents from the same starts at the same learning rate, unclipped and clipped.

    Attributes:
      b_unclipped, b_clipped: arrays ``(R, S + 1)``, b along each run.
      loss_unclipped, loss_clipped: arrays ``(R, S + 1)``.
      wall: the b of the wall (steepest point).
    """

    b_unclipped: np.ndarray
    b_clipped: np.ndarray
    loss_unclipped: np.ndarray
    loss_clipped: np.ndarray
    wall: float


def clipping_experiment(
    starts, *, learning_rate: float = 0.01, steps: int = 200, clip_norm: float = 1.0, **cliff
) -> ClippingResult:
    """Gradient descent on the 1-D cliff loss L(b) from each start, with and without clipping.

    Args:
      starts: array ``(R,)`` of initial b (left of the wall).
      learning_rate, steps, clip_norm: see :func:`descend`.
      **cliff: overrides of :data:`CLIFF` (w, x0, steps, target) for the loss.

    Returns:
      :class:`ClippingResult`.
    """
    cliff = {**CLIFF, **cliff}
    w = cliff.pop("w")
    loss = lambda b: dynamics.cliff_loss(w, b, **cliff)
    runs = {}
    for clip in (None, clip_norm):
        run = jax.jit(
            jax.vmap(
                lambda b0, clip=clip: descend(
                    loss, b0, learning_rate=learning_rate, steps=steps, clip_norm=clip
                )
            )
        )
        d = run(jnp.asarray(starts, jnp.float32))
        runs[clip] = (np.asarray(d.params), np.asarray(d.loss))
    (b_u, loss_u), (b_c, loss_c) = runs[None], runs[clip_norm]
    return ClippingResult(b_u, b_c, loss_u, loss_c, cliff_wall(w=w, **cliff))


def clipping_stats(result: ClippingResult, b_range=B_RANGE) -> dict:
    """Per method: the fraction of runs that leave ``b_range``, that cross the wall, the largest
    single step, and the median final loss."""
    lo, hi = b_range
    out = {}
    for name, b, loss in (
        ("unclipped", result.b_unclipped, result.loss_unclipped),
        ("clipped", result.b_clipped, result.loss_clipped),
    ):
        finite = np.where(np.isfinite(b), b, np.inf)
        out[name] = {
            "fraction_left_range": float(np.mean(np.any((finite < lo) | (finite > hi), axis=1))),
            "fraction_crossed_wall": float(np.mean(np.any(finite > result.wall, axis=1))),
            "max_step": float(np.max(np.abs(np.diff(finite, axis=1)))),
            "max_abs_b": float(np.max(np.abs(finite))),
            "median_final_loss": float(np.median(loss[:, -1])),
            "median_initial_loss": float(np.median(loss[:, 0])),
        }
    return out


def _cliff_surface(ws, bs, **cliff):
    cliff = {**CLIFF, **cliff}
    cliff.pop("w")
    f = jax.vmap(jax.vmap(lambda w, b: dynamics.cliff_loss(w, b, **cliff), (None, 0)), (0, None))
    return np.asarray(f(jnp.asarray(ws), jnp.asarray(bs)))


def _descents_2d(starts, learning_rate, steps, clip_norm, **cliff):
    cliff = {**CLIFF, **cliff}
    cliff.pop("w")
    loss = lambda p: dynamics.cliff_loss(p[0], p[1], **cliff)
    out = {}
    for clip in (None, clip_norm):
        run = jax.jit(
            jax.vmap(
                lambda p0, clip=clip: (
                    descend(
                        loss, p0, learning_rate=learning_rate, steps=steps, clip_norm=clip
                    ).params
                )
            )
        )
        out["clipped" if clip else "unclipped"] = np.asarray(run(jnp.asarray(starts, jnp.float32)))
    return out


# --------------------------------------------------------------------------------------------
# (c) RNN thresholds and (d) order to chaos
# --------------------------------------------------------------------------------------------
def rnn_threshold_sweep(activation: str, scales, *, width: int, steps: int, keys, input_scale=0.1):
    """For W_rec ~ scale · N(0, 1/n): ρ, λ₁, ‖∂x_T/∂x_0‖₂ and the top Lyapunov exponent.

    A Gaussian W has ρ ≈ scale (circular law) and λ₁ ≈ 2·scale (quarter-circle law), so ρ and λ₁
    are distinct abscissae for the same network. Inputs u_t ~ N(0, input_scale² I_4) drive the
    state; the top exponent is averaged over the last 4/5 of the sequence.

    The RNN is centred so that x = 0 is a fixed point without input: its bias is −φ(0)·1 W (zero
    for tanh; −½ 1 W for the sigmoid, whose φ(0) = ½ would otherwise add a mean drive that
    saturates every unit). At x = 0 the step Jacobian is φ'(0) Wᵀ = γ Wᵀ for both, so the
    thresholds 1/γ (1 for tanh, 4 for the sigmoid) are where the linearisation turns unstable.

    Returns:
      dict of arrays ``(len(scales), len(keys))``: rho, lambda1, log_norm (log‖∂x_T/∂x_0‖₂),
      top_exponent.
    """
    act = activations.get(activation)

    def one(scale, key):
        kp, ku = jax.random.split(key)
        model = models.RNN(width=width, activation=act.name, recurrent_init=init.gaussian(1.0))
        u = input_scale * jax.random.normal(ku, (steps, 4))
        p = model.init(kp, u)["params"]
        w = scale * p["recurrent"]["kernel"]
        bias = -act.value_at_zero * jnp.sum(w, axis=0)
        p = {**p, "recurrent": {"kernel": w}, "input": {**p["input"], "bias": bias}}
        chain = model.chain(p, u)
        log_norm = jacobians.backward_products(chain).log_spectral_norm()[0]
        top = lyapunov.lyapunov_spectrum(chain, k=1, discard=steps // 5)[0]
        return w, spectra.singular_values(w)[0], log_norm, top

    run = jax.jit(jax.vmap(jax.vmap(one, (None, 0)), (0, None)))
    w, lam1, log_norm, top = run(jnp.asarray(scales, jnp.float32), keys)
    return {
        "rho": np.asarray(spectra.spectral_radius(w)),
        "lambda1": np.asarray(lam1),
        "log_norm": np.asarray(log_norm),
        "top_exponent": np.asarray(top),
    }


def chaos_spectra(gains, *, width: int, steps: int, discard: int, key):
    """Full Lyapunov spectra of the autonomous tanh RNN x ← W tanh(x), W ~ N(0, g²/n).

    The same W direction (one key) is scaled by each gain, so the curves differ only by g. The
    initial state is N(0, 1) so that for g > 1 the chain leaves the unstable fixed point 0.

    Returns:
      array ``(len(gains), width)``, each spectrum descending.
    """
    kw, kh = jax.random.split(key)
    w0 = init.gaussian(1.0)(kw, (width, width), jnp.float32)
    h0 = jax.random.normal(kh, (width,), jnp.float32)
    step = RNNStep(activations.get("tanh"))
    zero_drive = jnp.zeros((steps, width), jnp.float32)

    def one(g):
        # Pascanu's RNN step (gradflow.models.RNN's) with no input and a random initial state.
        c = Chain(
            params={"kernel": g * w0}, xs=zero_drive, h0=h0, step=step, length=steps, shared=True
        )
        return lyapunov.lyapunov_spectrum(c, discard=discard)

    return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(gains, jnp.float32)))


def newman_convergence(n: int, steps: int, key) -> tuple[np.ndarray, np.ndarray]:
    """Finite-time QR exponents of products of N(0, 1/n) matrices and Newman's exact values.

    Returns:
      ``(running (steps, n), exact (n,))``.
    """
    jac = jax.random.normal(key, (steps, n, n), jnp.float32) / np.sqrt(n)
    running = lyapunov.finite_time_spectrum(jac).running
    return np.asarray(running), np.asarray(theory.newman_lyapunov_exponents(n))


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
def figure_bifurcation(
    data: Mapping[str, np.ndarray],
    *,
    w: float = BIFURCATION["w"],
    steps: int = BIFURCATION["steps"],
    x0: float = BIFURCATION["x0"],
    axes=None,
) -> Figure:
    """(a) Bifurcation diagram with hysteresis, the cusp, and the one-neuron gradients.

    Args:
      data: the contents of ``bifurcation.npz``: ``b`` ``(M,)`` ascending; the fixed points
        ``fixed_x``, ``fixed_stable`` ``(M, 3)`` (:func:`gradflow.dynamics.doya_fixed_points`);
        the saddle-nodes ``saddle_b``, ``saddle_x`` ``(2,)``; the hysteresis sweep's states
        ``hyst_x_up`` (b ascending) and ``hyst_x_down`` (b descending) ``(M,)``;
        ∂x_T/∂b and ∂x_T/∂x₀ ``dx_db``, ``dx_dx0`` ``(M,)``; and the bifurcation set
        ``w_grid`` ``(W,)``, ``fold_b`` ``(W, 2)``.
      w: the self-weight of the slice.
      steps, x0: T and x₀ of the gradients (for the title; x₀ also places the separatrix
        b = x₀ − w σ(x₀)).
      axes: 3 axes (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    bs = np.asarray(data["b"])
    b_sep = x0 - w / (1 + np.exp(-x0))  # x₀ is a fixed point there: the separatrix
    created = axes is None
    fig, axes = plots.new_axes_grid(axes, nrows=1, ncols=3, figsize=(16, 4.6))
    ax = axes[0]
    x, stable = np.asarray(data["fixed_x"]), np.asarray(data["fixed_stable"])
    for slot in range(3):
        ax.plot(bs, np.where(stable[:, slot], x[:, slot], np.nan), "k-", lw=2)
        ax.plot(bs, np.where(~stable[:, slot], x[:, slot], np.nan), "r--", lw=1.5)
    ax.plot([], [], "k-", lw=2, label="stable fixed point")
    ax.plot([], [], "r--", lw=1.5, label="unstable fixed point")
    sl = slice(None, None, max(1, len(bs) // 60))
    x_up, x_down = np.asarray(data["hyst_x_up"]), np.asarray(data["hyst_x_down"])
    ax.plot(bs[sl], x_up[sl], ">", color="tab:blue", ms=4, label="sweep b up")
    ax.plot(bs[::-1][sl], x_down[sl], "<", color="tab:orange", ms=4, label="sweep b down")
    saddle_b = np.asarray(data["saddle_b"])
    ax.plot(saddle_b, data["saddle_x"], "o", mfc="white", mec="k", ms=8, label="saddle-node")
    ax.set_xlabel("bias b")
    ax.set_ylabel("state x")
    ax.set_title(f"x ← {w:g}·σ(x) + b: fixed points and hysteresis")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)

    ax = axes[1]
    w_grid = np.asarray(data["w_grid"])
    lo, hi = np.asarray(data["fold_b"])[:, 0], np.asarray(data["fold_b"])[:, 1]
    ax.fill_betweenx(w_grid, lo, hi, color="tab:purple", alpha=0.25, label="3 fixed points")
    ax.plot(lo, w_grid, "k-", lw=1.5, label="saddle-node curves")
    ax.plot(hi, w_grid, "k-", lw=1.5)
    ax.axhline(4.0, color="gray", ls=":", label="w = 4: cusp, no folds below")
    ax.axhline(w, color="tab:blue", ls="--", lw=1, label=f"slice w = {w:g} (left)")
    ax.set_xlabel("bias b")
    ax.set_ylabel("self-weight w")
    ax.set_title("Bifurcation set in the (b, w) plane")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)

    ax = axes[2]
    tiny = np.finfo(np.float64).tiny
    ax.semilogy(bs, np.maximum(np.abs(data["dx_db"]), tiny), label=r"$|\partial x_T/\partial b|$")
    ax.semilogy(
        bs, np.maximum(np.abs(data["dx_dx0"]), tiny), label=r"$|\partial x_T/\partial x_0|$"
    )
    for i, b in enumerate(saddle_b):
        ax.axvline(b, color="k", ls=":", lw=1, label="saddle-nodes" if i == 0 else None)
    ax.axvline(b_sep, color="r", ls="--", lw=1, label="x₀ on the separatrix")
    ax.set_xlabel("bias b")
    ax.set_ylabel("derivative of $x_T$ (log scale)")
    ax.set_title(f"T = {steps} steps from x₀ = {x0:g}")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3, which="both")
    if created:
        fig.tight_layout()
    return fig


def figure_cliff(
    data: Mapping[str, np.ndarray],
    *,
    wall: float,
    learning_rate: float,
    clip_norm: float,
    axes=None,
) -> Figure:
    """(b) The cliff, and descent with and without gradient-norm clipping (1-D and 2-D).

    Args:
      data: the contents of ``cliff.npz``: the landscape ``b``, ``loss``, ``grad`` ``(G,)``;
        the 1-D descents ``b_unclipped``, ``b_clipped``, ``loss_unclipped``, ``loss_clipped``
        ``(R, S + 1)`` (:class:`ClippingResult`); the surface ``surface`` ``(Wn, Bn)`` over
        ``surface_w`` ``(Wn,)`` × ``surface_b`` ``(Bn,)``; the 2-D paths ``traj2d_unclipped``,
        ``traj2d_clipped`` ``(P, S + 1, 2)`` of (w, b).
      wall: b of the wall (:func:`cliff_wall`).
      learning_rate, clip_norm: of the descents (for the labels).
      axes: 3 axes (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    clip = ClippingResult(
        data["b_unclipped"], data["b_clipped"], data["loss_unclipped"], data["loss_clipped"], wall
    )
    stats = clipping_stats(clip)
    lr, surface = learning_rate, np.asarray(data["surface"])
    ws, bs2d = np.asarray(data["surface_w"]), np.asarray(data["surface_b"])
    traj2d = {"unclipped": data["traj2d_unclipped"], "clipped": data["traj2d_clipped"]}
    created = axes is None
    fig, axes = plots.new_axes_grid(axes, nrows=1, ncols=3, figsize=(17, 4.8))
    ax = axes[0]
    ax.plot(data["b"], data["loss"], "k-", lw=1.5, label="L(b)")
    ax.set_xlabel("bias b")
    ax.set_ylabel(r"loss $(x_T - \mathrm{target})^2$")
    twin = ax.twinx()
    twin.semilogy(data["b"], np.abs(data["grad"]), color="tab:red", lw=1, alpha=0.7)
    twin.set_ylabel("|dL/db| (log scale)", color="tab:red")
    ax.axvline(clip.wall, color="tab:red", ls=":", lw=1, label=f"wall b ≈ {clip.wall:.3f}")
    ax.set_title(f"The cliff: w = {CLIFF['w']:g}, x₀ = {CLIFF['x0']:g}, T = {CLIFF['steps']}")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)

    ax = axes[1]
    r = clip.b_unclipped.shape[0] // 2
    it = np.arange(clip.b_unclipped.shape[1])
    ax.axhspan(*B_RANGE, color="gray", alpha=0.12, label="plotted window of b")
    ax.axhline(clip.wall, color="tab:red", ls=":", lw=1, label="wall")
    ax.plot(it, clip.b_unclipped[r], "-", color="tab:orange", lw=1.2, label="SGD")
    ax.plot(
        it,
        clip.b_clipped[r],
        "-",
        color="tab:blue",
        lw=1.8,
        label=f"SGD + clip_by_global_norm({clip_norm:g})",
    )
    u, c = stats["unclipped"], stats["clipped"]
    n = clip.b_unclipped.shape[0]
    text = (
        f"{n} starts, lr = {lr:g}\n"
        f"unclipped: {u['fraction_left_range']:.0%} leave the window, "
        f"largest step {u['max_step']:.2g}\n"
        f"clipped: {c['fraction_left_range']:.0%} leave, "
        f"{c['fraction_crossed_wall']:.0%} cross the wall, largest step {c['max_step']:.2g}"
    )
    ax.text(
        0.02,
        0.97,
        text,
        transform=ax.transAxes,
        fontsize=8,
        va="top",
        bbox={"facecolor": "white", "alpha": 0.8, "lw": 0},
    )
    ax.set_xlabel("iteration")
    ax.set_ylabel("b")
    ax.set_title(f"Same start (b₀ = {clip.b_unclipped[r, 0]:.2f}), same learning rate")
    top = max(float(np.nanmax(clip.b_unclipped[r])), B_RANGE[1])
    ax.set_ylim(B_RANGE[0] - 2.5, top + 0.35 * (top - B_RANGE[0]))
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)

    ax = axes[2]
    levels = np.arange(-4.0, np.ceil(np.log10(surface.max())) + 0.25, 0.25)
    cs = ax.contourf(bs2d, ws, np.log10(np.maximum(surface, 1e-4)), levels=levels, cmap="viridis")
    fig.colorbar(cs, ax=ax, label=r"$\log_{10}$ loss", ticks=np.arange(-4, levels[-1] + 1))
    for name, color in (("unclipped", "tab:orange"), ("clipped", "black")):
        for k, path in enumerate(traj2d[name]):
            ax.plot(
                path[:, 1],
                path[:, 0],
                "-",
                color=color,
                lw=1.2,
                label=("SGD" if name == "unclipped" else "SGD + clipping") if k == 0 else None,
            )
            ax.plot(path[0, 1], path[0, 0], "o", color=color, ms=4)
    ax.set_xlim(bs2d[0], bs2d[-1])
    ax.set_ylim(ws[0], ws[-1])
    ax.set_xlabel("bias b")
    ax.set_ylabel("self-weight w")
    ax.set_title("Loss surface over (w, b) with descent paths")
    ax.legend(fontsize=8, loc="lower left")
    if created:
        fig.tight_layout()
    return fig


def figure_rnn_thresholds(
    data: Mapping[str, np.ndarray], *, width: int, steps: int, axes=None
) -> Figure:
    """(c) ‖∂x_T/∂x_0‖ and the top exponent against ρ and λ₁, with 1/γ marked.

    Args:
      data: the contents of ``rnn_thresholds.npz``: per activation (``"tanh"``,
        ``"sigmoid"``) ``"<act>/rho"``, ``"<act>/lambda1"``, ``"<act>/log_norm"``,
        ``"<act>/top_exponent"`` ``(scales, seeds)`` (:func:`rnn_threshold_sweep`).
      width, steps: of the RNNs (for the titles).
      axes: ``activations × 2`` axes, row-major (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    sweeps = _io.by_label(data)
    created = axes is None
    fig, axes = plots.new_axes_grid(
        axes, nrows=len(sweeps), ncols=2, figsize=(12, 4.25 * len(sweeps))
    )
    axes = np.reshape(axes, (len(sweeps), 2))
    for row, (act, sw) in enumerate(sweeps.items()):
        gamma = activations.get(act).gamma
        for col, (key, ylabel) in enumerate(
            (
                ("log_norm", r"$\log_{10}\|\partial x_T/\partial x_0\|_2$"),
                ("top_exponent", r"top Lyapunov exponent $\lambda_{\max}$ (per step)"),
            )
        ):
            ax = axes[row, col]
            y = sw[key] / np.log(10.0) if key == "log_norm" else sw[key]
            ax.plot(
                sw["rho"].ravel(),
                y.ravel(),
                "o",
                ms=4,
                color="tab:blue",
                label=r"vs spectral radius $\rho$",
            )
            ax.plot(
                sw["lambda1"].ravel(),
                y.ravel(),
                "s",
                ms=4,
                color="tab:green",
                mfc="none",
                label=r"vs largest singular value $\lambda_1$",
            )
            ax.axvline(1 / gamma, color="r", ls="--", lw=1.2, label=f"1/γ = {1 / gamma:g}")
            ax.axhline(0.0, color="gray", lw=0.8)
            ax.set_xlabel(r"$\rho(W_{rec})$ or $\lambda_1(W_{rec})$")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{act} RNN (n = {width}, T = {steps}), W ~ s·N(0, 1/n)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="lower right")
    if created:
        fig.tight_layout()
    return fig


def figure_order_to_chaos(data: Mapping[str, np.ndarray], *, steps: int, axes=None) -> Figure:
    """(d) Lyapunov spectra across the order-to-chaos transition.

    Args:
      data: the contents of ``order_to_chaos.npz``: ``gains`` ``(G,)``, ``spectra``
        ``(G, width)`` (each descending, :func:`chaos_spectra`) and the scalar ``log_rho0``,
        log ρ(W₀) of the unscaled weights.
      steps: length of the chains (for the title).
      axes: 2 axes (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    gains, spectra_ = np.asarray(data["gains"]), np.asarray(data["spectra"])
    log_rho0, width = float(data["log_rho0"]), spectra_.shape[1]
    created = axes is None
    fig, axes = plots.new_axes_grid(axes, nrows=1, ncols=2, figsize=(13, 4.8))
    ax = axes[0]
    cmap = matplotlib.colormaps["viridis"]
    i = np.arange(1, width + 1) / width
    for k, (g, lam) in enumerate(zip(gains, spectra_, strict=True)):
        ax.plot(i, lam, color=cmap(k / max(1, len(gains) - 1)), lw=1.5, label=f"g = {g:.2f}")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xlabel("i / n")
    ax.set_ylabel(r"Lyapunov exponent $\lambda_i$ (per step)")
    ax.set_title(f"Spectra of x ← W tanh(x), W ~ N(0, g²/n), n = {width}, T = {steps}")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    ax = axes[1]
    ax.plot(gains, spectra_[:, 0], "o-", label=r"$\lambda_{\max}$ (QR)")
    # While g ρ(W₀) < 1 the origin is stable, the state decays to 0 and the exponents are
    # log|eigenvalues| of g W₀ exactly; beyond g = 1/ρ(W₀) the linearisation says nothing.
    g_fine = np.linspace(gains[0], np.exp(-log_rho0), 50)
    ax.plot(
        g_fine,
        np.log(g_fine) + log_rho0,
        "k--",
        lw=1,
        label=r"$\log\rho(W)$: linearisation at x = 0",
    )
    ax.plot(
        gains,
        np.mean(spectra_ > 0, axis=1),
        "s-",
        color="tab:red",
        ms=4,
        label="fraction of positive exponents",
    )
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.axvline(1.0, color="gray", ls=":", label="g = 1")
    ax.set_xlabel("gain g")
    ax.set_ylabel("exponent (per step) / fraction")
    ax.set_title("Order (λ_max < 0) to chaos (λ_max > 0)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if created:
        fig.tight_layout()
    return fig


def figure_newman(data: Mapping[str, np.ndarray], *, ax: Axes | None = None) -> Figure:
    """(e) Finite-time QR exponents converging to Newman's closed form.

    Args:
      data: the contents of ``lyapunov_newman.npz``: ``running`` ``(K, n)``, the estimates
        after each step, and ``exact`` ``(n,)`` (:func:`newman_convergence`).
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    running, exact = np.asarray(data["running"]), np.asarray(data["exact"])
    created = ax is None
    fig, ax = plots.new_axes(ax, figsize=(7.5, 4.6))
    t = np.arange(1, running.shape[0] + 1)
    colors = matplotlib.colormaps["tab10"]
    for i in range(running.shape[1]):
        ax.semilogx(t, running[:, i], color=colors(i % 10), lw=1.2)
        ax.axhline(exact[i], color=colors(i % 10), ls="--", lw=0.8)
    ax.plot([], [], "k-", label="finite-time QR estimate")
    ax.plot([], [], "k--", label="Newman 1986 closed form")
    ax.set_xlabel("steps K")
    ax.set_ylabel(r"$\lambda_i$ after K steps")
    ax.set_title(f"Products of {running.shape[1]}×{running.shape[1]} Gaussian matrices, N(0, 1/n)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    if created:
        fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------
def _bifurcation_section(out: Path, size: dict) -> dict:
    w, x0, steps = BIFURCATION["w"], BIFURCATION["x0"], BIFURCATION["steps"]
    bs = np.linspace(-5.0, -1.0, size["bif_points"])
    with jax.enable_x64(True):
        fixed = dynamics.doya_fixed_points(w, bs)
        saddle = dynamics.doya_saddle_nodes(w)
        hyst = dynamics.doya_hysteresis(w, bs, settle=size["settle"])
        trajs = jax.vmap(lambda b: dynamics.doya_trajectory(w, b, x0, steps))(jnp.asarray(bs))
        w_grid = np.linspace(4.0001, 10.0, 200)
        folds = dynamics.doya_saddle_nodes(w_grid)
        grads = {
            "steps": steps,
            "x0": x0,
            "b_sep": x0 - w / (1 + np.exp(-x0)),
            "dx_db": np.asarray(trajs.dx_db[:, -1]),
            "dx_dx0": np.asarray(trajs.dx_dx0[:, -1]),
        }
        arrays = {
            "b": bs,
            "fixed_x": fixed.x,
            "fixed_stable": fixed.stable,
            "saddle_b": saddle.b,
            "saddle_x": saddle.x,
            "hyst_x_up": hyst.x_up,
            "hyst_x_down": hyst.x_down,
            "dx_db": grads["dx_db"],
            "dx_dx0": grads["dx_dx0"],
            "w_grid": w_grid,
            "fold_b": folds.b,
        }
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        fig = figure_bifurcation(arrays, w=w, steps=steps, x0=x0)
        _io.save_figure(fig, out / "bifurcation.png")
        _io.save_npz(arrays, out / "bifurcation.npz")
        far = np.abs(np.asarray(bs) - grads["b_sep"]) > 0.5
        return {
            "w": w,
            "saddle_node_b": np.asarray(saddle.b),
            "hysteresis_jump_up_b": float(hyst.b_jump_up),
            "hysteresis_jump_down_b": float(hyst.b_jump_down),
            "max_abs_dxT_db": float(np.max(np.abs(grads["dx_db"]))),
            "median_abs_dxT_dx0_far_from_separatrix": float(
                np.median(np.abs(grads["dx_dx0"][far]))
            ),
        }


def _cliff_section(out: Path, size: dict) -> dict:
    lr, clip_norm, steps = 0.01, 1.0, 200
    starts = np.linspace(-3.5, -3.0, size["cliff_starts"])
    land = dynamics.cliff_landscape(jnp.linspace(*B_RANGE, 30_001), **CLIFF)
    clip = clipping_experiment(starts, learning_rate=lr, steps=steps, clip_norm=clip_norm)
    stats = clipping_stats(clip)
    ws = np.linspace(3.0, 8.0, size["surface"][0])
    bs2d = np.linspace(-5.0, -0.5, size["surface"][1])
    surface = _cliff_surface(ws, bs2d)
    starts2d = np.array([[6.5, -4.5], [7.5, -4.6], [4.5, -3.5], [5.5, -4.5]], np.float32)
    traj2d = _descents_2d(starts2d, lr, steps, clip_norm)
    arrays = {
        "b": land.b,
        "loss": land.loss,
        "grad": land.grad,
        "b_unclipped": clip.b_unclipped,
        "b_clipped": clip.b_clipped,
        "loss_unclipped": clip.loss_unclipped,
        "loss_clipped": clip.loss_clipped,
        "surface": surface,
        "surface_w": ws,
        "surface_b": bs2d,
        "traj2d_unclipped": traj2d["unclipped"],
        "traj2d_clipped": traj2d["clipped"],
    }
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    fig = figure_cliff(arrays, wall=clip.wall, learning_rate=lr, clip_norm=clip_norm)
    _io.save_figure(fig, out / "cliff.png")
    _io.save_npz(arrays, out / "cliff.npz")
    return {
        "setting": {
            **CLIFF,
            "learning_rate": lr,
            "clip_norm": clip_norm,
            "descent_steps": steps,
            "starts": len(starts),
            "b_range": B_RANGE,
        },
        "wall_b": clip.wall,
        "max_abs_grad_on_grid": float(np.max(np.abs(np.asarray(land.grad)))),
        **stats,
    }


def _rnn_section(out: Path, size: dict) -> dict:
    width, steps, seeds, n_scales = size["rnn"]
    keys = jax.random.split(jax.random.key(2), seeds)
    scales = {
        "tanh": np.linspace(0.2, 2.5, n_scales),
        "sigmoid": np.linspace(0.8, 10.0, n_scales),
    }
    sweeps = {
        a: rnn_threshold_sweep(a, s, width=width, steps=steps, keys=keys) for a, s in scales.items()
    }
    arrays = {f"{a}/{k}": v for a, sw in sweeps.items() for k, v in sw.items()}
    fig = figure_rnn_thresholds(arrays, width=width, steps=steps)
    _io.save_figure(fig, out / "rnn_thresholds.png")
    _io.save_npz(arrays, out / "rnn_thresholds.npz")
    summary = {"width": width, "steps": steps, "seeds": seeds}
    for act, sw in sweeps.items():
        gamma = activations.get(act).gamma
        below = sw["lambda1"] < 1 / gamma
        summary[act] = {
            "inv_gamma": 1 / gamma,
            # Pascanu §3.1: λ₁ < 1/γ is sufficient for vanishing (every such run has λ_max < 0).
            "max_top_exponent_with_lambda1_below_inv_gamma": float(
                np.max(sw["top_exponent"][below])
            )
            if below.any()
            else None,
            # λ₁ > 1/γ is the proven necessary condition; ρ ≤ λ₁, so whether ρ < 1/γ also
            # excludes explosion is an empirical question, answered by this number.
            "max_top_exponent_with_rho_below_inv_gamma": float(
                np.max(sw["top_exponent"][sw["rho"] < 1 / gamma])
            ),
            "min_rho_with_positive_exponent": float(np.min(sw["rho"][sw["top_exponent"] > 0]))
            if (sw["top_exponent"] > 0).any()
            else None,
        }
    return summary


def _chaos_section(out: Path, size: dict) -> dict:
    width, steps, discard, n_gains = size["chaos"]
    gains = np.linspace(0.5, 3.0, n_gains)
    key = jax.random.key(3)
    lam = chaos_spectra(gains, width=width, steps=steps, discard=discard, key=key)
    w0 = init.gaussian(1.0)(jax.random.split(key)[0], (width, width), jnp.float32)
    log_rho0 = float(np.log(spectra.spectral_radius(w0)))
    arrays = {"gains": gains, "spectra": lam, "log_rho0": np.asarray(log_rho0)}
    _io.save_figure(figure_order_to_chaos(arrays, steps=steps), out / "order_to_chaos.png")
    _io.save_npz(arrays, out / "order_to_chaos.npz")
    top = lam[:, 0]
    # Linear interpolation of the first sign change of λ_max from − to +.
    idx = np.nonzero((top[:-1] < 0) & (top[1:] >= 0))[0]
    g_c = None
    if len(idx):
        i = idx[0]
        g_c = float(gains[i] - top[i] * (gains[i + 1] - gains[i]) / (top[i + 1] - top[i]))
    return {
        "width": width,
        "steps": steps,
        "gains": gains,
        "top_exponent": top,
        "critical_gain_estimate": g_c,
    }


def _newman_section(out: Path, size: dict) -> dict:
    n, steps = 8, size["newman_steps"]
    running, exact = newman_convergence(n, steps, jax.random.key(4))
    arrays = {"running": running, "exact": exact}
    _io.save_figure(figure_newman(arrays), out / "lyapunov_newman.png")
    _io.save_npz(arrays, out / "lyapunov_newman.npz")
    return {
        "n": n,
        "steps": steps,
        "estimate": running[-1],
        "newman": exact,
        "max_abs_error": float(np.max(np.abs(np.sort(running[-1])[::-1] - exact))),
    }


def run(out_dir, *, full: bool = False) -> dict:
    """Writes figures (a)–(e) and their numbers to ``out_dir/pascanu2013``; returns a summary."""
    out = Path(out_dir) / NAME
    size = SIZES[bool(full)]
    summary = {
        "bifurcation": _bifurcation_section(out, size),
        "cliff": _cliff_section(out, size),
        "rnn_thresholds": _rnn_section(out, size),
        "order_to_chaos": _chaos_section(out, size),
        "lyapunov_newman": _newman_section(out, size),
    }
    _io.save_json(summary, out / "summary.json")
    return _io.to_jsonable(summary)


def figures(out_dir) -> dict[str, Figure]:
    """Redraws every figure of :func:`run` from the numbers it saved in ``out_dir/pascanu2013``.

    Args:
      out_dir: the directory given to :func:`run`.

    Returns:
      ``{file stem: Figure}``, the stems of the PNG/PDF files :func:`run` wrote.
    """
    out = Path(out_dir) / NAME
    summary = _io.load_json(out / "summary.json")
    load = lambda name: _io.load_npz(out / f"{name}.npz")  # noqa: E731
    cliff, rnn = summary["cliff"], summary["rnn_thresholds"]
    return {
        "bifurcation": figure_bifurcation(load("bifurcation"), w=summary["bifurcation"]["w"]),
        "cliff": figure_cliff(
            load("cliff"),
            wall=cliff["wall_b"],
            learning_rate=cliff["setting"]["learning_rate"],
            clip_norm=cliff["setting"]["clip_norm"],
        ),
        "rnn_thresholds": figure_rnn_thresholds(
            load("rnn_thresholds"), width=rnn["width"], steps=rnn["steps"]
        ),
        "order_to_chaos": figure_order_to_chaos(
            load("order_to_chaos"), steps=summary["order_to_chaos"]["steps"]
        ),
        "lyapunov_newman": figure_newman(load("lyapunov_newman")),
    }
