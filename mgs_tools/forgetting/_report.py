"""The terminal summary and the PNG of an :func:`~mgs_tools.forgetting.analyze` result."""

from __future__ import annotations

from typing import Any


def _f(x, spec: str = "+.4f") -> str:
    return "n/a" if x is None else format(x, spec)


def summary(result: dict[str, Any]) -> str:
    s = result["settings"]
    u = result["units"]
    lines = [f"phases: {' -> '.join(c['phase'] for c in result['checkpoints'])}; units: {u['mlp']} MLP neurons, "
             f"{u['q_head']} query heads, {u['kv_head']} key-value heads", "",
             f"update sparsity      |d| < {s['threshold']:g}   ||d||/||W||"]
    for phase, row in result["sparsity"].items():
        o = row["overall"]
        lines.append(f"{phase:20s} {_f(o['small_frac'], '8.1%')}   {_f(o['rel_change'], '.3g')}")
    e = result["edits"]
    lines += ["", f"edit overlap: Jaccard of the top {e['top_percent']:g}% changed units (chance {e['chance']:.3f})"]
    for pair, row in e["pairs"].items():
        kinds = ", ".join(f"{k} {_f(v, '.3f')}" for k, v in row["by_kind"].items())
        lines.append(f"  {pair:24s} {_f(row['overall'], '.3f')}  ({kinds})")
    r = result["routes"]
    lines += ["", f"route overlap: Jaccard of the top {r['top_percent']:g}% active units at {r['checkpoint']} "
                  f"(chance {r['chance']:.3f})"]
    for pair, row in r["pairs"].items():
        kinds = ", ".join(f"{k} {_f(v, '.3f')}" for k, v in row["by_kind"].items())
        lines.append(f"  {pair:24s} {_f(row['overall'], '.3f')}  ({kinds})")
    d = result.get("damage")
    if d:
        lines += ["", f"damage to {d['domain']} (delta = {d['after']} - {d['before']}, ||delta|| {d['delta_norm']:.3g}): "
                      f"loss {d['loss_before']:.4f} -> {d['loss_after']:.4f}",
                  f"  actual {_f(d['actual'])} = first order {_f(d['first_order'])} + second order "
                  f"{_f(d['second_order'])} + rest {_f(d['residual'])}",
                  "  by family (first / second): " + ", ".join(
                      f"{f} {_f(v['first'])} / {_f(v['second'])}" for f, v in d["by_family"].items())]
        for dom, c in d["gradient_cosine"].items():
            lines.append(f"  gradient cosine {d['domain']}|{dom} at {d['before']}: global {_f(c['global'], '+.3f')}, "
                         f"negative in {_f(c['negative_frac'], '.0%')} of modules, most conflicting "
                         f"{c['most_conflicting']['module']} {_f(c['most_conflicting']['cosine'], '+.3f')}, most "
                         f"synergistic {c['most_synergistic']['module']} {_f(c['most_synergistic']['cosine'], '+.3f')}")
    rb = result.get("rollback")
    if rb:
        domains = list(rb["before"])
        lines += ["", f"rollback toward {d['before'] if d else 'the earlier checkpoint'} (score: route conflict x "
                      f"{rb['score']}); evaluation before -> after (noise):"]
        lines += [f"  {dom}: {rb['before'][dom]:.4f} -> {rb['after'][dom]:.4f} (+-{rb['noise'][dom]:.4f})"
                  for dom in domains]
        lines.append("  scope   x%   units  " + "  ".join(f"{dom + ' (recovery)':>24s}" for dom in domains))
        for scope, curve in rb["curves"].items():
            for p in curve:
                cells = [f"{p['value'][dom]:.4f} ({_f(p['recovery'][dom], '+.1%')})" for dom in domains]
                lines.append(f"  {scope:6s} {p['percent']:4g} {p['units']:6d}  " + "  ".join(f"{c:>24s}" for c in cells))
        lines.append("  recovery = (rolled back - after) / (before - after); n/a where |before - after| is within the "
                     "noise (95% half-width of the per-row differences)")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str) -> None:
    """Four panels: |Δ| histograms per phase, edit and route Jaccard per layer, the damage terms by family, the
    rollback recovery curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0][0]
    phases = list(result["sparsity"])
    bins = result["sparsity"][phases[0]]["histogram"]["bins"]
    width = 0.8 / len(phases)
    for i, phase in enumerate(phases):
        counts = result["sparsity"][phase]["histogram"]["counts"]
        total = sum(counts) or 1
        ax.bar([j + i * width for j in range(len(bins))], [c / total for c in counts], width, label=phase)
    ax.set_xticks(range(len(bins)), bins, rotation=60, fontsize=6)
    ax.set_ylabel("share of parameters")
    ax.set_title(f"|delta| per phase (threshold {result['settings']['threshold']:g})", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0][1]
    for name, part, style in (("edits", result["edits"], "-"), ("routes", result["routes"], "--")):
        for pair, row in part["pairs"].items():
            layers = sorted(row["by_layer"], key=int)
            ax.plot([int(layer) for layer in layers], [row["by_layer"][layer] for layer in layers], style, marker="o",
                    label=f"{name} {pair}")
        ax.axhline(part["chance"], color="grey", linestyle=style, linewidth=0.8)
    ax.set_xlabel("layer")
    ax.set_ylabel("Jaccard")
    ax.set_title("top-changed (edits, solid) and top-active (routes, dashed) units", fontsize=9)
    ax.legend(fontsize=6)
    ax = axes[1][0]
    d = result.get("damage")
    if d:
        families = list(d["by_family"])
        xs = range(len(families))
        ax.bar([x - 0.2 for x in xs], [d["by_family"][f]["first"] for f in families], 0.4, label="first order g.delta")
        ax.bar([x + 0.2 for x in xs], [d["by_family"][f]["second"] for f in families], 0.4,
               label="second order 1/2 delta.H delta")
        ax.set_xticks(list(xs), families, fontsize=7)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(f"damage to {d['domain']}: actual {d['actual']:+.4f} = {d['first_order']:+.4f} + "
                     f"{d['second_order']:+.4f} + {d['residual']:+.4f}", fontsize=9)
        ax.legend(fontsize=7)
    else:
        ax.set_axis_off()
    ax = axes[1][1]
    rb = result.get("rollback")
    if rb:
        for scope, curve in rb["curves"].items():
            for dom in rb["before"]:
                points = [(p["percent"], p["recovery"][dom]) for p in curve if p["recovery"][dom] is not None]
                if points:
                    ax.plot(*zip(*points), "-" if scope == "mlp" else "--", marker="o", label=f"{scope}: {dom}")
        ax.set_xscale("log", base=2)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.axhline(1, color="grey", linewidth=0.6)
        ax.set_xlabel("units rolled back (%)")
        ax.set_ylabel("recovery")
        ax.set_title("rollback recovery (solid: MLP only; dashed: MLP + attention)", fontsize=9)
        ax.legend(fontsize=6)
    else:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
