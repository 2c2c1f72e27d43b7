"""The plain, slow PCGrad both the unit and the distributed tests compare mgs with (float64 vectors).

It shares nothing with mgs except the projection orders, which are part of the specification.
"""

from __future__ import annotations

import torch


def reference_pcgrad(vectors: list[torch.Tensor], order: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Σ_i g_i' where g_i' is projected off each ORIGINAL g_j (j in ``order[i]``, i skipped) when g_i'·g_j < 0.

    Also returns the smallest |cos(g_i', g_j)| among the sign tests: how far the data is from a branch
    point, so float32 rounding in mgs cannot take another branch than this float64 reference."""
    total = torch.zeros_like(vectors[0])
    margin = float("inf")
    for i, gi in enumerate(vectors):
        g = gi.clone()
        for j in order[i].tolist():
            if j == i:
                continue
            dot, sq = float(g @ vectors[j]), float(vectors[j] @ vectors[j])
            if sq > 0 and float(g.norm()) > 0:
                margin = min(margin, abs(dot) / (float(g.norm()) * sq**0.5))
            if dot < 0 and sq > 0:
                g = g - dot / sq * vectors[j]
        total += g
    return total, margin
