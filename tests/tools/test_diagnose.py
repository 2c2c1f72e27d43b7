"""mgs_tools.diagnose (mgs-diagnose) against a plain per-row, per-parameter reference on the tiny toy model."""

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
pytest.importorskip("datasets")

from mgs_tools import toy  # noqa: E402
from mgs_tools.diagnose import DiagnoseError, DiagnoseResult, ModuleInfo, diagnose, main, split_halves  # noqa: E402
from mgs_tools.diagnose import _report  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOMAINS = ["copy", "reverse", "sort"]


def tiny():
    return toy.tiny_causal_lm(hidden=16, layers=2, heads=2, seed=0)


def mixed_rows(n_short: int = 3, n_long: int = 3) -> dict[str, list[dict]]:
    """Rows of two lengths per domain (so batches are padded), with advantages of both signs."""
    out = {}
    for d in DOMAINS:
        rows = toy.domain_rows(d, n_short, length=3, seed=1) + toy.domain_rows(d, n_long, length=6, seed=2)
        out[d] = [dict(r, domain=d, advantage=(-0.5 if i % 3 == 0 else 1.0 + 0.25 * i)) for i, r in enumerate(rows)]
    return out


# -- the plain reference: one row at a time, torch.autograd.grad, Python loops -----------------------------


def reference(model, tokenizer, rows_by_domain, weight_key=None, seed=0, max_rows=None):
    """``{domain: (half0, half1)}``, each a dict param name → float64 gradient of -Σ w Σ_t log p."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    model.eval()
    out = {}
    for domain, rows in rows_by_domain.items():
        halves = []
        for half in split_halves(rows, seed, max_rows):
            loss = 0.0
            for row in half:
                ids = tokenizer(row["prompt"])["input_ids"]
                completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
                completion = completion + [tokenizer.eos_token_id]
                x = torch.tensor([ids + completion])
                logits = model(input_ids=x).logits[0].float()
                for t in range(len(ids), x.shape[1]):
                    w = row[weight_key] if weight_key else 1.0
                    loss = loss - w * torch.log_softmax(logits[t - 1], -1)[x[0, t]]
            grads = torch.autograd.grad(loss, [p for _, p in params])
            halves.append({n: g.double() for (n, _), g in zip(params, grads)})
        out[domain] = halves
    return out


def ref_cos(u: dict, v: dict, names) -> float:
    dot = sum(float((u[n] * v[n]).sum()) for n in names)
    nu = math.sqrt(sum(float((u[n] * u[n]).sum()) for n in names))
    nv = math.sqrt(sum(float((v[n] * v[n]).sum()) for n in names))
    return dot / (nu * nv)


def full(halves):
    return {n: halves[0][n] + halves[1][n] for n in halves[0]}


def module_names(names):
    """Reference module grouping for granularity="module" on a plain model: drop the parameter's last name."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n.rsplit(".", 1)[0], []).append(n)
    return groups


def check_against_reference(data: dict, ref: dict, atol: float = 2e-5) -> None:
    names = list(next(iter(ref.values()))[0])
    groups = module_names(names) if not any("lora_" in n for n in names) else None
    if groups is None:  # LoRA: lora_A and lora_B of one base module form one module
        groups = {}
        for n in names:
            groups.setdefault(n.split(".lora_")[0], []).append(n)
    assert [m["name"] for m in data["modules"]] == list(groups)
    for a_i, a in enumerate(DOMAINS):
        for b in DOMAINS[a_i + 1 :]:
            pair = data["pairs"][f"{a}|{b}"]
            ga, gb = full(ref[a]), full(ref[b])
            want = [ref_cos(ga, gb, ns) for ns in groups.values()]
            assert pair["cosine"] == pytest.approx(want, abs=atol)
            assert pair["global_cosine"] == pytest.approx(ref_cos(ga, gb, names), abs=atol)
            assert pair["conflict_frac"] == pytest.approx(sum(c < 0 for c in want) / len(want))
    for d in DOMAINS:
        h0, h1 = ref[d]
        floor = data["noise_floor"][d]
        assert floor["cosine"] == pytest.approx([ref_cos(h0, h1, ns) for ns in groups.values()], abs=atol)
        assert floor["global_cosine"] == pytest.approx(ref_cos(h0, h1, names), abs=atol)


# -- the Python API -------------------------------------------------------------------------------------------


