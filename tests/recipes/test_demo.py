"""The README's CPU demo (recipes/trl/demo.py) end to end on a few steps (its toy tasks: tests/tools/test_toy.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("matplotlib")

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "trl"


def test_demo_runs_end_to_end(tmp_path):
    sys.path.insert(0, str(RECIPES))
    try:
        import demo
    finally:
        sys.path.remove(str(RECIPES))
    out = tmp_path / "demo"
    summary = demo.main(["--config", str(RECIPES / "demo.yaml"), "--max_steps", "6", "--sft_steps", "4",
                         "--output_dir", str(out), "--disable_tqdm", "true"])
    assert (out / "rewards.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "rewards.json").read_text())
    assert saved["steps"] == [1, 2, 3, 4, 5, 6] and saved["surgery"] == "modular"
    assert set(saved["rewards"]) == {"copy", "reverse", "sort"}
    for domain, values in saved["rewards"].items():
        assert len(values) == 6 and all(v is None or 0.0 <= v <= 1.0 for v in values)
        assert any(v is not None for v in values), f"{domain} never trained"
    assert 0.0 <= saved["conflict_frac"] <= 1.0
    table = (out / "summary.md").read_text()
    assert all(f"| {d} |" in table for d in ("copy", "reverse", "sort")) and "surgery=modular" in table
    assert summary["table"].keys() == {"copy", "reverse", "sort"}
