"""The study's training runs: part (a), deep MLPs on images, and part (b), recurrent nets on the
long-lag tasks, each returning one record (a dict) per run.

Every run of one architecture is ``vmap``-ed into one compiled program (16 in the quick mode).
:func:`start_mlp` and :func:`start_rnn` prepare and trace each program on the calling thread
(under its JAX settings) and hand its compilation and run to a thread pool
(:func:`compile_pool`), returning a :class:`Pending` whose :meth:`Pending.collect` waits for
the runs. One program's run then overlaps the next one's compilation, and two runs overlap each
other, which JAX's asynchronous dispatch from a single thread does not do on a CPU. Each program
is the one ``jax.jit`` would compile, so the numbers are those of a sequential run, bit for bit.
On 2 otherwise idle cores the quick mode takes 134 s instead of 167 s: the cores are then busy
(1.9 of 2) and compiling takes about as long as running.
"""

from __future__ import annotations

import math
import warnings
from concurrent.futures import Executor

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradflow import gradient_free, gradients, models, tasks, train
from gradflow.chain import final_state
from gradflow.experiments._compile import Pending, compile_pool
from gradflow.experiments.mitigations.settings import (
    RNN_VARIANTS,
    Config,
    mlp_model,
    mlp_variants,
)
from gradflow.train.amplification import amplify
from gradflow.train.pretraining import make_pretrain

__all__ = [
    "Pending",
    "compile_pool",
    "start_mlp",
    "start_rnn",
    "run_mlp",
    "run_rnn",
    "nanmedian",
]


def _init(model, key, x):
    """``model.init`` without running the forward pass (eagerly: jitting every initialiser would
    compile one program per configuration, which costs more on CPU than the whole run)."""
    return model.lazy_init(key, jax.ShapeDtypeStruct(x.shape, x.dtype))


def _stack(trees):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


# --------------------------------------------------------------------------------------------
# (a) deep MLPs
# --------------------------------------------------------------------------------------------


def _mlp_fns(model, data):
    """Loss on a batch of training indices, and test accuracy (data closed over as constants)."""
    xtr, ytr = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    xte, yte = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

    def loss(params, idx):
        return tasks.cross_entropy(model.apply(params, xtr[idx]), ytr[idx])

    def accuracy(params):
        return jnp.mean(jnp.argmax(model.apply(params, xte), -1) == yte)

    return loss, accuracy


