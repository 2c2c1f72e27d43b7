"""The measurements of :mod:`mgs_tools.forgetting`: update sparsity and per-unit changes (a sweep over the
checkpoints, a few layers at a time), route activity (forward hooks), the damage decomposition (exact
Hessian-vector products by double backward) and the gradient cosines, and the two evaluations (per-row NLL,
greedy toy score)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mgs._partition import _LAYER, kind_of, module_of
from mgs_tools.diagnose._measure import (_batches, _encode, _Example, _input_device, _loss, _padded,
                                          pad_id_of)
from mgs_tools.forgetting._checkpoint import Checkpoint, CheckpointError
from mgs_tools.forgetting._units import UnitGroup, unit_dots, unit_rows, unit_sq_norms

HIST_EDGES = [10.0 ** e for e in range(-10, 1)]
"""|Δ| histogram: exact zeros, then (0, 1e-10), [1e-10, 1e-9), …, [1e-1, 1), [1, ∞)."""
HIST_LABELS = ["0", "<1e-10"] + [f"[1e{e},1e{e + 1})" for e in range(-10, 0)] + [">=1"]


def _sweep_unit(name: str) -> str:
    m = _LAYER.match(module_of(name) + ".")
    return m.group(1) if m else module_of(name)


def common_names(checkpoints: Sequence[Checkpoint]) -> list[str]:
    """Tensors present in every checkpoint with one shape (in the first checkpoint's order); a shape mismatch is
    an error."""
    names = [n for n in checkpoints[0].names if all(n in set(c.names) for c in checkpoints[1:])]
    for n in names:
        shapes = {c.shape(n) for c in checkpoints}
        if len(shapes) > 1:
            raise CheckpointError(f"tensor {n!r} has shapes {sorted(shapes)} in different checkpoints.")
    if not names:
        raise CheckpointError("the checkpoints have no tensor name in common.")
    return names


def _stats() -> dict[str, float]:
    return {"numel": 0, "small": 0, "delta_sq": 0.0, "weight_sq": 0.0}


def weight_sweep(checkpoints: Sequence[Checkpoint], names: Sequence[str], groups: Sequence[UnitGroup], *,
                 threshold: float = 1e-7, layers_per_sweep: int = 1) -> dict[str, Any]:
    """Per phase ``i`` (``Δ_i = W_i − W_{i−1}``): sparsity per module, per family and overall, the |Δ| histogram,
    and every unit's squared change ``‖Δ_i,u‖²``. Reads ``layers_per_sweep`` decoder layers (or modules outside
    the layers) of every checkpoint at a time."""
    phases = len(checkpoints) - 1
    order: dict[str, list[str]] = {}
    for n in names:
        order.setdefault(_sweep_unit(n), []).append(n)
    sweeps = list(order.values())
    step = max(1, layers_per_sweep)
    modules = [dict() for _ in range(phases)]
    families = [dict() for _ in range(phases)]
    overall = [_stats() for _ in range(phases)]
    hist = [torch.zeros(len(HIST_LABELS), dtype=torch.long) for _ in range(phases)]
    hist_family = [dict() for _ in range(phases)]
    unit_change = [dict() for _ in range(phases)]
    owner = {piece.name: g for g in groups for piece in g.slices}
    edges = torch.tensor(HIST_EDGES, dtype=torch.float32)
    for start in range(0, len(sweeps), step):
        chunk = [n for part in sweeps[start : start + step] for n in part]
        prev = {n: checkpoints[0].get(n) for n in chunk}
        for i in range(phases):
            cur = {n: checkpoints[i + 1].get(n) for n in chunk}
            delta = {n: cur[n] - prev[n] for n in chunk}
            for n in chunk:
                d, w = delta[n], prev[n]
                a = d.abs()
                small = int((a < threshold).sum())
                dsq, wsq = float(d.double().pow(2).sum()), float(w.double().pow(2).sum())
                for table, key in ((modules[i], module_of(n)), (families[i], kind_of(n))):
                    s = table.setdefault(key, _stats())
                    s["numel"] += d.numel(); s["small"] += small; s["delta_sq"] += dsq; s["weight_sq"] += wsq
                o = overall[i]
                o["numel"] += d.numel(); o["small"] += small; o["delta_sq"] += dsq; o["weight_sq"] += wsq
                idx = torch.where(a == 0, torch.zeros_like(a, dtype=torch.long),
                                  torch.bucketize(a, edges, right=True) + 1).reshape(-1)
                counts = torch.bincount(idx, minlength=len(HIST_LABELS))
                hist[i] += counts
                fam = hist_family[i].setdefault(kind_of(n), torch.zeros(len(HIST_LABELS), dtype=torch.long))
                fam += counts
            for g in {owner[n].key: owner[n] for n in chunk if n in owner}.values():
                missing = [p.name for p in g.slices if p.name not in delta]
                if missing:
                    raise CheckpointError(f"unit group {g.key} needs {missing}, which not every checkpoint has.")
                unit_change[i][g.key] = unit_sq_norms(g, delta)
            prev = cur
            del delta
    return {"modules": modules, "families": families, "overall": overall, "hist": hist, "hist_family": hist_family,
            "unit_change": unit_change}


def sparsity_row(s: Mapping[str, float]) -> dict[str, float | None]:
    return {"numel": int(s["numel"]), "small_frac": s["small"] / s["numel"] if s["numel"] else None,
            "rel_change": math.sqrt(s["delta_sq"] / s["weight_sq"]) if s["weight_sq"] > 0 else None,
            "delta_norm": math.sqrt(s["delta_sq"])}


# -- rows → examples ------------------------------------------------------------------------------------------


def encode_rows(tokenizer: Any, rows_by_domain: Mapping[str, Sequence[Mapping[str, Any]]], *, max_rows: int | None,
                prompt_key: str = "prompt", completion_key: str = "completion", append_eos: bool = True
                ) -> dict[str, list[_Example]]:
    out = {}
    for domain, rows in rows_by_domain.items():
        rows = list(rows)[:max_rows] if max_rows else list(rows)
        if not rows:
            raise ValueError(f"domain {domain!r} has no rows.")
        out[domain] = [_encode(tokenizer, r, f"row {n} of domain {domain!r}", prompt_key, completion_key, None,
                               append_eos) for n, r in enumerate(rows)]
    return out


input_device = _input_device  # the embedding's device: where a batch goes in


# -- route activity ------------------------------------------------------------------------------------------


def route_activity(model: nn.Module, groups: Sequence[UnitGroup], examples: Sequence[_Example], pad_id: int,
                   batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Per unit group, each unit's mean activation magnitude over the tokens (prompt and completion) of
    ``examples``: an MLP neuron's ``|act(gate)·up|`` (the input of ``down_proj``), a query head's L2 norm of its
    slice of the ``o_proj`` input, a key-value head's L2 norm of its ``k_proj`` and ``v_proj`` outputs together."""
    sums = {g.key: torch.zeros(g.count, dtype=torch.float64) for g in groups}
    state: dict[str, torch.Tensor] = {}
    handles = []

    def module(param_name: str) -> nn.Module:
        return model.get_submodule(param_name.rpartition(".")[0])

    def masked_sum(values: torch.Tensor) -> torch.Tensor:  # values [B, T, count]
        return (values.double() * state["mask"][..., None]).sum((0, 1)).cpu()

    for g in groups:
        if g.kind == "mlp":
            down = next(p for p in g.slices if p.dim == 1)

            def hook(mod, args, g=g):
                sums[g.key] += masked_sum(args[0].abs())
            handles.append(module(down.name).register_forward_pre_hook(hook))
        elif g.kind == "q_head":
            o = next(p for p in g.slices if p.dim == 1)

            def hook(mod, args, g=g, width=o.width):
                x = args[0]
                sums[g.key] += masked_sum(x.reshape(*x.shape[:-1], g.count, width).float().norm(dim=-1))
            handles.append(module(o.name).register_forward_pre_hook(hook))
        else:
            weights = [p for p in g.slices if p.name.endswith(".weight")]
            partial: dict[str, torch.Tensor] = {}

            def hook(mod, args, output, g=g, width=weights[0].width, parts=len(weights), partial=partial):
                sq = output.reshape(*output.shape[:-1], g.count, width).float().pow(2).sum(-1)
                partial["sq"] = partial.get("sq", 0) + sq
                partial["n"] = partial.get("n", 0) + 1
                if partial["n"] == parts:
                    sums[g.key] += masked_sum(partial.pop("sq").sqrt())
                    partial["n"] = 0
            for p in weights:
                handles.append(module(p.name).register_forward_hook(hook))
    tokens = 0
    was_training = model.training
    model.eval()
    device = input_device(model)
    try:
        with torch.no_grad():
            for batch in _batches(list(examples), batch_size):
                ids, attention, _ = _padded(batch, pad_id, device)
                state["mask"] = attention.double()
                tokens += int(attention.sum())
                model(input_ids=ids, attention_mask=attention, use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {k: v / tokens for k, v in sums.items()}


# -- the damage decomposition --------------------------------------------------------------------------------


def _params(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    return {n: params[n] for n in names if n in params}


def domain_loss(model: nn.Module, examples: Sequence[_Example], pad_id: int, batch_size: int) -> float:
    """``L_d``: the NLL of the completion tokens summed over rows, divided by their number (no gradient)."""
    tokens = sum(len(e.ids) - e.prompt_len for e in examples)
    device = input_device(model)
    with torch.no_grad():
        return float(sum(_loss(model, b, tokens, pad_id, device).double() for b in _batches(list(examples), batch_size)))


def gradient(model: nn.Module, params: Mapping[str, nn.Parameter], examples: Sequence[_Example], pad_id: int,
             batch_size: int) -> dict[str, torch.Tensor]:
    """``∇L_d`` with respect to ``params`` (float32), accumulated over micro-batches."""
    tokens = sum(len(e.ids) - e.prompt_len for e in examples)
    device = input_device(model)
    out = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    for batch in _batches(list(examples), batch_size):
        grads = torch.autograd.grad(_loss(model, batch, tokens, pad_id, device), list(params.values()),
                                    allow_unused=True)
        for n, g in zip(params, grads):
            if g is not None:
                out[n] += g.float()
    return out


def gradient_and_hvp(model: nn.Module, params: Mapping[str, nn.Parameter], delta: Mapping[str, torch.Tensor],
                     examples: Sequence[_Example], pad_id: int, batch_size: int
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``g = ∇L_d`` and ``H_d Δ`` with respect to ``params`` at the model's weights, by double backward per
    micro-batch (exact, summed over micro-batches since ``L_d`` is a sum over them)."""
    tokens = sum(len(e.ids) - e.prompt_len for e in examples)
    device = input_device(model)
    names = list(params)
    g_out = {n: torch.zeros_like(params[n], dtype=torch.float32) for n in names}
    h_out = {n: torch.zeros_like(params[n], dtype=torch.float32) for n in names}
    for batch in _batches(list(examples), batch_size):
        loss = _loss(model, batch, tokens, pad_id, device)
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True, allow_unused=True)
        used = [(n, g) for n, g in zip(names, grads) if g is not None]
        directional = sum((g * delta[n].to(g)).sum() for n, g in used)
        hv = torch.autograd.grad(directional, [params[n] for n, _ in used], allow_unused=True)
        for (n, g), h in zip(used, hv):
            g_out[n] += g.detach().float()
            if h is not None:
                h_out[n] += h.float()
        del loss, grads, directional, hv
    return g_out, h_out


def load_weights(model: nn.Module, checkpoint: Checkpoint, names: Sequence[str]) -> None:
    """Copy ``names`` of ``checkpoint`` into the model's parameters (in place, in their dtype and device)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in names:
            if n in params:
                params[n].copy_(checkpoint.get(n))


def damage_decomposition(model: nn.Module, before: Checkpoint, after: Checkpoint, names: Sequence[str],
                         examples: Sequence[_Example], pad_id: int, batch_size: int) -> dict[str, Any]:
    """For the earlier domain's loss ``L`` and ``Δ = θ_after − θ_before``: the actual change ``L(θ_after) −
    L(θ_before)``, the first-order term ``g·Δ`` and the second-order term ``½ ΔᵀHΔ`` at ``θ_before``, per
    parameter (``g_n·Δ_n`` and ``½ Δ_n·(HΔ)_n``, which add up to the totals). Leaves the model at ``θ_before``.
    Returns the per-parameter terms and ``g``, ``HΔ`` and ``Δ`` (for the units' shares)."""
    params = _params(model, names)
    flags = {n: p.requires_grad for n, p in params.items()}
    was_training = model.training
    model.eval()
    try:
        load_weights(model, after, names)
        loss_after = domain_loss(model, examples, pad_id, batch_size)
        load_weights(model, before, names)
        loss_before = domain_loss(model, examples, pad_id, batch_size)
        delta = {n: (after.get(n) - before.get(n)).to(p.device) for n, p in params.items()}
        for p in params.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            g, hv = gradient_and_hvp(model, params, delta, examples, pad_id, batch_size)
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
        model.train(was_training)
    first = {n: float((g[n].double() * delta[n].double()).sum()) for n in params}
    second = {n: 0.5 * float((hv[n].double() * delta[n].double()).sum()) for n in params}
    return {"loss_before": loss_before, "loss_after": loss_after, "first": first, "second": second,
            "g": g, "hv": hv, "delta": delta}


def unit_damage(groups: Sequence[UnitGroup], g: Mapping[str, torch.Tensor], hv: Mapping[str, torch.Tensor],
                delta: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per unit: its share of the first- plus second-order term, ``g_u·Δ_u + ½ Δ_u·(HΔ)_u``."""
    return {gr.key: unit_dots(gr, g, delta) + 0.5 * unit_dots(gr, hv, delta) for gr in groups}


def module_cosines(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> tuple[float | None, dict]:
    """The global cosine of two gradients and, per module (``module_of``), ``{"cosine", "dot"}``."""
    per: dict[str, list[float]] = {}
    for n in a:
        x, y = a[n].double(), b[n].double()
        s = per.setdefault(module_of(n), [0.0, 0.0, 0.0])
        s[0] += float((x * y).sum()); s[1] += float((x * x).sum()); s[2] += float((y * y).sum())
    dot, aa, bb = (sum(s[i] for s in per.values()) for i in range(3))
    cos = lambda d, p, q: d / math.sqrt(p * q) if p > 0 and q > 0 else None  # noqa: E731
    return cos(dot, aa, bb), {m: {"cosine": cos(*s), "dot": s[0]} for m, s in per.items()}


# -- evaluations ---------------------------------------------------------------------------------------------


def nll_per_row(model: nn.Module, examples: Sequence[_Example], pad_id: int, batch_size: int) -> list[float]:
    """Per row, the mean NLL of its completion tokens (lower is better)."""
    device = input_device(model)
    out = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in _batches(list(examples), batch_size):
            ids, attention, target = _padded(batch, pad_id, device)
            logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits
            logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            mask = target[:, 1:]
            out += (-(logp * mask).sum(-1) / mask.sum(-1)).tolist()
    model.train(was_training)
    return out


def toy_score_per_row(model: nn.Module, tokenizer: Any, rows: Sequence[Mapping[str, Any]], max_new_tokens: int = 8,
                      batch_size: int = 32) -> list[float]:
    """Per row, :func:`mgs_tools.toy.score` of the greedy completion against the row's ``completion``."""
    from mgs_tools.toy import score

    device = input_device(model)
    out = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            encoded = [tokenizer(r["prompt"])["input_ids"] for r in chunk]
            if len({len(e) for e in encoded}) != 1:
                raise ValueError("the toy evaluation needs prompts of one length (the toy domains' prompts are).")
            ids = torch.tensor(encoded, device=device)
            generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                       max_new_tokens=max_new_tokens, pad_token_id=pad_id_of(tokenizer),
                                       eos_token_id=getattr(tokenizer, "eos_token_id", None))
            texts = tokenizer.batch_decode(generated[:, ids.shape[1]:], skip_special_tokens=True)
            out += [score(t, r["completion"]) for t, r in zip(texts, chunk)]
    model.train(was_training)
    return out


Evaluator = Callable[[nn.Module], Mapping[str, Sequence[float]]]
"""``model → domain → per-row values`` (the same rows every call)."""


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, sd


def paired_noise(before: Sequence[float], after: Sequence[float]) -> float:
    """Half-width of the 95% interval (normal quantile 1.96) of the mean of the per-row differences before − after:
    the evaluation's noise on ``before − after``."""
    _, sd = _mean_sd([b - a for b, a in zip(before, after)])
    return 1.96 * sd / math.sqrt(len(before)) if not math.isnan(sd) else float("inf")

