"""Per-step statistics from the Gram matrices: tens of scalar tensors, computed without host sync.

Keys (``d`` a domain, ``kind`` one of the partition's module kinds):

- ``grad_norm/{d}``: ‖g_d‖ over all surgery parameters.
- ``conflict_frac``, ``conflict_frac/{kind}``: fraction of (group, domain pair) with g_i·g_j < 0,
  among pairs where both gradients are non-zero and finite.
- ``cosine_mean``, ``cosine_mean/{kind}``: mean cosine over the same pairs.
- ``cosine_global``: mean over domain pairs of the whole-model cosine.
- ``update_norm``: ‖Σ_k w_k g_k‖ over all surgery parameters: the norm of the combined update (without
  shared gradients).
- ``change_ratio``, ``change_ratio/{kind}``: ‖g_surgery − g_sum‖ / ‖g_sum‖, how much surgery (and
  balancing) changed the update against the plain sum; 0 for ``surgery="none"`` without balancing.
- ``projection_frac``, ``projection_frac/{kind}``: fraction of (group, ordered domain pair) where PCGrad
  projected one gradient off the other, among usable pairs; 0 for ``"none"``, NaN for methods that do not
  project (TorchJD weightings).
- ``weight/{d}``, ``weight/{d}/{kind}``: the effective weight of domain ``d``: its per-group weights
  averaged with weights ‖g_d‖² per group (1 for the plain sum).
- ``nonfinite/{d}``: number of groups whose gradient in domain ``d`` is not finite.
- ``nonfinite_flags``: the ``[groups, K]`` boolean flags themselves (not a scalar).

Ratios over an empty set (e.g. one domain present) are NaN, which loggers such as TRL's skip.
"""

from __future__ import annotations

import torch


def surgery_stats(
    gram: torch.Tensor,
    clean: torch.Tensor,
    nonfinite: torch.Tensor,
    domains: list[str],
    kind_masks: dict[str, torch.Tensor],
    weights: torch.Tensor | None = None,
    projected: torch.Tensor | None = None,
    method_projects: bool = True,
) -> dict[str, torch.Tensor]:
    """Statistics of one step. ``clean`` is ``gram`` with non-finite (group, domain) entries zeroed; ``weights`` ``[G, K]`` are the final per-group weights (``None``: plain sum);
    ``projected`` ``[G, K, K]`` marks PCGrad's projections (``None``: none made, or NaN when
    ``method_projects`` is False)."""
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
    stats.update(_update_stats(clean, domains, kind_masks, weights, projected, method_projects, usable))
    counts = nonfinite.sum(0).float()
    for i, name in enumerate(domains):
        stats[f"nonfinite/{name}"] = counts[i]
    stats["nonfinite_flags"] = nonfinite
    return stats


def _update_stats(clean, domains, kind_masks, weights, projected, method_projects, usable):
    """Update norm, change ratio, projection fraction and effective weights, all from the Gram matrices."""
    g, k = clean.shape[0], clean.shape[1]
    ones = torch.ones(g, k, dtype=clean.dtype, device=clean.device)
    w = ones if weights is None else weights.to(clean.dtype).expand(g, k)

    def quad(v: torch.Tensor) -> torch.Tensor:  # [G]: v_gᵀ G_g v_g
        return torch.einsum("gi,gij,gj->g", v, clean, v)

    stats: dict[str, torch.Tensor] = {"update_norm": quad(w).sum().clamp(min=0).sqrt().float()}
    change, plain = quad(w - ones), quad(ones)
    stats["change_ratio"] = (change.sum().clamp(min=0).sqrt() / plain.sum().sqrt()).float()
    for kind, mask in kind_masks.items():
        m = mask.double()
        stats[f"change_ratio/{kind}"] = ((change * m).sum().clamp(min=0).sqrt() / (plain * m).sum().sqrt()).float()
    ordered = usable.unsqueeze(2) & usable.unsqueeze(1) & ~torch.eye(k, dtype=torch.bool, device=clean.device)
    if not method_projects:
        made = torch.full((g,), float("nan"), dtype=torch.float64, device=clean.device)
    elif projected is None:
        made = torch.zeros(g, dtype=torch.float64, device=clean.device)
    else:
        made = (projected.expand(g, k, k) & ordered).sum((1, 2)).double()
    pairs = ordered.sum((1, 2)).double()
    stats["projection_frac"] = (made.sum() / pairs.sum()).float()
    for kind, mask in kind_masks.items():
        m = mask.double()
        stats[f"projection_frac/{kind}"] = ((made * m).sum() / (pairs * m).sum()).float()
    energy = clean.diagonal(dim1=1, dim2=2)  # [G, K]
    for i, name in enumerate(domains):
        stats[f"weight/{name}"] = ((w[:, i] * energy[:, i]).sum() / energy[:, i].sum()).float()
        for kind, mask in kind_masks.items():
            e = energy[:, i] * mask.double()
            stats[f"weight/{name}/{kind}"] = ((w[:, i] * e).sum() / e.sum()).float()
    return stats
