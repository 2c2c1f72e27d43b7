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


def _section(text: str, heading: str) -> str:
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


def test_readme_tests_section_is_what_scripts_test_sh_does():
    """The extras, the torch version and the settings the README names are the ones scripts/test.sh uses."""
    script = (ROOT / "scripts" / "test.sh").read_text()
    section = _section((ROOT / "README.md").read_text(), "## Tests\n")
    extras = re.search(r'^EXTRAS="([^"]+)"', script, flags=re.M).group(1)
    assert '-e ".[$EXTRAS]"' in script
    assert f'pip install -e ".[{extras}]"' in section
    version = re.search(r"^TORCH_VERSION=\$\{TORCH_VERSION:-([^}]+)\}", script, flags=re.M).group(1)
    assert f"torch=={version}" in section and f"pip install torch=={version}" in (ROOT / "README.md").read_text()
    for setting in re.findall(r"\$\{(\w+):-", script):  # every setting the script reads is documented
        assert f"{setting}=" in section, setting
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in section
    assert re.search(r"took \d", section), "the README does not say how long scripts/test.sh took"


def test_generated_folders_are_ignored():
    """What the documented commands write (demo runs, mgs-diagnose, prepare_data.py, verl, TRL) is not committed."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        import pytest

        pytest.skip("not a git checkout")
    paths = ["runs/demo/modular/rewards.json", "runs/diagnose/diagnose.json", "data/mgs/math/train.parquet",
             "checkpoints/mgs/run/global_step_1", "outputs/2026-01-01/main_ppo.log", "trainer_output/x"]
    run = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    assert sorted(run.stdout.split()) == sorted(paths)
    tracked = subprocess.run(["git", "check-ignore", "--no-index", "docs/data.md", "mgs_tools/toy.py"], cwd=ROOT,
                             capture_output=True, text=True)
    assert tracked.stdout == ""


def test_readme_verl_overrides_are_what_the_recipes_set():
    """The README's override lines for one's own verl config include what the recipes need for per-domain rewards."""
    import yaml

    text = (ROOT / "README.md").read_text()
    block = text.split("these override lines switch it on", 1)[1].split("```", 2)[1]
    lines = [line.strip() for line in block.strip().splitlines()]
    common = yaml.safe_load((ROOT / "recipes" / "verl" / "mgs_common.yaml").read_text())
    assert common["trainer"]["use_v1"] is False and "trainer.use_v1=false" in lines
    actor = common["actor_rollout_ref"]["actor"]
    assert f"actor_rollout_ref.actor.strategy={actor['strategy']}" in lines
    assert f"actor_rollout_ref.actor.fsdp_config._target_={actor['fsdp_config']['_target_']}" in lines
