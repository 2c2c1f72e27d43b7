"""The toy benchmark's outputs: the markdown tables (levels, paired differences, comparisons between arms, the
noise check) and the plot of the evaluation curves (matplotlib, imported by :func:`plot`)."""

from __future__ import annotations

import math
from pathlib import Path

from toy_multidomain_lib.statistics import _mean

def noise_markdown(result: dict) -> str:
    size, summary = result["size"], result["summary"]
    runs, domains = result["runs"], result["size"]["domains"]
    unchanged = all(r["checksum_before"] == r["checksum_after"] for r in runs)
    warm = ", ".join(f"seed {w['seed']}: {w['checksum']}" for w in result["warm_starts"])
    lines = [
        "## Noise floor: the same domain in two batches vs different domains",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Wall time: {result['wall_seconds']:.0f} s on {result['workers']} worker processes, one torch thread each.",
        "",
        f"Each domain is split into two pseudo-domains (`{domains[0]}#a`, `{domains[0]}#b`, ...: two independent prompt "
        f"batches of that domain, the reward routed by the real domain). From the benchmark's warm start (weights "
        f"checksum {warm}), {result['steps']} GRPO steps at learning rate 0 with `MGSGRPOTrainer`, "
        f"`surgery=\"none\"`, the `default` setting (`scale_rewards=\"group\"`), {size['num_generations']} completions "
        f"per prompt (weights unchanged after the steps: {'yes' if unchanged else 'NO'}). At each step, the whole-model "
        f"cosines come from the Gram matrix of the {2 * len(domains)} pseudo-domains' gradients: same domain = the "
        f"{len(domains)} pairs (`d#a`, `d#b`); different domains = the other "
        f"{len(domains) * (2 * len(domains) - 1) - len(domains)} pairs. Cells: mean ± std over the "
        f"{result['steps']} steps{' and seeds' if len(result['seeds']) > 1 else ''}; same − different: mean of the "
        "per-step difference with its 95% t-interval over steps.",
        "",
        "| completions per domain batch | same domain, two batches (noise floor) | different domains | same − different | "
        + " | ".join(f"same: {d}" for d in domains) + " |",
        "|---" * (4 + len(domains)) + "|",
    ]
    for c, row in summary.items():
        plural = "s" if row["prompts"] > 1 else ""
        label = f"{c} ({row['prompts']} prompt{plural} × {size['num_generations']})"
        if row["prompts"] == size["prompts_per_domain"]:
            label += ": **the default**"
        diff = row["same_minus_cross"]
        cells = [label, f"{row['same']:+.3f} ± {row['same_std']:.3f}", f"{row['cross']:+.3f} ± {row['cross_std']:.3f}",
                 f"{diff['mean']:+.3f} [{diff['lo']:+.3f}, {diff['hi']:+.3f}]"]
        cells += [f"{row['same_by_domain'].get(d, float('nan')):+.3f}" for d in domains]
        lines.append("| " + " | ".join(cells) + " |")
    missing = {c: row["pairs_without_cosine"] for c, row in summary.items() if row["pairs_without_cosine"]}
    if missing:
        lines += ["", "Pairs without a cosine (a pseudo-domain whose gradient was zero: every completion of each of "
                  f"its prompts got the same reward), left out: {missing}."]
    return "\n".join(lines) + "\n"


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
        lines += ["", "### Paired difference against `none` (95% t-interval over seeds)", "", *_diff_header(["arm"], domains)]
        for arm, row in rows.items():
            lines.append(f"| {arm} | " + " | ".join(_diff_cells(row["diff"], domains)) + " |")
    if result.get("comparisons"):
        lines += ["", compare_markdown(result["comparisons"], domains).rstrip("\n")]
    lines += ["", "Curves: `toy_multidomain.png`; per-run data and checksums: `toy_multidomain.json`.", ""]
    return "\n".join(lines)


def _diff_header(first: list[str], domains: list[str]) -> list[str]:
    """Header and separator of a table of paired differences whose first columns are ``first``."""
    return ["| " + " | ".join(first) + " | " + " | ".join(f"Δ {d} final" for d in domains) + " | **Δ mean final** | "
            + " | ".join(f"Δ {d} AUC" for d in domains) + " | **Δ mean AUC** |",
            "|---" * (2 * len(domains) + 2 + len(first)) + "|"]


def _diff_cells(diffs: dict, domains: list[str]) -> list[str]:
    """The cells of one row of paired differences (:func:`paired_diffs`), in :func:`_diff_header`'s order."""
    row = {"diff": diffs}
    return [_ci(row, f"final/{d}") for d in [*domains, "mean"]] + [_ci(row, f"auc/{d}") for d in [*domains, "mean"]]


def compare_markdown(comparisons: dict, domains: list[str], command: str | None = None) -> str:
    """The table of :func:`compare`'s paired differences between arms, one row per (setting, comparison)."""
    lines = ["## Paired differences between arms (95% t-interval over seeds)", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += ["Δ is the mean over seeds of the paired per-seed difference A − B, with its 95% t-interval (the same "
              "statistic as the difference against `none`); bold where the interval excludes 0.", "",
              *_diff_header(["setting", "comparison"], domains)]
    for setting, pairs in comparisons.items():
        for name, diffs in pairs.items():
            a, b = name.split("-")
            lines.append(f"| {setting} | {a} − {b} | " + " | ".join(_diff_cells(diffs, domains)) + " |")
    return "\n".join(lines) + "\n"


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
