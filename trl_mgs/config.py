"""``MGSGRPOConfig``: ``GRPOConfig`` plus the surgery settings, validated in ``__post_init__``."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from mgs import BALANCES, GRANULARITIES, METHOD_NAMES, SURGERY_MODES, SurgeryOptions


@dataclass
class MGSGRPOConfig(GRPOConfig):
    r"""
    Configuration for [`MGSGRPOTrainer`]: every [`~trl.GRPOConfig`] field, plus:

    > Parameters that control modular gradient surgery

    surgery (`str`, *optional*, defaults to `"modular"`):
        How the domains' gradients are combined: `"none"` (plain sum, i.e. stock GRPO: naive mixing),
        `"global"` (PCGrad over all parameters as one vector) or `"modular"` (PCGrad per module).
    surgery_granularity (`str`, *optional*, defaults to `"parameter"`):
        What a module is for `"modular"` (and for the logged statistics): `"parameter"` (each tensor),
        `"module"` (each leaf module), `"block"` (attention / MLP / the rest of each decoder layer) or
        `"layer"` (each decoder layer). LoRA adapters count as their base module.
    surgery_method (`str`, *optional*, defaults to `"pcgrad"`):
        The method applied per module: `"pcgrad"`, or a TorchJD weighting (`"upgrad"`, `"mgda"`, `"dualproj"`,
        `"aligned_mtl"`, `"imtl_g"`, `"gradvac"`, `"cagrad"`; needs the `torchjd` extra). Ignored by
        `surgery="none"`.
    surgery_balance (`str`, *optional*, defaults to `"none"`):
        `"norm"` rescales each domain's gradient to the mean norm of the domains before the method (per module
        for `"modular"`, whole model otherwise); with `surgery="none"` it is the equal-norm baseline.
    surgery_gram_ema (`float`, *optional*, defaults to `0.0`):
        Decay in [0, 1) of a moving average of each module's Gram matrix from which the method decides (a
        variant, not the paper's method; 0 decides from the current step only). Saved in checkpoints.
    domain_column (`str`, *optional*, defaults to `"domain"`):
        Dataset column holding each prompt's domain name.
    domains (`list[str]` or `None`, *optional*, defaults to `None`):
        The ordered domain list, fixed for the run. `None` reads the sorted distinct values of
        `domain_column` from the training dataset.
    surgery_seed (`int` or `None`, *optional*, defaults to `None`):
        Seeds PCGrad's projection orders together with the global step. `None` uses `seed`.
    order_by_domain (`bool`, *optional*, defaults to `True`):
        Stable-sort each generation batch by domain (after TRL's shuffle, before its split into
        `steps_per_generation` micro-batches), so that most micro-batches hold one domain: one forward
        and backward each, not one per domain. The gradient is unchanged except with `loss_type="bnpo"`,
        `top_entropy_quantile < 1` or a MoE auxiliary loss, which depend on the micro-batch's make-up: for
        those it is skipped. Per-micro-batch averages TRL logs (entropy, clip ratios) are grouped differently.
    """

    surgery: str = field(
        default="modular",
        metadata={"help": "How domain gradients are combined.", "choices": list(SURGERY_MODES)},
    )
    surgery_granularity: str = field(
        default="parameter",
        metadata={"help": "What a module is for modular surgery and the statistics.", "choices": list(GRANULARITIES)},
    )
    surgery_method: str = field(
        default="pcgrad",
        metadata={"help": "The method applied per module (ignored by surgery='none').", "choices": list(METHOD_NAMES)},
    )
    surgery_balance: str = field(
        default="none",
        metadata={"help": "'norm': rescale the domains' gradients to their mean norm before the method.",
                  "choices": list(BALANCES)},
    )
    surgery_gram_ema: float = field(
        default=0.0,
        metadata={"help": "Decay in [0, 1) of a moving average of each module's Gram matrix the method decides from."},
    )
    domain_column: str = field(
        default="domain",
        metadata={"help": "Dataset column holding each prompt's domain name."},
    )
    domains: list[str] | None = field(
        default=None,
        metadata={"help": "Ordered domain list; default: the sorted distinct values of `domain_column` in the training set."},
    )
    surgery_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of PCGrad's projection orders (with the global step); default: `seed`."},
    )

    order_by_domain: bool = field(
        default=True,
        metadata={"help": "Sort each generation batch by domain before it is split into micro-batches (same gradient, "
                          "fewer backward passes); skipped for loss_type='bnpo', top_entropy_quantile < 1 and MoE auxiliary losses."},
    )

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.domain_column, str) or not self.domain_column:
            raise ValueError(f"domain_column must be a non-empty column name; got {self.domain_column!r}.")
        self.surgery_options()  # validates every surgery field, with errors naming the value and the choices

    def surgery_options(self, domains: list[str] | None = None) -> SurgeryOptions:
        """The core's options for this config (``domains`` fills in a list read from the dataset)."""
        return SurgeryOptions(
            surgery=self.surgery,
            granularity=self.surgery_granularity,
            method=self.surgery_method,
            domains=self.domains if domains is None else domains,
            seed=self.seed if self.surgery_seed is None else self.surgery_seed,
            balance=self.surgery_balance,
            gram_ema=self.surgery_gram_ema,
        )
