"""MGSGRPOTrainer against the stock GRPOTrainer (stubbed generation, tiny model)."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

import torch
from _tiny import (COMMON, GradRecorder, StubGRPOTrainer, dataset, launch_torchrun, make_stub_mgs_trainer_class, reward,
                   tiny_model, tiny_tokenizer)
from trl import GRPOConfig

from trl_mgs import MGSGRPOConfig


def _train(trainer_cls, config_cls, tmp_path, steps, **overrides):
    args = config_cls(output_dir=str(tmp_path), max_steps=steps, **(COMMON | overrides))
    recorder = GradRecorder()
    trainer = trainer_cls(
        model=tiny_model(), reward_funcs=[reward], args=args, train_dataset=dataset(),
        processing_class=tiny_tokenizer(), callbacks=[recorder],
    )
    trainer.train()
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    return trainer, recorder.grads, params


LOSS_CASES = [
    ("grpo", 1, 1), ("bnpo", 2, 1), ("dr_grpo", 1, 2), ("dapo", 2, 2),
    ("cispo", 2, 1), ("sapo", 1, 2), ("luspo", 2, 2), ("vespo", 1, 1),
]


@pytest.mark.parametrize("loss_type, grad_accum, iterations", LOSS_CASES)
def test_surgery_none_trains_like_stock(tmp_path, loss_type, grad_accum, iterations):
    kw = dict(loss_type=loss_type, gradient_accumulation_steps=grad_accum, num_iterations=iterations)
    _, stock_grads, stock_params = _train(StubGRPOTrainer, GRPOConfig, tmp_path / "stock", 3, **kw)
    trainer, grads, params = _train(make_stub_mgs_trainer_class(), MGSGRPOConfig, tmp_path / "mgs", 3, surgery="none", **kw)
    assert len(grads) == len(stock_grads) == 3
    for step, (g, s) in enumerate(zip(grads, stock_grads)):
        assert g.keys() == s.keys()
        total = sum(float(v.norm()) for v in s.values())
        assert total > 0, "stock gradient is zero: the test could not fail"
        for n in s:
            assert torch.allclose(g[n], s[n], rtol=1e-5, atol=1e-7), f"step {step} {n}"
    for n in stock_params:
        assert torch.allclose(params[n], stock_params[n], rtol=1e-5, atol=1e-6), n
    assert max(trainer.domains_per_microbatch) >= 2, "no mixed micro-batch: the domain split went untested"
    history = trainer.state.log_history
    assert any("mgs/conflict_frac" in h for h in history)


def tiny_moe_model():
    from transformers import AutoModelForCausalLM, Qwen2MoeConfig

    torch.manual_seed(0)
    config = Qwen2MoeConfig(
        vocab_size=48, hidden_size=16, intermediate_size=32, moe_intermediate_size=16,
        shared_expert_intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        num_experts=4, num_experts_per_tok=2, output_router_logits=True, router_aux_loss_coef=0.5,
        max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def test_moe_aux_loss_path_trains_like_stock(tmp_path):
    """A MoE load-balancing loss does not split by row: one forward, masked per-domain backward passes, the aux
    loss through shared(). surgery="none" still equals stock."""
    def run(cls, config_cls, out, **kw):
        args = config_cls(output_dir=str(out), max_steps=2, **(COMMON | {"gradient_accumulation_steps": 2} | kw))
        recorder = GradRecorder()
        trainer = cls(model=tiny_moe_model(), reward_funcs=[reward], args=args, train_dataset=dataset(),
                      processing_class=tiny_tokenizer(), callbacks=[recorder])
        trainer.train()
        return trainer, recorder.grads

    stock, stock_grads = run(StubGRPOTrainer, GRPOConfig, tmp_path / "stock")
    assert stock.aux_loss_enabled
    trainer, grads = run(make_stub_mgs_trainer_class(), MGSGRPOConfig, tmp_path / "mgs", surgery="none")
    assert max(trainer.domains_per_microbatch) >= 2
    for g, s in zip(grads, stock_grads):
        assert sum(float(v.norm()) for v in s.values()) > 0
        for n in s:
            assert torch.allclose(g[n], s[n], rtol=1e-5, atol=1e-7), n


def test_backward_cost_does_not_grow_with_domains(tmp_path):
    """Rows through the decoder's backward per step equal stock's: each domain's backward covers its own rows."""
    def backward_rows(cls, config_cls, out, **kw):
        args = config_cls(output_dir=str(out), max_steps=2, **(COMMON | kw))
        model = tiny_model()
        rows = []
        model.model.layers[-1].register_full_backward_hook(lambda m, gin, gout: rows.append(gout[0].shape[0]))
        trainer = cls(model=model, reward_funcs=[reward], args=args, train_dataset=dataset(), processing_class=tiny_tokenizer())
        trainer.train()
        return trainer, sum(rows), len(rows)

    _, stock_rows, _ = backward_rows(StubGRPOTrainer, GRPOConfig, tmp_path / "stock")
    trainer, rows, passes = backward_rows(make_stub_mgs_trainer_class(), MGSGRPOConfig, tmp_path / "mgs")
    assert min(trainer.domains_per_microbatch) >= 2  # every micro-batch mixes domains
    assert passes == sum(trainer.domains_per_microbatch)  # one backward per (micro-batch, domain) ...
    assert rows == stock_rows > 0  # ... each over that domain's rows only


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "bnpo"])
def test_order_by_domain_makes_pure_microbatches_and_keeps_the_gradient(tmp_path, loss_type):
    """Sorting the generation batch by domain gives domain-pure micro-batches (fewer backward passes) and the
    same modular gradient as TRL's shuffled order; for bnpo (per-micro-batch normaliser) it stays off."""
    cls = make_stub_mgs_trainer_class()
    kw = dict(loss_type=loss_type, gradient_accumulation_steps=3, per_device_train_batch_size=4, num_iterations=2)
    off, off_grads, _ = _train(cls, MGSGRPOConfig, tmp_path / "off", 2, order_by_domain=False, **kw)
    on, on_grads, _ = _train(cls, MGSGRPOConfig, tmp_path / "on", 2, **kw)
    if loss_type == "bnpo":
        assert not on.orders_by_domain
        assert on.domains_per_microbatch == off.domains_per_microbatch
    else:
        assert sum(on.domains_per_microbatch) < sum(off.domains_per_microbatch)
        assert on.domains_per_microbatch.count(1) >= len(on.domains_per_microbatch) // 2
    for g, s in zip(on_grads, off_grads):
        assert sum(float(v.norm()) for v in s.values()) > 0
        for n in s:
            assert torch.allclose(g[n], s[n], rtol=1e-5, atol=1e-7), n


