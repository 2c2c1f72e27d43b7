"""The MGS actor trained for a few updates at DP=2 (gloo, CPU): metrics, freed buffers, checkpoint resume.

One spawned job trains 4 updates (lr > 0, AdamW, modular PCGrad with a Gram EMA, so the surgery has
state beyond its step counter), then repeats the run with a verl checkpoint after update 2 and a freshly
built worker that loads it. The ``math`` rows all sit on rank 0, so rank 1 joins that domain with
zero-loss passes, and verl's cross-rank metric aggregation must still accept every key.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from _jobs import train, verl_installed

if not verl_installed():
    pytest.skip("verl is not installed (pip install -e '.[verl]')", allow_module_level=True)

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))
from _launch import launch  # noqa: E402

pytestmark = pytest.mark.distributed

DOMAINS = ["chat", "code", "math"]
LABELS = ["chat", "code", "math", "chat", "code", "math", "chat", "code", "chat", "code", "chat", "chat"]
JOB = dict(labels=LABELS, batch_size=12, steps=4, resume_at=2,
           surgery={"surgery": "modular", "domains": "[chat,code,math]", "surgery_gram_ema": 0.5})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = launch(train, tmp_path_factory.mktemp("train"), JOB, world_size=2, deadline_s=300)
    return torch.load(out / "result.pt", weights_only=False)


def test_metrics_reach_verl_under_mgs_keys(trained):
    for metrics in trained["metrics"]:
        for d in DOMAINS:
            for key in (f"mgs/loss/{d}", f"mgs/grad_norm/{d}", f"mgs/weight/{d}"):
                assert len(metrics[key]) == 1 and math.isfinite(metrics[key][0]), key  # one value per mini-batch
        for key in ("mgs/conflict_frac", "mgs/conflict_frac/attention", "mgs/conflict_frac/mlp", "mgs/cosine_global",
                    "mgs/update_norm", "mgs/change_ratio", "mgs/projection_frac"):
            assert math.isfinite(metrics[key][0]), key
        assert "mgs/nonfinite_flags" not in metrics  # not a scalar


def test_per_domain_rewards_are_the_domains_mean_sequence_scores(trained):
    assert len(trained["expected_rewards"]) == JOB["steps"]
    for metrics, expected in zip(trained["metrics"], trained["expected_rewards"]):
        assert {d: metrics[f"mgs/reward/{d}/mean"][0] for d in DOMAINS} == pytest.approx(expected, rel=1e-6)


def test_domain_losses_add_up_to_verls_loss(trained):
    for metrics in trained["metrics"]:
        total = sum(metrics[f"mgs/loss/{d}"][0] for d in DOMAINS)
        assert total == pytest.approx(metrics["loss"][0], rel=1e-6, abs=1e-9)


def test_domain_buffers_are_freed_after_each_update(trained):
    """verl offloads for rollout knowing nothing of the K buffers: they must be gone when the update returns."""
    assert trained["held"] == [{"grads": 0, "buffers": False}] * JOB["steps"]


def test_resume_from_a_verl_checkpoint_continues_identically(trained):
    assert {"mgs_surgery_rank0.pt", "mgs_surgery_rank1.pt"} <= set(trained["checkpoint_files"])
    straight = trained["params"][JOB["resume_at"]:]
    assert len(straight) == len(trained["resumed_params"]) == JOB["steps"] - JOB["resume_at"]
    for expected, got in zip(straight, trained["resumed_params"]):
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
    first, last = trained["params"][0], trained["params"][-1]
    assert any(not torch.equal(first[n], last[n]) for n in first), "the run did not train"


def test_unsupported_settings_are_refused_when_the_actor_is_built(trained):
    assert "strategy=fsdp2" in trained["refused"]["fsdp1"] and "'fsdp'" in trained["refused"]["fsdp1"]
    assert "ulysses_sequence_parallel_size" in trained["refused"]["ulysses"]


def test_every_emitted_metric_is_documented(trained):
    """docs/metrics.md lists the adapters' per-domain keys and the surgery statistics (one schema for TRL and verl)."""
    root = Path(__file__).resolve().parents[2]
    stats_doc = (root / "docs" / "metrics.md").read_text()
    adapter_doc = stats_doc.split("<!-- adapter-metrics:start -->")[1].split("<!-- adapter-metrics:end -->")[0]
    kinds = ("attention", "mlp", "embedding", "norm", "other")
    emitted = {k for metrics in trained["metrics"] for k in metrics if k.startswith("mgs/")}
    assert emitted
    for key in emitted:
        parts = ["{domain}" if p in DOMAINS else "{kind}" if p in kinds else p for p in key.split("/")]
        generic = "/".join(parts)
        if parts[1] in ("loss", "reward", "completion_length"):
            assert f"- `{generic}`" in adapter_doc, key
        else:
            assert f"`{generic[len('mgs/'):]}`" in stats_doc, key
