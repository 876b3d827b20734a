"""The remedies for vanishing and exploding gradients, compared on the same tasks.

(a) Deep MLPs (depth ≥ 20) on an image task (scikit-learn's bundled 8×8 digits, or a generated
digit-like task without scikit-learn): sigmoid with Glorot's ("default"), Kumar's and
Yilmaz–Poli's initialisations, tanh/Glorot, ReLU/He, leaky ReLU, GELU, a residual ReLU net,
BatchNorm and LayerNorm, each trained by SGD with momentum with and without gradient-norm clipping;
plus sign-based Rprop (full batch) and a gradient-free evolution strategy on the sigmoid/Glorot
net. Recorded: final test accuracy, steps to a target accuracy, and the first/last hidden layer
gradient-norm ratio over training (from :func:`gradflow.train.fit`'s monitors).

(b) RNN (tanh, Pascanu's form) vs LSTM vs GRU on the adding and temporal-order problems at
several sequence lengths, trained by SGD ("SGD"), SGD with clipping ("SGD-C") and SGD with
clipping and Pascanu's regulariser ("SGD-CR") — the three methods of Pascanu, Mikolov & Bengio
2013 (arXiv:1211.5063), §4. Recorded: success rate (final test error below the task's threshold,
without divergence) vs length, and the per-time-step state-gradient norms ‖∂E/∂h_t‖.

Seeds, clipping on/off, initialisations that share an architecture, sequence lengths (quick mode)
and the three SGD variants are all ``vmap``-ed into one compiled run per architecture.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from gradflow import gradient_free, gradients, init, models, plots, progress, tasks, train
from gradflow.chain import Chain, final_state
from gradflow.experiments import _io

__all__ = [
    "NAME",
    "DESCRIPTION",
    "Config",
    "QUICK",
    "FULL",
    "MLPVariant",
    "mlp_variants",
    "run_mlp",
    "run_rnn",
    "mlp_table",
    "rnn_table",
    "mlp_markdown",
    "rnn_markdown",
    "run",
    "figure_mlp_accuracy",
    "figure_mlp_curves",
    "figure_rnn_success",
    "figure_rnn_state_grads",
    "figures",
]

NAME = "mitigations"
DESCRIPTION = (
    "remedies compared: deep MLPs on digits (inits, activations, residual, norms, clipping, "
    "Rprop, ES) and RNN/LSTM/GRU on adding/temporal order (SGD, clipping, Pascanu's regulariser)"
)


class Config(NamedTuple):
    """Sizes of one run of the study (see :data:`QUICK`, :data:`FULL`)."""

    # (a) deep MLPs
    depth: int = 20
    width: int = 32
    batch: int = 64
    steps: int = 200
    seeds: int = 2
    learning_rate: float = 0.05
    momentum: float = 0.9
    clip_norm: float = 1.0
    target_accuracy: float = 0.8
    monitor_every: int = 20
    rprop_learning_rate: float = 1e-3
    rprop_batch: int | None = None  # None: the full training set (Rprop is a full-batch method)
    es_population: int = 8
    es_sigma: float = 0.02
    es_learning_rate: float = 0.01
    # (b) recurrent nets
    rnn_width: int = 32
    rnn_batch: int = 32
    rnn_steps: int = 300
    rnn_seeds: int = 2
    rnn_learning_rate: float = 0.05
    rnn_clip_norm: float = 1.0
    alpha: float = 1.0
    lengths: tuple = (20, 40)
    rnn_tasks: tuple = ("adding", "temporal_order")
    rnn_models: tuple = ("RNN", "LSTM", "GRU")
    n_test: int = 256
    # True: every length in one compiled run (shorter ones padded at the start, the state frozen
    # there); False: one compiled run per length (no padding work: the paper-sized setting).
    share_lengths: bool = True
    mlp_variants: tuple | None = None  # labels to run (None: all)
    baselines: bool = True  # Rprop and the evolution strategy


QUICK = Config()
FULL = Config(
    depth=50,
    width=128,
    batch=128,
    steps=3000,
    seeds=5,
    target_accuracy=0.9,
    monitor_every=50,
    es_population=64,
    rnn_width=64,
    rnn_batch=64,
    rnn_steps=5000,
    rnn_seeds=5,
    lengths=(20, 50, 100, 150, 200),
    n_test=1000,
    share_lengths=False,
)


class MLPVariant(NamedTuple):
    label: str
    activation: str
    kernel_init: Any
    residual: bool = False
    norm: str | None = None

    @property
    def arch(self):
        return (self.activation, self.residual, self.norm)


def mlp_variants() -> list[MLPVariant]:
    """The ten deep-MLP configurations of part (a)."""
    return [
        MLPVariant("sigmoid, Glorot (default)", "sigmoid", init.glorot()),
        MLPVariant("sigmoid, Kumar", "sigmoid", init.kumar("sigmoid")),
        MLPVariant("sigmoid, Yilmaz–Poli", "sigmoid", init.yilmaz_poli()),
        MLPVariant("tanh, Glorot", "tanh", init.glorot()),
        MLPVariant("ReLU, He", "relu", init.he()),
        MLPVariant("leaky ReLU, He", "leaky_relu", init.he()),
        MLPVariant("GELU, He", "gelu", init.he()),
        MLPVariant("residual ReLU, He", "relu", init.he(), residual=True),
        MLPVariant("BatchNorm ReLU, He", "relu", init.he(), norm="batch"),
        MLPVariant("LayerNorm ReLU, He", "relu", init.he(), norm="layer"),
    ]


def _mlp(cfg: Config, v: MLPVariant, n_classes: int) -> models.MLP:
    return models.MLP(
        width=cfg.width,
        depth=cfg.depth,
        activation=v.activation,
        kernel_init=v.kernel_init,
        residual=v.residual,
        # 1/√depth keeps a residual net's forward variance O(1) (see experiments/vanishing.py).
        residual_scale=1.0 / math.sqrt(cfg.depth) if v.residual else 1.0,
        norm=v.norm,
        out_features=n_classes,
    )


def _init(model, key, x):
    """``model.init`` without running the forward pass (eagerly: jitting every initialiser would
    compile one program per configuration, which costs more on CPU than the whole run)."""
    return model.lazy_init(key, jax.ShapeDtypeStruct(x.shape, x.dtype))


def _stack(trees):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _cross_entropy(logits, y):
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))


def _mlp_fns(model, data):
    """Loss on a batch of training indices, and test accuracy (data closed over as constants)."""
    xtr, ytr = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    xte, yte = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

    def loss(params, idx):
        return _cross_entropy(model.apply(params, xtr[idx]), ytr[idx])

    def accuracy(params):
        return jnp.mean(jnp.argmax(model.apply(params, xte), -1) == yte)

    return loss, accuracy


def _first_over_last(norms):
    """log10 ‖∂L/∂θ_1‖ / ‖∂L/∂θ_depth‖: first vs last *hidden* layer (the readout is index −1).

    −inf where the first layer's gradient underflowed to exactly zero (float32 sigmoid nets).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(norms[..., 0] / norms[..., -2])


