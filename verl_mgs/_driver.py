"""Per-domain advantage normalisation on verl's driver (``normalize_advantage_by_domain`` of the engine config).

verl computes advantages on the driver, in ``verl.trainer.ppo.ray_trainer.compute_advantage`` (legacy trainer,
``trainer.use_v1=false``, as the recipes run), from the whole train batch; a registered advantage estimator does not
see the rows' domains (only ``gdpo`` gets ``non_tensor_batch``). So the narrowest seam that reaches the domain is that
function: :func:`install` wraps it (once; the wrapper calls verl's own and then rescales), listed in
:mod:`verl_mgs._upstream`. Every row ``i`` of domain ``d`` gets ``A'_i = A_i / (std_d + 1e-4)``, with ``std_d`` the
population deviation of the rows' advantages (the response-mask mean of each row's token advantages: GRPO's is one
value per row) over all of domain ``d``'s rows of the batch (:func:`mgs.integration.domain_advantage_std`).

Activation is explicit: :class:`verl_mgs.config.MGSFSDPEngineConfig` calls :func:`install` when the setting is on.
verl builds that config in the driver (``validate_config`` in the TaskRunner), after ``main_ppo_v0`` imported
``ray_trainer``; in a worker process, where ``ray_trainer`` is not imported, nothing is wrapped. verl's v1 trainer
(``trainer.use_v1=true``) computes advantages elsewhere (``compute_advantage_for_multi_trajectories``, imported by
name into ``v1.trainer_base``) from fields that do not include the domain: where that module is loaded when the config
is built, :func:`install` replaces the function with one that raises. Not tested on the v1 trainer (it needs the
``transfer_queue`` package, not installed here): use the legacy trainer.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import torch

from mgs.integration import DomainIndex, domain_advantage_std
from mgs.integration.advantage import EPSILON
from verl_mgs import _upstream

LEGACY = "verl.trainer.ppo.ray_trainer"
V1 = "verl.trainer.ppo.v1.trainer_base"  # imports compute_advantage_for_multi_trajectories by name
_MARK = "_verl_mgs_domain_advantage"


def _row_domains(data: Any, index: DomainIndex) -> list[str]:
    field = data.non_tensor_batch.get(index.field)
    if field is None:
        raise KeyError(f"{index.where}={index.key!r}: the driver's train batch has no non-tensor field "
                       f"{index.field!r} (fields: {sorted(data.non_tensor_batch)}), so per-domain advantage "
                       "normalisation cannot read the rows' domains.")
    return index.of_values(list(field))


def normalize_batch(data: Any, index: DomainIndex) -> dict[str, float]:
    """Rescale ``data.batch["advantages"]`` (a verl ``DataProto`` after ``compute_advantage``) per domain, in place;
    returns ``{domain: std_d}``."""
    labels = _row_domains(data, index)
    domains = index.discover(labels)
    ids = torch.tensor(index.ids(labels, domains))
    advantages, mask = data.batch["advantages"], data.batch["response_mask"].to(data.batch["advantages"].dtype)
    rows = (advantages * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)
    std = domain_advantage_std(rows, ids.to(rows.device), len(domains))
    scale = (std + EPSILON).to(advantages.dtype)[ids.to(rows.device)]
    data.batch["advantages"] = advantages / scale.unsqueeze(-1)
    return {d: float(s) for d, s in zip(domains, std.tolist())}


def install(index: DomainIndex) -> bool:
    """Wrap the driver's advantage computation (idempotent; the latest ``index`` wins). Returns whether the legacy
    trainer's function was wrapped (False in a process that has not imported it: a worker)."""
    legacy = sys.modules.get(LEGACY)
    if legacy is not None:
        _upstream.check_driver()
        current = legacy.compute_advantage
        original = getattr(current, _MARK, current)

        @functools.wraps(original)
        def compute_advantage(data, *args, **kwargs):
            data = original(data, *args, **kwargs)
            normalize_batch(data, compute_advantage.domain_index)
            return data

        compute_advantage.domain_index = index
        setattr(compute_advantage, _MARK, original)
        legacy.compute_advantage = compute_advantage
    v1 = sys.modules.get(V1)
    if v1 is not None and not hasattr(v1.compute_advantage_for_multi_trajectories, _MARK):
        stock = v1.compute_advantage_for_multi_trajectories

        @functools.wraps(stock)
        def refuse(*args, **kwargs):
            raise NotImplementedError(
                "actor_rollout_ref.actor.fsdp_config.normalize_advantage_by_domain=true needs verl's legacy trainer "
                "(trainer.use_v1=false, as in recipes/verl): the v1 trainer computes advantages from fields that do "
                "not carry the rows' domains.")

        setattr(refuse, _MARK, stock)
        v1.compute_advantage_for_multi_trajectories = refuse
    return legacy is not None


def uninstall() -> None:
    """Put verl's own functions back (tests)."""
    for name, attribute in ((LEGACY, "compute_advantage"), (V1, "compute_advantage_for_multi_trajectories")):
        module = sys.modules.get(name)
        if module is not None and hasattr(getattr(module, attribute), _MARK):
            setattr(module, attribute, getattr(getattr(module, attribute), _MARK))

