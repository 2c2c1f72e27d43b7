"""benchmarks/toy_multidomain.py (and toy_multidomain_lib/): the --quick run end to end, and the statistics its
table rests on."""

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
    from toy_multidomain_lib import experiment as ex  # noqa: E402
    from toy_multidomain_lib import statistics as st  # noqa: E402
finally:
    sys.path.remove(str(BENCH.parent))


def test_statistics():
    assert st.paired([0.0, 0.0, 0.0]) == {"mean": 0.0, "lo": 0.0, "hi": 0.0, "n": 3}
    d = st.paired([0.1, 0.3])  # mean 0.2, sd 0.1414, t(1) = 12.706
    assert d["mean"] == pytest.approx(0.2) and d["hi"] - d["mean"] == pytest.approx(12.706 * 0.1)  # t * sd / sqrt(n)
    assert st.t_quantile(9) == 2.262 and st.t_quantile(35) == 2.042 and st.t_quantile(500) == 1.980
    assert st.auc([0, 10, 20], [0.0, 1.0, 1.0]) == pytest.approx(0.75)
    assert ex._phases(ex.Size(steps=10)) == [("copy", (0, 3)), ("reverse", (3, 6)), ("sort", (6, 10))]
    assert ex._phases(ex.Size(steps=10), ("sort", "reverse", "copy"), refresh=0.1) == [
        ("sort", (0, 3)), ("reverse", (3, 6)), ("copy", (6, 9)), ("sort", (9, 10))]


def test_sequential_and_mixed_data_draw_from_the_same_pools():
    from mgs_tools.toy import domain_rows

    size = ex.Size(steps=6, prompts_per_domain=2)
    mixed, sequential = ex._grpo_rows(size, 0, False), ex._grpo_rows(size, 0, True)
    assert len(mixed) == len(sequential) == 6 * 2 * 3
    assert mixed == ex._grpo_rows(size, 0, False)  # deterministic: every mixed arm trains on the same order
    for step in range(6):  # every mixed step holds prompts_per_domain rows of each domain
        batch = mixed[step * 6 : (step + 1) * 6]
        assert sorted(r["domain"] for r in batch) == sorted(list(ex.DOMAINS) * 2)
    assert [r["domain"] for r in sequential] == [d for d in ex.DOMAINS for _ in range(2 * 6)]  # 2 steps x 6 each
    for d in ex.DOMAINS:
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
    assert data["arms"] == list(ex.DEFAULT_ARMS) and list(data["settings"]) == list(ex.SETTINGS)
    for arm in ex.DEFAULT_ARMS:
        assert table.count(f"| {arm} |") == 2 * len(ex.SETTINGS), arm

    # The reference arm's paired difference against itself is exactly 0.
    for setting, rows in data["summary"].items():
        for key, diff in rows["none"]["diff"].items():
            assert diff["mean"] == diff["lo"] == diff["hi"] == 0.0, (setting, key)
        assert set(rows) == set(ex.DEFAULT_ARMS)
    assert "| none | +0.000 [+0.000, +0.000] |" in table

    # Same curve lengths for every run, and the same evaluation steps.
    runs, size = data["runs"], data["size"]
    assert len(runs) == len(ex.DEFAULT_ARMS) * len(ex.SETTINGS) * len(data["seeds"])
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


def test_refresh_rows_continue_the_first_domain_pool():
    from mgs_tools.toy import domain_rows

    size = ex.Size(steps=10, prompts_per_domain=1)
    rows = ex._grpo_rows(size, 0, True, ("copy", "reverse", "sort"), refresh=0.1)
    assert [r["domain"] for r in rows] == ["copy"] * 9 + ["reverse"] * 9 + ["sort"] * 9 + ["copy"] * 3
    pool = [r["prompt"] for r in domain_rows("copy", 10 * 3, size.digits, seed=1)]
    copy = [r["prompt"] for r in rows if r["domain"] == "copy"]
    assert copy == pool[:12]  # the refresh takes the copy prompts after those of its first phase
    plain = ex._grpo_rows(size, 0, True)
    assert [r["domain"] for r in plain] == ["copy"] * 9 + ["reverse"] * 9 + ["sort"] * 12


def test_forgetting_arms_quick(tmp_path):
    """The forgetting arms at smoke size: the rollback arms are the sequential run with its last evaluation replaced
    by the rolled-back model's, and the sequential run carries mgs-forgetting's analysis."""
    out = tmp_path / "forgetting"
    result = subprocess.run([sys.executable, str(BENCH), "--quick", "--steps", "4", "--eval-every", "2", "--settings",
                             "default", "--arms", "sequential_refresh,sequential_rollback_mlp,sequential_rollback_joint",
                             "--compare", "sequential_refresh-sequential", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "toy_multidomain.json").read_text())
    assert data["arms"] == ["none", "sequential", "sequential_refresh", "sequential_rollback_mlp",
                            "sequential_rollback_joint"]
    runs = {(r["arm"], r["seed"]): r for r in data["runs"]}
    assert len(runs) == 5 * 2
    for seed in data["seeds"]:
        seq = runs["sequential", seed]
        analysis = seq["forgetting"]
        assert set(analysis["sparsity"]) == set(ex.DOMAINS)
        assert {"actual", "first_order", "second_order", "residual"} <= set(analysis["damage"])
        assert analysis["rollback"]["after"] == {d: pytest.approx(v[-1], abs=1e-6) for d, v in seq["eval"].items()}
        for arm, (scope, percent) in ex.DERIVED.items():
            rolled = runs[arm, seed]
            assert rolled["rollback"]["scope"] == scope and rolled["rollback"]["percent"] == percent
            assert {d: v[:-1] for d, v in rolled["eval"].items()} == {d: v[:-1] for d, v in seq["eval"].items()}
            point = next(p for p in analysis["rollback"]["curves"][scope] if p["percent"] == percent)
            assert {d: v[-1] for d, v in rolled["eval"].items()} == point["value"]
    assert "sequential_refresh-sequential" in data["comparisons"]["default"]


