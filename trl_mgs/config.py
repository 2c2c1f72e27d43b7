"""``MGSGRPOConfig``: ``GRPOConfig`` plus the surgery settings, validated in ``__post_init__``."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from mgs import SurgeryOptions
from mgs.integration import DomainIndex, SurgerySettings, settings_doc, surgery_options
from trl_mgs import _upstream

_upstream.check()  # at import: a TRL or transformers this adapter was not written for is an error, not a surprise

_DOC_ENTRY = "    {name} (`{type}`, *optional*, defaults to `{default}`):\n        {help}"  # TRL's docstring style


@dataclass
class MGSGRPOConfig(GRPOConfig, SurgerySettings):
    domain_column: str = field(
        default="domain",
        metadata={"help": "Dataset column holding each prompt's domain name, or a dotted path into a dict column "
                          "('extra_info.domain')."},
    )
    order_by_domain: bool = field(
        default=True,
        metadata={"help": "Sort each generation batch by domain before it is split into micro-batches (same gradient, "
                          "fewer backward passes); skipped for loss_type='bnpo', top_entropy_quantile < 1 and MoE "
                          "auxiliary losses."},
    )

    def __post_init__(self):
        super().__post_init__()
        self.domain_index()  # validates domain_column and domains
        self.surgery_options()  # validates every surgery field, with errors naming the value and the choices

    def surgery_options(self, domains: list[str] | None = None) -> SurgeryOptions:
        """The core's options for this config (``domains`` fills in a list read from the dataset)."""
        return surgery_options(self, framework_seed=self.seed, domains=domains)

    def domain_index(self) -> DomainIndex:
        """How rows' domains are read (``domain_column``) and checked (``domains``)."""
        return DomainIndex(self.domain_column, self.domains, key_setting="MGSGRPOConfig.domain_column",
                           domains_setting="MGSGRPOConfig.domains")


MGSGRPOConfig.__doc__ = f"""
    Configuration for [`MGSGRPOTrainer`]: every [`~trl.GRPOConfig`] field, plus:

    > Parameters that control modular gradient surgery (the same settings, words and defaults as verl's
    > `MGSFSDPEngineConfig`: `mgs.integration.SETTINGS`)

{settings_doc(_DOC_ENTRY)}
    domain_column (`str`, *optional*, defaults to `"domain"`):
        Dataset column holding each prompt's domain name, or a dotted path into a dict column (`"extra_info.domain"`).
    order_by_domain (`bool`, *optional*, defaults to `True`):
        Stable-sort each generation batch by domain (after TRL's shuffle, before its split into
        `steps_per_generation` micro-batches), so that most micro-batches hold one domain: one forward
        and backward each, not one per domain. The gradient is unchanged except with `loss_type="bnpo"`,
        `top_entropy_quantile < 1` or a MoE auxiliary loss, which depend on the micro-batch's make-up: for
        those it is skipped. Per-micro-batch averages TRL logs (entropy, clip ratios) are grouped differently.
    """
