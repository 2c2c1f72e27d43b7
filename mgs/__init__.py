"""Modular Gradient Surgery: per-module PCGrad (and other Gram-based methods) for multi-domain training.

The pipeline, one file per step: :mod:`mgs._partition` (parameters → groups) → :mod:`mgs._buffers`
(per-domain gradient buffers) → :mod:`mgs._gram` (per-group Gram matrices) → :mod:`mgs.methods`
(Gram → weights) → :mod:`mgs._apply` (``p.grad`` ← weighted sums). :class:`GradientSurgery` wires them.
:mod:`mgs._mixing` (:func:`plan_mixture`) lays out multi-domain batches with exact per-domain counts.

``import mgs`` imports torch and nothing else; the TRL and verl adapters are ``trl_mgs`` and ``verl_mgs``,
the tools that need transformers (``mgs-diagnose``, the toy model) ``mgs_tools``.
"""

from mgs._curriculum import CurriculumPhase, CurriculumPlan, plan_curriculum, sequential_phases
from mgs._mixing import MixturePlan, batch_counts, plan_mixture
from mgs._options import BALANCES, GRANULARITIES, ON_NONFINITE, SURGERY_MODES, SurgeryOptions
from mgs._partition import KINDS
from mgs._slicing import AttentionHeads, TensorSlices
from mgs._surgery import GradientSurgery
from mgs.methods import METHOD_NAMES, METHODS, method_names, register_method

__version__ = "0.2.0.dev0"

__all__ = [
    "AttentionHeads",
    "BALANCES",
    "CurriculumPhase",
    "CurriculumPlan",
    "GRANULARITIES",
    "GradientSurgery",
    "KINDS",
    "METHODS",
    "METHOD_NAMES",
    "MixturePlan",
    "ON_NONFINITE",
    "SURGERY_MODES",
    "SurgeryOptions",
    "TensorSlices",
    "batch_counts",
    "method_names",
    "plan_curriculum",
    "plan_mixture",
    "register_method",
    "sequential_phases",
]
