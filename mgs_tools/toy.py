"""Toy multi-domain tasks and a tiny causal LM built locally: the CPU demo's and the tests' model and data.

Needs ``transformers``, ``tokenizers`` and ``datasets`` (the ``tools`` extra); ``import mgs_tools`` does not import it.

Every domain shares one prompt format and one input, a string of digits, and differs only in the
one-letter tag that names the transform (``c:4821=`` → ``4821``, ``r:4821=`` → ``1284``,
``s:4821=`` → ``1248``). A small model must share its weights between transforms that disagree on
most output positions, so the domains' gradients keep conflicting as training goes on.

Command line (the inputs of docs/diagnose.md's worked examples): ``python -m mgs_tools.toy train --out DIR`` saves a
toy model trained on every domain (:func:`train_toy`); ``python -m mgs_tools.toy sample --model DIR --out FILE.jsonl``
writes GRPO-style rows, sampled completions with group-normalised advantages (:func:`grpo_rows`);
``python -m mgs_tools.toy sequential --out DIR`` saves a toy base and its checkpoint after each of a sequence of
single-domain fine-tuning phases (:func:`train_phases`; the input of ``mgs-forgetting``).
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


# -- a trained toy model and GRPO-style rows: the worked examples of docs/diagnose.md ------------------------------


def train_toy(steps: int = 300, *, seed: int = 0, batch_size: int = 32, learning_rate: float = 3e-3,
              rows_per_domain: int = 512) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """:func:`tiny_causal_lm` trained with AdamW on the completions of every toy domain (random batches of
    ``batch_size`` rows from ``rows_per_domain`` rows per domain, ``domain_rows(..., seed=1)``), so that the
    domains have something to disagree about. Returns the model (eval mode) and :func:`char_tokenizer`."""
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1; got steps={steps}, batch_size={batch_size}.")
    torch.manual_seed(seed)
    model, tokenizer = tiny_causal_lm(seed=seed), char_tokenizer()
    rows = [r for d in TRANSFORMS for r in domain_rows(d, rows_per_domain, seed=1)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    for _ in range(steps):
        batch = [rows[i] for i in torch.randint(len(rows), (batch_size,)).tolist()]
        ids = torch.tensor([tokenizer(r["prompt"] + r["completion"])["input_ids"] + [tokenizer.eos_token_id]
                            for r in batch])
        labels = ids.clone()
        labels[:, : len(batch[0]["prompt"])] = -100  # every toy prompt has the same length: train on completions
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), tokenizer


def train_phases(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, domains: Sequence[str], steps: int, *,
                 seed: int = 0, batch_size: int = 32, learning_rate: float = 1e-3, rows_per_domain: int = 512
                 ) -> list[dict[str, torch.Tensor]]:
    """Sequential fine-tuning: ``steps`` AdamW steps (no weight decay) on the completions of each of ``domains`` in
    turn, with one optimizer throughout. Returns a copy of the ``state_dict`` after each phase (the input of
    ``mgs-forgetting``)."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1; got steps={steps}, batch_size={batch_size}.")
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    model.train()
    states = []
    for domain in domains:
        rows = domain_rows(domain, rows_per_domain, seed=1)
        for _ in range(steps):
            batch = [rows[i] for i in torch.randint(len(rows), (batch_size,)).tolist()]
            ids = torch.tensor([tokenizer(r["prompt"] + r["completion"])["input_ids"] + [tokenizer.eos_token_id]
                                for r in batch])
            labels = ids.clone()
            labels[:, : len(batch[0]["prompt"])] = -100
            model(input_ids=ids, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    model.eval()
    return states


def grpo_rows(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, *, prompts_per_domain: int = 8,
              generations: int = 8, seed: int = 0, length: int = 4, max_new_tokens: int = 6,
              temperature: float = 1.0) -> list[dict]:
    """Rows as one GRPO step sees them: ``generations`` completions sampled per prompt, each with its reward
    (:func:`score`) and its group-normalised advantage ``(r - mean) / (std + 1e-4)`` over its prompt's completions
    (TRL's default scaling). Columns: ``domain``, ``prompt``, ``completion``, ``reward``, ``advantage``."""
    torch.manual_seed(seed)
    model.eval()
    out = []
    for domain in TRANSFORMS:
        for row in domain_rows(domain, prompts_per_domain, length, seed=seed + 2):
            ids = torch.tensor([tokenizer(row["prompt"])["input_ids"]] * generations)
            with torch.no_grad():
                sampled = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                         temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            texts = tokenizer.batch_decode(sampled[:, ids.shape[1]:], skip_special_tokens=True)
            rewards = [score(t, row["completion"]) for t in texts]
            values = torch.tensor(rewards, dtype=torch.float64)
            advantages = (values - values.mean()) / (values.std() + 1e-4)
            out += [{"domain": domain, "prompt": row["prompt"], "completion": t, "reward": r,
                     "advantage": round(float(a), 6)} for t, r, a in zip(texts, rewards, advantages)]
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mgs_tools.toy train --out DIR`` (a trained toy model) and ``python -m mgs_tools.toy sample --model DIR
    --out FILE.jsonl`` (GRPO-style rows with advantages): the inputs of docs/diagnose.md's worked examples."""
    import argparse
    import json
    import os

    parser = argparse.ArgumentParser(prog="python -m mgs_tools.toy", description=main.__doc__.split(":")[0] + ".",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the tiny toy model on every toy domain and save it",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--out", required=True, help="folder for the model and its tokenizer (save_pretrained)")
    train.add_argument("--steps", type=int, default=300, help="AdamW steps")
    train.add_argument("--batch-size", type=int, default=32, help="rows per step")
    train.add_argument("--learning-rate", type=float, default=3e-3, help="AdamW learning rate")
    train.add_argument("--seed", type=int, default=0, help="model initialisation and batch sampling")
    seq = commands.add_parser("sequential", help="train a toy base, then fine-tune it on one domain after another; "
                              "save the base and every phase (the input of mgs-forgetting)",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    seq.add_argument("--out", required=True, help="folder: OUT/base and OUT/<domain> for each phase")
    seq.add_argument("--order", default="copy,reverse", help="the phases' domains, in order")
    seq.add_argument("--base-steps", type=int, default=300, help="AdamW steps of the base on every domain")
    seq.add_argument("--steps", type=int, default=100, help="AdamW steps per phase")
    seq.add_argument("--learning-rate", type=float, default=1e-3, help="learning rate of the phases")
    seq.add_argument("--seed", type=int, default=0, help="model initialisation and batch sampling")
    sample = commands.add_parser("sample", help="sample GRPO-style rows (completions with advantages) from a model",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sample.add_argument("--model", required=True, help="a folder written by `train`")
    sample.add_argument("--out", required=True, help="the .jsonl file to write")
    sample.add_argument("--prompts", type=int, default=8, help="prompts per domain")
    sample.add_argument("--generations", type=int, default=8, help="completions per prompt (GRPO's group)")
    sample.add_argument("--seed", type=int, default=0, help="prompts and sampling")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weight loading and saving bars
    if args.command == "train":
        if args.steps < 0 or args.batch_size < 1:
            parser.error(f"--steps must be >= 0 and --batch-size >= 1; got {args.steps} and {args.batch_size}.")
        model, tokenizer = train_toy(args.steps, seed=args.seed, batch_size=args.batch_size,
                                     learning_rate=args.learning_rate)
        model.save_pretrained(args.out)
        tokenizer.save_pretrained(args.out)
        print(f"wrote {args.out}: the toy model after {args.steps} steps")
        return
    if args.command == "sequential":
        order = [d.strip() for d in args.order.split(",") if d.strip()]
        unknown = [d for d in order if d not in TRANSFORMS]
        if unknown or not order or args.steps < 1 or args.base_steps < 0:
            parser.error(f"--order takes toy domains ({', '.join(TRANSFORMS)}; got {args.order!r}), --steps >= 1 and "
                         f"--base-steps >= 0.")
        model, tokenizer = train_toy(args.base_steps, seed=args.seed)
        model.save_pretrained(os.path.join(args.out, "base"))
        tokenizer.save_pretrained(os.path.join(args.out, "base"))
        for domain, state in zip(order, train_phases(model, tokenizer, order, args.steps, seed=args.seed,
                                                     learning_rate=args.learning_rate)):
            model.load_state_dict(state)
            model.save_pretrained(os.path.join(args.out, domain))
            tokenizer.save_pretrained(os.path.join(args.out, domain))
        print(f"wrote {args.out}: base ({args.base_steps} steps) and phases {', '.join(order)} ({args.steps} steps each)")
        return
    if not os.path.isdir(args.model):
        parser.error(f"--model {args.model}: no such folder; write one with: python -m mgs_tools.toy train --out DIR")
    if args.prompts < 1 or args.generations < 2:
        parser.error(f"--prompts must be >= 1 and --generations >= 2 (advantages compare completions); got "
                     f"{args.prompts} and {args.generations}.")
    model = AutoModelForCausalLM.from_pretrained(args.model)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.model)
    rows = grpo_rows(model, tokenizer, prompts_per_domain=args.prompts, generations=args.generations, seed=args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    mean = {d: sum(r["reward"] for r in rows if r["domain"] == d) / (args.prompts * args.generations) for d in TRANSFORMS}
    print(f"wrote {args.out}: {len(rows)} rows; mean reward " + ", ".join(f"{d} {v:.3f}" for d, v in mean.items()))


if __name__ == "__main__":
    main()
