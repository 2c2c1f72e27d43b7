"""recipes/trl/sequential_toy.py: the curriculum reaches TRL in order (one domain per phase, a refresh at the end) and
a checkpoint is written at every phase boundary."""

from __future__ import annotations

import pytest
from _scripts import import_script

pytest.importorskip("trl")

from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_sequential_toy_saves_every_phase(tmp_path, monkeypatch):
    script = import_script(ROOT / "recipes" / "trl", "sequential_toy")
    seen = []
    original = script.MGSGRPOTrainer.__init__

    def record(self, *args, train_dataset=None, **kwargs):
        seen.extend(train_dataset["domain"])
        original(self, *args, train_dataset=train_dataset, **kwargs)

    monkeypatch.setattr(script.MGSGRPOTrainer, "__init__", record)
    torch.set_num_threads(1)
    saved = script.main(["--out", str(tmp_path), "--order", "copy,reverse", "--steps", "5", "--refresh", "0.2",
                         "--prompts", "1", "--num-generations", "2", "--warm-steps", "2"])
    assert seen == ["copy"] * 2 + ["reverse"] * 2 + ["copy"]  # 2 + 2 steps, then a refresh of 1 (one prompt a step)
    assert sorted(saved) == ["base", "copy", "copy_refresh", "reverse"]
    assert all((Path(p) / "config.json").exists() for p in saved.values())
