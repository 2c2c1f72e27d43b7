""":func:`analyze`: the whole analysis of :mod:`mgs_tools.forgetting` on a base checkpoint and the checkpoints after
each training phase, returned as the JSON-ready dict that ``docs/forgetting.md`` describes."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mgs._partition import kind_of, module_of
from mgs_tools.forgetting import _measure as M
from mgs_tools.forgetting._checkpoint import Checkpoint
from mgs_tools.forgetting._rollback import (
    SCOPES,
    apply_tensors,
    conflict_scores,
    recovery,
    rollback_tensors,
    select_units,
    unit_count,
)
from mgs_tools.forgetting._units import UNIT_KINDS, UnitGroup, chance_jaccard, jaccard, top_units, unit_groups

PAPER_ROLLBACKS = (("mlp", 2.0), ("joint", 32.0))
"""The document's two rollbacks: 2 % of the MLP neurons, 32 % of the MLP and attention units."""


def _r(x: float | None, digits: int = 6) -> float | None:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    return float(f"{x:.{digits}g}")


def _overlaps(groups: Sequence[UnitGroup], selected: Mapping[str, Mapping[str, set[int]]], names: Sequence[str]
              ) -> dict[str, Any]:
    """Jaccard of the selections of every pair of ``names`` (phases or domains): overall, per unit kind, per layer
    (kinds pooled) and per unit group."""
    pairs = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            sets = {k: ({(g.key, u) for g in gs for u in selected[a][g.key]},
                        {(g.key, u) for g in gs for u in selected[b][g.key]})
                    for k, gs in _by(groups).items()}
            pairs[f"{a}|{b}"] = {
                "overall": _r(jaccard(*sets["all"])),
                "by_kind": {k[5:]: _r(jaccard(*sets[k])) for k in sets if k.startswith("kind:")},
                "by_layer": {k[6:]: _r(jaccard(*sets[k])) for k in sets if k.startswith("layer:")},
                "by_group": {g.key: _r(jaccard(selected[a][g.key], selected[b][g.key])) for g in groups},
            }
    return pairs


def _by(groups: Sequence[UnitGroup]) -> dict[str, list[UnitGroup]]:
    out: dict[str, list[UnitGroup]] = {"all": list(groups)}
    for g in groups:
        out.setdefault(f"kind:{g.kind}", []).append(g)
        out.setdefault(f"layer:{g.layer}", []).append(g)
    return out


def _note(progress: Callable[[str], None] | None, text: str) -> None:
    if progress:
        progress(text)


