"""``MGSGRPOConfig``: ``GRPOConfig`` plus the surgery settings, validated in ``__post_init__``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from trl import GRPOConfig

from mgs import SurgeryOptions
from mgs.integration import DomainIndex, SurgerySettings, settings_doc, surgery_options
from trl_mgs import _upstream

_upstream.check()  # at import: a TRL or transformers this adapter was not written for is an error, not a surprise

_DOC_ENTRY = "    {name} (`{type}`, *optional*, defaults to `{default}`):\n        {help}"  # TRL's docstring style


# SurgerySettings first: dataclass fields are ordered from the last base, so GRPOConfig's come first and
# MGSGRPOConfig("out") sets output_dir, as GRPOConfig("out") does (the surgery fields follow, keyword-only in use).
@dataclass
class MGSGRPOConfig(SurgerySettings, GRPOConfig):
    domain_column: str = field(
        default="domain",
        metadata={"help": "Dataset column holding each prompt's domain name, or a dotted path into a dict column "
                          "('extra_info.domain'). With a dict environment_factory, 'environment' makes each "
                          "environment a domain."},
    )
    environment_domain_attribute: Optional[str] = field(
        default=None,
        metadata={"help": "With an environment_factory: the attribute of each rollout's environment that names its "
                          "domain, read once the rollout is scored (set it in reset(): self.domain = 'math'); a "
                          "dotted path reads into a dict attribute. Needs domains. None: domains come from "
                          "domain_column."},
    )
    order_by_domain: bool = field(
        default=True,
        metadata={"help": "Sort each generation batch by domain before it is split into micro-batches (same gradient, "
                          "fewer backward passes); skipped for loss_type='bnpo', top_entropy_quantile < 1 and MoE "
                          "auxiliary losses."},
    )

    normalize_advantage_by_domain: bool = field(
        default=False,
        metadata={"help": "Divide every completion's advantage (after TRL's own, scale_rewards included) by the "
                          "population standard deviation (+1e-4) of the advantages of its domain's rows over the "
                          "whole generation batch (every rank, every steps_per_generation slice): the MGS paper's "
                          "Normalized Advantage baseline. Works with every surgery mode; needs domains."},
    )

    def __post_init__(self):
        super().__post_init__()
        self._check_mgs_fields()

    def _check_mgs_fields(self) -> None:
        """Validate every field this class adds to ``GRPOConfig``, with errors naming the value and the choices."""
        self.domain_index()  # domain_column and domains
        if not isinstance(self.normalize_advantage_by_domain, bool):
            raise TypeError("MGSGRPOConfig.normalize_advantage_by_domain must be True or False; got "
                            f"{self.normalize_advantage_by_domain!r}.")
        if self.environment_domain_attribute is not None:
            self.environment_domain_index()
            if self.domains is None:
                raise ValueError(
                    f"MGSGRPOConfig.environment_domain_attribute={self.environment_domain_attribute!r} reads each "
                    "rollout's domain only as it runs, so the domain list cannot be read from the data at init: set "
                    "MGSGRPOConfig.domains to every domain the environments name (e.g. domains=['code', 'math'])."
                )
        self.surgery_options()  # every surgery field

    @classmethod
    def from_grpo_config(cls, config: GRPOConfig, **settings: Any) -> MGSGRPOConfig:
        """An ``MGSGRPOConfig`` with every field of ``config`` (also the values ``GRPOConfig.__post_init__`` derived,
        such as ``steps_per_generation``; it is not run again) and the fields this class adds set from ``settings``,
        else from ``config`` when it is an ``MGSGRPOConfig``, else at their defaults.

        Raises:
            TypeError: ``config`` is not a ``GRPOConfig``, or ``settings`` names a field ``GRPOConfig`` has.
            ValueError: a setting is invalid (as in ``MGSGRPOConfig(...)``).
        """
        if not isinstance(config, GRPOConfig):
            raise TypeError(f"MGSGRPOConfig.from_grpo_config needs a GRPOConfig; got {type(config).__name__}.")
        added = mgs_fields()
        unknown = sorted(set(settings) - set(added))
        if unknown:
            raise TypeError(f"MGSGRPOConfig.from_grpo_config sets the MGS fields {sorted(added)}; got {unknown} (set "
                            "GRPOConfig's own fields on the GRPOConfig).")
        new = cls.__new__(cls)
        new.__dict__.update(vars(config))  # GRPOConfig.__post_init__ is not idempotent: copy its result
        for name, f in added.items():
            if name in settings:
                value = settings[name]
            elif isinstance(config, MGSGRPOConfig):
                value = getattr(config, name)
            else:
                value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            setattr(new, name, value)
        new._check_mgs_fields()
        return new

    def surgery_options(self, domains: list[str] | None = None) -> SurgeryOptions:
        """The core's options for this config (``domains`` fills in a list read from the dataset)."""
        return surgery_options(self, framework_seed=self.seed, domains=domains)

    def domain_index(self) -> DomainIndex:
        """How rows' domains are read (``domain_column``) and checked (``domains``)."""
        return DomainIndex(self.domain_column, self.domains, key_setting="MGSGRPOConfig.domain_column",
                           domains_setting="MGSGRPOConfig.domains")

    def environment_domain_index(self) -> DomainIndex:
        """How rollouts' domains are read from their environments (``environment_domain_attribute``)."""
        return DomainIndex(self.environment_domain_attribute, self.domains,
                           key_setting="MGSGRPOConfig.environment_domain_attribute",
                           domains_setting="MGSGRPOConfig.domains")


