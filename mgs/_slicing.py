"""Step 1b — sub-tensor groups: a parameter split into equal slices along one dimension, each its own group.

Attention heads and MoE experts live inside one tensor (``q_proj.weight`` holds every head's rows; a fused
``experts.gate_up_proj`` ``[E, 2I, H]`` every expert), so a group can be a *set of slices of tensors*. A
:class:`TensorSlices` says how one parameter splits: along ``dim``, into pieces of ``size`` indices, piece
``p`` belonging to the group ``keys[p]``. Built in:

- ``granularity="head"``: ``q_proj``/``k_proj``/``v_proj`` rows (weight and bias) by (query or key-value)
  head; ``o_proj`` weight columns by query head (its bias stays the module's group); Phi-3's fused
  ``qkv_proj`` rows by its q, k and v heads. LoRA: ``lora_B`` of q/k/v (rows) and ``lora_A`` of o
  (columns) follow the heads; the other factor stays one group per module.
- ``granularity="expert"``: every tensor of a fused ``experts`` module split along dim 0, expert ``e``'s
  slices of all of them one group.
- ``"head+expert"``: both. Every other parameter is grouped as under ``"module"``.

Head counts come from :class:`AttentionHeads` when given, else from the model's config (``num_attention_heads``,
``num_key_value_heads``, ``head_dim``). Shapes that do not fit, and fused layouts not known here, are errors naming
the module. Torch only: the config is read by attribute, whatever class it is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

SLICED_GRANULARITIES = ("head", "expert", "head+expert")

_HEAD_ROWS = ("q_proj", "k_proj", "v_proj")
_FUSED_REFUSED = ("c_attn", "query_key_value", "Wqkv", "qkv", "in_proj")  # GPT-2, NeoX/Falcon, MPT, ViT, nn.MHA
_MHA_PACKED = ("in_proj_weight", "in_proj_bias")  # nn.MultiheadAttention's q, k, v packed in one parameter
_LORA_FACTOR = re.compile(r"\.(lora_A|lora_B)\.[^.]+\.weight$")
_EXPERT_COUNT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


@dataclass(frozen=True)
class TensorSlices:
    """A parameter split along ``dim`` into pieces of ``size`` indices; piece ``p`` belongs to group ``keys[p]``.

    ``len(keys) * size`` must equal the parameter's size along ``dim``. A key may repeat (pieces then share a
    group) and may be the key of a whole-parameter group.
    """

    dim: int
    size: int
    keys: tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int):
            raise TypeError(f"TensorSlices.dim must be an int; got {self.dim!r}.")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"TensorSlices.size must be a positive int; got {self.size!r}.")
        keys = () if isinstance(self.keys, str) else tuple(self.keys)  # a str would be one key per character
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise TypeError(f"TensorSlices.keys must be non-empty strings, one per piece; got {self.keys!r}.")
        object.__setattr__(self, "keys", keys)

    def check(self, name: str, shape: torch.Size) -> TensorSlices:
        """Self with ``dim`` made non-negative, after checking it fits ``shape``; else ``ValueError`` naming ``name``."""
        if not shape:
            raise ValueError(f"parameter {name!r} is a scalar; it cannot be sliced ({self}).")
        dim = self.dim + len(shape) if self.dim < 0 else self.dim
        if not 0 <= dim < len(shape):
            raise ValueError(f"slices of parameter {name!r} along dim {self.dim}, but it has shape {tuple(shape)}.")
        if len(self.keys) * self.size != shape[dim]:
            raise ValueError(
                f"slices of parameter {name!r}: {len(self.keys)} pieces of {self.size} along dim {dim} cover "
                f"{len(self.keys) * self.size} indices, but its shape is {tuple(shape)}."
            )
        return TensorSlices(dim, self.size, self.keys)


Slicing = Callable[[str, torch.Size], "TensorSlices | None"]
"""A user's slicing: ``(parameter name, its full shape) -> TensorSlices`` or ``None`` (the granularity decides)."""


