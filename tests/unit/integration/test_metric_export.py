"""Metric export: one stacked host copy, and per-domain moments that reduce over ranks."""

from __future__ import annotations

import math

import torch

from mgs.integration import domain_metric, domain_moments, domain_summary, scalar_metrics


def test_scalar_metrics_copies_once(monkeypatch):
    stats = {"a": torch.tensor(1.5), "b": torch.tensor(float("nan")), "flags": torch.zeros(2, 3, dtype=torch.bool)}
    calls = []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: calls.append(1) or original(self))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: (_ for _ in ()).throw(AssertionError("item()")))
    out = scalar_metrics(stats)
    assert calls == [1]
    assert set(out) == {"mgs/a", "mgs/b"} and out["mgs/a"] == 1.5 and math.isnan(out["mgs/b"])


def test_domain_summary_equals_per_domain_torch_stats():
    values = torch.tensor([0.1, 0.7, 0.3, 0.9, 0.2])
    ids = torch.tensor([0, 1, 0, 1, 0])
    out = domain_summary(domain_moments(values, ids, 3).unsqueeze(0), ["a", "b", "c"], [("reward_mean", "reward_std")])
    for d, name in enumerate("ab"):
        rows = values[ids == d]
        assert math.isclose(out[domain_metric("reward_mean", name)], float(rows.mean()), rel_tol=1e-6)
        assert math.isclose(out[domain_metric("reward_std", name)], float(rows.std()), rel_tol=1e-6)
    assert math.isnan(out["mgs/reward/c/mean"]) and math.isnan(out["mgs/reward/c/std"])
    split = domain_moments(values[:2], ids[:2], 3) + domain_moments(values[2:], ids[2:], 3)  # two ranks' moments
    assert torch.allclose(split, domain_moments(values, ids, 3))
    two = torch.stack([domain_moments(torch.tensor([2.0]), torch.tensor([0]), 1),
                       domain_moments(torch.tensor([3.0, 5.0]), torch.tensor([0, 0]), 1)])
    both = domain_summary(two, ["a"], [("loss", "reward_std"), ("completion_length", None)])
    assert both == {"mgs/loss/a": 2.0, "mgs/reward/a/std": both["mgs/reward/a/std"], "mgs/completion_length/a": 4.0}
    assert math.isnan(both["mgs/reward/a/std"])  # one row: no deviation
