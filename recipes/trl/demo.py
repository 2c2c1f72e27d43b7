"""Multi-domain GRPO with modular gradient surgery on a laptop CPU, in a few minutes.

    python recipes/trl/demo.py --config recipes/trl/demo.yaml                  # surgery=modular
    python recipes/trl/demo.py --config recipes/trl/demo.yaml --surgery none   # naive mixing

A tiny Qwen2-architecture model is built locally (no download), warm-started with TRL's SFTTrainer
on three digit-string transforms that share one prompt format (copy, reverse, sort: see mgs_tools.toy),
then trained with ``MGSGRPOTrainer`` on a mixture holding the same number of prompts of each domain
in every generation batch. Writes to ``output_dir``: ``rewards.json`` (per-step per-domain reward
means and surgery statistics), ``summary.md`` (the table printed at the end) and ``rewards.png``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trl import SFTConfig, SFTTrainer, TrlParser  # noqa: E402

from mgs_tools.toy import TRANSFORMS, char_tokenizer, domain_rows, sft_dataset, tiny_causal_lm, transform_reward  # noqa: E402
from trl_mgs import MGSGRPOConfig, MGSGRPOTrainer, check_trl_compatible, interleave_domains  # noqa: E402


@dataclass
class DemoArguments:
    """The demo's own knobs; every GRPO setting is an ``MGSGRPOConfig`` field (``domains`` picks toy domains)."""

    digits: int = field(default=4, metadata={"help": "Length of the digit strings."})
    prompts_per_domain: int = field(default=2000, metadata={"help": "GRPO prompts per domain."})
    hidden_size: int = field(default=64, metadata={"help": "Hidden size of the tiny model."})
    num_layers: int = field(default=2, metadata={"help": "Decoder layers of the tiny model."})
    sft_steps: int = field(default=60, metadata={"help": "Supervised warm-start steps (0: none)."})
    sft_learning_rate: float = field(default=3e-3, metadata={"help": "Learning rate of the warm start."})
    summary_fraction: float = field(default=0.2, metadata={"help": "Share of steps averaged for the start/end columns."})


def warm_start(model, tokenizer, demo: DemoArguments, args: MGSGRPOConfig):
    """A short supervised start, so that GRPO's rewards begin well above zero but far from solved."""
    if demo.sft_steps == 0:
        return model
    config = SFTConfig(
        output_dir=os.path.join(args.output_dir, "warmup"), max_steps=demo.sft_steps, per_device_train_batch_size=32,
        learning_rate=demo.sft_learning_rate, lr_scheduler_type="constant", use_cpu=args.use_cpu, bf16=False,
        report_to="none", save_strategy="no", logging_steps=max(1, demo.sft_steps // 4), seed=args.seed,
        disable_tqdm=args.disable_tqdm, max_length=32, gradient_checkpointing=False,
    )
    data = sft_dataset(args.domains, n_per_domain=demo.sft_steps * 32 // len(args.domains) + 1,
                       length=demo.digits, seed=args.seed)
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    return trainer.model


def grpo_dataset(demo: DemoArguments, args: MGSGRPOConfig):
    """Prompts of every domain, mixed with equal counts in every generation batch (other rows than the warm start's)."""
    prompts_per_batch = args.generation_batch_size // args.num_generations
    check_trl_compatible(args, prompts_per_batch)
    sources = {d: [{"prompt": r["prompt"], "digits": r["digits"]}
                   for r in domain_rows(d, demo.prompts_per_domain, demo.digits, seed=args.seed + 1)]
               for d in args.domains}
    proportions = {d: 1 / len(args.domains) for d in args.domains}
    return interleave_domains(sources, proportions, batch_size=prompts_per_batch, seed=args.seed, stopping="cycle")


def summarize(history: list[dict], domains: list[str], fraction: float) -> dict:
    """Per-step series from TRL's log history, and start/end means over the first and last ``fraction`` of steps."""
    steps = [h for h in history if "mgs/conflict_frac" in h]
    series = {d: [h.get(f"mgs/reward/{d}/mean") for h in steps] for d in domains}
    stats = {key: [h.get(f"mgs/{key}") for h in steps]
             for key in ("conflict_frac", "cosine_mean", "cosine_global", "change_ratio", "update_norm")}
    n = max(1, int(len(steps) * fraction))

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else float("nan")

    table = {d: {"start": mean(series[d][:n]), "end": mean(series[d][-n:])} for d in domains}
    return {"steps": [h["step"] for h in steps], "rewards": series, "stats": stats, "table": table, "window": n,
            "conflict_frac": mean(stats["conflict_frac"]), "cosine_global": mean(stats["cosine_global"])}


def markdown(summary: dict, args: MGSGRPOConfig, seconds: float) -> str:
    n, steps = summary["window"], len(summary["steps"])
    lines = [f"surgery={args.surgery} (granularity {args.surgery_granularity}), {steps} GRPO steps, {seconds:.0f} s",
             "", f"| domain | reward, first {n} steps | reward, last {n} steps | change |", "|---|---|---|---|"]
    rows = summary["table"]
    for d, r in rows.items():
        lines.append(f"| {d} | {r['start']:.3f} | {r['end']:.3f} | {r['end'] - r['start']:+.3f} |")
    start = sum(r["start"] for r in rows.values()) / len(rows)
    end = sum(r["end"] for r in rows.values()) / len(rows)
    lines.append(f"| **mean** | {start:.3f} | {end:.3f} | {end - start:+.3f} |")
    lines += ["", f"mean over steps: conflict_frac {summary['conflict_frac']:.3f} (module, domain pair) with a negative "
              f"dot product; whole-model cosine {summary['cosine_global']:+.3f}"]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    window = max(1, len(summary["steps"]) // 20)
    for d, values in summary["rewards"].items():
        points = [(s, v) for s, v in zip(summary["steps"], values) if v is not None]
        xs, ys = [s for s, _ in points], [v for _, v in points]
        smooth = [sum(ys[max(0, i - window + 1) : i + 1]) / len(ys[max(0, i - window + 1) : i + 1]) for i in range(len(ys))]
        ax.plot(xs, smooth, label=d)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel(f"mean reward (moving average of {window})")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = TrlParser((DemoArguments, MGSGRPOConfig))
    demo, args = parser.parse_args_and_config(argv)
    args.domains = args.domains or list(TRANSFORMS)
    unknown = sorted(set(args.domains) - set(TRANSFORMS))
    if unknown:
        raise ValueError(f"unknown demo domains {unknown}; choose from {sorted(TRANSFORMS)}.")
    start = time.perf_counter()
    tokenizer = char_tokenizer()
    model = tiny_causal_lm(hidden=demo.hidden_size, layers=demo.num_layers, seed=args.seed)
    model = warm_start(model, tokenizer, demo, args)
    trainer = MGSGRPOTrainer(model=model, reward_funcs=[transform_reward], args=args,
                             train_dataset=grpo_dataset(demo, args), processing_class=tokenizer)
    trainer.train()
    seconds = time.perf_counter() - start
    summary = summarize(trainer.state.log_history, list(trainer.surgery.domains), demo.summary_fraction)
    summary["seconds"] = seconds
    summary["surgery"] = args.surgery
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "rewards.json"), "w") as f:
        json.dump(summary, f, indent=1)
    table = markdown(summary, args, seconds)
    with open(os.path.join(args.output_dir, "summary.md"), "w") as f:
        f.write(table)
    plot(summary, os.path.join(args.output_dir, "rewards.png"), f"per-domain reward, surgery={args.surgery}")
    print("\n" + table + f"\nwrote {args.output_dir}/rewards.json, summary.md, rewards.png")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
