"""Compare demo runs: every arm's per-domain reward curves in one picture and one table.

    python recipes/trl/compare_runs.py runs/demo/none runs/demo/modular            # two finished runs
    python recipes/trl/compare_runs.py runs/demo/none runs/demo/modular --out runs/demo/compare_none_modular

Each folder is a run of ``recipes/trl/demo.py`` (its ``rewards.json``); ``demo.py --compare none,modular``
runs the arms and then calls this. Writes ``compare.md`` (the table printed), ``compare.json`` and
``compare.png`` (one panel per domain plus their mean, one line per arm) to ``--out`` (default: a folder
``compare_<arm>_<arm>`` beside the first run). The table says which settings the runs differ in; one
run per arm is one seed, so the benchmark (benchmarks/toy_multidomain.py) is where arms are compared
with intervals.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence

REWARDS = "rewards.json"


class CompareError(ValueError):
    """A run folder that cannot be compared (missing, not a demo run, other domains)."""


def load_run(folder: str) -> dict:
    """A demo run's ``rewards.json``, with the folder it came from under ``"folder"``."""
    path = os.path.join(folder, REWARDS)
    if not os.path.isfile(path):
        raise CompareError(f"{folder!r} has no {REWARDS}; pass folders written by recipes/trl/demo.py "
                           "(run the demo first, or check the path).")
    with open(path) as f:
        run = json.load(f)
    for key in ("steps", "rewards", "table"):
        if key not in run:
            raise CompareError(f"{path} has no {key!r}: it was not written by recipes/trl/demo.py (or by an older "
                               "version of it); rerun the demo.")
    run["folder"] = folder
    run.setdefault("arm", os.path.basename(os.path.normpath(folder)))
    return run


def _differences(runs: list[dict], key: str) -> dict[str, list]:
    """Entries of ``run[key]`` (a flat dict) whose values are not the same in every run."""
    names = list(dict.fromkeys(n for r in runs for n in r.get(key, {})))
    values = {n: [r.get(key, {}).get(n, "-") for r in runs] for n in names}
    return {n: v for n, v in values.items() if any(x != v[0] for x in v)}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def compare(folders: Sequence[str], out: str | None = None, *, quiet: bool = False) -> dict:
    """Compare demo runs; write ``compare.md``, ``compare.json`` and ``compare.png`` to ``out``; return the comparison.

    Raises:
        CompareError: fewer than two runs, a folder without a demo run, or runs over different domains.
    """
    if len(folders) < 2:
        raise CompareError(f"need at least two run folders to compare; got {list(folders)}.")
    runs = [load_run(f) for f in folders]
    domains = list(runs[0]["table"])
    for run in runs[1:]:
        if list(run["table"]) != domains:
            raise CompareError(f"{run['folder']} has domains {list(run['table'])}, {runs[0]['folder']} has {domains}: "
                               "only runs over the same domains can be compared.")
    arms = [r["arm"] for r in runs]
    if len(set(arms)) < len(arms):  # same arm twice (e.g. two seeds): name them by folder
        arms = [os.path.normpath(r["folder"]) for r in runs]
    if out is None:
        out = os.path.join(os.path.dirname(os.path.normpath(folders[0])), "compare_" + "_".join(arms))
    settings = _differences(runs, "settings")
    training = _differences(runs, "training")
    table = {d: {arm: dict(r["table"][d]) for arm, r in zip(arms, runs)} for d in domains}
    means = {arm: {k: _mean([r["table"][d][k] for d in domains]) for k in ("start", "end")} for arm, r in zip(arms, runs)}
    result = {"arms": arms, "folders": [r["folder"] for r in runs], "domains": domains, "table": table, "mean": means,
              "differ": {"settings": settings, "training": training}, "out": out}
    os.makedirs(out, exist_ok=True)
    text = markdown(result, runs)
    with open(os.path.join(out, "compare.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "compare.json"), "w") as f:
        json.dump(result, f, indent=1)
    figure(result, runs).savefig(os.path.join(out, "compare.png"), dpi=100)
    if not quiet:
        print(text + f"\nwrote {out}/compare.md, compare.json, compare.png")
    return result


def _describe(diff: dict[str, list]) -> str:
    return "; ".join(f"{name} ({' | '.join(map(str, values))})" for name, values in diff.items())


def markdown(result: dict, runs: list[dict]) -> str:
    arms, first = result["arms"], result["arms"][0]
    windows = sorted({r.get("window") for r in runs if r.get("window")})
    window = f"{windows[0]} steps" if len(windows) == 1 else "20% of steps"
    lines = [f"# {' vs '.join(arms)}", ""]
    differ = result["differ"]
    lines.append("surgery settings that differ: " + (_describe(differ["settings"]) or "none (same surgery settings)"))
    if differ["training"]:
        lines.append("other settings that differ: " + _describe(differ["training"]))
    lines += ["", f"mean reward over the first and last {window}; the last column is each arm's last minus "
              f"{first}'s", ""]
    head = ["domain"] + [f"{a}: first -> last" for a in arms] + [f"{a} - {first}, last" for a in arms[1:]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = {**result["table"], "**mean**": result["mean"]}
    for domain, per_arm in rows.items():
        cells = [domain] + [f"{per_arm[a]['start']:.3f} -> {per_arm[a]['end']:.3f}" for a in arms]
        cells += [f"{per_arm[a]['end'] - per_arm[first]['end']:+.3f}" for a in arms[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "One run per arm is one seed: a difference of this size can come from the seed alone "
              "(docs/demo.md); benchmarks/toy_multidomain.py compares arms over 10 seeds with intervals."]
    return "\n".join(lines) + "\n"


def _smooth(values: list[float], window: int) -> list[float]:
    return [_mean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def figure(result: dict, runs: list[dict]):
    """The comparison picture: one panel per domain and one for their mean, one line per arm (object API: the caller's
    matplotlib backend is never changed)."""
    from matplotlib.figure import Figure

    panels = result["domains"] + ["mean"]
    ncols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5.0 * ncols, 3.0 * nrows + 0.6), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    window = max(1, max(len(r["steps"]) for r in runs) // 20)
    for ax, panel in zip(axes, panels):
        for arm, run in zip(result["arms"], runs):
            if panel == "mean":
                series = [[run["rewards"][d][i] for d in result["domains"]] for i in range(len(run["steps"]))]
                values = [_mean([v for v in s if v is not None]) if any(v is not None for v in s) else None
                          for s in series]
            else:
                values = run["rewards"][panel]
            points = [(s, v) for s, v in zip(run["steps"], values) if v is not None]
            if points:
                ax.plot([s for s, _ in points], _smooth([v for _, v in points], window), label=arm)
        ax.set_title(panel if panel != "mean" else "mean over domains", fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_xlabel("GRPO step", fontsize=8)
        ax.set_ylabel(f"reward (moving avg. {window})", fontsize=8)
        ax.legend(fontsize=7)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    differ = _describe(result["differ"]["settings"]) or "same surgery settings"
    fig.suptitle(f"per-domain reward: {' vs '.join(result['arms'])}\ndiffer in: {differ}", fontsize=9)
    return fig


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="compare_runs.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("runs", nargs="+", help="two or more folders written by recipes/trl/demo.py")
    parser.add_argument("--out", default=None, help="where compare.md, compare.json and compare.png go "
                                                    "(None: compare_<arms> beside the first run)")
    args = parser.parse_args(argv)
    try:
        return compare(args.runs, args.out)
    except CompareError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main(sys.argv[1:])
