"""Sub-tensor groups (attention heads, MoE experts, user slicing) and PCGrad's conflict threshold, against a plain
float64 reference written here: it slices the tensors itself (loops over heads, experts and domains), projects
vectors as the paper states PCGrad, and shares nothing with mgs but the projection orders (part of the
specification: ``pcgrad_orders`` with ``step_generator(seed, step)``, indexed by group position).

The tiny models are built from transformers configs with shapes chosen so that head and expert slices do not align
with the buffers' 512-element chunks (a chunk holds two heads; ``o_proj``'s head columns are 20 wide), so the
layout's boundary handling is what is tested.
"""

from __future__ import annotations

import re

import pytest
import torch
from pcgrad_reference import reference_pcgrad

import mgs
from mgs.methods import pcgrad_orders, step_generator

transformers = pytest.importorskip("transformers")

DOMAINS = ["math", "code", "chat", "if", "write"]
SEED = 5
TOL = 1e-5


# ---------------------------------------------------------------------- models
def dense_qwen2(hidden: int = 80, heads: int = 4, kv_heads: int = 2, layers: int = 2):
    config = transformers.Qwen2Config(vocab_size=24, hidden_size=hidden, intermediate_size=36, num_hidden_layers=layers,
                                      num_attention_heads=heads, num_key_value_heads=kv_heads)
    torch.manual_seed(0)
    return transformers.Qwen2ForCausalLM(config)


def moe_qwen2(experts: int = 4):
    config = transformers.Qwen2MoeConfig(
        vocab_size=24, hidden_size=16, intermediate_size=24, moe_intermediate_size=12,
        shared_expert_intermediate_size=8, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        num_experts=experts, num_experts_per_tok=2)
    torch.manual_seed(0)
    return transformers.Qwen2MoeForCausalLM(config)


# ---------------------------------------------------------------------- the reference's own grouping
_ATTN = re.compile(r"^(.*\.self_attn\.(q|k|v|o)_proj)\.(weight|bias)$")
_EXPERTS = re.compile(r"^(.*\.mlp\.experts)\.(gate_up_proj|down_proj)$")


def reference_groups(model, granularity: str) -> dict[str, list[tuple[str, int | None, int, int]]]:
    """Group key → slices ``(name, dim, start, stop)`` under ``granularity``, from the model's config alone."""
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    groups: dict[str, list] = {}
    for name, p in model.named_parameters():
        attn, experts = _ATTN.match(name), _EXPERTS.match(name)
        if "head" in granularity and attn:
            module, which, kind = attn.groups()
            if which == "o" and kind == "bias":
                groups.setdefault(module, []).append((name, None, 0, p.shape[0]))
                continue
            dim = 1 if which == "o" else 0
            for h in range(heads if which in "qo" else kv):
                groups.setdefault(f"{module}:head{h}", []).append((name, dim, h * head_dim, (h + 1) * head_dim))
        elif "expert" in granularity and experts:
            for e in range(p.shape[0]):
                groups.setdefault(f"{experts.group(1)}:expert{e}", []).append((name, 0, e, e + 1))
        else:
            groups.setdefault(name.rpartition(".")[0], []).append((name, None, 0, p.shape[0]))
    return groups


def piece(t: torch.Tensor, dim: int | None, start: int, stop: int) -> torch.Tensor:
    return t if dim is None else t.narrow(dim, start, stop - start)


def reference_result(grads, groups, order_of, k, seed, step, threshold=0.0, global_=False):
    """Expected p.grad (float64): per group, the K domains' slices concatenated, PCGrad'ed, put back."""
    out = {n: torch.zeros_like(g[0]) for n, g in grads.items()}
    group_lists = [sum(groups.values(), [])] if global_ else list(groups.values())
    keys = ["all"] if global_ else list(groups)
    orders = pcgrad_orders(len(order_of), k, step_generator(seed, step)) if not global_ else \
        pcgrad_orders(1, k, step_generator(seed, step))
    margin = float("inf")
    for key, slices in zip(keys, group_lists):
        order = orders[0 if global_ else order_of[key]]
        vectors = [torch.cat([piece(grads[n][d], *s).flatten() for n, *s in slices]) for d in range(k)]
        if threshold:
            combined, m = threshold_pcgrad(vectors, order, threshold)
        else:
            combined, m = reference_pcgrad(vectors, order)
        margin = min(margin, m)
        offset = 0
        for n, *s in slices:
            target = piece(out[n], *s)
            target.copy_(combined[offset : offset + target.numel()].view(target.shape))
            offset += target.numel()
    return out, margin


