"""The surgery state file: one name scheme, weights_only loading, old names still read, one missing-file policy."""

from __future__ import annotations

import pytest
import torch

from mgs.integration import load_surgery_state, save_surgery_state



def test_round_trip_per_rank_and_other_world_size(tmp_path):
    state = {"step": 3, "seed": 1, "domains": ["a", "b"], "gram_ema": {"x": torch.ones(2)}}
    save_surgery_state(str(tmp_path), 1, state, engine_step=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mgs_surgery_rank1.pt"]
    loaded = load_surgery_state(str(tmp_path), 1)
    assert loaded["engine_step"] == 5 and loaded["surgery"]["step"] == 3
    assert torch.equal(loaded["surgery"]["gram_ema"]["x"], torch.ones(2))
    assert load_surgery_state(str(tmp_path), 0)["surgery"]["domains"] == ["a", "b"]  # resumed at another world size


def test_reads_the_old_file_names(tmp_path):
    old_trl = tmp_path / "trl"
    old_trl.mkdir()
    torch.save({"step": 2, "seed": 0, "domains": ["a"]}, old_trl / "mgs_surgery.pt")  # TRL adapter 0.1.0
    assert load_surgery_state(str(old_trl), 0) == {"surgery": {"step": 2, "seed": 0, "domains": ["a"]}}
    old_verl = tmp_path / "verl"
    old_verl.mkdir()
    torch.save({"engine_step": 4, "surgery": {"step": 4}}, old_verl / "mgs_surgery_rank0.pt")  # verl adapter 0.1.0
    assert load_surgery_state(str(old_verl), 1) == {"engine_step": 4, "surgery": {"step": 4}}


def test_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mgs_surgery_rank0.pt is missing .* not written with MGS surgery"):
        load_surgery_state(str(tmp_path), 0)


def test_only_plain_data_is_loaded(tmp_path):
    torch.save({"format": 1, "surgery": {"step": 1}, "bad": object.__new__(_Opaque)}, tmp_path / "mgs_surgery_rank0.pt")
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_surgery_state(str(tmp_path), 0)


class _Opaque:
    pass
