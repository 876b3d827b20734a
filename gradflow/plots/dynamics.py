"""Recurrent dynamics and gradients: Doya's one-neuron bifurcations, Pascanu's cliff and gradient
clipping, RNN stability thresholds and Lyapunov spectra (Pascanu, Mikolov & Bengio 2013,
arXiv:1211.5063; Doya 1993)."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradflow.plots._base import finish, new_axes, new_axes_grid, palette

__all__ = [
    "doya_bifurcation",
    "cliff_clipping",
    "rnn_stability_thresholds",
    "lyapunov_order_to_chaos",
    "lyapunov_convergence",
]


def doya_bifurcation(
    b,
    fixed_x,
    fixed_stable,
    saddle_b,
    saddle_x,
    hyst_x_up,
    hyst_x_down,
    dx_db,
    dx_dx0,
    w_grid,
    fold_b,
    *,
    w: float,
    steps: int,
    x0: float,
    axes=None,
) -> Figure:
    """Bifurcation diagram of x ← w σ(x) + b with hysteresis, the cusp, and the gradients.

    Panel (a): fixed points against b (stable solid, unstable dashed), the saddle-nodes and a
    quasi-static sweep of b up and down. Panel (b): the bifurcation set in the (b, w) plane.
    Panel (c): |∂x_T/∂b| and |∂x_T/∂x₀| against b, with the folds and the separatrix marked.

    Args:
      b: array ``(M,)``, ascending.
      fixed_x, fixed_stable: arrays ``(M, 3)``, the fixed points (NaN where fewer) and their
        stability (:func:`gradflow.dynamics.doya_fixed_points`).
      saddle_b, saddle_x: arrays ``(2,)``, the saddle-nodes.
      hyst_x_up, hyst_x_down: arrays ``(M,)``, the states of the sweep with b ascending and
        with b descending.
      dx_db, dx_dx0: arrays ``(M,)``, ∂x_T/∂b and ∂x_T/∂x₀.
      w_grid: array ``(W,)``; fold_b: array ``(W, 2)``, the saddle-node b at each w.
      w: the self-weight of the slice.
      steps, x0: T and x₀ of the gradients (for the title; x₀ also places the separatrix
        b = x₀ − w σ(x₀)).
      axes: 3 axes to draw panels (a)–(c) into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    bs = np.asarray(b)
    b_sep = x0 - w / (1 + np.exp(-x0))  # x₀ is a fixed point there: the separatrix
    created = axes is None
    fig, axes = new_axes_grid(axes, nrows=1, ncols=3, figsize=(16, 4.6))
    ax = axes[0]
    x, stable = np.asarray(fixed_x), np.asarray(fixed_stable)
    for slot in range(3):
        ax.plot(bs, np.where(stable[:, slot], x[:, slot], np.nan), "k-", lw=2)
        ax.plot(bs, np.where(~stable[:, slot], x[:, slot], np.nan), "r--", lw=1.5)
    ax.plot([], [], "k-", lw=2, label="stable fixed point")
    ax.plot([], [], "r--", lw=1.5, label="unstable fixed point")
    sl = slice(None, None, max(1, len(bs) // 60))
    x_up, x_down = np.asarray(hyst_x_up), np.asarray(hyst_x_down)
    ax.plot(bs[sl], x_up[sl], ">", color="tab:blue", ms=4, label="sweep b up")
    ax.plot(bs[::-1][sl], x_down[sl], "<", color="tab:orange", ms=4, label="sweep b down")
    saddle_b = np.asarray(saddle_b)
    ax.plot(saddle_b, saddle_x, "o", mfc="white", mec="k", ms=8, label="saddle-node")
    ax.set_xlabel("bias b")
    ax.set_ylabel("state x")
    ax.set_title(f"x ← {w:g}·σ(x) + b: fixed points and hysteresis")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)

    ax = axes[1]
    w_grid = np.asarray(w_grid)
    lo, hi = np.asarray(fold_b)[:, 0], np.asarray(fold_b)[:, 1]
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
    ax.semilogy(bs, np.maximum(np.abs(dx_db), tiny), label=r"$|\partial x_T/\partial b|$")
    ax.semilogy(bs, np.maximum(np.abs(dx_dx0), tiny), label=r"$|\partial x_T/\partial x_0|$")
    for i, sb in enumerate(saddle_b):
        ax.axvline(sb, color="k", ls=":", lw=1, label="saddle-nodes" if i == 0 else None)
    ax.axvline(b_sep, color="r", ls="--", lw=1, label="x₀ on the separatrix")
    ax.set_xlabel("bias b")
    ax.set_ylabel("derivative of $x_T$ (log scale)")
    ax.set_title(f"T = {steps} steps from x₀ = {x0:g}")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3, which="both")
    return finish(fig, created)


