"""``MGSFSDPEngineConfig``: verl's FSDP engine config plus the surgery settings.

Selecting it is the whole activation::

    actor_rollout_ref.actor.fsdp_config._target_=verl_mgs.config.MGSFSDPEngineConfig
    +actor_rollout_ref.actor.fsdp_config.surgery=modular

Hydra imports this module inside the actor worker when it builds the actor config; importing the
``verl_mgs`` package registers :class:`verl_mgs.engine.MGSFSDPEngine` (:mod:`verl_mgs._registry`), and
building the config checks that verl will use it. With trl >= 1.0 installed and a reference model, also
``actor_rollout_ref.model.external_lib=verl_mgs`` (the reference is built before the actor config is
read; docs/verl_design.md, section 5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from verl.workers.config import FSDPEngineConfig

from mgs import SurgeryOptions
from mgs.integration import DomainIndex, SurgerySettings, settings_doc, surgery_options
from verl_mgs import _registry, _upstream

_upstream.check()


_DOC_ENTRY = "        {name} ({type}): {help} Default ``{default}``."  # verl's docstring style


@dataclass
class MGSFSDPEngineConfig(FSDPEngineConfig, SurgerySettings):
    domain_key: str = field(
        default="data_source",
        metadata={"help": "The non-tensor batch field naming each sample's domain; a dotted path reads a key of a "
                          "per-sample dict ('extra_info.domain')."},
    )
    normalize_advantage_by_domain: bool = field(
        default=False,
        metadata={"help": "Divide every row's advantage (after verl's, on the driver) by the population standard "
                          "deviation (+1e-4) of its domain's advantages over the train batch: the MGS paper's "
                          "Normalized Advantage baseline. Legacy trainer only (trainer.use_v1=false)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.domain_index()  # validates domain_key and domains
        _ = self.surgery_options  # validates: errors name the bad value and the allowed ones
        _registry.require()  # an MGS config with the stock engine would train without surgery, silently
        if not isinstance(self.normalize_advantage_by_domain, bool):
            raise TypeError("actor_rollout_ref.actor.fsdp_config.normalize_advantage_by_domain must be true or false; "
                            f"got {self.normalize_advantage_by_domain!r}.")
        if self.normalize_advantage_by_domain:  # verl builds this config on the driver too (validate_config)
            from verl_mgs import _driver

            _driver.install(self.domain_index())

    @property
    def surgery_options(self) -> SurgeryOptions:
        """The core's options; ``surgery_seed=None`` follows the engine's ``seed``."""
        return surgery_options(self, framework_seed=self.seed)

    def domain_index(self) -> DomainIndex:
        """How rows' domains are read (``domain_key``) and checked (``domains``)."""
        return DomainIndex(self.domain_key, None if self.domains is None else list(self.domains),
                           key_setting="actor_rollout_ref.actor.fsdp_config.domain_key",
                           domains_setting="actor_rollout_ref.actor.fsdp_config.domains")


MGSFSDPEngineConfig.__doc__ = f"""verl's ``FSDPEngineConfig`` with the modular gradient surgery settings.

    > Parameters that control the surgery (the same settings, words and defaults as TRL's ``MGSGRPOConfig``:
    > ``mgs.integration.SETTINGS``)

    Args:
{settings_doc(_DOC_ENTRY)}
        domain_key (str): the non-tensor batch field naming each sample's domain; a dotted path reads a key of a
            per-sample dict (``"extra_info.domain"``). Default ``"data_source"``.
        normalize_advantage_by_domain (bool): after verl's advantage computation on the driver, divide every row's
            advantage by ``std_d + 1e-4``, ``std_d`` the population standard deviation of the advantages of all of its
            domain's rows in the train batch (the MGS paper's Normalized Advantage baseline; works with every
            ``surgery`` mode). It wraps ``verl.trainer.ppo.ray_trainer.compute_advantage`` in the driver (legacy
            trainer, ``trainer.use_v1=false``); the v1 trainer is refused. Default ``False``.
    """