def _nanmedian(xs):
    xs = np.asarray(xs, np.float64)
    return float(np.median(xs[~np.isnan(xs)])) if (~np.isnan(xs)).any() else float("nan")


def _steps_to(acc, steps, target):
    hit = acc >= target
    return float(steps[np.argmax(hit)]) if hit.any() else float("nan")


def _record(label, method, clip, seed, acc_curve, steps, final_acc, norms, diverged, div_step, cfg):
    ratio = _first_over_last(norms) if norms is not None else None
    return {
        "method": label,
        "optimizer": method,
        "clipping": bool(clip),
        "seed": int(seed),
        "final_accuracy": float(final_acc),
        "steps_to_target": _steps_to(acc_curve, steps, cfg.target_accuracy),
        "log10_first_over_last_start": float(ratio[0]) if ratio is not None else float("nan"),
        "log10_first_over_last_end": _nanmedian(ratio[-3:]) if ratio is not None else float("nan"),
        "diverged": bool(diverged),
        "divergence_step": int(div_step),
        "_acc_curve": np.asarray(acc_curve),
        "_ratio_curve": ratio,
    }


def run_mlp(cfg: Config, data: tasks.ImageData) -> tuple[list[dict], np.ndarray]:
    """Part (a): returns one record per (variant, optimiser, clipping, seed) and the step grid."""
    variants = [
        v for v in mlp_variants() if cfg.mlp_variants is None or v.label in cfg.mlp_variants
    ]
    xtr = jnp.asarray(data.x_train)
    seed_keys = jax.random.split(jax.random.key(0), cfg.seeds)
    # The same minibatch order for every configuration of a seed: paired comparisons.
    idx = jnp.stack(
        [
            jax.random.randint(jax.random.fold_in(k, 1), (cfg.steps, cfg.batch), 0, xtr.shape[0])
            for k in seed_keys
        ]
    )
    clips = (math.inf, cfg.clip_norm)
    records: list[dict] = []
    steps = np.arange(0, cfg.steps, cfg.monitor_every)

    groups: dict = {}
    for v in variants:
        groups.setdefault(v.arch, []).append(v)
    for arch_variants in groups.values():
        model = _mlp(cfg, arch_variants[0], data.n_classes)
        loss, accuracy = _mlp_fns(model, data)
        inst = [(v, c, s) for v in arch_variants for c in clips for s in range(cfg.seeds)]
        params = _stack(
            [_init(_mlp(cfg, v, data.n_classes), seed_keys[s], xtr[:2]) for v, _, s in inst]
        )

        def one(p, batch_idx, clip, loss=loss, accuracy=accuracy):
            opt = train.sgd(cfg.learning_rate, momentum=cfg.momentum, clip_norm=clip)
            run = train.make_fit(loss, opt, monitor_every=cfg.monitor_every, eval_fn=accuracy)
            return run(p, batch_idx)

        res = jax.jit(jax.vmap(one))(
            params,
            idx[jnp.array([s for _, _, s in inst])],
            jnp.array([c for _, c, _ in inst]),
        )
        res = jax.device_get(res)
        for i, (v, c, s) in enumerate(inst):
            records.append(
                _record(
                    v.label,
                    "SGD",
                    math.isfinite(c),
                    s,
                    res.history.metrics[i],
                    steps,
                    res.final_metrics[i],
                    res.history.layer_grad_norms[i],
                    res.divergence.diverged[i],
                    res.divergence.step[i],
                    cfg,
                )
            )

    if not cfg.baselines:
        return records, steps
    # Sign-based Rprop and the gradient-free baseline, on the hardest net: sigmoid, Glorot.
    base = mlp_variants()[0]
    model = _mlp(cfg, base, data.n_classes)
    loss, accuracy = _mlp_fns(model, data)
    params = _stack([_init(model, k, xtr[:2]) for k in seed_keys])
    if cfg.rprop_batch is None:
        big = jnp.broadcast_to(jnp.arange(xtr.shape[0]), (cfg.seeds, cfg.steps, xtr.shape[0]))
    else:
        big = jnp.stack(
            [
                jax.random.randint(
                    jax.random.fold_in(k, 3), (cfg.steps, cfg.rprop_batch), 0, xtr.shape[0]
                )
                for k in seed_keys
            ]
        )

    def rprop_one(p, batch_idx):
        opt = train.rprop(cfg.rprop_learning_rate)
        return train.make_fit(loss, opt, monitor_every=cfg.monitor_every, eval_fn=accuracy)(
            p, batch_idx
        )

    res = jax.device_get(jax.jit(jax.vmap(rprop_one))(params, big))
    for s in range(cfg.seeds):
        records.append(
            _record(
                base.label,
                "Rprop"
                + (" (full batch)" if cfg.rprop_batch is None else f" (batch {cfg.rprop_batch})"),
                False,
                s,
                res.history.metrics[s],
                steps,
                res.final_metrics[s],
                res.history.layer_grad_norms[s],
                res.divergence.diverged[s],
                res.divergence.step[s],
                cfg,
            )
        )

    def es_one(p, batch_idx, key):
        return gradient_free.evolution_strategy(
            loss,
            p,
            batch_idx,
            key=key,
            population=cfg.es_population,
            sigma=cfg.es_sigma,
            learning_rate=cfg.es_learning_rate,
            eval_fn=accuracy,
            monitor_every=cfg.monitor_every,
        )

    es_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(seed_keys)
    res = jax.device_get(jax.jit(jax.vmap(es_one))(params, idx, es_keys))
    for s in range(cfg.seeds):
        records.append(
            _record(
                base.label,
                f"evolution strategy (pop. {2 * cfg.es_population})",
                False,
                s,
                res.metrics[s],
                steps,
                res.final_metrics[s],
                None,
                False,
                -1,
                cfg,
            )
        )
    return records, steps


