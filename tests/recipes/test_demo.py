"""The README's CPU demo (recipes/trl/demo.py, compare_runs.py) end to end on a few steps, and its command line
(errors before work, --help, the run folders). Its toy tasks: tests/tools/test_toy.py."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from _scripts import import_script

pytest.importorskip("trl")
pytest.importorskip("matplotlib")

from mgs.integration import SETTINGS, Setting  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes" / "trl"
CONFIG = str(RECIPES / "demo.yaml")


@pytest.fixture(scope="module")
def demo():
    return import_script(RECIPES, "demo")


@pytest.fixture(scope="module")
def compare_runs(demo):
    return sys.modules["compare_runs"]


def _one_line_error(capsys, excinfo) -> str:
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("demo.py: error: ") and "Traceback" not in err, err
    return err


def test_demo_and_comparison_end_to_end(demo, tmp_path, capsys):
    """--compare none,modular (per attention head): both arms in their own folders, the comparison, a clean terminal,
    every setting named."""
    runs = tmp_path / "runs"
    result = demo.main(["--config", CONFIG, "--max_steps", "4", "--sft_steps", "2", "--runs_dir", str(runs),
                        "--compare", "none,modular", "--surgery_granularity", "head"])
    out = capsys.readouterr().out
    assert "{'loss'" not in out and "mgs/conflict_frac" not in out  # no per-step metrics dict on the terminal
    assert len(out.splitlines()) < 80, out
    for arm in ("none", "modular"):
        folder = runs / f"{arm}-granularity_head"  # the arm's name says each setting that is not the default
        assert (folder / "rewards.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        saved = json.loads((folder / "rewards.json").read_text())
        assert saved["steps"] == [1, 2, 3, 4] and saved["surgery"] == arm and saved["arm"] == folder.name
        assert set(saved["rewards"]) == {"copy", "reverse", "sort"}
        for domain, values in saved["rewards"].items():
            assert len(values) == 4 and all(v is None or 0.0 <= v <= 1.0 for v in values)
            assert any(v is not None for v in values), f"{domain} never trained"
        assert 0.0 <= saved["conflict_frac"] <= 1.0
        assert list(saved["settings"]) == [s.name for s in SETTINGS]  # every surgery setting, what ran
        assert saved["settings"]["surgery_granularity"] == "head"
        assert saved["settings"]["surgery"] == arm and saved["training"]["max_steps"] == 4
        assert saved["timing"]["torch_threads"] >= 1 and saved["timing"]["grpo_s"] > 0
        table = (folder / "summary.md").read_text()
        assert all(f"| {d} |" in table for d in ("copy", "reverse", "sort"))
        assert all(f"{s.name}=" in table for s in SETTINGS) and f"surgery={arm} " in table
        metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics if "mgs/conflict_frac" in m] == [1, 2, 3, 4]
        assert not (folder / "warmup").exists()
    compared = runs / "compare_none-granularity_head_modular-granularity_head"
    assert (compared / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (compared / "compare.md").read_text()
    assert "surgery (none | modular)" in text and "| **mean** |" in text and text in out
    assert result["arms"] == ["none-granularity_head", "modular-granularity_head"]
    assert set(result["differ"]["settings"]) == {"surgery"}
    assert result["differ"]["training"] == {}


def test_plot_title_and_summary_name_every_setting(demo):
    args = SimpleNamespace(**{s.name: s.default for s in SETTINGS}, seed=3)
    args.surgery_balance = "norm"
    title = demo.plot_title(args)
    assert all(f"{s.name}=" in title for s in SETTINGS) and "surgery_seed=None (seed 3)" in title
    fig = demo.reward_figure({"steps": [1, 2], "rewards": {"copy": [0.1, None]}}, title)
    assert fig._suptitle.get_text() == title


def test_a_new_setting_shows_up_without_code_changes(demo, monkeypatch):
    """Outputs and folder names come from mgs.integration.SETTINGS: a setting added there (a threshold, say) is named."""
    extra = Setting("surgery_threshold", "threshold", 0.0, "a future setting", type="float")
    monkeypatch.setattr(demo, "SETTINGS", SETTINGS + (extra,))
    args = SimpleNamespace(**{s.name: s.default for s in SETTINGS}, surgery_threshold=0.25, seed=0)
    assert demo.surgery_settings(args)["surgery_threshold"] == 0.25
    assert "surgery_threshold=0.25" in demo.describe(args)
    assert demo.arm_name(args) == "modular-threshold_0.25"
    args.surgery, args.surgery_granularity, args.surgery_threshold = "none", "block", 0.0
    assert demo.arm_name(args) == "none-granularity_block"


def test_each_arm_gets_its_own_folder_unless_output_dir_is_given(demo, tmp_path):
    parser = demo._parser()
    config = demo._read_config(parser, ["--config", CONFIG])
    runs = str(tmp_path)
    _, args = demo._parse(parser, ["--config", CONFIG, "--runs_dir", runs], config)
    assert args.output_dir == str(tmp_path / "modular")
    _, args = demo._parse(parser, ["--config", CONFIG, "--runs_dir", runs, "--surgery", "none",
                                   "--surgery_balance", "norm"], config)
    assert args.output_dir == str(tmp_path / "none-balance_norm")
    _, args = demo._parse(parser, ["--config", CONFIG, "--output_dir", str(tmp_path / "mine")], config)
    assert args.output_dir == str(tmp_path / "mine")


def test_without_config_says_to_pass_it(demo, capsys):
    with pytest.raises(SystemExit) as excinfo:
        demo.main(["--surgery", "none"])
    assert "--config recipes/trl/demo.yaml" in _one_line_error(capsys, excinfo)


@pytest.mark.parametrize("argv, expected", [
    (["--surgery_methd", "pcgrad"], "unknown flag --surgery_methd; did you mean --surgery_method?"),
    (["--max-step=5"], "unknown flag --max-step; did you mean --max-steps?"),
    (["--surgery", "modulr"], "argument --surgery: invalid choice: 'modulr'"),
    (["--surgery_method", "upgrd"], "method='upgrd' is not supported; choose one of 'pcgrad'"),
    (["--domains", "copy", "add"], "unknown demo domains ['add']"),
    (["--compare", "none"], "--compare takes two or more different surgery values"),
    (["--compare", "none,modular", "--output_dir", "x"], "pass --runs_dir instead of --output_dir"),
])
def test_bad_flags_end_in_one_line(demo, capsys, argv, expected):
    with pytest.raises(SystemExit) as excinfo:
        demo.main(["--config", CONFIG, *argv])
    assert expected in _one_line_error(capsys, excinfo)


def test_misspelt_yaml_key_is_named(demo, tmp_path, capsys):
    config = tmp_path / "demo.yaml"
    config.write_text((RECIPES / "demo.yaml").read_text().replace("surgery_method:", "surgery_methd:"))
    with pytest.raises(SystemExit) as excinfo:
        demo.main(["--config", str(config)])
    assert "unknown key 'surgery_methd'; did you mean 'surgery_method'?" in _one_line_error(capsys, excinfo)


def test_missing_extra_fails_before_the_warm_start(demo, monkeypatch, capsys):
    """--surgery_method upgrad without torchjd: the pip extra is named before any training."""
    monkeypatch.setitem(sys.modules, "torchjd", None)  # import torchjd now raises ImportError
    monkeypatch.setitem(sys.modules, "torchjd.aggregation", None)

    def reached(*args, **kwargs):
        raise AssertionError("the warm start ran before the error")

    monkeypatch.setattr(demo, "warm_start", reached)
    monkeypatch.setattr(demo, "tiny_causal_lm", reached)
    for argv in (["--surgery_method", "upgrad"], ["--surgery_method", "upgrad", "--compare", "none,modular"]):
        with pytest.raises(SystemExit) as excinfo:
            demo.main(["--config", CONFIG, *argv])
        assert "pip install 'mgs-rl[torchjd]'" in _one_line_error(capsys, excinfo)


def test_help_shows_the_demos_flags_first(demo, capsys):
    with pytest.raises(SystemExit) as excinfo:
        demo.main(["--help"])
    assert excinfo.value.code == 0
    text = capsys.readouterr().out
    head = text.split("Every other")[0]
    flags = [line.split()[0] for line in head.splitlines() if line.startswith("  --")]
    assert flags[0] == "--config" and head.index("--config") < head.index("Surgery settings")
    for f in dataclasses.fields(demo.DemoArguments):
        assert f"--{f.name} " in head
    for s in SETTINGS:
        assert f"--{s.name} " in head
    assert "--help-all lists all" in text and "--max_steps 600" in text
    assert len(text.splitlines()) < 90
    with pytest.raises(SystemExit):
        demo.main(["--help-all"])
    assert "--gradient_accumulation_steps" in capsys.readouterr().out


def _fake_run(folder: Path, arm: str, end: float, **training) -> None:
    folder.mkdir(parents=True)
    steps = [1, 2, 3, 4, 5]
    rewards = {"copy": [0.1, 0.2, None, 0.4, end], "sort": [0.2, 0.2, 0.3, 0.3, end]}
    (folder / "rewards.json").write_text(json.dumps({
        "arm": arm, "steps": steps, "rewards": rewards, "window": 1,
        "table": {d: {"start": v[0], "end": v[-1]} for d, v in rewards.items()},
        "settings": {"surgery": arm, "surgery_method": "pcgrad"}, "training": {"max_steps": 5, **training}}))


def test_compare_runs_over_two_folders(compare_runs, tmp_path, capsys):
    _fake_run(tmp_path / "none", "none", 0.5)
    _fake_run(tmp_path / "modular", "modular", 0.7, seed=1)
    result = compare_runs.main([str(tmp_path / "none"), str(tmp_path / "modular")])
    out = capsys.readouterr().out
    assert result["out"] == str(tmp_path / "compare_none_modular")
    assert "| copy | 0.100 -> 0.500 | 0.100 -> 0.700 | +0.200 |" in out
    assert "| **mean** | 0.150 -> 0.500 | 0.150 -> 0.700 | +0.200 |" in out
    assert "surgery settings that differ: surgery (none | modular)" in out
    assert "other settings that differ: seed (- | 1)" in out
    assert (tmp_path / "compare_none_modular" / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_runs_refuses_what_it_cannot_compare(compare_runs, tmp_path, capsys):
    _fake_run(tmp_path / "a", "none", 0.5)
    with pytest.raises(SystemExit):
        compare_runs.main([str(tmp_path / "a"), str(tmp_path / "missing")])
    assert "has no rewards.json" in capsys.readouterr().err
    with pytest.raises(compare_runs.CompareError, match="at least two"):
        compare_runs.compare([str(tmp_path / "a")])
    other = tmp_path / "b"
    _fake_run(other, "modular", 0.5)
    data = json.loads((other / "rewards.json").read_text())
    data["table"] = {"copy": data["table"]["copy"]}
    (other / "rewards.json").write_text(json.dumps(data))
    with pytest.raises(compare_runs.CompareError, match="same domains"):
        compare_runs.compare([str(tmp_path / "a"), str(other)])
