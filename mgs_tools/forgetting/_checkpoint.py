"""Checkpoints read one tensor at a time, in float32.

A :class:`Checkpoint` is a full Hugging Face model folder (``model.safetensors`` or a sharded
``model.safetensors.index.json``: tensors are read lazily with ``safetensors.safe_open``, so memory holds only the
tensors asked for; ``pytorch_model.bin``: memory-mapped), a PEFT adapter folder (``adapter_config.json``: the
adapter is loaded on its base model with ``peft`` and merged, so the merged model is held in memory once), a
module or a state dict (in memory, as given: the tool copies nothing it does not change). Every tensor comes back
as a float32 CPU tensor (bf16 checkpoints are analysed in fp32).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (the message names the path and what it holds)."""


class Checkpoint:
    """Named float tensors of one model state. ``names`` lists them; :meth:`get` reads one in float32."""

    def __init__(self, source, *, label: str | None = None, base: str | None = None, config=None):
        self.label = label or (source if isinstance(source, str) else "<in memory>")
        self.path = source if isinstance(source, str) else None
        self.config = config
        self._tensors: Mapping[str, torch.Tensor] | None = None
        self._files: dict[str, str] = {}
        if isinstance(source, nn.Module):
            self._tensors = {k: v for k, v in source.state_dict().items() if v.is_floating_point()}
            self.config = config or getattr(source, "config", None)
        elif isinstance(source, Mapping):
            self._tensors = {k: v for k, v in source.items() if torch.is_tensor(v) and v.is_floating_point()}
        elif isinstance(source, str):
            self._open(source, base)
        else:
            raise CheckpointError(f"a checkpoint is a folder, a module or a state dict; got {type(source).__name__}.")
        self.names = sorted(self._tensors) if self._tensors is not None else sorted(self._files)

    def _open(self, path: str, base: str | None) -> None:
        if not os.path.isdir(path):
            raise CheckpointError(f"checkpoint {path}: no such folder.")
        files = set(os.listdir(path))
        if "config.json" in files and self.config is None:
            from transformers import AutoConfig

            self.config = AutoConfig.from_pretrained(path)
        if "adapter_config.json" in files:
            self._merge_adapter(path, base)
        elif "model.safetensors.index.json" in files or "model.safetensors" in files:
            from safetensors import safe_open

            shards = (sorted(set(json.load(open(os.path.join(path, "model.safetensors.index.json")))["weight_map"]
                                 .values())) if "model.safetensors.index.json" in files else ["model.safetensors"])
            for shard in shards:
                full = os.path.join(path, shard)
                with safe_open(full, framework="pt") as f:
                    for key in f.keys():
                        if f.get_slice(key).get_dtype() in ("F16", "BF16", "F32", "F64"):
                            self._files[key] = full
        elif "pytorch_model.bin" in files:
            state = torch.load(os.path.join(path, "pytorch_model.bin"), map_location="cpu", weights_only=True, mmap=True)
            self._tensors = {k: v for k, v in state.items() if v.is_floating_point()}
        else:
            raise CheckpointError(f"checkpoint {path}: no model.safetensors, model.safetensors.index.json, "
                                  f"pytorch_model.bin or adapter_config.json; it holds {sorted(files)[:10]}.")

    def _merge_adapter(self, path: str, base: str | None) -> None:
        from peft import PeftConfig, PeftModel
        from transformers import AutoModelForCausalLM

        adapter = PeftConfig.from_pretrained(path)
        base_path = base or adapter.base_model_name_or_path
        if not base_path:
            raise CheckpointError(f"adapter {path} names no base model; pass the base checkpoint (--base).")
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        merged = PeftModel.from_pretrained(model, path).merge_and_unload()
        self.config = self.config or merged.config
        self._tensors = {k: v for k, v in merged.state_dict().items() if v.is_floating_point()}

    def get(self, name: str) -> torch.Tensor:
        """Tensor ``name`` as float32 on the CPU (a new tensor when read from disk or converted)."""
        if self._tensors is not None:
            if name not in self._tensors:
                raise CheckpointError(f"{self.label} has no tensor {name!r}.")
            return self._tensors[name].detach().to(device="cpu", dtype=torch.float32)
        if name not in self._files:
            raise CheckpointError(f"{self.label} has no tensor {name!r}.")
        from safetensors import safe_open

        with safe_open(self._files[name], framework="pt") as f:
            return f.get_tensor(name).to(torch.float32)

    def shape(self, name: str) -> tuple[int, ...]:
        if self._tensors is not None:
            return tuple(self._tensors[name].shape)
        from safetensors import safe_open

        with safe_open(self._files[name], framework="pt") as f:
            return tuple(f.get_slice(name).get_shape())
