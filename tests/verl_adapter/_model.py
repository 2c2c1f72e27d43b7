"""The tiny model the verl tests train, written to disk as verl loads models (no verl import here)."""

from __future__ import annotations

from pathlib import Path

import torch

CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 +-*=?:.,")
PAD, EOS = 0, 1


def write_tiny_model(path: str | Path, seed: int = 0, hidden: int = 16, layers: int = 2) -> str:
    """A Qwen2 (2 layers, hidden 16 by default) and a char tokenizer, saved where verl's HFModelConfig loads them."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from mgs_tools.toy import char_tokenizer

    path = Path(path)
    if (path / "config.json").exists():
        return str(path)
    tokenizer = char_tokenizer(CHARS)  # <pad> = 0 = PAD, <eos> = 1 = EOS
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None, tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
