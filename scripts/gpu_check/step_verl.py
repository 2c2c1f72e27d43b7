"""Step 4 of the GPU check: verl 0.9.1's FSDP2 engine at world size 1, stock against the MGS engine.

Packed sequences (``use_remove_padding=true``, SDPA attention), gradient checkpointing and bf16 mixed
precision (param bf16, reduce and buffers fp32), as the recipes run. One process builds four actors from
verl's own hydra config (no Ray, no rollout; :mod:`ray_standin` serves verl's module-level Ray imports and
fails on any call): stock, stock in fp32 (the reference that measures bf16's own noise), and MGS with
``surgery=none`` and ``modular``. The learning rate is 0, so every update starts from the same weights;
each actor's first timed update records its pre-clip gradients (verl's ``optimizer_step`` clips, then
steps). Checks: none ≡ stock within :func:`common.tolerance`; modular runs with finite gradients; no call
into Ray. Reports the median update time of each actor and its ratio to stock.

``--smoke``: a tiny model on the CPU (gloo, verl's platform shimmed as in the verl tests), fp32.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import ray_standin  # noqa: E402

DOMAINS = ("chat", "code", "math")
MGS_TARGET = "actor_rollout_ref.actor.fsdp_config._target_=verl_mgs.config.MGSFSDPEngineConfig"
PRECISION = "+actor_rollout_ref.actor.fsdp_config.mixed_precision={{param_dtype:{0},reduce_dtype:fp32,buffer_dtype:fp32}}"


def parse(rest, smoke: bool) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", type=int, default=16 if smoke else 1024)
    p.add_argument("--layers", type=int, default=2 if smoke else 12)
    p.add_argument("--batch", type=int, default=12 if smoke else 48, help="rows per update (one mini-batch)")
    p.add_argument("--micro", type=int, default=4 if smoke else 8, help="ppo_micro_batch_size_per_gpu")
    p.add_argument("--prompt-len", type=int, default=6 if smoke else 64)
    p.add_argument("--response-len", type=int, default=7 if smoke else 192)
    p.add_argument("--updates", type=int, default=1 if smoke else 3, help="timed updates per actor (after one warm-up)")
    return p.parse_args(rest)


def write_model(path: Path, hidden: int, layers: int) -> int:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from mgs_tools.toy import CHARS, char_tokenizer

    tokenizer = char_tokenizer(CHARS)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=max(2, hidden // 128), num_key_value_heads=max(1, hidden // 512),
        max_position_embeddings=1024, pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # bf16-representable weights, so the fp32 reference runs on exactly the weights bf16 stock sees
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def compose(model_path: str, a, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import verl

    base = [
        f"actor_rollout_ref.model.path={model_path}",
        "actor_rollout_ref.model.use_remove_padding=true",
        "actor_rollout_ref.model.enable_gradient_checkpointing=true",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.ref.strategy=fsdp2",
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=false",
        "actor_rollout_ref.actor.use_torch_compile=false",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={a.batch}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={a.micro}",
        "actor_rollout_ref.actor.use_dynamic_bsz=false",
        "actor_rollout_ref.actor.optim.lr=0.0",
        "actor_rollout_ref.rollout.n=1",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={a.micro}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={a.micro}",
        "trainer.n_gpus_per_node=1",
        "trainer.nnodes=1",
        "trainer.use_v1=false",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer" / "config"), version_base=None):
        return hydra_compose(config_name="ppo_trainer", overrides=base + overrides)


def make_batch(a, seed: int, vocab: int):
    """A padded rollout batch after advantages (left-padded prompts, right-padded responses, mixed domains)."""
    import numpy as np
    import torch
    from verl.protocol import DataProto

    g = torch.Generator().manual_seed(seed)
    n, pl_max, rl_max = a.batch, a.prompt_len, a.response_len
    prompts = torch.zeros(n, pl_max, dtype=torch.long)
    responses = torch.zeros(n, rl_max, dtype=torch.long)
    p_mask = torch.zeros(n, pl_max, dtype=torch.long)
    r_mask = torch.zeros(n, rl_max, dtype=torch.long)
    for i in range(n):
        pl = int(torch.randint(2, pl_max + 1, (1,), generator=g))
        rl = int(torch.randint(1, rl_max + 1, (1,), generator=g))
        prompts[i, pl_max - pl:] = torch.randint(3, vocab, (pl,), generator=g)
        p_mask[i, pl_max - pl:] = 1
        responses[i, :rl] = torch.randint(3, vocab, (rl,), generator=g)
        r_mask[i, :rl] = 1
    attention_mask = torch.cat([p_mask, r_mask], dim=1)
    order = torch.randperm(n, generator=g).tolist()
    labels = np.array([DOMAINS[order[i] % len(DOMAINS)] for i in range(n)], dtype=object)
    scores = torch.randn(n, generator=g)
    tensors = {
        "prompts": prompts, "responses": responses, "input_ids": torch.cat([prompts, responses], dim=1),
        "attention_mask": attention_mask, "position_ids": (attention_mask.cumsum(1) - 1).clamp(min=0),
        "response_mask": r_mask,
        "old_log_probs": (-float(np.log(vocab)) + 0.1 * torch.randn(n, rl_max, generator=g)) * r_mask,
        "advantages": scores[:, None] * r_mask,
    }
    return DataProto.from_dict(tensors=tensors, non_tensors={"data_source": labels}, meta_info={})


def actor_input(batch, cfg):
    """The driver's ``RayPPOTrainer._update_actor`` up to the worker call, then the DP=1 dispatch."""
    from verl.protocol import BatchData
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    actor = cfg.actor_rollout_ref.actor
    batch.meta_info["multi_turn"] = False
    batch.meta_info["temperature"] = cfg.actor_rollout_ref.rollout.temperature
    td = left_right_2_no_padding(batch.to_tensordict())
    mini = actor.ppo_mini_batch_size
    tu.assign_non_tensor(td, calculate_entropy=False, distillation_use_topk=False, distillation_only=False,
                         global_batch_size=mini, mini_batch_size=mini, epochs=actor.ppo_epochs,
                         seed=actor.data_loader_seed, dataloader_kwargs={"shuffle": actor.shuffle}, compute_loss=True)
    return BatchData(td).chunk(chunks=1)[0].unlock_()


