"""Step 2 — per-domain gradient buffers.

Parameters are packed into *buckets*, one per (dtype, device, shard process group), capped in size. A
bucket holds all K domains' gradients of its parameters as one ``[K, n]`` tensor; each parameter
owns a slot of ``n`` aligned to :data:`CHUNK` elements (the padding stays zero). While a domain is
active, every ``p.grad`` is a view of that domain's row (a DTensor around the local view for
FSDP2 shards), so autograd and FSDP2 accumulate straight into the buffer: no copy, no extra
gradient-sized memory. Chunk alignment lets one batched matmul compute the Gram matrices of
every chunk of a bucket; each chunk belongs to exactly one parameter.

A parameter split into groups (attention heads, experts: :mod:`mgs._slicing`) may have chunks that hold
several groups: a row slice whose size or offset (an FSDP2 shard edge) is not a multiple of the chunk, or
every chunk of a column slice (``o_proj``'s heads). A bucket is therefore laid out as *spans* of chunks:
a span of whole-group chunks is read as ``[chunks, K, CHUNK]`` with one group per chunk, as before; a span
of mixed chunks is read as ``[units, K, unit]`` with one group per unit, ``unit`` the largest divisor of
the chunk on which every group boundary of that parameter falls (``head_dim`` for ``o_proj``). Both are
views of the same buffer: no copy, no gradient-sized index.

Buffers are allocated at the first backward of a step. :mod:`mgs._apply` writes the result into
row 0 and drops its reference, so they are freed when the training loop drops ``p.grad``.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from functools import partial

import torch

from mgs._partition import Partition
from mgs._slicing import ParamSlicing

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch built without distributed support
    DTensor = None  # type: ignore[assignment,misc]

CHUNK = 512
"""Slot alignment in elements; the Gram pass works on ``[chunks, K, CHUNK]`` blocks."""

MAX_MIXED_RUNS = 8
"""A split parameter with more runs of mixed chunks than this is read as one span of units: fewer, larger kernels."""

BUCKET_CAP = 1 << 24
"""Elements per bucket (a larger parameter gets a bucket of its own); bounds the Gram pass's temporary."""


