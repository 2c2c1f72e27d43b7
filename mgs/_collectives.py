"""The only place in the core that communicates across processes.

Every rank must call these in the same order with the same shapes: the surgery object makes
sure of that by fixing the domain list (or agreeing it here first) and running the same steps on
every rank whether or not it saw a domain.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size(process_group: object | None) -> int:
    return dist.get_world_size(process_group) if is_distributed() else 1


def sum_partial_grams(partials: dict[object, torch.Tensor]) -> torch.Tensor:
    """Sum local partial Grams over their shard process groups: one all_reduce per distinct process group."""
    total = None
    for process_group, gram in partials.items():
        if process_group is not None and world_size(process_group) > 1:
            dist.all_reduce(gram, op=dist.ReduceOp.SUM, group=process_group)
        total = gram if total is None else total + gram
    return total


def average_replicas(tensors: list[torch.Tensor], process_group: object) -> None:
    """In-place mean over a data-parallel process group (DDP semantics) of each tensor, e.g. each domain's buffer."""
    n = world_size(process_group)
    if n == 1:
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=process_group)
        t.div_(n)


def agree_domains(known: list[str], local: list[str], process_group: object | None = None) -> list[str]:
    """Extend the agreed list ``known`` with every rank's new names, sorted, identically on all ranks (one
    all_gather_object over ``process_group``; see ``GradientSurgery.agree_domains``)."""
    if not is_distributed():
        return known + [d for d in local if d not in known]
    gathered: list[list[str] | None] = [None] * dist.get_world_size(process_group)
    dist.all_gather_object(gathered, local, group=process_group)
    new = sorted({d for names in gathered for d in names or ()} - set(known))
    return known + new