def test_matches_reference_weighted_and_padded():
    model, tok = tiny(), toy.char_tokenizer()
    rows = mixed_rows()
    result = diagnose(model, tok, rows, batch_size=4, weight_key="advantage", progress=False)
    data = result.to_json()
    ref = reference(model, tok, rows, weight_key="advantage")
    check_against_reference(data, ref)
    assert data["rows"] == {d: 6 for d in DOMAINS}
    assert data["tokens"] == {d: 3 * 4 + 3 * 7 for d in DOMAINS}  # completion + EOS
    assert any(c < 0 for p in data["pairs"].values() for c in p["cosine"])  # the negative weights bite
    # Denoised cosine from the same Gram: mean cross-half dot over the geometric mean of the within-domain dots.
    (a0, a1), (b0, b1) = ref["copy"], ref["reverse"]
    names = list(a0)
    dot = lambda u, v: sum(float((u[n] * v[n]).sum()) for n in names)  # noqa: E731
    self_a, self_b = dot(a0, a1), dot(b0, b1)
    want = (dot(a0, b0) + dot(a0, b1) + dot(a1, b0) + dot(a1, b1)) / 4 / math.sqrt(self_a * self_b) \
        if self_a > 0 and self_b > 0 else None
    got = data["pairs"]["copy|reverse"]["global_denoised_cosine"]
    assert got == pytest.approx(want, abs=1e-5) if want is not None else got is None


def test_max_rows_and_seed_choose_the_halves():
    model, tok = tiny(), toy.char_tokenizer()
    rows = {d: [dict(r, domain=d) for r in toy.domain_rows(d, 9, seed=3)] for d in DOMAINS}
    data = diagnose(model, tok, rows, batch_size=3, max_rows=6, seed=5, progress=False).to_json()
    assert data["rows"] == {d: 6 for d in DOMAINS}
    check_against_reference(data, reference(model, tok, rows, seed=5, max_rows=6))


def test_layer_sweeps_equal_all_at_once_and_restore_the_model():
    model, tok = tiny(), toy.char_tokenizer()
    model.train()
    model.model.norm.weight.requires_grad_(False)
    rows = mixed_rows(2, 2)
    once = diagnose(model, tok, rows, batch_size=4, progress=False)
    by_unit = diagnose(model, tok, rows, batch_size=4, layers_per_sweep=1, progress=False)
    assert by_unit.settings["sweeps"] == 4  # embed_tokens, 2 layers, lm_head
    torch.testing.assert_close(by_unit.gram, once.gram, rtol=1e-6, atol=1e-9)
    assert "model.norm" not in [m.name for m in once.modules]
    assert model.training
    assert not model.model.norm.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "model.norm.weight")
    assert all(p.grad is None for p in model.parameters())


def test_group_size_is_a_deprecated_name_of_layers_per_sweep():
    model, tok = tiny(), toy.char_tokenizer()
    rows = mixed_rows(2, 2)
    new = diagnose(model, tok, rows, batch_size=4, layers_per_sweep=1, progress=False)
    with pytest.warns(FutureWarning, match=r"group_size=\.\.\.\) is deprecated; use layers_per_sweep"):
        old = diagnose(model, tok, rows, batch_size=4, group_size=1, progress=False)
    assert old.settings == new.settings and old.settings["layers_per_sweep"] == 1
    torch.testing.assert_close(old.gram, new.gram, rtol=0, atol=0)
    with pytest.raises(TypeError, match="pass layers_per_sweep only"):
        diagnose(model, tok, rows, layers_per_sweep=1, group_size=1, progress=False)


def test_granularities_share_the_global_cosine():
    model, tok = tiny(), toy.char_tokenizer()
    rows = mixed_rows(2, 2)
    results = {g: diagnose(model, tok, rows, granularity=g, progress=False)
               for g in ("parameter", "module", "block", "layer")}
    base = results["module"]
    for g, r in results.items():
        torch.testing.assert_close(r.gram.sum(0), base.gram.sum(0), rtol=1e-6, atol=1e-9)
    assert [m.kind for m in results["block"].modules if m.layer == 0] == ["attention", "mlp", "other"]
    assert [m.kind for m in results["layer"].modules if m.layer is not None] == ["layer", "layer"]
    assert "q_proj.weight" in [m.kind for m in results["parameter"].modules]
    modules = {m.name: m for m in base.modules}
    assert (modules["model.layers.1.mlp.up_proj"].layer, modules["model.layers.1.mlp.up_proj"].kind) == (1, "up_proj")
    assert modules["model.layers.1.mlp.up_proj"].family == "mlp"
    assert modules["lm_head"].layer is None and modules["lm_head"].numel == 16 * len(toy.CHARS + ["", "", ""])


