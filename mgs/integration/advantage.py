"""Per-domain advantage normalisation (the MGS paper's "Normalized Advantage" baseline), shared by the adapters.

After the framework's own advantage computation, every row ``i`` of domain ``d`` gets

.. math::

    A'_i = \\frac{A_i}{\\sigma_d + \\epsilon}, \\qquad \\epsilon = 10^{-4},

where :math:`\\sigma_d` is the population standard deviation of :math:`A` over *all* of domain ``d``'s rows of the
batch the advantages were computed on (every rank; rows with zero advantage included). GRPO's advantages are
centred per prompt group and a group lies within one domain, so they are not re-centred: only their scale
changes, and domains whose rewards have different scales weigh equally in the update.

The caller hands the whole batch (TRL: gathered over ranks; verl: the driver's train batch), so every rank
computes the same :math:`\\sigma_d`.
"""

from __future__ import annotations

import torch

EPSILON = 1e-4
"""Added to each domain's standard deviation (the same constant as TRL's and verl's GRPO scaling)."""


def domain_advantage_std(advantages: torch.Tensor, ids: torch.Tensor, num_domains: int) -> torch.Tensor:
    """``[K]`` float64: per domain, the population standard deviation of the rows' ``advantages`` ``[N]``
    (``ids`` ``[N]``: each row's domain index in ``[0, K)``); 0 for a domain without rows.

    Raises:
        ValueError: ``advantages`` is not one value per row, or ``ids`` does not match it or is out of range.
    """
    if advantages.ndim != 1 or ids.shape != advantages.shape:
        raise ValueError(f"per-domain advantage normalisation needs one advantage and one domain id per row; got "
                         f"advantages {tuple(advantages.shape)} and domain ids {tuple(ids.shape)}.")
    ids = ids.to(advantages.device, torch.long)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_domains):
        raise ValueError(f"domain ids must lie in [0, {num_domains}); got {sorted(set(ids.tolist()))}.")
    values = advantages.detach().to(torch.float64)
    count = torch.zeros(num_domains, dtype=torch.float64, device=values.device).index_add_(0, ids, torch.ones_like(values))
    total = torch.zeros_like(count).index_add_(0, ids, values)
    mean = total / count.clamp(min=1)
    squares = torch.zeros_like(count).index_add_(0, ids, (values - mean[ids]) ** 2)
    return (squares / count.clamp(min=1)).sqrt()


def normalize_by_domain(advantages: torch.Tensor, ids: torch.Tensor, num_domains: int,
                        epsilon: float = EPSILON) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A', std)``: every row's advantage divided by its domain's standard deviation plus ``epsilon``
    (:func:`domain_advantage_std`), in ``advantages``' dtype, and the ``[K]`` standard deviations."""
    std = domain_advantage_std(advantages, ids, num_domains)
    scale = (std + epsilon).to(advantages.dtype)
    return advantages / scale[ids.to(advantages.device, torch.long)], std
