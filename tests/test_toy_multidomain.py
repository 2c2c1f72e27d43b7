"""benchmarks/toy_multidomain.py: the --quick run end to end, and the statistics its table rests on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "toy_multidomain.py"

sys.path.insert(0, str(BENCH.parent))
try:
    import toy_multidomain as tm  # noqa: E402
finally:
    sys.path.remove(str(BENCH.parent))


def test_statistics():
    assert tm.paired([0.0, 0.0, 0.0]) == {"mean": 0.0, "lo": 0.0, "hi": 0.0, "n": 3}
    d = tm.paired([0.1, 0.3])  # mean 0.2, sd 0.1414, t(1) = 12.706
    assert d["mean"] == pytest.approx(0.2) and d["hi"] - d["mean"] == pytest.approx(12.706 * 0.1)  # t * sd / sqrt(n)
    assert tm.t_quantile(9) == 2.262 and tm.t_quantile(35) == 2.042 and tm.t_quantile(500) == 1.980
    assert tm.auc([0, 10, 20], [0.0, 1.0, 1.0]) == pytest.approx(0.75)
    assert tm._phases(tm.Size(steps=10)) == [(0, 3), (3, 6), (6, 10)]


def test_sequential_and_mixed_data_draw_from_the_same_pools():
    from mgs.toy import domain_rows

    size = tm.Size(steps=6, prompts_per_domain=2)
    mixed, sequential = tm._grpo_rows(size, 0, False), tm._grpo_rows(size, 0, True)
    assert len(mixed) == len(sequential) == 6 * 2 * 3
    assert mixed == tm._grpo_rows(size, 0, False)  # deterministic: every mixed arm trains on the same order
    for step in range(6):  # every mixed step holds prompts_per_domain rows of each domain
        batch = mixed[step * 6 : (step + 1) * 6]
        assert sorted(r["domain"] for r in batch) == sorted(list(tm.DOMAINS) * 2)
    assert [r["domain"] for r in sequential] == [d for d in tm.DOMAINS for _ in range(2 * 6)]  # 2 steps x 6 each
    for d in tm.DOMAINS:
        pool = {r["prompt"] for r in domain_rows(d, 6 * 6, size.digits, seed=1)}
        assert all(r["prompt"] in pool for r in mixed + sequential if r["domain"] == d)


def test_quick_run(tmp_path):
    out = tmp_path / "results"
    result = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(out)],
                            capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "toy_multidomain.md").read_text()
    data = json.loads((out / "toy_multidomain.json").read_text())
    assert (out / "toy_multidomain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Command: `python benchmarks/toy_multidomain.py --quick" in table and "Wall time:" in table

    # Every arm has a row in both tables of every setting.
    assert data["arms"] == list(tm.ARMS) and list(data["settings"]) == list(tm.SETTINGS)
    for arm in tm.ARMS:
        assert table.count(f"| {arm} |") == 2 * len(tm.SETTINGS), arm

    # The reference arm's paired difference against itself is exactly 0.
    for setting, rows in data["summary"].items():
        for key, diff in rows["none"]["diff"].items():
            assert diff["mean"] == diff["lo"] == diff["hi"] == 0.0, (setting, key)
        assert set(rows) == set(tm.ARMS)
    assert "| none | +0.000 [+0.000, +0.000] |" in table

    # Same curve lengths for every run, and the same evaluation steps.
    runs, size = data["runs"], data["size"]
    assert len(runs) == len(tm.ARMS) * len(tm.SETTINGS) * len(data["seeds"])
    steps = runs[0]["eval_steps"]
    assert steps[0] == 0 and steps[-1] == size["steps"]
    for run in runs:
        assert run["eval_steps"] == steps
        assert all(len(run["eval"][d]) == len(steps) for d in size["domains"])
        assert all(len(run["train_reward"][d]) == size["steps"] for d in size["domains"])
        assert len(run["update_norm"]) == len(run["change_ratio"]) == size["steps"]

    # Every arm of a seed starts from that seed's warm start: identical weights, and so identical step-0 evaluations.
    warm = {w["seed"]: w["checksum"] for w in data["warm_starts"]}
    assert len(set(warm.values())) == len(warm)  # different seeds, different warm starts
    for run in runs:
        assert run["checksum"] == warm[run["seed"]], (run["setting"], run["arm"], run["seed"])
        first = next(r for r in runs if r["seed"] == run["seed"])
        assert {d: v[0] for d, v in run["eval"].items()} == {d: v[0] for d, v in first["eval"].items()}

    # Surgery changes nothing for none and sequential; balancing and projection change the update.
    for run in runs:
        if run["arm"] in ("none", "sequential"):
            assert all(c == 0 for c in run["change_ratio"] if c is not None)
