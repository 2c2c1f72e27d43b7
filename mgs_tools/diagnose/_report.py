"""The terminal table and the PNG heatmap of a :class:`~mgs_tools.diagnose.DiagnoseResult` (its ``table()`` and
``heatmap()``). matplotlib (the ``plot`` extra) is imported by :func:`heatmap` only."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from mgs_tools.diagnose._results import DiagnoseResult


def table(result: DiagnoseResult, per_module: bool = False) -> str:
    """The terminal report: per pair and per domain summaries, then cosines by module kind."""
    pairs = result.pairs()
    lines = [f"model: {result.model or '?'}    granularity: {result.settings.get('granularity', '?')}    "
             f"modules: {len(result.modules)}"]
    counts = (f"{d} ({result.rows[d]} rows, {result.tokens[d]} tokens)" for d in result.domains)
    lines.append("domains: " + ", ".join(counts))
    lines.append("")
    w = max([len(f"{a}|{b}") for a, b in pairs] + [len(d) for d in result.domains] + [12])
    lines.append(f"{'pair':<{w}}  {'global cos':>10}  {'conflict':>8}  {'denoised':>8}")
    for a, b in pairs:
        lines.append(f"{a + '|' + b:<{w}}  {_f(result.global_cosine(a, b)):>10}  "
                     f"{_pct(result.conflict_frac(a, b)):>8}  {_f(result.global_denoised_cosine(a, b)):>8}")
    lines.append("")
    lines.append(f"{'noise floor':<{w}}  {'global cos':>10}  {'median':>8}  {'grad norm':>9}")
    for d in result.domains:
        floor = result.noise_floor(d)
        norm = float(result.grad_norm(d).square().sum().sqrt())
        lines.append(f"{d:<{w}}  {_f(result.global_noise_floor(d)):>10}  {_f(_nanmedian(floor)):>8}  {norm:>9.3g}")
    lines.append("")
    # By kind: mean cosine over the kind's modules, and how many are negative.
    summary = kind_summary(result)
    kinds, cols = summary["kinds"], summary["columns"]
    kw = max([len(k) for k in kinds] + [4])
    cw = max([len(c) for c in cols] + [13])
    lines.append("mean cosine by module kind over layers (negative / modules):")
    lines.append(f"{'kind':<{kw}}  " + "  ".join(f"{c:>{cw}}" for c in cols))
    for r, k in enumerate(kinds):
        cells = []
        for c, col in enumerate(cols):
            mean = float(summary["mean"][r, c])
            cells.append(_f(mean) if col.startswith("floor")
                         else f"{_f(mean)} ({int(summary['negative'][r, c])}/{int(summary['count'][r, c])})")
        lines.append(f"{k:<{kw}}  " + "  ".join(f"{c:>{cw}}" for c in cells))
    vals = [result.cosine(a, b) for a, b in pairs] + [result.noise_floor(d) for d in result.domains]
    if per_module:
        lines.append("")
        nw = max(len(m.name) for m in result.modules)
        lines.append(f"{'module':<{nw}}  " + "  ".join(f"{c:>{max(len(c), 7)}}" for c in cols))
        for n, m in enumerate(result.modules):
            lines.append(f"{m.name:<{nw}}  " + "  ".join(f"{_f(float(v[n])):>{max(len(c), 7)}}"
                                                         for c, v in zip(cols, vals)))
    return "\n".join(lines)


def kind_summary(result: DiagnoseResult) -> dict:
    """Per module kind (rows: ``q_proj``, ``mlp``, ``embed_tokens`` …) and column (each pair's cosine, then each
    domain's noise floor): the mean over the kind's modules (NaN-free ones), how many are negative, how many count."""
    pairs = result.pairs()
    kinds = list(dict.fromkeys(m.kind for m in result.modules))
    columns = [f"{a}|{b}" for a, b in pairs] + [f"floor {d}" for d in result.domains]
    values = [result.cosine(a, b) for a, b in pairs] + [result.noise_floor(d) for d in result.domains]
    mean = torch.full((len(kinds), len(columns)), math.nan)
    negative = torch.zeros(len(kinds), len(columns), dtype=torch.long)
    count = torch.zeros(len(kinds), len(columns), dtype=torch.long)
    for r, k in enumerate(kinds):
        idx = torch.tensor([n for n, m in enumerate(result.modules) if m.kind == k])
        for c, v in enumerate(values):
            sel = v[idx]
            sel = sel[~sel.isnan()]
            if sel.numel():
                mean[r, c] = float(sel.mean())
            negative[r, c], count[r, c] = int((sel < 0).sum()), sel.numel()
    return {"kinds": kinds, "columns": columns, "mean": mean, "negative": negative, "count": count}


def legend(json_path: str | None, png_path: str | None) -> str:
    """The lines the command line prints after the table: what the columns mean, where the files are, the docs."""
    lines = [
        "",
        "conflict: share of modules where the two domains' cosine is negative.",
        "noise floor: cosine between two disjoint halves of one domain's rows: near 1, the gradient is reproducible",
        "  at this batch size; near 0, it is batch noise, and cross-domain cosines there mean little.",
        "denoised: the pair's cosine with that noise removed (cross-half dot products; nan where a floor is <= 0).",
        "The mgs/conflict_frac logged in training (about 0.5 in the CPU demo) is measured on each step's few fresh",
        "  samples (16 a domain in the demo), where the floors are near 0 and the cosines mostly noise (try --max-rows",
        "  16): docs/diagnose.md, 'Why training logs more conflict'.",
    ]
    if json_path:
        lines.append(f"wrote {json_path}")
    if png_path:
        lines.append(f"wrote {png_path}")
    lines.append("more: docs/diagnose.md in the MGS repository (mgs-diagnose --help lists the options)")
    return "\n".join(lines)


def heatmap(result: DiagnoseResult, path: str | os.PathLike) -> None:
    """Write :func:`heatmap_figure` as a PNG."""
    heatmap_figure(result).savefig(path, dpi=120)


PANEL_HEIGHT_MAX = 6.0
"""Inches: a panel of many layers is squeezed to this height (cell labels are dropped where they no longer fit)."""
LABEL_POINTS_MIN = 4.0
"""The smallest font (points) a cell label is drawn in; cells too small for it get none."""


def _label_points(width_in: float, height_in: float, cols: int, rows: int) -> float:
    """The font size (points) at which a 5-character label ``+0.00`` fits a cell of a panel of this size; 0 if it
    would be below :data:`LABEL_POINTS_MIN`. The axes take about 75% of a panel's width and height."""
    cell_w, cell_h = 0.75 * width_in * 72 / max(cols, 1), 0.75 * height_in * 72 / max(rows, 1)
    points = min(7.0, cell_w / 3.2, cell_h / 1.6)
    return points if points >= LABEL_POINTS_MIN else 0.0


def heatmap_figure(result: DiagnoseResult):
    """The heatmap: on top, the mean per module kind (rows) for every pair and noise floor (columns); below, one
    panel per domain pair, then one noise-floor panel per domain, with decoder layers as rows (plus a row for the
    modules outside the layers) and module kinds as columns. A panel of many layers is squeezed to
    :data:`PANEL_HEIGHT_MAX` inches; values are printed in the cells only where they fit.
    Uses matplotlib's object API (no pyplot), so it never changes the caller's backend.
    """
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    layers = sorted({m.layer for m in result.modules if m.layer is not None})
    row_keys: list[int | None] = list(layers) + ([None] if any(m.layer is None for m in result.modules) else [])
    in_layer = list(dict.fromkeys(m.kind for m in result.modules if m.layer is not None))
    outside = list(dict.fromkeys(m.kind for m in result.modules if m.layer is None))
    col_keys = in_layer + [k for k in outside if k not in in_layer]
    cell = {(m.layer, m.kind): n for n, m in enumerate(result.modules)}

    def grid(values: torch.Tensor) -> torch.Tensor:
        out = torch.full((len(row_keys), len(col_keys)), math.nan)
        for r, layer in enumerate(row_keys):
            for c, kind in enumerate(col_keys):
                if (layer, kind) in cell:
                    out[r, c] = float(values[cell[(layer, kind)]])
        return out

    panels = [(f"{a} vs {b}: global cos {_f(result.global_cosine(a, b))}, "
               f"conflict {_pct(result.conflict_frac(a, b))}", grid(result.cosine(a, b))) for a, b in result.pairs()]
    panels += [(f"noise floor {d}: global cos {_f(result.global_noise_floor(d))}", grid(result.noise_floor(d)))
               for d in result.domains]
    summary = kind_summary(result)
    ncols = min(max(len(result.domains), 2), len(panels))
    nrows = math.ceil(len(panels) / ncols)
    pw = max(3.0, 1.0 + 0.4 * len(col_keys))
    ph = min(PANEL_HEIGHT_MAX, max(2.4, 1.6 + 0.3 * len(row_keys)))
    sw = max(4.0, 2.0 + 0.9 * len(summary["columns"]))
    sh = 1.6 + 0.25 * len(summary["kinds"])
    fig = Figure(figsize=(max(ncols * pw + 1.0, sw + 1.0), sh + nrows * ph + 0.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[sh, nrows * ph])
    import matplotlib

    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="0.85")
    norm = Normalize(vmin=-1, vmax=1)

    def draw(ax, values: torch.Tensor, xlabels: list[str], ylabels: list[str], points: float, ytick_every: int = 1):
        image = ax.imshow(values.numpy(), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(len(xlabels)), xlabels, rotation=60, ha="right", fontsize=7)
        shown = [r for r in range(len(ylabels)) if r % ytick_every == 0 or ylabels[r] == "other"]
        ax.set_yticks(shown, [ylabels[r] for r in shown], fontsize=7)
        if points:
            for r in range(values.shape[0]):
                for c in range(values.shape[1]):
                    v = float(values[r, c])
                    if not math.isnan(v):
                        ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=points,
                                color="white" if abs(v) > 0.6 else "black")
        return image

    ax = top.subplots()
    ax.set_label("summary")
    draw(ax, summary["mean"], summary["columns"], [k[:-5] if k.endswith("_proj") else k for k in summary["kinds"]],
         _label_points(sw, sh, len(summary["columns"]), len(summary["kinds"])) or LABEL_POINTS_MIN)
    ax.set_title("mean over the layers, per module kind: cosine of each pair, then each domain's noise floor",
                 fontsize=8)
    top.colorbar(ax.images[0], ax=ax, shrink=0.9, label="cosine")

    axes = bottom.subplots(nrows, ncols, squeeze=False)
    points = _label_points(pw, ph, len(col_keys), len(row_keys))
    row_points = 0.75 * ph * 72 / max(len(row_keys), 1)
    every = max(1, math.ceil(8.0 / row_points))  # layer tick labels 8 points apart at least
    xlabels = [k[:-5] if k.endswith("_proj") else k for k in col_keys]
    ylabels = [str(r) if r is not None else "other" for r in row_keys]
    image = None
    for n, ax in enumerate(axes.flat):
        if n >= len(panels):
            ax.set_visible(False)
            continue
        title, values = panels[n]
        ax.set_label("panel")
        image = draw(ax, values, xlabels, ylabels, points, every)
        ax.set_title(title, fontsize=8)
        ax.set_ylabel("layer", fontsize=7)
    if image is not None:
        bottom.colorbar(image, ax=axes, shrink=0.8, label="cosine")
    fig.suptitle(f"mgs-diagnose: {result.model or 'model'} ({result.settings.get('granularity', 'module')})",
                 fontsize=9)
    return fig


def _f(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:+.3f}"


def _pct(x: float) -> str:
    return "nan" if math.isnan(x) else f"{100 * x:.0f}%"


def _nanmedian(t: torch.Tensor) -> float:
    t = t[~t.isnan()]
    return float(t.median()) if t.numel() else math.nan
