"""Units of a decoder: MLP neurons and attention heads as slices of parameter tensors.

An **MLP neuron** ``j`` of a layer is row ``j`` of ``gate_proj`` and ``up_proj`` (weights and biases) and column
``j`` of ``down_proj``. A **query head** ``h`` is rows ``h·d … (h+1)·d − 1`` of ``q_proj`` (``d`` the head dimension)
and the same columns of ``o_proj``. A **key-value head** ``g`` is rows ``g·d … (g+1)·d − 1`` of ``k_proj`` and of
``v_proj``: a unit of its own, so a grouped-query model has ``num_key_value_heads`` of them per layer. The slices of
two different units never overlap, so a unit's share of a sum over parameters is well defined.

The head dimension and head counts come from the model config (``head_dim``, else ``hidden_size //
num_attention_heads``; ``num_key_value_heads``, else ``num_attention_heads``); the tensor shapes are checked
against them. Layouts other than separate ``q/k/v/o_proj`` and ``gate/up/down_proj`` Linear layers (fused
``qkv_proj`` or ``gate_up_proj``, fused MoE experts) are refused with the names found.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

UNIT_KINDS = ("mlp", "q_head", "kv_head")
"""Unit kinds: MLP neurons, query heads (q rows + o columns), key-value heads (k rows + v rows)."""

_PROJ = re.compile(r"^(?P<layer>.*?(?:^|\.)(?:layers|layer|h|blocks|block)\.(?P<index>\d+))\.(?P<block>mlp|self_attn)\."
                   r"(?P<proj>gate_proj|up_proj|down_proj|q_proj|k_proj|v_proj|o_proj)\.(?P<part>weight|bias)$")
_FUSED = re.compile(r"\.(qkv_proj|gate_up_proj|experts)\.")


class UnitError(ValueError):
    """The checkpoint's layout does not match the unit definitions (the message says what was found)."""


@dataclass(frozen=True)
class Slice:
    """Unit ``u`` of a group owns ``tensor.narrow(dim, u * width, width)`` of parameter ``name``."""

    name: str
    dim: int
    width: int


@dataclass(frozen=True)
class UnitGroup:
    """The ``count`` units of one kind in one decoder layer, and the slices each of them owns."""

    layer: int
    kind: str
    count: int
    slices: tuple[Slice, ...]

    @property
    def key(self) -> str:
        return f"{self.layer}.{self.kind}"


def unit_rows(tensor: torch.Tensor, piece: Slice, count: int) -> torch.Tensor:
    """``tensor`` (a parameter or its change) as ``[count, -1]``: row ``u`` holds every entry unit ``u`` owns."""
    if tensor.dim() == 1 or piece.dim == 0:
        return tensor.reshape(count, -1)
    if tensor.dim() != 2 or piece.dim != 1:
        raise UnitError(f"{piece.name}: a unit slice of dimension {piece.dim} of a {tensor.dim()}-d tensor is not "
                        "supported.")
    out_features = tensor.shape[0]
    return tensor.reshape(out_features, count, piece.width).transpose(0, 1).reshape(count, -1)


