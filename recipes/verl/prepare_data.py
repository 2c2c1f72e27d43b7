"""Write verl parquet files for the multi-domain recipes: one folder per domain, train.parquet + test.parquet.

    python recipes/verl/prepare_data.py --out data/mgs                       # math, chat, ifeval from the Hub
    python recipes/verl/prepare_data.py --out data/mgs --domains math chat \\
        --math-dataset my_math.jsonl --chat-dataset my_chat.parquet         # local files work too

Every row has verl's fields and one schema for all domains (verl concatenates the train files):
``data_source`` (the domain: what ``verl_mgs`` splits gradients by), ``prompt`` (chat messages),
``ability``, ``reward_model`` (``{"style", "ground_truth"}``) and ``extra_info`` with ``domain``,
``index``, ``messages`` (the prompt again, for the chat reward model), ``instruction_id_list`` and
``kwargs`` (IFEval's instructions, the kwargs as a JSON string). ``compute_score`` of
``recipes/verl/rewards.py`` reads exactly these.

Sources (any ``datasets.load_dataset`` name, or a local .json/.jsonl/.parquet/.csv file):
- math: problems with a reference solution; the ground truth is the solution's last ``\\boxed{}``
  (rows without one are dropped);
- chat: prompts only (the reward model judges the response); the first user turn is used;
- ifeval: prompts with IFEval's ``instruction_id_list`` and ``kwargs``; rows with an instruction that
  ``recipes/verl/rewards.py`` cannot check are dropped (the count is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import datasets

from mgs_tools.tables import load_table


def load(source: str, split: str, config: str | None = None) -> datasets.Dataset:
    if os.path.exists(source):  # a local file or saved dataset
        return load_table(source, split)
    return datasets.load_dataset(source, config, split=split)


def column(row: dict, name: str, source: str):
    if name not in row:
        raise KeyError(f"{source}: no column {name!r}; its columns are {sorted(row)} (see --help for the flags).")
    return row[name]


def math_row(row: dict, args) -> dict | None:
    from verl.utils.reward_score.math_reward import last_boxed_only_string, remove_boxed

    boxed = last_boxed_only_string(str(column(row, args.math_solution_column, args.math_dataset)))
    if boxed is None:
        return None
    question = str(column(row, args.math_prompt_column, args.math_dataset))
    return {"content": f"{question}\n\n{args.math_instruction}", "ground_truth": remove_boxed(boxed)}


def chat_row(row: dict, args) -> dict | None:
    value = column(row, args.chat_prompt_column, args.chat_dataset)
    if isinstance(value, list):  # a conversation: its first user turn
        value = next((m["content"] for m in value if m.get("role") == "user"), None)
    return {"content": str(value)} if value else None


def ifeval_row(row: dict, args) -> dict | None:
    from rewards import INSTRUCTION_CHECKS  # recipes/verl/rewards.py: this script's folder is on sys.path

    ids = list(column(row, "instruction_id_list", args.ifeval_dataset))
    kwargs = column(row, "kwargs", args.ifeval_dataset)
    kwargs = json.loads(kwargs) if isinstance(kwargs, str) else list(kwargs)
    if not ids or any(i not in INSTRUCTION_CHECKS for i in ids):
        return None
    kwargs = [{k: v for k, v in (kw or {}).items() if v is not None} for kw in kwargs]
    return {"content": str(column(row, args.ifeval_prompt_column, args.ifeval_dataset)),
            "instruction_id_list": ids, "kwargs": json.dumps(kwargs)}


_MESSAGES = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
FEATURES = datasets.Features({
    "data_source": datasets.Value("string"),
    "prompt": _MESSAGES,
    "ability": datasets.Value("string"),
    "reward_model": {"style": datasets.Value("string"), "ground_truth": datasets.Value("string")},
    "extra_info": {"domain": datasets.Value("string"), "index": datasets.Value("int64"), "messages": _MESSAGES,
                   "instruction_id_list": [datasets.Value("string")], "kwargs": datasets.Value("string")},
})
"""One schema for every domain, so verl can concatenate the train files."""

BUILDERS: dict[str, Callable[[dict, argparse.Namespace], dict | None]] = {
    "math": math_row, "chat": chat_row, "ifeval": ifeval_row}


def verl_rows(domain: str, data: datasets.Dataset, args) -> list[dict]:
    rows, dropped = [], 0
    for row in data:
        built = BUILDERS[domain](row, args)
        if built is None:
            dropped += 1
            continue
        messages = [{"role": "user", "content": built["content"]}]
        rows.append({
            "data_source": domain,
            "prompt": messages,
            "ability": domain,
            "reward_model": {"style": "rule" if domain != "chat" else "model", "ground_truth": built.get("ground_truth", "")},
            "extra_info": {"domain": domain, "index": len(rows), "messages": messages,
                           "instruction_id_list": built.get("instruction_id_list", []),
                           "kwargs": built.get("kwargs", "[]")},
        })
    print(f"{domain}: {len(rows)} rows ({dropped} dropped)")
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="Output folder: <out>/<domain>/{train,test}.parquet.")
    p.add_argument("--domains", nargs="+", default=["math", "chat", "ifeval"], choices=sorted(BUILDERS))
    p.add_argument("--test-size", type=int, default=200, help="Rows held out per domain for validation.")
    p.add_argument("--max-rows", type=int, default=None, help="Keep at most this many rows per domain (after the test split).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--math-dataset", default="DigitalLearningGmbH/MATH-lighteval")
    p.add_argument("--math-split", default="train")
    p.add_argument("--math-prompt-column", default="problem")
    p.add_argument("--math-solution-column", default="solution")
    p.add_argument("--math-instruction", default="Let's think step by step and output the final answer within \\boxed{}.")
    p.add_argument("--chat-dataset", default="HuggingFaceH4/ultrachat_200k")
    p.add_argument("--chat-split", default="train_sft")
    p.add_argument("--chat-prompt-column", default="prompt")
    p.add_argument("--ifeval-dataset", default="argilla/ifeval-like-data",
                   help="Prompts in IFEval's format (instruction_id_list, kwargs). google/IFEval is the benchmark itself.")
    p.add_argument("--ifeval-config", default="filtered")
    p.add_argument("--ifeval-split", default="train")
    p.add_argument("--ifeval-prompt-column", default="prompt")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for domain in args.domains:
        source = getattr(args, f"{domain}_dataset")
        data = load(source, getattr(args, f"{domain}_split"), getattr(args, f"{domain}_config", None))
        rows = verl_rows(domain, data.shuffle(seed=args.seed), args)
        if len(rows) <= args.test_size:
            raise ValueError(f"{domain}: {len(rows)} usable rows, not more than --test-size={args.test_size}.")
        test, train = rows[: args.test_size], rows[args.test_size :][: args.max_rows]
        folder = Path(args.out) / domain
        folder.mkdir(parents=True, exist_ok=True)
        for split, part in (("train", train), ("test", test)):
            datasets.Dataset.from_list(part, features=FEATURES).to_parquet(str(folder / f"{split}.parquet"))
        print(f"{domain}: wrote {len(train)} train / {len(test)} test rows to {folder}")


if __name__ == "__main__":
    sys.exit(main())
