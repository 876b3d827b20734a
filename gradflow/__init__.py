"""gradflow: measure how gradients vanish or explode through depth and time, in JAX."""

from gradflow import (
    activations,
    attention,
    chain,
    dynamics,
    gradient_free,
    gradients,
    init,
    jacobians,
    lyapunov,
    matfree,
    meanfield,
    models,
    spectra,
    sweep,
    tasks,
    theory,
    train,
)
from gradflow.chain import Chain

__version__ = "0.1.0"

__all__ = [
    "Chain",
    "activations",
    "attention",
    "chain",
    "dynamics",
    "gradient_free",
    "gradients",
    "init",
    "jacobians",
    "lyapunov",
    "matfree",
    "meanfield",
    "models",
    "spectra",
    "sweep",
    "tasks",
    "theory",
    "train",
]
