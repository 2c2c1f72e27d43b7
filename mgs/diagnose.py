"""``mgs-diagnose``: measure how much a model's domains conflict, module by module, before training.

For each domain, the gradient of the (weighted) negative log-likelihood of the completion given the
prompt is computed over the domain's rows, in micro-batches. Each domain's rows are shuffled and split
into two disjoint halves, and each half's gradient is kept apart. From the per-module Gram matrix of
these 2K gradients (K domains × 2 halves) the report gives, per module:

- the cosine between every pair of domains (each domain's gradient = the sum of its two halves), the
  global cosine (all diagnosed parameters as one vector) and the conflict fraction (share of modules
  with a negative cosine);
- the **noise floor**: the cosine between the two halves of the SAME domain. A module whose floor is
  near 0 has gradients dominated by batch noise at this batch size, so its cross-domain cosines say
  little about interference;
- a **denoised cosine**, ``mean_ij(a_i·b_j) / sqrt((a_1·a_2)(b_1·b_2))``: cross-half dot products
  have independent noise, so numerator and denominator are unbiased estimates of ``μ_a·μ_b`` and
  ``|μ_a|·|μ_b|`` (up to the same factor). Undefined (NaN) where a domain's halves disagree
  (``a_1·a_2 ≤ 0``); a ratio of noisy estimates, so it can leave [-1, 1].

Loss: ``L_d = -Σ_i w_i Σ_t log p(y_it | prompt_i, y_i<t) / T_d`` over the completion tokens of domain
``d``'s rows, with ``T_d`` the domain's completion-token count (token mean) and ``w_i`` the optional
per-row weight (an advantage, for example; 1 without a weight column). Both halves use the domain's
``T_d``, so the two half gradients add up to the domain's gradient exactly. The model runs in eval mode
(no dropout), so every pass over the same rows gives the same gradient.

Memory: the diagnosed parameters (those with ``requires_grad``; for a PEFT model the adapter weights)
are split into *units* (a decoder layer, or a module outside the layers such as the embedding, the
final norm or ``lm_head``). ``group_size=0`` diagnoses all units in one sweep; ``group_size=N`` does N
units per sweep, turning ``requires_grad`` off on every other diagnosed parameter and recomputing the
forward and backward passes for each sweep (about ``units / N`` times the compute). During a sweep the
memory is the model, one micro-batch's activations, one gradient of the sweep's parameters (in their
dtype, from ``torch.autograd.grad``; ``p.grad`` is never touched), and **2K float32 copies of the
sweep's parameters** (the per-(domain, half) accumulators). Gradients of bf16/fp16 models are
accumulated over micro-batches in float32, and the Gram matrices are computed in float32 and summed
over parameters in float64.

Command line: ``mgs-diagnose --help`` or ``python -m mgs.diagnose --help``; see ``docs/diagnose.md``.
Only torch is imported at module level: transformers, datasets, matplotlib and tqdm are imported
where they are used, so :func:`diagnose` works with any model whose output has ``.logits``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mgs._options import GRANULARITIES
from mgs._partition import _LAYER, group_key, kind_of, module_of, trainable_parameters

__all__ = ["DiagnoseError", "DiagnoseResult", "ModuleInfo", "diagnose", "load_rows", "main", "split_halves"]

JSON_NAME = "diagnose.json"
PNG_NAME = "diagnose.png"


class DiagnoseError(ValueError):
    """Bad input to the diagnosis (columns, domains, rows); the command line prints it as a usage error."""


@dataclass(frozen=True)
class ModuleInfo:
    """One diagnosed group of parameters (a leaf module under the default ``granularity="module"``)."""

    name: str
    layer: int | None
    """Decoder layer index, or None for modules outside the layers (embedding, final norm, lm_head)."""
    kind: str
    """The heatmap column: the group's name inside its layer (``q_proj``, ``mlp``, ``embed_tokens`` …)."""
    family: str
    """mgs's module kind (:data:`mgs.KINDS`): attention, mlp, embedding, norm or other."""
    numel: int