def _ceil_chunks(numel: int) -> int:
    return -(-numel // CHUNK) * CHUNK


@dataclass
class Slot:
    param: torch.Tensor
    offset: int
    numel: int
    local_shape: torch.Size
    dtensor_spec: tuple | None  # (mesh, placements, global shape, global stride) for DTensor params
    slicing: ParamSlicing  # which group each element belongs to (one group unless split)
    global_offset: int = 0  # flat index of the local shard's first element in the full tensor
    touched: bool = False  # a backward (or a stray gradient) reached the parameter since the last apply()
    fires: int = 0  # accumulate-grad hook calls, to tell autograd's in-place writes from a user's

    @property
    def group(self) -> int:
        """Its group, or its first piece's when split."""
        return self.slicing.groups[0]


@dataclass(frozen=True)
class Span:
    """Chunks ``[start, stop)`` of a bucket, read as ``[units, K, unit]``; ``groups[u]`` is unit ``u``'s group."""

    start: int
    stop: int
    unit: int
    groups: torch.Tensor  # [(stop - start) * CHUNK // unit] int64, on the bucket's device


@dataclass
class Bucket:
    dtype: torch.dtype
    device: torch.device
    shard_process_group: object | None  # over which the slots are sharded, None when not sharded
    slots: list[Slot] = field(default_factory=list)
    numel: int = 0
    spans: list[Span] = field(default_factory=list)  # cover the bucket's chunks in order
    data: torch.Tensor | None = None  # [K, numel]
    shared: torch.Tensor | None = None  # [numel], allocated when a gradient belongs to no domain

    def view(self, row: torch.Tensor, slot: Slot) -> torch.Tensor:
        """``row``'s part for ``slot``, shaped (and typed) like ``slot.param``'s gradient."""
        local = row[slot.offset : slot.offset + slot.numel].view(slot.local_shape)
        if slot.dtensor_spec is None:
            return local
        mesh, placements, shape, stride = slot.dtensor_spec
        return DTensor.from_local(local, mesh, placements, run_check=False, shape=shape, stride=stride)


def _local_and_process_group(param: torch.Tensor, name: str, shard_process_group: object | None):
    """The local tensor, the process group its shards live on, and the DTensor spec (or None)."""
    if DTensor is not None and isinstance(param, DTensor):
        placements = tuple(param.placements)
        if any(p.is_partial() for p in placements):
            raise NotImplementedError(f"parameter {name!r} has a Partial placement {placements}; only Shard and Replicate are supported.")
        shard_dims = [i for i, p in enumerate(placements) if p.is_shard()]
        if len(shard_dims) > 1:
            raise NotImplementedError(
                f"parameter {name!r} is sharded over {len(shard_dims)} mesh dimensions {placements}; "
                "MGS supports one shard dimension (FSDP2, or HSDP's shard dimension)."
            )
        process_group = param.device_mesh.get_group(shard_dims[0]) if shard_dims else None
        spec = (param.device_mesh, placements, param.shape, param.stride())
        return param.to_local(), process_group, spec
    return param, shard_process_group, None


def _global_offset(param: torch.Tensor, name: str, local: torch.Tensor, spec: tuple | None,
                   process_group: object | None) -> int:
    """Flat index in the full tensor of the local shard's first element: where a sliced parameter's group
    boundaries fall in this rank's shard. FSDP2 shards dim 0 as ``torch.chunk`` does."""
    if spec is None:
        if process_group is not None:
            raise NotImplementedError(
                f"parameter {name!r} is split into groups (heads or experts) and sharded as a plain tensor over "
                "shard_process_group, whose shards' positions in the full tensor are unknown; use FSDP2 (DTensor "
                "parameters) or a granularity without sub-tensor groups."
            )
        return 0
    mesh, placements, shape, _ = spec
    shard_dims = [(i, p) for i, p in enumerate(placements) if p.is_shard()]
    if not shard_dims:
        return 0
    mesh_dim, placement = shard_dims[0]
    if placement.dim != 0:
        raise NotImplementedError(f"parameter {name!r} is split into groups (heads or experts) and sharded along dim "
                                  f"{placement.dim}; sub-tensor groups support FSDP2's Shard(0) only.")
    ways, coordinate = mesh.size(mesh_dim), mesh.get_local_rank(mesh_dim)
    per_rank = -(-shape[0] // ways)
    first_row = min(coordinate * per_rank, shape[0])
    rows = max(min(shape[0], first_row + per_rank) - first_row, 0)
    if local.dim() == 0 or local.shape[0] != rows:
        raise NotImplementedError(f"parameter {name!r}: this rank's shard has shape {tuple(local.shape)}, not the "
                                  f"{rows} rows of torch.chunk's Shard(0) layout; its group boundaries are unknown.")
    return first_row * math.prod(shape[1:])


def _slot_layout(slot: Slot) -> tuple[torch.Tensor, list[tuple[int, int, int, torch.Tensor]]]:
    """``(chunk_groups, mixed_runs)`` of a slot: each chunk's group (-1 where it holds several) and, per run of
    mixed chunks, ``(first chunk, stop chunk, unit, groups of its units)``; chunks counted from the slot's start."""
    chunks = -(-slot.numel // CHUNK)
    sliced = slot.slicing
    if sliced.dim is None or chunks == 0:
        return torch.full((chunks,), slot.group, dtype=torch.long), []
    seg, off, n = sliced.segment, slot.global_offset, slot.numel
    groups = torch.tensor(sliced.groups, dtype=torch.long)
    starts = torch.arange(chunks, dtype=torch.long) * CHUNK
    first = (off + starts) // seg
    last = (off + torch.clamp(starts + CHUNK, max=n) - 1) // seg
    pure = first == last
    chunk_groups = torch.where(pure, groups[first % len(groups)], -1)
    mixed = (~pure).nonzero().flatten().tolist()
    runs: list[tuple[int, int, int, torch.Tensor]] = []
    if not mixed:
        return chunk_groups, runs
    unit = math.gcd(CHUNK, seg, off % seg)
    runs_count = 1 + sum(1 for a, b in zip(mixed, mixed[1:]) if b != a + 1)
    if runs_count > MAX_MIXED_RUNS:  # many boundary chunks (e.g. [E, 2880] expert biases): one span for the slot,
        mixed = list(range(chunks))  # so that a step launches a few kernels for it, not one per boundary
        chunk_groups = torch.full((chunks,), -1, dtype=torch.long)
    begin = prev = mixed[0]
    for c in mixed[1:] + [None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        positions = begin * CHUNK + torch.arange((prev + 1 - begin) * CHUNK // unit, dtype=torch.long) * unit
        elements = off + torch.clamp(positions, max=n - 1)  # the padding after the tensor is zero: any group
        runs.append((begin, prev + 1, unit, groups[(elements // seg) % len(groups)]))
        if c is not None:
            begin = prev = c
    return chunk_groups, runs


def _bucket_spans(bucket: Bucket) -> list[Span]:
    """Cover the bucket's chunks with spans: maximal runs of whole-group chunks, and each run of mixed chunks."""
    total = bucket.numel // CHUNK
    chunk_groups = torch.full((total,), bucket.slots[0].group if bucket.slots else 0, dtype=torch.long)
    fine: list[tuple[int, int, int, torch.Tensor]] = []
    for slot in bucket.slots:
        groups, runs = _slot_layout(slot)
        base = slot.offset // CHUNK
        chunk_groups[base : base + groups.numel()] = groups
        fine += [(base + a, base + b, unit, g) for a, b, unit, g in runs]
    spans, cursor = [], 0
    for a, b, unit, groups in fine + [(total, total, CHUNK, None)]:
        if a > cursor:
            spans.append(Span(cursor, a, CHUNK, chunk_groups[cursor:a].to(bucket.device)))
        if groups is not None:
            spans.append(Span(a, b, unit, groups.to(bucket.device)))
        cursor = b
    return spans


def build_buckets(partition: Partition, shard_process_group: object | None, cap: int = BUCKET_CAP) -> list[Bucket]:
    """Pack the partition's parameters into buckets, in parameter order."""
    open_buckets: dict[tuple, Bucket] = {}
    buckets: list[Bucket] = []
    for param, names, sliced in zip(partition.params, partition.names, partition.slicings):
        local, process_group, spec = _local_and_process_group(param, names[0], shard_process_group)
        key = (local.dtype, local.device, process_group)
        bucket = open_buckets.get(key)
        size = _ceil_chunks(local.numel())
        if bucket is None or (bucket.numel and bucket.numel + size > cap):
            bucket = Bucket(local.dtype, local.device, process_group)
            open_buckets[key] = bucket
            buckets.append(bucket)
        offset = 0 if sliced.dim is None else _global_offset(param, names[0], local, spec, process_group)
        bucket.slots.append(Slot(param, bucket.numel, local.numel(), local.shape, spec, sliced, offset))
        bucket.numel += size
    for bucket in buckets:
        if bucket.numel == 0:  # only empty shards: keep one zero chunk so shapes stay regular
            bucket.numel = CHUNK
        bucket.spans = _bucket_spans(bucket)
    return buckets


def _remove_hooks(handles: list) -> None:
    for handle in handles:
        handle.remove()


def _mark_touched(slot_ref: weakref.ref, param: torch.Tensor) -> None:
    slot = slot_ref()
    if slot is not None:
        slot.touched = True
        slot.fires += 1


class DomainBuffers:
    """Owns the buckets and points ``p.grad`` at the active domain's row.

    Invariant outside :meth:`attach`/:meth:`detach`: every ``p.grad`` is None. A gradient found in
    ``p.grad`` at any other time was computed outside a domain, so it is moved to the *shared* row:
    added after surgery, never projected.

    Which parameters a backward reached is recorded on the host by a post-accumulate-grad hook per plain
    parameter (``Slot.touched``), so :func:`mgs._apply.combine_bucket` can leave ``p.grad = None`` for the
    others, as plain PyTorch does. Each of autograd's accumulations into a view is one in-place write, which
    bumps the bucket's version counter once: any other count during a context means someone wrote into
    ``p.grad`` by hand (``p.grad.add_(g)``) or replaced it, and then every parameter of that bucket counts as
    touched. (A write through ``p.grad.data`` bumps no counter and is not seen: write ``p.grad`` itself.)
    FSDP2 shards are written by FSDP2's reduce-scatter, which fires no hook.
    """

    def __init__(self, partition: Partition, shard_process_group: object | None = None, cap: int = BUCKET_CAP):
        self.buckets = build_buckets(partition, shard_process_group, cap)
        self._attached: list[tuple[Slot, torch.Tensor, torch.Tensor]] | None = None
        self._writes: list[tuple[Bucket, torch.Tensor, int, int]] = []
        handles = [slot.param.register_post_accumulate_grad_hook(partial(_mark_touched, weakref.ref(slot)))
                   for b in self.buckets for slot in b.slots if slot.dtensor_spec is None]  # weak: no cycle to the slots
        weakref.finalize(self, _remove_hooks, handles)  # a surgery built again on the same model adds none

    def slots(self):
        return (slot for b in self.buckets for slot in b.slots)

    @property
    def is_open(self) -> bool:
        return any(b.data is not None for b in self.buckets)

    def open(self, num_rows: int) -> None:
        """Allocate zeroed ``[num_rows, n]`` buffers and take over any gradient already in ``p.grad``."""
        for b in self.buckets:
            b.data = torch.zeros(num_rows, b.numel, dtype=b.dtype, device=b.device)
        self.collect_strays()

    def resize(self, num_rows: int, old_to_new: list[int]) -> None:
        """Grow to ``num_rows`` rows; old row ``i`` moves to row ``old_to_new[i]`` (domain discovery)."""
        for b in self.buckets:
            if b.data is None:
                continue
            data = torch.zeros(num_rows, b.numel, dtype=b.dtype, device=b.device)
            data[old_to_new] = b.data
            b.data = data

    def collect_strays(self) -> None:
        """Move gradients written outside any domain into the shared row and clear ``p.grad``."""
        for b in self.buckets:
            for slot in b.slots:
                grad = slot.param.grad
                if grad is None:
                    continue
                if b.shared is None:
                    b.shared = torch.zeros(b.numel, dtype=b.dtype, device=b.device)
                local = grad.to_local() if slot.dtensor_spec is not None else grad
                b.shared[slot.offset : slot.offset + slot.numel].view(slot.local_shape).add_(local)
                slot.param.grad = None
                slot.touched = True

    def attach(self, row: int | None) -> None:
        """Point every ``p.grad`` at row ``row`` (``None``: the shared row). On failure what was attached is
        detached again, so no ``p.grad`` is left pointing into the buffers."""
        self.collect_strays()
        attached = self._attached = []
        self._writes = []
        for b in self.buckets:
            if row is None:
                if b.shared is None:
                    b.shared = torch.zeros(b.numel, dtype=b.dtype, device=b.device)
                target = b.shared
            else:
                target = b.data[row]
            self._writes.append((b, target, target._version, sum(s.fires for s in b.slots)))
            for slot in b.slots:
                view = b.view(target, slot)
                slot.param.grad = view
                attached.append((slot, view, target))

    def detach(self) -> None:
        """Take the gradients back from ``p.grad`` (copying them if something replaced our views)."""
        for b, target, version, fires in self._writes:
            if target._version - version != sum(s.fires for s in b.slots) - fires:  # written by hand (or replaced)
                for slot in b.slots:
                    slot.touched = True
        self._writes = []
        for slot, view, _ in self._attached or ():
            grad = slot.param.grad
            if grad is not view:  # replaced (e.g. create_graph=True accumulates out of place) or cleared
                local = view.to_local() if slot.dtensor_spec is not None else view
                if grad is None:
                    local.zero_()
                else:
                    local.copy_(grad.to_local() if slot.dtensor_spec is not None else grad)
                    slot.touched = True
            slot.param.grad = None
        self._attached = None

    def release(self) -> None:
        for b in self.buckets:
            b.data = None
            b.shared = None
            for slot in b.slots:
                slot.touched = False
