"""Step 3 — Gram matrices: ``G[m, i, j] = g_i · g_j`` restricted to group ``m``.

Each bucket is viewed as ``[chunks, K, CHUNK]``; one batched matmul gives every chunk's K×K Gram
(fp32 at least, also from bf16/fp16 buffers), and ``index_add`` sums chunks into their groups in
float64. Under sharding these are *partial* Grams of the local shards; :mod:`mgs._collectives`
sums them over the shard process group. One read of the buffers, no host sync.
"""

from __future__ import annotations

import torch

from mgs._buffers import CHUNK, Bucket

LOW_PRECISION_BLOCK = 512
"""Chunks upcast to fp32 at a time on CPU, into one reused scratch block that stays in cache
(CPU bmm has no fp32 output for bf16 inputs, and a fresh fp32 copy per block costs page faults)."""


def chunk_grams(data: torch.Tensor) -> torch.Tensor:
    """``[K, n]`` buffer → ``[n / CHUNK, K, K]`` Gram of each chunk, in float32 or float64."""
    k, n = data.shape
    x = data.view(k, n // CHUNK, CHUNK).transpose(0, 1)
    if data.dtype in (torch.float32, torch.float64):
        return torch.bmm(x, x.transpose(1, 2))
    if data.device.type == "cuda":
        return torch.bmm(x, x.transpose(1, 2), out_dtype=torch.float32)
    chunks = x.shape[0]
    out = torch.empty(chunks, k, k, dtype=torch.float32, device=data.device)
    scratch = torch.empty(min(chunks, LOW_PRECISION_BLOCK), k, CHUNK, dtype=torch.float32, device=data.device)
    for start in range(0, chunks, LOW_PRECISION_BLOCK):
        block = scratch[: min(LOW_PRECISION_BLOCK, chunks - start)]
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
        partial = chunk_grams(b.data).to(device=device, dtype=torch.float64)
        acc.index_add_(0, b.chunk_group.to(device), partial)
    return grams


def without_nonfinite(gram: torch.Tensor, nonfinite: torch.Tensor) -> torch.Tensor:
    """``gram`` with every entry of a (group, domain) whose gradient is not finite set to zero."""
    return torch.where(nonfinite.unsqueeze(2) | nonfinite.unsqueeze(1), 0.0, gram)
