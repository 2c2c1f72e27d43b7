"""FSDP2 checks: gradients FSDP2 holds back would land in the wrong domain's buffer.

With ``set_requires_gradient_sync(False)`` FSDP2 keeps a backward's gradient unsharded and
reduce-scatters it at the next synced backward, into whichever ``p.grad`` exists then, possibly
another domain's buffer. Deferring is fine *within* a domain (sync off for its first micro-batches,
on for its last), so the check runs when a domain context exits. It reads FSDP2's private state
(torch 2.4 – 2.13 layout), so an unknown layout skips the check, and never breaks training.
"""

from __future__ import annotations

from typing import Any

from torch import nn


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


def held_back_gradients(modules: list[nn.Module]) -> str | None:
    """Why some FSDP2 gradient is not yet in its sharded ``p.grad`` (None when every gradient is)."""
    for module in modules:
        for group in _param_groups(module):
            if getattr(group, "_partial_reduce_output", None) is not None:
                return "set_requires_all_reduce(False) left a gradient not yet all-reduced across HSDP replicas"
            for fsdp_param in getattr(group, "fsdp_params", ()):
                unsharded = getattr(fsdp_param, "_unsharded_param", None)
                if getattr(fsdp_param, "unsharded_accumulated_grad", None) is not None or (
                    unsharded is not None and unsharded.grad is not None
                ):
                    return "set_requires_gradient_sync(False) left an unreduced, unsharded gradient"
    return None