# --------------------------------------------------------------------------------------------
# (b) recurrent nets
# --------------------------------------------------------------------------------------------

RNN_VARIANTS = ("SGD", "SGD-C", "SGD-CR")


@dataclasses.dataclass(frozen=True)
class _MaskedStep:
    """Leaves the state unchanged on inactive (padding) steps: x_k = (input_k, active_k)."""

    step: Any

    def __call__(self, theta, h, xa):
        x, active = xa
        new = self.step(theta, h, x)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(active, a, b), new, h)


def _masked_chain(chain: Chain, active) -> Chain:
    return Chain(
        params=chain.params,
        xs=(chain.xs, active),
        h0=chain.h0,
        step=_MaskedStep(chain.step),
        length=chain.length,
        shared=True,
    )


def _rnn_model(kind: str, width: int, out: int):
    if kind == "RNN":
        return models.RNN(width=width, activation="tanh", out_features=out)
    if kind == "LSTM":
        return models.LSTM(width=width, out_features=out)
    if kind == "GRU":
        return models.GRU(width=width, out_features=out)
    raise ValueError(f"model must be 'RNN', 'LSTM' or 'GRU', got {kind!r}")


def _train_recurrent(cfg: Config, task: tasks.SequenceTask, kind: str, lengths: tuple):
    """All (length, variant, seed) runs of one model on one task, in one compiled ``vmap``."""
    t_max = max(lengths)
    model = _rnn_model(kind, cfg.rnn_width, task.out_features)
    final_loss = train.pascanu.final_state_loss(model, task.loss)
    readout = model.readout

    def outputs_and_chain(params, u, start):
        chain = _masked_chain(model.chain(params, u), tasks.active_steps(t_max, start))
        return readout(params, final_state(chain)), chain

    def one(params, start, clip, alpha, key):
        ktr, kte = jax.random.split(key)
        ut, yt = task.generate(kte, cfg.n_test, t_max, start=start)
        eff = (t_max - start).astype(jnp.float32)

        def loss(p, k):
            u, y = task.generate(k, cfg.rnn_batch, t_max, start=start)
            out, chain = outputs_and_chain(p, u, start)
            # Ω is averaged over all t_max steps; padding steps contribute exactly 0 (identity
            # Jacobian), so rescale to the mean over the task's own steps.
            omega = train.pascanu_regularizer(chain, lambda h: final_loss(p, h, y)) * (t_max / eff)
            return task.loss(out, y) + alpha * omega

        def error(p):
            return task.error(outputs_and_chain(p, ut, start)[0], yt)

        def state_grads(p):
            # ‖∂E/∂h_t‖ on the first test sequences (frozen, padding steps carry it unchanged).
            u, y = ut[: cfg.rnn_batch], yt[: cfg.rnn_batch]
            chain = outputs_and_chain(p, u, start)[1]
            return gradients.state_grad_norms(chain, lambda h: final_loss(p, h, y))

        opt = train.sgd(cfg.rnn_learning_rate, momentum=cfg.momentum, clip_norm=clip)
        # Only the loss is needed during training (success is judged at the end), which keeps
        # the compiled loop small; the state gradients are measured before and after.
        run = train.make_fit(loss, opt, monitor_every=cfg.rnn_steps)
        res = run(params, jax.random.split(ktr, cfg.rnn_steps))
        sg = jnp.stack([state_grads(params), state_grads(res.params)])
        return error(res.params), res.divergence.diverged, sg

    variants = {
        "SGD": (math.inf, 0.0),
        "SGD-C": (cfg.rnn_clip_norm, 0.0),
        "SGD-CR": (cfg.rnn_clip_norm, cfg.alpha),
    }
    inst = [(T, v, s) for T in lengths for v in RNN_VARIANTS for s in range(cfg.rnn_seeds)]
    u0, _ = task.generate(jax.random.key(0), 2, t_max)
    seed_keys = jax.random.split(jax.random.key(1), cfg.rnn_seeds)
    params = _stack([_init(model, jax.random.fold_in(seed_keys[s], 0), u0) for _, _, s in inst])
    res = jax.jit(jax.vmap(one))(
        params,
        jnp.array([t_max - T for T, _, _ in inst]),
        jnp.array([variants[v][0] for _, v, _ in inst]),
        jnp.array([variants[v][1] for _, v, _ in inst]),
        jnp.stack([jax.random.fold_in(seed_keys[s], 1 + T) for T, _, s in inst]),
    )
    errors, diverged, state_grads = jax.device_get(res)
    out = []
    for i, (T, v, s) in enumerate(inst):
        err = float(errors[i])
        div = bool(diverged[i])
        sg = state_grads[i]  # (2, t_max + 1), before/after training; the task's steps: last T + 1
        out.append(
            {
                "task": task.name,
                "model": kind,
                "variant": v,
                "length": int(T),
                "seed": s,
                "test_error": err,
                "diverged": div,
                "success": bool(err < task.threshold and not div and np.isfinite(err)),
                "_state_grads": sg[:, -(T + 1) :],
            }
        )
    return out