@dataclass
class DiagnoseResult:
    """The per-module Gram matrices of the 2K half-domain gradients, and everything derived from them.

    ``gram[m, 2*d + h, 2*e + g]`` is the dot product, over module ``m``'s parameters, of the gradient of
    domain ``domains[d]``'s half ``h`` with domain ``domains[e]``'s half ``g`` (float64).
    """

    domains: list[str]
    modules: list[ModuleInfo]
    gram: torch.Tensor
    rows: dict[str, int]
    tokens: dict[str, int]
    model: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    # -- derived quantities (tensors over modules; NaN where a norm is zero) -------------------------

    def _index(self, domain: str) -> int:
        if domain not in self.domains:
            raise DiagnoseError(f"unknown domain {domain!r}; the diagnosed domains are {self.domains}.")
        return self.domains.index(domain)

    def _full(self, gram: torch.Tensor) -> torch.Tensor:
        """[..., 2K, 2K] → [..., K, K]: Gram of the whole-domain gradients (sum of the two halves)."""
        k = len(self.domains)
        return gram.reshape(*gram.shape[:-2], k, 2, k, 2).sum(dim=(-3, -1))

    @staticmethod
    def _cos(dot: torch.Tensor, sq_a: torch.Tensor, sq_b: torch.Tensor) -> torch.Tensor:
        denom = (sq_a * sq_b).sqrt()
        return torch.where(denom > 0, dot / denom, torch.full_like(dot, math.nan))

    def cosine(self, a: str, b: str) -> torch.Tensor:
        """Per-module cosine between domains ``a`` and ``b``."""
        i, j = self._index(a), self._index(b)
        full = self._full(self.gram)
        return self._cos(full[:, i, j], full[:, i, i], full[:, j, j])

    def global_cosine(self, a: str, b: str) -> float:
        """Cosine between ``a``'s and ``b``'s gradients over all diagnosed parameters."""
        i, j = self._index(a), self._index(b)
        full = self._full(self.gram.sum(0))
        return float(self._cos(full[i, j], full[i, i], full[j, j]))

    def conflict_frac(self, a: str, b: str) -> float:
        """Share of modules (with both gradients non-zero) where ``a`` and ``b`` have a negative cosine."""
        cos = self.cosine(a, b)
        defined = ~cos.isnan()
        return float((cos[defined] < 0).double().mean()) if defined.any() else math.nan

    def noise_floor(self, domain: str) -> torch.Tensor:
        """Per-module cosine between the two disjoint halves of ``domain``'s rows."""
        i = self._index(domain)
        g = self.gram
        return self._cos(g[:, 2 * i, 2 * i + 1], g[:, 2 * i, 2 * i], g[:, 2 * i + 1, 2 * i + 1])

    def global_noise_floor(self, domain: str) -> float:
        i = self._index(domain)
        g = self.gram.sum(0)
        return float(self._cos(g[2 * i, 2 * i + 1], g[2 * i, 2 * i], g[2 * i + 1, 2 * i + 1]))

    def _denoised(self, g: torch.Tensor, a: str, b: str) -> torch.Tensor:
        i, j = self._index(a), self._index(b)
        cross = g[..., 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(dim=(-2, -1))
        self_a, self_b = g[..., 2 * i, 2 * i + 1], g[..., 2 * j, 2 * j + 1]
        ok = (self_a > 0) & (self_b > 0)
        return torch.where(ok, cross / (self_a.clamp_min(0) * self_b.clamp_min(0)).sqrt(), math.nan)

    def denoised_cosine(self, a: str, b: str) -> torch.Tensor:
        """Per-module ``mean_ij(a_i·b_j) / sqrt((a_1·a_2)(b_1·b_2))`` (module docstring); NaN where undefined."""
        return self._denoised(self.gram, a, b)

    def global_denoised_cosine(self, a: str, b: str) -> float:
        return float(self._denoised(self.gram.sum(0), a, b))

    def grad_norm(self, domain: str) -> torch.Tensor:
        """Per-module norm of ``domain``'s gradient."""
        i = self._index(domain)
        return self._full(self.gram)[:, i, i].clamp_min(0).sqrt()

    def pairs(self) -> list[tuple[str, str]]:
        return [(a, b) for n, a in enumerate(self.domains) for b in self.domains[n + 1 :]]

    # -- outputs ---------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The JSON document written by the command line (schema in docs/diagnose.md); NaN → null."""

        def num(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 6)

        def nums(t: torch.Tensor) -> list[float | None]:
            return [num(float(x)) for x in t]

        return {
            "model": self.model,
            "domains": list(self.domains),
            "rows": dict(self.rows),
            "tokens": dict(self.tokens),
            "modules": [
                {"name": m.name, "layer": m.layer, "kind": m.kind, "family": m.family, "numel": m.numel}
                for m in self.modules
            ],
            "pairs": {
                f"{a}|{b}": {
                    "global_cosine": num(self.global_cosine(a, b)),
                    "conflict_frac": num(self.conflict_frac(a, b)),
                    "global_denoised_cosine": num(self.global_denoised_cosine(a, b)),
                    "cosine": nums(self.cosine(a, b)),
                    "denoised_cosine": nums(self.denoised_cosine(a, b)),
                }
                for a, b in self.pairs()
            },
            "noise_floor": {
                d: {"global_cosine": num(self.global_noise_floor(d)), "cosine": nums(self.noise_floor(d))}
                for d in self.domains
            },
            "grad_norm": {
                d: {"global": num(float(self.grad_norm(d).square().sum().sqrt())), "module": nums(self.grad_norm(d))}
                for d in self.domains
            },
            "settings": dict(self.settings),
        }

    def table(self, per_module: bool = False) -> str:
        """The terminal report: per pair and per domain summaries, then cosines by module kind."""
        pairs = self.pairs()
        lines = [f"model: {self.model or '?'}    granularity: {self.settings.get('granularity', '?')}    "
                 f"modules: {len(self.modules)}"]
        counts = (f"{d} ({self.rows[d]} rows, {self.tokens[d]} tokens)" for d in self.domains)
        lines.append("domains: " + ", ".join(counts))
        lines.append("")
        w = max([len(f"{a}|{b}") for a, b in pairs] + [len(d) for d in self.domains] + [12])
        lines.append(f"{'pair':<{w}}  {'global cos':>10}  {'conflict':>8}  {'denoised':>8}")
        for a, b in pairs:
            lines.append(f"{a + '|' + b:<{w}}  {_f(self.global_cosine(a, b)):>10}  "
                         f"{_pct(self.conflict_frac(a, b)):>8}  {_f(self.global_denoised_cosine(a, b)):>8}")
        lines.append("")
        lines.append(f"{'noise floor':<{w}}  {'global cos':>10}  {'median':>8}  {'grad norm':>9}")
        for d in self.domains:
            floor = self.noise_floor(d)
            norm = float(self.grad_norm(d).square().sum().sqrt())
            lines.append(f"{d:<{w}}  {_f(self.global_noise_floor(d)):>10}  {_f(_nanmedian(floor)):>8}  {norm:>9.3g}")
        lines.append("")
        # By kind: mean cosine over the kind's modules, and how many are negative.
        kinds = list(dict.fromkeys(m.kind for m in self.modules))
        cols = [f"{a}|{b}" for a, b in pairs] + [f"floor {d}" for d in self.domains]
        vals = [self.cosine(a, b) for a, b in pairs] + [self.noise_floor(d) for d in self.domains]
        kw = max([len(k) for k in kinds] + [4])
        cw = max([len(c) for c in cols] + [13])
        lines.append("mean cosine by module kind over layers (negative / modules):")
        lines.append(f"{'kind':<{kw}}  " + "  ".join(f"{c:>{cw}}" for c in cols))
        for k in kinds:
            idx = torch.tensor([n for n, m in enumerate(self.modules) if m.kind == k])
            cells = []
            for c, v in zip(cols, vals):
                sel = v[idx]
                sel = sel[~sel.isnan()]
                mean = float(sel.mean()) if sel.numel() else math.nan
                cells.append(f"{_f(mean)} ({int((sel < 0).sum())}/{sel.numel()})" if not c.startswith("floor")
                             else _f(mean))
            lines.append(f"{k:<{kw}}  " + "  ".join(f"{c:>{cw}}" for c in cells))
        if per_module:
            lines.append("")
            nw = max(len(m.name) for m in self.modules)
            lines.append(f"{'module':<{nw}}  " + "  ".join(f"{c:>{max(len(c), 7)}}" for c in cols))
            for n, m in enumerate(self.modules):
                lines.append(f"{m.name:<{nw}}  " + "  ".join(f"{_f(float(v[n])):>{max(len(c), 7)}}"
                                                             for c, v in zip(cols, vals)))
        return "\n".join(lines)

    def heatmap(self, path: str | os.PathLike) -> None:
        """Write a PNG: one panel per domain pair, then one noise-floor panel per domain.

        Rows are decoder layers (plus a row for modules outside the layers), columns module kinds.
        Uses matplotlib's object API (no pyplot), so it never changes the caller's backend.
        """
        from matplotlib.colors import Normalize
        from matplotlib.figure import Figure

        layers = sorted({m.layer for m in self.modules if m.layer is not None})
        row_keys: list[int | None] = list(layers) + ([None] if any(m.layer is None for m in self.modules) else [])
        in_layer = list(dict.fromkeys(m.kind for m in self.modules if m.layer is not None))
        outside = list(dict.fromkeys(m.kind for m in self.modules if m.layer is None))
        col_keys = in_layer + [k for k in outside if k not in in_layer]
        cell = {(m.layer, m.kind): n for n, m in enumerate(self.modules)}

        def grid(values: torch.Tensor) -> torch.Tensor:
            out = torch.full((len(row_keys), len(col_keys)), math.nan)
            for r, layer in enumerate(row_keys):
                for c, kind in enumerate(col_keys):
                    if (layer, kind) in cell:
                        out[r, c] = float(values[cell[(layer, kind)]])
            return out

        panels = [(f"{a} vs {b}: global cos {_f(self.global_cosine(a, b))}, "
                   f"conflict {_pct(self.conflict_frac(a, b))}", grid(self.cosine(a, b))) for a, b in self.pairs()]
        panels += [(f"noise floor {d}: global cos {_f(self.global_noise_floor(d))}", grid(self.noise_floor(d)))
                   for d in self.domains]
        ncols = min(max(len(self.domains), 2), len(panels))
        nrows = math.ceil(len(panels) / ncols)
        pw = max(3.0, 1.0 + 0.4 * len(col_keys))
        ph = max(2.4, 1.6 + 0.3 * len(row_keys))
        fig = Figure(figsize=(ncols * pw + 1.0, nrows * ph + 0.5), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        import matplotlib

        cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="0.85")
        norm = Normalize(vmin=-1, vmax=1)
        image = None
        annotate = len(row_keys) * len(col_keys) <= 240
        xlabels = [k[:-5] if k.endswith("_proj") else k for k in col_keys]
        ylabels = [str(r) if r is not None else "other" for r in row_keys]
        for n, ax in enumerate(axes.flat):
            if n >= len(panels):
                ax.set_visible(False)
                continue
            title, values = panels[n]
            image = ax.imshow(values.numpy(), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_xticks(range(len(col_keys)), xlabels, rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(len(row_keys)), ylabels, fontsize=7)
            ax.set_ylabel("layer", fontsize=7)
            if annotate:
                for r in range(len(row_keys)):
                    for c in range(len(col_keys)):
                        v = float(values[r, c])
                        if not math.isnan(v):
                            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=5,
                                    color="white" if abs(v) > 0.6 else "black")
        if image is not None:
            fig.colorbar(image, ax=axes, shrink=0.8, label="cosine")
        fig.suptitle(f"mgs-diagnose: {self.model or 'model'} ({self.settings.get('granularity', 'module')})",
                     fontsize=9)
        fig.savefig(path, dpi=120)


def _f(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:+.3f}"


def _pct(x: float) -> str:
    return "nan" if math.isnan(x) else f"{100 * x:.0f}%"


def _nanmedian(t: torch.Tensor) -> float:
    t = t[~t.isnan()]
    return float(t.median()) if t.numel() else math.nan


# -- parameters → diagnosed modules and sweep units ------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    params: list[torch.Tensor]
    module_of_param: list[int]
    modules: list[ModuleInfo]
    units: list[list[int]]
    """Parameter indices of each unit (a decoder layer, or one module outside the layers), in model order."""


def _layer_prefix(name: str) -> str | None:
    match = _LAYER.match(module_of(name) + ".")
    return match.group(1) if match else None


def _label(key: str, name: str, granularity: str, prefix: str | None) -> str:
    if granularity == "parameter":
        module = module_of(name)
        inner = module[len(prefix) + 1 :] if prefix else module
        return f"{inner.rpartition('.')[2]}.{name[len(module) + 1:]}" if inner else name[len(module) + 1 :]
    if granularity == "layer":
        return "layer" if prefix else key.rpartition(".")[2]
    return key.rpartition(".")[2]


def _layout(model: nn.Module, granularity: str) -> _Layout:
    if granularity not in GRANULARITIES:
        raise DiagnoseError(f"granularity={granularity!r} is not supported; "
                            f"choose one of {', '.join(GRANULARITIES)}.")
    entries = trainable_parameters(model)
    if not entries:
        raise DiagnoseError("the model has no parameter with requires_grad=True; there is nothing to diagnose.")
    keys: dict[str, int] = {}
    info: list[dict[str, Any]] = []
    unit_index: dict[str, int] = {}
    units: list[list[int]] = []
    module_of_param = []
    for p_idx, (names, param) in enumerate(entries):
        name = names[0]
        key = group_key(name, granularity)
        prefix = _layer_prefix(name)
        if key not in keys:
            keys[key] = len(keys)
            layer = int(prefix.rpartition(".")[2]) if prefix else None
            info.append({"name": key, "layer": layer, "kind": _label(key, name, granularity, prefix),
                         "families": set(), "numel": 0, "prefix": prefix})
        m = keys[key]
        info[m]["families"].add(kind_of(name))
        info[m]["numel"] += param.numel()
        module_of_param.append(m)
        unit = prefix or module_of(name)
        if unit not in unit_index:
            unit_index[unit] = len(units)
            units.append([])
        units[unit_index[unit]].append(p_idx)
    # Two modules with one label in one layer (e.g. two attentions with a q each): use the path in the layer.
    seen = [(i["layer"], i["kind"]) for i in info]
    if len(set(seen)) < len(seen):
        for i in info:
            i["kind"] = i["name"][len(i["prefix"]) + 1 :] if i["prefix"] else i["name"]
    modules = [ModuleInfo(i["name"], i["layer"], i["kind"],
                          next(iter(i["families"])) if len(i["families"]) == 1 else "other", i["numel"]) for i in info]
    return _Layout([p for _, p in entries], module_of_param, modules, units)


# -- rows → token ids --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Example:
    ids: list[int]
    prompt_len: int
    weight: float


def split_halves(rows: Sequence[Mapping[str, Any]], seed: int = 0, max_rows: int | None = None
                 ) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """The two disjoint halves :func:`diagnose` uses: ``rows`` shuffled with ``random.Random(seed)``, cut to
    ``max_rows``, then split in order (the first half gets ``n // 2`` rows)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    if max_rows is not None:
        rows = rows[:max_rows]
    return rows[: len(rows) // 2], rows[len(rows) // 2 :]


def _encode(tokenizer: Any, row: Mapping[str, Any], where: str, prompt_key: str, completion_key: str,
            weight_key: str | None, append_eos: bool) -> _Example:
    for key in (prompt_key, completion_key) + ((weight_key,) if weight_key else ()):
        if key not in row:
            raise DiagnoseError(f"{where} has no field {key!r}; its fields are {sorted(row)}.")
    prompt, completion = row[prompt_key], row[completion_key]
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise DiagnoseError(f"{where}: {prompt_key!r} and {completion_key!r} must be strings (got "
                            f"{type(prompt).__name__} and {type(completion).__name__}); conversational rows are "
                            "not supported: apply the chat template first.")
    weight = 1.0
    if weight_key:
        value = row[weight_key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DiagnoseError(f"{where}: weight {weight_key!r} must be a finite number; got {value!r}.")
        weight = float(value)
    prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    eos = getattr(tokenizer, "eos_token_id", None)
    if append_eos and eos is not None and (not completion_ids or completion_ids[-1] != eos):
        completion_ids.append(eos)
    if not prompt_ids:
        raise DiagnoseError(f"{where}: the prompt {prompt!r} tokenizes to nothing; the first completion token "
                            "needs a prefix to be predicted from.")
    return _Example(prompt_ids + completion_ids, len(prompt_ids), weight)


def _batches(examples: list[_Example], batch_size: int) -> Iterator[list[_Example]]:
    for start in range(0, len(examples), batch_size):
        yield examples[start : start + batch_size]


def _loss(model: nn.Module, batch: list[_Example], norm: int, pad_id: int, device: torch.device) -> torch.Tensor:
    """``-Σ_i w_i Σ_t log p(completion token t) / norm`` over the batch (right-padded)."""
    length = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    attention = torch.zeros(len(batch), length, dtype=torch.long)
    target = torch.zeros(len(batch), length, dtype=torch.bool)
    for n, e in enumerate(batch):
        ids[n, : len(e.ids)] = torch.tensor(e.ids)
        attention[n, : len(e.ids)] = 1
        target[n, e.prompt_len : len(e.ids)] = True
    weights = torch.tensor([e.weight for e in batch], dtype=torch.float32, device=device)
    ids, attention, target = ids.to(device), attention.to(device), target.to(device)
    logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    per_row = (logp * target[:, 1:]).sum(-1)
    return -(weights * per_row).sum() / norm


# -- the diagnosis ------------------------------------------------------------------------------------------


def diagnose(
    model: nn.Module,
    tokenizer: Any,
    rows_by_domain: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    batch_size: int = 8,
    max_rows: int | None = None,
    granularity: str = "module",
    group_size: int = 0,
    seed: int = 0,
    prompt_key: str = "prompt",
    completion_key: str = "completion",
    weight_key: str | None = None,
    append_eos: bool = True,
    progress: bool = True,
    model_name: str = "",
) -> DiagnoseResult:
    """Per-module gradient cosines between domains, and each domain's noise floor (module docstring).

    :param model: a causal LM (``model(input_ids=, attention_mask=, use_cache=False).logits``); the
        parameters with ``requires_grad=True`` are diagnosed. Its train/eval mode and ``requires_grad``
        flags are restored on return; ``p.grad`` is never touched.
    :param tokenizer: called as ``tokenizer(text, add_special_tokens=...)["input_ids"]``; its
        ``eos_token_id`` ends each completion (``append_eos``) and ``pad_token_id`` pads.
    :param rows_by_domain: domain → rows (mappings with ``prompt_key``, ``completion_key`` and, if given,
        ``weight_key``); at least 2 domains with at least 2 rows each.
    :param batch_size: rows per forward/backward pass.
    :param max_rows: rows used per domain after shuffling (None: all).
    :param granularity: what a "module" is: ``"parameter"``, ``"module"`` (leaf module, default),
        ``"block"`` (attention / MLP / rest of a layer) or ``"layer"``, as in :class:`mgs.GradientSurgery`.
    :param group_size: units (decoder layers, or modules outside the layers) per sweep; 0 = all at once.
    :param seed: shuffles each domain's rows before the split into halves (:func:`split_halves`).
    """
    if batch_size < 1:
        raise DiagnoseError(f"batch_size must be at least 1; got {batch_size}.")
    if group_size < 0:
        raise DiagnoseError(f"group_size must be 0 (all at once) or positive; got {group_size}.")
    domains = [str(d) for d in rows_by_domain]
    if len(domains) < 2:
        raise DiagnoseError(f"need at least 2 domains to compare; got {domains}.")
    layout = _layout(model, granularity)

    eos = getattr(tokenizer, "eos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad_id = pad if pad is not None else (eos if eos is not None else 0)
    halves: list[list[_Example]] = []
    rows: dict[str, int] = {}
    tokens: dict[str, int] = {}
    for domain, domain_rows in zip(domains, rows_by_domain.values()):
        first, second = split_halves(domain_rows, seed, max_rows)
        if not first:
            raise DiagnoseError(f"domain {domain!r} has {len(first) + len(second)} row(s); at least 2 are needed "
                                "(one for each half, whose gradients give the noise floor).")
        encoded = [[_encode(tokenizer, r, f"row {n} of domain {domain!r}", prompt_key, completion_key, weight_key,
                            append_eos) for n, r in enumerate(h)] for h in (first, second)]
        rows[domain] = len(first) + len(second)
        tokens[domain] = sum(len(e.ids) - e.prompt_len for h in encoded for e in h)
        if tokens[domain] == 0:
            raise DiagnoseError(f"domain {domain!r} has no completion tokens; "
                                "there is no likelihood to differentiate.")
        halves.extend(encoded)

    step = group_size or len(layout.units)
    chunks = [[p for u in layout.units[s : s + step] for p in u] for s in range(0, len(layout.units), step)]
    device = _input_device(model)
    k2 = 2 * len(domains)
    gram = torch.zeros(len(layout.modules), k2, k2, dtype=torch.float64)
    total = len(chunks) * sum(math.ceil(len(h) / batch_size) for h in halves)
    bar = _progress(total, progress)
    was_training = model.training
    flags = [p.requires_grad for p in layout.params]
    model.eval()
    try:
        with torch.enable_grad():
            for chunk in chunks:
                chosen = set(chunk)
                for n, p in enumerate(layout.params):
                    p.requires_grad_(n in chosen)
                params = [layout.params[n] for n in chunk]
                buffers = [torch.zeros(k2, p.numel(), dtype=torch.float32, device=p.device) for p in params]
                for row, half in enumerate(halves):
                    norm = tokens[domains[row // 2]]
                    for batch in _batches(half, batch_size):
                        loss = _loss(model, batch, norm, pad_id, device)
                        grads = torch.autograd.grad(loss, params, allow_unused=True)
                        for buf, g in zip(buffers, grads):
                            if g is not None:
                                buf[row].add_(g.reshape(-1))
                        del loss, grads
                        bar.update(1)
                for n, buf in zip(chunk, buffers):
                    gram[layout.module_of_param[n]] += (buf @ buf.T).to(device="cpu", dtype=torch.float64)
                del buffers
    finally:
        for p, flag in zip(layout.params, flags):
            p.requires_grad_(flag)
        model.train(was_training)
        bar.close()

    settings = {"batch_size": batch_size, "max_rows": max_rows, "granularity": granularity, "group_size": group_size,
                "sweeps": len(chunks), "seed": seed, "weight_key": weight_key, "append_eos": append_eos,
                "dtype": str(layout.params[0].dtype).removeprefix("torch."),
                "loss": "-sum_i w_i sum_t log p(completion token) / completion tokens of the domain"}
    return DiagnoseResult(domains, layout.modules, gram, rows, tokens, model_name, settings)


def _input_device(model: nn.Module) -> torch.device:
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if embedding is not None and getattr(embedding, "weight", None) is not None:
        return embedding.weight.device
    return next(model.parameters()).device


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with transformers; the diagnosis works without it
        return _NoBar()
    return tqdm(total=total, desc="mgs-diagnose", unit="batch", file=sys.stderr)


# -- data loading -------------------------------------------------------------------------------------------


def _load_dataset(path: str, split: str) -> Any:
    from mgs_tools.tables import load_table

    try:
        return load_table(path, split)
    except ValueError as error:
        raise DiagnoseError(str(error)) from error


def load_rows(
    data: str | None = None,
    *,
    split: str = "train",
    domain_column: str = "domain",
    prompt_column: str = "prompt",
    completion_column: str = "completion",
    weight_column: str | None = None,
    domains: Sequence[str] | None = None,
    toy_rows: int = 64,
) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by domain, from a json/jsonl/parquet/csv file or a saved dataset directory.

    ``data=None`` gives the toy domains of :mod:`mgs_tools.toy` (copy, reverse, sort; ``toy_rows`` each).
    Domains keep the order of first appearance unless ``domains`` names them (a subset, in that order).
    """
    if data is None:
        from mgs_tools import toy

        names = list(domains) if domains else list(toy.TRANSFORMS)
        unknown = [d for d in names if d not in toy.TRANSFORMS]
        if unknown:
            raise DiagnoseError(f"unknown domain(s) {unknown}; the toy domains are {list(toy.TRANSFORMS)}.")
        by_domain = {d: [dict(r, domain=d) for r in toy.domain_rows(d, toy_rows)] for d in names}
    else:
        dataset = _load_dataset(data, split)
        columns = list(dataset.column_names)
        needed = [domain_column, prompt_column, completion_column] + ([weight_column] if weight_column else [])
        for column in needed:
            if column not in columns:
                raise DiagnoseError(f"column {column!r} is not in {data}; its columns are {columns}.")
        by_domain: dict[str, list[dict[str, Any]]] = {}
        for row in dataset.select_columns(needed):
            by_domain.setdefault(str(row[domain_column]), []).append(row)
        if domains:
            unknown = [d for d in domains if d not in by_domain]
            if unknown:
                raise DiagnoseError(f"unknown domain(s) {unknown}; the domains in {data} are {list(by_domain)}.")
            by_domain = {d: by_domain[d] for d in domains}
    if len(by_domain) < 2:
        raise DiagnoseError(f"need at least 2 domains to compare; found {list(by_domain)}"
                            + (f" in column {domain_column!r}." if data else "."))
    return by_domain


# -- command line -------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mgs-diagnose",
        description="Per-module gradient cosines between domains (and each domain's noise floor) for a causal LM. "
                    "Writes a table to the terminal, diagnose.json and diagnose.png.",
    )
    p.add_argument("--model", help="Hugging Face model path or name (AutoModelForCausalLM); default: the built-in "
                                    "tiny random model of mgs.toy with its character tokenizer")
    p.add_argument("--tokenizer", help="tokenizer path (default: --model)")
    p.add_argument("--adapter", help="PEFT adapter directory; only the adapter's parameters are diagnosed")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="model dtype when loading --model (default: auto, the checkpoint's)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 … or auto (device_map='auto' over the GPUs); "
                                    "default: cuda if available, else cpu")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--data", help="a .json/.jsonl/.parquet/.csv file or a Dataset.save_to_disk directory; "
                                  "default: the toy domains copy/reverse/sort")
    p.add_argument("--split", default="train", help="split of a saved DatasetDict (default: train)")
    p.add_argument("--domain-column", default="domain")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--completion-column", default="completion")
    p.add_argument("--weight-column", help="per-row weight (e.g. an advantage) multiplying its log-likelihood")
    p.add_argument("--domains", help="comma-separated domains to compare, in this order (default: all)")
    p.add_argument("--max-rows", type=int, default=64, help="rows per domain after shuffling (default: 64)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per forward/backward pass (default: 8)")
    p.add_argument("--granularity", default="module", choices=list(GRANULARITIES),
                   help="what a module is (default: module, one leaf module such as q_proj)")
    p.add_argument("--group-size", type=int, default=0,
                   help="decoder layers (or outside modules) per sweep, to bound memory; 0: all at once (default)")
    p.add_argument("--no-eos", action="store_true", help="do not append EOS to each completion")
    p.add_argument("--seed", type=int, default=0, help="shuffles each domain's rows before the split into halves")
    p.add_argument("--output-dir", default="runs/diagnose", help=f"where {JSON_NAME} and {PNG_NAME} go "
                                                                 "(default: runs/diagnose)")
    p.add_argument("--no-plot", action="store_true", help=f"skip {PNG_NAME} (no matplotlib needed)")
    p.add_argument("--per-module", action="store_true", help="also print every module's cosines")
    p.add_argument("--no-progress", action="store_true")
    return p


