"""Does modular gradient surgery help, at a scale we can run? A seeded multi-arm GRPO comparison on CPU.

    python benchmarks/toy_multidomain.py                 # the default run: 12 arms x 2 settings x 10 seeds
    python benchmarks/toy_multidomain.py --arms none,sequential,sequential_reverse,sequential_refresh,sequential_rollback_mlp,sequential_rollback_joint --settings default --out docs/results/forgetting   # issue 19
    python benchmarks/toy_multidomain.py --arms none,modular,modular_head --out docs/results/head   # issue 14
    python benchmarks/toy_multidomain.py --quick         # smoke run (seconds; writes under runs/ unless --out)
    python benchmarks/toy_multidomain.py --seeds 3 --steps 60 --arms none,modular --settings default
    python benchmarks/toy_multidomain.py --from-json docs/results/toy_multidomain.json --compare modular-global
    python benchmarks/toy_multidomain.py --noise-check 16,32,64    # gradient noise floor (seconds)

Per seed, a tiny Qwen2-architecture causal LM (:func:`mgs_tools.toy.tiny_causal_lm`, random weights, no download)
is warm-started once with TRL's ``SFTTrainer`` on the three toy domains of :mod:`mgs_tools.toy` (copy, reverse,
sort: one prompt format, one input, only the tag differs). Its ``state_dict`` is saved, and every arm of
that seed loads it, so all arms start from identical weights (a SHA-256 of the weights is recorded per
run). Then each arm runs GRPO with ``MGSGRPOTrainer`` for the same number of steps, on the same prompts in
the same order, with the same seed:

==================  ============================================================================
arm                 MGSGRPOConfig
==================  ============================================================================
none                surgery="none": naive mixing (stock GRPO on the mixture)
global              surgery="global": PCGrad over the whole model
modular             surgery="modular", granularity="parameter": PCGrad per parameter tensor
modular_block       surgery="modular", granularity="block": PCGrad per attention / MLP block
modular_head        surgery="modular", granularity="head": PCGrad per attention head (q/k/v rows, o columns)
                    and per module elsewhere
sequential          surgery="none", one domain after the other (steps split in 3 equal phases)
balance             surgery="none", balance="norm": equal-norm domains, no projection
balance_modular     surgery="modular", balance="norm": equal norms per module, then PCGrad
modular_ema         surgery="modular", gram_ema=0.9: PCGrad decided from smoothed Gram matrices
normadv             surgery="none", normalize_advantage_by_domain=True: the paper's Normalized Advantage
gdpo                surgery="none", one reward function per domain, TRL's normalize_then_sum (GDPO)
merge_ta            three experts (one domain each, a third of the steps each) merged by task arithmetic
merge_ties          the same experts merged by TIES (density 0.5); see toy_multidomain_lib/paper_arms.py
==================  ============================================================================

Two settings:

* ``default``: GRPO's default reward scaling (``scale_rewards="group"``: each prompt's rewards divided
  by their std over its completions), every domain's reward in [0, 1].
* ``dominant``: the copy domain's reward is multiplied by 10 and ``scale_rewards="batch"`` (one std
  over the whole generation batch), so copy's advantages are about 10x the others'. Under "group"
  scaling the factor would cancel out in every group; under "batch" it survives. Rewards are reported
  unscaled.

Every arm is evaluated every ``--eval-every`` steps (and at step 0) on a fixed held-out set of prompts per
domain: the mean :func:`mgs_tools.toy.score` of completions sampled at temperature 1, the quantity GRPO maximizes,
from a generator seeded by (seed, step) that leaves the training RNG alone. "final" is the last evaluation, "AUC" the
mean of the evaluation curve over training (trapezoid over steps, divided by the steps: in [0, 1]).
Each arm's metrics are compared with naive mixing (``none``) seed by seed: mean of the paired
difference with a 95% t-interval over seeds. ``update norm`` and ``change ratio`` are the per-step
means of the logged ``mgs/update_norm`` and ``mgs/change_ratio``, averaged over seeds.

``--compare A-B[,C-D...]`` tabulates the same paired per-seed difference (same t-interval) between any two arms,
per setting: with ``--from-json``, from a saved run without training, into ``toy_multidomain_compare.md``; in a
training run, as an extra section of ``toy_multidomain.md``.

``--noise-check N[,N...]`` measures instead how much of a domain's GRPO gradient is batch noise, for N completions
per domain batch: from the benchmark's warm start (seed 0; seeds 0..S-1 with ``--seeds S``), each domain split
into two pseudo-domains (``copy#a``, ``copy#b``: two independent prompt batches, the reward routed by the real
domain), ``NOISE_STEPS`` GRPO steps at learning rate 0 with ``surgery="none"``, and at each step the whole-model
cosines from the Gram matrix of the pseudo-domains' gradients: same domain (``d#a`` vs ``d#b``, the noise floor)
vs different domains. Writes ``toy_multidomain_noise.md`` and ``.json`` to ``--out``.

Writes ``toy_multidomain.md`` (the tables, command and wall time), ``toy_multidomain.json`` (config,
per-run curves and checksums, the summary) and ``toy_multidomain.png`` (per-domain evaluation curves per
arm, mean over seeds) to ``--out`` (default ``docs/results``; ``runs/toy_multidomain_quick`` for ``--quick``).
Runs go through a process pool of ``--workers`` processes (default 2) with one torch thread each.

This file is the command line (``parse``, ``main``, ``write``, the noise check's driver); the rest is in
``toy_multidomain_lib/``: ``experiment.py`` (workers, warm starts, runs, noise runs), ``statistics.py`` and
``rendering.py`` (markdown, compare tables, plot).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

from toy_multidomain_lib.experiment import (
    ARMS,
    DEFAULT,
    DEFAULT_ARMS,
    DERIVED,
    NOISE_STEPS,
    QUICK,
    SETTINGS,
    Size,
    _warm_started_pool,
    noise_run,
    run_arm,
)
from toy_multidomain_lib.rendering import compare_markdown, markdown, noise_markdown, plot
from toy_multidomain_lib.statistics import _mean, compare, noise_summary, summarize

ROOT = Path(__file__).resolve().parents[1]


def noise_check(args: argparse.Namespace, size: Size, command: str, out: Path) -> dict:
    """The noise check of ``--noise-check``: writes ``toy_multidomain_noise.md`` and ``.json`` to ``out``."""
    seeds = list(range(args.seeds)) if args.seeds is not None else [0]
    start = time.perf_counter()
    with _warm_started_pool(size, seeds, args.workers, start) as (pool, paths, warm):
        jobs = [(seed, c // size.num_generations) for seed in seeds for c in args.noise_list]
        futures = [pool.submit(noise_run, size, seed, prompts, NOISE_STEPS, paths[seed]) for seed, prompts in jobs]
        runs = []
        for future in futures:
            runs.append(future.result())
            print(f"seed {runs[-1]['seed']}, {runs[-1]['completions']} completions per domain batch: "
                  f"{runs[-1]['seconds']:.1f} s", flush=True)
    result = {"command": command, "wall_seconds": time.perf_counter() - start, "workers": args.workers, "seeds": seeds,
              "steps": NOISE_STEPS, "size": asdict(size) | {"domains": list(size.domains)}, "warm_starts": warm,
              "summary": noise_summary(runs), "runs": runs}
    table = noise_markdown(result)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "toy_multidomain_noise.json", "w") as f:
        json.dump(_rounded(result), f, separators=(",", ":"))
    (out / "toy_multidomain_noise.md").write_text(table)
    print("\n" + table)
    print(f"wrote {out}/toy_multidomain_noise.md, .json")
    return result


# --------------------------------------------------------------------------------------------- main
def _names(value: str, allowed: dict | tuple, what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise SystemExit(f"--{what}: unknown {unknown or value!r}; choose from {', '.join(allowed)}.")
    return names


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 2 seeds, 3 steps")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (0..N-1); default 10, 2 with --quick")
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps per run")
    parser.add_argument("--eval-every", type=int, default=None, help="steps between evaluations")
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                        help=f"comma-separated arms: {', '.join(ARMS)} (default: {', '.join(DEFAULT_ARMS)})")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated settings: {', '.join(SETTINGS)}")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (one torch thread each)")
    parser.add_argument("--from-json", default=None, metavar="PATH",
                        help="re-render the table and plot from a saved toy_multidomain.json (no training) into --out "
                             "(default: the JSON's folder)")
    parser.add_argument("--compare", default=None, metavar="A-B[,C-D...]",
                        help="also tabulate the paired per-seed differences A − B between arms (same t-interval as the "
                             "difference against none); with --from-json: only this table, written to "
                             "toy_multidomain_compare.md in --out (default: the JSON's folder)")
    parser.add_argument("--noise-check", default=None, metavar="N[,N...]",
                        help="instead of the benchmark: the gradient noise floor for N completions per domain batch "
                             f"(multiples of num_generations): each domain split into two pseudo-domains, {NOISE_STEPS} "
                             "GRPO steps at learning rate 0 from the warm start of seed 0 (seeds 0..S-1 with --seeds S); "
                             "writes toy_multidomain_noise.md and .json to --out")
    parser.add_argument("--out", default=None,
                        help="output folder (default docs/results; runs/toy_multidomain_quick with --quick)")
    args = parser.parse_args(argv)
    args.compare_pairs = _pairs(args.compare) if args.compare else []
    args.noise_list = []
    if args.noise_check:
        try:
            args.noise_list = [int(v) for v in args.noise_check.split(",") if v.strip()]
        except ValueError:
            raise SystemExit(f"--noise-check: comma-separated integers, got {args.noise_check!r}.") from None
        if not args.noise_list or any(n <= 0 for n in args.noise_list):
            raise SystemExit(f"--noise-check: positive completion counts, got {args.noise_check!r}.")
        if args.from_json or args.compare:
            raise SystemExit("--noise-check runs on its own: not with --from-json or --compare.")
    args.arm_list = _names(args.arms, ARMS, "arms")
    if "none" not in args.arm_list:
        args.arm_list = ["none", *args.arm_list]  # the reference of every paired difference
    if any(a in DERIVED for a in args.arm_list) and "sequential" not in args.arm_list:
        args.arm_list.insert(1, "sequential")  # the rollback arms are computed from the sequential run
    args.setting_list = _names(args.settings, SETTINGS, "settings")
    return args


def _pairs(value: str) -> list[tuple[str, str]]:
    """``"A-B,C-D"`` -> ``[("A", "B"), ("C", "D")]`` (arm names have no hyphen)."""
    pairs = []
    for item in (v.strip() for v in value.split(",") if v.strip()):
        parts = item.split("-")
        if len(parts) != 2 or not all(parts):
            raise SystemExit(f"--compare: each comparison is A-B with two arm names; got {item!r}.")
        pairs.append((parts[0].strip(), parts[1].strip()))
    if not pairs:
        raise SystemExit(f"--compare: no comparison in {value!r}.")
    return pairs


def _check_arms(pairs: list[tuple[str, str]], arms: list[str]) -> None:
    unknown = sorted({a for pair in pairs for a in pair} - set(arms))
    if unknown:
        raise SystemExit(f"--compare: arms {unknown} were not run; the arms are {', '.join(arms)}.")


def _rounded(value, digits: int = 6):
    """``value`` with every float rounded to ``digits`` significant digits (a smaller JSON; NaN becomes null)."""
    if isinstance(value, float):
        return None if math.isnan(value) else float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v, digits) for v in value]
    return value


def write(result: dict, out: Path) -> str:
    """Write the JSON, the markdown table and the plot of ``result`` to ``out``; return the table."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "toy_multidomain.json", "w") as f:
        json.dump(_rounded(result), f, separators=(",", ":"))
    table = markdown(result)
    (out / "toy_multidomain.md").write_text(table)
    plot(result, out / "toy_multidomain.png")
    return table


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    given = sys.argv[1:] if argv is None else argv
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *given])
    if args.from_json:
        source = Path(args.from_json)
        out = Path(args.out) if args.out else source.parent
        result = json.loads(source.read_text())
        domains, settings = result["size"]["domains"], list(result["settings"])
        result["summary"] = summarize(result["runs"], domains, result["arms"], settings)
        if args.compare_pairs:  # only the comparison table; the saved table and plot are left as they are
            _check_arms(args.compare_pairs, result["arms"])
            result["comparisons"] = compare(result["runs"], domains, settings, args.compare_pairs)
            table = compare_markdown(result["comparisons"], domains, command)
            out.mkdir(parents=True, exist_ok=True)
            (out / "toy_multidomain_compare.md").write_text(table)
            print(table)
            return result
        if result.get("compare"):
            result["comparisons"] = compare(result["runs"], domains, settings, _pairs(",".join(result["compare"])))
        print(write(result, out))
        return result
    size = Size(**asdict(QUICK if args.quick else DEFAULT))
    if args.steps is not None:
        size.steps = args.steps
    if args.eval_every is not None:
        size.eval_every = args.eval_every
    if size.steps < len(size.domains) or size.eval_every < 1:
        raise SystemExit(f"--steps must be >= {len(size.domains)} (sequential phases) and --eval-every >= 1.")
    seeds = list(range(args.seeds if args.seeds is not None else (2 if args.quick else 10)))
    out = Path(args.out) if args.out else ROOT / ("runs/toy_multidomain_quick" if args.quick else "docs/results")
    if args.noise_list:
        bad = [n for n in args.noise_list if n % size.num_generations]
        if bad:
            raise SystemExit(f"--noise-check: {bad} are not multiples of num_generations={size.num_generations}.")
        return noise_check(args, size, command, out)
    _check_arms(args.compare_pairs, args.arm_list)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    jobs = [(s, a, seed) for seed in seeds for s in args.setting_list for a in args.arm_list if a not in DERIVED]
    derive = tuple(a for a in args.arm_list if a in DERIVED)
    print(f"{len(seeds)} warm starts, then {len(jobs)} GRPO runs of {size.steps} steps on {args.workers} workers", flush=True)
    runs = []
    with _warm_started_pool(size, seeds, args.workers, start) as (pool, paths, warm):
        futures = [pool.submit(run_arm, size, s, a, seed, paths[seed], derive if a == "sequential" else ())
                   for s, a, seed in jobs]
        for i, future in enumerate(futures):
            run = future.result()
            runs.append(run)
            runs.extend(run.pop("derived", None) or [])
            final = _mean([run["eval"][d][-1] for d in size.domains])
            print(f"[{i + 1}/{len(jobs)}] {run['setting']:8s} {run['arm']:16s} seed {run['seed']:2d}: mean final "
                  f"{final:.3f} ({run['seconds']:.1f} s, elapsed {time.perf_counter() - start:.0f} s)", flush=True)
    wall = time.perf_counter() - start
    result = {
        "command": command, "wall_seconds": wall, "workers": args.workers, "seeds": seeds,
        "arms": args.arm_list, "arm_configs": {a: ARMS[a] for a in args.arm_list},
        "settings": {s: SETTINGS[s] for s in args.setting_list}, "size": asdict(size) | {"domains": list(size.domains)},
        "warm_starts": warm, "summary": summarize(runs, list(size.domains), args.arm_list, args.setting_list),
        "runs": runs,
    }
    if args.compare_pairs:
        result["compare"] = [f"{a}-{b}" for a, b in args.compare_pairs]
        result["comparisons"] = compare(runs, list(size.domains), args.setting_list, args.compare_pairs)
    table = write(result, out)
    print("\n" + table)
    print(f"wrote {out}/toy_multidomain.md, .json, .png ({wall:.0f} s)")
    return result


if __name__ == "__main__":
    main()
