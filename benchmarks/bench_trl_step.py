"""Step time and peak memory of ``MGSGRPOTrainer`` against stock ``GRPOTrainer``, side by side in one run.

Each arm trains a few optimizer steps in its own subprocess (so peak memory is that arm's alone); arms run
round-robin, ``--rounds`` times, so machine noise hits them alike. Generation is stubbed with fixed
completions by default (``--generate`` uses real sampling): the numbers are then the training step itself,
where surgery's cost lives, not diluted by decoding.

    python benchmarks/bench_trl_step.py                    # CPU, K = 3, the demo-sized model
    python benchmarks/bench_trl_step.py --device cuda --hidden 1024 --layers 8

Prints, per arm: median step time, throughput relative to stock, and peak memory (CPU: the process's peak
RSS; CUDA: ``torch.cuda.max_memory_allocated``) relative to stock.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ARMS = {
    "stock": {},
    "none": {"surgery": "none"},
    "modular": {"surgery": "modular", "surgery_granularity": "parameter"},
    "global": {"surgery": "global"},
}


def _worker(spec: dict) -> dict:
    """Train ``spec['steps']`` steps of one arm; return the step times and the peak memory."""
    import resource

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Qwen2Config, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from mgs_tools.toy import CHARS, char_tokenizer
    from trl_mgs import MGSGRPOConfig, MGSGRPOTrainer

    torch.manual_seed(0)
    tokenizer = char_tokenizer()
    chars = CHARS
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=spec["hidden"], intermediate_size=4 * spec["hidden"],
        num_hidden_layers=spec["layers"], num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    domains = [f"d{k}" for k in range(spec["domains"])]
    rows = [{"prompt": f"task {d} item {i} : {i * 7919 % 1000}", "domain": d} for i in range(64) for d in domains]
    dataset = Dataset.from_list(rows)
    length = spec["completion_length"]

    def reward(completions, domain, **kwargs):  # differs by domain, so the domains' gradients differ
        return [float(sum(c == "abc"[int(d[1:]) % 3] for c in text)) for text, d in zip(completions, domain)]

    class StubGeneration:
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            return [[3 + (sum(p) * 7 + 5 * i + 11 * j) % len(chars) for j in range(length // 2 + (sum(p) + i) % (length // 2))]
                    + [1] for i, p in enumerate(prompt_ids)], None

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            if spec["device"] == "cuda":
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if spec["device"] == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.start)

    arm = ARMS[spec["arm"]]
    stock = spec["arm"] == "stock"
    base = GRPOTrainer if stock else MGSGRPOTrainer
    cls = base if spec["generate"] else type("Stubbed", (StubGeneration, base), {})
    common = dict(
        output_dir=spec["out"], max_steps=spec["steps"], use_cpu=spec["device"] == "cpu", beta=0.0, report_to="none",
        save_strategy="no", logging_steps=1, seed=0, per_device_train_batch_size=spec["batch"],
        gradient_accumulation_steps=spec["grad_accum"], num_generations=spec["generations"],
        max_completion_length=length, learning_rate=1e-5, bf16=spec["bf16"], gradient_checkpointing=spec["checkpointing"],
        disable_tqdm=True, dataloader_num_workers=0,
    )
    args = GRPOConfig(**common) if stock else MGSGRPOConfig(**common, **arm)
    timer = Timer()
    trainer = cls(model=model, reward_funcs=[reward], args=args, train_dataset=dataset, processing_class=tokenizer,
                  callbacks=[timer])
    if spec["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    if spec["device"] == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    params = sum(p.numel() for p in model.parameters())
    return {"times": timer.times, "peak": peak, "params": params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default="stock,none,modular", help=f"comma-separated, from {list(ARMS)}")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--domains", type=int, default=3)
    parser.add_argument("--batch", type=int, default=24, help="per-device batch (completions per micro-batch)")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--completion-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per arm and round (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    parser.add_argument("--generate", action="store_true", help="real sampling instead of stubbed completions")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown or "stock" not in arms:
        parser.error(f"--arms must include 'stock' and come from {list(ARMS)}; got {arms}")
    times: dict[str, list[float]] = {a: [] for a in arms}
    peaks: dict[str, list[int]] = {a: [] for a in arms}
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    params = 0
    for r in range(args.rounds):
        for arm in arms:
            spec = {k: v for k, v in vars(args).items() if k not in ("arms", "rounds", "worker")}
            spec.update(arm=arm, out=f"/tmp/bench_trl_step/{arm}")
            result = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                                    capture_output=True, text=True)
            if result.returncode != 0:
                sys.exit(f"arm {arm} failed:\n{result.stderr[-3000:]}")
            out = json.loads(result.stdout.strip().splitlines()[-1])
            times[arm] += out["times"][1:]  # the first step warms up allocators and caches
            peaks[arm].append(out["peak"])
            params = out["params"]
    print(f"{params / 1e6:.2f}M params, K={args.domains}, batch {args.batch} x grad-accum {args.grad_accum}, "
          f"completions <= {args.completion_length} tokens, device {args.device}, bf16={args.bf16}, "
          f"checkpointing={args.checkpointing}, generation {'real' if args.generate else 'stubbed'}; "
          f"{args.rounds} rounds x {args.steps - 1} timed steps per arm")
    base_time = statistics.median(times["stock"])
    base_peak = min(peaks["stock"])
    print(f"{'arm':<10}{'median step ms':>16}{'throughput vs stock':>22}{'peak MiB':>12}{'peak vs stock':>16}")
    for arm in arms:
        t, peak = statistics.median(times[arm]), min(peaks[arm])
        print(f"{arm:<10}{t * 1e3:>16.1f}{base_time / t:>21.2f}x{peak / 2**20:>12.0f}{peak / base_peak:>15.2f}x")


if __name__ == "__main__":
    main()
