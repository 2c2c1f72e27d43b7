"""The only place in the core that communicates across processes.

Every rank must call these in the same order with the same shapes: the surgery object makes
sure of that by fixing the domain list (or agreeing it here first) and running the same steps on
every rank whether or not it saw a domain.
"""

from __future__ import annotations

from collections.abc import Callable

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


def gather_objects(obj: object, process_group: object | None = None) -> list[object]:
    """Every rank's ``obj``, in rank order (one ``all_gather_object``; ``[obj]`` outside torch.distributed)."""
    if not is_distributed():
        return [obj]
    gathered: list[object] = [None] * dist.get_world_size(process_group)
    dist.all_gather_object(gathered, obj, group=process_group)
    return gathered


def any_rank(flag: bool, process_group: object | None, device: torch.device) -> bool:
    """Whether ``flag`` is true on any rank of ``process_group`` (one all_reduce and one host read; ``flag`` itself
    outside torch.distributed)."""
    if not is_distributed() or world_size(process_group) == 1:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=process_group)
    return bool(t.item())


def check_same_everywhere(fingerprint: int, describe: Callable[[], object], process_groups: list[object],
                          device: torch.device, what: str) -> None:
    """Raise the same ``ValueError`` on every rank, naming each rank's ``describe()``, unless every rank of each
    process group has the same ``fingerprint`` (< 2**62): one all_reduce per group and one host read; the
    descriptions are gathered only on a mismatch."""
    for process_group in process_groups:
        if world_size(process_group) == 1:
            continue
        extremes = torch.tensor([fingerprint, -fingerprint], dtype=torch.int64, device=device)
        dist.all_reduce(extremes, op=dist.ReduceOp.MAX, group=process_group)
        highest, negated_lowest = extremes.tolist()
        if highest != -negated_lowest:
            gathered: list[object] = [None] * world_size(process_group)
            dist.all_gather_object(gathered, describe(), group=process_group)
            ranks = "; ".join(f"rank {r}: {d}" for r, d in enumerate(gathered))
            raise ValueError(f"the ranks disagree on {what}: {ranks}.")
