"""``MGSFSDPEngineConfig``: verl's FSDP engine config plus the surgery settings (spike; see docs/verl_design.md).

Selecting it is the whole activation::

    actor_rollout_ref.actor.fsdp_config._target_=verl_mgs.config.MGSFSDPEngineConfig
    +actor_rollout_ref.actor.fsdp_config.surgery=modular

Hydra imports this module inside the actor worker when it builds the actor config, which registers
:class:`verl_mgs.engine.MGSFSDPEngine` before verl builds the engine. With trl >= 1.0 installed and a
reference model, also ``actor_rollout_ref.model.external_lib=verl_mgs`` (the reference is built before
the actor config is read; see docs/verl_design.md, section 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from verl.workers.config import FSDPEngineConfig

from mgs import SurgeryOptions


@dataclass
class MGSFSDPEngineConfig(FSDPEngineConfig):
    """verl's ``FSDPEngineConfig`` with the modular gradient surgery settings.

    > Parameters that control the surgery

    Args:
        surgery (str): ``"none"`` (plain sum of the per-domain gradients: the stock update), ``"global"``
            (the method over all parameters) or ``"modular"`` (the method per group). Default ``"modular"``.
        surgery_granularity (str): how parameters are grouped: ``"parameter"``, ``"module"``, ``"block"``,
            ``"layer"``. Default ``"parameter"``.
        surgery_method (str): ``"pcgrad"`` or another :data:`mgs.METHODS` name. Default ``"pcgrad"``.
        domain_key (str): the non-tensor batch field naming each sample's domain; a dotted path reads a
            key of a per-sample dict (``"extra_info.domain"``). Default ``"data_source"``.
        domains (list[str] | None): the domains, in a fixed order; ``None`` agrees them across ranks from
            each mini-batch (one small all-gather per mini-batch). Default ``None``.
        surgery_balance (str): ``"none"`` or ``"norm"`` (rescale every domain's gradient to the mean norm
            before the method; see docs/methods.md). Default ``"none"``.
        surgery_gram_ema (float): decay of an exponential moving average of the Gram matrices that the
            method decides on (0: off). Default ``0.0``.
        surgery_seed (int): seeds the method's random choices with the step. Default ``0``. (Not ``seed``:
            that is the engine's own seed, 42 in verl's fsdp.yaml.)
    """

    surgery: str = "modular"
    surgery_granularity: str = "parameter"
    surgery_method: str = "pcgrad"
    domain_key: str = "data_source"
    domains: Optional[list[str]] = None
    surgery_balance: str = "none"
    surgery_gram_ema: float = 0.0
    surgery_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _ = self.surgery_options  # validates: errors name the bad value and the allowed ones
        if not isinstance(self.domain_key, str) or not self.domain_key:
            raise ValueError(f"domain_key must be a non-empty field name such as 'data_source'; got {self.domain_key!r}.")
        from verl_mgs.engine import register

        register()

    @property
    def surgery_options(self) -> SurgeryOptions:
        domains = None if self.domains is None else list(self.domains)
        return SurgeryOptions(
            surgery=self.surgery,
            granularity=self.surgery_granularity,
            method=self.surgery_method,
            domains=domains,
            seed=self.surgery_seed,
            balance=self.surgery_balance,
            gram_ema=self.surgery_gram_ema,
        )
