"""The README's CPU demo (recipes/trl/demo.py) end to end on a few steps, and the toy tasks it trains on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("matplotlib")

from mgs_tools.toy import TRANSFORMS, domain_rows, score, target, transform_reward  # noqa: E402

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "trl"


def test_transforms_and_rewards():
    assert [target(d, "4821") for d in ("copy", "reverse", "sort")] == ["4821", "1284", "1248"]
    assert score("1284", "1284") == 1.0
    assert score(" 1284 ", "1284") == 1.0  # surrounding whitespace does not count
    assert score("1289", "1284") == 0.75  # partial credit per position
    assert score("12845", "1284") == 0.8  # extra characters cost
    assert score("", "1284") == 0.0 and score("9999", "1284") == 0.0
    rewards = transform_reward(["4821", "4821", "1248"], domain=["copy", "reverse", "sort"], digits=["4821"] * 3)
    assert rewards == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="unknown toy domain 'add'"):
        target("add", "12")


def test_prompts_are_deterministic_and_share_one_format():
    assert domain_rows("sort", 5, seed=3) == domain_rows("sort", 5, seed=3)
    assert domain_rows("sort", 5, seed=3) != domain_rows("sort", 5, seed=4)
    for domain, (tag, _) in TRANSFORMS.items():
        row = domain_rows(domain, 1, length=6)[0]
        assert row["prompt"] == f"{tag}:{row['digits']}=" and len(row["digits"]) == 6
        assert row["completion"] == target(domain, row["digits"])


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
