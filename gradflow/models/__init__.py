"""Flax models that expose their chain of hidden-to-hidden maps."""

from gradflow.models import wide
from gradflow.models.cnn import CNN
from gradflow.models.mlp import MLP
from gradflow.models.recurrent import GRU, LSTM, RNN
from gradflow.models.transformer import Transformer

__all__ = ["CNN", "MLP", "RNN", "LSTM", "GRU", "Transformer", "wide"]
