"""gradflow: measure how gradients vanish or explode through depth and time, in JAX."""

from gradflow import activations
from gradflow import chain
from gradflow import dynamics
from gradflow import gradient_free
from gradflow import gradients
from gradflow import init
from gradflow import jacobians
from gradflow import lyapunov
from gradflow import meanfield
from gradflow import models
from gradflow import spectra
from gradflow import sweep
from gradflow import tasks
from gradflow import theory
from gradflow import train
from gradflow.chain import Chain

__version__ = "0.1.0"

__all__ = [
    "Chain",
    "activations",
    "chain",
    "dynamics",
    "gradient_free",
    "gradients",
    "init",
    "jacobians",
    "lyapunov",
    "meanfield",
    "models",
    "spectra",
    "sweep",
    "tasks",
    "theory",
    "train",
]
