"""The mitigation study's sizes and the deep-MLP configurations it compares."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from gradflow import init, models

__all__ = [
    "Config",
    "QUICK",
    "FULL",
    "MLPVariant",
    "mlp_variants",
    "RNN_VARIANTS",
    "PRETRAINED",
    "AMPLIFIED",
    "mlp_model",
]


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
    # greedy layer-wise pre-training of the sigmoid/Glorot net (gradflow.train.pretraining): every
    # level trained for pretrain_steps Adam steps on batches of pretrain_batch, then fine-tuned
    # by the same SGD as the other nets
    pretrain_method: str = "autoencoder"
    pretrain_steps: int = 100
    pretrain_batch: int = 64
    pretrain_learning_rate: float = 1e-2
    # gradient amplification (gradflow.train.amplification) on the sigmoid/Glorot net: the gradients
    # of a random amp_fraction of its input and hidden layers, drawn anew every epoch, are
    # multiplied by amp_factor during the first amp_until fraction of the training steps
    amp_factor: float = 4.0
    amp_fraction: float = 0.5
    amp_until: float = 0.5


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
    pretrain_steps=1000,
    pretrain_batch=128,
)

# Pascanu, Mikolov & Bengio 2013's three training methods: SGD, SGD with clipping, and SGD with
# clipping and the regulariser Ω.
RNN_VARIANTS = ("SGD", "SGD-C", "SGD-CR")

# the two mitigations applied to the sigmoid/Glorot net (labels of part (a)'s rows)
PRETRAINED = "sigmoid, Glorot + greedy pre-training"
AMPLIFIED = "sigmoid, Glorot + gradient amplification"


class MLPVariant(NamedTuple):
    label: str
    activation: str
    kernel_init: Any
    residual: bool = False
    norm: str | None = None
    pretrain: bool = False  # greedy layer-wise pre-training before SGD (Config.pretrain_*)
    amplify: bool = False  # gradient amplification during SGD (Config.amp_*)

    @property
    def arch(self):
        return (self.activation, self.residual, self.norm)


def mlp_variants() -> list[MLPVariant]:
    """The twelve deep-MLP configurations of part (a)."""
    return [
        MLPVariant("sigmoid, Glorot (default)", "sigmoid", init.glorot()),
        MLPVariant(PRETRAINED, "sigmoid", init.glorot(), pretrain=True),
        MLPVariant(AMPLIFIED, "sigmoid", init.glorot(), amplify=True),
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


def mlp_model(cfg: Config, v: MLPVariant, n_classes: int) -> models.MLP:
    """The :class:`gradflow.models.MLP` of variant ``v`` at the sizes of ``cfg``."""
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
