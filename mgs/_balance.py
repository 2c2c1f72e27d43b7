r"""Step 3b — magnitude balancing: rescale each domain's gradient to the mean norm of the domains present.

With :math:`n_k = \sqrt{G_{kk}}` the norm of domain :math:`k`'s gradient in a group and
:math:`\bar n` the mean of :math:`n_k` over the domains with :math:`n_k > 0`, domain :math:`k` is
scaled by :math:`s_k = \bar n / n_k` (1 where :math:`n_k = 0`). The method then sees the Gram matrix
of the scaled gradients, :math:`S G S`, and its weights are multiplied by :math:`s_k`, so the update
is :math:`\sum_k w_k s_k g_k`. Everything comes from the Gram diagonal: no extra pass over the gradients.
"""

from __future__ import annotations

import torch


def balance_scales(gram: torch.Tensor) -> torch.Tensor:
    """``[M, K]`` scales that bring every present domain of each group to the group's mean norm."""
    norms = gram.diagonal(dim1=1, dim2=2).clamp(min=0).sqrt()  # [M, K]
    present = norms > 0
    mean = norms.sum(1, keepdim=True) / present.sum(1, keepdim=True).clamp(min=1)
    return torch.where(present, mean / torch.where(present, norms, 1.0), 1.0)


def balanced_gram(gram: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """:math:`S G S`: the Gram matrices of the scaled gradients."""
    return gram * scales.unsqueeze(2) * scales.unsqueeze(1)