def cliff_clipping(
    b,
    loss,
    grad,
    b_unclipped,
    b_clipped,
    surface,
    surface_w,
    surface_b,
    paths_unclipped,
    paths_clipped,
    *,
    wall: float,
    stats: Mapping[str, Mapping[str, float]],
    learning_rate: float,
    clip_norm: float,
    cliff: Mapping[str, float],
    b_range: tuple[float, float],
    axes=None,
) -> Figure:
    """The cliff loss L(b), and descent on it with and without gradient-norm clipping.

    Panel (a): L(b) with |dL/db| on a log-scaled twin axis and the wall marked. Panel (b): b
    along the middle start's descent, unclipped and clipped, with the statistics over all
    starts in a box. Panel (c): the loss surface over (w, b) with 2-D descent paths.

    Args:
      b, loss, grad: arrays ``(G,)``, the landscape L(b) and dL/db on a grid of b.
      b_unclipped, b_clipped: arrays ``(R, S + 1)``, b along each 1-D descent.
      surface: array ``(Wn, Bn)``, the loss over ``surface_w`` ``(Wn,)`` × ``surface_b``
        ``(Bn,)``.
      paths_unclipped, paths_clipped: arrays ``(P, S + 1, 2)``, (w, b) along each 2-D descent.
      wall: b of the wall (the steepest point).
      stats: per method (``"unclipped"``, ``"clipped"``) the fractions of runs that leave
        ``b_range`` (``fraction_left_range``) and that cross the wall
        (``fraction_crossed_wall``) and the largest step (``max_step``).
      learning_rate, clip_norm: of the descents (for the labels).
      cliff: the model's ``w``, ``x0`` and ``steps`` (for the title).
      b_range: the window of b drawn shaded in panel (b).
      axes: 3 axes to draw panels (a)–(c) into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    lr, surface = learning_rate, np.asarray(surface)
    ws, bs2d = np.asarray(surface_w), np.asarray(surface_b)
    traj2d = {"unclipped": paths_unclipped, "clipped": paths_clipped}
    created = axes is None
    fig, axes = new_axes_grid(axes, nrows=1, ncols=3, figsize=(17, 4.8))
    ax = axes[0]
    ax.plot(b, loss, "k-", lw=1.5, label="L(b)")
    ax.set_xlabel("bias b")
    ax.set_ylabel(r"loss $(x_T - \mathrm{target})^2$")
    twin = ax.twinx()
    twin.semilogy(b, np.abs(grad), color="tab:red", lw=1, alpha=0.7)
    twin.set_ylabel("|dL/db| (log scale)", color="tab:red")
    ax.axvline(wall, color="tab:red", ls=":", lw=1, label=f"wall b ≈ {wall:.3f}")
    ax.set_title(f"The cliff: w = {cliff['w']:g}, x₀ = {cliff['x0']:g}, T = {cliff['steps']}")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)

    ax = axes[1]
    r = b_unclipped.shape[0] // 2
    it = np.arange(b_unclipped.shape[1])
    ax.axhspan(*b_range, color="gray", alpha=0.12, label="plotted window of b")
    ax.axhline(wall, color="tab:red", ls=":", lw=1, label="wall")
    ax.plot(it, b_unclipped[r], "-", color="tab:orange", lw=1.2, label="SGD")
    ax.plot(
        it,
        b_clipped[r],
        "-",
        color="tab:blue",
        lw=1.8,
        label=f"SGD + clip_by_global_norm({clip_norm:g})",
    )
    u, c = stats["unclipped"], stats["clipped"]
    n = b_unclipped.shape[0]
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
    ax.set_title(f"Same start (b₀ = {b_unclipped[r, 0]:.2f}), same learning rate")
    top = max(float(np.nanmax(b_unclipped[r])), b_range[1])
    ax.set_ylim(b_range[0] - 2.5, top + 0.35 * (top - b_range[0]))
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
    return finish(fig, created)


def rnn_stability_thresholds(
    sweeps: Mapping[str, Mapping[str, np.ndarray]],
    gammas: Mapping[str, float],
    *,
    width: int,
    steps: int,
    axes=None,
) -> Figure:
    """‖∂x_T/∂x_0‖ and the top Lyapunov exponent against ρ and λ₁ of W_rec, 1/γ marked.

    One row per activation: Pascanu et al.'s §3.1 conditions compare λ₁ (the largest singular
    value) with 1/γ; the spectral radius ρ ≤ λ₁ is drawn on the same axis.

    Args:
      sweeps: activation -> ``{"rho", "lambda1", "log_norm", "top_exponent"}``, arrays
        ``(scales, seeds)``; ``log_norm`` is the natural log of ‖∂x_T/∂x_0‖₂.
      gammas: activation -> γ = max φ'.
      width, steps: of the RNNs (for the titles).
      axes: ``len(sweeps) × 2`` axes, row-major (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    created = axes is None
    fig, axes = new_axes_grid(axes, nrows=len(sweeps), ncols=2, figsize=(12, 4.25 * len(sweeps)))
    axes = np.reshape(axes, (len(sweeps), 2))
    for row, (act, sw) in enumerate(sweeps.items()):
        gamma = gammas[act]
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
    return finish(fig, created)


def lyapunov_order_to_chaos(gains, spectra, log_rho0: float, *, steps: int, axes=None) -> Figure:
    """Lyapunov spectra of x ← W tanh(x) across the order-to-chaos transition.

    Panel (a): each gain's spectrum λ_i against i/n. Panel (b): λ_max and the fraction of
    positive exponents against the gain, with log ρ(gW₀), the exact exponent while the origin
    is stable, dashed.

    Args:
      gains: array ``(G,)``.
      spectra: array ``(G, n)``, each spectrum descending.
      log_rho0: log ρ(W₀) of the unscaled weights.
      steps: length of the chains (for the title).
      axes: 2 axes to draw panels (a) and (b) into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    gains, spectra_ = np.asarray(gains), np.asarray(spectra)
    log_rho0, width = float(log_rho0), spectra_.shape[1]
    created = axes is None
    fig, axes = new_axes_grid(axes, nrows=1, ncols=2, figsize=(13, 4.8))
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
    return finish(fig, created)


def lyapunov_convergence(running, exact, *, ax: Axes | None = None) -> Figure:
    """Finite-time QR exponents of products of n × n N(0, 1/n) matrices against Newman's values.

    One colour per exponent: the running estimate (log-scaled steps) and its limit, dashed.

    Args:
      running: array ``(K, n)``, the estimates after each step
        (:func:`gradflow.lyapunov.finite_time_spectrum`'s ``running``).
      exact: array ``(n,)``, Newman's closed form
        (:func:`gradflow.theory.newman_lyapunov_exponents`).
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    running, exact = np.asarray(running), np.asarray(exact)
    created = ax is None
    fig, ax = new_axes(ax, figsize=(7.5, 4.6))
    t = np.arange(1, running.shape[0] + 1)
    for i, c in enumerate(palette(running.shape[1])):
        ax.semilogx(t, running[:, i], color=c, lw=1.2)
        ax.axhline(exact[i], color=c, ls="--", lw=0.8)
    ax.plot([], [], "k-", label="finite-time QR estimate")
    ax.plot([], [], "k--", label="Newman 1986 closed form")
    ax.set_xlabel("steps K")
    ax.set_ylabel(r"$\lambda_i$ after K steps")
    ax.set_title(f"Products of {running.shape[1]}×{running.shape[1]} Gaussian matrices, N(0, 1/n)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return finish(fig, created)
