"""The training runs: every (optimiser, init, learning rate, seed) of one depth in one program.

One program (:func:`init_program`) draws every depth's, init's and seed's parameters by ``vmap``
over the seeds' keys and measures χ₁ at initialisation; then, per depth, one program
(:func:`train_program`) trains every (optimiser, init, rate, seed) instance in one ``vmap`` of
:func:`gradflow.train.make_fit`, SGD and Adam side by side (:func:`sgd_or_adam`). A seed's key
fixes its parameters' random numbers (shared by the inits: N(0, 1/N), Kumar, critical and
Yilmaz–Poli are scaled/shifted copies of one normal draw, Glorot a uniform draw from the same key)
and its minibatch order (shared by every optimiser, init and rate): the comparisons are paired.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradflow import jacobians, models, tasks, train
from gradflow.experiments._compile import compile_pool
from gradflow.experiments.init_training.settings import INITS, OPTIMIZERS, InitSpec, Settings

__all__ = [
    "Split",
    "split",
    "RunOutputs",
    "model_for",
    "empirical_chi1",
    "train_one",
    "seed_keys",
    "batch_indices",
    "sgd_or_adam",
    "init_program",
    "train_program",
    "run_groups",
]


class Split(NamedTuple):
    """Training (minus validation), validation and test arrays of one image task.

    Attributes:
      x_fit, y_fit: ``(N_fit, d)``, ``(N_fit,)``: what the networks train on.
      x_val, y_val: ``(N_val, d)``, ``(N_val,)``: held out of the training split; chooses the rate.
      x_test, y_test: ``(N_test, d)``, ``(N_test,)``: every reported accuracy.
      n_classes: number of classes.
    """

    x_fit: np.ndarray
    y_fit: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int


def split(data: tasks.ImageData, validation_fraction: float) -> Split:
    """The first ``validation_fraction`` of the (already shuffled) training rows as validation."""
    n_val = int(round(validation_fraction * len(data.x_train)))
    if not 0 < n_val < len(data.x_train):
        raise ValueError(
            f"validation_fraction={validation_fraction} leaves no validation or no training rows "
            f"of {len(data.x_train)}"
        )
    return Split(
        data.x_train[n_val:],
        data.y_train[n_val:],
        data.x_train[:n_val],
        data.y_train[:n_val],
        data.x_test,
        data.y_test,
        data.n_classes,
    )


class RunOutputs(NamedTuple):
    """One training run (leading axes added by ``vmap``). M monitored steps, L = depth + 1 layers.

    Attributes:
      test_accuracy: ``(M,)`` test accuracy at each monitored step (before that step's update).
      final_test_accuracy: scalar, after the last step.
      final_val_accuracy: scalar, after the last step.
      grad_log10_at_init: ``(L,)`` log10 ‖∂L/∂θ_l‖ at step 0 (first minibatch), input layer first,
        readout last; computed in log form, so finite where the float32 norm would underflow.
      diverged: bool, whether the loss or a gradient became non-finite.
    """

    test_accuracy: jax.Array
    final_test_accuracy: jax.Array
    final_val_accuracy: jax.Array
    grad_log10_at_init: jax.Array
    diverged: jax.Array


def model_for(spec: InitSpec, depth: int, width: int, n_classes: int) -> models.MLP:
    """The logistic-sigmoid MLP of ``depth`` hidden layers with ``spec``'s init on every layer."""
    return models.MLP(
        width=width,
        depth=depth,
        activation="sigmoid",
        kernel_init=spec.make(),
        out_features=n_classes,
    )


def empirical_chi1(model: models.MLP, params, xs) -> jax.Array:
    """Mean ‖J_k‖_F²/N over the hidden-to-hidden Jacobians J_k and the inputs ``xs``.

    The finite-width estimate of the mean-field χ₁ = σ_w² E[φ'(z)²] (Poole et al. 2016,
    arXiv:1606.05340, eq. 7), to which it converges for zero-mean weights as N → ∞; for weights
    with a mean (Yilmaz–Poli) it is still the mean squared singular value of one layer's Jacobian.

    Args:
      model: the MLP (depth >= 2).
      params: its parameters.
      xs: inputs ``(k, d)``.

    Returns:
      Scalar.
    """

    def one(x):
        jac = jacobians.step_jacobians(model.chain(params, x))  # (depth − 1, N, N)
        return jnp.mean(jnp.sum(jac**2, axis=(1, 2))) / jac.shape[-1]

    return jnp.mean(jax.vmap(one)(xs))


def sgd_or_adam(learning_rate, use_adam) -> optax.GradientTransformation:
    """Plain SGD (:func:`gradflow.train.sgd`) or Adam (:func:`gradflow.train.adam`), chosen by a
    (possibly traced) bool, so runs with either optimiser share one ``vmap``.

    Both optimisers' updates are computed and one is selected with ``jnp.where``: the selected
    update is exactly that optimiser's (tests/test_init_training.py checks it bitwise); the other
    costs only elementwise work next to the network's matrix products.

    Args:
      learning_rate: scalar (may be traced).
      use_adam: bool scalar (may be traced).
    """
    sgd, adam = train.sgd(learning_rate), train.adam(learning_rate)

    def init(params):
        return sgd.init(params), adam.init(params)

    def update(grads, state, params=None):
        u_sgd, s_sgd = sgd.update(grads, state[0], params)
        u_adam, s_adam = adam.update(grads, state[1], params)
        updates = jax.tree_util.tree_map(lambda a, b: jnp.where(use_adam, b, a), u_sgd, u_adam)
        return updates, (s_sgd, s_adam)

    return optax.GradientTransformation(init, update)


def train_one(
    model: models.MLP,
    data: Split,
    use_adam,
    learning_rate,
    params,
    batch_idx,
    *,
    monitor_every: int,
) -> RunOutputs:
    """Trains one network on ``data`` (softmax cross-entropy on minibatches of ``x_fit``).

    Pure and ``vmap``-able over ``learning_rate``, ``params`` and ``batch_idx``.

    Args:
      model: the MLP (its ``apply``; its initialiser is not used).
      data: the split, closed over as constants.
      use_adam: bool (may be traced): Adam, or plain SGD (no momentum); see :func:`sgd_or_adam`.
      learning_rate: scalar (may be traced).
      params: initial parameters.
      batch_idx: int array ``(steps, batch)`` of rows of ``x_fit``.
      monitor_every: record the test accuracy every this many steps.

    Returns:
      :class:`RunOutputs`.
    """
    xf, yf = jnp.asarray(data.x_fit), jnp.asarray(data.y_fit)
    xv, yv = jnp.asarray(data.x_val), jnp.asarray(data.y_val)
    xt, yt = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

    def loss(p, idx):
        return tasks.cross_entropy(model.apply(p, xf[idx]), yf[idx])

    def accuracy(p, x, y):
        return jnp.mean(jnp.argmax(model.apply(p, x), -1) == y)

    def test_accuracy(p):
        return accuracy(p, xt, yt)

    opt = sgd_or_adam(learning_rate, use_adam)
    run = train.make_fit(loss, opt, monitor_every=monitor_every, eval_fn=test_accuracy)
    res = run(params, batch_idx)
    return RunOutputs(
        test_accuracy=res.history.metrics,
        final_test_accuracy=res.final_metrics,
        # Only the final validation accuracy chooses the rate: no curve (it would cost a
        # forward pass over the validation set at every monitored step).
        final_val_accuracy=accuracy(res.params, xv, yv),
        grad_log10_at_init=res.history.layer_grad_log10_norms[0],
        diverged=res.divergence.diverged,
    )


def seed_keys(seeds: int) -> jax.Array:
    """One key per seed (seed s's key is the same whatever the number of seeds)."""
    return jax.vmap(lambda s: jax.random.fold_in(jax.random.key(0), s))(jnp.arange(seeds))


def batch_indices(keys, steps: int, batch: int, n_rows: int) -> jax.Array:
    """Each seed's minibatch rows, drawn with replacement: int array ``(seeds, steps, batch)``."""
    return jax.vmap(
        lambda k: jax.random.randint(jax.random.fold_in(k, 1), (steps, batch), 0, n_rows)
    )(keys)


def init_program(st: Settings, data: Split):
    """``(fn, args)``: ``fn(*args)`` draws every depth's, init's and seed's parameters and their
    empirical χ₁: a tuple over depths of ``(params with leading axes (inits, seeds), chi1
    (inits, seeds))``.

    Seed s's parameters use ``fold_in(key_s, 0)`` whatever the depth or init (its minibatches use
    ``fold_in(key_s, 1)``).
    """
    chi1_x = jnp.asarray(data.x_test[: st.chi1_inputs])
    x0 = jnp.asarray(data.x_fit[:1])
    nets = {d: [model_for(s, d, st.width, data.n_classes) for s in INITS] for d in st.depths}

    def fn(keys):
        pkeys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
        out = []
        for d in st.depths:
            drawn = [jax.vmap(lambda k, m=m: m.init(k, x0))(pkeys) for m in nets[d]]
            params = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *drawn)  # (I, S, …)
            chi1 = jax.vmap(jax.vmap(lambda p, m=nets[d][0]: empirical_chi1(m, p, chi1_x)))
            out.append((params, chi1(params)))
        return tuple(out)

    return fn, (seed_keys(st.seeds),)


