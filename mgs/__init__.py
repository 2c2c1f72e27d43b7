"""Modular Gradient Surgery: per-module PCGrad (and other Gram-based methods) for multi-domain training.

The pipeline, one file per step: :mod:`mgs._partition` (parameters → groups) → :mod:`mgs._buffers`
(per-domain gradient buffers) → :mod:`mgs._gram` (per-group Gram matrices) → :mod:`mgs.methods`
(Gram → weights) → :mod:`mgs._apply` (``p.grad`` ← weighted sums). :class:`GradientSurgery` wires them.
"""

from mgs._options import BALANCES, GRANULARITIES, ON_NONFINITE, SURGERY_MODES, SurgeryOptions
from mgs._partition import KINDS
from mgs._surgery import GradientSurgery
from mgs.data import MixturePlan, batch_counts, check_trl_compatible, interleave_domains, plan_mixture
from mgs.methods import METHOD_NAMES, METHODS, method_names, register_method

__version__ = "0.1.0"

__all__ = [
    "BALANCES",
    "GRANULARITIES",
    "GradientSurgery",
    "KINDS",
    "METHODS",
    "METHOD_NAMES",
    "MixturePlan",
    "ON_NONFINITE",
    "SURGERY_MODES",
    "SurgeryOptions",
    "batch_counts",
    "check_trl_compatible",
    "interleave_domains",
    "method_names",
    "plan_mixture",
    "register_method",
]