def _load_model(args: argparse.Namespace) -> tuple[nn.Module, Any, str]:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.model is None:
        from mgs_tools import toy

        model, tokenizer, name = toy.tiny_causal_lm(), toy.char_tokenizer(), "mgs.toy.tiny_causal_lm"
        if args.dtype not in ("auto", "float32"):
            model = model.to(getattr(torch, args.dtype))
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs: dict[str, Any] = {"dtype": args.dtype if args.dtype == "auto" else getattr(torch, args.dtype),
                                  "trust_remote_code": args.trust_remote_code}
        if device == "auto":
            kwargs["device_map"] = "auto"
        model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model,
                                                  trust_remote_code=args.trust_remote_code)
        name = args.model
    if device != "auto":
        model = model.to(device)
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter, is_trainable=True)
        name = f"{name} + {args.adapter}"
    return model, tokenizer, name


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``mgs-diagnose`` and ``python -m mgs.diagnose``. Returns None (a console script passes the
    return value to ``sys.exit``); bad input exits with status 2 and a usage message."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.max_rows < 2:
        parser.error(f"--max-rows must be at least 2 (one row per half); got {args.max_rows}.")
    domains = [d.strip() for d in args.domains.split(",") if d.strip()] if args.domains else None
    try:
        rows = load_rows(args.data, split=args.split, domain_column=args.domain_column,
                         prompt_column=args.prompt_column, completion_column=args.completion_column,
                         weight_column=args.weight_column,
                         domains=domains, toy_rows=args.max_rows)
        model, tokenizer, name = _load_model(args)
        result = diagnose(model, tokenizer, rows, batch_size=args.batch_size, max_rows=args.max_rows,
                          granularity=args.granularity, group_size=args.group_size, seed=args.seed,
                          prompt_key=args.prompt_column, completion_key=args.completion_column,
                          weight_key=args.weight_column, append_eos=not args.no_eos,
                          progress=not args.no_progress, model_name=name)
    except DiagnoseError as error:
        parser.error(str(error))
    result.settings.update({"data": args.data or "mgs.toy (copy, reverse, sort)", "adapter": args.adapter})
    os.makedirs(args.output_dir, exist_ok=True)
    json_path = os.path.join(args.output_dir, JSON_NAME)
    with open(json_path, "w") as f:
        json.dump(result.to_json(), f, indent=1, allow_nan=False)
    print(result.table(per_module=args.per_module))
    print(f"\nwrote {json_path}")
    if not args.no_plot:
        png_path = os.path.join(args.output_dir, PNG_NAME)
        result.heatmap(png_path)
        print(f"wrote {png_path}")


if __name__ == "__main__":
    main()