def train_program(st: Settings, depth: int, data: Split, params):
    """``(fn, args)``: ``fn(*args)`` trains every (optimiser, init, rate, seed) of one depth.

    Args:
      st: checked settings (equal-length rate grids).
      depth: hidden layers.
      data: the split.
      params: initial parameters with leading axes (inits, seeds) (from :func:`init_program`).

    Returns:
      ``fn`` returns :class:`RunOutputs` with leading axes (optimisers, inits, rates, seeds) in
      the order of :data:`~gradflow.experiments.init_training.settings.OPTIMIZERS`.
    """
    net = model_for(INITS[0], depth, st.width, data.n_classes)  # apply only: no init used
    keys = seed_keys(st.seeds)
    idx = batch_indices(keys, st.steps, st.batch, len(data.x_fit))
    rates = jnp.asarray([st.rates(o) for o in OPTIMIZERS], jnp.float32)  # (O, R)

    def fn(params, idx, rates):
        n_o, n_r = rates.shape
        n_i, n_s = jax.tree_util.tree_leaves(params)[0].shape[:2]
        shape = (n_o, n_i, n_r, n_s)

        def spread(a, axes):  # broadcast to (O, I, R, S, …) and flatten the instance axes
            a = jnp.expand_dims(a, axes)
            return jnp.broadcast_to(a, shape + a.shape[4:]).reshape((-1,) + a.shape[4:])

        p_all = jax.tree_util.tree_map(lambda a: spread(a, (0, 2)), params)
        lr_all = spread(rates, (1, 3))
        adam_all = spread(jnp.asarray([o == "adam" for o in OPTIMIZERS]), (1, 2, 3))
        idx_all = spread(idx, (0, 1, 2))

        def one(use_adam, lr, p, bidx):
            return train_one(net, data, use_adam, lr, p, bidx, monitor_every=st.monitor_every)

        out = jax.vmap(one)(adam_all, lr_all, p_all, idx_all)
        return jax.tree_util.tree_map(lambda a: a.reshape(shape + a.shape[1:]), out)

    return fn, (params, idx, rates)


