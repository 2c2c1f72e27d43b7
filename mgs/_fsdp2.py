"""FSDP2 checks: gradients FSDP2 holds back would land in the wrong domain's buffer.

With ``set_requires_gradient_sync(False)`` FSDP2 keeps a backward's gradient unsharded and
reduce-scatters it at the next synced backward, into whichever ``p.grad`` exists then, possibly
another domain's buffer. Deferring is fine *within* a domain (sync off for its first micro-batches,
on for its last), so the check runs when a domain context exits.

It reads FSDP2's private state, the core's only private upstream seam (:data:`FSDP2_MEMBERS`). The
layout is checked when surgery is built on an FSDP2 model (:func:`check_fsdp2_layout`): a torch whose
FSDP2 keeps that state elsewhere is an error naming the member, instead of a check that silently
never fires.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mgs._errors import UpstreamMismatchError

FSDP2_MEMBERS = (
    "FSDPModule._get_fsdp_state()",
    "FSDPState._fsdp_param_groups (or ._fsdp_param_group)",
    "FSDPParamGroup.fsdp_params",
    "FSDPParamGroup._partial_reduce_output",
    "FSDPParam.unsharded_accumulated_grad",
    "FSDPParam._unsharded_param (once unsharded)",
)
"""The private FSDP2 members read here (torch 2.13's layout, also torch 2.4's single parameter group)."""


def fsdp2_modules(model: Any) -> list[nn.Module]:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return []
    if not isinstance(model, nn.Module):
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _param_groups(module: nn.Module) -> list[Any]:
    state = module._get_fsdp_state()
    groups = getattr(state, "_fsdp_param_groups", None)
    if groups is None:  # older torch: one parameter group per state
        group = getattr(state, "_fsdp_param_group", None)
        groups = [] if group is None else [group]
    return list(groups)


def check_fsdp2_layout(modules: list[nn.Module]) -> None:
    """Raise ``UpstreamMismatchError`` if this torch's FSDP2 state is not laid out as :data:`FSDP2_MEMBERS`."""

    def fail(member: str) -> None:
        raise UpstreamMismatchError(
            f"mgs reads FSDP2's private {member}, which this torch ({torch.__version__}) does not have; the core was "
            f"written for torch 2.13's FSDP2 ({', '.join(FSDP2_MEMBERS)})."
        )

    for module in modules:
        if not callable(getattr(module, "_get_fsdp_state", None)):
            fail("FSDPModule._get_fsdp_state()")
        state = module._get_fsdp_state()
        if not hasattr(state, "_fsdp_param_groups") and not hasattr(state, "_fsdp_param_group"):
            fail("FSDPState._fsdp_param_groups")
        for group in _param_groups(module):
            if not hasattr(group, "fsdp_params"):
                fail("FSDPParamGroup.fsdp_params")
            if not hasattr(group, "_partial_reduce_output"):
                fail("FSDPParamGroup._partial_reduce_output")
            for fsdp_param in group.fsdp_params:
                if not hasattr(fsdp_param, "unsharded_accumulated_grad"):
                    fail("FSDPParam.unsharded_accumulated_grad")


def held_back_gradients(modules: list[nn.Module]) -> str | None:
    """Why some FSDP2 gradient is not yet in its sharded ``p.grad`` (None when every gradient is)."""
    for module in modules:
        for group in _param_groups(module):
            if group._partial_reduce_output is not None:
                return "set_requires_all_reduce(False) left a gradient not yet all-reduced across HSDP replicas"
            for fsdp_param in group.fsdp_params:
                unsharded = getattr(fsdp_param, "_unsharded_param", None)  # set at the first unshard
                if fsdp_param.unsharded_accumulated_grad is not None or (
                    unsharded is not None and unsharded.grad is not None
                ):
                    return "set_requires_gradient_sync(False) left an unreduced, unsharded gradient"
    return None
