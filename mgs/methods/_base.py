"""Step 4 — a method maps per-group Gram matrices to per-group domain weights.

A method is any callable ``method(gram, generator)`` where ``gram`` is ``[M, K, K]`` float64 (one
symmetric positive semi-definite matrix per group, rows and columns of absent domains are zero). It
returns the weights ``[M, K]``, the group's update being ``Σ_k weights[m, k] · g_k``, either as a
tensor or as a :class:`MethodOutput` that also carries the projections it made. It never sees a
gradient, so it costs O(M·K³) whatever the model size. ``generator`` is a CPU ``torch.Generator``
seeded from ``(seed, step)``: the only randomness a method may use, identical on every rank.

The contract every registered method meets (``tests/unit/test_method_contract.py`` checks it):

- weights ``[M, K]``, floating point, finite, on ``gram``'s device; ``gram`` is left unchanged;
- deterministic given the generator's seed;
- an absent domain (zero row and column) gets a finite weight and does not change the others' weights;
- no host synchronisation (no ``.item()``, ``.tolist()``, ``.cpu()``, no Python branch on values),
  unless the method is registered with ``host_sync=True``.

A method may hold state across steps (e.g. GradVac's target cosines): it then has
``state_dict() -> dict`` (tensors, numbers, strings and containers of them, so that
``torch.load(weights_only=True)`` reads it; non-empty from construction on) and
``load_state_dict(state)``, and its state is part of :meth:`mgs.GradientSurgery.state_dict`.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, Union

import torch


class MethodOutput(NamedTuple):
    """What a method returns when it has more to say than its weights.

    Attributes:
        weights: ``[M, K]``: group ``m``'s update is ``Σ_k weights[m, k] · g_k``.
        projected: ``[M, K, K]`` booleans, ``[m, i, j]`` when domain ``i``'s gradient was projected off
            domain ``j``'s in group ``m`` (PCGrad), for the ``projection_frac`` statistics; ``None`` for
            a method that does not project.
    """

    weights: torch.Tensor
    projected: torch.Tensor | None = None


class GramMethod(Protocol):
    def __call__(self, gram: torch.Tensor, generator: torch.Generator) -> Union[torch.Tensor, MethodOutput]: ...


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