def run_groups(st: Settings, data: Split, on_stage=None) -> dict:
    """Draws the parameters and trains every depth, compiling and running on a thread pool.

    Every program is traced on the calling thread, then compiled on :func:`compile_pool`'s
    threads: the training programs are lowered from the parameters' shapes alone, so they
    compile while the parameters are being drawn, and two programs compile or run at a time.
    Each program is the one ``jax.jit`` would compile, so the numbers are those of a
    sequential run.

    Args:
      st: checked settings.
      data: the split.
      on_stage: optional ``f(text)`` for progress.

    Returns:
      ``{depth: (RunOutputs as NumPy (optimisers, inits, rates, seeds, …), chi1 (inits,
      seeds))}``.
    """
    say = on_stage or (lambda text: None)
    init_fn, init_args = init_program(st, data)
    lowered_init = jax.jit(init_fn).lower(*init_args)
    # Drawing parameters is cheap to run but its random-number code is slow to optimise on
    # CPU (18 s for one MLP's init); XLA's -O0 backend compiles it in a fraction of that.
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    with compile_pool() as pool:
        say(f"drawing {len(INITS)} inits × {st.seeds} seeds at depths {list(st.depths)}")
        drawn = pool.submit(
            lambda: jax.block_until_ready(lowered_init.compile(options)(*init_args))
        )
        compiled = []
        for d, (shapes, _) in zip(st.depths, lowered_init.out_info):
            say(f"compiling depth {d}")
            fn, (_, *args) = train_program(st, d, data, shapes)
            compiled.append((pool.submit(jax.jit(fn).lower(shapes, *args).compile), args))
        drawn = drawn.result()
        say("training")
        runs = [
            pool.submit(lambda c=c, a=a, p=p: jax.block_until_ready(c.result()(p, *a)))
            for (c, a), (p, _) in zip(compiled, drawn)
        ]
        results = [jax.device_get(r.result()) for r in runs]
    return {d: (res, np.asarray(c)) for d, res, (_, c) in zip(st.depths, results, drawn)}
