"""mgs_tools.toy: the toy transforms, their reward, and the prompts the demo and the tests train on."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("datasets")

import torch  # noqa: E402

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


def test_train_toy_learns_and_is_deterministic():
    from mgs_tools.toy import tiny_causal_lm, train_toy

    model, tokenizer = train_toy(3, seed=1)
    again, _ = train_toy(3, seed=1)
    untrained = tiny_causal_lm(seed=1)
    for (name, p), q, u in zip(model.named_parameters(), again.parameters(), untrained.parameters()):
        assert torch.equal(p, q), name
    assert any(not torch.equal(p, u) for p, u in zip(model.parameters(), untrained.parameters()))
    assert not model.training and tokenizer.eos_token_id == 1
    with pytest.raises(ValueError, match="steps must be >= 0"):
        train_toy(-1)


def test_grpo_rows_have_group_normalised_advantages():
    from mgs_tools.toy import grpo_rows, tiny_causal_lm, char_tokenizer

    rows = grpo_rows(tiny_causal_lm(), char_tokenizer(), prompts_per_domain=2, generations=4, seed=0)
    assert len(rows) == 3 * 2 * 4 and {r["domain"] for r in rows} == set(TRANSFORMS)
    for start in range(0, len(rows), 4):
        group = rows[start : start + 4]
        assert len({r["prompt"] for r in group}) == 1
        assert all(r["reward"] == score(r["completion"], target(r["domain"], r["prompt"][2:-1])) for r in group)
        assert sum(r["advantage"] for r in group) == pytest.approx(0.0, abs=1e-5)


def test_toy_command_line(tmp_path, capsys):
    import json

    from mgs_tools.toy import main

    main(["train", "--out", str(tmp_path / "model"), "--steps", "2"])
    assert "after 2 steps" in capsys.readouterr().out
    main(["sample", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "rows.jsonl"), "--prompts", "1",
          "--generations", "2"])
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and set(rows[0]) == {"domain", "prompt", "completion", "reward", "advantage"}
    assert "6 rows; mean reward copy" in capsys.readouterr().out
    with pytest.raises(SystemExit) as excinfo:
        main(["sample", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "x.jsonl")])
    assert excinfo.value.code == 2 and "no such folder" in capsys.readouterr().err
