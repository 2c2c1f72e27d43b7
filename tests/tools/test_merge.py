"""mgs_tools.merge (mergekit's arithmetic) and recipes/merge/merge_experts.py against references written here on tiny
state dicts: task arithmetic, TIES (trim, elect sign, disjoint mean) element by element, DARE's properties, and a LoRA
expert folded into its base (W + alpha/r * B A) before merging."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mergekit")

import torch

from mgs_tools.merge import merge_experts

ROOT = Path(__file__).resolve().parents[2]


def _states(seed=0, experts=("math", "code", "chat")):
    g = torch.Generator().manual_seed(seed)
    base = {"a.weight": torch.randn(4, 5, generator=g, dtype=torch.float64),
            "b.bias": torch.randn(7, generator=g, dtype=torch.float64)}
    return base, {name: {k: v + torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in base.items()}
                  for name in experts}


def _ties_reference(base, experts, weights, density, scale):
    """TIES written out: per expert keep the int(density*n) largest |tau| entries; per entry elect the sign of the sum
    of the weighted trimmed deltas (>= 0: +); average the agreeing weighted deltas by their weights' sum."""
    out = {}
    for key, b in base.items():
        flat_b = b.reshape(-1).tolist()
        trimmed = {}
        for name, state in experts.items():
            tau = [x - y for x, y in zip(state[key].reshape(-1).tolist(), flat_b)]
            k = max(1, int(density * len(tau)))
            keep = set(sorted(range(len(tau)), key=lambda i: -abs(tau[i]))[:k])
            trimmed[name] = [t * weights[name] if i in keep else 0.0 for i, t in enumerate(tau)]
        merged = []
        for i, b_i in enumerate(flat_b):
            total = sum(trimmed[n][i] for n in experts)
            sign = 1.0 if total >= 0 else -1.0
            agree = [n for n in experts if trimmed[n][i] != 0 and (trimmed[n][i] > 0) == (sign > 0)]
            num = sum(trimmed[n][i] for n in agree)
            den = sum(weights[n] for n in agree) or 1.0
            merged.append(b_i + scale * num / den)
        out[key] = torch.tensor(merged, dtype=b.dtype).reshape(b.shape)
    return out


def test_task_arithmetic_equals_reference():
    base, experts = _states()
    weights = {"math": 0.5, "code": 0.3, "chat": 0.2}
    merged = merge_experts(base, experts, method="task_arithmetic", weights=weights, scale=1.5)
    for key in base:
        expected = base[key] + 1.5 * sum(w * (experts[n][key] - base[key]) for n, w in weights.items())
        torch.testing.assert_close(merged[key], expected)
        assert not torch.allclose(merged[key], base[key])


@pytest.mark.parametrize("density, scale", [(0.5, 1.0), (0.3, 0.7), (1.0, 1.0)])
def test_ties_equals_reference(density, scale):
    base, experts = _states(seed=1)
    weights = {"math": 1.0, "code": 0.6, "chat": 0.4}
    merged = merge_experts(base, experts, method="ties", weights=weights, density=density, scale=scale)
    expected = _ties_reference(base, experts, weights, density, scale)
    plain = merge_experts(base, experts, method="task_arithmetic", weights=weights, scale=scale)
    for key in base:
        torch.testing.assert_close(merged[key], expected[key])
        assert not torch.allclose(merged[key], plain[key]), "TIES equals task arithmetic here: the test could not fail"


def test_dare_properties():
    """One expert: DARE keeps about ``density`` of the task vector's entries, each unchanged up to one factor that
    restores the L1 norm; the seed fixes the mask; dare with density 1 is task arithmetic."""
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(400, dtype=torch.float64, generator=g)}
    expert = {"w": base["w"] + torch.randn(400, dtype=torch.float64, generator=g)}
    tau = expert["w"] - base["w"]
    merged = merge_experts(base, {"math": expert}, method="dare_linear", density=0.5, seed=3)
    delta = merged["w"] - base["w"]
    kept = delta != 0
    assert 0.4 < kept.float().mean() < 0.6
    factor = delta[kept] / tau[kept]
    torch.testing.assert_close(factor, torch.full_like(factor, float(factor[0])))
    assert float(delta.abs().sum()) == pytest.approx(float(tau.abs().sum()), rel=1e-6)  # masks in float32
    again = merge_experts(base, {"math": expert}, method="dare_linear", density=0.5, seed=3)
    other = merge_experts(base, {"math": expert}, method="dare_linear", density=0.5, seed=4)
    assert torch.equal(again["w"], merged["w"]) and not torch.equal(other["w"], merged["w"])
    full = merge_experts(base, {"math": expert}, method="dare_ties", density=1.0)
    torch.testing.assert_close(full["w"], expert["w"])


