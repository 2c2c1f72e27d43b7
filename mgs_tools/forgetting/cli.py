"""The command line ``mgs-forgetting`` (also ``python -m mgs_tools.forgetting``): checkpoints and rows in, the
summary, ``forgetting.json`` and ``forgetting.png`` out (``docs/forgetting.md``)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

import torch

from mgs_tools.diagnose._results import DiagnoseError
from mgs_tools.diagnose.cli import add_row_arguments, load_rows
from mgs_tools.forgetting._analyze import PAPER_ROLLBACKS, analyze
from mgs_tools.forgetting._checkpoint import Checkpoint, CheckpointError
from mgs_tools.forgetting._report import plot, summary
from mgs_tools.forgetting._units import UnitError

JSON_NAME = "forgetting.json"
PNG_NAME = "forgetting.png"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mgs-forgetting",
        description="Why does sequential multi-domain training forget? Update sparsity, edit and route overlap, the "
                    "first/second-order damage decomposition and conflict-subspace rollback, from a base checkpoint and "
                    "the checkpoint after each phase. Writes a summary, forgetting.json and forgetting.png.")
    p.add_argument("--base", required=True, help="the checkpoint before the first phase (a Hugging Face model folder)")
    p.add_argument("--phase", action="append", required=True, metavar="DOMAIN=PATH",
                   help="a phase's domain and its checkpoint (a model folder or a PEFT adapter on --base); repeat in "
                        "training order")
    p.add_argument("--tokenizer", help="tokenizer path (default: --base)")
    add_row_arguments(p, data_help="rows with domain, prompt and completion (.json/.jsonl/.parquet/.csv or a saved "
                                   "dataset); default: the toy domains of mgs_tools.toy",
                      split_help=None, weight_column=False,
                      domains_help="comma-separated domains to measure (default: all in --data)",
                      max_rows_help="rows per domain (default: 64)")
    p.add_argument("--eval", default="nll", choices=["nll", "toy"],
                   help="evaluation for the rollback: nll (each row's mean completion NLL) or toy (greedy "
                        "mgs_tools.toy.score); default: nll")
    p.add_argument("--threshold", type=float, default=1e-7, help="|delta| below this counts as unchanged (1e-7)")
    p.add_argument("--top-percent", type=float, default=10.0, help="top-changed units per layer and kind (10)")
    p.add_argument("--route-percent", type=float, default=10.0, help="top-active units per layer and kind (10)")
    p.add_argument("--earlier", help="the domain whose forgetting is analysed (default: the first phase)")
    p.add_argument("--rollback-percents", default="1,2,4,8,16,32", help="the rollback curve's x in %% of units")
    p.add_argument("--write-rollback", default=",".join(f"{s}:{x:g}" for s, x in PAPER_ROLLBACKS),
                   help="SCOPE:PERCENT rollbacks to save as checkpoints ('' for none; default mlp:2,joint:32)")
    p.add_argument("--no-damage", action="store_true",
                   help="skip the damage decomposition (and rank the rollback by route activity x change only)")
    p.add_argument("--layers-per-sweep", type=int, default=1, help="decoder layers read per checkpoint at a time (1)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--output-dir", default="runs/forgetting")
    p.add_argument("--no-plot", action="store_true")
    return p


def _floats(text: str, what: str, parser) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        parser.error(f"{what}: comma-separated numbers; got {text!r}.")


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    phases, paths = [], []
    for item in args.phase:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"--phase takes DOMAIN=PATH; got {item!r}.")
        phases.append(name)
        paths.append(path)
    percents = _floats(args.rollback_percents, "--rollback-percents", parser)
    writes = []
    for item in (v.strip() for v in args.write_rollback.split(",") if v.strip()):
        scope, _, x = item.partition(":")
        if scope not in ("mlp", "joint"):
            parser.error(f"--write-rollback: SCOPE is mlp or joint; got {item!r}.")
        writes.append((scope, _floats(x, "--write-rollback", parser)[0]))
    if args.max_rows < 2:
        parser.error(f"--max-rows must be at least 2; got {args.max_rows}.")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        domains = [d.strip() for d in args.domains.split(",")] if args.domains else (None if args.data else
                                                                                      list(dict.fromkeys(phases)))
        rows = load_rows(args.data, split=args.split, domain_column=args.domain_column,
                         prompt_column=args.prompt_column, completion_column=args.completion_column,
                         domains=domains, toy_rows=args.max_rows) if (args.data or len(domains) > 1) else None
        if rows is None:
            from mgs_tools import toy

            rows = {d: toy.domain_rows(d, args.max_rows) for d in domains}
        missing = [p for p in phases if p not in rows]
        if missing:
            parser.error(f"phases {missing} have no rows; the domains are {list(rows)}.")
        checkpoints = [Checkpoint(args.base, label=args.base)]
        checkpoints += [Checkpoint(path, label=path, base=args.base) for path in paths]
        model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32, attn_implementation="eager")
        model.to(device)
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.base)
        os.makedirs(args.output_dir, exist_ok=True)
        result = analyze(checkpoints, phases, model, tokenizer, rows, threshold=args.threshold,
                         top_percent=args.top_percent, route_percent=args.route_percent, earlier=args.earlier,
                         rollback_percents=percents, evaluate=args.eval, batch_size=args.batch_size,
                         max_rows=args.max_rows, layers_per_sweep=args.layers_per_sweep, damage=not args.no_damage,
                         write_rollbacks=writes, output_dir=args.output_dir, config=checkpoints[0].config,
                         progress=lambda text: print(text, flush=True))
    except (DiagnoseError, CheckpointError, UnitError, ValueError) as error:
        parser.error(str(error))
    result["settings"].update({"data": args.data or "mgs_tools.toy", "device": device})
    json_path = os.path.join(args.output_dir, JSON_NAME)
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1, allow_nan=False)
    print()
    print(summary(result))
    print(f"wrote {json_path}")
    if not args.no_plot:
        png = os.path.join(args.output_dir, PNG_NAME)
        plot(result, png)
        print(f"wrote {png}")
    for path in (result.get("rollback") or {}).get("written", []):
        print(f"wrote {path} (rolled-back checkpoint)")
    print("more: docs/forgetting.md in the MGS repository")


if __name__ == "__main__":
    main()
