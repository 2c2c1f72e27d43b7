"""Validated surgery options, shared by the core and both adapters.

Adapters translate their own config fields into :class:`SurgeryOptions`, so every spelling
mistake gets the same error, naming the bad value and the allowed ones, whichever front end
the user came through.
"""

from __future__ import annotations

import numbers
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

SURGERY_MODES = ("none", "global", "modular")
GRANULARITIES = ("parameter", "module", "block", "layer", "head", "expert", "head+expert")
ON_NONFINITE = ("propagate", "raise")
BALANCES = ("none", "norm")

Granularity = Union[str, "re.Pattern[str]", Callable[[str], str]]


def _choice(field: str, value: object, allowed: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{field}={value!r} is not supported; choose one of {', '.join(map(repr, allowed))}.")


def nonnegative_int(field: str, value: object) -> int:
    """``value`` as an ``int`` (numpy integers too); ``TypeError`` for a non-integer, ``ValueError`` below 0."""
    if isinstance(value, bool):
        raise TypeError(f"{field} must be an integer; got {value!r}.")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{field} must be an integer; got {value!r}.") from None
    if number < 0:
        raise ValueError(f"{field} must be >= 0; got {number}.")
    return number


def validate_domain_name(name: object) -> str:
    """``name`` after checking it is a non-empty string that can be part of a metric key (no ``/``)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"domain names are non-empty strings; got {name!r}.")
    if "/" in name:
        raise ValueError(f"domain name {name!r} contains '/', which separates the parts of metric keys "
                         "(mgs/reward/{domain}/mean); rename the domain.")
    return name


def validate_domains(domains: Sequence[str] | None) -> tuple[str, ...] | None:
    """Return ``domains`` as a tuple after checking it is an ordered list of unique, non-empty names."""
    if domains is None:
        return None
    if isinstance(domains, str):
        raise TypeError(f"domains must be a list of names, not the string {domains!r}; did you mean [{domains!r}]?")
    if isinstance(domains, (set, frozenset)):
        raise TypeError(f"domains must be an ordered list, not a {type(domains).__name__}, whose order can differ "
                        f"between processes; give sorted({sorted(domains, key=str)!r}) or another fixed order.")
    names = tuple(domains)
    if not names:
        raise ValueError("domains is empty; give at least one domain name, or None to discover them on first use.")
    for name in names:
        try:
            validate_domain_name(name)
        except TypeError:
            raise TypeError(f"every domain must be a non-empty string; got {name!r} in {list(names)!r}.") from None
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"domains has duplicates {duplicates}; each domain must appear once: {list(names)!r}.")
    return names


@dataclass(frozen=True)
class SurgeryOptions:
    """What surgery to run; every field is validated on construction.

    Attributes:
        surgery: ``"none"`` (plain sum of the domains' gradients: naive mixing), ``"global"`` (the method
            over all parameters as one vector) or ``"modular"`` (the method per group of parameters).
        granularity: how parameters are grouped into modules: ``"parameter"`` (each tensor),
            ``"module"`` (each leaf module, LoRA adapters mapped to their base module), ``"block"``
            (attention / MLP / the rest of each decoder layer), ``"layer"`` (each decoder layer), ``"head"``
            (``"module"``, with each attention projection split by head: q/k/v rows, o_proj columns),
            ``"expert"`` (``"module"``, with each fused MoE experts tensor split by expert), ``"head+expert"``
            (both; see :mod:`mgs._slicing`), a compiled
            regular expression (the first match in a parameter's name is its group key; names without a
            match form their own group) or a callable from parameter name to group key. Statistics are
            reported per group for every ``surgery`` mode.
        method: a registered name (:func:`mgs.methods.method_names`): ``"pcgrad"``, a TorchJD weighting
            (``"upgrad"``, ``"mgda"``, ``"dualproj"``, ``"aligned_mtl"``, ``"imtl_g"``, ``"gradvac"``,
            ``"cagrad"``; the ``torchjd`` extra) or one added with :func:`mgs.methods.register_method`; a
            ``torchjd.aggregation`` Weighting instance; or a callable ``(gram [M, K, K] float64, generator)
            -> weights [M, K]`` (see :mod:`mgs.methods`). Ignored by ``surgery="none"``.
        balance: ``"none"`` or ``"norm"``: before the method, rescale each domain's gradient to the mean norm
            of the domains present (per group for ``"modular"``, over the whole model for ``"global"`` and
            ``"none"``; ``surgery="none", balance="norm"`` is the equal-norm baseline without projection).
        gram_ema: decay in [0, 1) of an exponential moving average of each group's Gram matrix from which
            the method's weights are computed (applied to the current gradients); 0 is per-step surgery.
        domains: the ordered domain names, fixed for the run; ``None`` discovers them on first use.
        seed: seeds the method's random choices together with the step (PCGrad's projection orders).
        conflict_threshold: τ in [0, 1): PCGrad projects g_i' off g_j only when cos(g_i', g_j) < −τ (the cosine
            of the partly projected g_i' and the original g_j); 0 is PCGrad exactly. PCGrad only.
        on_nonfinite: ``"propagate"`` leaves non-finite gradients for the training framework to handle
            (affected groups get the plain sum); ``"raise"`` raises ``FloatingPointError`` (one host sync).
    """

    surgery: str = "modular"
    granularity: Granularity = "parameter"
    method: str | Callable = "pcgrad"
    domains: Sequence[str] | None = None  # stored as a tuple
    seed: int = 0
    on_nonfinite: str = "propagate"
    balance: str = "none"
    gram_ema: float = 0.0
    conflict_threshold: float = 0.0

    def __post_init__(self) -> None:
        from mgs.methods import validate_method  # local import: methods import nothing from here

        _choice("surgery", self.surgery, SURGERY_MODES)
        if isinstance(self.granularity, str):
            if self.granularity not in GRANULARITIES:
                raise ValueError(
                    f"granularity={self.granularity!r} is not supported; choose one of "
                    f"{', '.join(map(repr, GRANULARITIES))}, a compiled regex (re.compile(...)) or a callable "
                    "mapping a parameter name to a group key."
                )
        elif not (isinstance(self.granularity, re.Pattern) or callable(self.granularity)):
            raise TypeError(f"granularity must be a string, a compiled regex or a callable; got {self.granularity!r}.")
        validate_method(self.method)  # the registry's names, a TorchJD Weighting instance or a callable
        object.__setattr__(self, "domains", validate_domains(self.domains))
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise TypeError(f"seed must be an int; got {self.seed!r}.")
        object.__setattr__(self, "seed", int(self.seed))
        _choice("on_nonfinite", self.on_nonfinite, ON_NONFINITE)
        _choice("balance", self.balance, BALANCES)
        if isinstance(self.gram_ema, bool) or not isinstance(self.gram_ema, (int, float)) or not 0 <= self.gram_ema < 1:
            raise ValueError(f"gram_ema={self.gram_ema!r} is not supported; give a decay in [0, 1) (0: no smoothing).")
        tau = self.conflict_threshold
        if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not 0 <= tau < 1:
            raise ValueError(f"conflict_threshold={tau!r} is not supported; give τ in [0, 1): PCGrad projects only "
                             "when cos(g_i', g_j) < -τ (0: PCGrad exactly).")
        object.__setattr__(self, "conflict_threshold", float(tau))
        if tau > 0 and (self.surgery == "none" or self.method != "pcgrad"):
            raise ValueError(
                f"conflict_threshold={tau} sets PCGrad's conflict test, but surgery={self.surgery!r} with method="
                f"{self.method!r} makes no such test; use surgery='modular' or 'global' with method='pcgrad', or "
                "conflict_threshold=0."
            )