@dataclass(frozen=True)
class AttentionHeads:
    """Head layout of the model's attention modules, when its config does not give it (or to override it).

    Attributes:
        num_heads: query heads per attention module.
        head_dim: features per head.
        num_kv_heads: key-value heads (grouped-query attention); defaults to ``num_heads``.
    """

    num_heads: int
    head_dim: int
    num_kv_heads: int | None = None

    def __post_init__(self) -> None:
        for field in ("num_heads", "head_dim", "num_kv_heads"):
            value = getattr(self, field)
            if field == "num_kv_heads" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AttentionHeads.{field} must be a positive int; got {value!r}.")
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"AttentionHeads: num_heads={self.num_heads} is not a multiple of num_kv_heads="
                             f"{self.num_kv_heads}.")


def model_config(model: object) -> object | None:
    """The (text) config of a Hugging Face model, through DDP (``.module``) and PEFT wrappers; None if none."""
    for candidate in (model, getattr(model, "module", None)):
        config = getattr(candidate, "config", None)
        if config is None:
            continue
        if not hasattr(config, "num_attention_heads") and callable(getattr(config, "get_text_config", None)):
            config = config.get_text_config()  # multimodal models keep the language model's layout there
        return config
    return None


def heads_from_config(config: object | None) -> AttentionHeads | None:
    if config is None or getattr(config, "num_attention_heads", None) is None:
        return None
    num_heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None)
    if head_dim is None:
        hidden = getattr(config, "hidden_size", None)
        if hidden is None or hidden % num_heads:
            return None
        head_dim = hidden // num_heads
    kv = getattr(config, "num_key_value_heads", None)
    return AttentionHeads(num_heads, int(head_dim), int(kv) if kv is not None else None)


def experts_from_config(config: object | None) -> int | None:
    for field in _EXPERT_COUNT_FIELDS:
        value = getattr(config, field, None) if config is not None else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def _strip_wrappers(name: str) -> str:
    """``name`` without the DDP/FSDP/PEFT prefixes that do not change what the parameter is."""
    return name.replace(".base_layer.", ".")


def _head_keys(prefix: str, count: int, label: str = "head") -> tuple[str, ...]:
    return tuple(f"{prefix}:{label}{h}" for h in range(count))


