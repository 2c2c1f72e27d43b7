"""Per-step statistics from the Gram matrices: tens of scalar tensors, computed without host sync.

Keys (``d`` a domain, ``kind`` one of the partition's module kinds):

- ``grad_norm/{d}``: ‖g_d‖ over all surgery parameters.
- ``conflict_frac``, ``conflict_frac/{kind}``: fraction of (group, domain pair) with g_i·g_j < 0,
  among pairs where both gradients are non-zero and finite.
- ``cosine_mean``, ``cosine_mean/{kind}``: mean cosine over the same pairs.
- ``cosine_global``: mean over domain pairs of the whole-model cosine.
- ``nonfinite/{d}``: number of groups whose gradient in domain ``d`` is not finite.
- ``nonfinite_flags``: the ``[groups, K]`` boolean flags themselves (not a scalar).

Ratios over an empty set (e.g. one domain present) are NaN, which loggers such as TRL's skip.
"""

from __future__ import annotations

import torch


def surgery_stats(
    gram: torch.Tensor,
    nonfinite: torch.Tensor,
    domains: list[str],
    kind_masks: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    k = gram.shape[1]
    diag = gram.diagonal(dim1=1, dim2=2)
    stats: dict[str, torch.Tensor] = {}
    norms = diag.sum(0).sqrt().float()
    for i, name in enumerate(domains):
        stats[f"grad_norm/{name}"] = norms[i]
    rows, cols = torch.triu_indices(k, k, offset=1, device=gram.device)
    usable = (diag > 0) & ~nonfinite
    valid = usable[:, rows] & usable[:, cols]  # [G, pairs]
    dots = gram[:, rows, cols]
    denom = (diag[:, rows] * diag[:, cols]).sqrt()
    cosine = torch.where(valid, dots / torch.where(valid, denom, 1.0), 0.0)
    conflict = (valid & (dots < 0)).double()
    valid_f = valid.double()

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return (num.sum() / den.sum()).float()  # 0/0 = NaN: no pair to measure

    stats["conflict_frac"] = ratio(conflict, valid_f)
    stats["cosine_mean"] = ratio(cosine, valid_f)
    for kind, mask in kind_masks.items():
        weight = mask.unsqueeze(1).double()  # multiply, don't index: boolean indexing syncs on CUDA
        stats[f"conflict_frac/{kind}"] = ratio(conflict * weight, valid_f * weight)
        stats[f"cosine_mean/{kind}"] = ratio(cosine * weight, valid_f * weight)
    total = gram.sum(0)
    tdiag = total.diagonal()
    tvalid = (tdiag[rows] > 0) & (tdiag[cols] > 0)
    tcos = total[rows, cols] / torch.where(tvalid, (tdiag[rows] * tdiag[cols]).sqrt(), 1.0)
    stats["cosine_global"] = ratio(torch.where(tvalid, tcos, 0.0), tvalid.double())
    counts = nonfinite.sum(0).float()
    for i, name in enumerate(domains):
        stats[f"nonfinite/{name}"] = counts[i]
    stats["nonfinite_flags"] = nonfinite
    return stats