def threshold_pcgrad(vectors, order, tau):
    """PCGrad projecting g_i' off the original g_j only when cos(g_i', g_j) < -tau; also the smallest distance of a
    tested cosine from -tau."""
    total, margin = torch.zeros_like(vectors[0]), float("inf")
    for i, gi in enumerate(vectors):
        g = gi.clone()
        for j in order[i].tolist():
            if j == i:
                continue
            gj = vectors[j]
            cos = float(g @ gj / (g.norm() * gj.norm()))
            margin = min(margin, abs(cos + tau))
            if cos < -tau:
                g = g - float(g @ gj) / float(gj @ gj) * gj
        total += g
    return total, margin


def draw_grads(model, groups, k, seed, min_abs_cos=1e-3, spread=False):
    """K float64 gradients per parameter, built per reference group (a shared direction with random signs plus
    noise), redrawn until every group's pairwise cosines are at least ``min_abs_cos`` from zero. ``spread``: a
    noise level drawn per group, so cosines range from about ±0.8 to ±0.05 (some above a threshold, some below)."""
    params = dict(model.named_parameters())
    for attempt in range(50):
        gen = torch.Generator().manual_seed(seed * 100 + attempt)
        grads = {n: [torch.zeros(p.shape, dtype=torch.float64) for _ in range(k)] for n, p in params.items()}
        for slices in groups.values():
            signs = torch.randint(0, 2, (k,), generator=gen) * 2 - 1
            scales = torch.rand(k, generator=gen, dtype=torch.float64) * 3 + 0.1
            noise_level = 0.5 + 4 * float(torch.rand((), generator=gen)) if spread else 0.8
            for n, *s in slices:
                shape = piece(grads[n][0], *s).shape
                base = torch.randn(shape, generator=gen, dtype=torch.float64)
                for d in range(k):
                    noise = torch.randn(shape, generator=gen, dtype=torch.float64)
                    piece(grads[n][d], *s).copy_(scales[d] * (signs[d] * base + noise_level * noise))
        ok = True
        for slices in groups.values():
            flat = [torch.cat([piece(grads[n][d], *s).flatten() for n, *s in slices]) for d in range(k)]
            for i in range(k):
                for j in range(i + 1, k):
                    ok &= abs(float(flat[i] @ flat[j] / (flat[i].norm() * flat[j].norm()))) >= min_abs_cos
        if ok:
            return grads
    raise AssertionError("could not draw gradients with cosines away from zero")


def feed(surgery, model, grads, domains):
    params = dict(model.named_parameters())
    for d, domain in enumerate(domains):
        with surgery.domain(domain):
            sum((p * grads[n][d].to(p.dtype)).sum() for n, p in params.items()).backward()


def max_error(model, expected) -> float:
    worst = 0.0
    for n, p in model.named_parameters():
        worst = max(worst, float((p.grad.double() - expected[n]).norm() / expected[n].norm().clamp_min(1e-300)))
    return worst


def as_tuples(slices):
    return sorted((n, d, a, b) for n, d, a, b in slices)


