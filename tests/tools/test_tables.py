"""mgs_tools.tables.load_table: every local format it names a builder for, saved datasets, and its errors."""

from __future__ import annotations

import json

import pytest

hf = pytest.importorskip("datasets")

from mgs_tools.tables import load_table  # noqa: E402

ROWS = [{"domain": "math", "prompt": "1+1", "n": 1}, {"domain": "chat", "prompt": "hi", "n": 2}]


@pytest.mark.parametrize("suffix", ["json", "jsonl", "JSONL", "csv", "parquet"])
def test_files_by_suffix(tmp_path, suffix):
    path = tmp_path / f"rows.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(ROWS))
    elif suffix.lower() == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif suffix == "csv":
        hf.Dataset.from_list(ROWS).to_csv(str(path), index=False)
    else:
        hf.Dataset.from_list(ROWS).to_parquet(str(path))
    table = load_table(str(path))
    assert isinstance(table, hf.Dataset) and table.to_list() == ROWS


def test_saved_dataset_and_dataset_dict(tmp_path):
    hf.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    assert load_table(str(tmp_path / "ds")).to_list() == ROWS
    hf.DatasetDict({"train": hf.Dataset.from_list(ROWS[:1]), "test": hf.Dataset.from_list(ROWS[1:])}).save_to_disk(
        str(tmp_path / "dd"))
    assert load_table(str(tmp_path / "dd")).to_list() == ROWS[:1]  # split="train" by default
    assert load_table(str(tmp_path / "dd"), split="test").to_list() == ROWS[1:]
    with pytest.raises(ValueError, match=r"split 'validation' is not in .*; its splits are \['test', 'train'\]"):
        load_table(str(tmp_path / "dd"), split="validation")


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="no such data file or saved dataset directory"):
        load_table(str(tmp_path / "missing.jsonl"))
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(ValueError, match=r"cannot tell the format of .*rows\.txt.*\.json, \.jsonl, \.parquet or \.csv"):
        load_table(str(tmp_path / "rows.txt"))
