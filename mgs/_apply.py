"""Step 5 — apply: ``p.grad ← shared + Σ_k w[group, k] · g_k`` for every parameter.

Per bucket, each chunk takes its group's weights (``[chunks, K]``), and K broadcasted multiply-adds
write a fresh bucket-sized output (or the bucket's shared row, reused in place); ``p.grad`` then
becomes a view of it and the bucket's K rows are freed at once. Peak memory: the K buffers plus
one bucket; afterwards one gradient, as without surgery.
"""

from __future__ import annotations

import torch

from mgs._buffers import CHUNK, Bucket
from mgs._collectives import average_replicas


def chunk_weights(bucket: Bucket, weights: torch.Tensor) -> torch.Tensor:
    """``[chunks, K]`` weights of each chunk of ``bucket`` from per-group ``weights`` ``[M, K]`` (M = 1: global)."""
    dtype = torch.float64 if bucket.dtype == torch.float64 else torch.float32
    weights = weights.to(device=bucket.device, dtype=dtype)
    chunks = bucket.numel // CHUNK
    if weights.shape[0] == 1:
        return weights.expand(chunks, weights.shape[1])
    return weights.index_select(0, bucket.chunk_group)


def combine_bucket(bucket: Bucket, weights: torch.Tensor, dp_group: object | None = None) -> None:
    """Write the combined gradient of ``bucket``'s parameters into their ``.grad`` and free its buffers."""
    data, out = bucket.data, bucket.shared
    chunks = bucket.numel // CHUNK
    if dp_group is not None:  # the shared row is averaged on every rank, used or not, so collectives match
        if out is None:
            out = torch.zeros(bucket.numel, dtype=bucket.dtype, device=bucket.device)
        average_replicas([out], dp_group)
    w = chunk_weights(bucket, weights)
    x = data.view(data.shape[0], chunks, CHUNK)
    if out is None:
        out = torch.empty(bucket.numel, dtype=bucket.dtype, device=bucket.device)
        if x.shape[0] == 0:
            out.zero_()
        else:
            torch.mul(x[0], w[:, 0:1], out=out.view(chunks, CHUNK))
            x, w = x[1:], w[:, 1:]
    out_chunks = out.view(chunks, CHUNK)
    for k in range(x.shape[0]):
        out_chunks.addcmul_(x[k], w[:, k : k + 1])
    for slot in bucket.slots:
        slot.param.grad = bucket.view(out, slot)
    bucket.data = None
    bucket.shared = None