# ---------------------------------------------------------------------- exactness
CASES = [("dense", "head"), ("moe", "expert"), ("moe", "head+expert"), ("moe", "head")]


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("kind,granularity", CASES)
def test_sub_tensor_surgery_equals_the_float64_reference(kind, granularity, k):
    model = dense_qwen2() if kind == "dense" else moe_qwen2()
    groups = reference_groups(model, granularity)
    surgery = mgs.GradientSurgery(model, granularity=granularity, domains=DOMAINS[:k], seed=SEED)
    got = surgery.group_slices()
    assert set(got) == set(groups), set(got) ^ set(groups)
    for key, slices in groups.items():
        assert as_tuples(got[key]) == as_tuples(slices), key
    assert set(surgery.groups()) == set(groups)
    order_of = {key: i for i, key in enumerate(got)}
    for step in range(2):
        grads = draw_grads(model, groups, k, seed=10 * k + step)
        feed(surgery, model, grads, DOMAINS[:k])
        stats = surgery.apply(step=step)
        expected, margin = reference_result(grads, groups, order_of, k, SEED, step)
        assert margin > 1e-4, margin  # far from a branch point: float32 cannot flip a projection
        assert max_error(model, expected) < TOL
        assert 0 < float(stats["projection_frac"]) <= 1
        model.zero_grad(set_to_none=True)


def test_head_groups_count_as_the_issue_states_for_a_qwen2_7b_layer():
    config = transformers.Qwen2Config(vocab_size=8, hidden_size=3584, intermediate_size=8, num_hidden_layers=1,
                                      num_attention_heads=28, num_key_value_heads=4)
    with torch.device("meta"):
        model = transformers.Qwen2ForCausalLM(config)
    partition = mgs._partition.Partition.build(model, "head")
    attention = [g for g in partition.group_names if ":head" in g]
    by_proj = {p: sum(f".{p}:" in g for g in attention) for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    assert by_proj == {"q_proj": 28, "k_proj": 4, "v_proj": 4, "o_proj": 28}


@pytest.mark.parametrize("global_", [False, True])
@pytest.mark.parametrize("tau", [0.05, 0.3])
def test_conflict_threshold_equals_the_reference_loop(tau, global_):
    model = dense_qwen2(layers=1)
    k = 3
    groups = reference_groups(model, "head")
    surgery = mgs.GradientSurgery(model, surgery="global" if global_ else "modular", granularity="head",
                                  domains=DOMAINS[:k], seed=SEED, conflict_threshold=tau)
    order_of = {key: i for i, key in enumerate(surgery.group_slices())}
    for attempt in range(20):  # draw until no tested cosine is within 1e-3 of -tau
        grads = draw_grads(model, groups, k, seed=700 + attempt, spread=True)
        expected, margin = reference_result(grads, groups, order_of, k, SEED, 0, threshold=tau, global_=global_)
        if margin > 1e-3:
            break
    else:
        raise AssertionError("no draw away from the threshold")
    plain, _ = reference_result(grads, groups, order_of, k, SEED, 0, global_=global_)
    assert any(float((expected[n] - plain[n]).norm()) > 1e-6 for n in expected)  # τ changed some decision
    feed(surgery, model, grads, DOMAINS[:k])
    stats = surgery.apply(step=0)
    assert max_error(model, expected) < TOL
    assert float(stats["projection_frac"]) < float(stats["conflict_frac"]) * 2  # fewer projections than conflicts


def test_threshold_zero_is_pcgrad_bit_for_bit():
    model = dense_qwen2(layers=1)
    groups = reference_groups(model, "head")
    grads = draw_grads(model, groups, 3, seed=3)
    results = []
    for tau in (0.0, None):
        surgery = mgs.GradientSurgery(model, granularity="head", domains=DOMAINS[:3], seed=SEED,
                                      **({} if tau is None else {"conflict_threshold": tau}))
        feed(surgery, model, grads, DOMAINS[:3])
        surgery.apply(step=0)
        results.append({n: p.grad.clone() for n, p in model.named_parameters()})
        model.zero_grad(set_to_none=True)
    assert all(torch.equal(results[0][n], results[1][n]) for n in results[0])


def test_a_users_slicing_composes_with_the_granularity():
    model = dense_qwen2(layers=1)

    def pairs_of_rows(name, shape):  # the MLP's gate rows in two halves; everything else as the granularity says
        if name.endswith("mlp.gate_proj.weight"):
            return mgs.TensorSlices(0, shape[0] // 2, (f"{name}:top", f"{name}:bottom"))
        return None

    surgery = mgs.GradientSurgery(model, granularity="head", domains=DOMAINS[:3], seed=SEED, slicing=pairs_of_rows)
    slices = surgery.group_slices()
    gate = "model.layers.0.mlp.gate_proj.weight"
    assert slices[f"{gate}:top"] == [(gate, 0, 0, 18)] and slices[f"{gate}:bottom"] == [(gate, 0, 18, 36)]
    groups = reference_groups(model, "head")
    del groups["model.layers.0.mlp.gate_proj"]
    groups[f"{gate}:top"], groups[f"{gate}:bottom"] = [(gate, 0, 0, 18)], [(gate, 0, 18, 36)]
    grads = draw_grads(model, groups, 3, seed=1)
    feed(surgery, model, grads, DOMAINS[:3])
    surgery.apply(step=0)
    expected, _ = reference_result(grads, groups, {key: i for i, key in enumerate(slices)}, 3, SEED, 0)
    assert max_error(model, expected) < TOL


def test_lora_factors_follow_the_heads():
    peft = pytest.importorskip("peft")
    model = dense_qwen2(layers=1)
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "k_proj", "o_proj"]))
    slices = mgs.GradientSurgery(model, granularity="head", domains=DOMAINS[:2]).group_slices()
    prefix = "base_model.model.model.layers.0.self_attn"
    q_b = f"{prefix}.q_proj.lora_B.default.weight"
    assert slices[f"{prefix}.q_proj:head1"] == [(q_b, 0, 20, 40)]
    assert slices[f"{prefix}.k_proj:head1"] == [(f"{prefix}.k_proj.lora_B.default.weight", 0, 20, 40)]
    assert slices[f"{prefix}.o_proj:head3"] == [(f"{prefix}.o_proj.lora_A.default.weight", 1, 60, 80)]
    assert [s[0] for s in slices[f"{prefix}.q_proj"]] == [f"{prefix}.q_proj.lora_A.default.weight"]
    assert [s[0] for s in slices[f"{prefix}.o_proj"]] == [f"{prefix}.o_proj.lora_B.default.weight"]


