"""Transformers at depth: rank collapse, uniform attention, Xiong et al.'s gradient-scale slopes
and sub-layer Jacobian spectra."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from gradflow.plots._base import band, finish, new_axes_grid, palette, theory_key

__all__ = [
    "token_collapse",
    "uniform_attention_growth",
    "gradient_scale_slopes",
    "sublayer_jacobian_spectra",
]


def _family_styles(labels):
    """Colour per architecture (the label before ", s="), dash-dot for the 1/√L-scaled twin."""
    families = list(dict.fromkeys(lab.split(", s=")[0] for lab in labels))
    colours = dict(zip(families, palette(len(families))))
    return {lab: (colours[lab.split(", s=")[0]], "-." if ", s=" in lab else "-") for lab in labels}


def token_collapse(
    cosine: Mapping[str, np.ndarray],
    relative: Mapping[str, np.ndarray],
    *,
    floor: float = 1e-7,
    title: str = "",
    axes=None,
) -> Figure:
    """Token cosine and relative rank-one residual vs block, one line per network.

    Panel (a): mean pairwise token cosine (1 = all tokens parallel). Panel (b): the relative
    residual ‖X − 1x̄ᵀ‖₁,∞/‖X‖₁,∞ on a log scale (0 = rank one, every token equal); values below
    ``floor`` (the arithmetic's resolution) are drawn at the floor. Median over seeds, min–max
    band; a network and its residual-scaled (s = 1/√L) twin share a colour, the twin dash-dotted.

    Args:
      cosine: label -> array ``(seeds, L + 1)`` (state after block l; l = 0 is the embedding).
      relative: label -> array ``(seeds, L + 1)``.
      floor: smallest relative residual drawn.
      title: figure title (drawn only on a figure this function creates).
      axes: 2 axes to draw panels (a) and (b) into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    styles = _family_styles(list(cosine))
    created = axes is None
    fig, axes = new_axes_grid(axes, nrows=1, ncols=2, figsize=(13, 4.8))
    for label, ys in cosine.items():
        c, ls = styles[label]
        ys = np.asarray(ys)
        x = np.arange(ys.shape[1])
        band(axes[0], x, ys, c, label, ls=ls, lw=1.6, alpha=0.12)
        r = np.log10(np.maximum(np.asarray(relative[label]), floor))
        band(axes[1], x, r, c, label, ls=ls, lw=1.6, alpha=0.12)
    axes[1].axhline(np.log10(floor), color="0.5", ls=":", lw=1.0, label=f"resolution ({floor:g})")
    axes[0].set_ylabel("mean pairwise token cosine")
    axes[0].set_title("(a) token cosine similarity", fontsize=10)
    axes[1].set_ylabel(r"$\log_{10}\ \|X - 1\bar{x}^\top\|_{1,\infty} / \|X\|_{1,\infty}$")
    axes[1].set_title("(b) relative residual from rank one (Dong et al. 2021)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("block l (0 = embedding)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower left", ncol=2)
    title = title or "Rank collapse with depth at initialisation"
    return finish(fig, created, title, fontsize=11)


def uniform_attention_growth(
    growth: Mapping[str, np.ndarray],
    theory: Mapping[str, np.ndarray],
    relative: Mapping[str, np.ndarray],
    *,
    bound: float | None = None,
    title: str = "",
    axes=None,
) -> Figure:
    """Growth of the token mean under uniform attention, measured against (1 + α²σ_v²)^l.

    Panel (a): the Monte Carlo mean of ‖x̄_l‖²/‖x̄_0‖² with a ±2 standard-error band, theory
    dashed, and ``bound`` (e^{σ_v²}, the limit for α = 1/√L) dotted. Panel (b): the relative
    residual ‖X_l − 1x̄_lᵀ‖₁,∞/‖X_l‖₁,∞ (median, min–max band): the centred part is fixed, so it
    falls as the mean grows.

    Args:
      growth: label -> array ``(seeds, L + 1)`` of ‖x̄_l‖²/‖x̄_0‖².
      theory: label -> array ``(L + 1,)``.
      relative: label -> array ``(seeds, L + 1)``.
      bound: a horizontal reference level (e.g. e^{σ_v²}), or None.
      title: figure title (drawn only on a figure this function creates).
      axes: 2 axes to draw panels (a) and (b) into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    created = axes is None
    fig, axes = new_axes_grid(axes, nrows=1, ncols=2, figsize=(12, 4.6))
    for (label, g), c in zip(growth.items(), palette(len(growth))):
        g = np.asarray(g, np.float64)
        x = np.arange(g.shape[1])
        mean = g.mean(0)
        se = g.std(0, ddof=1) / np.sqrt(g.shape[0])
        axes[0].plot(x, np.log10(mean), color=c, lw=1.8, label=f"{label}: measured mean")
        lo = np.log10(np.maximum(mean - 2 * se, np.finfo(np.float64).tiny))
        axes[0].fill_between(x, lo, np.log10(mean + 2 * se), color=c, alpha=0.2, lw=0)
        if label in theory:
            axes[0].plot(x, np.log10(theory[label]), color=c, ls="--", lw=1.2)
        band(axes[1], x, relative[label], c, label, log10=True)
    theory_key(axes[0], r"theory $(1+\alpha^2\sigma_v^2)^l$")
    if bound is not None:
        axes[0].axhline(np.log10(bound), color="0.4", ls=":", lw=1.0, label=r"$e^{\sigma_v^2}$")
    axes[0].set_ylabel(r"$\log_{10}\ \mathrm{E}\,\|\bar{x}_l\|^2 / \|\bar{x}_0\|^2$")
    axes[0].set_title("(a) norm of the token mean (±2 s.e.)", fontsize=10)
    axes[1].set_ylabel(r"$\log_{10}\ \|X_l - 1\bar{x}_l^\top\|_{1,\infty}/\|X_l\|_{1,\infty}$")
    axes[1].set_title("(b) relative residual: collapse onto the mean", fontsize=10)
    for ax in axes:
        ax.set_xlabel("layer l")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return finish(fig, created, title or "Uniform attention", fontsize=11)


def gradient_scale_slopes(
    depths: np.ndarray,
    norms: Mapping[str, np.ndarray],
    slopes: Mapping[str, tuple[float, float, float]],
    theory: Mapping[str, float],
    sq_norms: np.ndarray | None = None,
    *,
    title: str = "",
    axes=None,
) -> Figure:
    """‖∂L/∂W^{2,L}‖_F vs depth L on log-log axes with fitted and theoretical slopes.

    Panel (a): every seed (small dots), the mean of log10 over seeds (large markers), the
    least-squares line (solid, slope and 95 % CI in the legend) and the theoretical slope (dashed,
    through the fitted line's centre). Panel (b), if ``sq_norms`` is given: the pre-LN residual
    stream E‖x_l‖²/d vs l (mean, min–max band) and Xiong et al.'s band [m_0 + l/2, m_0 + 3l/2]
    (dashed), m_0 the measured value at l = 0.

    Args:
      depths: array ``(D,)``.
      norms: label -> array ``(seeds, D)``.
      slopes: label -> (slope, CI low, CI high) of log norm vs log depth.
      theory: label -> theoretical slope.
      sq_norms: array ``(seeds, L + 1)`` or None.
      title: figure title (drawn only on a figure this function creates).
      axes: 2 axes to draw panels (a) and (b) into, 1 without ``sq_norms`` (default: a new
        figure).

    Returns:
      The Figure drawn into.
    """
    two = sq_norms is not None
    created = axes is None
    fig, axes = new_axes_grid(
        axes, nrows=1, ncols=2 if two else 1, figsize=(12.5 if two else 7, 4.6)
    )
    ax = axes[0]
    lx = np.log10(np.asarray(depths, np.float64))
    for (label, ys), c in zip(norms.items(), palette(len(norms))):
        ly = np.log10(np.asarray(ys, np.float64))
        ax.scatter(np.broadcast_to(lx, ly.shape), ly, color=c, s=6, alpha=0.3, lw=0)
        ax.plot(lx, ly.mean(0), "o", color=c, ms=6)
        s, lo, hi = slopes[label]
        # A log-log slope is the same in any base; the lines pass through the centre of mass.
        cx, cy = lx.mean(), ly.mean()
        fit = f"{label}: slope {s:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        ax.plot(lx, cy + s * (lx - cx), color=c, lw=1.6, label=fit)
        if label in theory:
            t = theory[label]
            ax.plot(lx, cy + t * (lx - cx), color=c, ls="--", lw=1.2, label=f"theory {t:+g}")
    ax.set_xticks(lx, [str(int(d)) for d in depths])
    ax.set_xlabel("depth L (log scale)")
    ax.set_ylabel(r"$\log_{10}\ \|\partial L/\partial W^{2,L}\|_F$")
    ax.set_title("(a) last-layer FFN gradient vs depth", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if two:
        ax = axes[1]
        q = np.asarray(sq_norms, np.float64)
        x = np.arange(q.shape[1])
        c = palette(1)[0]
        ax.plot(x, q.mean(0), color=c, lw=1.8, label=r"pre-LN: measured $\|x_l\|^2/d$ (mean)")
        if q.shape[0] > 1:
            ax.fill_between(x, q.min(0), q.max(0), color=c, alpha=0.2, lw=0)
        m0 = q[:, 0].mean()
        ax.plot(x, m0 + x / 2, color="0.3", ls="--", lw=1.2, label=r"Xiong et al.: $m_0 + l/2$")
        ax.plot(x, m0 + 1.5 * x, color="0.3", ls="-.", lw=1.2, label=r"$m_0 + 3l/2$")
        ax.set_xlabel("block l")
        ax.set_ylabel(r"$\mathrm{E}\,\|x_l\|^2 / d$")
        ax.set_title("(b) pre-LN residual stream grows linearly", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    title = title or "Gradient scale vs depth, pre-LN and post-LN"
    return finish(fig, created, title, fontsize=11)


def sublayer_jacobian_spectra(
    singular_values: Mapping[str, np.ndarray],
    kinds,
    log10_backward: Mapping[str, np.ndarray],
    *,
    backward_ylabel: str = r"$\log_{10}\,\|\partial X_K/\partial X_k\|_F$",
    title: str = "",
    axes=None,
) -> Figure:
    """Per-step Jacobian singular values, attention vs MLP, and ‖∂X_K/∂X_k‖ vs k.

    Panel (a): for every chain step k, log10 of the largest and the median singular value of
    ∂X_{k+1}/∂X_k (median over seeds); circles for attention steps, squares for MLP steps,
    filled for σ_max, open for the median. Panel (b): log10 ‖∂X_K/∂X_k‖ (median, min–max band
    over seeds), or whichever log-norm ``log10_backward`` holds, named by ``backward_ylabel``.

    Args:
      singular_values: label -> array ``(seeds, K, n)``, descending along the last axis.
      kinds: ``(K,)`` strings "attention" / "mlp".
      log10_backward: label -> array ``(seeds, K)``.
      backward_ylabel: y label of panel (b).
      title: figure title (drawn only on a figure this function creates).
      axes: 2 axes to draw panels (a) and (b) into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    created = axes is None
    fig, axes = new_axes_grid(axes, nrows=1, ncols=2, figsize=(13, 4.8))
    kinds = np.asarray(kinds)
    masks = ((kinds == "attention", "o", "attention"), (kinds == "mlp", "s", "MLP"))
    for (label, sv), c in zip(singular_values.items(), palette(len(singular_values))):
        sv = np.asarray(sv, np.float64)
        k = np.arange(sv.shape[1])
        top = np.median(np.log10(sv[..., 0]), axis=0)
        mid = np.median(np.log10(np.median(sv, axis=-1)), axis=0)
        for mask, marker, kind in masks:
            lab = f"{label}, {kind}"
            top_label, mid_label = rf"{lab}: $\sigma_{{max}}$", rf"{lab}: median $\sigma$"
            axes[0].plot(k[mask], top[mask], marker, color=c, ms=5, label=top_label)
            axes[0].plot(k[mask], mid[mask], marker, color=c, ms=5, mfc="none", label=mid_label)
        lb = np.asarray(log10_backward[label], np.float64)
        band(axes[1], np.arange(lb.shape[1]), lb, c, label)
    axes[0].axhline(0.0, color="k", lw=0.8, ls=":")
    axes[0].set_xlabel("chain step k (even: attention, odd: MLP)")
    axes[0].set_ylabel(r"$\log_{10}\,\sigma$ of $\partial X_{k+1}/\partial X_k$")
    axes[0].set_title("(a) sub-layer Jacobian singular values", fontsize=10)
    axes[0].legend(fontsize=7, ncol=2)
    axes[1].set_xlabel("chain step k")
    axes[1].set_ylabel(backward_ylabel)
    axes[1].set_title("(b) backward products to the last state", fontsize=10)
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    title = title or "Jacobians of attention and MLP sub-layers"
    return finish(fig, created, title, fontsize=11)