def test_head_granularity_gives_per_head_cosines():
    """--granularity head: one module per (projection, head), its cosine from the reference gradients' own slices (q/k/v
    rows, o_proj columns, q/k/v bias entries), and the same whole-model cosine as every other granularity."""
    model, tok = tiny(), toy.char_tokenizer()  # hidden 16, 2 heads of 8
    rows = mixed_rows(2, 2)
    data = diagnose(model, tok, rows, granularity="head", progress=False).to_json()
    ref = reference(model, tok, rows)
    heads: dict[str, list] = {}
    for name in ref["copy"][0]:
        module, _, kind = name.rpartition(".")
        proj = module.rpartition(".")[2]
        if proj in ("q_proj", "k_proj", "v_proj") or (proj == "o_proj" and kind == "weight"):
            for h in range(2):
                cut = (slice(None), slice(8 * h, 8 * h + 8)) if proj == "o_proj" else (slice(8 * h, 8 * h + 8),)
                heads.setdefault(f"{module}:head{h}", []).append((name, cut))
        else:
            heads.setdefault(module, []).append((name, (slice(None),)))
    assert [m["name"] for m in data["modules"]] == list(heads)
    labels = [m["kind"] for m in data["modules"] if m["layer"] == 0]
    assert labels[:2] == ["q_proj:head0", "q_proj:head1"] and "o_proj:head1" in labels
    a, b = full(ref["copy"]), full(ref["sort"])

    def cos(u, v, pieces):
        x = torch.cat([u[n][cut].flatten() for n, cut in pieces])
        y = torch.cat([v[n][cut].flatten() for n, cut in pieces])
        return float(x @ y / (x.norm() * y.norm()))

    assert data["pairs"]["copy|sort"]["cosine"] == pytest.approx([cos(a, b, p) for p in heads.values()], abs=2e-5)
    assert data["pairs"]["copy|sort"]["global_cosine"] == pytest.approx(ref_cos(a, b, list(a)), abs=2e-5)


def test_bf16_accumulates_in_fp32():
    tok, rows = toy.char_tokenizer(), mixed_rows(2, 2)
    fp32 = diagnose(tiny(), tok, rows, batch_size=2, progress=False)
    bf16 = diagnose(tiny().to(torch.bfloat16), tok, rows, batch_size=2, progress=False)
    assert bf16.gram.dtype == torch.float64 and bf16.settings["dtype"] == "bfloat16"
    assert torch.isfinite(bf16.gram).all()
    for a, b in fp32.pairs():
        assert bf16.global_cosine(a, b) == pytest.approx(fp32.global_cosine(a, b), abs=0.05)


