"""Step 5 — apply: ``p.grad ← shared + Σ_k w[group, k] · g_k`` for every parameter.

The result is written in place into row 0 of each bucket, and ``p.grad`` becomes a view of it, so
``apply()`` allocates nothing: memory never exceeds the K buffers. Surgery drops its own reference
to the buckets, so they are freed when the training loop drops ``p.grad`` (``zero_grad()``).

Each chunk (each unit, in a span of units smaller than a chunk: :mod:`mgs._buffers`) takes its group's
weights. The K multiply-adds run block by block, so a block's K rows stay in cache between them: the
combine reads the buffers about once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mgs._buffers import CHUNK, Bucket, Slot, Span
from mgs._collectives import average_replicas

COMBINE_BLOCK = 2048
"""Chunks per block of the combine (1M elements): K rows of a block fit in a CPU's last-level cache."""


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _weighted_sum_(block: torch.Tensor, weights: torch.Tensor | None, scratch: torch.Tensor | None) -> None:
    """``block[0] ← Σ_k weights[:, k] · block[k]`` in place (``weights=None``: plain sum); ``block`` is [K, b, CHUNK].

    bf16/fp16 blocks are upcast into ``scratch`` (fp32, reused across blocks), combined there and
    rounded once: mixed-dtype multiply-adds would leave PyTorch's vectorised CPU path, and weights
    rounded to bf16 would double the rounding error."""
    x = block if scratch is None else scratch[:, : block[0].numel()].view(block.shape).copy_(block)
    out = x[0]
    if weights is None:
        for i in range(1, x.shape[0]):
            out.add_(x[i])
    else:
        out.mul_(weights[:, 0:1])
        for i in range(1, x.shape[0]):
            out.addcmul_(x[i], weights[:, i : i + 1])
    if scratch is not None:
        block[0].copy_(out)


def span_weights(span: Span, weights: torch.Tensor) -> torch.Tensor:
    """``[units, K]`` weights of each unit of ``span`` from per-group ``weights`` ``[M, K]`` (M = 1: global), already
    on the bucket's device in its compute dtype."""
    if weights.shape[0] == 1:
        return weights.expand(span.groups.numel(), weights.shape[1])
    return weights.index_select(0, span.groups)


def combine_bucket(bucket: Bucket, weights: torch.Tensor | None, dp_process_group: object | None = None,
                   keep: Callable[[Slot], bool] = lambda slot: True) -> None:
    """Write the combined gradient of ``bucket``'s parameters into their ``.grad`` (``weights=None``: plain sum);
    a parameter for which ``keep`` is false (no backward reached it) keeps ``.grad = None``."""
    data, shared = bucket.data, bucket.shared
    k, chunks = data.shape[0], bucket.numel // CHUNK
    if dp_process_group is not None:  # the shared row is averaged on every rank, used or not, so collectives match
        if shared is None:
            shared = torch.zeros(bucket.numel, dtype=bucket.dtype, device=bucket.device)
        average_replicas([shared], dp_process_group)
    if k == 0:  # no domain at all: only shared gradients
        result = shared if shared is not None else torch.zeros(bucket.numel, dtype=bucket.dtype, device=bucket.device)
    else:
        scratch = None
        if bucket.dtype not in (torch.float32, torch.float64):
            scratch = torch.empty(k, min(chunks, COMBINE_BLOCK) * CHUNK, dtype=torch.float32, device=bucket.device)
        spans = bucket.spans if weights is not None else [Span(0, chunks, CHUNK, bucket.spans[0].groups[:0])]
        if weights is not None:  # float32 (float64 for float64 buckets), once for every span
            weights = weights.to(device=bucket.device, dtype=_compute_dtype(bucket.dtype))
        for span in spans:
            x = data[:, span.start * CHUNK : span.stop * CHUNK].view(k, -1, span.unit)
            w = None if weights is None else span_weights(span, weights)
            step = COMBINE_BLOCK * CHUNK // span.unit  # units per block: about 1M elements
            for start in range(0, x.shape[1], step):
                block = x[:, start : start + step]
                _weighted_sum_(block, None if w is None else w[start : start + step], scratch)
        result = data[0]
        if shared is not None:
            result.add_(shared)
    for slot in bucket.slots:
        slot.param.grad = bucket.view(result, slot) if keep(slot) else None
        slot.touched = False
    bucket.data = None
    bucket.shared = None
