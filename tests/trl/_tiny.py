"""A tiny Qwen2 + char tokenizer built locally, stubbed generation, and a 3-domain prompt set."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config
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

        def _backward_by_domain(self, capture):
            self.__dict__.setdefault("domains_per_microbatch", []).append(len(capture.parts))
            super()._backward_by_domain(capture)

    return StubMGSGRPOTrainer


COMMON = dict(
    use_cpu=True, beta=0.0, report_to="none", save_strategy="no", logging_steps=1, seed=0,
    per_device_train_batch_size=8, num_generations=2, max_completion_length=8,
    optim="sgd", learning_rate=0.5, max_grad_norm=0.0, bf16=False, gradient_checkpointing=False,
    dataloader_num_workers=0, disable_tqdm=True,
)
