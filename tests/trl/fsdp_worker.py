"""The FSDP2 matrix of ``test_fsdp2.py``, in one launch per world size.

At 2 ranks (started with ``torch.distributed.run``'s environment; gloo, CPU): accelerate's own FSDP2 preparation (through the
test-only shim :mod:`_fsdp_cpu`), stock ``GRPOTrainer`` against ``MGSGRPOTrainer(surgery="none")`` over a loss-type ×
gradient-accumulation matrix, modular surgery on a batch laid out so that a domain sits on one rank only and a rank
lacks a domain, and save/resume. As a plain process (``WORLD_SIZE`` unset): the one-process references of the same
global batch. Writes what the parent test compares to ``$OUT_DIR/world{N}_rank{R}.pt``.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _fsdp_cpu import FSDP_CONFIG, assert_prepared_by_accelerate, enable_fsdp2_on_cpu  # noqa: E402

WORLD = int(os.environ.get("WORLD_SIZE", "1"))
if WORLD > 1:
    enable_fsdp2_on_cpu()

import torch  # noqa: E402
from _tiny import CHARS, COMMON, StubGRPOTrainer, dataset, reward, tiny_model, tiny_tokenizer  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import GRPOConfig  # noqa: E402

from trl_mgs import MGSGRPOConfig, MGSGRPOTrainer  # noqa: E402

RANK = int(os.environ.get("RANK", "0"))
FSDP = {"fsdp": True, "fsdp_config": dict(FSDP_CONFIG), "ddp_timeout": 90} if WORLD > 1 else {}
"""The FSDP2 settings; ``ddp_timeout``: a collective one rank never joins raises after 90 s instead of 30 min."""

NONE_CASES = [("grpo", 1), ("grpo", 2), ("dapo", 1), ("dapo", 2), ("bnpo", 1), ("bnpo", 2)]
"""(loss_type, gradient_accumulation_steps) of the surgery="none" ≡ stock matrix."""

MODULAR_CASES = [("grpo", True), ("dapo", False)]
"""(loss_type, order_by_domain) of the modular 2 ranks ≡ 1 process runs (bnpo's normaliser is per micro-batch, so its
2-rank and 1-process runs differ for stock too)."""

# Rows of the modular runs, in sampler order (shuffle_dataset=False): 8 prompts per step, the first 4 on rank 0 (each
# rank's generation batch, 4 prompts x 2 generations, is one optimizer step of 2 micro-batches of 4 rows).
LAYOUT = [
    ["math", "math", "math", "math", "chat", "code", "chat", "code"],  # math on rank 0 only; chat, code on rank 1 only
    ["math", "chat", "math", "chat", "chat", "math", "math", "chat"],  # no code on any rank
    ["code", "math", "chat", "code", "math", "chat", "code", "math"],  # every domain on both ranks
]


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


class FullGradRecorder(TrainerCallback):
    """Pre-optimizer-step gradients, unsharded (a collective per parameter, in the same order on every rank)."""

    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: _full(p.grad) for n, p in model.named_parameters() if p.grad is not None})


class PromptStub:
    """Completions that depend on the prompt and the generation's index in its group only, so that the 2-rank and
    the 1-process runs of the same global batch generate the same completions."""

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        out = []
        for i, p in enumerate(prompt_ids):
            g = i % self.num_generations
            out.append([3 + (sum(p) * 7 + 5 * g + 11 * j) % len(CHARS) for j in range(1 + (sum(p) + 3 * g) % 6)] + [1])
        return out, None


def _recording(base):
    class Recording(base):
        """Records, per generation batch, this rank's domain ids, and per micro-batch its passes and padding passes."""

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            if "mgs_domain_ids" in output and self.model.training:
                self.__dict__.setdefault("local_domains", []).append(output["mgs_domain_ids"].tolist())
            return output

        def _backward_by_domain(self, capture, model=None, next_domain=None):
            parts = [(p.domain, bool(p.padding)) for p in capture.parts]
            self.__dict__.setdefault("passes", []).append(parts)
            if next_domain is not None and next_domain == parts[-1][0]:  # the last pass holds its gradient back
                self.__dict__.setdefault("deferred", []).append(len(self.passes) - 1)
            super()._backward_by_domain(capture, model, next_domain)

    return Recording


STUB_MGS = _recording(type("StubMGS", (StubGRPOTrainer.__mro__[1], MGSGRPOTrainer), {}))
PROMPT_MGS = _recording(type("PromptMGS", (PromptStub, MGSGRPOTrainer), {}))


def layout_dataset() -> Dataset:
    rows = [{"prompt": f"step {s} item {i} {d}", "domain": d} for s, step in enumerate(LAYOUT) for i, d in enumerate(step)]
    return Dataset.from_list(rows)


