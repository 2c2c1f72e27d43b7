"""Conflict-subspace rollback: rank units by a route-conflict score, restore the top ones to their pre-phase
values, and measure how much of each domain's loss comes back.

**Score** of unit ``u`` (earlier domain ``A``, later domains ``B``): ``s_u = r_A(u) · r_B(u) · max(d_u, 0)``, where
``r_A(u)`` is the unit's activity rank on ``A``'s rows, as a fraction in (0, 1] of its layer's units of its kind
(1 = the most active), ``r_B(u)`` the largest rank over the later domains, and ``d_u = g_u·Δ_u + ½ Δ_u·(HΔ)_u``
its share of the damage's first- plus second-order term (positive: the change of ``u`` raised ``A``'s loss).
Active for both domains, changed by the later phases, harmful to ``A``. Ties (units with ``s_u = 0``) are broken by
``r_A · r_B · ‖Δ_u‖``, then by position.

**Selection**: the top ``x`` % of the scope's units by that score, ranked over all layers together: scope
``"mlp"`` ranks the MLP neurons only, ``"joint"`` the MLP neurons, query heads and key-value heads together.

**Rollback**: every slice the chosen units own (:mod:`mgs_tools.forgetting._units`) is set to its value in
``θ_before``; every other entry keeps its value in ``θ_after``, bit for bit.

**Recovery** of domain ``d``: ``(v_rolled − v_after) / (v_before − v_after)`` of its evaluation ``v`` (a mean over
rows: NLL or toy score; the formula does not depend on the sign convention), undefined (``None``) when
``|v_before − v_after|`` is within the evaluation's noise: the 95% half-width of the mean per-row difference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mgs_tools.forgetting._checkpoint import Checkpoint
from mgs_tools.forgetting._units import UnitGroup, unit_rows

SCOPES = {"mlp": ("mlp",), "joint": ("mlp", "q_head", "kv_head")}


def activity_rank(activity: torch.Tensor) -> torch.Tensor:
    """Rank of each unit's activity as a fraction in (0, 1]: 1 for the most active, 1/n for the least (ties by
    position)."""
    n = activity.numel()
    order = torch.sort(activity.double(), stable=True).indices
    rank = torch.empty(n, dtype=torch.float64)
    rank[order] = torch.arange(1, n + 1, dtype=torch.float64) / n
    return rank


def conflict_scores(groups: Sequence[UnitGroup], routes: Mapping[str, Mapping[str, torch.Tensor]], earlier: str,
                    later: Sequence[str], damage: Mapping[str, torch.Tensor] | None,
                    change_sq: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per unit group: ``(score, tie-break)`` of every unit (see the module docstring). Without ``damage``, the
    score is the tie-break ``r_A · r_B · ‖Δ_u‖``."""
    out = {}
    for g in groups:
        r_a = activity_rank(routes[earlier][g.key])
        r_b = torch.stack([activity_rank(routes[d][g.key]) for d in later]).max(0).values
        both = r_a * r_b
        tie = both * change_sq[g.key].double().sqrt()
        score = both * damage[g.key].double().clamp(min=0) if damage is not None else tie
        out[g.key] = (score, tie)
    return out


def select_units(groups: Sequence[UnitGroup], scores: Mapping[str, tuple[torch.Tensor, torch.Tensor]], scope: str,
                 percent: float) -> dict[str, list[int]]:
    """The top ``percent`` % of the scope's units (``round``, at least 1 when ``percent > 0``) by score, then
    tie-break, then group order and index: unit group key → sorted unit indices."""
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r}; choose one of {', '.join(SCOPES)}.")
    pool = [g for g in groups if g.kind in SCOPES[scope]]
    entries = []
    for gi, g in enumerate(pool):
        score, tie = scores[g.key]
        entries += [(-float(score[u]), -float(tie[u]), gi, u) for u in range(g.count)]
    total = len(entries)
    k = 0 if percent <= 0 else max(1, round(percent / 100 * total))
    chosen: dict[str, list[int]] = {g.key: [] for g in pool}
    for _, _, gi, u in sorted(entries)[:k]:
        chosen[pool[gi].key].append(u)
    return {key: sorted(v) for key, v in chosen.items() if v}


def _slice_mask(shape: Sequence[int], piece, count: int, units: Sequence[int]) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    index = torch.tensor([u * piece.width + w for u in units for w in range(piece.width)], dtype=torch.long)
    dim = 0 if len(shape) == 1 else piece.dim
    mask.index_fill_(dim, index, True)
    return mask


def rollback_tensors(groups: Sequence[UnitGroup], chosen: Mapping[str, Sequence[int]], before: Checkpoint,
                     after: Checkpoint) -> dict[str, torch.Tensor]:
    """The rolled-back values of every tensor a chosen unit touches (float32): ``θ_after`` with the chosen units'
    slices taken from ``θ_before``. Tensors not returned are ``θ_after``'s as they are."""
    out: dict[str, torch.Tensor] = {}
    for g in groups:
        units = chosen.get(g.key)
        if not units:
            continue
        for piece in g.slices:
            new = out[piece.name] if piece.name in out else after.get(piece.name).clone()
            mask = _slice_mask(new.shape, piece, g.count, units)
            new[mask] = before.get(piece.name)[mask]
            out[piece.name] = new
    return out


def rolled_back_state(groups: Sequence[UnitGroup], chosen: Mapping[str, Sequence[int]], before: Checkpoint,
                      after: Checkpoint) -> dict[str, torch.Tensor]:
    """The whole rolled-back state: every tensor of ``after``, with :func:`rollback_tensors` in place."""
    changed = rollback_tensors(groups, chosen, before, after)
    return {n: changed[n] if n in changed else after.get(n) for n in after.names}


def apply_tensors(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Copy ``tensors`` into the model's parameters of those names, in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)


def unit_count(groups: Sequence[UnitGroup], scope: str) -> int:
    return sum(g.count for g in groups if g.kind in SCOPES[scope])


def recovery(before: float, after: float, rolled: float, noise: float) -> float | None:
    """``(rolled − after) / (before − after)``, or None when ``|before − after| <= noise``."""
    if abs(before - after) <= noise:
        return None
    return (rolled - after) / (before - after)


def slice_values(tensor: torch.Tensor, piece, count: int, unit: int) -> torch.Tensor:
    """The entries of ``tensor`` that unit ``unit`` owns through ``piece`` (a copy, flattened)."""
    return unit_rows(tensor, piece, count)[unit].clone()