RESULTS = ROOT / "docs" / "results"


def test_compare_from_the_committed_json(tmp_path, capsys):
    """--compare on the committed JSON (no training): A-none is the table's difference against none, A-A is 0."""
    result = tm.main(["--from-json", str(RESULTS / "toy_multidomain.json"), "--compare", "modular-none,none-none",
                      "--out", str(tmp_path)])
    table = (tmp_path / "toy_multidomain_compare.md").read_text()
    assert not (tmp_path / "toy_multidomain.md").exists()  # only the comparison table is written
    assert table in capsys.readouterr().out
    assert "Command: `python benchmarks/toy_multidomain.py --from-json" in table
    generated = (RESULTS / "toy_multidomain.md").read_text()
    for setting in result["settings"]:
        comparisons = result["comparisons"][setting]
        assert comparisons["modular-none"] == result["summary"][setting]["modular"]["diff"]
        # The committed table's row "modular" against none, cell for cell.
        section = generated.split(f"## Setting `{setting}`")[1].split("### Paired difference against `none`")[1]
        row = next(line for line in section.splitlines() if line.startswith("| modular |"))
        assert f"| {setting} | modular − none |{row[len('| modular |'):]}" in table.splitlines()
        assert len(comparisons["none-none"]) == 2 * (len(result["size"]["domains"]) + 1)
        for key, diff in comparisons["none-none"].items():
            assert diff["mean"] == diff["lo"] == diff["hi"] == 0.0, (setting, key)
    with pytest.raises(SystemExit):
        tm.main(["--from-json", str(RESULTS / "toy_multidomain.json"), "--compare", "modular-nonexistent",
                 "--out", str(tmp_path)])


def test_noise_summary_and_rows():
    size = ex.Size(steps=6, prompts_per_domain=2)
    rows = ex._noise_rows(size, 0, 2, 3)
    names = ex.pseudo_domains(ex.DOMAINS)
    assert names[:2] == ["copy#a", "copy#b"] and len(names) == 6
    for step in range(3):  # every step holds 2 prompts of each pseudo-domain
        assert sorted(r["domain"] for r in rows[step * 12 : (step + 1) * 12]) == sorted(names * 2)
    for d in ex.DOMAINS:  # the two halves of a domain are different prompts of that domain
        a = [r["prompt"] for r in rows if r["domain"] == f"{d}#a"]
        b = [r["prompt"] for r in rows if r["domain"] == f"{d}#b"]
        assert len(a) == len(b) == 6 and a[0][0] == b[0][0] == d[0]

    # Gram of unit gradients with cosine 0.5 within a domain and 0 across, except one cross pair at -0.3.
    k = 6
    gram = [[1.0 if i == j else 0.5 if i // 2 == j // 2 else 0.0 for j in range(k)] for i in range(k)]
    gram[0][2] = gram[2][0] = -0.3
    gram = [[4.0 * x for x in row] for row in gram]  # the scale does not matter
    summary = st.noise_summary([{"completions": 16, "prompts": 2, "domains": names, "grams": [gram, gram]}])["16"]
    assert summary["same"] == pytest.approx(0.5) and summary["cross"] == pytest.approx(-0.3 / 12)
    assert summary["same_by_domain"] == {d: pytest.approx(0.5) for d in ex.DOMAINS}
    assert summary["same_minus_cross"]["mean"] == pytest.approx(0.5 + 0.3 / 12) and summary["n"] == 2


def test_noise_run_tiny(tmp_path):
    """noise_run end to end on a tiny random model: learning rate 0 leaves the weights alone, one Gram per step."""
    import torch

    from mgs_tools.toy import tiny_causal_lm

    size = ex.Size(hidden=16, layers=1, num_generations=4, max_completion_length=4)
    warm = tmp_path / "warm.pt"
    torch.save(tiny_causal_lm(hidden=16, layers=1, seed=0).state_dict(), warm)
    run = ex.noise_run(size, 0, 1, 2, str(warm))
    assert run["checksum_before"] == run["checksum_after"]
    assert len(run["grams"]) == len(run["cosine_global"]) == 2  # and their mean cosines agree (checked inside)
    assert all(len(g) == len(row) == 6 for g in run["grams"] for row in g)
