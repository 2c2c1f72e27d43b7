"""Gram-based methods: ``(gram [M, K, K], generator) -> weights [M, K]`` (see :mod:`mgs.methods._base`)."""

from mgs.methods._base import GramMethod, step_generator
from mgs.methods._pcgrad import pcgrad_orders, pcgrad_weights

METHODS: dict[str, GramMethod] = {"pcgrad": pcgrad_weights}
"""Methods selectable by name."""

__all__ = ["METHODS", "GramMethod", "pcgrad_orders", "pcgrad_weights", "step_generator"]
