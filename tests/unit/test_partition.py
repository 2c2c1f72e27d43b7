"""Parameter → group mapping for every granularity, module kinds, LoRA and tied names."""

from __future__ import annotations

import re

import pytest
import torch
from _reference import TinyLlama

from mgs._partition import Partition, group_key, kind_of, module_of

LORA_Q = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
LORA_QB = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"
LORA_BASE = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
LORA_EMB = "base_model.model.model.embed_tokens.lora_embedding_A.default"


@pytest.mark.parametrize(
    "name, kind",
    [
        ("model.embed_tokens.weight", "embedding"),
        ("lm_head.weight", "embedding"),
        ("model.layers.0.self_attn.q_proj.bias", "attention"),
        ("model.layers.0.self_attn.q_norm.weight", "norm"),
        ("model.layers.0.mlp.down_proj.weight", "mlp"),
        ("model.layers.0.input_layernorm.weight", "norm"),
        ("model.norm.weight", "norm"),
        ("transformer.h.3.attn.c_attn.weight", "attention"),
        ("transformer.h.3.mlp.c_proj.weight", "mlp"),
        ("transformer.h.3.ln_1.weight", "norm"),
        ("transformer.ln_f.bias", "norm"),
        ("transformer.wte.weight", "embedding"),
        ("model.layers.1.block_sparse_moe.experts.0.w1.weight", "mlp"),
        (LORA_Q, "attention"),
        ("score.weight", "other"),
    ],
)
def test_kind_of(name, kind):
    assert kind_of(name) == kind


def test_lora_names_map_to_their_base_module():
    base = "base_model.model.model.layers.0.self_attn.q_proj"
    assert module_of(LORA_Q) == module_of(LORA_QB) == module_of(LORA_BASE) == base
    assert module_of(LORA_EMB) == "base_model.model.model.embed_tokens"
    assert group_key(LORA_Q, "module") == group_key(LORA_QB, "module") == base
    assert group_key(LORA_Q, "block") == "base_model.model.model.layers.0.attention"
    assert group_key(LORA_Q, "layer") == "base_model.model.model.layers.0"
    assert group_key(LORA_Q, "parameter") == LORA_Q


def test_granularities_on_a_llama_shaped_model():
    model = TinyLlama()
    names = [n for n, _ in model.named_parameters()]
    by = {g: Partition.build(model, g) for g in ("parameter", "module", "block", "layer")}
    assert by["parameter"].group_names == tuple(names)
    module_groups = by["module"].groups()
    assert module_groups["model.layers.0.self_attn.q_proj"] == [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.q_proj.bias",
    ]
    block = by["block"].groups()
    assert set(block) == {
        "model.embed_tokens",
        *(f"model.layers.{i}.{part}" for i in range(2) for part in ("attention", "mlp", "other")),
        "model.norm",
        "lm_head",
    }
    assert block["model.layers.1.other"] == [
        "model.layers.1.input_layernorm.weight",
        "model.layers.1.input_layernorm.bias",
        "model.layers.1.post_attention_layernorm.weight",
        "model.layers.1.post_attention_layernorm.bias",
    ]
    assert len(block["model.layers.0.attention"]) == 7  # q, k, v (+ biases), o
    assert by["block"].group_kinds[by["block"].group_names.index("model.layers.0.other")] == "norm"
    layer = by["layer"].groups()
    assert set(layer) == {"model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "lm_head"}
    # every granularity covers every parameter exactly once
    for partition in by.values():
        assert sorted(sum(partition.groups().values(), [])) == sorted(names)


def test_regex_and_callable_granularity():
    model = TinyLlama()
    regex = Partition.build(model, re.compile(r"layers\.\d+"))
    assert regex.groups()["layers.0"][0] == "model.layers.0.input_layernorm.weight"
    assert "lm_head.weight" in regex.groups()  # no match: its own group
    by_leaf = Partition.build(model, lambda n: n.rsplit(".", 1)[-1])
    assert set(by_leaf.groups()) == {"weight", "bias"}
    with pytest.raises(TypeError, match="must return a str"):
        Partition.build(model, lambda n: 3)


def test_tied_parameters_keep_all_names():
    model = TinyLlama(tie=True)
    partition = Partition.build(model, "parameter")
    tied = [names for names in partition.names if len(names) > 1]
    assert tied == [("model.embed_tokens.weight", "lm_head.weight")]


def test_bad_inputs():
    with pytest.raises(TypeError, match="pairs"):
        Partition.build([torch.zeros(2)], "parameter")
    with pytest.raises(TypeError, match="not a tensor"):
        Partition.build([("w", 3.0)], "parameter")
    leaf = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="not a leaf"):
        Partition.build([("w", leaf * 2)], "parameter")
