"""Gradient-free baselines; moved to :mod:`gradflow.train.gradient_free` (re-exported here)."""

from gradflow.train.gradient_free import SearchResult, evolution_strategy, random_search

__all__ = ["SearchResult", "evolution_strategy", "random_search"]
