"""Step 3 — Gram matrices: ``G[m, i, j] = g_i · g_j`` restricted to group ``m``.

Each span of a bucket is viewed as ``[units, K, unit]`` (``unit = CHUNK`` except where a chunk holds
several groups: :mod:`mgs._buffers`); one batched matmul gives every unit's K×K Gram (fp32 at least, also
from bf16/fp16 buffers), and ``index_add`` sums units into their groups in float64. Under sharding these are *partial* Grams of the local shards; :mod:`mgs._collectives`
sums them over the shard process group. One read of the buffers, no host sync.
"""

from __future__ import annotations

import torch

from mgs._buffers import CHUNK, Bucket

LOW_PRECISION_BLOCK = 512
"""Chunks upcast to fp32 at a time on CPU, into one reused scratch block that stays in cache
(CPU bmm has no fp32 output for bf16 inputs, and a fresh fp32 copy per block costs page faults)."""


FINE_BLOCK = 1 << 16
"""Units per batched matmul in a span of units smaller than a chunk: bounds its ``[units, K, K]`` output."""


def chunk_grams(data: torch.Tensor, unit: int = CHUNK) -> torch.Tensor:
    """``[K, n]`` buffer → ``[n / unit, K, K]`` Gram of each ``unit`` elements, in float32 or float64."""
    k, n = data.shape
    x = data.view(k, n // unit, unit).transpose(0, 1)
    if data.dtype in (torch.float32, torch.float64):
        return torch.bmm(x, x.transpose(1, 2))
    if data.device.type == "cuda":
        return torch.bmm(x, x.transpose(1, 2), out_dtype=torch.float32)
    units = x.shape[0]
    block_units = max(LOW_PRECISION_BLOCK * CHUNK // unit, 1)
    out = torch.empty(units, k, k, dtype=torch.float32, device=data.device)
    scratch = torch.empty(min(units, block_units), k, unit, dtype=torch.float32, device=data.device)
    for start in range(0, units, block_units):
        block = scratch[: min(block_units, units - start)]
        block.copy_(x[start : start + block.shape[0]])
        torch.bmm(block, block.transpose(1, 2), out=out[start : start + block.shape[0]])
    return out


def local_grams(buckets: list[Bucket], num_groups: int, num_rows: int, device: torch.device) -> dict[object, torch.Tensor]:
    """Per shard process group (``None``: not sharded), the ``[num_groups, K, K]`` float64 Gram of the local data."""
    grams: dict[object, torch.Tensor] = {}
    for b in buckets:
        acc = grams.get(b.shard_process_group)
        if acc is None:
            acc = grams[b.shard_process_group] = torch.zeros(num_groups, num_rows, num_rows, dtype=torch.float64, device=device)
        for span in b.spans:
            data = b.data[:, span.start * CHUNK : span.stop * CHUNK]
            step = span.groups.numel() if span.unit == CHUNK else FINE_BLOCK  # whole chunks: one matmul per span
            for first in range(0, span.groups.numel(), step):
                units = span.groups[first : first + step]
                part = data[:, first * span.unit : (first + units.numel()) * span.unit]
                partial = chunk_grams(part, span.unit).to(device=device, dtype=torch.float64)
                acc.index_add_(0, units.to(device), partial)
    return grams


def without_nonfinite(gram: torch.Tensor, nonfinite: torch.Tensor) -> torch.Tensor:
    """``gram`` with every entry of a (group, domain) whose gradient is not finite set to zero."""
    return torch.where(nonfinite.unsqueeze(2) | nonfinite.unsqueeze(1), 0.0, gram)
