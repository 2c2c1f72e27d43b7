"""One declaration of every surgery setting, shared by every adapter's config.

Each :class:`Setting` names the adapter's config field, the :class:`mgs.SurgeryOptions` field it
feeds, its default and its help text. :class:`SurgerySettings` declares them all as dataclass fields
(:func:`setting_field`: the default and ``metadata={"help", "choices"}``, which TRL's
``HfArgumentParser`` turns into command-line options); an adapter's config dataclass inherits it and
builds the options with :func:`surgery_options`, so names, defaults, help and validation are the same
in TRL and verl. ``tests/unit/integration/test_settings.py`` checks that every ``SurgeryOptions`` field
has a setting and that every adapter config declares every setting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from mgs._options import BALANCES, GRANULARITIES, ON_NONFINITE, SURGERY_MODES, SurgeryOptions


@dataclass(frozen=True)
class Setting:
    """One surgery setting as adapters expose it.

    Attributes:
        name: the adapter config's field name.
        option: the :class:`mgs.SurgeryOptions` field it sets.
        default: the default value (``None`` for ``seed``: the framework's own seed).
        help: the help text, the same in every adapter.
        choices: the allowed values, for command-line parsers; ``None`` when any value of the type goes.
        type: the value's type as docstrings show it.
    """

    name: str
    option: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    type: str = "str"


SETTINGS: tuple[Setting, ...] = (
    Setting("surgery", "surgery", "modular",
            "How the domains' gradients are combined: 'none' (plain sum: naive mixing, the stock update), "
            "'global' (the method over all parameters as one vector) or 'modular' (the method per module).",
            SURGERY_MODES),
    Setting("surgery_granularity", "granularity", "parameter",
            "What a module is for 'modular' surgery and for the statistics: 'parameter' (each tensor), 'module' "
            "(each leaf module; LoRA adapters count as their base module), 'block' (attention / MLP / the rest of "
            "each decoder layer), 'layer' (each decoder layer), 'head' ('module' with each attention projection "
            "split by head: q/k/v rows, o_proj columns; LoRA's lora_B of q/k/v and lora_A of o follow the heads), "
            "'expert' ('module' with each fused MoE experts tensor split by expert) or 'head+expert'.",
            GRANULARITIES),
    Setting("surgery_method", "method", "pcgrad",
            "The method applied per module: 'pcgrad', a TorchJD weighting ('upgrad', 'mgda', 'dualproj', "
            "'aligned_mtl', 'imtl_g', 'gradvac', 'cagrad'; the torchjd extra) or any name registered with "
            "mgs.register_method. Ignored by surgery='none'."),  # no fixed choices: methods registered later count
    Setting("surgery_balance", "balance", "none",
            "'norm' rescales each domain's gradient to the mean norm of the domains before the method (per module "
            "for 'modular', over the whole model otherwise); with surgery='none' it is the equal-norm baseline.",
            BALANCES),
    Setting("surgery_gram_ema", "gram_ema", 0.0,
            "Decay in [0, 1) of a moving average of each module's Gram matrix from which the method decides (a "
            "variant, not the paper's method; 0 decides from the current step only). Saved in checkpoints.",
            type="float"),
    Setting("surgery_conflict_threshold", "conflict_threshold", 0.0,
            "τ in [0, 1): PCGrad projects one domain's gradient off another's only when their cosine is below -τ "
            "(0: PCGrad exactly). PCGrad only; refused with other methods and with surgery='none'.",
            type="float"),
    Setting("surgery_on_nonfinite", "on_nonfinite", "propagate",
            "'propagate' gives modules with inf/NaN gradients the plain sum, so the framework's own handling "
            "(gradient scaler, NaN checks) sees them; 'raise' raises FloatingPointError (one host sync per step).",
            ON_NONFINITE),
    Setting("surgery_seed", "seed", None,
            "Seeds the method's random choices (PCGrad's projection orders) together with the step; None uses the "
            "framework's own seed.", type="int or None"),
    Setting("domains", "domains", None,
            "The ordered domain names, fixed for the run; None reads them from the data (TRL: the sorted distinct "
            "values of the training set; verl: agreed across ranks as they appear).", type="list[str] or None"),
)
"""Every surgery setting, in the order adapters document them."""

_BY_NAME = {s.name: s for s in SETTINGS}


def settings_doc(template: str) -> str:
    """Every setting's docstring entry, one ``template.format(name=, type=, default=, help=)`` each (``default`` is
    the ``repr``), so that each adapter documents the settings in its framework's style with the same words."""
    return "\n".join(template.format(name=s.name, type=s.type, default=repr(s.default), help=s.help) for s in SETTINGS)


def setting_field(name: str) -> Any:
    """A ``dataclasses.field`` for setting ``name``: its default and ``metadata={"help", "choices"}``."""
    setting = _BY_NAME[name]
    metadata: dict[str, Any] = {"help": setting.help}
    if setting.choices is not None:
        metadata["choices"] = list(setting.choices)
    return dataclasses.field(default=setting.default, metadata=metadata)


@dataclass
class SurgerySettings:
    """The fields of :data:`SETTINGS`, for an adapter's config dataclass to inherit
    (``class MGSGRPOConfig(GRPOConfig, SurgerySettings)``)."""

    surgery: str = setting_field("surgery")
    surgery_granularity: str = setting_field("surgery_granularity")
    surgery_method: str = setting_field("surgery_method")
    surgery_balance: str = setting_field("surgery_balance")
    surgery_gram_ema: float = setting_field("surgery_gram_ema")
    surgery_conflict_threshold: float = setting_field("surgery_conflict_threshold")
    surgery_on_nonfinite: str = setting_field("surgery_on_nonfinite")
    surgery_seed: Optional[int] = setting_field("surgery_seed")
    domains: Optional[list[str]] = setting_field("domains")


def surgery_options(config: Any, *, framework_seed: int, domains: Sequence[str] | None = None) -> SurgeryOptions:
    """The :class:`mgs.SurgeryOptions` of an adapter config that declares every setting of :data:`SETTINGS`.

    Args:
        config: the adapter's config (any object with the settings' fields as attributes).
        framework_seed: the seed ``surgery_seed=None`` stands for (TRL's ``seed``, verl's engine ``seed``).
        domains: a domain list found in the data, used when the config's ``domains`` is ``None``.

    Raises:
        ValueError, TypeError: from :class:`mgs.SurgeryOptions`, naming the bad value and the allowed ones.
    """
    values = {s.option: getattr(config, s.name) for s in SETTINGS}
    if values["seed"] is None:
        values["seed"] = framework_seed
    if values["domains"] is None:
        values["domains"] = domains
    elif not isinstance(values["domains"], str):
        values["domains"] = list(values["domains"])  # omegaconf ListConfig and the like
    return SurgeryOptions(**values)
