"""Expert merging (the MGS paper's "Model Merging" row and M2RL's comparison): one expert per domain, trained from the
same start, merged into one model by task arithmetic, TIES or DARE.

The arithmetic is mergekit's (``mergekit.merge_methods.merge_state_dicts``, the ``merge`` extra:
``pip install -e ".[merge]"``); this module checks the inputs, maps the hyper-parameters and loads and saves
checkpoints. With :math:`\\tau_i = \\theta_i - \\theta_0` each expert's task vector and :math:`w_i` its weight:

- ``task_arithmetic``: :math:`\\theta_0 + \\lambda \\sum_i w_i \\tau_i`;
- ``ties`` (Yadav et al. 2023): each :math:`\\tau_i` keeps its ``density`` fraction of largest-magnitude entries; per
  entry, the elected sign is that of :math:`\\sum_i w_i \\hat\\tau_i`; the merged delta is the sum of the agreeing
  :math:`w_i \\hat\\tau_i` divided by the sum of their :math:`w_i` (``normalize``), times :math:`\\lambda`;
- ``dare_ties`` / ``dare_linear`` (Yu et al. 2023): each :math:`\\tau_i` keeps a random ``density`` fraction of its
  entries, rescaled to its original L1 norm (mergekit's ``rescale``), then TIES's sign election or a plain weighted
  sum. The random masks come from torch's global generator, seeded by ``seed``.

LoRA experts are folded into the base weights first (peft's ``merge_and_unload``: :math:`W + \\frac{\\alpha}{r} BA`,
exact), so every method merges the full update; merging the A and B factors separately (peft's
``add_weighted_adapter`` with ``ties``) would merge an approximation of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch

METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear")
"""The merge methods offered (mergekit's names)."""

_SPARSE = ("ties", "dare_ties", "dare_linear")


def _mergekit():
    try:
        from mergekit.merge_methods import merge_state_dicts
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("expert merging needs mergekit: pip install 'mgs-rl[merge]' (mergekit==0.1.5)") from error
    return merge_state_dicts


def merge_experts(base: Mapping[str, torch.Tensor], experts: Mapping[str, Mapping[str, torch.Tensor]], *,
                  method: str = "ties", weights: Mapping[str, float] | float = 1.0, density: float = 1.0,
                  scale: float = 1.0, normalize: bool | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Merge expert state dicts into ``base`` (all with the same keys and shapes).

    Args:
        base: the common starting point's state dict.
        experts: expert name → state dict.
        method: one of :data:`METHODS`.
        weights: each expert's weight :math:`w_i` (one number for all, or one per expert name).
        density: the fraction of each task vector's entries kept, in (0, 1] (``ties`` and ``dare_*``; ``1`` keeps all).
        scale: :math:`\\lambda`, the factor on the merged task vector.
        normalize: divide by the sum of the weights (per entry, of the agreeing ones for TIES); ``None`` is mergekit's
            default (on for ``ties`` only).
        seed: seeds torch's global generator for DARE's random masks.

    Returns:
        the merged state dict (non-floating tensors are copied from ``base`` when every input agrees).

    Raises:
        ValueError: an unknown method, no expert, a density outside (0, 1], a non-finite scale or weight, weights
            naming other experts, or state dicts whose keys or shapes differ.
    """
    if method not in METHODS:
        raise ValueError(f"merge method {method!r} is not one of {list(METHODS)}.")
    if not experts:
        raise ValueError("merging needs at least one expert.")
    if "base" in experts:
        raise ValueError("an expert may not be named 'base' (the name of the starting point).")
    if not 0 < density <= 1:
        raise ValueError(f"density must lie in (0, 1]; got {density}.")
    if density < 1 and method == "task_arithmetic":
        raise ValueError(f"density={density} drops entries, which task_arithmetic does not do: use ties or dare_ties.")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite; got {scale}.")
    if isinstance(weights, Mapping):
        if set(weights) != set(experts):
            raise ValueError(f"weights name {sorted(weights)}, the experts are {sorted(experts)}: give one per expert.")
        per_expert = {name: float(weights[name]) for name in experts}
    else:
        per_expert = {name: float(weights) for name in experts}
    if not all(math.isfinite(w) for w in per_expert.values()):
        raise ValueError(f"weights must be finite; got {per_expert}.")
    for name, state in experts.items():
        if set(state) != set(base):
            missing, extra = sorted(set(base) - set(state)), sorted(set(state) - set(base))
            raise ValueError(f"expert {name!r} has other tensors than the base: missing {missing[:5]}, extra {extra[:5]}.")
        for key, tensor in state.items():
            if tensor.shape != base[key].shape:
                raise ValueError(f"expert {name!r}: {key} has shape {tuple(tensor.shape)}, the base "
                                 f"{tuple(base[key].shape)}.")
    parameters: dict = {"weight": per_expert, "lambda": float(scale)}
    if method in _SPARSE:
        parameters["density"] = {name: float(density) for name in experts}
    if normalize is not None:
        parameters["normalize"] = bool(normalize)
    torch.manual_seed(seed)
    with torch.no_grad():
        merged = _mergekit()({"base": dict(base), **{n: dict(s) for n, s in experts.items()}}, method,
                             parameters=parameters, base="base")
    return {key: merged[key] for key in base}


# ---------------------------------------------------------------------- checkpoints
def load_state_dict(path: str | Path, base_model: str | Path | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` / ``.pt`` / ``.bin`` file, a transformers model folder, or a peft LoRA
    adapter folder (``adapter_config.json``; folded into ``base_model``, a transformers folder)."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}")
    from transformers import AutoModelForCausalLM

    if (path / "adapter_config.json").exists():
        if base_model is None or not Path(base_model).is_dir():
            raise ValueError(f"{path} is a LoRA adapter: it is folded into the base model, which must be a "
                             f"transformers model folder (got {base_model}).")
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_model)), str(path))
        return {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}
    if not (path / "config.json").exists():
        raise ValueError(f"{path} is neither a transformers model folder (config.json) nor a LoRA adapter "
                         "(adapter_config.json).")
    return {k: v.detach().clone() for k, v in AutoModelForCausalLM.from_pretrained(str(path)).state_dict().items()}


def save_state_dict(state: Mapping[str, torch.Tensor], output: str | Path, base_model: str | Path | None = None) -> None:
    """Write ``state``: as a transformers model folder (the base model's config, tokenizer files if any) when the base
    is one, else to a ``.safetensors`` or ``.pt`` file named ``output``."""
    output = Path(output)
    if base_model is not None and Path(base_model).is_dir():
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(base_model))
        model.load_state_dict(dict(state), strict=True)
        model.save_pretrained(str(output))
        try:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(str(base_model)).save_pretrained(str(output))
        except Exception:  # noqa: BLE001 - a base without tokenizer files: the weights are what matters
            pass
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(output))
    else:
        torch.save(dict(state), output)
