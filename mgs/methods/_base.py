"""Step 4 — a method maps per-group Gram matrices to per-group domain weights.

A method is any callable ``method(gram, generator) -> weights`` where ``gram`` is
``[M, K, K]`` float64 (one symmetric positive semi-definite matrix per group, rows and columns of
absent domains are zero) and ``weights`` is ``[M, K]``: the group's update is
``Σ_k weights[m, k] · g_k``. It never sees a gradient, so it costs O(M·K³) whatever the model
size, and it must not synchronise with the host (no ``.item()``, no Python branch on values).
``generator`` is a CPU ``torch.Generator`` seeded from ``(seed, step)``: the only randomness a
method may use, identical on every rank.
"""

from __future__ import annotations

from typing import Protocol

import torch


class GramMethod(Protocol):
    def __call__(self, gram: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def step_generator(seed: int, step: int) -> torch.Generator:
    """A private CPU generator for ``(seed, step)``: never touches the global RNGs."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(_splitmix64(_splitmix64(seed & _MASK64) ^ (step & _MASK64)) >> 1)
    return generator