def test_modular_changes_the_update_and_logs_surgery_stats(tmp_path):
    cls = make_stub_mgs_trainer_class()
    _, none_grads, _ = _train(cls, MGSGRPOConfig, tmp_path / "none", 2, surgery="none")
    trainer, grads, _ = _train(cls, MGSGRPOConfig, tmp_path / "modular", 2, surgery="modular")
    assert trainer.surgery.domains == ("chat", "code", "math")  # read from the dataset, sorted
    logged = [h for h in trainer.state.log_history if "mgs/conflict_frac" in h]
    assert len(logged) == 2
    assert any(h["mgs/conflict_frac"] > 0 for h in logged), "the stub data has no conflict: surgery untested"
    assert {"mgs/grad_norm/math", "mgs/cosine_mean/attention", "mgs/conflict_frac/mlp"} <= set(logged[0])
    # step 0 starts from the same parameters: surgery projected something away
    diff = sum(float((grads[0][n] - none_grads[0][n]).norm()) for n in grads[0])
    assert diff > 1e-6


def test_no_gradient_memory_during_generation(tmp_path):
    """Generation (colocated vLLM in real runs) happens with the surgery buffers freed and no p.grad held."""
    seen = []

    class Probe(make_stub_mgs_trainer_class()):
        def _generate_single_turn(self, *args, **kwargs):
            seen.append((self.surgery._buffers.is_open, sum(p.grad is not None for p in self.model.parameters())))
            return super()._generate_single_turn(*args, **kwargs)

    _train(Probe, MGSGRPOConfig, tmp_path, 3, gradient_accumulation_steps=2)
    assert len(seen) == 3 and seen == [(False, 0)] * 3


