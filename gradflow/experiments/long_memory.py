"""Pascanu, Mikolov & Bengio 2013's long-term-dependency results: success rate against sequence
length for SGD, SGD-C and SGD-CR.

Pascanu et al. ("On the difficulty of training recurrent neural networks", arXiv:1211.5063,
§4.1, Fig. 7) train a 50-unit tanh RNN with minibatch SGD ("SGD"), SGD with gradient-norm
clipping ("SGD-C") and SGD with clipping and their regulariser Ω ("SGD-CR") on the long-lag
problems of Hochreiter & Schmidhuber 1997 and Martens & Sutskever 2011: temporal order, adding,
multiplication, 3-bit temporal order, random permutation and noiseless memorisation. Their
claims: without Ω neither SGD nor SGD-C solves temporal order beyond a few tens of steps; SGD-CR
solves it in 5 of 5 runs up to T = 200, and the other tasks too (random permutation in 2 of 5).

Success is the paper's: fewer than 1 % of freshly generated test sequences misclassified
(:func:`gradflow.tasks.pascanu_criterion`: regression sequences count as wrong when their squared
error exceeds 0.04 on a [0, 1] target); a run whose loss or gradient became non-finite counts as a
failure. The success rate over seeds comes with a Wilson 95 % interval
(:func:`gradflow.tasks.wilson_interval`).

Every (length, method, seed) run of one task is one ``vmap``-ed, compiled program (the quick
mode pads the shorter lengths at the start, where the state is frozen, see
:func:`gradflow.tasks.masked_chain`); the full mode compiles one program per (task, length), and
saves each task's records as soon as its lengths are done.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from gradflow import _checks, init, models, plots, progress, tasks, train
from gradflow._io import atomic_write
from gradflow.chain import final_state
from gradflow.experiments import _io
from gradflow.experiments._compile import Pending, compile_pool
from gradflow.experiments.mitigations.tables import to_csv

__all__ = [
    "NAME",
    "DESCRIPTION",
    "METHODS",
    "TASK_NAMES",
    "Settings",
    "QUICK",
    "FULL",
    "check_settings",
    "train_runs",
    "success",
    "success_table",
    "markdown_table",
    "run",
    "figure_success",
    "figures",
]

NAME = "long_memory"
DESCRIPTION = (
    "Pascanu et al. 2013 Fig. 7 / §4.1.2: success rate vs length of a tanh RNN trained by SGD, "
    "SGD-C and SGD-CR on six long-lag tasks, Wilson 95 % intervals"
)

# Pascanu et al.'s three methods: (clipping?, regulariser?).
METHODS = ("SGD", "SGD-C", "SGD-CR")
TASK_NAMES = (
    "temporal_order",
    "adding",
    "multiplication",
    "temporal_order_3",
    "random_permutation",
    "noiseless_memorization",
)


class Settings(NamedTuple):
    """The sizes of one run (see :data:`QUICK` and :data:`FULL`).

    Attributes:
      tasks: names in :data:`gradflow.tasks.TASKS`.
      lengths: sequence lengths T.
      seeds: runs per (task, method, length); every method sees the same initial parameters,
        training batches and test set for a seed (paired comparison).
      width: hidden units (50 in the paper).
      batch: training minibatch (20 in the paper).
      steps: SGD updates per run (the paper allows up to 5·10⁶, stopping at success).
      learning_rate: SGD step (0.01 in the paper, no momentum).
      momentum: None for plain SGD.
      clip_norm: SGD-C/SGD-CR rescale the gradient to this global norm (1 in the paper).
      alpha: weight of Ω in SGD-CR (4 in the paper's temporal-order runs). gradflow's Ω is the
        mean over steps and examples, as the paper's code normalises it.
      radius: spectral radius of the orthogonal initial W_rec (the paper's "smart tanh" has a
        sparse Gaussian W_rec scaled to 0.95).
      input_std: standard deviation of the initial input weights (0.01 in "smart tanh").
      n_test: fresh test sequences per run (10000 in the paper).
      test_chunk: test sequences evaluated at once (memory: runs × chunk × T × inputs floats).
      share_lengths: one program per task, shorter lengths padded (True), or one per length.
    """

    tasks: tuple = TASK_NAMES
    lengths: tuple = (20, 50)
    seeds: int = 8
    width: int = 50
    batch: int = 20
    steps: int = 1000
    learning_rate: float = 0.01
    momentum: float | None = None
    clip_norm: float = 1.0
    alpha: float = 4.0
    radius: float = 0.95
    input_std: float = 0.01
    n_test: int = 10000
    test_chunk: int = 500
    share_lengths: bool = False


# Quick (CPU, part of `gradflow figures`): the two tasks that a 32-unit net learns at T = 20
# within 300 steps, at a learning rate 10× the paper's; T = 20 and 30 (measured: there plain
# SGD fails where clipping succeeds; at T = 40 every method fails in 300 steps).
QUICK = Settings(
    tasks=("temporal_order", "noiseless_memorization"),
    lengths=(20, 30),
    seeds=8,
    width=32,
    steps=300,
    learning_rate=0.1,
    n_test=1000,
    test_chunk=500,
    share_lengths=True,
)
# Full: all six tasks at the paper's lengths, sizes and criterion (50 units, batch 20, clipping
# at 1, α = 4, 10000 test sequences). The number of updates is what 2 CPU cores allow in
# about 35 minutes (the paper allows up to 5·10⁶), hence the quick mode's learning rate.
# Timed cell (T = 200, temporal order, 24 runs): compile 16 CPU-s, 10000-sequence test set
# ~26 CPU-s, ~0.29 CPU-s per update; 24 cells ≈ 850 CPU-s fixed + 4.6 CPU-s per update.
FULL = Settings(
    tasks=TASK_NAMES,
    lengths=(50, 100, 150, 200),
    seeds=8,
    width=50,
    steps=600,
    learning_rate=0.1,
    n_test=10000,
    test_chunk=250,
    share_lengths=False,
)


def check_settings(s: Settings) -> Settings:
    """``s`` validated (one ValueError/TypeError naming the field), with tuples normalised.

    Raises:
      TypeError: ``s`` is not a :class:`Settings`, or a field has the wrong type.
      ValueError: an unknown task, a length too short for a task, a non-positive size or rate,
        ``n_test`` not a multiple of ``test_chunk``.
    """
    if not isinstance(s, Settings):
        raise TypeError(f"settings must be a long_memory.Settings, got {type(s).__name__}")
    names = tuple(s.tasks) if not isinstance(s.tasks, str) else (s.tasks,)
    if not names:
        raise ValueError("tasks must name at least one task")
    for name in names:
        if name not in tasks.TASKS:
            raise ValueError(f"unknown task {name!r} in tasks; expected some of {TASK_NAMES}")
    lengths = tuple(_checks.positive_int("lengths", T) for T in np.atleast_1d(s.lengths))
    if not lengths or len(set(lengths)) != len(lengths):
        raise ValueError(f"lengths must be distinct and non-empty, got {s.lengths!r}")
    for name in names:
        # every generator accepts any T >= 10 (temporal order's windows need 10 steps)
        if min(lengths) < 10:
            raise ValueError(f"lengths must be >= 10 (task {name!r}), got {min(lengths)}")
    for field in ("seeds", "width", "batch", "steps", "n_test", "test_chunk"):
        _checks.positive_int(field, getattr(s, field))
    if s.n_test % s.test_chunk:
        raise ValueError(f"n_test ({s.n_test}) must be a multiple of test_chunk ({s.test_chunk})")
    _checks.as_float("learning_rate", s.learning_rate, minimum=0.0, strict=True)
    _checks.as_float("clip_norm", s.clip_norm, minimum=0.0, strict=True)
    _checks.as_float("alpha", s.alpha, minimum=0.0)
    _checks.as_float("radius", s.radius, minimum=0.0, strict=True)
    _checks.as_float("input_std", s.input_std, minimum=0.0, strict=True)
    if s.momentum is not None:
        _checks.as_float("momentum", s.momentum, minimum=0.0)
        if not s.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1) or None, got {s.momentum}")
    if not isinstance(s.share_lengths, bool):
        raise TypeError(f"share_lengths must be a bool, got {s.share_lengths!r}")
    return s._replace(tasks=names, lengths=lengths)


# --------------------------------------------------------------------------------------------
# measurement


def _model(s: Settings, task: tasks.SequenceTask) -> models.RNN:
    # gaussian(σ) draws N(0, σ²/fan_in): σ = std·√d gives the paper's N(0, std²) input weights
    return models.RNN(
        width=s.width,
        activation="tanh",
        out_features=task.out_features,
        recurrent_init=init.orthogonal(s.radius),
        input_init=init.gaussian(s.input_std * math.sqrt(task.in_features)),
    )


class _Run(NamedTuple):
    """One vmapped program's instances: per run its length, method and seed."""

    lengths: tuple
    methods: tuple
    seeds: tuple


def train_runs(s: Settings, name: str, lengths: Sequence[int]):
    """Every (length, method, seed) run of task ``name`` at ``lengths`` as one vmapped program.

    Args:
      s: checked :class:`Settings`.
      name: a task of :data:`gradflow.tasks.TASKS`.
      lengths: the lengths of this program (padded at the start to the longest).

    Returns:
      ``(fn, args, runs)``: ``fn(*args)`` returns per run ``(test_error, diverged,
      divergence_step, final_loss)``, arrays of shape ``(R,)`` (``final_loss``: the training
      loss, with α Ω, of the last step; NaN after a divergence); ``runs`` (:class:`_Run`) says
      which run each entry is.
    """
    task = tasks.pascanu_criterion(tasks.get(name))
    t_max = max(lengths)
    model = _model(s, task)
    final_loss = train.pascanu.final_state_loss(model, task.loss)
    n_chunks = s.n_test // s.test_chunk

    def forward(params, u, start):
        chain = tasks.masked_chain(model.chain(params, u), tasks.active_steps(t_max, start))
        return model.readout(params, final_state(chain)), chain

    def one(seed, start, clip, alpha):
        # Everything random derives from (seed, T) inside the program (no eager op, each of
        # which would compile on its own): one initialisation per seed, and training batches
        # and test set per (seed, T), shared by the three methods (a paired comparison).
        # threefry keys, not "rbg" (which compiles ~5 s faster on a CPU): rbg draws differ
        # under vmap with the batch's composition, which would unpair the methods
        k_seed = jax.random.fold_in(jax.random.key(17), seed)
        k_train, k_test = jax.random.split(jax.random.fold_in(k_seed, t_max - start))
        params = model.init(k_seed, task.generate(k_seed, 2, t_max)[0])
        # Ω is the mean over all t_max steps, of which the padding ones add exactly 0: rescaled
        # to the mean over the run's own T steps.
        steps_ratio = t_max / (t_max - start).astype(jnp.float32)

        def loss(p, k):
            u, y = task.generate(k, s.batch, t_max, start=start)
            out, chain = forward(p, u, start)
            omega = train.pascanu_regularizer(chain, lambda h: final_loss(p, h, y))
            return task.loss(out, y) + alpha * steps_ratio * omega

        opt = train.sgd(s.learning_rate, momentum=s.momentum, clip_norm=clip)
        fit = train.make_fit(loss, opt, monitor_every=s.steps)
        res = fit(params, jax.random.split(k_train, s.steps))

        def chunk_error(c):
            u, y = task.generate(jax.random.fold_in(k_test, c), s.test_chunk, t_max, start=start)
            return task.error(forward(res.params, u, start)[0], y)

        # equal chunks: the mean of the chunks' error rates is the error rate of all n_test
        error = jnp.mean(jax.lax.map(chunk_error, jnp.arange(n_chunks)))
        return error, res.divergence.diverged, res.divergence.step, res.history.loss[-1]

    clips = {"SGD": math.inf, "SGD-C": s.clip_norm, "SGD-CR": s.clip_norm}
    alphas = {"SGD": 0.0, "SGD-C": 0.0, "SGD-CR": s.alpha}
    inst = [(T, m, seed) for T in lengths for m in METHODS for seed in range(s.seeds)]
    args = (
        np.array([seed for _, _, seed in inst], np.int32),
        np.array([t_max - T for T, _, _ in inst], np.int32),
        np.array([clips[m] for _, m, _ in inst], np.float32),
        np.array([alphas[m] for _, m, _ in inst], np.float32),
    )
    runs = _Run(*zip(*inst)) if inst else _Run((), (), ())
    return jax.vmap(one), args, runs


def success(test_error, diverged) -> np.ndarray:
    """The paper's criterion per run: test error rate below 1 % (fewer than 1 in 100 test
    sequences misclassified) and no divergence; a NaN error is a failure.

    Args:
      test_error: array ``(R,)`` of test error rates.
      diverged: array ``(R,)`` of bools.

    Returns:
      Bool array ``(R,)``.
    """
    err = np.asarray(test_error, np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(err) & (err < 0.01) & ~np.asarray(diverged, bool)


def _records(name: str, runs: _Run, out) -> list[dict]:
    errors, diverged, step, final_loss = (np.asarray(a) for a in out)
    ok = success(errors, diverged)
    return [
        {
            "task": name,
            "length": int(T),
            "method": m,
            "seed": int(seed),
            "test_error": float(errors[i]),
            "final_loss": float(final_loss[i]),
            "diverged": bool(diverged[i]),
            "divergence_step": int(step[i]),
            "success": bool(ok[i]),
        }
        for i, (T, m, seed) in enumerate(zip(*runs))
    ]


# --------------------------------------------------------------------------------------------
# tables


def success_table(records: Sequence[Mapping]) -> list[dict]:
    """One row per (task, method, length): successes, rate, Wilson 95 % interval, median error.

    Args:
      records: per run, dicts with ``task``, ``method``, ``length``, ``success``, ``test_error``
        and ``diverged`` (as :func:`run` saves them).

    Returns:
      Rows in the order (task, method, length) first appear.
    """
    groups: dict[tuple, list] = {}
    for r in records:
        groups.setdefault((r["task"], r["method"], r["length"]), []).append(r)
    rows = []
    for (name, method, T), rs in groups.items():
        k = sum(bool(r["success"]) for r in rs)
        rate, lo, hi = tasks.wilson_interval(k, len(rs))
        rows.append(
            {
                "task": name,
                "method": method,
                "length": int(T),
                "seeds": len(rs),
                "successes": k,
                "success_rate": float(rate),
                "wilson_low": float(lo),
                "wilson_high": float(hi),
                "median_test_error": float(np.median([r["test_error"] for r in rs])),
                "diverged": sum(bool(r["diverged"]) for r in rs),
            }
        )
    return rows


def markdown_table(rows: Sequence[Mapping]) -> str:
    """The rows of :func:`success_table` as Markdown: one line per (task, method), one column
    per length, cells ``k/n [low, high]`` (Wilson 95 %), median test error and divergences."""
    lengths = sorted({r["length"] for r in rows})
    lines = [
        "| task | method | " + " | ".join(f"T = {T}" for T in lengths) + " |",
        "|---|---|" + "---|" * len(lengths),
    ]
    keys = list(dict.fromkeys((r["task"], r["method"]) for r in rows))
    cell = {(r["task"], r["method"], r["length"]): r for r in rows}
    for name, method in keys:
        cells = []
        for T in lengths:
            r = cell.get((name, method, T))
            if r is None:
                cells.append("")
                continue
            div = f", {r['diverged']} diverged" if r["diverged"] else ""
            cells.append(
                f"{r['successes']}/{r['seeds']} [{r['wilson_low']:.2f}, {r['wilson_high']:.2f}] "
                f"(err {r['median_test_error']:.3f}{div})"
            )
        lines.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


# --------------------------------------------------------------------------------------------
# run


def _groups(s: Settings) -> list[tuple[str, tuple]]:
    per_task = [s.lengths] if s.share_lengths else [(T,) for T in s.lengths]
    return [(name, lengths) for name in s.tasks for lengths in per_task]


def run(out_dir, *, full: bool = False, settings: Settings | None = None) -> dict:
    """Trains every run, writes the tables, per-task records and the figure to
    ``out_dir/long_memory``; returns the summary.

    Args:
      out_dir: output directory.
      full: the paper-sized :data:`FULL` instead of :data:`QUICK`.
      settings: explicit :class:`Settings` (overrides ``full``).

    Returns:
      A JSON-able summary: mode, settings, the success criterion, wall time, the table rows.
    """
    s = check_settings(settings if settings is not None else (FULL if full else QUICK))
    mode = "full" if s == FULL else ("quick" if s == QUICK else "custom")
    out = Path(out_dir) / NAME
    t0 = time.perf_counter()
    records: list[dict] = []
    groups = _groups(s)
    left = {name: sum(g[0] == name for g in groups) for name in s.tasks}
    with compile_pool() as pool:
        pending = Pending([], [])
        for name, lengths in groups:
            fn, args, runs = train_runs(s, name, lengths)
            pending.add(pool, fn, args, lambda out, name=name, runs=runs: _records(name, runs, out))
        progress.stage(f"training {len(groups)} program(s)")
        for (name, lengths), res, to_records in zip(groups, pending.results, pending.to_records):
            new = to_records(jax.device_get(res.result()))
            records += new
            wins = {m: sum(r["success"] for r in new if r["method"] == m) for m in METHODS}
            progress.stage(
                f"{name} T={','.join(map(str, lengths))}: successes "
                + ", ".join(f"{m} {k}/{len(new) // len(METHODS)}" for m, k in wins.items())
                + f" ({time.perf_counter() - t0:.0f} s)"
            )
            left[name] -= 1
            if not left[name]:  # a task's records are saved as soon as all its lengths are in
                _io.save_json([r for r in records if r["task"] == name], out / f"runs_{name}.json")
    rows = success_table(records)
    wall = time.perf_counter() - t0
    criterion = (
        "success: fewer than 1 % of the fresh test sequences misclassified (Pascanu et al. 2013 "
        "§4.1.1); regression sequences are misclassified when the squared error exceeds 0.04 on "
        "a [0, 1] target (0.16 for adding's sum target); a diverged run is a failure"
    )
    summary = {
        "mode": mode,
        "settings": s._asdict(),
        "criterion": criterion,
        "wall_s": wall,
        "rows": rows,
    }
    _write_text(
        out / "table.md",
        f"# Long-term dependencies ({mode} mode)\n\n"
        + _settings_md(s)
        + "\n"
        + markdown_table(rows),
    )
    _write_text(out / "table.csv", to_csv(rows))
    _io.save_json(rows, out / "table.json")
    for stem, fig in _figures(summary).items():
        _io.save_figure(fig, out / f"{stem}.png")
    _io.save_json(summary, out / "summary.json")
    return summary


def _settings_md(s: Settings) -> str:
    mom = "no momentum" if s.momentum is None else f"momentum {s.momentum:g}"
    return (
        f"tanh RNN of {s.width} units (W_rec orthogonal, spectral radius {s.radius:g}), "
        f"{s.steps} SGD steps of batch {s.batch}, learning rate {s.learning_rate:g}, {mom}; "
        f"SGD-C/SGD-CR clip at global norm {s.clip_norm:g}; SGD-CR adds α Ω with α = "
        f"{s.alpha:g}; {s.seeds} seeds; {s.n_test} fresh test sequences per run. Cells: "
        "successes/seeds [Wilson 95 % interval] (median test error rate).\n"
    )


# --------------------------------------------------------------------------------------------
# figures


def figure_success(rows: Sequence[Mapping], *, title: str | None = None, axes=None) -> Figure:
    """Success rate against sequence length, one panel per task, one line per method, with
    Wilson 95 % intervals as error bars.

    Args:
      rows: :func:`success_table` rows (``task``, ``method``, ``length``, ``success_rate``,
        ``wilson_low``, ``wilson_high``).
      title: figure title (only on a figure this function creates).
      axes: one axes per task, in the order tasks first appear (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    names = list(dict.fromkeys(r["task"] for r in rows))
    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)
    created = axes is None
    fig, grid = plots.new_axes_grid(
        None if created else axes,
        nrows=nrows if created else 1,
        ncols=ncols if created else len(names),
        figsize=(4.2 * ncols, 3.4 * nrows),
    )
    flat = list(np.asarray(grid, dtype=object).ravel())
    colours = dict(zip(METHODS, plots.palette(len(METHODS))))
    all_lengths = sorted({r["length"] for r in rows})
    dx = 0.012 * (max(all_lengths) - min(all_lengths) or 1)
    for ax, name in zip(flat, names):
        for j, method in enumerate(METHODS):
            rs = sorted(
                (r for r in rows if r["task"] == name and r["method"] == method),
                key=lambda r: r["length"],
            )
            if not rs:
                continue
            x = np.array([r["length"] for r in rs], float) + (j - 1) * dx
            y = np.array([r["success_rate"] for r in rs])
            err = np.array(
                [
                    [r["success_rate"] - r["wilson_low"] for r in rs],
                    [r["wilson_high"] - r["success_rate"] for r in rs],
                ]
            )
            ax.errorbar(
                x, y, yerr=err, marker="o", ms=4, capsize=3, color=colours[method], label=method
            )
        ax.set_title(name.replace("_", " "))
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("success rate")
        ax.grid(alpha=0.3)
    for ax in flat[len(names) :]:
        ax.set_visible(False)
    flat[0].legend(fontsize=8)
    if created:  # figure-level title and layout only on a figure made here
        if title is not None:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
    return fig


def _figures(summary: Mapping) -> dict[str, Figure]:
    s = summary["settings"]
    title = (
        f"Pascanu et al. 2013, Fig. 7: tanh RNN ({s['width']} units), {s['steps']} steps, "
        f"{s['seeds']} seeds, Wilson 95 % intervals ({summary['mode']} mode)"
    )
    return {"success_vs_length": figure_success(summary["rows"], title=title)}


def figures(out_dir) -> dict[str, Figure]:
    """Redraws the figure of :func:`run` from ``out_dir/long_memory/summary.json``.

    Returns:
      ``{file stem: Figure}``, the stems of the PNG/PDF files :func:`run` wrote.
    """
    return _figures(_io.load_json(Path(out_dir) / NAME / "summary.json"))
