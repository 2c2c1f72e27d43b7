"""The measurement: parameters → diagnosed modules and sweep units, rows → token ids, and :func:`diagnose`, which
accumulates each (domain, half) gradient and their per-module Gram matrices (what they mean: :mod:`mgs_tools.diagnose`).

Loss: ``L_d = -Σ_i w_i Σ_t log p(y_it | prompt_i, y_i<t) / T_d`` over the completion tokens of domain
``d``'s rows, with ``T_d`` the domain's completion-token count (token mean) and ``w_i`` the optional
per-row weight (an advantage, for example; 1 without a weight column). Both halves use the domain's
``T_d``, so the two half gradients add up to the domain's gradient exactly. The model runs in eval mode
(no dropout), so every pass over the same rows gives the same gradient.

Memory: the diagnosed parameters (those with ``requires_grad``; for a PEFT model the adapter weights)
are split into *units* (a decoder layer, or a module outside the layers such as the embedding, the
final norm or ``lm_head``). ``layers_per_sweep=0`` diagnoses all units in one sweep; ``layers_per_sweep=N``
does N units per sweep, turning ``requires_grad`` off on every other diagnosed parameter and recomputing the
forward and backward passes for each sweep (about ``units / N`` times the compute). During a sweep the
memory is the model, one micro-batch's activations, one gradient of the sweep's parameters (in their
dtype, from ``torch.autograd.grad``; ``p.grad`` is never touched), and **2K float32 copies of the
sweep's parameters** (the per-(domain, half) accumulators). Gradients of bf16/fp16 models are
accumulated over micro-batches in float32, and the Gram matrices are computed in float32 and summed
over parameters in float64.

Only torch is imported at module level (tqdm where the progress bar is made), so :func:`diagnose` works with
any model whose output has ``.logits``.
"""

from __future__ import annotations

import math
import random
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mgs._options import GRANULARITIES
from mgs._partition import _LAYER, Partition, kind_of, module_of, trainable_parameters
from mgs_tools.diagnose._results import DiagnoseError, DiagnoseResult, ModuleInfo


# -- parameters → diagnosed modules and sweep units ------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    params: list[torch.Tensor]
    pieces_of_param: list[list[tuple[int, int | None, int, int]]]
    """Per parameter, its pieces ``(module index, dim, start, stop)``: ``narrow(dim, start, stop - start)``, or the
    whole parameter (dim None); more than one under sub-tensor granularities (heads, experts)."""
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
    if not trainable_parameters(model):
        raise DiagnoseError("the model has no parameter with requires_grad=True; there is nothing to diagnose.")
    try:  # the surgery's own grouping, slices included: what is diagnosed is what surgery would treat apart
        partition = Partition.build(model, granularity)
    except (ValueError, TypeError) as error:
        raise DiagnoseError(str(error)) from None
    info: list[dict[str, Any]] = [{"name": key, "layer": None, "kind": None, "families": set(), "numel": 0,
                                   "prefix": None} for key in partition.group_names]
    unit_index: dict[str, int] = {}
    units: list[list[int]] = []
    pieces_of_param = []
    for p_idx, (names, param) in enumerate(zip(partition.names, partition.params)):
        name = names[0]
        prefix = _layer_prefix(name)
        pieces = partition.pieces(p_idx)
        pieces_of_param.append(pieces)
        for m, dim, start, stop in pieces:
            entry = info[m]
            if entry["kind"] is None:
                entry["layer"] = int(prefix.rpartition(".")[2]) if prefix else None
                entry["kind"] = _label(entry["name"], name, granularity, prefix)
                entry["prefix"] = prefix
            entry["families"].add(kind_of(name))
            entry["numel"] += param.numel() if dim is None else param.numel() // param.shape[dim] * (stop - start)
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
    return _Layout(list(partition.params), pieces_of_param, modules, units)


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


def pad_id_of(tokenizer: Any) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its EOS, else 0."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return value
    return 0


def _padded(batch: Sequence[_Example], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(ids, attention mask, completion-token mask)`` of a batch, on ``device``."""
    length = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    attention = torch.zeros(len(batch), length, dtype=torch.long)
    target = torch.zeros(len(batch), length, dtype=torch.bool)
    for n, e in enumerate(batch):
        ids[n, : len(e.ids)] = torch.tensor(e.ids)
        attention[n, : len(e.ids)] = 1
        target[n, e.prompt_len : len(e.ids)] = True
    return ids.to(device), attention.to(device), target.to(device)


def _loss(model: nn.Module, batch: list[_Example], norm: int, pad_id: int, device: torch.device) -> torch.Tensor:
    """``-Σ_i w_i Σ_t log p(completion token t) / norm`` over the batch (right-padded)."""
    ids, attention, target = _padded(batch, pad_id, device)
    weights = torch.tensor([e.weight for e in batch], dtype=torch.float32, device=device)
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
    layers_per_sweep: int = 0,
    seed: int = 0,
    prompt_key: str = "prompt",
    completion_key: str = "completion",
    weight_key: str | None = None,
    append_eos: bool = True,
    progress: bool = True,
    model_name: str = "",
    group_size: int | None = None,
) -> DiagnoseResult:
    """Per-module gradient cosines between domains, and each domain's noise floor (:mod:`mgs_tools.diagnose`).

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
        ``"block"`` (attention / MLP / rest of a layer), ``"layer"``, ``"head"`` (each attention head of q/k/v/o),
        ``"expert"`` (each expert of a fused MoE experts module) or ``"head+expert"``, as in
        :class:`mgs.GradientSurgery` (heads from the model's config).
    :param layers_per_sweep: units (decoder layers, or modules outside the layers) per sweep; 0 = all at once.
    :param group_size: the former name of ``layers_per_sweep`` (deprecated: in mgs a *group* is a parameter group).
    :param seed: shuffles each domain's rows before the split into halves (:func:`split_halves`).
    """
    if batch_size < 1:
        raise DiagnoseError(f"batch_size must be at least 1; got {batch_size}.")
    if group_size is not None:
        if layers_per_sweep:
            raise TypeError("diagnose() got both layers_per_sweep and its deprecated name group_size; "
                            "pass layers_per_sweep only.")
        warnings.warn("diagnose(group_size=...) is deprecated; use layers_per_sweep=... (in mgs a group is a "
                      "parameter group).", FutureWarning, stacklevel=2)
        layers_per_sweep = group_size
    if layers_per_sweep < 0:
        raise DiagnoseError(f"layers_per_sweep must be 0 (all at once) or positive; got {layers_per_sweep}.")
    domains = [str(d) for d in rows_by_domain]
    if len(domains) < 2:
        raise DiagnoseError(f"need at least 2 domains to compare; got {domains}.")
    layout = _layout(model, granularity)

    pad_id = pad_id_of(tokenizer)
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

    step = layers_per_sweep or len(layout.units)
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
                    shaped = buf.view(k2, *layout.params[n].shape)
                    for m, dim, start, stop in layout.pieces_of_param[n]:
                        x = buf if dim is None else shaped.narrow(dim + 1, start, stop - start).reshape(k2, -1)
                        gram[m] += (x @ x.T).to(device="cpu", dtype=torch.float64)
                del buffers
    finally:
        for p, flag in zip(layout.params, flags):
            p.requires_grad_(flag)
        model.train(was_training)
        bar.close()

    settings = {"batch_size": batch_size, "max_rows": max_rows, "granularity": granularity,
                "layers_per_sweep": layers_per_sweep, "sweeps": len(chunks), "seed": seed, "weight_key": weight_key,
                "append_eos": append_eos,
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
