"""The toy benchmark's statistics: per-run metrics (final reward, AUC), the paired per-seed differences with their
95% t-intervals (against ``none`` and between any two arms), and the noise check's cosines."""

from __future__ import annotations

import math

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
        29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
"""Two-sided 95% quantiles of Student's t by degrees of freedom."""


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


def _metrics_by_arm(runs: list[dict], domains: list[str], setting: str, arms: list[str]) -> dict[str, dict[int, dict]]:
    """Arm -> seed -> :func:`run_metrics` of that run, for the runs of ``setting``."""
    return {a: {r["seed"]: run_metrics(r, domains) for r in runs if r["setting"] == setting and r["arm"] == a}
            for a in arms}


def paired_diffs(a: dict[int, dict], b: dict[int, dict]) -> dict[str, dict]:
    """Per reward metric (``final/...``, ``auc/...``): :func:`paired` of the per-seed differences a − b over the
    seeds both have. ``a`` and ``b`` map seed -> :func:`run_metrics`."""
    seeds = sorted(a)
    keys = list(a[seeds[0]]) if seeds else []
    common = [s for s in seeds if s in b]
    return {key: paired([a[s][key] - b[s][key] for s in common])
            for key in keys if key.startswith("final/") or key.startswith("auc/")}


def summarize(runs: list[dict], domains: list[str], arms: list[str], settings: list[str]) -> dict:
    """Per (setting, arm): mean and std over seeds of every metric, and the paired difference against ``none``."""
    summary: dict = {}
    for setting in settings:
        by_arm = _metrics_by_arm(runs, domains, setting, arms)
        summary[setting] = {}
        for arm in arms:
            seeds = sorted(by_arm[arm])
            keys = list(by_arm[arm][seeds[0]]) if seeds else []
            row = {"seeds": seeds, "mean": {}, "std": {}, "diff": {}}
            for key in keys:
                values = [by_arm[arm][s][key] for s in seeds]
                row["mean"][key], row["std"][key] = _mean(values), _std(values)
            if "none" in by_arm:
                row["diff"] = paired_diffs(by_arm[arm], by_arm["none"])
            summary[setting][arm] = row
    return summary


def compare(runs: list[dict], domains: list[str], settings: list[str], pairs: list[tuple[str, str]]) -> dict:
    """Setting -> "A-B" -> the paired per-seed differences A − B of every reward metric (:func:`paired_diffs`, the
    same statistic as the table's difference against ``none``)."""
    out: dict = {}
    for setting in settings:
        by_arm = _metrics_by_arm(runs, domains, setting, sorted({a for pair in pairs for a in pair}))
        out[setting] = {f"{a}-{b}": paired_diffs(by_arm[a], by_arm[b]) for a, b in pairs}
    return out


# --------------------------------------------------------------------------------------------- noise floor
def _finite_mean(xs: list[float]) -> float:
    return _mean([x for x in xs if x is not None and not math.isnan(x)])


def _cosines(gram: list[list[float]]) -> list[list[float]]:
    k = len(gram)
    return [[gram[i][j] / math.sqrt(gram[i][i] * gram[j][j]) if gram[i][i] > 0 and gram[j][j] > 0 else float("nan")
             for j in range(k)] for i in range(k)]


def noise_summary(runs: list[dict]) -> dict:
    """Per completions per domain batch: per step (and seed), the mean whole-model cosine of the same-domain pairs
    (``d#a``, ``d#b``) and of the cross-domain pairs; their mean and std over steps, the same-domain cosine per
    domain, and the paired difference same − cross over steps (:func:`paired`)."""
    out: dict = {}
    for c in sorted({r["completions"] for r in runs}):
        same, cross, per_domain, missing = [], [], {}, 0
        for run in (r for r in runs if r["completions"] == c):
            real = [n.split("#")[0] for n in run["domains"]]
            k = len(real)
            for gram in run["grams"]:
                cos = _cosines(gram)
                pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
                missing += sum(math.isnan(cos[i][j]) for i, j in pairs)
                s = _finite_mean([cos[i][j] for i, j in pairs if real[i] == real[j]])
                x = _finite_mean([cos[i][j] for i, j in pairs if real[i] != real[j]])
                if math.isnan(s) or math.isnan(x):
                    continue  # a step without a usable pair of either kind
                same.append(s)
                cross.append(x)
                for i, j in pairs:
                    if real[i] == real[j] and not math.isnan(cos[i][j]):
                        per_domain.setdefault(real[i], []).append(cos[i][j])
        out[str(c)] = {
            "prompts": next(r["prompts"] for r in runs if r["completions"] == c), "n": len(same),
            "pairs_without_cosine": missing,
            "same": _mean(same), "same_std": _std(same), "cross": _mean(cross), "cross_std": _std(cross),
            "same_by_domain": {d: _mean(v) for d, v in per_domain.items()},
            "same_minus_cross": paired([a - b for a, b in zip(same, cross)]),
            "same_steps": same, "cross_steps": cross,
        }
    return out
