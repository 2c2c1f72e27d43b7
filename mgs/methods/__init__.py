"""Gram-based methods: ``(gram [M, K, K], generator) -> weights [M, K]`` (see :mod:`mgs.methods._base`)."""

from __future__ import annotations

import copy

from mgs.methods._base import GramMethod, step_generator
from mgs.methods._pcgrad import pcgrad_orders, pcgrad_weights
from mgs.methods._torchjd import TORCHJD_WEIGHTINGS, TorchJDMethod, is_torchjd_weighting

METHODS: dict[str, GramMethod] = {"pcgrad": pcgrad_weights}
"""Built-in methods selectable by name."""

METHOD_NAMES: tuple[str, ...] = ("pcgrad", *TORCHJD_WEIGHTINGS)
"""Every method name ``method=`` accepts: PCGrad and the TorchJD weightings (those need the ``torchjd`` extra)."""


def resolve_method(method: str | object) -> GramMethod:
    """The callable for ``method``: a name from :data:`METHOD_NAMES`, a TorchJD ``Weighting`` instance (copied
    per group), or a :class:`GramMethod` callable returned as is."""
    if isinstance(method, str):
        if method in METHODS:
            return METHODS[method]
        if method in TORCHJD_WEIGHTINGS:
            return TorchJDMethod(method)
        raise ValueError(f"method={method!r} is not supported; choose one of {', '.join(map(repr, METHOD_NAMES))}.")
    if is_torchjd_weighting(method):
        return TorchJDMethod(lambda: copy.deepcopy(method))
    return method  # type: ignore[return-value]


__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "TORCHJD_WEIGHTINGS",
    "GramMethod",
    "TorchJDMethod",
    "pcgrad_orders",
    "pcgrad_weights",
    "resolve_method",
    "step_generator",
]
