"""A tiny Qwen2 + char tokenizer built locally, stubbed generation, and a 3-domain prompt set."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config, TrainerCallback
from trl import GRPOTrainer

from mgs_tools.toy import char_tokenizer

CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 +-*=?:.,")
DOMAINS = ["chat", "code", "math"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return char_tokenizer(CHARS)


def tiny_model(seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(CHARS) + 3, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager")


def dataset(n_per_domain: int = 8) -> Dataset:
    rows = []
    for i in range(n_per_domain):
        rows.append({"prompt": f"what is {i}+{i % 3}?", "domain": "math"})
        rows.append({"prompt": f"hello number {i}", "domain": "chat"})
        rows.append({"prompt": f"def f{i}(x):", "domain": "code"})
    return Dataset.from_list(rows)


def reward(completions, domain, **kwargs) -> list[float]:
    """Rule rewards that differ by domain, so the domains' gradients differ."""
    out = []
    for text, d in zip(completions, domain):
        if d == "math":
            out.append(float(sum(c.isdigit() for c in text)))
        elif d == "chat":
            out.append(float(len(text) % 4))
        else:
            out.append(float(text.count("x") + text.count(":")))
    return out


class StubGeneration:
    """Deterministic completions of varied lengths (so normalisation bugs show), ending in EOS."""

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        vocab = len(CHARS)
        completions = []
        for i, p in enumerate(prompt_ids):
            length = 1 + (sum(p) + 3 * i) % 6
            completions.append([3 + (sum(p) * 7 + 5 * i + 11 * j) % vocab for j in range(length)] + [1])
        return completions, None


class StubGRPOTrainer(StubGeneration, GRPOTrainer):
    pass


def make_stub_mgs_trainer_class():
    from trl_mgs import MGSGRPOTrainer

    class StubMGSGRPOTrainer(StubGeneration, MGSGRPOTrainer):
        """Also records how many domains each micro-batch held (a test of the split needs mixed ones)."""

        domains_per_microbatch: list[int]

        def _backward_by_domain(self, capture, *args, **kwargs):
            self.__dict__.setdefault("domains_per_microbatch", []).append(len(capture.parts))
            super()._backward_by_domain(capture, *args, **kwargs)

    return StubMGSGRPOTrainer


COMMON = dict(
    use_cpu=True, beta=0.0, report_to="none", save_strategy="no", logging_steps=1, seed=0,
    per_device_train_batch_size=8, num_generations=2, max_completion_length=8,
    optim="sgd", learning_rate=0.5, max_grad_norm=0.0, bf16=False, gradient_checkpointing=False,
    dataloader_num_workers=0, disable_tqdm=True,
)


# ---------------------------------------------------------------------- tools and environments (TRL's own API)
TOOL_CHARS = [c for c in __import__("string").printable if c not in "\t\r\x0b\x0c"]
TOOL_CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'


def tool_tokenizer() -> PreTrainedTokenizerFast:
    """A character tokenizer with Qwen3's chat template (shipped by TRL), which TRL knows how to parse tool calls of;
    ``<|im_end|>`` is its EOS, as in Qwen."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from trl.chat_template_utils import qwen3_chat_template

    vocab = {"<pad>": 0, "<|im_end|>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(TOOL_CHARS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    out = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<|im_end|>", unk_token="<unk>")
    out.chat_template = qwen3_chat_template
    return out


def tool_model(seed: int = 0):
    """The tiny Qwen2 over :data:`TOOL_CHARS`, with room for prompts that carry tool schemas."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(TOOL_CHARS) + 3, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
        pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")


class StubToolGeneration:
    """Every other rollout's first turn calls the ``add`` tool; every other turn answers with a few characters."""

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        completions = []
        for i, p in enumerate(prompt_ids):
            after_tool = "<tool_response>" in self.processing_class.decode(p)
            text = TOOL_CALL if i % 2 == 0 and not after_tool else "ok" + "x" * ((sum(p) + i) % 4)
            completions.append(self.processing_class.encode(text) + [self.processing_class.eos_token_id])
        return completions, None


class StubToolGRPOTrainer(StubToolGeneration, GRPOTrainer):
    pass


def make_stub_tool_mgs_trainer_class():
    from trl_mgs import MGSGRPOTrainer

    class StubToolMGSGRPOTrainer(StubToolGeneration, MGSGRPOTrainer):
        """Also records how many tool-result tokens (tool_mask 0) each generation batch held."""

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            tool_mask = output.get("tool_mask")
            masked = 0 if tool_mask is None else int(((tool_mask == 0) & (output["completion_mask"] == 1)).sum())
            self.__dict__.setdefault("tool_tokens", []).append(masked)
            return output

        def _backward_by_domain(self, capture, *args, **kwargs):
            self.__dict__.setdefault("domains_per_microbatch", []).append(len(capture.parts))
            super()._backward_by_domain(capture, *args, **kwargs)

    return StubToolMGSGRPOTrainer


ENV_DOMAINS = ["code", "math"]


class AddTool:
    """The tool the test environments offer (TRL reads its signature and docstring); counts its calls."""

    calls = 0

    def add(self, a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: The first.
            b: The second.

        Returns:
            The sum.
        """
        self.calls += 1
        return a + b


def math_code_environment(records: list, num_generations: int = 2):
    """An environment factory in TRL's API whose environment owns the data: ``reset()`` draws each prompt group's
    task (code or math, alternating) and sets ``self.domain``; the ``add`` tool counts its calls; ``get_reward`` scores
    the rollout from that state and appends ``(domain, reward)`` to ``records``."""
    count = [0]

    class MathCodeEnv(AddTool):
        def reset(self, **kwargs) -> str:
            self.domain = ENV_DOMAINS[(count[0] // num_generations) % 2]
            count[0] += 1
            self.calls = 0
            return f" {self.domain} task {count[0]}"

        def get_reward(self) -> float:
            reward = float(self.calls) + (0.5 if self.domain == "math" else -0.25)
            records.append((self.domain, reward))
            return reward

    return MathCodeEnv


class GradRecorder(TrainerCallback):
    """Pre-optimizer-step gradients (max_grad_norm=0 disables clipping, so they are pre-clip)."""

    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


def train_recording(trainer_cls, config_cls, out, *, reward_funcs=None, **settings):
    """Train the tiny model on :func:`dataset` with ``COMMON | settings``; return the trainer and its pre-clip gradients
    at every optimizer step."""
    args = config_cls(output_dir=str(out), **(COMMON | settings))
    recorder = GradRecorder()
    trainer = trainer_cls(model=tiny_model(), reward_funcs=reward_funcs or [reward], args=args, train_dataset=dataset(),
                          processing_class=tiny_tokenizer(), callbacks=[recorder])
    trainer.train()
    return trainer, recorder.grads


def assert_same_grads(grads: list[dict], reference: list[dict]) -> None:
    """Step by step, every gradient equals the reference's (1e-5 relative); the reference is not zero."""
    for step, (g, s) in enumerate(zip(grads, reference, strict=True)):
        assert sum(float(v.norm()) for v in s.values()) > 0
        for n in s:
            torch.testing.assert_close(g[n], s[n], rtol=1e-5, atol=1e-7, msg=f"step {step} {n}")


def launch_torchrun(worker, out, port: int, timeout: float = 300) -> None:
    """Run ``worker`` under ``torch.distributed.run`` at 2 CPU processes (one thread each, ``OUT_DIR=out``); a failing
    rank fails the test with the end of its output."""
    import subprocess
    import sys

    env = dict(os.environ, OUT_DIR=str(out), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), str(worker)],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