def test_config_validation_and_cli():
    with pytest.raises(ValueError, match="surgery='modualr'"):
        MGSGRPOConfig(output_dir="out", surgery="modualr", use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="granularity='layers'"):
        MGSGRPOConfig(output_dir="out", surgery_granularity="layers", use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="duplicates"):
        MGSGRPOConfig(output_dir="out", domains=["a", "a"], use_cpu=True, report_to="none")
    from trl import TrlParser

    (args,) = TrlParser(MGSGRPOConfig).parse_args_into_dataclasses(
        ["--output_dir", "out", "--surgery", "global", "--surgery_granularity", "block",
         "--domains", "math", "chat", "--surgery_seed", "5", "--use_cpu", "true", "--report_to", "none"]
    )
    assert (args.surgery, args.surgery_granularity, args.domains, args.surgery_seed) == ("global", "block", ["math", "chat"], 5)
    (args,) = TrlParser(MGSGRPOConfig).parse_args_into_dataclasses(
        ["--output_dir", "out", "--surgery_method", "mgda", "--surgery_balance", "norm", "--surgery_gram_ema", "0.9",
         "--use_cpu", "true", "--report_to", "none"]
    )
    assert args.surgery_options(["a", "b"]).method == "mgda" and args.surgery_options(["a"]).gram_ema == 0.9
    with pytest.raises(ValueError, match=r"gram_ema=1.5 is not supported"):
        MGSGRPOConfig(output_dir="out", surgery_gram_ema=1.5, use_cpu=True, report_to="none")
    with pytest.raises(SystemExit):
        TrlParser(MGSGRPOConfig).parse_args_into_dataclasses(["--output_dir", "out", "--surgery", "sometimes"])


def test_domain_column_errors_and_remove_unused_columns(tmp_path):
    cls = make_stub_mgs_trainer_class()

    def build(data, **kw):
        args = MGSGRPOConfig(output_dir=str(tmp_path), max_steps=1, **(COMMON | kw))
        return cls(model=tiny_model(), reward_funcs=[reward], args=args, train_dataset=data, processing_class=tiny_tokenizer())

    with pytest.raises(ValueError, match=r"no domain column 'task'.*\['prompt', 'domain'\]"):
        build(dataset(), domain_column="task")
    with pytest.raises(ValueError, match=r"domains \['code', 'math'\] that MGSGRPOConfig.domains \['chat'\]"):
        build(dataset(), domains=["chat"])
    # remove_unused_columns=True would drop the column: the trainer keeps it
    trainer = build(dataset(), remove_unused_columns=True)
    trainer.train()
    assert trainer.state.global_step == 1


@pytest.mark.parametrize("kind, reason", [("FSDP", "FSDP1 .* flattens"), ("DEEPSPEED", "Under DeepSpeed ZeRO")])
def test_sharded_strategies_are_refused_at_init(tmp_path, monkeypatch, kind, reason):
    """What accelerate finally chose is checked after the parent's __init__: FSDP1 (an FSDP type that is not FSDP2)
    and DeepSpeed are refused, naming FSDP2 and its accelerate config."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    monkeypatch.setattr(Accelerator, "distributed_type", property(lambda self: DistributedType[kind]))
    args = MGSGRPOConfig(output_dir=str(tmp_path), max_steps=1, **COMMON)
    with pytest.raises(NotImplementedError, match=rf"and FSDP2; got DistributedType.{kind}\. {reason}.*"
                                                  r"accelerate_fsdp2.yaml"):
        make_stub_mgs_trainer_class()(model=tiny_model(), reward_funcs=[reward], args=args, train_dataset=dataset(),
                                      processing_class=tiny_tokenizer())


def test_lora_only_adapters_get_buffers(tmp_path):
    peft = pytest.importorskip("peft")
    cls = make_stub_mgs_trainer_class()
    args = MGSGRPOConfig(output_dir=str(tmp_path), max_steps=2, **(COMMON | {"learning_rate": 0.1}))
    lora = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = cls(model=tiny_model(), reward_funcs=[reward], args=args, train_dataset=dataset(),
                  processing_class=tiny_tokenizer(), peft_config=lora)
    names = sum(trainer.surgery.groups().values(), [])
    assert names and all("lora_" in n for n in names)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_defaults_bf16_and_gradient_checkpointing_run_on_cpu(tmp_path):
    """GRPOConfig's defaults (bf16=True, gradient_checkpointing=True) with modular surgery."""
    cls = make_stub_mgs_trainer_class()
    args = MGSGRPOConfig(output_dir=str(tmp_path), max_steps=2,
                         **(COMMON | {"bf16": True, "gradient_checkpointing": True, "learning_rate": 0.05}))
    trainer = cls(model=tiny_model(), reward_funcs=[reward], args=args, train_dataset=dataset(), processing_class=tiny_tokenizer())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert len(changed) > len(before) // 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_fp16_grad_scaler_routes_every_backward(tmp_path):
    """With a GradScaler (fp16 on GPU; set by hand here since CPU accelerate has none), every domain's backward
    carries the scale: the pre-step gradients are the unscaled run's times the scale, and the scaler unscales
    them before the optimizer step, so parameters match the unscaled run."""
    scale = 2.0**10  # a power of two: scaling is exact, and PCGrad's decisions are scale-invariant

    class ScaledTrainer(make_stub_mgs_trainer_class()):
        def create_optimizer(self):
            self.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=10**6)
            return super().create_optimizer()

    plain, plain_grads, plain_params = _train(make_stub_mgs_trainer_class(), MGSGRPOConfig, tmp_path / "plain", 2)
    scaled, grads, params = _train(ScaledTrainer, MGSGRPOConfig, tmp_path / "scaled", 2)
    assert scaled.accelerator.scaler.get_scale() == scale  # no step was skipped
    for g, p in zip(grads, plain_grads):
        for n in p:
            assert torch.allclose(g[n], p[n] * scale, rtol=1e-5, atol=1e-7 * scale), n
    for n in plain_params:
        assert torch.allclose(params[n], plain_params[n], rtol=1e-5, atol=1e-6), n


