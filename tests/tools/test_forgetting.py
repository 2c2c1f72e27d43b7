"""mgs_tools.forgetting (mgs-forgetting): units, sparsity, edit and route overlap against slow references written
here; the damage decomposition against finite differences; the rollback's slices; the command line on the toy."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM, Qwen2Config  # noqa: E402

from mgs_tools import toy  # noqa: E402
from mgs_tools.forgetting import Checkpoint, rolled_back_state, select_units, unit_groups  # noqa: E402
from mgs_tools.forgetting import _analyze as A  # noqa: E402
from mgs_tools.forgetting import _measure as M  # noqa: E402
from mgs_tools.forgetting._units import chance_jaccard, jaccard, top_units  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _gqa_model(seed: int = 0):
    """A Qwen2 with grouped-query attention (4 query heads, 2 key-value heads, head_dim 4) and q/k/v biases."""
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(toy.CHARS) + 3, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0,
                         eos_token_id=1, bos_token_id=None, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


def _phase_states(model, n: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """``n`` successive states: each changes a random ~30 % of the entries by about 1e-3 (the rest exactly)."""
    g = torch.Generator().manual_seed(seed)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = [state]
    for _ in range(n):
        nxt = {}
        for k, v in out[-1].items():
            mask = torch.rand(v.shape, generator=g) < 0.3
            nxt[k] = v + mask * 1e-3 * torch.randn(v.shape, generator=g)
        out.append(nxt)
    return out


# -- units ------------------------------------------------------------------------------------------------------------


def _slow_unit_sq(delta: dict, layer: int, kind: str, unit: int, hd: int = 4) -> float:
    """The squared change of one unit, written out index by index from the unit definitions."""
    p = f"model.layers.{layer}."
    total = 0.0
    if kind == "mlp":
        for name in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
            total += sum(x * x for x in delta[p + name][unit].tolist())
        total += sum(delta[p + "mlp.down_proj.weight"][r][unit].item() ** 2 for r in range(16))
    elif kind == "q_head":
        for r in range(unit * hd, (unit + 1) * hd):
            total += sum(x * x for x in delta[p + "self_attn.q_proj.weight"][r].tolist())
            total += delta[p + "self_attn.q_proj.bias"][r].item() ** 2
            total += sum(delta[p + "self_attn.o_proj.weight"][c][r].item() ** 2 for c in range(16))
    else:
        for proj in ("k_proj", "v_proj"):
            for r in range(unit * hd, (unit + 1) * hd):
                total += sum(x * x for x in delta[p + f"self_attn.{proj}.weight"][r].tolist())
                total += delta[p + f"self_attn.{proj}.bias"][r].item() ** 2
    return total


def test_units_and_sparsity_against_slow_references():
    model = _gqa_model()
    states = _phase_states(model, 2)
    checkpoints = [Checkpoint(s) for s in states]
    names = M.common_names(checkpoints)
    groups = unit_groups({n: checkpoints[0].shape(n) for n in names}, model.config)
    assert [(g.layer, g.kind, g.count) for g in groups] == [
        (i, k, c) for i in range(2) for k, c in (("mlp", 24), ("q_head", 4), ("kv_head", 2))]
    threshold = 5e-4
    sweep = M.weight_sweep(checkpoints, names, groups, threshold=threshold, layers_per_sweep=1)
    for i in range(2):
        delta = {n: states[i + 1][n] - states[i][n] for n in names}
        for g in groups:  # every unit's squared change, against the index-by-index definition
            slow = [_slow_unit_sq(delta, g.layer, g.kind, u) for u in range(g.count)]
            assert sweep["unit_change"][i][g.key].tolist() == pytest.approx(slow, rel=1e-9, abs=1e-18)
        small = sum(sum(abs(x) < threshold for x in delta[n].reshape(-1).tolist()) for n in names)
        numel = sum(delta[n].numel() for n in names)
        assert sweep["overall"][i]["small"] == small and sweep["overall"][i]["numel"] == numel
        row = M.sparsity_row(sweep["modules"][i]["model.layers.1.mlp.down_proj"])
        d, w = delta["model.layers.1.mlp.down_proj.weight"].reshape(-1).tolist(), states[i]["model.layers.1.mlp.down_proj.weight"].reshape(-1).tolist()
        assert row["small_frac"] == pytest.approx(sum(abs(x) < threshold for x in d) / len(d))
        assert row["rel_change"] == pytest.approx(math.sqrt(sum(x * x for x in d) / sum(x * x for x in w)), rel=1e-6)
        hist = sweep["hist"][i].tolist()  # |Δ| histogram: zeros, then decades from 1e-10
        flat = [abs(x) for n in names for x in delta[n].reshape(-1).tolist()]
        assert hist[0] == sum(x == 0 for x in flat) and sum(hist) == len(flat)
        assert hist[M.HIST_LABELS.index("[1e-4,1e-3)")] == sum(1e-4 <= x < 1e-3 for x in flat)
    # reading the layers one at a time or all at once gives the same numbers
    once = M.weight_sweep(checkpoints, names, groups, threshold=threshold, layers_per_sweep=100)
    assert all(torch.equal(once["unit_change"][i][k], sweep["unit_change"][i][k]) for i in range(2)
               for k in once["unit_change"][i])


def test_top_units_and_jaccard_against_slow_references():
    scores = torch.tensor([0.5, 3.0, 1.0, 3.0, 0.1, 2.0, 0.0, 0.7, 0.9, 0.2])
    ranked = sorted(range(10), key=lambda u: (-scores[u].item(), u))  # ties to the lower index
    assert top_units(scores, 30) == set(ranked[:3]) == {1, 3, 5}
    assert top_units(scores, 1) == {1}  # at least one unit
    assert jaccard({1, 2, 3}, {2, 3, 4, 5}) == 2 / 5 and jaccard(set(), set()) is None
    assert chance_jaccard(10) == pytest.approx(0.1 / 1.9)
    model = _gqa_model()
    groups = unit_groups({k: tuple(v.shape) for k, v in model.state_dict().items()}, model.config)
    g = torch.Generator().manual_seed(0)
    selected = {d: {gr.key: set(torch.randperm(gr.count, generator=g)[: max(1, gr.count // 3)].tolist()) for gr in groups}
                for d in ("a", "b")}
    pair = A._overlaps(groups, selected, ["a", "b"])["a|b"]
    flat = {d: {(gr.layer, gr.kind, u) for gr in groups for u in selected[d][gr.key]} for d in "ab"}
    assert pair["overall"] == pytest.approx(len(flat["a"] & flat["b"]) / len(flat["a"] | flat["b"]), abs=1e-6)
    for kind in ("mlp", "q_head", "kv_head"):
        a = {x for x in flat["a"] if x[1] == kind}
        b = {x for x in flat["b"] if x[1] == kind}
        assert pair["by_kind"][kind] == pytest.approx(len(a & b) / len(a | b), abs=1e-6)
    layer0 = [{x for x in flat[d] if x[0] == 0} for d in "ab"]
    assert pair["by_layer"]["0"] == pytest.approx(len(layer0[0] & layer0[1]) / len(layer0[0] | layer0[1]), abs=1e-6)


def test_route_activity_against_a_slow_reference():
    model, tokenizer = _gqa_model(), toy.char_tokenizer()
    rows = {"copy": toy.domain_rows("copy", 3, length=4) + toy.domain_rows("copy", 2, length=7, seed=3)}
    examples = M.encode_rows(tokenizer, rows, max_rows=None)["copy"]  # two lengths: padded batches
    groups = unit_groups({k: tuple(v.shape) for k, v in model.state_dict().items()}, model.config)
    got = M.route_activity(model, groups, examples, M.pad_id_of(tokenizer), batch_size=4)
    # Reference: one unpadded row at a time, the same signals captured with plain hooks, reduced with loops.
    captured: dict[str, list] = {}
    hooks = []
    for layer in range(2):
        p = f"model.layers.{layer}."
        hooks.append(model.get_submodule(p + "mlp.down_proj").register_forward_pre_hook(
            lambda m, a, key=f"{layer}.mlp": captured.setdefault(key, []).append(a[0][0].detach())))
        hooks.append(model.get_submodule(p + "self_attn.o_proj").register_forward_pre_hook(
            lambda m, a, key=f"{layer}.q": captured.setdefault(key, []).append(a[0][0].detach())))
        for proj in ("k", "v"):
            hooks.append(model.get_submodule(p + f"self_attn.{proj}_proj").register_forward_hook(
                lambda m, a, out, key=f"{layer}.{proj}": captured.setdefault(key, []).append(out[0].detach())))
    with torch.no_grad():
        for e in examples:
            model(input_ids=torch.tensor([e.ids]), use_cache=False)
    for h in hooks:
        h.remove()
    tokens = sum(len(e.ids) for e in examples)
    for layer in range(2):
        mlp = [sum(abs(t[pos][j].item()) for t in captured[f"{layer}.mlp"] for pos in range(t.shape[0])) / tokens
               for j in range(24)]
        assert got[f"{layer}.mlp"].tolist() == pytest.approx(mlp, rel=1e-5)
        q = [sum(math.sqrt(sum(t[pos][h * 4 + c].item() ** 2 for c in range(4)))
                 for t in captured[f"{layer}.q"] for pos in range(t.shape[0])) / tokens for h in range(4)]
        assert got[f"{layer}.q_head"].tolist() == pytest.approx(q, rel=1e-5)
        kv = [sum(math.sqrt(sum(k[pos][g * 4 + c].item() ** 2 + v[pos][g * 4 + c].item() ** 2 for c in range(4)))
                  for k, v in zip(captured[f"{layer}.k"], captured[f"{layer}.v"]) for pos in range(k.shape[0])) / tokens
              for g in range(2)]
        assert got[f"{layer}.kv_head"].tolist() == pytest.approx(kv, rel=1e-5)


# -- the damage decomposition ------------------------------------------------------------------------------------------


def test_damage_terms_against_finite_differences():
    model, tokenizer = _gqa_model(seed=3), toy.char_tokenizer()
    examples = M.encode_rows(tokenizer, {"copy": toy.domain_rows("copy", 6)}, max_rows=None)["copy"]
    pad = M.pad_id_of(tokenizer)
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(5)
    direction = {k: torch.randn(v.shape, generator=g) for k, v in theta.items()}
    scale = 0.05 / math.sqrt(sum(float(d.pow(2).sum()) for d in direction.values()))
    delta = {k: d * scale for k, d in direction.items()}
    after = {k: theta[k] + delta[k] for k in theta}
    names = list(theta)
    dec = M.damage_decomposition(model, Checkpoint(theta), Checkpoint(after), names, examples, pad, batch_size=4)
    # the model is left at θ_before and its requires_grad flags as they were
    assert all(torch.equal(p, theta[n]) for n, p in model.named_parameters())

    def loss_at(t: float) -> float:
        M.load_weights(model, Checkpoint({k: theta[k] + t * delta[k] for k in theta}), names)
        return M.domain_loss(model, examples, pad, 4)

    eps = 1.0
    plus, zero, minus = loss_at(eps), loss_at(0.0), loss_at(-eps)
    first, second = sum(dec["first"].values()), sum(dec["second"].values())
    assert first == pytest.approx((plus - minus) / (2 * eps), rel=2e-2, abs=1e-5)
    assert second == pytest.approx((plus + minus - 2 * zero) / (2 * eps ** 2), rel=5e-2)
    # their sum is the actual change up to third order: Δ small, so the rest is a small part of the change
    actual = dec["loss_after"] - dec["loss_before"]
    assert actual == pytest.approx(plus - zero, rel=1e-5)
    assert abs(actual - first - second) < 0.05 * abs(actual)
    # per module: ½ Δ_m·(HΔ)_m against the finite difference of the gradient along Δ
    params = M._params(model, names)
    grads = []
    for t in (1e-2, -1e-2):
        M.load_weights(model, Checkpoint({k: theta[k] + t * delta[k] for k in theta}), names)
        grads.append(M.gradient(model, params, examples, pad, 4))
    for n in ("model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight", "lm_head.weight"):
        hv = (grads[0][n].double() - grads[1][n].double()) / 2e-2
        assert dec["second"][n] == pytest.approx(0.5 * float((hv * delta[n].double()).sum()), rel=2e-2, abs=1e-7)
    assert dec["second"]["model.layers.0.mlp.down_proj.weight"] != 0


# -- rollback ---------------------------------------------------------------------------------------------------------


def test_rollback_restores_exactly_the_chosen_slices():
    model = _gqa_model()
    before, after = _phase_states(model, 1)
    after = {k: v + 1.0 for k, v in after.items()}  # every entry differs from before
    groups = unit_groups({k: tuple(v.shape) for k, v in before.items()}, model.config)
    chosen = {"0.mlp": [2, 5], "1.q_head": [3], "1.kv_head": [0]}
    state = rolled_back_state(groups, chosen, Checkpoint(before), Checkpoint(after))
    assert set(state) == set(after)
    expected = {k: torch.zeros(v.shape, dtype=torch.bool) for k, v in after.items()}  # written out by hand
    for j in (2, 5):
        for proj in ("gate_proj", "up_proj"):
            expected[f"model.layers.0.mlp.{proj}.weight"][j, :] = True
        expected["model.layers.0.mlp.down_proj.weight"][:, j] = True
    expected["model.layers.1.self_attn.q_proj.weight"][12:16, :] = True
    expected["model.layers.1.self_attn.q_proj.bias"][12:16] = True
    expected["model.layers.1.self_attn.o_proj.weight"][:, 12:16] = True
    for proj in ("k_proj", "v_proj"):
        expected[f"model.layers.1.self_attn.{proj}.weight"][0:4, :] = True
        expected[f"model.layers.1.self_attn.{proj}.bias"][0:4] = True
    for name, mask in expected.items():
        assert torch.equal(state[name][mask], before[name][mask]), name
        assert torch.equal(state[name][~mask], after[name][~mask]), name  # bit-identical elsewhere
    assert sum(int(m.sum()) for m in expected.values()) == 2 * (16 + 16 + 16) + (4 * 16 + 4 + 16 * 4) + 2 * (4 * 16 + 4)


def test_select_units_takes_the_top_share_of_the_scope():
    model = _gqa_model()
    groups = unit_groups({k: tuple(v.shape) for k, v in model.state_dict().items()}, model.config)
    scores = {g.key: (torch.zeros(g.count, dtype=torch.float64), torch.arange(g.count, dtype=torch.float64))
              for g in groups}
    scores["1.mlp"][0][7] = 5.0  # the best score anywhere
    scores["0.q_head"][0][1] = 9.0  # best of all, but not an MLP unit
    mlp = select_units(groups, scores, "mlp", 10)  # round(0.1 * 48) = 5 of the 48 neurons
    assert sum(map(len, mlp.values())) == 5 and set(mlp) <= {"0.mlp", "1.mlp"}
    assert 7 in mlp["1.mlp"]
    # then the tie-break (the largest index here): 23, 23, 22, 22 of the two layers
    assert mlp == {"0.mlp": [22, 23], "1.mlp": [7, 22, 23]}
    joint = select_units(groups, scores, "joint", 2)  # round(0.02 * 60) = 1
    assert joint == {"0.q_head": [1]}
    assert select_units(groups, scores, "mlp", 0) == {}


# -- the command line --------------------------------------------------------------------------------------------------


def test_cli_end_to_end_on_the_toy(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    ck = tmp_path / "ck"
    made = subprocess.run([sys.executable, "-m", "mgs_tools.toy", "sequential", "--out", str(ck), "--base-steps", "30",
                           "--steps", "20"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "mgs_tools.forgetting", "--base", str(ck / "base"), "--phase",
                          f"copy={ck / 'copy'}", "--phase", f"reverse={ck / 'reverse'}", "--max-rows", "16",
                          "--rollback-percents", "2,32", "--output-dir", str(out)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "damage to copy" in run.stdout and "rollback toward copy" in run.stdout
    result = json.loads((out / "forgetting.json").read_text())
    assert (out / "forgetting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["phases"] == ["copy", "reverse"] and result["units"] == {"mlp": 256, "q_head": 8, "kv_head": 8}
    assert set(result["sparsity"]) == {"copy", "reverse"} and "copy|reverse" in result["edits"]["pairs"]
    d = result["damage"]
    assert d["actual"] == pytest.approx(d["first_order"] + d["second_order"] + d["residual"], abs=1e-5)
    assert sum(m["second"] for m in d["modules"]) == pytest.approx(d["second_order"], rel=1e-4, abs=1e-6)
    curve = {p["percent"]: p for p in result["rollback"]["curves"]["mlp"]}
    assert curve[2.0]["units"] == round(0.02 * 256) and curve[32.0]["units"] == round(0.32 * 256)
    # the written 2 % MLP rollback: 5 neurons' slices from the copy checkpoint, every other entry the final one's
    rolled, before, after = (Checkpoint(str(p)) for p in (out / "rollback_mlp_2", ck / "copy", ck / "reverse"))
    changed = 0
    for name in after.names:
        r, b, a = rolled.get(name), before.get(name), after.get(name)
        differs = r != a
        if ".mlp." not in name:
            assert not differs.any(), name
        assert torch.equal(r[differs], b[differs]), name
        if name.endswith("gate_proj.weight"):
            changed += int(differs.any(1).sum())
    assert changed == 5
    bad = subprocess.run([sys.executable, "-m", "mgs_tools.forgetting", "--base", str(ck / "base"), "--phase", "copy"],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "DOMAIN=PATH" in bad.stderr