def unit_sq_norms(group: UnitGroup, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per unit of ``group``, the sum of squares of its entries in ``tensors`` (float64, ``[count]``)."""
    total = torch.zeros(group.count, dtype=torch.float64)
    for piece in group.slices:
        rows = unit_rows(tensors[piece.name].double(), piece, group.count)
        total += rows.pow(2).sum(1)
    return total


def unit_dots(group: UnitGroup, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per unit of ``group``, the dot product of ``a`` and ``b`` over its entries (float64, ``[count]``)."""
    total = torch.zeros(group.count, dtype=torch.float64)
    for piece in group.slices:
        total += (unit_rows(a[piece.name].double(), piece, group.count)
                  * unit_rows(b[piece.name].double(), piece, group.count)).sum(1)
    return total


def _config_value(config, *names):
    for name in names:
        value = getattr(config, name, None) if config is not None else None
        if value is not None:
            return value
    return None


def unit_groups(shapes: Mapping[str, Sequence[int]], config=None) -> list[UnitGroup]:
    """The unit groups of a decoder from its parameter ``shapes`` (name → shape) and its config.

    :param config: anything with ``num_attention_heads`` (and optionally ``head_dim``, ``num_key_value_heads``,
        ``hidden_size``); a model config. Without it, no attention units (MLP neurons only).
    """
    fused = sorted({m.group(1) for name in shapes for m in [_FUSED.search(name)] if m})
    layers: dict[int, dict[str, dict[str, str]]] = {}
    for name in shapes:
        m = _PROJ.match(name)
        if m:
            layers.setdefault(int(m["index"]), {}).setdefault(m["proj"], {})[m["part"]] = name
    if not layers:
        hint = f" (fused {', '.join(fused)} layers are not supported)" if fused else ""
        raise UnitError("no decoder layer with q/k/v/o_proj or gate/up/down_proj Linear weights was found" + hint
                        + f"; parameter names look like {sorted(shapes)[:3]}.")
    heads = _config_value(config, "num_attention_heads")
    kv_heads = _config_value(config, "num_key_value_heads") or heads
    head_dim = _config_value(config, "head_dim")
    if heads and not head_dim:
        head_dim = _config_value(config, "hidden_size") // heads
    groups = []
    for index in sorted(layers):
        projs = layers[index]
        if {"gate_proj", "up_proj", "down_proj"} <= set(projs):
            width = shapes[projs["gate_proj"]["weight"]][0]
            for proj, dim in (("up_proj", 0), ("down_proj", 1)):
                size = shapes[projs[proj]["weight"]][dim]
                if size != width:
                    raise UnitError(f"layer {index}: gate_proj has {width} rows but {proj} has {size} along "
                                    f"dimension {dim}; the MLP neurons cannot be matched.")
            slices = [Slice(projs[p][part], 0, 1) for p in ("gate_proj", "up_proj") for part in ("weight", "bias")
                      if part in projs[p]]
            slices.append(Slice(projs["down_proj"]["weight"], 1, 1))
            groups.append(UnitGroup(index, "mlp", width, tuple(slices)))
        if heads and {"q_proj", "k_proj", "v_proj", "o_proj"} <= set(projs):
            expect = {"q_proj": (0, heads), "o_proj": (1, heads), "k_proj": (0, kv_heads), "v_proj": (0, kv_heads)}
            for proj, (dim, n) in expect.items():
                size = shapes[projs[proj]["weight"]][dim]
                if size != n * head_dim:
                    raise UnitError(f"layer {index}: {proj} has {size} along dimension {dim}, not {n} heads × "
                                    f"head_dim {head_dim} from the config; the heads cannot be sliced.")
            q = [Slice(projs["q_proj"][part], 0, head_dim) for part in ("weight", "bias") if part in projs["q_proj"]]
            q.append(Slice(projs["o_proj"]["weight"], 1, head_dim))
            groups.append(UnitGroup(index, "q_head", heads, tuple(q)))
            kv = [Slice(projs[p][part], 0, head_dim) for p in ("k_proj", "v_proj") for part in ("weight", "bias")
                  if part in projs[p]]
            groups.append(UnitGroup(index, "kv_head", kv_heads, tuple(kv)))
    return groups


def top_units(scores: torch.Tensor, percent: float) -> set[int]:
    """Indices of the top ``percent`` % of ``scores`` (at least one; ties to the lower index)."""
    k = max(1, round(percent / 100 * scores.numel()))
    order = torch.sort(-scores.double(), stable=True).indices
    return set(order[:k].tolist())


def jaccard(a: Iterable, b: Iterable) -> float | None:
    a, b = set(a), set(b)
    union = a | b
    return len(a & b) / len(union) if union else None


def chance_jaccard(percent: float) -> float:
    """Expected Jaccard overlap of two independent random selections of ``percent`` % of many units: f / (2 − f)."""
    f = percent / 100
    return f / (2 - f)