def test_lora_reports_only_adapter_modules():
    peft = pytest.importorskip("peft")
    model, tok = tiny(), toy.char_tokenizer()
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(model, config)
    rows = mixed_rows(2, 2)
    data = diagnose(model, tok, rows, batch_size=4, progress=False).to_json()
    names = [m["name"] for m in data["modules"]]
    assert names == [f"base_model.model.model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "v_proj")]
    assert {m["numel"] for m in data["modules"] if m["kind"] == "q_proj"} == {2 * 16 + 16 * 2}
    check_against_reference(data, reference(model, tok, rows))


# -- the command line ----------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows_by_domain) -> Path:
    with open(path, "w") as f:
        for rows in rows_by_domain.values():
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return path


def test_cli_writes_json_png_and_table(tmp_path, capsys):
    rows = mixed_rows(2, 2)
    data_path = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "out"
    main(["--data", str(data_path), "--weight-column", "advantage", "--max-rows", "4", "--batch-size", "3",
          "--output-dir", str(out), "--device", "cpu", "--no-progress", "--per-module"])
    printed = capsys.readouterr().out
    assert "global cos" in printed and "copy|reverse" in printed and "floor sort" in printed
    assert "model.layers.1.mlp.down_proj" in printed  # --per-module
    data = json.loads((out / "diagnose.json").read_text())
    assert set(data) >= {"model", "domains", "modules", "pairs", "noise_floor", "settings"}
    assert data["domains"] == DOMAINS and data["model"] == "mgs_tools.toy.tiny_causal_lm"
    assert set(data["pairs"]) == {"copy|reverse", "copy|sort", "reverse|sort"}
    assert all(len(p["cosine"]) == len(data["modules"]) for p in data["pairs"].values())
    assert data["settings"]["weight_key"] == "advantage" and data["settings"]["batch_size"] == 3
    assert (out / "diagnose.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The output explains itself: what the columns mean, where the files are, where the docs are.
    legend = printed.split("lm_head")[-1]
    assert "noise floor: cosine between two disjoint halves" in legend and "denoised:" in legend
    assert "Why training logs more conflict" in legend and "more: docs/diagnose.md" in legend
    assert f"wrote {out / 'diagnose.json'}" in legend and f"wrote {out / 'diagnose.png'}" in legend
    # The same numbers as the Python API on the same model and rows (the rows went through a JSONL file).
    api = diagnose(toy.tiny_causal_lm(), toy.char_tokenizer(), rows, batch_size=3, max_rows=4,
                   weight_key="advantage", progress=False).to_json()
    assert data["pairs"] == api["pairs"] and data["noise_floor"] == api["noise_floor"]


def test_cli_toy_domains_subset_and_saved_dataset(tmp_path, capsys):
    from datasets import Dataset

    rows = mixed_rows(2, 2)
    Dataset.from_list([r for rs in rows.values() for r in rs]).save_to_disk(str(tmp_path / "ds"))
    main(["--data", str(tmp_path / "ds"), "--domains", "sort,copy", "--output-dir", str(tmp_path / "a"),
          "--device", "cpu", "--no-progress", "--no-plot", "--layers-per-sweep", "2"])
    data = json.loads((tmp_path / "a" / "diagnose.json").read_text())
    assert data["domains"] == ["sort", "copy"] and list(data["pairs"]) == ["sort|copy"]
    assert not (tmp_path / "a" / "diagnose.png").exists()
    assert data["settings"]["layers_per_sweep"] == 2 and data["settings"]["sweeps"] == 3  # 5 units, 2 a sweep
    with pytest.warns(FutureWarning, match="--group-size is deprecated; use --layers-per-sweep"):
        main(["--data", str(tmp_path / "ds"), "--domains", "sort,copy", "--output-dir", str(tmp_path / "old"),
              "--device", "cpu", "--no-progress", "--no-plot", "--group-size", "2"])  # the deprecated alias
    assert json.loads((tmp_path / "old" / "diagnose.json").read_text()) == data
    main(["--max-rows", "4", "--domains", "copy,reverse", "--output-dir", str(tmp_path / "b"),
          "--device", "cpu", "--no-progress", "--no-plot"])  # no --data: the toy domains
    data = json.loads((tmp_path / "b" / "diagnose.json").read_text())
    assert data["rows"] == {"copy": 4, "reverse": 4}
    capsys.readouterr()


def test_cli_lora_adapter(tmp_path, capsys):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["v_proj"], init_lora_weights=False)
    peft.get_peft_model(toy.tiny_causal_lm(), config).save_pretrained(str(tmp_path / "adapter"))
    main(["--adapter", str(tmp_path / "adapter"), "--max-rows", "4", "--output-dir", str(tmp_path / "out"),
          "--device", "cpu", "--no-progress", "--no-plot"])
    data = json.loads((tmp_path / "out" / "diagnose.json").read_text())
    assert [m["kind"] for m in data["modules"]] == ["v_proj", "v_proj"]
    assert all(c is not None for p in data["pairs"].values() for c in p["cosine"])
    capsys.readouterr()


@pytest.mark.parametrize(
    "rows, args, message",
    [
        ({"copy": 2, "sort": 2}, ["--domain-column", "task"], "column 'task' is not in"),
        ({"copy": 2, "sort": 2}, ["--weight-column", "adv"],
         "its columns are ['prompt', 'completion', 'digits', 'domain', 'advantage']"),
        ({"copy": 2, "sort": 2}, ["--domains", "copy,math"], "unknown domain(s) ['math']; the domains in"),
        ({"copy": 4}, [], "need at least 2 domains to compare; found ['copy']"),
        ({"copy": 3, "sort": 1}, [], "domain 'sort' has 1 row(s); at least 2 are needed"),
    ],
)
def test_cli_errors(tmp_path, capsys, rows, args, message):
    table = {d: [dict(r, domain=d, advantage=1.0) for r in toy.domain_rows(d, n)] for d, n in rows.items()}
    path = write_jsonl(tmp_path / "rows.jsonl", table)
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(path), "--output-dir", str(tmp_path / "out"), "--device", "cpu", "--no-progress", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_api_errors(tmp_path):
    model, tok = tiny(), toy.char_tokenizer()
    rows = mixed_rows(1, 1)
    with pytest.raises(DiagnoseError, match="need at least 2 domains"):
        diagnose(model, tok, {"copy": rows["copy"]}, progress=False)
    with pytest.raises(DiagnoseError, match=r"row 0 of domain 'copy' has no field 'answer'; its fields are"):
        diagnose(model, tok, rows, completion_key="answer", progress=False)
    with pytest.raises(DiagnoseError, match="weight 'digits' must be a finite number"):
        diagnose(model, tok, rows, weight_key="digits", progress=False)
    with pytest.raises(DiagnoseError, match="granularity='tensor' is not supported"):
        diagnose(model, tok, rows, granularity="tensor", progress=False)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(DiagnoseError, match="no parameter with requires_grad=True"):
        diagnose(model, tok, rows, progress=False)
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path / "missing.jsonl"), "--no-progress"])


