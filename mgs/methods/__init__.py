"""Gram-based methods: ``(gram [M, K, K], generator) -> weights [M, K]`` (see :mod:`mgs.methods._base`).

Every method selectable by name is registered here, with one :func:`register_method` call each (see
:mod:`mgs.methods._registry`); :func:`resolve_method` validates and builds any ``method=`` value.
"""

from __future__ import annotations

from functools import partial

from mgs.methods._base import GramMethod, MethodOutput, step_generator
from mgs.methods._pcgrad import pcgrad, pcgrad_orders, pcgrad_weights
from mgs.methods._registry import (
    REGISTRY,
    Method,
    MethodSpec,
    method_names,
    method_spec,
    register_method,
    resolve_method,
    unregister_method,
    validate_method,
)
from mgs.methods._torchjd import TORCHJD_STATE, TORCHJD_WEIGHTINGS, TorchJDMethod, is_torchjd_weighting

register_method("pcgrad", lambda: pcgrad, projects=True)
for _name in TORCHJD_WEIGHTINGS:
    register_method(_name, partial(TorchJDMethod, _name), host_sync=True, extra="torchjd")
del _name

METHODS = REGISTRY
"""Every registered method: name → :class:`MethodSpec` (a live, read-only view of the registry)."""


def __getattr__(name: str) -> object:
    if name == "METHOD_NAMES":  # computed on access, so later registrations show
        return method_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


METHOD_NAMES: tuple[str, ...]
"""Every method name ``method=`` accepts: PCGrad, the TorchJD weightings (those need the ``torchjd`` extra) and
any registered since. ``mgs.methods.METHOD_NAMES`` is read from the registry at each access; a ``from ... import``
copy (such as ``mgs.METHOD_NAMES``) holds the names registered at its import: use :func:`method_names` for the
current ones."""


__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "REGISTRY",
    "TORCHJD_STATE",
    "TORCHJD_WEIGHTINGS",
    "GramMethod",
    "Method",
    "MethodOutput",
    "MethodSpec",
    "TorchJDMethod",
    "is_torchjd_weighting",
    "method_names",
    "method_spec",
    "pcgrad",
    "pcgrad_orders",
    "pcgrad_weights",
    "register_method",
    "resolve_method",
    "step_generator",
    "unregister_method",
    "validate_method",
]