def analyze(
    checkpoints: Sequence[Checkpoint],
    phases: Sequence[str],
    model: nn.Module,
    tokenizer: Any,
    rows_by_domain: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    threshold: float = 1e-7,
    top_percent: float = 10.0,
    route_percent: float = 10.0,
    earlier: str | None = None,
    rollback_percents: Sequence[float] = (1, 2, 4, 8, 16, 32),
    evaluate: str | M.Evaluator = "nll",
    batch_size: int = 8,
    max_rows: int | None = 64,
    layers_per_sweep: int = 1,
    damage: bool = True,
    write_rollbacks: Sequence[tuple[str, float]] = (),
    output_dir: str | None = None,
    config=None,
    max_new_tokens: int = 8,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Sparsity, edit overlap, route overlap, the damage decomposition and the rollback curve (``docs/forgetting.md``).

    :param checkpoints: the base checkpoint, then the checkpoint after each phase (``len(phases) + 1``).
    :param phases: each phase's name: the domain it trained (a key of ``rows_by_domain`` for the parts that need
        data: routes, damage, rollback).
    :param model: a model of the checkpoints' architecture (any weights; they are overwritten and left at the
        last checkpoint's). Its parameter names are the checkpoints' tensor names. Double backward needs eager
        (or math) attention.
    :param rows_by_domain: domain → rows with ``prompt`` and ``completion`` strings; the first ``max_rows`` of each
        are used for routes, damage and evaluation.
    :param earlier: the domain whose forgetting is analysed (default: the first phase); ``Δ`` is then the last
        checkpoint minus that phase's checkpoint, and the later domains are the phases after it.
    :param evaluate: ``"nll"`` (each row's mean completion NLL), ``"toy"`` (greedy :func:`mgs_tools.toy.score`) or a
        callable ``model → domain → per-row values``.
    :param write_rollbacks: ``(scope, percent)`` pairs whose rolled-back model is saved (``save_pretrained``) to
        ``output_dir/rollback_{scope}_{percent}``.
    """
    if len(checkpoints) != len(phases) + 1 or not phases:
        raise ValueError(f"need the base checkpoint and one checkpoint per phase: got {len(checkpoints)} checkpoints "
                         f"for phases {list(phases)}.")
    if len(set(phases)) != len(phases):
        raise ValueError(f"phase names must differ (they name the domains trained); got {list(phases)}.")
    names = M.common_names(checkpoints)
    config = config or checkpoints[0].config or getattr(model, "config", None)
    groups = unit_groups({n: checkpoints[0].shape(n) for n in names}, config)
    labels = ["base", *phases]
    result: dict[str, Any] = {
        "checkpoints": [{"phase": l, "path": c.label} for l, c in zip(labels, checkpoints)],
        "phases": list(phases),
        "units": {k: sum(g.count for g in groups if g.kind == k) for k in UNIT_KINDS},
        "settings": {"threshold": threshold, "top_percent": top_percent, "route_percent": route_percent,
                     "batch_size": batch_size, "max_rows": max_rows, "layers_per_sweep": layers_per_sweep,
                     "evaluate": evaluate if isinstance(evaluate, str) else "custom", "tensors": len(names)},
    }

    # 1-2. update sparsity and edit overlap (a sweep over the checkpoints, layer by layer)
    _note(progress, f"sweeping {len(names)} tensors of {len(checkpoints)} checkpoints")
    sweep = M.weight_sweep(checkpoints, names, groups, threshold=threshold, layers_per_sweep=layers_per_sweep)
    result["sparsity"] = {}
    for i, phase in enumerate(phases):
        result["sparsity"][phase] = {
            "overall": {k: _r(v) for k, v in M.sparsity_row(sweep["overall"][i]).items()},
            "by_family": {f: {k: _r(v) for k, v in M.sparsity_row(s).items()} for f, s in sweep["families"][i].items()},
            "modules": [{"name": m, "family": kind_of(m + ".weight"), **{k: _r(v) for k, v in M.sparsity_row(s).items()}}
                        for m, s in sweep["modules"][i].items()],
            "histogram": {"bins": M.HIST_LABELS, "counts": sweep["hist"][i].tolist(),
                          "by_family": {f: c.tolist() for f, c in sweep["hist_family"][i].items()}},
        }
    edits = {p: {g.key: top_units(sweep["unit_change"][i][g.key], top_percent) for g in groups}
             for i, p in enumerate(phases)}
    result["edits"] = {"top_percent": top_percent, "chance": _r(chance_jaccard(top_percent)),
                       "pairs": _overlaps(groups, edits, list(phases))}

    domains = list(rows_by_domain)
    examples = M.encode_rows(tokenizer, rows_by_domain, max_rows=max_rows)
    pad = M.pad_id_of(tokenizer)
    earlier = earlier or phases[0]
    if earlier not in phases:
        raise ValueError(f"earlier={earlier!r} is not a phase; the phases are {list(phases)}.")
    e = phases.index(earlier) + 1
    before, after = checkpoints[e], checkpoints[-1]
    later = [p for p in phases[e:] if p in examples]

    # 3. route overlap, at the earlier domain's checkpoint
    M.load_weights(model, before, names)
    _note(progress, f"route activity of {len(domains)} domains at {labels[e]}")
    routes = {d: M.route_activity(model, groups, examples[d], pad, batch_size) for d in domains}
    active = {d: {g.key: top_units(routes[d][g.key], route_percent) for g in groups} for d in domains}
    result["routes"] = {"checkpoint": labels[e], "top_percent": route_percent,
                        "chance": _r(chance_jaccard(route_percent)), "pairs": _overlaps(groups, active, domains)}
    # edits vs routes: how many of a phase's top-changed units are active on each domain
    result["edits_in_routes"] = {p: {d: _r(sum(len(edits[p][g.key] & active[d][g.key]) for g in groups)
                                           / sum(len(edits[p][g.key]) for g in groups)) for d in domains}
                                 for p in phases}

    if e == len(checkpoints) - 1 or earlier not in examples or not later:
        result["damage"] = result["rollback"] = None
        M.load_weights(model, after, names)
        return result

    # 4. damage decomposition of the earlier domain's loss
    unit_dmg = None
    if damage:
        _note(progress, f"damage decomposition of {earlier} (double backward)")
        dec = M.damage_decomposition(model, before, after, names, examples[earlier], pad, batch_size)
        actual = dec["loss_after"] - dec["loss_before"]
        first, second = sum(dec["first"].values()), sum(dec["second"].values())
        by_family: dict[str, dict[str, float]] = {}
        by_module: dict[str, dict[str, float]] = {}
        for n in dec["first"]:
            for table, key in ((by_family, kind_of(n)), (by_module, module_of(n))):
                row = table.setdefault(key, {"first": 0.0, "second": 0.0})
                row["first"] += dec["first"][n]
                row["second"] += dec["second"][n]
        unit_dmg = M.unit_damage(groups, dec["g"], dec["hv"], dec["delta"])
        by_unit_kind = {k: {"first": _r(sum(float(M.unit_dots(g, dec["g"], dec["delta"]).sum()) for g in groups
                                            if g.kind == k)),
                            "second": _r(sum(0.5 * float(M.unit_dots(g, dec["hv"], dec["delta"]).sum()) for g in groups
                                             if g.kind == k))} for k in UNIT_KINDS}
        cosines = {}
        params = M._params(model, names)
        flags = {n: p.requires_grad for n, p in params.items()}
        try:
            for p in params.values():
                p.requires_grad_(True)
            with torch.enable_grad():
                for d in later:
                    g_b = M.gradient(model, params, examples[d], pad, batch_size)
                    cos, per = M.module_cosines(dec["g"], g_b)
                    defined = [(m, v["cosine"]) for m, v in per.items() if v["cosine"] is not None]
                    lo, hi = min(defined, key=lambda x: x[1]), max(defined, key=lambda x: x[1])
                    cosines[d] = {"global": _r(cos), "most_conflicting": {"module": lo[0], "cosine": _r(lo[1])},
                                  "most_synergistic": {"module": hi[0], "cosine": _r(hi[1])},
                                  "negative_frac": _r(sum(c < 0 for _, c in defined) / len(defined)),
                                  "modules": {m: _r(v["cosine"]) for m, v in per.items()}}
        finally:
            for n, p in params.items():
                p.requires_grad_(flags[n])
        delta_norm = math.sqrt(sum(float(d.double().pow(2).sum()) for d in dec["delta"].values()))
        result["damage"] = {
            "domain": earlier, "before": labels[e], "after": labels[-1], "later": later,
            "loss_before": _r(dec["loss_before"]), "loss_after": _r(dec["loss_after"]), "actual": _r(actual),
            "first_order": _r(first), "second_order": _r(second), "residual": _r(actual - first - second),
            "delta_norm": _r(delta_norm),
            "by_family": {f: {k: _r(v) for k, v in row.items()} for f, row in by_family.items()},
            "by_unit_kind": by_unit_kind,
            "modules": [{"name": m, "family": kind_of(m + ".weight"), "first": _r(row["first"]),
                         "second": _r(row["second"])} for m, row in by_module.items()],
            "gradient_cosine": cosines,
        }
        del dec

    # 5. conflict-subspace rollback
    change = {g.key: sum(sweep["unit_change"][i][g.key] for i in range(e, len(phases))) for g in groups}
    scores = conflict_scores(groups, routes, earlier, later, unit_dmg, change)
    if evaluate == "nll":
        def evaluate(m):  # noqa: F811
            return {d: M.nll_per_row(m, examples[d], pad, batch_size) for d in domains}
        higher = False
    elif evaluate == "toy":
        toy_rows = {d: list(r)[:max_rows] if max_rows else list(r) for d, r in rows_by_domain.items()}

        def evaluate(m):  # noqa: F811
            return {d: M.toy_score_per_row(m, tokenizer, toy_rows[d], max_new_tokens) for d in domains}
        higher = True
    else:
        higher = None
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    _note(progress, "evaluating before and after")
    M.load_weights(model, before, names)
    v_before = evaluate(model)
    M.load_weights(model, after, names)
    v_after = evaluate(model)
    noise = {d: M.paired_noise(v_before[d], v_after[d]) for d in domains}
    curves: dict[str, list] = {}
    written = []
    wanted = {(s, float(x)) for s, x in write_rollbacks}
    for scope in SCOPES:
        curves[scope] = []
        for x in sorted({*map(float, rollback_percents), *(p for s, p in wanted if s == scope)}):
            chosen = select_units(groups, scores, scope, x)
            tensors = rollback_tensors(groups, chosen, before, after)
            apply_tensors(model, tensors)
            try:
                values = evaluate(model)
                if (scope, x) in wanted and output_dir:
                    path = os.path.join(output_dir, f"rollback_{scope}_{x:g}")
                    model.save_pretrained(path)
                    written.append(path)
            finally:
                apply_tensors(model, {n: after.get(n) for n in tensors})
            means = {d: mean(values[d]) for d in domains}
            curves[scope].append({
                "percent": x, "units": sum(map(len, chosen.values())), "of": unit_count(groups, scope),
                "by_kind": {k: sum(len(v) for key, v in chosen.items() if key.split(".", 1)[1] == k) for k in UNIT_KINDS},
                "value": {d: _r(v) for d, v in means.items()},
                "recovery": {d: _r(recovery(mean(v_before[d]), mean(v_after[d]), means[d], noise[d])) for d in domains},
            })
            _note(progress, f"rollback {scope} {x:g}%: " + ", ".join(f"{d} {v:.4f}" for d, v in means.items()))
    result["rollback"] = {
        "domain": earlier, "later": later, "score": "damage" if unit_dmg is not None else "change",
        "higher_is_better": higher,
        "before": {d: _r(mean(v)) for d, v in v_before.items()}, "after": {d: _r(mean(v)) for d, v in v_after.items()},
        "noise": {d: _r(v) for d, v in noise.items()}, "curves": curves, "written": written,
    }
    return result