def _first_over_last(norms):
    """log10 ‖∂L/∂θ_1‖ / ‖∂L/∂θ_depth‖: first vs last *hidden* layer (the readout is index −1).

    −inf where the first layer's gradient underflowed to exactly zero (float32 sigmoid nets).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(norms[..., 0] / norms[..., -2])


def nanmedian(xs) -> float:
    """The median of the non-NaN values of ``xs`` (any shape), NaN if there are none."""
    xs = np.asarray(xs, np.float64)
    return float(np.median(xs[~np.isnan(xs)])) if (~np.isnan(xs)).any() else float("nan")


def _steps_to(acc, steps, target):
    hit = acc >= target
    return float(steps[np.argmax(hit)]) if hit.any() else float("nan")


def _log10_layers(norms):
    """log10 of the per-layer gradient norms ``(M, L)`` at the first monitored step and at the
    end (median of the last three records, as the ratio's): array ``(2, L)``."""
    with np.errstate(divide="ignore"):
        logs = np.log10(np.asarray(norms, np.float64))
    with warnings.catch_warnings():  # a layer NaN at all three steps (diverged) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.stack([logs[0], np.nanmedian(logs[-3:], axis=0)])


def _record(label, method, clip, seed, acc_curve, steps, final_acc, norms, diverged, div_step, cfg):
    ratio = _first_over_last(norms) if norms is not None else None
    layers = _log10_layers(norms) if norms is not None else None
    return {
        "method": label,
        "optimizer": method,
        "clipping": bool(clip),
        "seed": int(seed),
        "final_accuracy": float(final_acc),
        "steps_to_target": _steps_to(acc_curve, steps, cfg.target_accuracy),
        "log10_first_over_last_start": float(ratio[0]) if ratio is not None else float("nan"),
        "log10_first_over_last_end": nanmedian(ratio[-3:]) if ratio is not None else float("nan"),
        # the input layer's own gradient norm: where the vanishing gradient bites
        "log10_grad_input_start": float(layers[0, 0]) if layers is not None else float("nan"),
        "log10_grad_input_end": float(layers[1, 0]) if layers is not None else float("nan"),
        "diverged": bool(diverged),
        "divergence_step": int(div_step),
        "_acc_curve": np.asarray(acc_curve),
        "_ratio_curve": ratio,
        "_layer_grads": layers,
    }


def _fit_records(label, method, runs, steps, cfg):
    """``to_records`` of a vmapped ``make_fit`` run: ``runs`` lists (clip, seed) per instance."""

    def to_records(res):
        return [
            _record(
                label(i),
                method,
                clip,
                seed,
                res.history.metrics[i],
                steps,
                res.final_metrics[i],
                res.history.layer_grad_norms[i],
                res.divergence.diverged[i],
                res.divergence.step[i],
                cfg,
            )
            for i, (clip, seed) in enumerate(runs)
        ]

    return to_records


def start_mlp(cfg: Config, data: tasks.ImageData, pool: Executor) -> tuple[Pending, np.ndarray]:
    """Starts part (a) on ``pool`` (see :func:`compile_pool`); returns the pending runs and the
    step grid (see :func:`run_mlp`)."""
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
    pending = Pending([], [])
    steps = np.arange(0, cfg.steps, cfg.monitor_every)

    groups: dict = {}
    for v in variants:
        groups.setdefault(v.arch, []).append(v)
    for arch_variants in groups.values():
        inst = [(v, c, s) for v in arch_variants for c in clips for s in range(cfg.seeds)]
        fn, args, wrap = _sgd_runs(cfg, data, inst, seed_keys, idx)
        to_records = _fit_records(
            lambda i, inst=inst: inst[i][0].label,
            "SGD",
            [(math.isfinite(c), s) for _, c, s in inst],
            steps,
            cfg,
        )
        pending.add(pool, fn, args, wrap(to_records))
    if cfg.baselines:
        _start_baselines(cfg, data, seed_keys, idx, steps, pending, pool)
    return pending, steps


def _sgd_runs(cfg, data, inst, seed_keys, idx):
    """SGD on every (variant, clipping, seed) of ``inst`` (variants of one architecture):
    ``(fn, args, wrap)`` of one vmapped run; ``wrap(to_records)`` adapts a FitResult's records
    to ``fn``'s outputs (a FitResult and the pre-training losses)."""
    xtr = jnp.asarray(data.x_train)
    model = mlp_model(cfg, inst[0][0], data.n_classes)
    loss, accuracy = _mlp_fns(model, data)
    # One draw per (variant, seed), shared by both clipping settings: eager initialisation is
    # op-by-op dispatch, a noticeable cost at 40 nets of 20 layers.
    drawn = {}
    for v, _, s in inst:
        if (v.label, s) not in drawn:
            drawn[v.label, s] = _init(mlp_model(cfg, v, data.n_classes), seed_keys[s], xtr[:2])
    params = _stack([drawn[v.label, s] for v, _, s in inst])
    amplified = any(v.amplify for v, _, _ in inst)
    # Pre-training runs once per (variant, seed), inside this program, before the fine-tuning
    # runs that start from it (both clipping settings).
    pairs = list(dict.fromkeys((v.label, s) for v, _, s in inst if v.pretrain))
    first = [next(i for i, (v, _, s) in enumerate(inst) if (v.label, s) == p) for p in pairs]
    dst = [i for i, (v, _, _) in enumerate(inst) if v.pretrain]
    src = [pairs.index((v.label, s)) for v, _, s in inst if v.pretrain]
    pre_run = pairs and make_pretrain(
        model,
        steps=cfg.pretrain_steps,
        batch=cfg.pretrain_batch,
        method=cfg.pretrain_method,
        optimizer=optax.adam(cfg.pretrain_learning_rate),
    )
    # Basodi et al.'s "epoch": one pass over the training set
    epoch = max(1, round(xtr.shape[0] / cfg.batch))
    amp_stop = max(1, round(cfg.amp_until * cfg.steps))

    def one(p, batch_idx, clip, factor, amp_key):
        opt = train.sgd(cfg.learning_rate, momentum=cfg.momentum, clip_norm=clip)
        if amplified:
            # factor 1 for the other variants: exactly the plain SGD update
            amp = amplify(
                factor,
                layers=lambda name: name != "readout",
                fraction=cfg.amp_fraction,
                key=amp_key,
                active=(0, amp_stop),
                redraw_every=epoch,
            )
            opt = optax.chain(amp, opt)
        run = train.make_fit(loss, opt, monitor_every=cfg.monitor_every, eval_fn=accuracy)
        return run(p, batch_idx)

    def fn(p, batch_idx, clip, factor, amp_key, pre_keys):
        losses = None
        if pairs:
            take = jnp.array(first)
            pre = jax.vmap(pre_run, (0, None, 0))(
                jax.tree_util.tree_map(lambda a: a[take], p), xtr, pre_keys
            )
            into, frm = jnp.array(dst), jnp.array(src)
            p = jax.tree_util.tree_map(lambda a, b: a.at[into].set(b[frm]), p, pre.params)
            losses = pre.losses
        return jax.vmap(one)(p, batch_idx, clip, factor, amp_key), losses

    def wrap(to_records):
        def records(out):
            res, losses = out
            recs = to_records(res)
            for r, (v, _, s) in zip(recs, inst):
                if v.pretrain:
                    r["_pretrain_losses"] = losses[pairs.index((v.label, s))]
            return recs

        return records

    args = (
        params,
        idx[jnp.array([s for _, _, s in inst])],
        jnp.array([c for _, c, _ in inst]),
        jnp.array([cfg.amp_factor if v.amplify else 1.0 for v, _, _ in inst]),
        # unused placeholders where a group has neither mitigation
        jnp.stack([jax.random.fold_in(seed_keys[s], 5) for _, _, s in inst])
        if amplified
        else jnp.zeros((len(inst),), jnp.uint32),
        jnp.stack([jax.random.fold_in(seed_keys[s], 4) for _, s in pairs])
        if pairs
        else jnp.zeros((0,), jnp.uint32),
    )
    return fn, args, wrap


def _start_baselines(cfg, data, seed_keys, idx, steps, pending, pool):
    """Sign-based Rprop and the gradient-free baseline, on the hardest net: sigmoid, Glorot."""
    xtr = jnp.asarray(data.x_train)
    base = mlp_variants()[0]
    model = mlp_model(cfg, base, data.n_classes)
    loss, accuracy = _mlp_fns(model, data)
    params = _stack([_init(model, k, xtr[:2]) for k in seed_keys])
    if cfg.rprop_batch is None:
        big = jnp.broadcast_to(jnp.arange(xtr.shape[0]), (cfg.seeds, cfg.steps, xtr.shape[0]))
        rprop = "Rprop (full batch)"
    else:
        big = jnp.stack(
            [
                jax.random.randint(
                    jax.random.fold_in(k, 3), (cfg.steps, cfg.rprop_batch), 0, xtr.shape[0]
                )
                for k in seed_keys
            ]
        )
        rprop = f"Rprop (batch {cfg.rprop_batch})"

    def rprop_one(p, batch_idx):
        opt = train.rprop(cfg.rprop_learning_rate)
        return train.make_fit(loss, opt, monitor_every=cfg.monitor_every, eval_fn=accuracy)(
            p, batch_idx
        )

    seeds = range(cfg.seeds)
    pending.add(
        pool,
        jax.vmap(rprop_one),
        (params, big),
        _fit_records(lambda i: base.label, rprop, [(False, s) for s in seeds], steps, cfg),
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

    def es_records(res):
        es = f"evolution strategy (pop. {2 * cfg.es_population})"
        return [
            _record(
                base.label,
                es,
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
            for s in seeds
        ]

    es_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(seed_keys)
    pending.add(pool, jax.vmap(es_one), (params, idx, es_keys), es_records)


def run_mlp(cfg: Config, data: tasks.ImageData) -> tuple[list[dict], np.ndarray]:
    """Part (a): returns one record per (variant, optimiser, clipping, seed) and the step grid."""
    with compile_pool() as pool:
        pending, steps = start_mlp(cfg, data, pool)
        return pending.collect(), steps


# --------------------------------------------------------------------------------------------
# (b) recurrent nets
# --------------------------------------------------------------------------------------------


def _rnn_model(kind: str, width: int, out: int):
    if kind == "RNN":
        return models.RNN(width=width, activation="tanh", out_features=out)
    if kind == "LSTM":
        return models.LSTM(width=width, out_features=out)
    if kind == "GRU":
        return models.GRU(width=width, out_features=out)
    raise ValueError(f"model must be 'RNN', 'LSTM' or 'GRU', got {kind!r}")


def _recurrent_runs(cfg: Config, task: tasks.SequenceTask, kind: str, lengths: tuple):
    """All (length, variant, seed) runs of one model on one task, in one compiled ``vmap``:
    ``(fn, args, to_records)``."""
    t_max = max(lengths)
    model = _rnn_model(kind, cfg.rnn_width, task.out_features)
    final_loss = train.pascanu.final_state_loss(model, task.loss)
    readout = model.readout

    def outputs_and_chain(params, u, start):
        chain = tasks.masked_chain(model.chain(params, u), tasks.active_steps(t_max, start))
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
    # The initial parameters depend on the seed alone: draw each once.
    drawn = [_init(model, jax.random.fold_in(k, 0), u0) for k in seed_keys]
    args = (
        _stack([drawn[s] for _, _, s in inst]),
        jnp.array([t_max - T for T, _, _ in inst]),
        jnp.array([variants[v][0] for _, v, _ in inst]),
        jnp.array([variants[v][1] for _, v, _ in inst]),
        jnp.stack([jax.random.fold_in(seed_keys[s], 1 + T) for T, _, s in inst]),
    )

    def to_records(res):
        errors, diverged, state_grads = res
        out = []
        for i, (T, v, s) in enumerate(inst):
            err = float(errors[i])
            div = bool(diverged[i])
            sg = state_grads[i]  # (2, t_max + 1), before/after training; the task's: last T + 1
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

    return jax.vmap(one), args, to_records


def start_rnn(cfg: Config, pool: Executor) -> Pending:
    """Starts part (b) on ``pool`` (see :func:`compile_pool` and :func:`run_rnn`)."""
    pending = Pending([], [])
    groups = [tuple(cfg.lengths)] if cfg.share_lengths else [(T,) for T in cfg.lengths]
    for name in cfg.rnn_tasks:
        task = tasks.get(name)
        for kind in cfg.rnn_models:
            for lengths in groups:
                pending.add(pool, *_recurrent_runs(cfg, task, kind, lengths))
    return pending


def run_rnn(cfg: Config) -> list[dict]:
    """Part (b): one record per (task, model, length, variant, seed)."""
    with compile_pool() as pool:
        return start_rnn(cfg, pool).collect()