def test_module_entry_point_and_import_hygiene():
    """``python -m mgs_tools.diagnose`` runs, and importing it (so ``mgs`` too) loads neither transformers nor datasets
    nor matplotlib: ``-X importtime`` lists every module the process imported."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "mgs_tools.diagnose", "--help"], check=True, cwd=ROOT,
                         env=env, capture_output=True, text=True)
    assert "usage: mgs-diagnose" in run.stdout and "--layers-per-sweep" in run.stdout
    assert "--group-size" not in run.stdout  # the deprecated alias works but is not listed
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines()
                if line.startswith("import time:")}
    assert {"mgs", "torch"} <= imported
    assert not {"transformers", "datasets", "matplotlib"} & imported


# -- the heatmap at real model sizes ------------------------------------------------------------------------


def synthetic(layers: int, domains=("math", "chat", "code"), seed: int = 0) -> DiagnoseResult:
    """A Qwen2-shaped result (9 modules a layer, embedding, final norm, lm_head) with random PSD Gram matrices."""
    kinds = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "input_layernorm",
             "post_attention_layernorm"]
    modules = [ModuleInfo("model.embed_tokens", None, "embed_tokens", "embedding", 8)]
    modules += [ModuleInfo(f"model.layers.{n}.{k}", n, k, "attention", 8) for n in range(layers) for k in kinds]
    modules += [ModuleInfo("model.norm", None, "norm", "norm", 8), ModuleInfo("lm_head", None, "lm_head", "other", 8)]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(modules), 2 * len(domains), 16, generator=g, dtype=torch.float64)
    return DiagnoseResult(list(domains), modules, x @ x.transpose(1, 2), dict.fromkeys(domains, 8),
                          dict.fromkeys(domains, 80), "synthetic", {"granularity": "module"})


def _axes(fig, label):
    return [ax for sub in fig.subfigs for ax in sub.axes if ax.get_label() == label]


@pytest.mark.parametrize("layers, labelled", [(2, True), (28, True), (80, False)])
def test_heatmap_stays_legible_at_real_sizes(layers, labelled):
    pytest.importorskip("matplotlib")
    result = synthetic(layers)
    fig = result.heatmap_figure()
    width, height = fig.get_size_inches()
    rows = 2  # 3 pair panels + 3 floor panels, 3 a row
    assert height <= rows * _report.PANEL_HEIGHT_MAX + 1.6 + 0.25 * 12 + 0.6 + 1e-9  # panels squeezed, not stretched
    summary, = _axes(fig, "summary")
    texts = [t for t in summary.texts]
    kinds = _report.kind_summary(result)
    assert len(texts) == len(kinds["kinds"]) * len(kinds["columns"])  # the per-kind panel always has its values
    assert all(t.get_fontsize() >= _report.LABEL_POINTS_MIN for t in texts)
    floor_chat = kinds["columns"].index("floor chat")
    q = kinds["kinds"].index("q_proj")
    want = float(result.noise_floor("chat")[[m.kind == "q_proj" for m in result.modules]].mean())
    assert float(kinds["mean"][q, floor_chat]) == pytest.approx(want)
    panels = _axes(fig, "panel")
    assert len(panels) == 6
    for ax in panels:
        if labelled:
            assert len(ax.texts) == layers * 9 + 3  # every module's cell, none for the empty ones
            assert all(t.get_fontsize() >= _report.LABEL_POINTS_MIN for t in ax.texts)
        else:
            assert not ax.texts  # cells too small for a label at the minimum font size
        ticks = [t.get_text() for t in ax.get_yticklabels()]
        assert ticks[-1] == "other"  # layer labels thinned to 8 points apart, so they do not overlap
        assert len(ticks) <= 0.75 * _report.PANEL_HEIGHT_MAX * 72 / 8 + 2 and (layers < 40 or len(ticks) < layers)
    import io

    fig.savefig(io.BytesIO(), format="png", dpi=60)  # it draws
