"""Training with gradient monitors: a jitted optax loop that records why training works or fails.

:func:`fit` runs an optax optimiser for S steps inside one ``lax.scan`` and records, every
``monitor_every`` steps, the per-layer gradient norms ‖∂L/∂θ_l‖ (the same numbers as
:func:`gradflow.gradients.layer_grad_norms`), the per-layer update/parameter ratios ‖Δθ_l‖/‖θ_l‖,
the per-layer parameter norms, the global gradient norm, the loss at every step, optional metrics
(``eval_fn``) and, for recurrent models, the per-time-step state-gradient norms ‖∂L/∂h_t‖
(``state_grad_fn``, e.g. from :func:`recurrent_state_grad_fn`). The per-layer records are
:class:`gradflow.monitor.GradStats` from :func:`gradflow.monitor.stats_from_norms`, the code
``monitor.grad_stats`` and the optax monitor run in a hand-written loop.

Batches may be stacked (a pytree with a leading axis of S steps), come from an iterator, or be
generated inside the compiled loop by ``batch_fn(key, step)``; streamed runs go in segments of
one compiled ``lax.scan`` each, so memory does not grow with the number of steps, with an
optional progress bar and a per-monitored-step ``callback(step, StepStats)``.
:meth:`History.to_dataframe` gives the records as a pandas table.

Divergence is detected inside the scan: from the first step whose loss is non-finite or whose
gradient has a non-finite (or, with ``max_grad_norm``, too large) layer norm, no update is applied
and every later loss is recorded as NaN — the loop never trains on NaNs. :func:`fit` then raises
:class:`DivergenceError` naming the step and the layer where it started; :func:`make_fit` returns
the pure, ``vmap``-able loop that reports the same thing in :class:`Divergence` instead of raising.

Mitigations from the literature come as optax pieces: :func:`with_clipping` (Pascanu et al.'s
gradient-norm clipping), :func:`pascanu_regularizer` / :func:`with_pascanu_regularizer` (their
soft constraint that preserves the norm of the back-propagated error), and the optimisers
:func:`sgd`, :func:`adam` and :func:`rprop` (sign-based, immune to the gradient's scale); and
gradient flossing (Engelken 2023): :func:`with_flossing_regularizer` during training and
:func:`make_preflossing` before it, on the differentiable top-k Lyapunov spectrum
:func:`recurrent_exponents`; greedy layer-wise pre-training (:func:`pretrain` /
:func:`make_pretrain`: stacked autoencoders or RBMs by CD-k, one level at a time on the frozen
outputs below, returning MLP parameters to fine-tune) and gradient amplification (:func:`amplify`,
Basodi et al. 2020: chosen or randomly drawn layers' gradients × a factor on scheduled steps).

Layout: :mod:`~gradflow.train.loop` (:func:`fit`, :func:`make_fit`),
:mod:`~gradflow.train.results` (:class:`History`, :class:`FitResult`, …),
:mod:`~gradflow.train.optim` (optimisers, clipping), :mod:`~gradflow.train.pascanu` (Ω and the
recurrent-model helpers), :mod:`~gradflow.train.flossing` (gradient flossing),
:mod:`~gradflow.train.pretraining` (greedy layer-wise pre-training),
:mod:`~gradflow.train.amplification` (gradient amplification),
:mod:`~gradflow.train.gradient_free` (evolution strategy, random search); the compiled step,
the segmented loop and the batch sources are package-private
(``_loop``, ``_stream``, ``_batches``).
"""

from gradflow.chain import Chain  # noqa: F401 - importable from here as before
from gradflow.monitor import (  # re-exported: gf.train.monitor etc. (DESIGN.md)
    GradStats,
    grad_stats,
    gradient_noise_scale,
    monitor,
    noise_scale,
    read_monitor,
)
from gradflow.train import (
    flossing,  # noqa: F401 - gf.train.flossing
    gradient_free,  # noqa: F401 - gf.train.gradient_free
)
from gradflow.train.amplification import AmplifyState, amplified_layers, amplify
from gradflow.train.flossing import (
    PreFlossing,
    flossing_loss_fn,
    flossing_regularizer,
    make_preflossing,
    recurrent_exponents,
    with_flossing_regularizer,
)
from gradflow.train.loop import fit, make_fit
from gradflow.train.optim import adam, rprop, sgd, with_clipping
from gradflow.train.pascanu import (
    pascanu_regularizer,
    recurrent_state_grad_fn,
    with_pascanu_regularizer,
)
from gradflow.train.pretraining import (
    LevelResult,
    PretrainResult,
    cd_gradient,
    make_pretrain,
    pretrain,
    train_level,
)
from gradflow.train.results import (
    Divergence,
    DivergenceError,
    FitResult,
    History,
    LayerNames,
    StepStats,
)

__all__ = [
    "GradStats",
    "grad_stats",
    "gradient_noise_scale",
    "monitor",
    "noise_scale",
    "read_monitor",
    "History",
    "LayerNames",
    "StepStats",
    "Divergence",
    "FitResult",
    "DivergenceError",
    "fit",
    "make_fit",
    "with_clipping",
    "sgd",
    "adam",
    "rprop",
    "pascanu_regularizer",
    "with_pascanu_regularizer",
    "recurrent_state_grad_fn",
    "PreFlossing",
    "recurrent_exponents",
    "flossing_regularizer",
    "flossing_loss_fn",
    "with_flossing_regularizer",
    "make_preflossing",
    "pretrain",
    "make_pretrain",
    "train_level",
    "cd_gradient",
    "PretrainResult",
    "LevelResult",
    "amplify",
    "amplified_layers",
    "AmplifyState",
]