def test_bf16_buffers_match_the_reference_within_bf16_rounding():
    model = dense_qwen2(layers=1).to(torch.bfloat16)
    groups = reference_groups(model, "head")
    surgery = mgs.GradientSurgery(model, granularity="head", domains=DOMAINS[:3], seed=SEED)
    grads = draw_grads(model, groups, 3, seed=4, min_abs_cos=0.05)
    grads = {n: [g.to(torch.bfloat16).double() for g in gs] for n, gs in grads.items()}  # what bf16 buffers hold
    feed(surgery, model, grads, DOMAINS[:3])
    surgery.apply(step=0)
    expected, margin = reference_result(grads, groups, {key: i for i, key in enumerate(surgery.group_slices())},
                                        3, SEED, 0)
    assert margin > 1e-2
    assert max_error(model, expected) < 2e-2  # one bf16 rounding of the result (float32 accumulation)


# ---------------------------------------------------------------------- errors
def test_a_head_layout_that_does_not_divide_names_the_module():
    model = dense_qwen2(layers=1)
    with pytest.raises(ValueError, match=r"q_proj.weight.*shape \(80, 80\).*7 heads of 20"):
        mgs.GradientSurgery(model, granularity="head", heads=mgs.AttentionHeads(num_heads=7, head_dim=20,
                                                                                 num_kv_heads=7))


def test_head_granularity_without_a_config_needs_the_layout():
    model = dense_qwen2(layers=1)
    named = list(model.named_parameters())
    with pytest.raises(ValueError, match="needs the attention head layout.*AttentionHeads"):
        mgs.GradientSurgery(named, granularity="head")
    surgery = mgs.GradientSurgery(named, granularity="head", heads=mgs.AttentionHeads(4, 20, 2))
    assert len([g for g in surgery.groups() if ":head" in g]) == 4 + 2 + 2 + 4


