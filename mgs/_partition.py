"""Step 1 — partition: trainable parameters → named groups ("modules"), each with a kind.

A group is the unit the method sees: one K×K Gram matrix per group. Kinds (attention, mlp,
embedding, norm, other) only label groups for statistics. A group is a set of whole parameters, or of
slices of them (attention heads, MoE experts: :mod:`mgs._slicing`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from mgs._options import Granularity
from mgs._slicing import (SLICED_GRANULARITIES, AttentionHeads, BuiltinSlicing, ParamSlicing, Slicing, TensorSlices,
                          experts_from_config, heads_from_config, model_config)

KINDS = ("attention", "mlp", "embedding", "norm", "other")

# PEFT LoRA names: "<base>.lora_A.<adapter>.weight", "<base>.base_layer.weight",
# "<base>.lora_embedding_A.<adapter>" (a ParameterDict entry) — all belong to <base>.
_BASE_LAYER = re.compile(r"\.base_layer(?=\.)")
_LORA_DICT = re.compile(r"\.(?:lora_embedding_A|lora_embedding_B|lora_magnitude_vector)\.[^.]+$")
_LORA_LINEAR = re.compile(r"\.(?:lora_A|lora_B)\.[^.]+(?=\.)")
# Hugging Face decoder layers: model.layers.3, transformer.h.3, encoder.layer.3, blocks.3 ...
_LAYER = re.compile(r"^(.*?(?:^|\.)(?:layers|layer|h|blocks|block|decoder_layers)\.\d+)\.")

_NORM = re.compile(r"(norm|^ln(_|\d|$)|_ln$|^ln_f$)", re.IGNORECASE)
_EMBEDDING = re.compile(r"^(embed\w*|wte|wpe|lm_head|embeddings?|word_embeddings|position_embeddings|shared)$")
_ATTENTION = re.compile(r"^(\w*attn\w*|\w*attention\w*|[qkvo]_proj|qkv\w*|query|key|value|dense_qkv)$")
_MLP = re.compile(r"^(mlp|feed_forward|ffn|\w*experts?|gate_proj|up_proj|down_proj|gate_up_proj|fc\d|c_fc|w[123])$")


def module_of(name: str) -> str:
    """The module path that owns parameter ``name``, with LoRA adapter names mapped to their base module."""
    name = _BASE_LAYER.sub("", name)
    name, n = _LORA_DICT.subn("", name)
    if n:
        return name
    return _LORA_LINEAR.sub("", name).rpartition(".")[0]


def kind_of(name: str) -> str:
    """Classify a parameter by the usual Hugging Face module names (see :data:`KINDS`)."""
    parts = module_of(name).split(".")
    if parts and _NORM.search(parts[-1]):
        return "norm"
    for part in reversed(parts):
        if _ATTENTION.match(part):
            return "attention"
        if _MLP.match(part):
            return "mlp"
        if _EMBEDDING.match(part):
            return "embedding"
    return "other"


def group_key(name: str, granularity: Granularity) -> str:
    """The group a parameter belongs to under ``granularity``."""
    if isinstance(granularity, re.Pattern):
        match = granularity.search(name)
        return match.group(0) if match else name
    if callable(granularity):
        key = granularity(name)
        if not isinstance(key, str):
            raise TypeError(f"granularity callable returned {key!r} for parameter {name!r}; it must return a str.")
        return key
    if granularity == "parameter":
        return name
    module = module_of(name)
    if granularity == "module" or granularity in SLICED_GRANULARITIES:
        return module
    layer = _LAYER.match(module + ".")
    if layer is None:  # embeddings, final norm, lm_head: each leaf module on its own
        return module
    if granularity == "layer":
        return layer.group(1)
    kind = kind_of(name)
    return f"{layer.group(1)}.{kind if kind in ('attention', 'mlp') else 'other'}"


def trainable_parameters(
    model: nn.Module | Iterable[tuple[str, torch.Tensor]],
) -> list[tuple[tuple[str, ...], torch.Tensor]]:
    """``(names, parameter)`` for each distinct trainable tensor; tied tensors appear once with all names."""
    if isinstance(model, nn.Module):
        pairs: Iterable[tuple[str, torch.Tensor]] = model.named_parameters(remove_duplicate=False)
    else:
        pairs = model
    found: dict[int, tuple[list[str], torch.Tensor]] = {}
    for item in pairs:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError(f"expected (name, parameter) pairs; got {item!r:.80}.")
        name, param = item
        if not isinstance(param, torch.Tensor):
            raise TypeError(f"parameter {name!r} is a {type(param).__name__}, not a tensor.")
        if not param.requires_grad:
            continue
        if not param.is_leaf:
            raise ValueError(f"parameter {name!r} is not a leaf tensor; autograd never writes its .grad.")
        entry = found.setdefault(id(param), ([], param))
        entry[0].append(name)
    return [(tuple(names), param) for names, param in found.values()]


@dataclass(frozen=True)
class Partition:
    """Groups of parameters (or of their slices): ``slicings[i]`` says which group each element of ``params[i]``
    belongs to."""

    params: tuple[torch.Tensor, ...]
    names: tuple[tuple[str, ...], ...]
    group_names: tuple[str, ...]
    group_kinds: tuple[str, ...]
    slicings: tuple[ParamSlicing, ...]

    @property
    def group_of(self) -> tuple[int, ...]:
        """Per parameter, its group (its first piece's when sliced)."""
        return tuple(s.groups[0] for s in self.slicings)

    @classmethod
    def build(
        cls,
        model: nn.Module | Iterable[tuple[str, torch.Tensor]],
        granularity: Granularity,
        *,
        heads: AttentionHeads | None = None,
        slicing: Slicing | None = None,
    ) -> Partition:
        entries = trainable_parameters(model)
        if not entries:
            raise ValueError("the model has no parameter with requires_grad=True; there is nothing to do surgery on.")
        for names, param in entries:
            if param.is_complex():
                raise TypeError(f"parameter {names[0]!r} is complex ({param.dtype}); gradient surgery supports real "
                                "floating-point parameters only.")
            if not param.is_floating_point():
                raise TypeError(f"parameter {names[0]!r} has dtype {param.dtype}; gradients need floating point.")
        if isinstance(model, nn.Module):
            trainable = {id(p) for _, p in entries}
            for name, module in model.named_modules():
                if getattr(module, "sparse", False) is True and any(id(p) in trainable for p in module.parameters(False)):
                    raise ValueError(
                        f"module {name!r} ({type(module).__name__}) has sparse=True, so its gradient is a sparse "
                        "tensor, which the per-domain buffers (dense) cannot hold; build it with sparse=False "
                        "(and a dense optimizer instead of SparseAdam) or freeze it."
                    )
        if slicing is not None and not callable(slicing):
            raise TypeError(f"slicing must be a callable (name, shape) -> mgs.TensorSlices | None; got {slicing!r}.")
        if heads is not None and not isinstance(heads, AttentionHeads):
            raise TypeError(f"heads must be an mgs.AttentionHeads(num_heads, head_dim, num_kv_heads); got {heads!r}.")
        builtin = None
        if isinstance(granularity, str) and granularity in SLICED_GRANULARITIES:
            config = model_config(model) if isinstance(model, nn.Module) else None
            builtin = BuiltinSlicing(granularity, heads or heads_from_config(config), experts_from_config(config),
                                     module_of, kind_of)
        index: dict[str, int] = {}
        kinds: list[set[str]] = []

        def group_index(key: str, kind: str) -> int:
            if key not in index:
                index[key] = len(index)
                kinds.append(set())
            kinds[index[key]].add(kind)
            return index[key]

        slicings = []
        for names, param in entries:
            name, kind = names[0], kind_of(names[0])
            shape = param.shape  # a DTensor's global shape
            slices = slicing(name, shape) if slicing is not None else None
            if slices is not None and not isinstance(slices, TensorSlices):
                raise TypeError(f"slicing returned {slices!r} for parameter {name!r}; it must return an "
                                "mgs.TensorSlices or None.")
            if slices is None and builtin is not None:
                slices = builtin(name, shape)
            if slices is not None:
                slicings.append(ParamSlicing.of(shape, slices.check(name, shape), lambda key: group_index(key, kind)))
            else:
                slicings.append(ParamSlicing.whole(shape, group_index(group_key(name, granularity), kind)))
        if builtin is not None:
            builtin.finish()
        return cls(
            params=tuple(p for _, p in entries),
            names=tuple(n for n, _ in entries),
            group_names=tuple(index),
            group_kinds=tuple(next(iter(k)) if len(k) == 1 else "other" for k in kinds),
            slicings=tuple(slicings),
        )

    @property
    def sliced(self) -> bool:
        """Whether some group holds slices of a parameter rather than whole parameters."""
        return any(s.dim is not None for s in self.slicings)

    def groups(self) -> dict[str, list[str]]:
        """Group key → names of its parameters (tied parameters under their first name); a sliced parameter is
        listed in every group one of its slices belongs to."""
        out: dict[str, list[str]] = {g: [] for g in self.group_names}
        for names, sliced in zip(self.names, self.slicings):
            for g in dict.fromkeys(sliced.groups):
                out[self.group_names[g]].append(names[0])
        return out

    def pieces(self, index: int) -> list[tuple[int, int | None, int, int]]:
        """Parameter ``index``'s pieces ``(group, dim, start, stop)``: ``narrow(dim, start, stop - start)``; one piece
        with ``dim`` None for a whole parameter (start 0, stop its size along dim 0, or 1 for a scalar)."""
        sliced, param = self.slicings[index], self.params[index]
        if sliced.dim is None:
            return [(sliced.groups[0], None, 0, param.shape[0] if param.dim() else 1)]
        return [(g, sliced.dim, p * sliced.size, (p + 1) * sliced.size) for p, g in enumerate(sliced.groups)]

    def group_slices(self) -> dict[str, list[tuple[str, int | None, int, int]]]:
        """Group key → its slices ``(parameter name, dim, start, stop)`` (see :meth:`pieces`)."""
        out: dict[str, list[tuple[str, int | None, int, int]]] = {g: [] for g in self.group_names}
        for index, names in enumerate(self.names):
            for g, dim, start, stop in self.pieces(index):
                out[self.group_names[g]].append((names[0], dim, start, stop))
        return out

    def layout_key(self) -> tuple:
        """What defines the grouping: group names, and per parameter its slicing (for fingerprints)."""
        return (self.group_names, tuple((s.segment, s.groups, s.dim) for s in self.slicings))