def record_first_pre_clip_grads(engine, armed: list[bool]) -> dict:
    """Wrap ``engine.optimizer_step`` (clip, then step): while ``armed[0]``, keep a copy of every gradient."""
    store: dict = {}
    original = engine.optimizer_step

    def optimizer_step():
        if armed[0] and not store:
            for name, p in engine.module.named_parameters():
                if p.grad is not None:
                    g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                    store[name] = g.detach().float().clone()
        return original()

    engine.optimizer_step = optimizer_step
    return store


def run(args, rest) -> dict:
    a = parse(rest, args.smoke)
    device = "cpu" if args.smoke else args.device
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return common.skipped("no CUDA device (torch.cuda.is_available() is False)")
    reason = common.missing("transformers", "hydra", "tensordict")
    if reason:
        return common.skipped(reason)
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__) >= Version("5.11"):
        return common.skipped(f"verl 0.9.1 needs transformers < 5.11, found {transformers.__version__}: "
                              "carry the transformers 5.10 wheel (.whl/verl, see docs/gpu.md)")
    ray_standin.install()  # before anything imports verl
    reason = common.missing("verl", "verl_mgs")
    if reason:
        return common.skipped(reason)
    return _run(a, device, args.smoke)


def _run(a, device: str, smoke: bool) -> dict:
    import tempfile
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VERL_USE_EXTERNAL_PLUGINS", "none")
    if device == "cpu":
        sys.path.insert(0, str(common.ROOT / "tests" / "verl_adapter"))
        import _cpu  # the verl tests' CPU platform: device "cpu", gloo

        _cpu.install()
    tmp = Path(tempfile.mkdtemp(prefix="mgs_gpu_check_verl_"))
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT="0")
    if device != "cpu":
        torch.cuda.set_device(0)
    dist.init_process_group("gloo" if device == "cpu" else "nccl", init_method=f"file://{tmp / 'store'}", rank=0,
                            world_size=1, timeout=timedelta(seconds=300))
    try:
        return _compare(a, device, smoke, tmp)
    finally:
        dist.destroy_process_group()


