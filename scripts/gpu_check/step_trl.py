"""Step 3 of the GPU check: a TRL GRPO step, stock ``GRPOTrainer`` against ``MGSGRPOTrainer``.

A Qwen2 of about 0.5B parameters built from its config (random weights, a character tokenizer; no hub),
in bf16, K = 3 domains, generation stubbed with fixed completions (so the time is the training step).
The arms run one after the other in this process: stock, stock in fp32 (one step, the reference that
measures bf16's own noise), MGS ``surgery="none"`` and ``"modular"``. Every arm records its gradients at
the first optimizer step (``max_grad_norm=0``: no clipping, so they are pre-clip), all from the same
weights and batch. Checks: none ≡ stock within :func:`common.tolerance`, modular finite. Reports each arm's
median step time (the first step is not timed) and, on CUDA, its peak allocated memory above what was
held before the arm started.

``--smoke``: a tiny model on the CPU in fp32, two steps per arm.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ARMS = {
    "stock": None,
    "stock_fp32": None,
    "none": {"surgery": "none"},
    "modular": {"surgery": "modular", "surgery_granularity": "parameter"},
}


def parse(rest, smoke: bool) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", type=int, default=16 if smoke else 1024)
    p.add_argument("--layers", type=int, default=2 if smoke else 32)
    p.add_argument("--batch", type=int, default=12 if smoke else 24, help="completions per micro-batch")
    p.add_argument("--generations", type=int, default=4 if smoke else 8)
    p.add_argument("--completion-length", type=int, default=8 if smoke else 128)
    p.add_argument("--steps", type=int, default=2 if smoke else 6, help="optimizer steps per arm (the first untimed)")
    return p.parse_args(rest)


def build_model(a, device: str, dtype):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from mgs_tools.toy import CHARS

    config = Qwen2Config(
        vocab_size=len(CHARS) + 3, hidden_size=a.hidden, intermediate_size=4 * a.hidden, num_hidden_layers=a.layers,
        num_attention_heads=max(2, a.hidden // 128), num_key_value_heads=max(1, a.hidden // 512),
        max_position_embeddings=1024, pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    # every arm starts from the same bf16-representable weights (the fp32 arm too)
    return model.to(torch.bfloat16).to(dtype)


def run(args, rest) -> dict:
    a = parse(rest, args.smoke)
    device = "cpu" if args.smoke else args.device
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return common.skipped("no CUDA device (torch.cuda.is_available() is False)")
    reason = common.missing("datasets", "trl", "trl_mgs")
    if reason:
        return common.skipped(reason)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return _run(a, device, args.smoke)


def _run(a, device: str, smoke: bool) -> dict:
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from mgs_tools.toy import CHARS, char_tokenizer
    from trl_mgs import MGSGRPOConfig, MGSGRPOTrainer

    cuda = device.startswith("cuda")
    tokenizer = char_tokenizer(CHARS)
    domains = ["d0", "d1", "d2"]
    rows = [{"prompt": f"task {d} item {i} : {i * 7919 % 1000}", "domain": d} for i in range(64) for d in domains]
    dataset = Dataset.from_list(rows)
    length = a.completion_length

    def reward(completions, domain, **kwargs):  # differs by domain and varies inside each group: K non-zero gradients
        return [float(sum(map(ord, text)) * (int(d[1:]) + 3) % 7) for text, d in zip(completions, domain)]

    class StubGeneration:
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            half = max(1, length // 2)
            return [[3 + (sum(p) * 7 + 5 * i + 11 * j) % len(CHARS) for j in range(half + (sum(p) + i) % half)] + [1]
                    for i, p in enumerate(prompt_ids)], None

    class Probe(TrainerCallback):
        """Step times (device-synchronised) and the gradients at the first optimizer step."""

        def __init__(self, model):
            self.model, self.times, self.grads, self.logs = model, [], {}, []

        def on_log(self, args, state, control, logs=None, **kw):
            self.logs.append(dict(logs or {}))

        def on_step_begin(self, args, state, control, **kw):
            self.watch = common.Stopwatch(device).__enter__()

        def on_pre_optimizer_step(self, args, state, control, **kw):
            if not self.grads:
                self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None}

        def on_step_end(self, args, state, control, **kw):
            self.watch.__exit__(None, None, None)
            self.times.append(self.watch.seconds)

    out_dir = tempfile.mkdtemp(prefix="mgs_gpu_check_trl_")
    results, grads = {}, {}
    low = torch.float32 if smoke else torch.bfloat16
    params = None
    for arm, surgery in ARMS.items():
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            held_before = torch.cuda.memory_allocated()
        dtype = torch.float32 if arm == "stock_fp32" else low
        model = build_model(a, device, dtype)
        params = sum(p.numel() for p in model.parameters())
        tensors = sum(1 for p in model.parameters() if p.requires_grad)
        common_args = dict(
            output_dir=f"{out_dir}/{arm}", max_steps=1 if arm == "stock_fp32" else a.steps, use_cpu=not cuda, beta=0.0,
            report_to="none", save_strategy="no", logging_steps=1, seed=0, per_device_train_batch_size=a.batch,
            gradient_accumulation_steps=1, num_generations=a.generations, max_completion_length=length,
            learning_rate=1e-5, max_grad_norm=0.0, bf16=dtype == torch.bfloat16, gradient_checkpointing=False,
            disable_tqdm=True, dataloader_num_workers=0,
        )
        base = GRPOTrainer if surgery is None else MGSGRPOTrainer
        cls = type(f"Stub{base.__name__}", (StubGeneration, base), {})
        targs = GRPOConfig(**common_args) if surgery is None else MGSGRPOConfig(**common_args, **surgery)
        probe = Probe(model)
        trainer = cls(model=model, reward_funcs=[reward], args=targs, train_dataset=dataset, processing_class=tokenizer,
                      callbacks=[probe])
        trainer.train()
        timed = probe.times[1:]
        results[arm] = {
            "step_ms": common.median_ms(timed), "step_ms_all": [t * 1e3 for t in probe.times],
            "peak_mib": (torch.cuda.max_memory_allocated() - held_before) / 2**20 if cuda else None,
            "trainer": type(trainer).__mro__[2].__name__,
        }
        grads[arm] = probe.grads
        if arm == "modular":
            first = next((log for log in probe.logs if any(k.startswith("mgs/grad_norm/") for k in log)), {})
            domain_norms = {d: first.get(f"mgs/grad_norm/{d}") for d in domains}
        del trainer, model, probe
    for arm in ("stock", "none", "modular"):
        stock_t, stock_p = results["stock"]["step_ms"], results["stock"]["peak_mib"]
        results[arm]["throughput_vs_stock"] = stock_t / results[arm]["step_ms"] if results[arm]["step_ms"] else None
        results[arm]["peak_vs_stock"] = results[arm]["peak_mib"] / stock_p if stock_p else None

    fp32 = low == torch.float32
    noise = common.rel(grads["stock"], grads["stock_fp32"])
    none_err = common.rel(grads["none"], grads["stock"])
    tol, tol_text = common.tolerance(noise, fp32=fp32)
    finite = all(bool(torch.isfinite(g).all()) for g in grads["modular"].values())
    norm = math.sqrt(sum(float(g.double().square().sum()) for g in grads["modular"].values()))
    result = {
        "device": device, "params": params, "dtype": "fp32" if fp32 else "bf16", "domains": 3,
        "hidden": a.hidden, "layers": a.layers, "batch": a.batch, "generations": a.generations,
        "completion_length_max": length, "steps": a.steps, "attn_implementation": "sdpa",
        "peak_note": None if cuda else "CPU: not measured (the arms share one process)",
        "arms": results, "domain_grad_norms": domain_norms, "rel_none_vs_stock": none_err, "rel_stock_vs_fp32": noise, "tolerance": tol,
        "tolerance_rule": tol_text, "rel_modular_vs_stock": common.rel(grads["modular"], grads["stock"]),
    }
    checks = [
        ("every parameter has a gradient in every arm", all(len(g) == tensors for g in grads.values()),
         f"{[len(g) for g in grads.values()]} of {tensors} tensors"),
        ("none == stock gradients at the first step", none_err <= tol, f"rel {none_err:.2e} <= {tol:.2e}"),
        ("modular gradients finite and non-zero", finite and norm > 0, f"norm {norm:.3e}"),
        ("every domain has a non-zero gradient (mgs/grad_norm/*)", all((v or 0) > 0 for v in domain_norms.values()),
         ", ".join(f"{d} {v}" for d, v in domain_norms.items())),
        ("every arm timed", all(r["step_ms"] for a_, r in results.items() if a_ != "stock_fp32"),
         ", ".join(f"{k} {v['step_ms']:.1f} ms" for k, v in results.items() if v["step_ms"])),
    ]
    return common.finish(result, checks)


if __name__ == "__main__":
    sys.exit(common.run_step(run))
