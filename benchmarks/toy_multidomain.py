"""Does modular gradient surgery help, at a scale we can run? A seeded multi-arm GRPO comparison on CPU.

    python benchmarks/toy_multidomain.py                 # the default run: 8 arms x 2 settings x 10 seeds
    python benchmarks/toy_multidomain.py --quick         # smoke run (seconds; writes under runs/ unless --out)
    python benchmarks/toy_multidomain.py --seeds 3 --steps 60 --arms none,modular --settings default

Per seed, a tiny Qwen2-architecture causal LM (:func:`mgs.toy.tiny_causal_lm`, random weights, no download)
is warm-started once with TRL's ``SFTTrainer`` on the three toy domains of :mod:`mgs.toy` (copy, reverse,
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
sequential          surgery="none", one domain after the other (steps split in 3 equal phases)
balance             surgery="none", balance="norm": equal-norm domains, no projection
balance_modular     surgery="modular", balance="norm": equal norms per module, then PCGrad
modular_ema         surgery="modular", gram_ema=0.9: PCGrad decided from smoothed Gram matrices
==================  ============================================================================

Two settings:

* ``default``: GRPO's default reward scaling (``scale_rewards="group"``: each prompt's rewards divided
  by their std over its completions), every domain's reward in [0, 1].
* ``dominant``: the copy domain's reward is multiplied by 10 and ``scale_rewards="batch"`` (one std
  over the whole generation batch), so copy's advantages are about 10x the others'. Under "group"
  scaling the factor would cancel out in every group; under "batch" it survives. Rewards are reported
  unscaled.

Every arm is evaluated every ``--eval-every`` steps (and at step 0) on a fixed held-out set of prompts per
domain: the mean :func:`mgs.toy.score` of completions sampled at temperature 1, the quantity GRPO maximizes,
from a generator seeded by (seed, step) that leaves the training RNG alone. "final" is the last evaluation, "AUC" the
mean of the evaluation curve over training (trapezoid over steps, divided by the steps: in [0, 1]).
Each arm's metrics are compared with naive mixing (``none``) seed by seed: mean of the paired
difference with a 95% t-interval over seeds. ``update norm`` and ``change ratio`` are the per-step
means of the logged ``mgs/update_norm`` and ``mgs/change_ratio``, averaged over seeds.

Writes ``toy_multidomain.md`` (the tables, command and wall time), ``toy_multidomain.json`` (config,
per-run curves and checksums, the summary) and ``toy_multidomain.png`` (per-domain evaluation curves per
arm, mean over seeds) to ``--out`` (default ``docs/results``; ``runs/toy_multidomain_quick`` for ``--quick``).
Runs go through a process pool of ``--workers`` processes (default 2) with one torch thread each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]

DOMAINS = ("copy", "reverse", "sort")

ARMS: dict[str, dict] = {
    "none": {"surgery": "none"},
    "global": {"surgery": "global"},
    "modular": {"surgery": "modular", "surgery_granularity": "parameter"},
    "modular_block": {"surgery": "modular", "surgery_granularity": "block"},
    "sequential": {"surgery": "none", "sequential": True},
    "balance": {"surgery": "none", "surgery_balance": "norm"},
    "balance_modular": {"surgery": "modular", "surgery_granularity": "parameter", "surgery_balance": "norm"},
    "modular_ema": {"surgery": "modular", "surgery_granularity": "parameter", "surgery_gram_ema": 0.9},
}
"""Arm name -> MGSGRPOConfig overrides (``sequential`` is this benchmark's own: one domain per phase)."""

SETTINGS: dict[str, dict] = {
    "default": {"scale_rewards": "group", "reward_scale": {}},
    "dominant": {"scale_rewards": "batch", "reward_scale": {"copy": 10.0}},
}
"""Setting name -> GRPO's reward scaling and per-domain reward multipliers."""

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
        29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
"""Two-sided 95% quantiles of Student's t by degrees of freedom."""


@dataclass
class Size:
    """Everything that sets the size of one run (the same for every arm)."""

    steps: int = 50
    eval_every: int = 10
    digits: int = 4
    hidden: int = 64
    layers: int = 2
    sft_steps: int = 60
    sft_batch: int = 32
    sft_learning_rate: float = 3e-3
    prompts_per_domain: int = 4  # per GRPO step
    num_generations: int = 8
    learning_rate: float = 1e-3
    max_completion_length: int = 6
    eval_prompts: int = 32  # per domain
    eval_samples: int = 4  # completions per evaluation prompt, sampled at temperature 1
    domains: tuple[str, ...] = field(default=DOMAINS)


DEFAULT = Size()
QUICK = Size(steps=3, eval_every=3, hidden=32, sft_steps=10, sft_batch=16, prompts_per_domain=1, num_generations=4,
             eval_prompts=4, eval_samples=2)


# --------------------------------------------------------------------------------------------- workers
def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    import transformers

    transformers.logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()


def _checksum(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def warm_start(size: Size, seed: int, path: str) -> dict:
    """One supervised warm start (TRL's SFTTrainer) for ``seed``; saves its ``state_dict`` to ``path``."""
    import torch
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from mgs.toy import char_tokenizer, sft_dataset, tiny_causal_lm

    start = time.perf_counter()
    tokenizer = char_tokenizer()
    model = tiny_causal_lm(hidden=size.hidden, layers=size.layers, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        config = SFTConfig(
            output_dir=tmp, max_steps=size.sft_steps, per_device_train_batch_size=size.sft_batch,
            learning_rate=size.sft_learning_rate, lr_scheduler_type="constant", use_cpu=True, bf16=False,
            report_to="none", save_strategy="no", logging_steps=max(1, size.sft_steps), seed=seed,
            disable_tqdm=True, max_length=32, gradient_checkpointing=False, dataloader_num_workers=0,
        )
        data = sft_dataset(list(size.domains), n_per_domain=size.sft_steps * size.sft_batch // len(size.domains) + 1,
                           length=size.digits, seed=seed)
        trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    model = trainer.model
    torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, path)
    return {"seed": seed, "checksum": _checksum(model), "seconds": time.perf_counter() - start}


def _grpo_rows(size: Size, seed: int, sequential: bool) -> list[dict]:
    """The GRPO prompts in training order: ``prompts_per_domain`` of each domain per step (mixed, the same for
    every mixed arm), or one domain's prompts per step for a third of the steps each (sequential). Both draw
    from the same per-domain pool: the mixed arms in :mod:`mgs.data`'s seeded order, the sequential arm in
    pool order."""
    from mgs.data import interleave_domains
    from mgs.toy import domain_rows

    per_step = size.prompts_per_domain * len(size.domains)
    need = size.steps * per_step  # the most any domain can use (sequential)
    sources = {d: [{"prompt": r["prompt"], "digits": r["digits"]} for r in domain_rows(d, need, size.digits, seed=seed + 1)]
               for d in size.domains}
    if not sequential:
        mixed = interleave_domains(sources, {d: 1 / len(size.domains) for d in size.domains}, batch_size=per_step,
                                   seed=seed, num_batches=size.steps, stopping="first_exhausted")
        return [dict(row) for row in mixed]
    rows = []
    for d, (first, last) in zip(size.domains, _phases(size)):
        rows += [{**r, "domain": d} for r in sources[d][: (last - first) * per_step]]
    return rows


def _phases(size: Size) -> list[tuple[int, int]]:
    """Sequential arm: [first, last) steps of each domain, in ``size.domains`` order (equal thirds, remainder last)."""
    k, n = len(size.domains), size.steps // len(size.domains)
    return [(i * n, size.steps if i == k - 1 else (i + 1) * n) for i in range(k)]


def _eval_rows(size: Size, seed: int) -> dict[str, list[dict]]:
    from mgs.toy import domain_rows

    return {d: domain_rows(d, size.eval_prompts, size.digits, seed=seed + 1000) for d in size.domains}


def _evaluate(model, tokenizer, rows: dict[str, list[dict]], size: Size, seed: int) -> dict[str, float]:
    """Mean score per domain of ``size.eval_samples`` completions per prompt sampled at temperature 1 (GRPO's
    objective), from a private generator seeded by ``seed`` (the training RNG is left as it was). Every toy
    prompt has the same length: no padding."""
    import torch

    from mgs.toy import score

    was_training = model.training
    model.eval()
    out = {}
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for d, group in rows.items():
            ids = torch.tensor([tokenizer(r["prompt"])["input_ids"] for r in group])
            ids = ids.repeat_interleave(size.eval_samples, dim=0)
            generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=size.max_completion_length, do_sample=True, temperature=1.0,
                                       top_k=0, top_p=1.0, pad_token_id=tokenizer.pad_token_id,
                                       eos_token_id=tokenizer.eos_token_id)
            texts = tokenizer.batch_decode(generated[:, ids.shape[1]:], skip_special_tokens=True)
            expected = [r["completion"] for r in group for _ in range(size.eval_samples)]
            out[d] = sum(score(t, e) for t, e in zip(texts, expected)) / len(expected)
    model.train(was_training)
    return out


def run_arm(size: Size, setting: str, arm: str, seed: int, warm_path: str) -> dict:
    """One GRPO run of ``arm`` under ``setting`` from the seed's warm start; returns its curves and statistics."""
    import torch
    from transformers import PrinterCallback, TrainerCallback

    from mgs.toy import char_tokenizer, target, tiny_causal_lm
    from mgs.toy import score as toy_score
    from trl_mgs import MGSGRPOConfig, MGSGRPOTrainer

    start = time.perf_counter()
    overrides = dict(ARMS[arm])
    sequential = overrides.pop("sequential", False)
    conf = SETTINGS[setting]
    scales = {d: float(conf["reward_scale"].get(d, 1.0)) for d in size.domains}

    def toy_reward(completions, domain, digits, **kwargs):
        return [scales[d] * toy_score(c, target(d, x)) for c, d, x in zip(completions, domain, digits)]

    tokenizer = char_tokenizer()
    model = tiny_causal_lm(hidden=size.hidden, layers=size.layers, seed=seed)
    model.load_state_dict(torch.load(warm_path, weights_only=True))
    checksum = _checksum(model)
    eval_rows = _eval_rows(size, seed)
    per_step = size.prompts_per_domain * len(size.domains) * size.num_generations
    evals: dict[str, list[float]] = {d: [] for d in size.domains}
    eval_steps: list[int] = []

    class Evaluate(TrainerCallback):
        def _record(self, step, model):
            eval_steps.append(step)
            for d, v in _evaluate(model, tokenizer, eval_rows, size, seed=1000 * seed + step).items():
                evals[d].append(v)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self._record(0, model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % size.eval_every == 0 or state.global_step == size.steps:
                self._record(state.global_step, model)

    with tempfile.TemporaryDirectory() as tmp:
        args = MGSGRPOConfig(
            output_dir=tmp, use_cpu=True, bf16=False, gradient_checkpointing=False, beta=0.0,
            num_generations=size.num_generations, per_device_train_batch_size=per_step,
            gradient_accumulation_steps=1, shuffle_dataset=False, max_completion_length=size.max_completion_length,
            temperature=1.0, learning_rate=size.learning_rate, lr_scheduler_type="constant", max_steps=size.steps,
            logging_steps=1, save_strategy="no", report_to="none", seed=seed, disable_tqdm=True,
            scale_rewards=conf["scale_rewards"], domains=list(size.domains), domain_column="domain",
            dataloader_num_workers=0, **overrides,
        )
        from datasets import Dataset

        dataset = Dataset.from_list(_grpo_rows(size, seed, sequential))
        trainer = MGSGRPOTrainer(model=model, reward_funcs=[toy_reward], args=args, train_dataset=dataset,
                                 processing_class=tokenizer, callbacks=[Evaluate()])
        trainer.remove_callback(PrinterCallback)  # the per-step log dicts; the curves are read from log_history
        trainer.train()
    history = [h for h in trainer.state.log_history if "mgs/update_norm" in h]

    def series(key, scale=1.0):
        return [None if h.get(key) is None or (isinstance(h.get(key), float) and math.isnan(h[key]))
                else h[key] / scale for h in history]

    return {
        "setting": setting, "arm": arm, "seed": seed, "checksum": checksum,
        "eval_steps": eval_steps, "eval": evals,
        "train_reward": {d: series(f"mgs/reward/{d}/mean", scales[d]) for d in size.domains},
        "update_norm": series("mgs/update_norm"), "change_ratio": series("mgs/change_ratio"),
        "cosine_global": series("mgs/cosine_global"), "conflict_frac": series("mgs/conflict_frac"),
        "seconds": time.perf_counter() - start,
    }


# --------------------------------------------------------------------------------------------- statistics
def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def _std(xs: list[float]) -> float:
    if len(xs) < 2:
        return float("nan")
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def t_quantile(df: int) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` degrees of freedom (table; next smaller df listed)."""
    if df < 1:
        return float("nan")
    return T975[max(k for k in T975 if k <= df)]


def paired(diffs: list[float]) -> dict:
    """Mean of per-seed differences and its 95% t-interval (exactly 0 ± 0 when every difference is 0)."""
    n, m = len(diffs), _mean(diffs)
    half = t_quantile(n - 1) * _std(diffs) / math.sqrt(n) if n > 1 else float("nan")
    if all(d == 0 for d in diffs):
        half = 0.0
    return {"mean": m, "lo": m - half, "hi": m + half, "n": n}


def auc(steps: list[int], values: list[float]) -> float:
    """Trapezoid area under ``values`` over ``steps``, divided by the step span: a mean reward in [0, 1]."""
    area = sum((steps[i + 1] - steps[i]) * (values[i] + values[i + 1]) / 2 for i in range(len(steps) - 1))
    return area / (steps[-1] - steps[0]) if steps[-1] > steps[0] else values[0]


def run_metrics(run: dict, domains: list[str]) -> dict[str, float]:
    """Scalar metrics of one run: per-domain and mean final reward and AUC, mean update norm and change ratio."""
    out = {}
    for d in domains:
        out[f"final/{d}"] = run["eval"][d][-1]
        out[f"auc/{d}"] = auc(run["eval_steps"], run["eval"][d])
    out["final/mean"] = _mean([out[f"final/{d}"] for d in domains])
    out["auc/mean"] = _mean([out[f"auc/{d}"] for d in domains])
    out["update_norm"] = _mean(run["update_norm"])
    out["change_ratio"] = _mean(run["change_ratio"])
    out["cosine_global"] = _mean(run["cosine_global"])
    return out


def summarize(runs: list[dict], domains: list[str], arms: list[str], settings: list[str]) -> dict:
    """Per (setting, arm): mean and std over seeds of every metric, and the paired difference against ``none``."""
    summary: dict = {}
    for setting in settings:
        by_arm = {a: {r["seed"]: run_metrics(r, domains) for r in runs if r["setting"] == setting and r["arm"] == a}
                  for a in arms}
        summary[setting] = {}
        for arm in arms:
            seeds = sorted(by_arm[arm])
            keys = list(by_arm[arm][seeds[0]]) if seeds else []
            row = {"seeds": seeds, "mean": {}, "std": {}, "diff": {}}
            for key in keys:
                values = [by_arm[arm][s][key] for s in seeds]
                row["mean"][key], row["std"][key] = _mean(values), _std(values)
                if "none" in by_arm and (key.startswith("final/") or key.startswith("auc/")):
                    common = [s for s in seeds if s in by_arm["none"]]
                    row["diff"][key] = paired([by_arm[arm][s][key] - by_arm["none"][s][key] for s in common])
            summary[setting][arm] = row
    return summary


# --------------------------------------------------------------------------------------------- output
def _pm(row: dict, key: str) -> str:
    m, s = row["mean"][key], row["std"][key]
    return f"{m:.3f} ± {s:.3f}" if not math.isnan(s) else f"{m:.3f}"


def _ci(row: dict, key: str) -> str:
    d = row["diff"].get(key)
    if d is None:
        return "–"
    if math.isnan(d["lo"]):
        return f"{d['mean']:+.3f}"
    star = "**" if d["lo"] > 0 or d["hi"] < 0 else ""
    return f"{star}{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]{star}"


def markdown(result: dict) -> str:
    size, summary, domains = result["size"], result["summary"], result["size"]["domains"]
    n_seeds = len(result["seeds"])
    lines = [
        "# Toy multi-domain GRPO: naive mixing vs gradient surgery",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Wall time: {result['wall_seconds']:.0f} s ({result['wall_seconds'] / 60:.1f} min) on {result['workers']} "
        f"worker processes, one torch thread each; {len(result['runs'])} GRPO runs, {n_seeds} seeds "
        f"({', '.join(map(str, result['seeds']))}).",
        "",
        f"Size: tiny Qwen2 (hidden {size['hidden']}, {size['layers']} layers), warm start {size['sft_steps']} SFT steps "
        f"× {size['sft_batch']}, then {size['steps']} GRPO steps of {size['prompts_per_domain']} prompts per domain × "
        f"{size['num_generations']} completions ({size['prompts_per_domain'] * size['num_generations']} completions per "
        f"domain per step), learning rate {size['learning_rate']:g} (constant), evaluation every "
        f"{size['eval_every']} steps (and at step 0) on {size['eval_prompts']} held-out prompts per domain × "
        f"{size['eval_samples']} completions sampled at temperature 1.",
        "",
        "final: reward at the last evaluation; AUC: mean of the evaluation curve over training (trapezoid). "
        "Levels are mean ± std over seeds. Δ is the mean over seeds of the paired per-seed difference against "
        "`none` (naive mixing), with its 95% t-interval; bold where the interval excludes 0. Update norm and "
        "change ratio: per-step means of `mgs/update_norm` and `mgs/change_ratio`, mean over seeds.",
    ]
    for setting, rows in summary.items():
        conf = result["settings"][setting]
        scale = ", ".join(f"{d} ×{s:g}" for d, s in conf["reward_scale"].items()) or "none"
        lines += ["", f"## Setting `{setting}`: scale_rewards=\"{conf['scale_rewards']}\", reward multipliers: {scale}",
                  "", "### Levels", "",
                  "| arm | " + " | ".join(f"{d} final" for d in domains) + " | **mean final** | "
                  + " | ".join(f"{d} AUC" for d in domains) + " | **mean AUC** | update norm | change ratio |",
                  "|---" * (2 * len(domains) + 5) + "|"]
        for arm, row in rows.items():
            cells = [_pm(row, f"final/{d}") for d in domains] + [_pm(row, "final/mean")]
            cells += [_pm(row, f"auc/{d}") for d in domains] + [_pm(row, "auc/mean")]
            cells += [f"{row['mean']['update_norm']:.3g}", f"{row['mean']['change_ratio']:.3f}"]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines += ["", "### Paired difference against `none` (95% t-interval over seeds)", "",
                  "| arm | " + " | ".join(f"Δ {d} final" for d in domains) + " | **Δ mean final** | "
                  + " | ".join(f"Δ {d} AUC" for d in domains) + " | **Δ mean AUC** |",
                  "|---" * (2 * len(domains) + 3) + "|"]
        for arm, row in rows.items():
            cells = [_ci(row, f"final/{d}") for d in domains + ["mean"]] + [_ci(row, f"auc/{d}") for d in domains + ["mean"]]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "Curves: `toy_multidomain.png`; per-run data and checksums: `toy_multidomain.json`.", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings, arms, domains = list(result["summary"]), result["arms"], result["size"]["domains"]
    fig, axes = plt.subplots(len(settings), len(arms), figsize=(2.3 * len(arms), 2.3 * len(settings)),
                             sharex=True, sharey=True, squeeze=False)
    for i, setting in enumerate(settings):
        for j, arm in enumerate(arms):
            ax = axes[i][j]
            runs = [r for r in result["runs"] if r["setting"] == setting and r["arm"] == arm]
            if not runs:
                continue
            steps = runs[0]["eval_steps"]
            for d in domains:
                curve = [_mean([r["eval"][d][k] for r in runs]) for k in range(len(steps))]
                ax.plot(steps, curve, label=d)
            curve = [_mean([_mean([r["eval"][d][k] for d in domains]) for r in runs]) for k in range(len(steps))]
            ax.plot(steps, curve, color="black", linestyle="--", label="mean")
            ax.set_title(f"{arm}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{setting}\neval reward", fontsize=9)
            if i == len(settings) - 1:
                ax.set_xlabel("GRPO step", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Per-domain eval reward (sampled, T=1), mean over {len(result['seeds'])} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


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
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated arms: {', '.join(ARMS)}")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated settings: {', '.join(SETTINGS)}")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (one torch thread each)")
    parser.add_argument("--from-json", default=None, metavar="PATH",
                        help="re-render the table and plot from a saved toy_multidomain.json (no training) into --out "
                             "(default: the JSON's folder)")
    parser.add_argument("--out", default=None,
                        help="output folder (default docs/results; runs/toy_multidomain_quick with --quick)")
    args = parser.parse_args(argv)
    args.arm_list = _names(args.arms, ARMS, "arms")
    if "none" not in args.arm_list:
        args.arm_list = ["none", *args.arm_list]  # the reference of every paired difference
    args.setting_list = _names(args.settings, SETTINGS, "settings")
    return args


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
    if args.from_json:
        source = Path(args.from_json)
        result = json.loads(source.read_text())
        result["summary"] = summarize(result["runs"], result["size"]["domains"], result["arms"], list(result["settings"]))
        print(write(result, Path(args.out) if args.out else source.parent))
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
    out.mkdir(parents=True, exist_ok=True)
    given = sys.argv[1:] if argv is None else argv
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *given])
    start = time.perf_counter()
    jobs = [(s, a, seed) for seed in seeds for s in args.setting_list for a in args.arm_list]
    print(f"{len(seeds)} warm starts, then {len(jobs)} GRPO runs of {size.steps} steps on {args.workers} workers", flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as warm_dir, ProcessPoolExecutor(
        max_workers=args.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
    ) as pool:
        paths = {seed: os.path.join(warm_dir, f"warm_seed{seed}.pt") for seed in seeds}
        warm = list(pool.map(warm_start, [size] * len(seeds), seeds, [paths[s] for s in seeds]))
        print(f"warm starts done at {time.perf_counter() - start:.0f} s", flush=True)
        futures = [pool.submit(run_arm, size, s, a, seed, paths[seed]) for s, a, seed in jobs]
        for i, future in enumerate(futures):
            run = future.result()
            runs.append(run)
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
    table = write(result, out)
    print("\n" + table)
    print(f"wrote {out}/toy_multidomain.md, .json, .png ({wall:.0f} s)")
    return result


if __name__ == "__main__":
    main()