def mgs_fields() -> dict[str, dataclasses.Field]:
    """The dataclass fields ``MGSGRPOConfig`` adds to ``GRPOConfig``, by name (the surgery settings first)."""
    inherited = {f.name for f in dataclasses.fields(GRPOConfig)}
    return {f.name: f for f in dataclasses.fields(MGSGRPOConfig) if f.name not in inherited}


MGSGRPOConfig.__doc__ = f"""
    Configuration for [`MGSGRPOTrainer`]: every [`~trl.GRPOConfig`] field, plus:

    > Parameters that control modular gradient surgery (the same settings, words and defaults as verl's
    > `MGSFSDPEngineConfig`: `mgs.integration.SETTINGS`)

{settings_doc(_DOC_ENTRY)}
    domain_column (`str`, *optional*, defaults to `"domain"`):
        Dataset column holding each prompt's domain name, or a dotted path into a dict column (`"extra_info.domain"`).
        With a dict `environment_factory`, `"environment"` (TRL's routing column) makes each environment a domain.
    environment_domain_attribute (`str` or `None`, *optional*, defaults to `None`):
        With an `environment_factory`: the attribute of each rollout's environment that names its domain, read
        once the rollout is scored (set it in `reset()`: `self.domain = "math"`); a dotted path reads into a dict
        attribute. It takes precedence over `domain_column` and needs `domains`. `None`: domains come from
        `domain_column` (or, for an environment that owns the data, from a `domains` list of one name).
    order_by_domain (`bool`, *optional*, defaults to `True`):
        Stable-sort each generation batch by domain (after TRL's shuffle, before its split into
        `steps_per_generation` micro-batches), so that most micro-batches hold one domain: one forward
        and backward each, not one per domain. The gradient is unchanged except with `loss_type="bnpo"`,
        `top_entropy_quantile < 1` or a MoE auxiliary loss, which depend on the micro-batch's make-up: for
        those it is skipped. Per-micro-batch averages TRL logs (entropy, clip ratios) are grouped differently.
    normalize_advantage_by_domain (`bool`, *optional*, defaults to `False`):
        After TRL's own advantage computation (`scale_rewards` and `multi_objective_aggregation` included), divide
        every completion's advantage by `std_d + 1e-4`, where `std_d` is the population standard deviation of the
        advantages of all of its domain's rows in the generation batch (every rank, every `steps_per_generation`
        slice, rows with zero advantage included): the MGS paper's Normalized Advantage baseline, under which
        domains with different reward scales weigh equally. No re-centring (GRPO's advantages are centred per
        group, and a group lies in one domain). Works with every `surgery` mode, `"none"` included; it needs
        domains, so data without the domain column is an error. TRL's completions table keeps the advantages
        before this step.

    A plain `GRPOConfig` passed to [`MGSGRPOTrainer`] is carried over with [`MGSGRPOConfig.from_grpo_config`] (with a
    warning): every field kept, the fields above at their defaults.
    """
