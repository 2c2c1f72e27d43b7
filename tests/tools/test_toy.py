"""mgs_tools.toy: the toy transforms, their reward, and the prompts the demo and the tests train on."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("datasets")

from mgs_tools.toy import TRANSFORMS, domain_rows, score, target, transform_reward  # noqa: E402


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
