"""The command line ``mgs-diagnose`` (also ``python -m mgs_tools.diagnose``): rows from a local table or the toy
domains, the model from a Hugging Face path (or the toy model), the diagnosis, then the table, ``diagnose.json``
and ``diagnose.png``. transformers, datasets and peft are imported where they are used; see ``docs/diagnose.md``."""

from __future__ import annotations

import argparse
import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mgs._options import GRANULARITIES
from mgs_tools.diagnose._measure import diagnose
from mgs_tools.diagnose._report import legend
from mgs_tools.diagnose._results import DiagnoseError

JSON_NAME = "diagnose.json"
PNG_NAME = "diagnose.png"


# -- data loading -------------------------------------------------------------------------------------------


def _load_dataset(path: str, split: str) -> Any:
    from mgs_tools.tables import load_table

    try:
        return load_table(path, split)
    except ValueError as error:
        raise DiagnoseError(str(error)) from error


def load_rows(
    data: str | None = None,
    *,
    split: str = "train",
    domain_column: str = "domain",
    prompt_column: str = "prompt",
    completion_column: str = "completion",
    weight_column: str | None = None,
    domains: Sequence[str] | None = None,
    toy_rows: int = 64,
) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by domain, from a json/jsonl/parquet/csv file or a saved dataset directory.

    ``data=None`` gives the toy domains of :mod:`mgs_tools.toy` (copy, reverse, sort; ``toy_rows`` each).
    Domains keep the order of first appearance unless ``domains`` names them (a subset, in that order).
    """
    if data is None:
        from mgs_tools import toy

        names = list(domains) if domains else list(toy.TRANSFORMS)
        unknown = [d for d in names if d not in toy.TRANSFORMS]
        if unknown:
            raise DiagnoseError(f"unknown domain(s) {unknown}; the toy domains are {list(toy.TRANSFORMS)}.")
        by_domain = {d: [dict(r, domain=d) for r in toy.domain_rows(d, toy_rows)] for d in names}
    else:
        dataset = _load_dataset(data, split)
        columns = list(dataset.column_names)
        needed = [domain_column, prompt_column, completion_column] + ([weight_column] if weight_column else [])
        for column in needed:
            if column not in columns:
                raise DiagnoseError(f"column {column!r} is not in {data}; its columns are {columns}.")
        by_domain: dict[str, list[dict[str, Any]]] = {}
        for row in dataset.select_columns(needed):
            by_domain.setdefault(str(row[domain_column]), []).append(row)
        if domains:
            unknown = [d for d in domains if d not in by_domain]
            if unknown:
                raise DiagnoseError(f"unknown domain(s) {unknown}; the domains in {data} are {list(by_domain)}.")
            by_domain = {d: by_domain[d] for d in domains}
    if len(by_domain) < 2:
        raise DiagnoseError(f"need at least 2 domains to compare; found {list(by_domain)}"
                            + (f" in column {domain_column!r}." if data else "."))
    return by_domain


# -- command line -------------------------------------------------------------------------------------------


def add_row_arguments(p: argparse.ArgumentParser, *, data_help: str, split_help: str | None, weight_column: bool,
                      domains_help: str, max_rows_help: str) -> None:
    """The options that choose the rows (read by :func:`load_rows`), shared by mgs-diagnose and mgs-forgetting."""
    p.add_argument("--data", help=data_help)
    p.add_argument("--split", default="train", help=split_help)
    p.add_argument("--domain-column", default="domain")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--completion-column", default="completion")
    if weight_column:
        p.add_argument("--weight-column", help="per-row weight (e.g. an advantage) multiplying its log-likelihood")
    p.add_argument("--domains", help=domains_help)
    p.add_argument("--max-rows", type=int, default=64, help=max_rows_help)
    p.add_argument("--batch-size", type=int, default=8, help="rows per forward/backward pass (default: 8)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mgs-diagnose",
        description="Per-module gradient cosines between domains (and each domain's noise floor) for a causal LM. "
                    "Writes a table to the terminal, diagnose.json and diagnose.png.",
    )
    p.add_argument("--model", help="Hugging Face model path or name (AutoModelForCausalLM); default: the built-in "
                                    "tiny random model of mgs_tools.toy with its character tokenizer")
    p.add_argument("--tokenizer", help="tokenizer path (default: --model)")
    p.add_argument("--adapter", help="PEFT adapter directory; only the adapter's parameters are diagnosed")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="model dtype when loading --model (default: auto, the checkpoint's)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 … or auto (device_map='auto' over the GPUs); "
                                    "default: cuda if available, else cpu")
    p.add_argument("--trust-remote-code", action="store_true")
    add_row_arguments(p, data_help="a .json/.jsonl/.parquet/.csv file or a Dataset.save_to_disk directory; "
                                   "default: the toy domains copy/reverse/sort",
                      split_help="split of a saved DatasetDict (default: train)", weight_column=True,
                      domains_help="comma-separated domains to compare, in this order (default: all)",
                      max_rows_help="rows per domain after shuffling (default: 64)")
    p.add_argument("--granularity", default="module", choices=list(GRANULARITIES),
                   help="what a module is (default: module, one leaf module such as q_proj)")
    p.add_argument("--layers-per-sweep", type=int, default=0,
                   help="decoder layers (or outside modules) per sweep, to bound memory; 0: all at once (default)")
    p.add_argument("--group-size", type=int, default=None, help=argparse.SUPPRESS)  # deprecated: --layers-per-sweep
    p.add_argument("--no-eos", action="store_true", help="do not append EOS to each completion")
    p.add_argument("--seed", type=int, default=0, help="shuffles each domain's rows before the split into halves")
    p.add_argument("--output-dir", default="runs/diagnose", help=f"where {JSON_NAME} and {PNG_NAME} go "
                                                                 "(default: runs/diagnose)")
    p.add_argument("--no-plot", action="store_true", help=f"skip {PNG_NAME} (no matplotlib needed)")
    p.add_argument("--per-module", action="store_true", help="also print every module's cosines")
    p.add_argument("--no-progress", action="store_true")
    return p


def _load_model(args: argparse.Namespace) -> tuple[nn.Module, Any, str]:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.model is None:
        from mgs_tools import toy

        model, tokenizer, name = toy.tiny_causal_lm(), toy.char_tokenizer(), "mgs_tools.toy.tiny_causal_lm"
        if args.dtype not in ("auto", "float32"):
            model = model.to(getattr(torch, args.dtype))
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs: dict[str, Any] = {"dtype": args.dtype if args.dtype == "auto" else getattr(torch, args.dtype),
                                  "trust_remote_code": args.trust_remote_code}
        if device == "auto":
            kwargs["device_map"] = "auto"
        model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model,
                                                  trust_remote_code=args.trust_remote_code)
        name = args.model
    if device != "auto":
        model = model.to(device)
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter, is_trainable=True)
        name = f"{name} + {args.adapter}"
    return model, tokenizer, name


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``mgs-diagnose`` and ``python -m mgs_tools.diagnose``. Returns None (a console script passes the
    return value to ``sys.exit``); bad input exits with status 2 and a usage message."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.group_size is not None:
        warnings.warn("--group-size is deprecated; use --layers-per-sweep (in mgs a group is a parameter group).",
                      FutureWarning, stacklevel=2)
        args.layers_per_sweep = args.group_size
    if args.max_rows < 2:
        parser.error(f"--max-rows must be at least 2 (one row per half); got {args.max_rows}.")
    domains = [d.strip() for d in args.domains.split(",") if d.strip()] if args.domains else None
    try:
        rows = load_rows(args.data, split=args.split, domain_column=args.domain_column,
                         prompt_column=args.prompt_column, completion_column=args.completion_column,
                         weight_column=args.weight_column,
                         domains=domains, toy_rows=args.max_rows)
        model, tokenizer, name = _load_model(args)
        result = diagnose(model, tokenizer, rows, batch_size=args.batch_size, max_rows=args.max_rows,
                          granularity=args.granularity, layers_per_sweep=args.layers_per_sweep, seed=args.seed,
                          prompt_key=args.prompt_column, completion_key=args.completion_column,
                          weight_key=args.weight_column, append_eos=not args.no_eos,
                          progress=not args.no_progress, model_name=name)
    except DiagnoseError as error:
        parser.error(str(error))
    result.settings.update({"data": args.data or "mgs_tools.toy (copy, reverse, sort)", "adapter": args.adapter})
    os.makedirs(args.output_dir, exist_ok=True)
    json_path = os.path.join(args.output_dir, JSON_NAME)
    with open(json_path, "w") as f:
        json.dump(result.to_json(), f, indent=1, allow_nan=False)
    png_path = None
    if not args.no_plot:
        png_path = os.path.join(args.output_dir, PNG_NAME)
        result.heatmap(png_path)
    print(result.table(per_module=args.per_module))
    print(legend(json_path, png_path))


if __name__ == "__main__":
    main()
