"""Toy multi-domain tasks and a tiny causal LM built locally: the CPU demo's and the tests' model and data.

Needs ``transformers``, ``tokenizers`` and ``datasets`` (the ``tools`` extra); ``import mgs_tools`` does not import it.

Every domain shares one prompt format and one input, a string of digits, and differs only in the
one-letter tag that names the transform (``c:4821=`` → ``4821``, ``r:4821=`` → ``1284``,
``s:4821=`` → ``1248``). A small model must share its weights between transforms that disagree on
most output positions, so the domains' gradients keep conflicting as training goes on.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from datasets import Dataset
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast, Qwen2Config

CHARS = list("0123456789abcdefghijklmnopqrstuvwxyz:=+-*., ")
"""The tokenizer's characters; ids 0-2 are <pad>, <eos>, <unk>."""

TRANSFORMS: dict[str, tuple[str, Callable[[str], str]]] = {
    "copy": ("c", lambda digits: digits),
    "reverse": ("r", lambda digits: digits[::-1]),
    "sort": ("s", lambda digits: "".join(sorted(digits))),
}
"""Domain name → (prompt tag, transform of the digit string)."""


def char_tokenizer(chars: Sequence[str] = CHARS) -> PreTrainedTokenizerFast:
    """A character-level tokenizer built with ``tokenizers`` (no download): ids 0-2 are <pad>, <eos>, <unk>,
    then ``chars`` in order."""
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def tiny_causal_lm(hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0) -> PreTrainedModel:
    """A Qwen2-architecture causal LM built from config with random weights (eager attention, fp32)."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(CHARS) + 3, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=64,
        pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def target(domain: str, digits: str) -> str:
    """The correct completion of ``domain``'s prompt for ``digits``."""
    if domain not in TRANSFORMS:
        raise ValueError(f"unknown toy domain {domain!r}; the toy domains are {sorted(TRANSFORMS)}.")
    return TRANSFORMS[domain][1](digits)


def prompt(domain: str, digits: str) -> str:
    return f"{TRANSFORMS[domain][0]}:{digits}="


def domain_rows(domain: str, n: int, length: int = 4, seed: int = 0) -> list[dict[str, str]]:
    """``n`` rows ``{"prompt", "completion", "digits"}`` for ``domain``, deterministic in ``(domain, seed)``."""
    rng = random.Random(f"{seed}:{domain}")
    rows = []
    for _ in range(n):
        digits = "".join(rng.choice("0123456789") for _ in range(length))
        rows.append({"prompt": prompt(domain, digits), "completion": target(domain, digits), "digits": digits})
    return rows


def sft_dataset(domains: list[str], n_per_domain: int, length: int = 4, seed: int = 0) -> Dataset:
    """Prompt-completion pairs of every domain (for TRL's ``SFTTrainer``), interleaved."""
    per_domain = [domain_rows(d, n_per_domain, length, seed) for d in domains]
    rows = [{"prompt": r["prompt"], "completion": r["completion"]} for group in zip(*per_domain) for r in group]
    return Dataset.from_list(rows)


def score(completion: str, expected: str) -> float:
    """Fraction of positions right, over the longer of the two strings: 1 only for the exact answer."""
    completion = completion.strip()
    if not expected:
        return float(not completion)
    right = sum(a == b for a, b in zip(completion, expected))
    return right / max(len(expected), len(completion))


def transform_reward(completions: list[str], domain: list[str], digits: list[str], **kwargs) -> list[float]:
    """TRL reward function: :func:`score` of each completion against its domain's transform of its digits."""
    return [score(c, target(d, x)) for c, d, x in zip(completions, domain, digits)]