def lora_config():
    import peft

    return peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def saved_tiny_model(out: str) -> str:
    """The tiny model as a folder (each rank writes its own copy, the same weights): with beta > 0 TRL loads the
    reference model from the policy's path."""
    path = f"{out}/tiny_model_rank{RANK}"
    if not os.path.isdir(path):
        tiny_model().save_pretrained(path)
    return path


def train(cls, config_cls, out, data, steps=3, resume=None, peft_config=None, model=None, **kw):
    settings = COMMON | FSDP | {"per_device_train_batch_size": 4 * 2 // WORLD, "max_steps": steps} | kw
    if model is not None:
        settings["model_init_kwargs"] = {"attn_implementation": "eager", "dtype": torch.float32}
    args = config_cls(output_dir=out, **settings)
    recorder = FullGradRecorder()
    trainer = cls(model=model if model is not None else tiny_model(), reward_funcs=[reward], args=args, train_dataset=data,
                  processing_class=tiny_tokenizer(), callbacks=[recorder], peft_config=peft_config)
    trainer.train(resume_from_checkpoint=resume)
    if WORLD > 1:
        assert_prepared_by_accelerate(trainer)
    params = {n: _full(p) for n, p in trainer.model.named_parameters()}
    stats = [{k: v for k, v in h.items() if k.startswith("mgs/")} for h in trainer.state.log_history if "mgs/conflict_frac" in h]
    from torch.distributed.fsdp import FSDPModule

    ref = getattr(trainer, "ref_model", None)
    return {"grads": recorder.grads, "params": params, "stats": stats, "passes": getattr(trainer, "passes", []),
            "ref_fsdp2": None if ref is None else isinstance(ref, FSDPModule),
            "local_domains": getattr(trainer, "local_domains", []), "deferred": getattr(trainer, "deferred", []),
            "surgery": None if getattr(trainer, "surgery", None) is None else trainer.surgery.state_dict()}


def main() -> None:
    out = os.environ["OUT_DIR"]
    started = time.perf_counter()
    results: dict = {"timings": {}}

    def timed(name, fn):
        t = time.perf_counter()
        results[name] = fn()
        results["timings"][name] = time.perf_counter() - t

    modular = dict(shuffle_dataset=False, gradient_accumulation_steps=2, surgery="modular")
    for loss_type, ordered in MODULAR_CASES:
        timed(f"modular_{loss_type}", lambda: train(PROMPT_MGS, MGSGRPOConfig, f"{out}/modular_{loss_type}",
                                                    layout_dataset(), loss_type=loss_type, order_by_domain=ordered,
                                                    **modular))

    timed("modular_lora", lambda: train(PROMPT_MGS, MGSGRPOConfig, f"{out}/modular_lora", layout_dataset(),
                                       peft_config=lora_config(), learning_rate=0.1, **modular))

    if WORLD > 1:
        for loss_type, ga in NONE_CASES:
            kw = dict(loss_type=loss_type, gradient_accumulation_steps=ga)
            timed(f"stock_{loss_type}_{ga}", lambda: train(StubGRPOTrainer, GRPOConfig, f"{out}/stock_{loss_type}_{ga}",
                                                           dataset(), **kw))
            timed(f"none_{loss_type}_{ga}", lambda: train(STUB_MGS, MGSGRPOConfig, f"{out}/none_{loss_type}_{ga}",
                                                          dataset(), surgery="none", **kw))

        # a reference model (beta > 0): TRL's own prepare_fsdp shards it; the MGS trainer leaves that path alone
        path = saved_tiny_model(out)
        timed("stock_beta", lambda: train(StubGRPOTrainer, GRPOConfig, f"{out}/stock_beta", dataset(), model=path,
                                          beta=0.04))
        timed("none_beta", lambda: train(STUB_MGS, MGSGRPOConfig, f"{out}/none_beta", dataset(), model=path,
                                         surgery="none", beta=0.04))
        timed("modular_beta", lambda: train(STUB_MGS, MGSGRPOConfig, f"{out}/modular_beta", dataset(), model=path,
                                            surgery="modular", beta=0.04))

        resume = dict(surgery="modular", surgery_gram_ema=0.5, learning_rate=0.2, lr_scheduler_type="constant",
                      gradient_accumulation_steps=2, save_strategy="steps", save_steps=2)
        timed("straight", lambda: train(STUB_MGS, MGSGRPOConfig, f"{out}/straight", dataset(), steps=4, **resume))
        timed("first", lambda: train(STUB_MGS, MGSGRPOConfig, f"{out}/resumed", dataset(), steps=2, **resume))
        timed("resumed", lambda: train(STUB_MGS, MGSGRPOConfig, f"{out}/resumed", dataset(), steps=4,
                                       resume=f"{out}/resumed/checkpoint-2", **resume))
        results["checkpoint_files"] = sorted(os.listdir(f"{out}/resumed/checkpoint-2"))

    results["timings"]["total"] = time.perf_counter() - started
    torch.save(results, f"{out}/world{WORLD}_rank{RANK}.pt")


if __name__ == "__main__":
    main()
