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
    kinds = list(dict.fromkeys(m.kind for m in result.modules))
    cols = [f"{a}|{b}" for a, b in pairs] + [f"floor {d}" for d in result.domains]
    vals = [result.cosine(a, b) for a, b in pairs] + [result.noise_floor(d) for d in result.domains]
    kw = max([len(k) for k in kinds] + [4])
    cw = max([len(c) for c in cols] + [13])
    lines.append("mean cosine by module kind over layers (negative / modules):")
    lines.append(f"{'kind':<{kw}}  " + "  ".join(f"{c:>{cw}}" for c in cols))
    for k in kinds:
        idx = torch.tensor([n for n, m in enumerate(result.modules) if m.kind == k])
        cells = []
        for c, v in zip(cols, vals):
            sel = v[idx]
            sel = sel[~sel.isnan()]
            mean = float(sel.mean()) if sel.numel() else math.nan
            cells.append(f"{_f(mean)} ({int((sel < 0).sum())}/{sel.numel()})" if not c.startswith("floor")
                         else _f(mean))
        lines.append(f"{k:<{kw}}  " + "  ".join(f"{c:>{cw}}" for c in cells))
    if per_module:
        lines.append("")
        nw = max(len(m.name) for m in result.modules)
        lines.append(f"{'module':<{nw}}  " + "  ".join(f"{c:>{max(len(c), 7)}}" for c in cols))
        for n, m in enumerate(result.modules):
            lines.append(f"{m.name:<{nw}}  " + "  ".join(f"{_f(float(v[n])):>{max(len(c), 7)}}"
                                                         for c, v in zip(cols, vals)))
    return "\n".join(lines)


def heatmap(result: DiagnoseResult, path: str | os.PathLike) -> None:
    """Write a PNG: one panel per domain pair, then one noise-floor panel per domain.

    Rows are decoder layers (plus a row for modules outside the layers), columns module kinds.
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
    ncols = min(max(len(result.domains), 2), len(panels))
    nrows = math.ceil(len(panels) / ncols)
    pw = max(3.0, 1.0 + 0.4 * len(col_keys))
    ph = max(2.4, 1.6 + 0.3 * len(row_keys))
    fig = Figure(figsize=(ncols * pw + 1.0, nrows * ph + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    import matplotlib

    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="0.85")
    norm = Normalize(vmin=-1, vmax=1)
    image = None
    annotate = len(row_keys) * len(col_keys) <= 240
    xlabels = [k[:-5] if k.endswith("_proj") else k for k in col_keys]
    ylabels = [str(r) if r is not None else "other" for r in row_keys]
    for n, ax in enumerate(axes.flat):
        if n >= len(panels):
            ax.set_visible(False)
            continue
        title, values = panels[n]
        image = ax.imshow(values.numpy(), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xticks(range(len(col_keys)), xlabels, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(row_keys)), ylabels, fontsize=7)
        ax.set_ylabel("layer", fontsize=7)
        if annotate:
            for r in range(len(row_keys)):
                for c in range(len(col_keys)):
                    v = float(values[r, c])
                    if not math.isnan(v):
                        ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=5,
                                color="white" if abs(v) > 0.6 else "black")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="cosine")
    fig.suptitle(f"mgs-diagnose: {result.model or 'model'} ({result.settings.get('granularity', 'module')})",
                 fontsize=9)
    fig.savefig(path, dpi=120)


def _f(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:+.3f}"


def _pct(x: float) -> str:
    return "nan" if math.isnan(x) else f"{100 * x:.0f}%"


def _nanmedian(t: torch.Tensor) -> float:
    t = t[~t.isnan()]
    return float(t.median()) if t.numel() else math.nan
