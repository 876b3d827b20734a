"""The study's gradient-flossing part (Engelken 2023): a tanh RNN on a long-lag task, trained
plain, after pre-flossing, and with flossing during training.

Every arm starts from the same initial weights per seed and sees the same batches (paired
comparisons). "pre-flossing" first minimises the flossing regulariser F = Σ_{i≤k} λ_i² alone
for ``preflossing_steps`` Adam steps on one sequence per step (Engelken's B = 1), then trains on
the task; "flossing" trains on E + w·F from the initial weights; "plain" trains on E. Seeds and
arms are ``vmap``-ed in one compiled program. Recorded: the Lyapunov spectrum (all n exponents,
on fixed test sequences) at initialisation, at the start of task training and at its end; the
task loss of every training batch, the final test error and the success rate (final test error
below the task's threshold); and the state-gradient norms ‖∂E/∂h_t‖ across time at the start
and at the end of training.

Measured (quick mode: temporal order at T = 40, width 16, 150 Adam steps; chance is 0.75):
plain Adam stays at chance on every seed (median test error 0.77 over 4 seeds, 0.76 over 8);
pre-flossing puts λ_1 … λ_4 at ≈ 0 and ‖∂E/∂h_0‖ from ~10⁻⁴·⁵ to ~1, but training pulls the
exponents back to −0.1 … −0.4 and the error stays at chance (0.75, 0.75); flossing during
training keeps them near 0 and lowers the median error to 0.22 (1 of 4 seeds solves the task)
and 0.50 (2 of 8). On the adding problem at the same size no arm learns in 150 steps.

The library side is :mod:`gradflow.train.flossing`; this module holds settings, the run, a table
and a figure. :func:`run_flossing` returns ``(summary, curves)``: a JSON-able summary (config,
records, table rows) and a dict of arrays keyed ``"flossing/..."`` from which
:func:`figure_flossing` draws.

References:
  Engelken 2023, "Gradient flossing: improving gradient descent through dynamic control of
  Jacobians", NeurIPS 2023, arXiv:2312.17306.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
from matplotlib.figure import Figure

from gradflow import init, lyapunov, models, plots, progress, tasks, train
from gradflow.plots._base import band, finish
from gradflow.train import flossing as floss

__all__ = [
    "FlossingConfig",
    "FLOSSING_QUICK",
    "FLOSSING_FULL",
    "ARMS",
    "run_flossing",
    "flossing_rows",
    "flossing_table",
    "figure_flossing",
]

# The three arms, in the order they are stacked.
ARMS = ("plain", "preflossing", "flossing")
_LABELS = {
    "plain": "plain Adam",
    "preflossing": "pre-flossing, then Adam",
    "flossing": "Adam on E + w·F",
}
_PREFIX = "flossing"
# XLA debug options that jax_disable_most_optimizations sets (jax/_src/compiler.py).
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


class FlossingConfig(NamedTuple):
    """Sizes of the flossing comparison (see :data:`FLOSSING_QUICK`, :data:`FLOSSING_FULL`).

    The RNN is Pascanu's tanh form with N(0, gain²/n) recurrent weights (Engelken's random
    networks; gain 1 is the edge of chaos of the autonomous network). The top ``k`` exponents
    are flossed towards 0, each estimated after a burn-in of ``length // 10`` steps.
    """

    task: str = "temporal_order"
    length: int = 40
    width: int = 16
    gain: float = 1.0
    k: int = 4
    seeds: int = 4
    batch: int = 16
    steps: int = 150
    learning_rate: float = 1e-2
    preflossing_steps: int = 50
    weight: float = 1.0
    n_test: int = 256
    n_probe: int = 4  # test sequences the spectra and the state gradients are measured on
    # Compile without XLA's LLVM backend optimisations (as jax_disable_most_optimizations does,
    # for this one program): measured on 2 busy cores, compiling took 6.3 s instead of 12.8 s
    # and running 2.6 s instead of 1.5 s — right for the compile-bound quick mode, not for the
    # run-bound full one. Results differ at the level of float32 rounding (amplified by
    # training, as any change of code generation is).
    fast_compile: bool = True


FLOSSING_QUICK = FlossingConfig()
FLOSSING_FULL = FlossingConfig(
    length=100,
    width=64,
    k=8,
    seeds=8,
    batch=32,
    steps=3000,
    learning_rate=1e-3,
    preflossing_steps=500,
    n_test=1000,
    fast_compile=False,
)


def _model(cfg: FlossingConfig, task: tasks.SequenceTask) -> models.RNN:
    return models.RNN(
        width=cfg.width,
        activation="tanh",
        recurrent_init=init.gaussian(cfg.gain),
        out_features=task.out_features,
    )


def _stack(trees):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _program(cfg: FlossingConfig, task: tasks.SequenceTask, model):
    """``fn(params (seeds, …), key)``: every seed and arm, one compiled program.

    Each run is one ``lax.scan`` of P + S steps (P = ``preflossing_steps``, S = ``steps``): in
    [0, P) the pre-flossing arm minimises F alone and the others wait; at step P every arm
    takes a fresh Adam state and trains on the task for S steps, on the same batches. One scan
    for all three arms (rather than :func:`~gradflow.train.flossing.make_preflossing` followed
    by :func:`~gradflow.train.make_fit`) compiles F's gradient once instead of twice, and
    without ``make_fit``'s per-layer monitors or a periodic test evaluation: the test error is
    measured at the end, the training curve is the task loss E of each step's batch. Compiling
    is most of the quick mode's time, and this halves it.
    """
    T, discard, P = cfg.length, cfg.length // 10, cfg.preflossing_steps
    flossing_loss = floss.flossing_loss_fn(model, cfg.k, discard=discard)  # on 1 sequence
    state_grads = train.recurrent_state_grad_fn(model, task.loss)
    opt = optax.adam(cfg.learning_rate)

    def spectrum(params, u):
        # All n exponents (forward only), averaged over the probe sequences.
        lam = jax.vmap(
            lambda s: lyapunov.lyapunov_spectrum(model.chain(params, s), discard=discard)
        )(u)
        return jnp.mean(lam, axis=0)

    def run_arm(params, seed, pre, weight, key, test):
        # The data come from keys shared by every run, not vmapped ones: a vmapped random
        # generator compiles to a program twice as large, and compiling dominates the quick mode.
        # Each step draws the batches of all seeds at once; a run takes its seed's slice.
        k_pre, k_train = jax.random.split(key)
        ut, yt = test

        def slice_of(batch, size):
            return jax.tree_util.tree_map(
                lambda a: jax.lax.dynamic_slice_in_dim(a, seed * size, size), batch
            )

        def objective(p, training, u_pre, batch):
            # F on one sequence: the pre-flossing one before P, the batch's first one after.
            u_f = jnp.where(training, batch[0][:1], u_pre)
            task_loss = task.loss(model.apply(p, batch[0]), batch[1])
            total = jnp.where(training, task_loss, 0.0)
            return total + jnp.where(training, weight, pre) * flossing_loss(p, u_f), task_loss

        def step(carry, t):
            p, state, p_start, stopped = carry
            training = t >= P
            state = otu.tree_where(t == P, opt.init(p), state)
            p_start = otu.tree_where(t == P, p, p_start)
            u_pre = slice_of(task.generate(jax.random.fold_in(k_pre, t), cfg.seeds, T)[0], 1)
            batch = task.generate(jax.random.fold_in(k_train, t - P), cfg.seeds * cfg.batch, T)
            batch = slice_of(batch, cfg.batch)
            (loss, task_loss), grads = jax.value_and_grad(objective, has_aux=True)(
                p, training, u_pre, batch
            )
            updates, new_state = opt.update(grads, state, p)
            new_p = optax.apply_updates(p, updates)
            # As make_fit: from the first non-finite loss, gradient or update, nothing more.
            active = training | (pre > 0)
            ok = jnp.isfinite(loss + otu.tree_sum(grads) + otu.tree_sum(new_p))
            apply = active & ok & ~stopped
            carry = (
                otu.tree_where(apply, new_p, p),
                otu.tree_where(apply, new_state, state),
                p_start,
                stopped | (active & ~ok),
            )
            return carry, jnp.where(stopped, jnp.nan, task_loss)

        carry = (params, opt.init(params), params, jnp.asarray(False))
        steps = jnp.arange(P + cfg.steps)
        (p_final, _, p_start, stopped), task_losses = jax.lax.scan(step, carry, steps)
        both = _stack([p_start, p_final])
        probe = (ut[: cfg.n_probe], yt[: cfg.n_probe])
        lam = jax.vmap(spectrum, in_axes=(0, None))(both, probe[0])
        grads = jax.vmap(state_grads, in_axes=(0, None))(both, probe)
        return {
            "loss": task_losses[P:],
            "final_error": task.error(model.apply(p_final, ut), yt),
            "diverged": stopped,
            "exponents_start": lam[0],
            "exponents_final": lam[1],
            "state_grads_start": grads[0],
            "state_grads_final": grads[1],
        }

    def all_runs(params, key):
        # One vmap over (seed, arm), seed-major: the arms of a seed share its weights and
        # batches; "preflossing" flosses before training, "flossing" adds w·F during it. One
        # test set serves every run.
        k_data, k_test = jax.random.split(key)
        test = task.generate(k_test, cfg.n_test, T)
        n = len(ARMS)
        seed = jnp.repeat(jnp.arange(cfg.seeds), n)
        pre = jnp.tile(jnp.array([0.0, 1.0, 0.0]), cfg.seeds)
        weight = jnp.tile(jnp.array([0.0, 0.0, cfg.weight]), cfg.seeds)
        per_run = jax.tree_util.tree_map(lambda a: a[seed], params)
        one = functools.partial(run_arm, key=k_data, test=test)
        out = jax.vmap(one)(per_run, seed, pre, weight)
        return jax.tree_util.tree_map(lambda a: a.reshape(cfg.seeds, n, *a.shape[1:]), out)

    return all_runs


def run_flossing(
    full: bool = False, *, config: FlossingConfig | None = None
) -> tuple[dict, dict[str, np.ndarray]]:
    """Trains every (arm, seed) of :class:`FlossingConfig` and returns its numbers.

    Args:
      full: the paper-sized :data:`FLOSSING_FULL` instead of :data:`FLOSSING_QUICK`.
      config: an explicit configuration (overrides ``full``).

    Returns:
      ``(summary, curves)``. ``summary`` (JSON-able): ``config``, ``records`` (one per arm and
      seed: ``arm``, ``seed``, ``final_error``, ``success``, ``diverged``, the top-k exponents
      ``exponents_init``/``exponents_start``/``exponents_final`` and ``log10_state_grad_0_start``
      / ``…_final``, log10 ‖∂E/∂h_0‖) and ``rows`` (:func:`flossing_rows`). ``curves``: arrays
      keyed ``"flossing/exponents_init"`` ``(seeds, n)`` and, per arm,
      ``"flossing/<arm>/<quantity>"`` of shape ``(seeds, …)``: ``loss`` (S: the task loss of
      each training step's batch), ``final_error`` and ``diverged`` (scalars per seed),
      ``exponents_start``/``_final`` (n, descending) and ``state_grads_start``/``_final``
      (T + 1), plus ``"flossing/threshold"`` and ``"flossing/k"``.
    """
    cfg = config or (FLOSSING_FULL if full else FLOSSING_QUICK)
    task = tasks.get(cfg.task)
    model = _model(cfg, task)
    u0, _ = task.generate(jax.random.key(0), 2, cfg.length)
    seed_keys = jax.random.split(jax.random.key(17), cfg.seeds)
    # Eagerly, without the forward pass (as the study's other parts initialise).
    shape = jax.ShapeDtypeStruct(u0.shape, u0.dtype)
    params = _stack([model.lazy_init(jax.random.fold_in(k, 0), shape) for k in seed_keys])
    progress.stage("flossing: compiling and training")
    key = jax.random.key(18)
    lowered = jax.jit(_program(cfg, task, model)).lower(params, key)
    out = jax.device_get(lowered.compile(_FAST_COMPILE if cfg.fast_compile else None)(params, key))

    curves = {
        f"{_PREFIX}/threshold": np.float64(task.threshold),
        f"{_PREFIX}/k": np.int64(cfg.k),
        f"{_PREFIX}/exponents_init": np.asarray(out["exponents_start"][:, 0]),
    }
    records = []
    for a, arm in enumerate(ARMS):
        per_arm = {name: np.asarray(v[:, a]) for name, v in out.items()}
        for name, v in per_arm.items():
            curves[f"{_PREFIX}/{arm}/{name}"] = v.astype(np.float64)
        for s in range(cfg.seeds):
            err, div = float(per_arm["final_error"][s]), bool(per_arm["diverged"][s])
            records.append(
                {
                    "arm": arm,
                    "seed": s,
                    "final_error": err,
                    "diverged": div,
                    "success": bool(np.isfinite(err) and err < task.threshold and not div),
                    "exponents_init": curves[f"{_PREFIX}/exponents_init"][s, : cfg.k].tolist(),
                    **{
                        f"exponents_{w}": per_arm[f"exponents_{w}"][s, : cfg.k].tolist()
                        for w in ("start", "final")
                    },
                    **{
                        f"log10_state_grad_0_{w}": float(
                            np.log10(max(per_arm[f"state_grads_{w}"][s, 0], 1e-300))
                        )
                        for w in ("start", "final")
                    },
                }
            )
    summary = {"config": cfg._asdict(), "records": records, "rows": flossing_rows(records)}
    return summary, curves


def flossing_rows(records: list[dict]) -> list[dict]:
    """One row per arm, aggregated over seeds: success rate, test error (median, min, max),
    λ_1 and λ_k at the start and end of training (medians), log10 ‖∂E/∂h_0‖ at the start."""
    rows = []
    for arm in ARMS:
        rs = [r for r in records if r["arm"] == arm]
        if not rs:
            continue
        err = np.array([r["final_error"] for r in rs])

        def med(key, i, rs=rs):
            return float(np.median([r[key][i] for r in rs]))

        rows.append(
            {
                "arm": arm,
                "seeds": len(rs),
                "success_rate": float(np.mean([r["success"] for r in rs])),
                "median_error": float(np.median(err)),
                "min_error": float(np.min(err)),
                "max_error": float(np.max(err)),
                "lambda_1_start": med("exponents_start", 0),
                "lambda_k_start": med("exponents_start", -1),
                "lambda_1_final": med("exponents_final", 0),
                "lambda_k_final": med("exponents_final", -1),
                "log10_state_grad_0_start": float(
                    np.median([r["log10_state_grad_0_start"] for r in rs])
                ),
                "diverged": int(sum(r["diverged"] for r in rs)),
            }
        )
    return rows


def flossing_table(summary: Mapping) -> str:
    """The flossing comparison as Markdown, from :func:`run_flossing`'s summary."""
    cfg = summary["config"]
    head = (
        f"Tanh RNN (width {cfg['width']}, recurrent N(0, {cfg['gain']:g}²/n)) on "
        f"`{cfg['task']}` at T = {cfg['length']}, {cfg['steps']} Adam steps (lr "
        f"{cfg['learning_rate']:g}) of batch {cfg['batch']}, {cfg['seeds']} seeds. Flossing "
        f"pushes the top k = {cfg['k']} Lyapunov exponents to 0: pre-flossing for "
        f"{cfg['preflossing_steps']} steps before training, or w = {cfg['weight']:g} during it. "
        "λ_1, λ_k: median over seeds (nats/step) at the start and end of task training; "
        "‖∂E/∂h_0‖ at the start.\n\n"
        "| arm | success | test error, median [min, max] | λ_1, λ_k start | λ_1, λ_k end | "
        "log10 ‖∂E/∂h_0‖ start | diverged |\n|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {_LABELS[r['arm']]} | {round(r['success_rate'] * r['seeds'])}/{r['seeds']} | "
        f"{r['median_error']:.3f} [{r['min_error']:.3f}, {r['max_error']:.3f}] | "
        f"{r['lambda_1_start']:+.3f}, {r['lambda_k_start']:+.3f} | "
        f"{r['lambda_1_final']:+.3f}, {r['lambda_k_final']:+.3f} | "
        f"{r['log10_state_grad_0_start']:.1f} | {r['diverged']}/{r['seeds']} |"
        for r in summary["rows"]
    ]
    return head + "\n".join(lines) + "\n"


def _smooth(ys, window: int):
    """Moving average along the last axis (``valid`` part): a training-loss curve per batch is
    too noisy to compare arms."""
    window = max(1, min(window, ys.shape[-1]))
    kernel = np.ones(window) / window
    return np.stack([np.convolve(y, kernel, mode="valid") for y in ys]), window


def figure_flossing(curves: Mapping[str, np.ndarray], *, axes=None) -> Figure:
    """Four panels, spread over seeds (median line, min–max band; dots per seed): the Lyapunov
    spectra, the state-gradient norms across time, the training loss, and each seed's final
    test error.

    Args:
      curves: :func:`run_flossing`'s curves (or the ``"flossing/..."`` entries of a saved
        ``curves.npz``).
      axes: four axes, row-major (default: a new 2 × 2 figure).

    Returns:
      The Figure drawn into.
    """
    created = axes is None
    fig, axes = plots.new_axes_grid(axes, nrows=2, ncols=2, figsize=(12, 8.5))
    ax_spec, ax_grad, ax_loss, ax_final = np.ravel(axes)
    k = int(curves[f"{_PREFIX}/k"])
    threshold = float(curves[f"{_PREFIX}/threshold"])
    colors = dict(zip(ARMS, plots.palette(len(ARMS))))

    def get(arm, name):
        return np.asarray(curves[f"{_PREFIX}/{arm}/{name}"], np.float64)

    init_spec = np.asarray(curves[f"{_PREFIX}/exponents_init"], np.float64)
    idx = np.arange(1, init_spec.shape[1] + 1)
    band(ax_spec, idx, init_spec, "grey", "initialisation", ls=":")
    band(
        ax_spec,
        idx,
        get("preflossing", "exponents_start"),
        colors["preflossing"],
        "after pre-flossing",
        ls="--",
    )
    for arm in ARMS:
        band(ax_spec, idx, get(arm, "exponents_final"), colors[arm], f"{_LABELS[arm]}, trained")
    ax_spec.axhline(0, color="k", lw=0.8)
    ax_spec.axvspan(0.5, k + 0.5, color="k", alpha=0.06, lw=0, label=f"flossed: top {k}")
    ax_spec.set(xlabel="exponent index i", ylabel="λ_i (nats per step)", title="Lyapunov spectrum")

    # Plain and flossing start from the initial weights: their start is the grey line.
    for arm, name, color, label in (
        ("plain", "state_grads_start", "grey", "initialisation"),
        ("preflossing", "state_grads_start", colors["preflossing"], "after pre-flossing"),
    ):
        g = get(arm, name)
        band(ax_grad, np.arange(g.shape[1]), g, color, label, log10=True, ls="--")
    for arm in ARMS:
        g = get(arm, "state_grads_final")
        band(ax_grad, np.arange(g.shape[1]), g, colors[arm], f"{_LABELS[arm]}, trained", log10=True)
    ax_grad.set(
        xlabel="time step t (readout at T)",
        ylabel="log10 ‖∂E/∂h_t‖",
        title="Error signal reaching each step",
    )

    for arm in ARMS:
        loss, window = _smooth(get(arm, "loss"), get(arm, "loss").shape[1] // 15)
        band(ax_loss, np.arange(loss.shape[1]) + window, loss, colors[arm], _LABELS[arm])
    ax_loss.set(
        xlabel="training step",
        ylabel=f"task loss E (moving average of {window})",
        title="Training (task loss of each batch)",
    )

    for j, arm in enumerate(ARMS):
        final = get(arm, "final_error")
        jitter = np.linspace(-0.15, 0.15, final.size) if final.size > 1 else np.zeros(1)
        ax_final.scatter(j + jitter, final, color=colors[arm], s=25)
        ax_final.plot([j - 0.25, j + 0.25], [np.median(final)] * 2, color=colors[arm], lw=2)
    ax_final.axhline(threshold, color="k", ls="--", lw=1, label=f"success: < {threshold:g}")
    ax_final.set_xticks(range(len(ARMS)), [_LABELS[a] for a in ARMS], fontsize=8)
    ax_final.set(ylabel="final test error", title="Each seed (bar: median)")
    for ax in (ax_spec, ax_grad, ax_loss, ax_final):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return finish(fig, created, "Gradient flossing (Engelken 2023)")
