"""What every figure function shares: the axes it draws into, its colours, and its finishing.

:func:`new_axes` / :func:`new_axes_grid` give a function its caller's axes or a new
:class:`~matplotlib.figure.Figure`; :func:`finish` titles and lays out only a figure the function
created; :func:`band` and :func:`theory_key` draw the package's one convention for measured
against predicted values (median line with a min–max band over seeds, theory dashed in the same
colour, one grey dashed legend entry for all the theory lines).
"""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["palette", "new_axes", "new_axes_grid", "finish", "band", "theory_key"]


def palette(n: int) -> list[tuple[float, float, float, float]]:
    """n distinguishable RGBA colours (tab10, repeating after 10)."""
    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def new_axes(ax: Axes | None = None, *, figsize: tuple[float, float] = (7.5, 4.5)):
    """The figure and axes to draw one panel into.

    Args:
      ax: a caller's axes, or None for a new :class:`~matplotlib.figure.Figure` of ``figsize``
        (inches) with one subplot.
      figsize: size of the new figure; ignored when ``ax`` is given.

    Returns:
      ``(fig, ax)``; ``fig`` is ``ax.figure`` when ``ax`` is given.

    Raises:
      TypeError: if ``ax`` is neither None nor a matplotlib Axes.
    """
    if ax is None:
        fig = Figure(figsize=figsize)
        return fig, fig.add_subplot()
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    return ax.figure, ax


def new_axes_grid(
    axes=None,
    *,
    nrows: int = 1,
    ncols: int = 1,
    figsize: tuple[float, float],
    **subplots_kw,
):
    """The figure and ``nrows × ncols`` axes to draw a multi-panel figure into.

    Args:
      axes: a caller's axes — a sequence (or array) of ``nrows · ncols`` matplotlib Axes of one
        figure, in row-major order (a bare Axes when one panel is drawn) — or None for a new
        :class:`~matplotlib.figure.Figure` of ``figsize`` (inches) with that grid of subplots.
      nrows, ncols: the panel grid.
      figsize: size of the new figure; ignored when ``axes`` is given.
      **subplots_kw: passed to :meth:`~matplotlib.figure.Figure.subplots` for a new figure
        (``sharex``, ``sharey``); a caller's axes keep their own sharing.

    Returns:
      ``(fig, axes)``: ``axes`` an object array of shape ``(nrows, ncols)``, flattened to 1-D
      when ``nrows`` or ``ncols`` is 1 (as :func:`matplotlib.pyplot.subplots` squeezes it).

    Raises:
      ValueError: if ``axes`` does not hold ``nrows · ncols`` Axes of one figure.
    """
    n = nrows * ncols
    if axes is None:
        fig = Figure(figsize=figsize)
        grid = fig.subplots(nrows, ncols, squeeze=False, **subplots_kw)
    else:
        flat = [axes] if isinstance(axes, Axes) else list(np.asarray(axes, dtype=object).ravel())
        if len(flat) != n or not all(isinstance(a, Axes) for a in flat):
            raise ValueError(
                f"axes must be a sequence of {n} matplotlib Axes ({nrows} row(s) × {ncols} "
                f"column(s), row-major), got {len(flat)} item(s) of types "
                f"{sorted({type(a).__name__ for a in flat})}"
            )
        fig = flat[0].figure
        if any(a.figure is not fig for a in flat):
            raise ValueError("axes must all belong to one figure")
        grid = np.empty((nrows, ncols), dtype=object)
        grid.ravel()[:] = flat
    return fig, (grid.ravel() if nrows == 1 or ncols == 1 else grid)


def finish(fig: Figure, created: bool, suptitle: str | None = None, **suptitle_kw) -> Figure:
    """Figure-level title and tight layout, only on a figure the calling function created.

    Both act on the whole figure, so with a caller's axes they are left to the caller.

    Args:
      fig: the figure drawn into.
      created: whether the drawing function created ``fig`` (it was given no axes).
      suptitle: the figure title, or None for none.
      **suptitle_kw: passed to :meth:`~matplotlib.figure.Figure.suptitle` (``fontsize``).

    Returns:
      ``fig``.
    """
    if created:
        if suptitle is not None:
            fig.suptitle(suptitle, **suptitle_kw)
        fig.tight_layout()
    return fig


def band(ax: Axes, x, ys, color, label, *, log10=False, ls=None, lw=1.8, alpha=0.2) -> None:
    """Median line with a min–max band over seeds (the band only with more than one seed).

    Args:
      ax: axes to draw into.
      x: array ``(K,)``.
      ys: array ``(seeds, K)``.
      color, label: of the line (the band has no legend entry).
      log10: draw log10 of ``ys`` (values clipped at the smallest positive float64).
      ls, lw: line style (None: matplotlib's default) and width.
      alpha: opacity of the band.
    """
    ys = np.asarray(ys)
    if log10:
        ys = np.log10(np.maximum(ys, np.finfo(np.float64).tiny))
    style = {} if ls is None else {"ls": ls}
    ax.plot(x, np.median(ys, axis=0), color=color, **style, lw=lw, label=label)
    if ys.shape[0] > 1:
        ax.fill_between(x, ys.min(0), ys.max(0), color=color, alpha=alpha, lw=0)


def theory_key(ax: Axes, label: str) -> None:
    """One grey dashed legend entry standing for every network's dashed theory line."""
    ax.plot([], [], color="gray", ls="--", label=label)
