"""PCGrad (Yu et al., 2020, "Gradient Surgery for Multi-Task Learning", arXiv:2001.06782) on Gram matrices.

For each domain :math:`i`, :math:`g_i' \\leftarrow g_i`, then for each other domain :math:`j` in a
random order: if :math:`g_i' \\cdot g_j < 0` and :math:`\\|g_j\\|^2 > 0`,

.. math:: g_i' \\leftarrow g_i' - \\frac{g_i' \\cdot g_j}{\\|g_j\\|^2}\\, g_j ,

always against the *original* :math:`g_j`. The update is :math:`\\sum_i g_i'`. With a conflict threshold
:math:`\\tau > 0` the test is :math:`\\cos(g_i', g_j) < -\\tau` instead (:math:`\\tau = 0` is the test above).

Every :math:`g_i'` stays a linear combination :math:`\\sum_k c_{ik} g_k` of the original gradients,
and :math:`g_i' \\cdot g_j = \\sum_k c_{ik} G_{kj}`, so the whole procedure runs on coefficients and
the Gram matrix :math:`G`: exact, O(K³) per group, batched over groups with tensor ops (no host
sync). The weights are :math:`w_k = \\sum_i c_{ik}`. Each (group, domain) draws its own order, as the
official MGS code does.
"""

from __future__ import annotations

import torch

from mgs.methods._base import MethodOutput


def pcgrad_orders(num_groups: int, num_domains: int, generator: torch.Generator) -> torch.Tensor:
    """``[M, K, K]``: ``orders[m, i]`` is a random permutation of all domains; ``i`` itself is skipped."""
    return torch.rand(num_groups, num_domains, num_domains, generator=generator).argsort(dim=-1)


def pcgrad_weights(
    gram: torch.Tensor, generator: torch.Generator, return_projections: bool = False, threshold: float = 0.0
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """PCGrad weights ``[M, K]`` from Gram matrices ``[M, K, K]`` (see the module docstring); with
    ``return_projections`` also ``[M, K, K]`` booleans: ``[m, i, j]`` when g_i' was projected off g_j.
    ``threshold`` τ: project only when cos(g_i', g_j) < −τ."""
    m, k, _ = gram.shape
    orders = pcgrad_orders(m, k, generator)
    if gram.device.type == "cuda":
        orders = orders.pin_memory().to(gram.device, non_blocking=True)
    else:
        orders = orders.to(gram.device)
    coef = torch.eye(k, dtype=gram.dtype, device=gram.device).expand(m, k, k).clone()  # coef[m, i, :] ↔ g_i'
    sq_norm = gram.diagonal(dim1=1, dim2=2)  # [M, K]
    self_index = torch.arange(k, device=gram.device).expand(m, k)
    projected = torch.zeros(m, k, k, dtype=torch.bool, device=gram.device) if return_projections else None
    for t in range(k):
        j = orders[:, :, t]  # [M, K]: the domain each g_i' meets at step t
        gram_j = gram.gather(1, j.unsqueeze(-1).expand(m, k, k))  # [m, i, :] = G[j(m, i), :]
        dot = (coef * gram_j).sum(-1)  # g_i' · g_j
        norm_j = sq_norm.gather(1, j)
        if threshold > 0:  # cos(g_i', g_j) < -τ  ⇔  dot < -τ ‖g_i'‖ ‖g_j‖, ‖g_i'‖² = c_i G c_iᵀ
            current = torch.einsum("mik,mkl,mil->mi", coef, gram, coef).clamp(min=0)
            project = (dot < -threshold * (current * norm_j.clamp(min=0)).sqrt()) & (norm_j > 0) & (j != self_index)
        else:
            project = (dot < 0) & (norm_j > 0) & (j != self_index)
        factor = torch.where(project, dot / torch.where(norm_j > 0, norm_j, 1.0), 0.0)
        coef.scatter_add_(2, j.unsqueeze(-1), -factor.unsqueeze(-1))
        if projected is not None:
            projected.scatter_(2, j.unsqueeze(-1), project.unsqueeze(-1))  # each (i, j) is met once
    weights = coef.sum(dim=1)
    return weights if projected is None else (weights, projected)


class ThresholdPCGrad:
    """PCGrad with a conflict threshold τ > 0 (``conflict_threshold``): projects only when cos(g_i', g_j) < −τ."""

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def __call__(self, gram: torch.Tensor, generator: torch.Generator) -> MethodOutput:
        weights, projected = pcgrad_weights(gram, generator, return_projections=True, threshold=self.threshold)
        return MethodOutput(weights, projected)


def pcgrad(gram: torch.Tensor, generator: torch.Generator) -> MethodOutput:
    """The registered ``"pcgrad"`` method: :func:`pcgrad_weights` with its projections.

    Args:
        gram: ``[M, K, K]`` Gram matrices.
        generator: the step's generator (draws the projection orders).

    Returns:
        The weights ``[M, K]`` and the ``[M, K, K]`` projection flags.
    """
    weights, projected = pcgrad_weights(gram, generator, return_projections=True)
    return MethodOutput(weights, projected)