class BuiltinSlicing:
    """The slicing of ``granularity="head"``, ``"expert"`` or ``"head+expert"`` for one model.

    Called with every trainable parameter's name and shape before any group is formed, so a head layout that
    does not fit is an error at construction.
    """

    def __init__(self, granularity: str, heads: AttentionHeads | None, num_experts: int | None,
                 module_of: Callable[[str], str], kind_of: Callable[[str], str] | None = None):
        self.heads_on = "head" in granularity.split("+")
        self.experts_on = "expert" in granularity.split("+")
        self.heads = heads
        self.num_experts = num_experts
        self.module_of = module_of
        self.kind_of = kind_of  # a fused name refused only inside attention (a Mamba mixer's in_proj is none)
        self.found_attention = False
        self.found_experts = False

    def _require_heads(self, module: str) -> AttentionHeads:
        if self.heads is None:
            raise ValueError(
                f"granularity='head' needs the attention head layout to split {module!r}: the model has no config "
                "with num_attention_heads (and head_dim or hidden_size); pass heads=mgs.AttentionHeads(num_heads, "
                "head_dim, num_kv_heads)."
            )
        return self.heads

    def __call__(self, name: str, shape: torch.Size) -> TensorSlices | None:
        plain = _strip_wrappers(name)
        module = self.module_of(name)
        leaf = module.rpartition(".")[2]
        lora = _LORA_FACTOR.search(plain)
        factor = lora.group(1) if lora else None
        param = plain.rpartition(".")[2]
        if self.heads_on:
            fused = leaf in _FUSED_REFUSED and (self.kind_of is None or self.kind_of(name) == "attention")
            if (fused or param in _MHA_PACKED) and len(shape) >= 1:
                raise ValueError(
                    f"granularity='head' does not know the fused attention layout of {module!r} "
                    f"({leaf if fused else param}); its heads "
                    "cannot be split safely. Use granularity='module', or pass slicing= with your own TensorSlices."
                )
            if leaf in _HEAD_ROWS or leaf == "qkv_proj":
                self.found_attention = True
                if factor == "lora_A" or (factor is None and param not in ("weight", "bias")):
                    return None  # the rank-side factor stays the module's group
                heads = self._require_heads(module)
                if leaf == "qkv_proj":
                    keys = (_head_keys(module, heads.num_heads, "q_head") + _head_keys(module, heads.num_kv_heads, "k_head")
                            + _head_keys(module, heads.num_kv_heads, "v_head"))
                else:
                    count = heads.num_heads if leaf == "q_proj" else heads.num_kv_heads
                    keys = _head_keys(module, count)
                return self._fit(name, module, shape, 0, heads.head_dim, keys)
            if leaf == "o_proj":
                self.found_attention = True
                if factor == "lora_B" or (factor is None and param != "weight"):
                    return None  # the bias (and the rank-side factor) stay the module's group
                heads = self._require_heads(module)
                return self._fit(name, module, shape, len(shape) - 1, heads.head_dim,
                                 _head_keys(module, heads.num_heads))
        if self.experts_on and leaf == "experts" and factor is None:
            self.found_experts = True
            count = self.num_experts if self.num_experts is not None else (shape[0] if shape else 0)
            if len(shape) < 2 or shape[0] != count:
                raise ValueError(
                    f"granularity='expert': {name!r} in the fused experts module {module!r} has shape {tuple(shape)}, "
                    f"but a fused expert tensor has the {count} experts along dim 0 (e.g. gate_up_proj [E, 2I, H]); "
                    "this layout is not known: use granularity='module' or pass slicing=."
                )
            return TensorSlices(0, 1, tuple(f"{module}:expert{e}" for e in range(count)))
        return None

    def _fit(self, name: str, module: str, shape: torch.Size, dim: int, size: int,
             keys: Sequence[str]) -> TensorSlices:
        if not shape or shape[dim] != size * len(keys):
            raise ValueError(
                f"granularity='head': {name!r} has shape {tuple(shape)}, but {module!r} with {len(keys)} heads of "
                f"{size} needs {size * len(keys)} along dim {dim}; check the head layout (heads=mgs.AttentionHeads"
                "(...) or the model's config)."
            )
        return TensorSlices(dim, size, tuple(keys))

    def finish(self) -> None:
        """After every parameter: a granularity that found nothing to split is an error, not a silent no-op."""
        if self.heads_on and not self.found_attention:
            raise ValueError("granularity='head' found no attention projection (q_proj, k_proj, v_proj, o_proj or "
                             "qkv_proj) among the trainable parameters; use granularity='module', or slicing=.")
        if self.experts_on and not self.found_experts:
            raise ValueError("granularity='expert' found no fused experts module (a module named 'experts' holding "
                             "[E, ...] tensors) among the trainable parameters; unfused experts are separate under "
                             "granularity='module' already.")


@dataclass(frozen=True)
class ParamSlicing:
    """One parameter's groups, as the buffers see it: flat element ``e`` of the full tensor belongs to group
    ``groups[(e // segment) % len(groups)]`` (one group: ``segment`` = the tensor's size)."""

    segment: int
    groups: tuple[int, ...]
    dim: int | None = None  # the sliced dimension (None: the whole tensor is one group)
    size: int = 0  # indices per piece along dim

    @classmethod
    def whole(cls, shape: torch.Size, group: int) -> ParamSlicing:
        """The whole parameter in one group."""
        return cls(max(math.prod(shape), 1), (group,))

    @classmethod
    def of(cls, shape: torch.Size, slices: TensorSlices, group_index: Callable[[str], int]) -> ParamSlicing:
        """``slices`` (checked against ``shape``) with each key's group from ``group_index``."""
        inner = math.prod(shape[slices.dim + 1 :])
        return cls(max(slices.size * inner, 1), tuple(group_index(k) for k in slices.keys), slices.dim, slices.size)
