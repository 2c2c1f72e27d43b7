"""Step time and peak memory of ``MGSGRPOTrainer`` against stock ``GRPOTrainer``, side by side in one run.

Each arm trains a few optimizer steps in its own subprocess (so peak memory is that arm's alone); arms run
round-robin, ``--rounds`` times, so machine noise hits them alike. Generation is stubbed with fixed
completions by default (``--generate`` uses real sampling): the numbers are then the training step itself,
where surgery's cost lives, not diluted by decoding.

    python benchmarks/bench_trl_step.py                    # CPU, K = 3, the demo-sized model
    python benchmarks/bench_trl_step.py --device cuda --hidden 1024 --layers 8

Prints, per arm: median step time, throughput relative to stock, and peak memory (CPU: the process's peak
RSS; CUDA: ``torch.cuda.max_memory_allocated``) relative to stock.

Two processes (``--nproc 2``): each arm runs under ``torch.distributed.run`` (gloo on CPU, NCCL on CUDA), under DDP
and under FSDP2 (``--backends``), and the table adds the bytes each rank sends into collectives per optimizer step,
by kind: every ``torch.distributed`` collective is wrapped to count its input bytes (DDP's reducer is routed
through its default all-reduce comm hook so that its buckets are counted too). On CPU, accelerate builds DDP when
asked for FSDP, so the FSDP2 runs go through the test shim ``tests/trl/_fsdp_cpu.py`` (accelerate's own FSDP2
preparation, asserted on the model).

    python benchmarks/bench_trl_step.py --nproc 2 --grad-accum 3 --batch 8     # DDP and FSDP2, CPU, K = 3
    python benchmarks/bench_trl_step.py --nproc 2 --device cuda --hidden 1024 --layers 8
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
    "mixed": {"surgery": "modular", "order_by_domain": False},  # modular on TRL's shuffled (domain-mixed) micro-batches
}

COLLECTIVES = ("all_reduce", "reduce_scatter_single", "all_gather_single", "reduce_scatter_tensor",
               "all_gather_into_tensor", "broadcast", "all_gather", "all_gather_object", "reduce_scatter")
"""The ``torch.distributed`` functions counted (FSDP2 calls the ``*_single`` ones; the core and DDP's comm hook
call ``all_reduce``)."""


def _count_collectives(counter: dict) -> None:
    """Wrap every collective of :data:`COLLECTIVES` to add its input's bytes to ``counter[kind]``."""
    import torch
    import torch.distributed as dist

    def nbytes(x) -> int:
        if isinstance(x, torch.Tensor):
            return x.numel() * x.element_size()
        if isinstance(x, (list, tuple)):
            return sum(nbytes(t) for t in x)
        return 0

    kinds = {"reduce_scatter_single": "reduce_scatter", "reduce_scatter_tensor": "reduce_scatter",
             "all_gather_single": "all_gather", "all_gather_into_tensor": "all_gather"}
    for name in COLLECTIVES:
        original = getattr(dist, name, None)
        if original is None:
            continue

        def counted(*args, _original=original, _kind=kinds.get(name, name), **kwargs):
            tensor = kwargs.get("input", kwargs.get("input_tensor", kwargs.get("tensor")))
            if tensor is None and args:
                tensor = args[1] if _kind in ("reduce_scatter", "all_gather") and len(args) > 1 else args[0]
            counter[_kind] = counter.get(_kind, 0) + nbytes(tensor)
            return _original(*args, **kwargs)

        setattr(dist, name, counted)


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
            if distributed and not per_step:  # DDP's reducer through its default comm hook, so its bytes count
                from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
                from torch.nn.parallel import DistributedDataParallel

                if isinstance(trainer.model_wrapped, DistributedDataParallel):
                    trainer.model_wrapped.register_comm_hook(None, allreduce_hook)
            counter.clear()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if spec["device"] == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.start)
            per_step.append(dict(counter))

    distributed = spec.get("backend") is not None
    counter: dict[str, int] = {}
    per_step: list[dict[str, int]] = []
    if distributed:
        _count_collectives(counter)
        if spec["backend"] == "fsdp2" and spec["device"] == "cpu":
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "trl"))
            from _fsdp_cpu import enable_fsdp2_on_cpu

            enable_fsdp2_on_cpu()
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
    if distributed and spec["backend"] == "fsdp2":
        common.update(fsdp=True, fsdp_config={"version": 2, "reshard_after_forward": True,
                                              "auto_wrap_policy": "TRANSFORMER_BASED_WRAP"})
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
    if distributed:
        from torch.distributed.fsdp import FSDPModule

        if spec["backend"] == "fsdp2":  # accelerate's own FSDP2 preparation sharded the model
            assert trainer.accelerator.is_fsdp2 and isinstance(trainer.model, FSDPModule), type(trainer.model)
        params = sum(int(p.numel()) for p in trainer.model.parameters())  # DTensor numel is the global size
        peaks = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(peaks, peak)
        peak = max(peaks)
    return {"times": timer.times, "peak": peak, "params": params, "bytes": per_step[1:]}


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
    parser.add_argument("--nproc", type=int, default=1, help="processes per arm (2: DDP and FSDP2, with bytes)")
    parser.add_argument("--backends", default="ddp,fsdp2", help="with --nproc > 1: comma-separated, from ddp, fsdp2")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = _worker(json.loads(args.worker))
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result))
        return
    if args.nproc > 1:
        _main_distributed(parser, args)
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