def test_bad_inputs():
    base, experts = _states()
    cases = [
        (dict(method="slerp"), "not one of"),
        (dict(method="ties", density=0.0), r"density must lie in \(0, 1\]"),
        (dict(method="task_arithmetic", density=0.5), "task_arithmetic does not"),
        (dict(weights={"math": 1.0}), "give one per expert"),
        (dict(scale=float("nan")), "scale must be finite"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            merge_experts(base, experts, **kwargs)
    with pytest.raises(ValueError, match="at least one expert"):
        merge_experts(base, {})
    bad = {**experts, "math": {"a.weight": experts["math"]["a.weight"]}}
    with pytest.raises(ValueError, match="other tensors than the base"):
        merge_experts(base, bad)
    bad = {**experts, "math": {**experts["math"], "b.bias": torch.zeros(3, dtype=torch.float64)}}
    with pytest.raises(ValueError, match="has shape"):
        merge_experts(base, bad)


def _script(*args):
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, str(ROOT / "recipes/merge/merge_experts.py"), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_script_on_state_dict_files(tmp_path):
    from safetensors.torch import load_file, save_file

    base, experts = _states(seed=2, experts=("math", "code"))
    base = {k: v.float() for k, v in base.items()}
    experts = {n: {k: v.float() for k, v in s.items()} for n, s in experts.items()}
    save_file(base, str(tmp_path / "base.safetensors"))
    for name, state in experts.items():
        save_file(state, str(tmp_path / f"{name}.safetensors"))
    result = _script("--base", str(tmp_path / "base.safetensors"), "--expert", f"math={tmp_path / 'math.safetensors'}",
                     "--expert", f"code={tmp_path / 'code.safetensors'}", "--method", "ties", "--density", "0.5",
                     "--weight", "math=1.0", "--weight", "code=0.5", "--scale", "0.8",
                     "--output", str(tmp_path / "merged.safetensors"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["method"] == "ties"
    merged = load_file(str(tmp_path / "merged.safetensors"))
    expected = _ties_reference({k: v.double() for k, v in base.items()},
                               {n: {k: v.double() for k, v in s.items()} for n, s in experts.items()},
                               {"math": 1.0, "code": 0.5}, 0.5, 0.8)
    for key in base:
        torch.testing.assert_close(merged[key], expected[key].float())
    bad = _script("--base", str(tmp_path / "base.safetensors"), "--expert", "math", "--output", "x.pt")
    assert bad.returncode != 0 and "NAME=VALUE" in bad.stderr


def test_script_folds_lora_experts_into_the_base(tmp_path):
    """A LoRA expert (peft adapter folder) is merged as W + alpha/r * B A (computed here from the adapter's tensors),
    and the output is a transformers model folder that loads."""
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from mgs_tools.toy import tiny_causal_lm

    def tiny_model(seed):
        return tiny_causal_lm(hidden=16, layers=2, heads=2, seed=seed)

    base_model = tiny_model(seed=0)
    base_model.save_pretrained(tmp_path / "base")
    reference = {k: v.detach().clone().double() for k, v in base_model.state_dict().items()}
    for i, name in enumerate(("math", "code")):
        torch.manual_seed(10 + i)
        peft_model = get_peft_model(tiny_model(seed=0), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.normal_()  # peft starts B at zero: give the adapter an update
        peft_model.save_pretrained(tmp_path / name)
    full = {}
    for name in ("math", "code"):
        adapter = load_file(str(tmp_path / name / "adapter_model.safetensors"))
        state = dict(reference)
        for key, a in adapter.items():
            if ".lora_A." not in key:
                continue
            b = adapter[key.replace("lora_A", "lora_B")]
            target = key.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
            state[target] = state[target] + (4 / 2) * (b.double() @ a.double())
        full[name] = state
    result = _script("--base", str(tmp_path / "base"), "--expert", f"math={tmp_path / 'math'}",
                     "--expert", f"code={tmp_path / 'code'}", "--method", "task_arithmetic", "--weight", "0.5",
                     "--output", str(tmp_path / "merged"))
    assert result.returncode == 0, result.stderr[-3000:]
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).state_dict()
    changed = 0
    for key, value in merged.items():
        expected = reference[key] + sum(0.5 * (full[n][key] - reference[key]) for n in full)
        torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6, msg=key)
        changed += not torch.allclose(expected, reference[key])
    assert changed == len(base_model.model.layers), "only q_proj of each layer should change"