@pytest.mark.distributed
def test_ddp_two_processes(tmp_path):
    """2-process DDP (gloo): surgery="none" equals stock GRPOTrainer under DDP at every step; modular keeps the
    replicas identical (surgery runs on averaged per-domain gradients) and both ranks log the same stats."""
    from pathlib import Path

    launch_torchrun(Path(__file__).with_name("ddp_worker.py"), tmp_path, port=29533)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for step, (g, s) in enumerate(zip(r0["none"], r0["stock"])):
        assert sum(float(v.norm()) for v in s.values()) > 0
        for n in s:
            assert torch.allclose(g[n], s[n], rtol=1e-5, atol=1e-7), f"step {step} {n}"
    for step, (a, b) in enumerate(zip(r0["modular"], r1["modular"])):
        for n in a:
            assert torch.equal(a[n], b[n]), f"replicas diverge at step {step} on {n}"
    assert r0["stats"] and [h["mgs/conflict_frac"] for h in r0["stats"]] == [h["mgs/conflict_frac"] for h in r1["stats"]]
    assert max(r0["domains_per_microbatch"] + r1["domains_per_microbatch"]) >= 2
    for r in (0, 1):  # a row without a domain on rank 1 only: one error on both ranks (before: rank 0 hung)
        message = torch.load(tmp_path / f"bad_rank{r}.pt")["bad_row"]
        assert message and "rank 1: ValueError:" in message and "have no domain (None or empty)" in message, message


@pytest.mark.parametrize("extra,legacy", [({}, False), ({"surgery_gram_ema": 0.5, "surgery_balance": "norm"}, False),
                                          ({"surgery_gram_ema": 0.5}, True)], ids=["pcgrad", "ema", "ema-legacy-file"])
