"""The README's Python examples run, and docs/metrics.md lists exactly the statistics apply() returns."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import mgs

ROOT = Path(__file__).resolve().parents[2]


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    stats = namespace["stats"]
    assert torch.isfinite(stats["grad_norm/math"]) and float(stats["grad_norm/math"]) > 0


def _documented_keys() -> set[str]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    section = text.split("<!-- metrics:start -->")[1].split("<!-- metrics:end -->")[0]
    return set(re.findall(r"^- `([^`]+)`", section, flags=re.M))


def test_metrics_doc_lists_every_key():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 3))
    domains = ["a", "b"]
    surgery = mgs.GradientSurgery(model, domains=domains)
    x = torch.randint(0, 10, (5,))
    for d in domains:
        with surgery.domain(d):
            model(x).sum().backward()
    emitted = set(surgery.apply())
    kinds = set(surgery.group_kinds().values())
    expanded = set()
    for key in _documented_keys():
        names = [key.replace("{domain}", d) for d in domains] if "{domain}" in key else [key]
        expanded |= {n.replace("{kind}", k) for n in names for k in kinds} if "{kind}" in key else set(names)
    assert emitted == expanded
