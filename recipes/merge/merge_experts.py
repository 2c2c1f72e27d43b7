# /// script
# dependencies = ["mgs-rl[merge,tools]"]
# ///
"""Merge per-domain experts, trained from the same start, into one checkpoint (the MGS paper's Model Merging row).

    python recipes/merge/merge_experts.py --base BASE --expert math=MATH --expert code=CODE \\
        --method ties --density 0.5 --weight 1.0 --scale 1.0 --output MERGED

``BASE`` and each expert: a transformers model folder, a peft LoRA adapter folder (folded into ``BASE`` first, exactly),
or a ``.safetensors`` / ``.pt`` state dict. With a model folder as ``BASE`` the output is a model folder (config and
tokenizer from ``BASE``); otherwise a state-dict file (``.safetensors`` by extension, else ``torch.save``).
Methods: ``task_arithmetic``, ``ties``, ``dare_ties``, ``dare_linear`` (mergekit's arithmetic: ``mgs_tools.merge``).
``--weight`` is one number or ``name=w`` per expert (repeatable).
"""

from __future__ import annotations

import argparse
import json
import sys

from mgs_tools.merge import METHODS, load_state_dict, merge_experts, save_state_dict


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the common starting point of the experts")
    p.add_argument("--expert", action="append", type=_pair, required=True, metavar="NAME=PATH",
                   help="one expert per domain (repeat the option)")
    p.add_argument("--method", choices=METHODS, default="ties")
    p.add_argument("--weight", action="append", default=None, metavar="W or NAME=W",
                   help="the experts' weights: one number for all, or NAME=W per expert (default 1)")
    p.add_argument("--density", type=float, default=1.0, help="fraction of each task vector kept (ties, dare_*)")
    p.add_argument("--scale", type=float, default=1.0, help="lambda: factor on the merged task vector")
    p.add_argument("--normalize", choices=("default", "true", "false"), default="default",
                   help="divide by the (agreeing) weights' sum; default: mergekit's (on for ties only)")
    p.add_argument("--seed", type=int, default=0, help="seed of DARE's random masks")
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)
    names = [name for name, _ in args.expert]
    if len(set(names)) != len(names):
        p.error(f"expert names repeat: {names}")
    if args.weight is None:
        args.weights = 1.0
    elif len(args.weight) == 1 and "=" not in args.weight[0]:
        args.weights = float(args.weight[0])
    else:
        try:
            args.weights = {n: float(w) for n, w in map(_pair, args.weight)}
        except (argparse.ArgumentTypeError, ValueError) as error:
            p.error(f"--weight: {error}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = load_state_dict(args.base)
    experts = {name: load_state_dict(path, base_model=args.base) for name, path in args.expert}
    normalize = None if args.normalize == "default" else args.normalize == "true"
    merged = merge_experts(base, experts, method=args.method, weights=args.weights, density=args.density,
                           scale=args.scale, normalize=normalize, seed=args.seed)
    save_state_dict(merged, args.output, base_model=args.base)
    print(json.dumps({"output": args.output, "method": args.method, "experts": list(experts), "weights": args.weights,
                      "density": args.density, "scale": args.scale, "normalize": normalize, "seed": args.seed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