def run_rnn(cfg: Config) -> list[dict]:
    """Part (b): one record per (task, model, length, variant, seed)."""
    records = []
    groups = [tuple(cfg.lengths)] if cfg.share_lengths else [(T,) for T in cfg.lengths]
    for name in cfg.rnn_tasks:
        task = tasks.get(name)
        for kind in cfg.rnn_models:
            for lengths in groups:
                records += _train_recurrent(cfg, task, kind, lengths)
    return records


# --------------------------------------------------------------------------------------------
# tables and figures
# --------------------------------------------------------------------------------------------

_MLP_COLUMNS = [
    "method",
    "optimizer",
    "clipping",
    "seeds",
    "final_accuracy_mean",
    "final_accuracy_min",
    "final_accuracy_max",
    "reached_target",
    "median_steps_to_target",
    "log10_first_over_last_start",
    "log10_first_over_last_end",
    "diverged",
]


def mlp_table(records: list[dict], cfg: Config) -> list[dict]:
    """One row per (method, optimiser, clipping), aggregated over seeds."""
    rows, keys = [], []
    for r in records:
        k = (r["method"], r["optimizer"], r["clipping"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        rs = [r for r in records if (r["method"], r["optimizer"], r["clipping"]) == k]
        acc = np.array([r["final_accuracy"] for r in rs])
        st = np.array([r["steps_to_target"] for r in rs])
        rows.append(
            {
                "method": k[0],
                "optimizer": k[1],
                "clipping": k[2],
                "seeds": len(rs),
                "final_accuracy_mean": float(acc.mean()),
                "final_accuracy_min": float(acc.min()),
                "final_accuracy_max": float(acc.max()),
                "reached_target": int(np.isfinite(st).sum()),
                "median_steps_to_target": float(np.median(st[np.isfinite(st)]))
                if np.isfinite(st).any()
                else float("nan"),
                "log10_first_over_last_start": float(
                    _nanmedian([r["log10_first_over_last_start"] for r in rs])
                ),
                "log10_first_over_last_end": float(
                    _nanmedian([r["log10_first_over_last_end"] for r in rs])
                ),
                "diverged": int(sum(r["diverged"] for r in rs)),
            }
        )
    return rows


def rnn_table(records: list[dict]) -> list[dict]:
    """One row per (task, model, variant, length): success rate and median test error over seeds."""
    rows, keys = [], []
    for r in records:
        k = (r["task"], r["model"], r["variant"], r["length"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        rs = [r for r in records if (r["task"], r["model"], r["variant"], r["length"]) == k]
        rows.append(
            {
                "task": k[0],
                "model": k[1],
                "variant": k[2],
                "length": k[3],
                "seeds": len(rs),
                "success_rate": float(np.mean([r["success"] for r in rs])),
                "median_test_error": float(np.median([r["test_error"] for r in rs])),
                "diverged": int(sum(r["diverged"] for r in rs)),
            }
        )
    return rows


def _fmt(x, digits=2):
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return "—" if not np.isfinite(x) else f"{x:.{digits}f}"
    return str(x)


def mlp_markdown(rows: list[dict], cfg: Config, dataset: str) -> str:
    head = (
        f"Deep MLPs (depth {cfg.depth}, width {cfg.width}) on `{dataset}`, {cfg.steps} steps of "
        f"batch {cfg.batch}, {cfg.seeds} seeds; clipping at global norm {cfg.clip_norm:g}; target "
        f"accuracy {cfg.target_accuracy:g}. Ratio = log10 ‖∂L/∂θ_1‖/‖∂L/∂θ_{cfg.depth}‖ (first vs "
        "last hidden layer) at the first step and at the end.\n\n"
        "| method | optimiser | clip | test accuracy (mean [min, max]) | reached target | median "
        "steps to target | log10 ratio, start | log10 ratio, end | diverged |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['method']} | {r['optimizer']} | {_fmt(r['clipping'])} | "
        f"{r['final_accuracy_mean']:.3f} "
        f"[{r['final_accuracy_min']:.3f}, {r['final_accuracy_max']:.3f}] | "
        f"{r['reached_target']}/{r['seeds']} | {_fmt(r['median_steps_to_target'], 0)} | "
        f"{_fmt(r['log10_first_over_last_start'], 1)} | "
        f"{_fmt(r['log10_first_over_last_end'], 1)} | "
        f"{r['diverged']}/{r['seeds']} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def rnn_markdown(rows: list[dict], cfg: Config) -> str:
    lengths = sorted({r["length"] for r in rows})
    head = (
        f"Recurrent nets (width {cfg.rnn_width}), {cfg.rnn_steps} SGD steps (momentum "
        f"{cfg.momentum:g}, lr {cfg.rnn_learning_rate:g}) of batch {cfg.rnn_batch}, "
        f"{cfg.rnn_seeds} seeds. SGD-C clips at {cfg.rnn_clip_norm:g}; SGD-CR adds Pascanu's Ω "
        f"with α = {cfg.alpha:g}. Success rate (test error below the task's threshold), median "
        "test error in brackets, (d) marks diverged runs.\n\n"
        "| task | model | method | " + " | ".join(f"T = {T}" for T in lengths) + " |\n"
        "|---|---|---|" + "---|" * len(lengths) + "\n"
    )
    lines = []
    seen = []
    for r in rows:
        k = (r["task"], r["model"], r["variant"])
        if k in seen:
            continue
        seen.append(k)
        cells = []
        for T in lengths:
            m = [x for x in rows if (x["task"], x["model"], x["variant"], x["length"]) == k + (T,)]
            if not m:
                cells.append("")
                continue
            x = m[0]
            d = f" ({x['diverged']}d)" if x["diverged"] else ""
            cells.append(f"{x['success_rate']:.2f} [{x['median_test_error']:.3g}]{d}")
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def figure_mlp_accuracy(summary: Mapping, *, ax: Axes | None = None) -> Figure:
    """Horizontal bars: final test accuracy per method, without and with clipping.

    Args:
      summary: the contents of ``summary.json`` (or :func:`run`'s return value): its ``mlp``
        table (:func:`mlp_table`), ``config`` (:class:`Config` as a dict) and ``dataset``.
      ax: axes to draw into (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    rows, cfg, dataset = summary["mlp"], summary["config"], summary["dataset"]
    sgd = [r for r in rows if r["optimizer"] == "SGD"]
    methods = list(dict.fromkeys(r["method"] for r in sgd))
    other = [r for r in rows if r["optimizer"] != "SGD"]
    labels = methods + [f"{r['method']} + {r['optimizer']}" for r in other]
    created = ax is None
    fig, ax = plots.new_axes(ax, figsize=(8, 0.42 * len(labels) + 1.5))
    y = np.arange(len(labels))[::-1]
    c_no, c_clip, c_other = plots.palette(3)
    for i, m in enumerate(methods):
        for r in sgd:
            if r["method"] != m:
                continue
            off, col = (0.2, c_no) if not r["clipping"] else (-0.2, c_clip)
            ax.barh(
                y[i] + off,
                r["final_accuracy_mean"],
                height=0.38,
                color=col,
                xerr=[
                    [r["final_accuracy_mean"] - r["final_accuracy_min"]],
                    [r["final_accuracy_max"] - r["final_accuracy_mean"]],
                ],
                capsize=2,
            )
    for j, r in enumerate(other):
        i = len(methods) + j
        ax.barh(
            y[i],
            r["final_accuracy_mean"],
            height=0.5,
            color=c_other,
            xerr=[
                [r["final_accuracy_mean"] - r["final_accuracy_min"]],
                [r["final_accuracy_max"] - r["final_accuracy_mean"]],
            ],
            capsize=2,
        )
    target = cfg["target_accuracy"]
    ax.axvline(target, color="k", ls="--", lw=1, label=f"target {target:g}")
    ax.axvline(0.1, color="grey", ls=":", lw=1, label="chance (10 classes)")
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Patch(color=c_no, label="SGD"),
        Patch(color=c_clip, label=f"SGD + clipping at {cfg['clip_norm']:g}"),
        Patch(color=c_other, label="sigmoid/Glorot net, other optimisers"),
    ]
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("test accuracy after training (mean, min–max over seeds)")
    ax.set_title(
        f"Depth-{cfg['depth']} MLPs on {dataset}: {cfg['steps']} steps, {cfg['seeds']} seeds"
    )
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    if created:
        fig.tight_layout()
    return fig


def _curve_records(curves: Mapping[str, np.ndarray], prefix: str, fields) -> list[dict]:
    """The curves saved under ``prefix/<f1>/…/<fn>`` keys (the first field may hold ``/``)."""
    out = []
    for key, curve in _io.with_prefix(curves, prefix).items():
        parts = key.split("/")
        if len(parts) < len(fields):
            raise ValueError(
                f"curves key {prefix}/{key!r} does not name {'/'.join(fields)}; files written "
                "before the optimiser was part of the log10_first_over_last keys cannot be "
                "redrawn (their SGD and Rprop curves collided): rerun the study"
            )
        cut = len(parts) - len(fields) + 1
        values = ["/".join(parts[:cut]), *parts[cut:]]
        out.append(dict(zip(fields, values)) | {"curve": curve})
    return out


def _median_curve(records):
    curves = np.stack([r["curve"] for r in records])
    with warnings.catch_warnings():  # a step where every seed had diverged is NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(curves, axis=0)


_MLP_CURVES = {  # quantity -> (key prefix in curves.npz, y label, title)
    "accuracy": (
        "accuracy",
        "test accuracy (median over seeds)",
        "Depth-{depth} MLPs on {dataset}: test accuracy during training",
    ),
    "grad_ratio": (
        "log10_first_over_last",
        r"$\log_{{10}}\|\partial L/\partial\theta_1\| / \|\partial L/\partial\theta_{{{depth}}}\|$",
        "First- vs last-hidden-layer gradient norm during training (0 = no vanishing)",
    ),
}


def figure_mlp_curves(
    summary: Mapping,
    curves: Mapping[str, np.ndarray],
    *,
    quantity: str = "accuracy",
    axes=None,
) -> Figure:
    """One panel per clipping setting: a median-over-seeds curve per method (SGD runs).

    With ``quantity="accuracy"`` the other optimisers' runs (Rprop, the evolution strategy) are
    drawn in black in both panels and the target accuracy as a grey line.

    Args:
      summary: the contents of ``summary.json`` (its ``config`` and ``dataset``).
      curves: the contents of ``curves.npz``: ``steps`` ``(M,)`` and per run
        ``"accuracy/<method>/<optimiser>/clip=<bool>/seed=<int>"`` (test accuracy) and
        ``"log10_first_over_last/<method>/<optimiser>/clip=<bool>/seed=<int>"`` arrays ``(M,)``.
      quantity: ``"accuracy"`` or ``"grad_ratio"`` (log10 first/last hidden-layer gradient).
      axes: 2 axes, without then with clipping (default: a new figure, shared y).

    Returns:
      The Figure drawn into.

    Raises:
      ValueError: for another ``quantity``.
    """
    if quantity not in _MLP_CURVES:
        raise ValueError(f"quantity must be one of {list(_MLP_CURVES)}, got {quantity!r}")
    prefix, ylabel, title = _MLP_CURVES[quantity]
    cfg = summary["config"]
    ylabel = ylabel.format(depth=cfg["depth"])
    title = title.format(depth=cfg["depth"], dataset=summary["dataset"])
    steps = curves["steps"]
    records = _curve_records(curves, prefix, ("method", "optimizer", "clipping", "seed"))
    methods = list(dict.fromkeys(r["method"] for r in records if r["optimizer"] == "SGD"))
    created = axes is None
    fig, axes = plots.new_axes_grid(axes, nrows=1, ncols=2, figsize=(12, 4.5), sharey=True)
    for ax, clip in zip(axes, (False, True)):
        for m, c in zip(methods, plots.palette(len(methods))):
            rs = [
                r
                for r in records
                if r["method"] == m and r["optimizer"] == "SGD" and r["clipping"] == f"clip={clip}"
            ]
            if rs:
                ax.plot(steps, _median_curve(rs), color=c, label=m, lw=1.6)
        if quantity == "accuracy":
            others = list(dict.fromkeys(r["optimizer"] for r in records if r["optimizer"] != "SGD"))
            for o, ls in zip(others, ("--", ":")):
                rs = [r for r in records if r["optimizer"] == o]
                ax.plot(
                    steps,
                    _median_curve(rs),
                    color="k",
                    ls=ls,
                    lw=1.2,
                    label=f"sigmoid/Glorot + {o}",
                )
            ax.axhline(cfg["target_accuracy"], color="grey", lw=0.8)
        ax.set_title(f"SGD {'with' if clip else 'without'} clipping")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    if quantity == "grad_ratio":
        for ax in axes:
            ax.axhline(0.0, color="k", lw=0.8)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if created:
        fig.suptitle(title)
        fig.tight_layout()
    return fig


def figure_rnn_success(summary: Mapping, *, axes=None) -> Figure:
    """Success rate vs sequence length: one panel per (task, model), one line per variant.

    Args:
      summary: the contents of ``summary.json`` (or :func:`run`'s return value): its ``rnn``
        table (:func:`rnn_table`) and ``config``.
      axes: ``tasks × models`` axes, row-major (default: a new figure, shared x and y).

    Returns:
      The Figure drawn into.
    """
    rows, cfg = summary["rnn"], summary["config"]
    task_names = list(dict.fromkeys(r["task"] for r in rows))
    kinds = list(dict.fromkeys(r["model"] for r in rows))
    created = axes is None
    fig, axes = plots.new_axes_grid(
        axes,
        nrows=len(task_names),
        ncols=len(kinds),
        figsize=(3.6 * len(kinds), 3.0 * len(task_names)),
        sharex=True,
        sharey=True,
    )
    axes = np.reshape(axes, (len(task_names), len(kinds)))
    for i, tn in enumerate(task_names):
        for j, kind in enumerate(kinds):
            ax = axes[i, j]
            span = max(r["length"] for r in rows) - min(r["length"] for r in rows) or 1
            for n, (v, c, mk) in enumerate(zip(RNN_VARIANTS, plots.palette(3), ("o", "s", "^"))):
                rs = sorted(
                    (r for r in rows if (r["task"], r["model"], r["variant"]) == (tn, kind, v)),
                    key=lambda r: r["length"],
                )
                # a small horizontal offset per method keeps coinciding points visible
                ax.plot(
                    [r["length"] + (n - 1) * 0.015 * span for r in rs],
                    [r["success_rate"] for r in rs],
                    marker=mk,
                    color=c,
                    label=v,
                    lw=1.5,
                    alpha=0.85,
                )
            ax.set_title(f"{kind} — {tn.replace('_', ' ')}", fontsize=10)
            ax.set_xticks(sorted({r["length"] for r in rows}))
            ax.set_ylim(-0.05, 1.05)
            ax.grid(alpha=0.3)
            if i == len(task_names) - 1:
                ax.set_xlabel("sequence length T")
            if j == 0:
                ax.set_ylabel("success rate")
    axes[0, -1].legend(fontsize=8, loc="best")
    if created:
        fig.suptitle(
            f"Long-term dependencies: fraction of {cfg['rnn_seeds']} seeds solving the task "
            f"({cfg['rnn_steps']} steps)"
        )
        fig.tight_layout()
    return fig


def figure_rnn_state_grads(curves: Mapping[str, np.ndarray], *, axes=None) -> Figure:
    """‖∂E/∂h_t‖ over t at the end of training (SGD-C), longest length, one panel per task.

    Args:
      curves: the contents of ``curves.npz``: per run
        ``"state_grads/<task>/<model>/<variant>/T=<int>/seed=<int>"`` arrays ``(2, T + 1)``,
        before and after training.
      axes: one axes per task (default: a new figure).

    Returns:
      The Figure drawn into.
    """
    fields = ("task", "model", "variant", "length", "seed")
    records = _curve_records(curves, "state_grads", fields)
    for r in records:
        r["length"] = int(r["length"].removeprefix("T="))
    T = max(r["length"] for r in records)
    task_names = list(dict.fromkeys(r["task"] for r in records))
    kinds = list(dict.fromkeys(r["model"] for r in records))
    created = axes is None
    fig, axes = plots.new_axes_grid(
        axes, nrows=1, ncols=len(task_names), figsize=(6 * len(task_names), 4)
    )
    for ax, tn in zip(axes, task_names):
        for kind, c in zip(kinds, plots.palette(len(kinds))):
            rs = [
                r
                for r in records
                if (r["task"], r["model"], r["variant"], r["length"]) == (tn, kind, "SGD-C", T)
            ]
            for when, ls, m in (("start", ":", 0), ("end", "-", -1)):
                g = np.stack([r["curve"][m] for r in rs])
                g = np.log10(np.maximum(g, np.finfo(np.float32).tiny))
                ax.plot(np.arange(T + 1), np.median(g, 0), color=c, ls=ls, label=f"{kind}, {when}")
        ax.set_xlabel("time step t (T = readout)")
        ax.set_ylabel(r"$\log_{10}\|\partial E/\partial h_t\|$")
        ax.set_title(f"{tn.replace('_', ' ')}, T = {T}, SGD-C")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    if created:
        fig.suptitle(
            "Error signal reaching each time step: before training (dotted) and after (solid)"
        )
        fig.tight_layout()
    return fig


def _figures(summary: Mapping, curves: Mapping[str, np.ndarray]) -> dict[str, Figure]:
    return {
        "mlp_accuracy": figure_mlp_accuracy(summary),
        "mlp_learning_curves": figure_mlp_curves(summary, curves, quantity="accuracy"),
        "mlp_grad_ratio": figure_mlp_curves(summary, curves, quantity="grad_ratio"),
        "rnn_success": figure_rnn_success(summary),
        "rnn_state_grads": figure_rnn_state_grads(curves),
    }


def figures(out_dir) -> dict[str, Figure]:
    """Redraws every figure of :func:`run` from the numbers it saved in ``out_dir/mitigations``.

    Args:
      out_dir: the directory given to :func:`run`.

    Returns:
      ``{file stem: Figure}``, the stems of the PNG/PDF files :func:`run` wrote.
    """
    out = Path(out_dir) / NAME
    return _figures(_io.load_json(out / "summary.json"), _io.load_npz(out / "curves.npz"))


# --------------------------------------------------------------------------------------------


def run(out_dir, *, full: bool = False, config: Config | None = None) -> dict:
    """Runs parts (a) and (b), writes tables, figures and numbers to ``out_dir/mitigations``.

    Args:
      out_dir: output directory.
      full: paper-sized :data:`FULL` instead of :data:`QUICK`.
      config: explicit :class:`Config` (overrides ``full``; the tests use a tiny one).

    Returns:
      A JSON-able summary (dataset, configuration, both tables).
    """
    cfg = config or (FULL if full else QUICK)
    mode = "full" if cfg == FULL else ("quick" if cfg == QUICK else "custom")
    out = Path(out_dir) / NAME
    data = tasks.image_classification()
    progress.stage("part (a): training the deep MLPs")
    mlp_records, steps = run_mlp(cfg, data)
    mlp_rows = mlp_table(mlp_records, cfg)
    progress.stage("part (b): training the RNNs on the long-lag tasks")
    rnn_records = run_rnn(cfg)
    rnn_rows = rnn_table(rnn_records)

    md_mlp = mlp_markdown(mlp_rows, cfg, data.name)
    md_rnn = rnn_markdown(rnn_rows, cfg)
    _write_text(out / "mlp.csv", _csv(mlp_rows))
    _write_text(out / "rnn.csv", _csv(rnn_rows))
    _write_text(
        out / "table.md",
        f"# Mitigations ({mode} mode)\n\n## (a) Deep MLPs\n\n{md_mlp}\n"
        f"## (b) Long-term dependencies\n\n{md_rnn}",
    )
    run_key = "{method}/{optimizer}/clip={clipping}/seed={seed}"
    curves = (
        {"steps": steps}
        | {f"accuracy/{run_key.format(**r)}": r["_acc_curve"] for r in mlp_records}
        | {
            # keyed by optimiser too: Rprop's runs share method, clipping and seed with SGD's
            f"log10_first_over_last/{run_key.format(**r)}": r["_ratio_curve"]
            for r in mlp_records
            if r["_ratio_curve"] is not None
        }
        | {
            "state_grads/{task}/{model}/{variant}/T={length}/seed={seed}".format(**r): r[
                "_state_grads"
            ]
            for r in rnn_records
        }
    )
    _io.save_npz(curves, out / "curves.npz")
    summary = {
        "mode": mode,
        "dataset": data.name,
        "config": cfg._asdict(),
        "mlp": mlp_rows,
        "rnn": rnn_rows,
    }
    for name, fig in _figures(summary, curves).items():
        _io.save_figure(fig, out / f"{name}.png")
    _io.save_json(summary, out / "summary.json")
    return summary