def test_fused_layouts_are_split_or_refused_by_name():
    phi3 = transformers.Phi3ForCausalLM(transformers.Phi3Config(
        vocab_size=16, hidden_size=32, intermediate_size=16, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    slices = mgs.GradientSurgery(phi3, granularity="head").group_slices()
    qkv = "model.layers.0.self_attn.qkv_proj"
    assert slices[f"{qkv}:q_head3"] == [(f"{qkv}.weight", 0, 24, 32)]
    assert slices[f"{qkv}:k_head0"] == [(f"{qkv}.weight", 0, 32, 40)]
    assert slices[f"{qkv}:v_head1"] == [(f"{qkv}.weight", 0, 56, 64)]
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=16))
    with pytest.raises(ValueError, match=r"fused attention layout of 'transformer.h.0.attn.c_attn'"):
        mgs.GradientSurgery(gpt2, granularity="head")


def test_granularities_that_find_nothing_to_split_say_so():
    with pytest.raises(ValueError, match="granularity='head' found no attention projection"):
        mgs.GradientSurgery(torch.nn.Linear(3, 3), granularity="head")
    with pytest.raises(ValueError, match="granularity='expert' found no fused experts module"):
        mgs.GradientSurgery(dense_qwen2(layers=1), granularity="expert")


def test_bad_slicing_and_thresholds_are_refused():
    model = dense_qwen2(layers=1)
    with pytest.raises(ValueError, match=r"3 pieces of 5 along dim 0 cover 15 indices.*\(36, 80\)"):
        mgs.GradientSurgery(model, slicing=lambda n, s: mgs.TensorSlices(0, 5, ("a", "b", "c"))
                            if n.endswith("gate_proj.weight") else None)
    with pytest.raises(TypeError, match="must return an mgs.TensorSlices or None"):
        mgs.GradientSurgery(model, slicing=lambda n, s: (0, 5))
    for bad in (-0.1, 1.0, "0.2", True):
        with pytest.raises(ValueError, match="conflict_threshold"):
            mgs.GradientSurgery(model, conflict_threshold=bad)
    with pytest.raises(ValueError, match="conflict_threshold=0.2 sets PCGrad's conflict test.*'none'"):
        mgs.GradientSurgery(model, surgery="none", conflict_threshold=0.2)
    with pytest.raises(ValueError, match="method='upgrad'"):
        mgs.SurgeryOptions(method="upgrad", conflict_threshold=0.2)


def test_the_checkpoint_and_rank_fingerprints_cover_the_slices():
    model = dense_qwen2(layers=1)
    head = mgs.GradientSurgery(model, granularity="head", domains=DOMAINS[:2])
    state = head.state_dict()
    module = mgs.GradientSurgery(model, granularity="module", domains=DOMAINS[:2])
    with pytest.raises(ValueError, match="parameter groups"):
        module.load_state_dict(state)
    other_heads = mgs.GradientSurgery(model, granularity="head", domains=DOMAINS[:2],
                                      heads=mgs.AttentionHeads(num_heads=8, head_dim=10, num_kv_heads=4))
    with pytest.raises(ValueError, match="parameter groups"):
        other_heads.load_state_dict(state)
    assert head._layout() != other_heads._layout()
    mgs.GradientSurgery(model, granularity="head", domains=DOMAINS[:2]).load_state_dict(state)


# ---------------------------------------------------------------------- no host sync
def _sliced_case(device: str = "cpu"):
    model = dense_qwen2(layers=1).to(device)
    groups = reference_groups(model, "head")
    surgery = mgs.GradientSurgery(model, granularity="head", domains=DOMAINS[:3], seed=SEED, conflict_threshold=0.1)
    grads = draw_grads(model.cpu(), groups, 3, seed=2)
    model.to(device)
    feed(surgery, model, {n: [g.to(device) for g in gs] for n, gs in grads.items()}, DOMAINS[:3])
    expected, _ = reference_result(grads, groups, {key: i for i, key in enumerate(surgery.group_slices())}, 3, SEED,
                                   0, threshold=0.1)
    return model, surgery, expected


