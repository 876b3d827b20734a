"""gradflow: measure how gradients vanish or explode through depth and time, in JAX."""

from gradflow import (
    activations,
    attention,
    chain,
    checking,
    dynamics,
    gradient_free,
    gradients,
    init,
    jacobians,
    lyapunov,
    matfree,
    meanfield,
    models,
    monitor,
    spectra,
    sweep,
    tasks,
    theory,
    threads,
    train,
    writers,
)
from gradflow._version import __version__ as __version__
from gradflow.chain import Chain
from gradflow.checking import checked

# One OpenBLAS thread under XLA's batch parallelism (see gradflow.threads; GRADFLOW_LAPACK_THREADS).
threads.configure_from_env()

__all__ = [
    "Chain",
    "checked",
    "activations",
    "attention",
    "chain",
    "checking",
    "dynamics",
    "gradient_free",
    "gradients",
    "init",
    "jacobians",
    "lyapunov",
    "matfree",
    "meanfield",
    "models",
    "monitor",
    "spectra",
    "sweep",
    "tasks",
    "theory",
    "threads",
    "train",
    "writers",
]
