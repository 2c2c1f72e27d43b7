"""recipes/verl/prepare_data.py's command line: every flag's default in --help, and one clear message (before any
work, without retries) when the Hub cannot be reached, a local file is missing or a column is wrong. Its output
format and verl reading it: tests/verl_adapter/test_verl_recipes.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _scripts import import_script

pytest.importorskip("datasets")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "recipes" / "verl" / "prepare_data.py"


@pytest.fixture(scope="module")
def prepare_data():
    return import_script(SCRIPT.parent, "prepare_data")


def test_help_lists_every_flag_with_its_default(prepare_data):
    parser = prepare_data.build_parser()
    text = " ".join(parser.format_help().split())
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) == 17
    for action in flags:
        assert action.help, f"{action.option_strings[0]} has no help"
        assert action.option_strings[0] in text
        if not action.required:
            assert f"(default: {action.default})" in text, action.option_strings[0]
    assert "(required)" in text and "HF_HUB_OFFLINE=1" in text


def test_unreachable_hub_is_one_message_before_any_work(tmp_path):
    """A Hub that does not answer (here: nothing listens on HF_ENDPOINT): exit 2 at once, no retries, no traceback,
    nothing written, and the message names every flag that takes a local file."""
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"prompt": f"hi {i}"}) + "\n" for i in range(4)))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                                             "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), "--domains", "chat", "math",
                          "ifeval", "--chat-dataset", str(chat), "--test-size", "1"],
                         env=env, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and "Retry" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prepare_data.py: error: the Hugging Face Hub is needed for math, "
                                                   "ifeval but http://127.0.0.1:9 could not be reached"), run.stderr
    assert "--math-dataset FILE" in lines[0] and "--ifeval-dataset FILE" in lines[0]
    assert "--chat-dataset" not in lines[0]  # chat came from a local file
    assert "HF_HUB_OFFLINE=1" in lines[0]
    assert not (tmp_path / "out").exists()  # the local chat domain was not written first
    assert seconds < 60


def test_offline_cache_miss_names_the_local_flags(prepare_data, monkeypatch, tmp_path, capsys):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    with pytest.raises(SystemExit) as excinfo:
        prepare_data.main(["--out", str(tmp_path / "out"), "--domains", "chat",
                           "--chat-dataset", "mgs-test/no-such-dataset"])
    err = capsys.readouterr().err
    assert excinfo.value.code == 2 and err.count("\n") == 1
    assert "HF_HUB_OFFLINE=1 is set and 'mgs-test/no-such-dataset' is not in the local cache" in err
    assert "--chat-dataset FILE (column: --chat-prompt-column)" in err


def test_local_file_errors_and_success(prepare_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as excinfo:
        prepare_data.main(["--out", str(tmp_path / "out"), "--domains", "chat", "--chat-dataset", "./missing.jsonl"])
    assert excinfo.value.code == 2 and "no such file or folder: './missing.jsonl'" in capsys.readouterr().err
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"text": f"hi {i}"}) + "\n" for i in range(4)))
    with pytest.raises(SystemExit) as excinfo:
        prepare_data.main(["--out", str(tmp_path / "out"), "--domains", "chat", "--chat-dataset", str(chat)])
    err = capsys.readouterr().err
    assert excinfo.value.code == 2 and "no column 'prompt'; its columns are ['text']" in err and "Traceback" not in err
    prepare_data.main(["--out", str(tmp_path / "out"), "--domains", "chat", "--chat-dataset", str(chat),
                       "--chat-prompt-column", "text", "--test-size", "1"])
    assert "chat: wrote 3 train / 1 test rows" in capsys.readouterr().out
    assert (tmp_path / "out" / "chat" / "train.parquet").is_file()