def test_sub_tensor_apply_is_sync_free(monkeypatch):
    """Spans of units and the threshold add no host sync to apply() (the CUDA variant below checks it on a GPU)."""
    model, surgery, expected = _sliced_case()

    def forbidden(*_a, **_k):
        raise AssertionError("host sync inside apply()")

    for attr in ("item", "tolist", "__bool__", "nonzero", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, attr, forbidden)
    surgery.apply(step=0)
    monkeypatch.undo()
    assert max_error(model, expected) < TOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sub_tensor_apply_is_sync_free_on_cuda():
    model, surgery, expected = _sliced_case("cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        surgery.apply(step=0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    model.cpu()
    assert max_error(model, expected) < TOL


def test_a_mamba_in_proj_is_not_refused_as_fused_attention():
    """Hybrid models (Jamba, Bamba, Zamba...) have a Mamba mixer's ``in_proj`` next to q/k/v/o attention: it is no
    attention projection, so granularity='head' splits the attention's heads and leaves ``in_proj`` to "module"."""
    config = transformers.JambaConfig(
        vocab_size=32, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_experts=2, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
        expert_layer_offset=1, mamba_d_state=4, mamba_expand=2, mamba_dt_rank=4, use_mamba_kernels=False)
    model = transformers.JambaForCausalLM(config)
    slices = mgs.GradientSurgery(model, granularity="head+expert").group_slices()
    assert slices["model.layers.0.mamba.in_proj"] == [("model.layers.0.mamba.in_proj.weight", None, 0, 128)]
    assert slices["model.layers.1.self_attn.q_proj:head3"] == [("model.layers.1.self_attn.q_proj.weight", 0, 24, 32)]
    assert "model.layers.1.feed_forward.experts:expert1" in slices


def test_torch_multihead_attention_is_refused_as_a_fused_layout():
    """nn.MultiheadAttention packs q, k and v into ``in_proj_weight``: refused by name, not left unsplit."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = torch.nn.Linear(8, 8)
            self.pool = torch.nn.MultiheadAttention(8, 2)

    with pytest.raises(ValueError, match=r"fused attention layout of 'pool' \(in_proj_weight\)"):
        mgs.GradientSurgery(Net(), granularity="head", heads=mgs.AttentionHeads(2, 4))


def test_a_single_string_is_not_taken_for_one_key_per_character():
    """keys="attn" is one key, not the pieces 'a', 't', 't', 'n': refused, like any keys that are not strings."""
    with pytest.raises(TypeError, match="TensorSlices.keys"):
        mgs.TensorSlices(0, 2, "qk")
    assert mgs.TensorSlices(0, 2, ["q", "k"]).keys == ("q", "k")


def test_many_boundary_chunks_make_one_span_and_stay_exact():
    """40 pieces of 1,200 elements (a boundary chunk every 2.3 chunks, none aligned): one span of units for the
    tensor instead of one per boundary, and the result still equals the float64 reference."""
    weight = torch.nn.Parameter(torch.zeros(40 * 200, 6))
    other = torch.nn.Parameter(torch.zeros(600))
    named = [("experts.bias", weight), ("other.weight", other)]
    keys = tuple(f"piece{p}" for p in range(40))
    surgery = mgs.GradientSurgery(named, domains=DOMAINS[:3], seed=SEED,
                                  slicing=lambda n, s: mgs.TensorSlices(0, 200, keys) if n == "experts.bias" else None)
    spans = [span for b in surgery._buffers.buckets for span in b.spans]
    assert len(spans) <= 3 and any(span.unit < 512 for span in spans), [(s.start, s.stop, s.unit) for s in spans]
    groups = {k: [("experts.bias", 0, 200 * p, 200 * p + 200)] for p, k in enumerate(keys)}
    groups["other.weight"] = [("other.weight", None, 0, 600)]

    class Named(torch.nn.Module):  # draw_grads and feed read named_parameters()
        def named_parameters(self, *a, **k):
            return iter(named)

    model = Named()
    grads = draw_grads(model, groups, 3, seed=8)
    feed(surgery, model, grads, DOMAINS[:3])
    surgery.apply(step=0)
    expected, margin = reference_result(grads, groups, {k: i for i, k in enumerate(surgery.group_slices())}, 3, SEED, 0)
    assert margin > 1e-4
    assert max_error(model, expected) < TOL