def _compare(a, device: str, smoke: bool, tmp: Path) -> dict:
    import math

    import torch
    from verl.workers.engine_workers import ActorRolloutRefWorker

    import verl_mgs  # noqa: F401 - verl 0.9.1 next to trl >= 1.0 (the compatibility fix), before any model builds
    from mgs_tools.toy import CHARS

    model_path = tmp / "model"
    params = write_model(model_path, a.hidden, a.layers)
    vocab = len(CHARS) + 3
    dtype = "fp32" if smoke else "bf16"
    arms = {  # a plain FSDPEngineConfig gets verl's own engine class (checked below), MGSFSDPEngineConfig the MGS one
        "stock": [PRECISION.format(dtype)],
        "stock_fp32": [PRECISION.format("fp32")],
        "none": [PRECISION.format(dtype), MGS_TARGET, "+actor_rollout_ref.actor.fsdp_config.surgery=none"],
        "modular": [PRECISION.format(dtype), MGS_TARGET, "+actor_rollout_ref.actor.fsdp_config.surgery=modular"],
    }
    workers, cfgs, records, armed = {}, {}, {}, [False]
    with common.Stopwatch(device) as build:
        for name, overrides in arms.items():
            cfgs[name] = compose(str(model_path), a, overrides)
            worker = ActorRolloutRefWorker(cfgs[name].actor_rollout_ref, role="actor")
            worker.init_model()
            workers[name] = worker
            records[name] = record_first_pre_clip_grads(worker.actor.engine, armed)
    engines = {name: type(w.actor.engine).__name__ for name, w in workers.items()}

    times: dict[str, list[float]] = {name: [] for name in arms}
    losses: dict[str, float] = {}
    from verl.utils import tensordict_utils as tu

    for update in range(a.updates + 1):  # update 0 warms up (not timed, nothing recorded)
        armed[0] = update == 1
        order = list(arms)[update % len(arms):] + list(arms)[:update % len(arms)]
        for name in order:
            td = actor_input(make_batch(a, seed=update, vocab=vocab), cfgs[name])
            with common.Stopwatch(device) as sw:
                out = workers[name].update_actor(td)
            if update:
                times[name].append(sw.seconds)
            if update == 1:
                losses[name] = float(tu.get(out, "metrics")["loss"][0])
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None

    noise = common.rel(records["stock"], records["stock_fp32"])
    none_err = common.rel(records["none"], records["stock"])
    tol, tol_text = common.tolerance(noise, fp32=dtype == "fp32")
    modular_finite = all(bool(torch.isfinite(g).all()) for g in records["modular"].values())
    modular_norm = math.sqrt(sum(float(g.double().square().sum()) for g in records["modular"].values()))
    med = {name: common.median_ms(t) for name, t in times.items()}
    ray = ray_standin.report()
    result = {
        "device": device, "params": params, "dtype": dtype, "hidden": a.hidden, "layers": a.layers,
        "rows_per_update": a.batch, "micro_batch": a.micro, "prompt_len_max": a.prompt_len,
        "response_len_max": a.response_len, "use_remove_padding": True, "gradient_checkpointing": True,
        "attn_implementation": "sdpa", "engines": engines, "build_s": build.seconds,
        "update_ms": med, "update_ms_all": {k: [t * 1e3 for t in v] for k, v in times.items()},
        "time_ratio_vs_stock": {k: (v / med["stock"] if v and med["stock"] else None) for k, v in med.items()},
        "peak_mib_all_actors": None if peak is None else peak / 2**20,
        "losses": losses,
        "rel_none_vs_stock": none_err, "rel_stock_vs_fp32": noise, "tolerance": tol, "tolerance_rule": tol_text,
        "rel_modular_vs_stock": common.rel(records["modular"], records["stock"]),
        "ray_standin": ray,
    }
    checks = [
        ("stock actors run verl's own FSDP engine", all(engines[k].startswith("FSDPEngine") for k in ("stock", "stock_fp32")),
         f"{engines['stock']}, {engines['stock_fp32']}"),
        ("MGS actors run MGSFSDPEngine", engines["none"] == engines["modular"] == "MGSFSDPEngine",
         f"{engines['none']}, {engines['modular']}"),
        ("none == stock pre-clip gradients", none_err <= tol, f"rel {none_err:.2e} <= {tol:.2e}"),
        ("modular gradients finite and non-zero", modular_finite and modular_norm > 0, f"norm {modular_norm:.3e}"),
        ("no call into Ray", not ray["called"], ", ".join(ray["called"]) or "none"),
    ]
    return common.finish(result, checks)


if __name__ == "__main__":
    sys.exit(common.run_step(run))
