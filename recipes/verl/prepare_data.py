"""Write verl parquet files for the multi-domain recipes: one folder per domain, train.parquet + test.parquet.

    python recipes/verl/prepare_data.py --out data/mgs                       # math, chat, ifeval from the Hub
    python recipes/verl/prepare_data.py --out data/mgs --domains math chat \\
        --math-dataset my_math.jsonl --chat-dataset my_chat.parquet         # local files work too
    python recipes/verl/prepare_data.py --help                              # every flag and its default

Without Hub access (checked once, before any work: no retries), it stops with a message naming the flags
that take local files; with ``HF_HUB_OFFLINE=1`` it reads Hub datasets from the local Hugging Face cache.

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


class PrepareError(Exception):
    """A usage error: printed as one message (exit status 2), without a traceback."""


TABLE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
LOCAL_FLAGS = {
    "math": "--math-dataset FILE (columns: --math-prompt-column, --math-solution-column)",
    "chat": "--chat-dataset FILE (column: --chat-prompt-column)",
    "ifeval": "--ifeval-dataset FILE (columns: --ifeval-prompt-column, instruction_id_list, kwargs)",
}
"""How to give each domain a local file instead of a Hub dataset (the message without Hub access)."""


def is_local(source: str) -> bool:
    """A local table (file or ``save_to_disk`` folder) rather than a Hub name; raises if it looks like a missing path."""
    if os.path.exists(source):
        return True
    if source.lower().endswith(TABLE_SUFFIXES) or source.startswith(("/", "./", "../", "~")):
        raise PrepareError(f"no such file or folder: {source!r} (a local table: {', '.join(TABLE_SUFFIXES)} or a "
                           "Dataset.save_to_disk folder).")
    return False


def hub_offline() -> bool:
    """Whether ``datasets`` reads Hub datasets from the local cache only (``HF_HUB_OFFLINE=1``)."""
    return bool(datasets.config.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = 5.0) -> tuple[bool, str]:
    """One request to the Hub's endpoint (``HF_ENDPOINT``); any HTTP answer counts as reachable."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True, constants.ENDPOINT
    except (OSError, ValueError) as error:  # URLError, timeouts, refused connections, a malformed endpoint
        reason = getattr(error, "reason", error)
        return False, f"{constants.ENDPOINT} could not be reached ({reason})"
    return True, constants.ENDPOINT


def no_hub_message(domains: list[str], why: str) -> str:
    flags = "; ".join(LOCAL_FLAGS[d] for d in domains)
    cache = "" if hub_offline() else " Datasets already in your Hugging Face cache are read with HF_HUB_OFFLINE=1."
    return (f"the Hugging Face Hub is needed for {', '.join(domains)} but {why}. Without Hub access, pass a local "
            f"file ({', '.join(TABLE_SUFFIXES)} or a Dataset.save_to_disk folder) for each: {flags}; or leave a "
            f"domain out with --domains.{cache}")


def check_sources(args: argparse.Namespace) -> None:
    """Before any work: local paths exist, and the Hub answers if a domain comes from it."""
    from_hub = [d for d in args.domains if not is_local(getattr(args, f"{d}_dataset"))]
    if from_hub and not hub_offline():
        reachable, why = hub_reachable()
        if not reachable:
            raise PrepareError(no_hub_message(from_hub, why))


def load(source: str, split: str, config: str | None = None, domain: str | None = None) -> datasets.Dataset:
    if is_local(source):  # a local file or saved dataset
        try:
            return load_table(source, split)
        except ValueError as error:
            raise PrepareError(str(error)) from None
    try:
        return datasets.load_dataset(source, config, split=split)
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as error:
        why = (f"loading {source!r} failed ({type(error).__name__}: {error})" if not hub_offline() else
               f"HF_HUB_OFFLINE=1 is set and {source!r} is not in the local cache ({error})")
        raise PrepareError(no_hub_message([domain] if domain else [], why)) from None


def column(row: dict, name: str, source: str):
    if name not in row:
        raise PrepareError(f"{source}: no column {name!r}; its columns are {sorted(row)} (--help lists the flags that "
                           "name the columns).")
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


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and every optional flag's default."""

    def _get_help_string(self, action):
        return action.help if action.required else super()._get_help_string(action)

    def _split_lines(self, text, width):  # never break a dataset name at its hyphen
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prepare_data.py", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", required=True, help="Output folder: <out>/<domain>/{train,test}.parquet (required).")
    p.add_argument("--domains", nargs="+", default=["math", "chat", "ifeval"], choices=sorted(BUILDERS),
                   help="The domains to write.")
    p.add_argument("--test-size", type=int, default=200, help="Rows held out per domain for validation.")
    p.add_argument("--max-rows", type=int, default=None, help="Keep at most this many rows per domain (after the "
                                                               "test split); None keeps all.")
    p.add_argument("--seed", type=int, default=0, help="Shuffles each domain's rows before the test split.")
    p.add_argument("--math-dataset", default="DigitalLearningGmbH/MATH-lighteval",
                   help="Math problems with solutions: a Hub dataset or a local file.")
    p.add_argument("--math-split", default="train", help="Split of --math-dataset.")
    p.add_argument("--math-prompt-column", default="problem", help="The problem's column.")
    p.add_argument("--math-solution-column", default="solution",
                   help="The reference solution's column; its last \\boxed{} is the ground truth.")
    p.add_argument("--math-instruction", default="Let's think step by step and output the final answer within \\boxed{}.",
                   help="Appended to every math problem.")
    p.add_argument("--chat-dataset", default="HuggingFaceH4/ultrachat_200k",
                   help="Chat prompts: a Hub dataset or a local file.")
    p.add_argument("--chat-split", default="train_sft", help="Split of --chat-dataset.")
    p.add_argument("--chat-prompt-column", default="prompt",
                   help="The prompt's column (a string, or a conversation whose first user turn is used).")
    p.add_argument("--ifeval-dataset", default="argilla/ifeval-like-data",
                   help="Prompts in IFEval's format (instruction_id_list, kwargs): a Hub dataset or a local file. "
                        "google/IFEval is the benchmark itself.")
    p.add_argument("--ifeval-config", default="filtered", help="Config (subset) of a Hub --ifeval-dataset.")
    p.add_argument("--ifeval-split", default="train", help="Split of --ifeval-dataset.")
    p.add_argument("--ifeval-prompt-column", default="prompt", help="The prompt's column.")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_sources(args)
        for domain in args.domains:
            source = getattr(args, f"{domain}_dataset")
            data = load(source, getattr(args, f"{domain}_split"), getattr(args, f"{domain}_config", None), domain)
            rows = verl_rows(domain, data.shuffle(seed=args.seed), args)
            if len(rows) <= args.test_size:
                raise PrepareError(f"{domain}: {len(rows)} usable rows, not more than --test-size={args.test_size}.")
            test, train = rows[: args.test_size], rows[args.test_size :][: args.max_rows]
            folder = Path(args.out) / domain
            folder.mkdir(parents=True, exist_ok=True)
            for split, part in (("train", train), ("test", test)):
                datasets.Dataset.from_list(part, features=FEATURES).to_parquet(str(folder / f"{split}.parquet"))
            print(f"{domain}: wrote {len(train)} train / {len(test)} test rows to {folder}")
    except PrepareError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