def test_resume_continues_identically(tmp_path, extra, legacy):
    """4 steps straight equal 2 steps, a checkpoint, a fresh trainer resuming, and 2 more (modular surgery; with
    a Gram EMA, whose state travels in the checkpoint; and from a checkpoint that holds the state under the file
    name and format of version 0.1.0, ``mgs_surgery.pt``)."""
    cls = make_stub_mgs_trainer_class()

    def trainer(out, **kw):
        settings = COMMON | {"learning_rate": 0.2, "lr_scheduler_type": "constant", "max_steps": 4} | extra | kw
        args = MGSGRPOConfig(output_dir=str(out), **settings)
        return cls(model=tiny_model(), reward_funcs=[reward], args=args, train_dataset=dataset(),
                   processing_class=tiny_tokenizer())

    straight = trainer(tmp_path / "straight")
    straight.train()
    first = trainer(tmp_path / "resumed", save_strategy="steps", save_steps=2, max_steps=2)
    first.train()
    checkpoint = tmp_path / "resumed" / "checkpoint-2"
    saved = torch.load(checkpoint / "mgs_surgery_rank0.pt", weights_only=True)["surgery"]
    assert ("gram_ema" in saved) == bool(extra)
    if legacy:
        (checkpoint / "mgs_surgery_rank0.pt").unlink()
        torch.save(saved, checkpoint / "mgs_surgery.pt")
    resumed = trainer(tmp_path / "resumed", save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    for (n, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), n
    moved = sum(float((p - q).detach().norm()) for p, q in zip(straight.model.parameters(), first.model.parameters()))
    assert moved > 0, "steps 3-4 changed nothing: the test could not fail"


def test_resume_from_a_checkpoint_without_surgery_state_is_an_error(tmp_path):
    cls = make_stub_mgs_trainer_class()
    args = MGSGRPOConfig(output_dir=str(tmp_path), max_steps=1, **(COMMON | {"save_strategy": "steps", "save_steps": 1}))
    cls(model=tiny_model(), reward_funcs=[reward], args=args, train_dataset=dataset(),
        processing_class=tiny_tokenizer()).train()
    (tmp_path / "checkpoint-1" / "mgs_surgery_rank0.pt").unlink()
    again = cls(model=tiny_model(), reward_funcs=[reward], args=MGSGRPOConfig(output_dir=str(tmp_path), max_steps=2,
                **COMMON), train_dataset=dataset(), processing_class=tiny_tokenizer())
    with pytest.raises(FileNotFoundError, match=r"checkpoint-1/mgs_surgery_rank0.pt is missing"):
        again.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))


def test_per_domain_reward_and_length_metrics(tmp_path):
    """mgs/reward/<d>/mean and /std equal the reward function's own outputs grouped by domain."""
    seen = []

    def recording_reward(completions, domain, **kwargs):
        values = reward(completions, domain)
        seen.append(list(zip(domain, values, completions)))
        return values

    cls = make_stub_mgs_trainer_class()
    args = MGSGRPOConfig(output_dir=str(tmp_path), max_steps=2, **COMMON)
    trainer = cls(model=tiny_model(), reward_funcs=[recording_reward], args=args, train_dataset=dataset(),
                  processing_class=tiny_tokenizer())
    trainer.train()
    logs = [h for h in trainer.state.log_history if "mgs/conflict_frac" in h]
    assert len(logs) == len(seen) == 2  # one generation per step here
    for log, batch in zip(logs, seen):
        for d in trainer.surgery.domains:
            values = torch.tensor([v for dom, v, _ in batch if dom == d])
            key = f"mgs/reward/{d}/mean"
            if len(values):
                assert log[key] == pytest.approx(float(values.mean()), rel=1e-4, abs=1e-6)
                if len(values) > 1:
                    assert log[f"mgs/reward/{d}/std"] == pytest.approx(float(values.std()), rel=1e-4, abs=1e-6)
                assert log[f"mgs/completion_length/{d}"] > 0
            else:
                assert log.get(key) is None  # absent this step: NaN, shown as None by TRL


def test_docs_list_every_logged_metric(tmp_path):
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs"
    text = (docs / "metrics.md").read_text()
    adapter_doc = text.split("<!-- adapter-metrics:start -->")[1].split("<!-- adapter-metrics:end -->")[0]
    core_doc = text.split("<!-- metrics:start -->")[1].split("<!-- metrics:end -->")[0]
    cls = make_stub_mgs_trainer_class()
    args = MGSGRPOConfig(output_dir=str(tmp_path), max_steps=1, **COMMON)
    trainer = cls(model=tiny_model(), reward_funcs=[reward], args=args, train_dataset=dataset(), processing_class=tiny_tokenizer())
    trainer.train()
    emitted = {k for k in trainer.state.log_history[0] if k.startswith("mgs/")}
    kinds = set(trainer.surgery.group_kinds().values())

    def expand(keys):
        out = set()
        for key in keys:
            names = [key]
            if "{domain}" in key:
                names = [key.replace("{domain}", d) for d in trainer.surgery.domains]
            if "{kind}" in key:
                names = [n.replace("{kind}", k) for n in names for k in kinds]
            out |= set(names)
        return out

    core = {f"mgs/{k}" for k in expand(re.findall(r"^- `([^`]+)`", core_doc, flags=re.M)) if k != "nonfinite_flags"}
    adapter = expand(k for k, rest in re.findall(r"^- `([^`]+)`(.*)", adapter_doc, flags=re.M)
                     if not rest.startswith(": verl only"))
    assert emitted == core | adapter
