"""GDPO (TRL's multi_objective_aggregation="normalize_then_sum") with one reward function per domain, routed by
trl_mgs.rewards.for_domains (None on other domains' rows): MGSGRPOTrainer(surgery="none") equals stock GRPOTrainer, and
the per-domain metrics equal the domain's own reward function's outputs and TRL's per-function metrics."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

import torch
from _advantage_reference import make_recording_mgs_class, reference_normalized
from _tiny import DOMAINS, StubGRPOTrainer, assert_same_grads, make_stub_mgs_trainer_class, reward, train_recording
from trl import GRPOConfig

from trl_mgs import MGSGRPOConfig
from trl_mgs.rewards import for_domains

GDPO = dict(multi_objective_aggregation="normalize_then_sum")


def _domain_rewards(seen=None):
    """One reward function per domain (scales differ by domain), each seeing its own rows only."""
    funcs = []
    for d in DOMAINS:
        def scored(completions, domain, _d=d, **kwargs):
            assert set(domain) == {_d}, "for_domains handed another domain's rows"
            return [v * (1 + 3 * DOMAINS.index(_d)) for v in reward(completions, domain)]
        scored.__name__ = f"{d}_reward"
        routed = for_domains(scored, [d])

        def recorded(prompts=None, completions=None, _routed=routed, _d=d, **kwargs):
            out = _routed(prompts=prompts, completions=completions, **kwargs)
            if seen is not None:  # every call, also one without rows of the domain (all None)
                seen.append((_d, [v for v in out if v is not None]))
            return out
        recorded.__name__ = routed.__name__
        funcs.append(recorded)
    return funcs


def _train(cls, config_cls, out, steps, seen=None, **kw):
    return train_recording(cls, config_cls, out, reward_funcs=_domain_rewards(seen), max_steps=steps, **(GDPO | kw))


def test_surgery_none_equals_stock_gdpo(tmp_path):
    _, stock = _train(StubGRPOTrainer, GRPOConfig, tmp_path / "stock", 3, gradient_accumulation_steps=2)
    _, grads = _train(make_stub_mgs_trainer_class(), MGSGRPOConfig, tmp_path / "mgs", 3, surgery="none",
                      gradient_accumulation_steps=2)
    assert len(grads) == len(stock) == 3
    assert_same_grads(grads, stock)


def test_per_domain_metrics_and_normalized_advantage_under_gdpo(tmp_path):
    """Modular surgery + GDPO + per-domain advantage normalisation: mgs/reward/{d}/mean and /std are the domain's own
    function's outputs (also TRL's rewards/{d}_reward@{d}/mean); the advantages equal the reference on GDPO's."""
    import statistics

    seen = []
    trainer, _ = _train(make_recording_mgs_class(), MGSGRPOConfig, tmp_path, 2, seen=seen, surgery="modular",
                        normalize_advantage_by_domain=True)
    logs = [h for h in trainer.state.log_history if "mgs/conflict_frac" in h]
    assert len(logs) == 2 and len(seen) == 2 * len(DOMAINS)  # one generation per step, every function called
    checked = 0
    for step, log in enumerate(logs):
        for d, values in seen[step * len(DOMAINS):(step + 1) * len(DOMAINS)]:
            if not values:
                assert log.get(f"mgs/reward/{d}/mean") is None
                continue
            assert log[f"mgs/reward/{d}/mean"] == pytest.approx(statistics.fmean(values), rel=1e-5, abs=1e-6)
            assert log[f"rewards/{d}_reward@{d}/mean"] == pytest.approx(statistics.fmean(values), rel=1e-5, abs=1e-6)
            if len(values) > 1:
                assert log[f"mgs/reward/{d}/std"] == pytest.approx(statistics.stdev(values), rel=1e-4, abs=1e-6)
            checked += 1
    assert checked >= 4
    for (advantages, domains), got in zip(trainer.raw, trainer.final, strict=True):
        expected = torch.tensor(reference_normalized(advantages.tolist(), domains), dtype=got.dtype)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