def _run_arm(spec: dict, nproc: int, env: dict) -> dict:
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    if nproc > 1:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command[1:1] = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        sys.exit(f"arm {spec['arm']} ({spec.get('backend') or 'one process'}) failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _main_distributed(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every arm under every backend at ``--nproc`` processes, round-robin; a table per backend with the bytes."""
    arms, backends = args.arms.split(","), args.backends.split(",")
    if [a for a in arms if a not in ARMS] or "stock" not in arms:
        parser.error(f"--arms must include 'stock' and come from {list(ARMS)}; got {arms}")
    if [b for b in backends if b not in ("ddp", "fsdp2")]:
        parser.error(f"--backends must come from ddp, fsdp2; got {backends}")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    runs: dict = {(b, a): {"times": [], "peaks": [], "bytes": []} for b in backends for a in arms}
    params = 0
    for _ in range(args.rounds):
        for backend in backends:
            for arm in arms:
                spec = {k: v for k, v in vars(args).items() if k not in ("arms", "rounds", "worker", "nproc", "backends")}
                spec.update(arm=arm, backend=backend, out=f"/tmp/bench_trl_step/{backend}_{arm}")
                out = _run_arm(spec, args.nproc, env)
                runs[backend, arm]["times"] += out["times"][1:]
                runs[backend, arm]["peaks"].append(out["peak"])
                runs[backend, arm]["bytes"] += out["bytes"]
                params = out["params"]
    print(f"{params / 1e6:.2f}M params, K={args.domains}, {args.nproc} processes x batch {args.batch} x grad-accum "
          f"{args.grad_accum}, completions <= {args.completion_length} tokens, device {args.device}; generation "
          f"stubbed; {args.rounds} rounds x {args.steps - 1} timed steps per arm; MiB sent per rank per step")
    gradient = params * 4 / 2**20
    print(f"(fp32 gradient of the whole model: {gradient:.1f} MiB)")
    kinds = ("all_reduce", "reduce_scatter", "all_gather", "other")
    for backend in backends:
        print(f"\n{backend}")
        print(f"{'arm':<10}{'step ms':>9}{'vs stock':>10}{'peak MiB':>10}{'vs stock':>10}"
              + "".join(f"{k:>16}" for k in kinds) + f"{'total':>10}{'vs stock':>10}")
        base = runs[backend, "stock"]
        base_time, base_peak = statistics.median(base["times"]), max(base["peaks"])

        def mib(run, kind):
            steps = run["bytes"] or [{}]
            if kind == "other":
                return statistics.median(sum(v for k, v in b.items() if k not in kinds) for b in steps) / 2**20
            return statistics.median(b.get(kind, 0) for b in steps) / 2**20

        base_total = sum(mib(base, k) for k in kinds)
        for arm in arms:
            run = runs[backend, arm]
            t, peak = statistics.median(run["times"]), max(run["peaks"])
            total = sum(mib(run, k) for k in kinds)
            print(f"{arm:<10}{t * 1e3:>9.1f}{base_time / t:>9.2f}x{peak / 2**20:>10.0f}{peak / base_peak:>9.2f}x"
                  + "".join(f"{mib(run, k):>16.2f}" for k in kinds) + f"{total:>10.2f}{total / base_total:>9.2f}x")


if __name__ == "__main__":
    main()
