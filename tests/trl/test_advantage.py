"""MGSGRPOConfig.normalize_advantage_by_domain against the test's own reference (tests/trl/_advantage_reference.py):
the advantages MGSGRPOTrainer trains on, and the gradients of stock GRPOTrainer trained on the reference's advantages."""

from __future__ import annotations

import statistics

import pytest

pytest.importorskip("trl")

import torch
from _advantage_reference import ReferenceNormalizedGRPO, make_recording_mgs_class, reference_normalized
from _tiny import (COMMON, DOMAINS, assert_same_grads, dataset, launch_torchrun, tiny_model, tiny_tokenizer,
                   train_recording)
from trl import GRPOConfig

from trl_mgs import MGSGRPOConfig, MGSGRPOTrainer


def _train(cls, config_cls, out, steps, **kw):
    return train_recording(cls, config_cls, out, max_steps=steps, **kw)


def _check_against_reference(raw, final):
    """Every generation batch's final advantages equal the reference on TRL's; the domains' scales differed (so one
    global scale, or none, would fail) and normalisation changed the advantages."""
    spreads = []
    for (advantages, domains), got in zip(raw, final, strict=True):
        expected = torch.tensor(reference_normalized(advantages.tolist(), domains), dtype=got.dtype)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        stds = [statistics.pstdev([a for a, e in zip(advantages.tolist(), domains) if e == d])
                for d in DOMAINS if d in domains]
        spreads.append(max(stds) / max(min(stds), 1e-12))
        assert (got - advantages).abs().max() > 1e-2
    assert max(spreads) > 1.2, f"the domains' advantage scales hardly differ ({spreads}): the test could not fail"


def test_off_by_default():
    assert MGSGRPOConfig(output_dir="unused", **COMMON).normalize_advantage_by_domain is False


@pytest.mark.parametrize("scale_rewards", ["none", "batch"])
def test_surgery_none_trains_like_stock_on_reference_advantages(tmp_path, scale_rewards):
    """surgery="none" + normalisation equals stock GRPOTrainer whose advantages the reference normalised, at every step
    (two steps_per_generation slices per generation batch: the deviation must cover both)."""
    kw = dict(scale_rewards=scale_rewards, gradient_accumulation_steps=2)
    _, stock = _train(ReferenceNormalizedGRPO, GRPOConfig, tmp_path / "ref", 3, **kw)
    trainer, grads = _train(make_recording_mgs_class(), MGSGRPOConfig, tmp_path / "mgs", 3, surgery="none",
                            normalize_advantage_by_domain=True, **kw)
    assert trainer.args.steps_per_generation == 2 and len(trainer.raw) == 3  # one generation per optimizer step
    _check_against_reference(trainer.raw, trainer.final)
    assert len(grads) == len(stock) == 3
    assert_same_grads(grads, stock)


def test_with_modular_surgery(tmp_path):
    """Any surgery mode: modular surgery trains on the reference's advantages; each domain's deviation becomes ~1."""
    trainer, _ = _train(make_recording_mgs_class(), MGSGRPOConfig, tmp_path, 2, surgery="modular",
                        normalize_advantage_by_domain=True, scale_rewards="none")
    _check_against_reference(trainer.raw, trainer.final)
    for (_, domains), got in zip(trainer.raw, trainer.final):
        for d in set(domains):
            values = [a for a, e in zip(got.tolist(), domains) if e == d]
            if any(abs(v) > 0 for v in values):
                assert statistics.pstdev(values) == pytest.approx(1.0, abs=1e-3)


def test_needs_domains_and_a_bool(tmp_path):
    no_column = dataset().remove_columns("domain")
    args = MGSGRPOConfig(output_dir=str(tmp_path), surgery="none", normalize_advantage_by_domain=True, **COMMON)
    with pytest.raises(ValueError, match="'domain'"):
        MGSGRPOTrainer(model=tiny_model(), reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                       args=args, train_dataset=no_column, processing_class=tiny_tokenizer())
    with pytest.raises(TypeError, match="normalize_advantage_by_domain must be True or False"):
        MGSGRPOConfig(output_dir=str(tmp_path), normalize_advantage_by_domain="yes", **COMMON)


@pytest.mark.distributed
def test_two_processes(tmp_path):
    """2-process DDP: each rank's advantages equal the reference over both ranks' rows (a per-rank deviation differs),
    and surgery="none" + normalisation trains like stock GRPOTrainer on the reference's advantages."""
    from pathlib import Path

    launch_torchrun(Path(__file__).with_name("advantage_worker.py"), tmp_path, port=29547)
    r0, r1 = (torch.load(tmp_path / f"adv_rank{r}.pt") for r in (0, 1))
    local_differs = False
    for (a0, d0), (a1, d1), f0, f1 in zip(r0["raw"], r1["raw"], r0["final"], r1["final"], strict=True):
        expected = reference_normalized(a0.tolist() + a1.tolist(), d0 + d1)
        torch.testing.assert_close(torch.cat([f0, f1]), torch.tensor(expected, dtype=f0.dtype), rtol=1e-5, atol=1e-6)
        local = reference_normalized(a0.tolist(), d0)
        local_differs |= max(abs(x - y) for x, y in zip(local, expected[:len(local)])) > 1e-3
    assert local_differs, "one rank's rows give the same deviations as both ranks': the gather went untested"
    assert_same_grads(r0["grads"], r0["reference"])
