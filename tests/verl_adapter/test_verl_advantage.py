"""verl: per-domain advantage normalisation on the driver (verl_mgs._driver wrapping ray_trainer.compute_advantage),
against verl's own GRPO advantages rescaled by a reference written here; it is installed by building the engine
config with the setting on, and off by default."""

from __future__ import annotations

import statistics

import pytest
from _jobs import verl_installed

if not verl_installed():
    pytest.skip("verl is not installed (pip install -e '.[verl]')", allow_module_level=True)

import numpy as np
import torch


def _batch(seed=0):
    from verl import DataProto

    g = torch.Generator().manual_seed(seed)
    domains = ["math"] * 8 + ["chat"] * 8 + ["code"] * 4  # groups of 4 rows, one domain each
    scale = {"math": 1.0, "chat": 10.0, "code": 0.1}
    n, t = len(domains), 6
    mask = torch.ones(n, t)
    for i in range(n):
        mask[i, 1 + i % 5:] = 0
    score = torch.tensor([float(torch.randint(0, 3, (), generator=g)) * scale[d] for d in domains])
    rewards = torch.zeros(n, t)
    rewards[torch.arange(n), mask.sum(1).long() - 1] = score
    return DataProto.from_dict(
        tensors={"token_level_rewards": rewards, "response_mask": mask},
        non_tensors={"uid": np.array([f"p{i // 4}" for i in range(n)], dtype=object),
                     "data_source": np.array(domains, dtype=object)}), domains


def _stock(data):
    from verl.trainer.ppo import ray_trainer

    from verl_mgs import _driver

    original = getattr(ray_trainer.compute_advantage, _driver._MARK, ray_trainer.compute_advantage)
    return original(data, adv_estimator="grpo", num_repeat=4, norm_adv_by_std_in_grpo=False, config=None)  # Dr. GRPO: scales kept


@pytest.fixture
def installed():
    from verl_mgs import _driver

    yield _driver
    _driver.uninstall()


def test_engine_config_installs_the_wrapper_and_it_matches_the_reference(installed):
    from verl.trainer.ppo import ray_trainer

    from verl_mgs.config import MGSFSDPEngineConfig

    stock_fn = ray_trainer.compute_advantage
    MGSFSDPEngineConfig(surgery="none")  # off by default: verl's own function stays
    assert ray_trainer.compute_advantage is stock_fn
    MGSFSDPEngineConfig(surgery="none", normalize_advantage_by_domain=True, domains=["math", "chat", "code"])
    assert ray_trainer.compute_advantage is not stock_fn

    data, domains = _batch()
    reference = _stock(_batch()[0]).batch["advantages"]
    got = ray_trainer.compute_advantage(data, adv_estimator="grpo", num_repeat=4, norm_adv_by_std_in_grpo=False,
                                     config=None).batch["advantages"]
    rows = [float(reference[i, 0]) for i in range(len(domains))]  # GRPO: one value per row, on every response token
    std = {d: statistics.pstdev([a for a, e in zip(rows, domains) if e == d]) for d in set(domains)}
    assert max(std.values()) / min(v for v in std.values() if v > 0) > 10, "domain scales too close: could not fail"
    expected = torch.stack([reference[i] / (std[d] + 1e-4) for i, d in enumerate(domains)])
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, reference)


def test_errors(installed):
    from verl_mgs.config import MGSFSDPEngineConfig

    with pytest.raises(TypeError, match="normalize_advantage_by_domain must be true or false"):
        MGSFSDPEngineConfig(normalize_advantage_by_domain="yes")
    index = MGSFSDPEngineConfig(domain_key="extra_info.domain").domain_index()
    data, _ = _batch()
    data = _stock(data)
    with pytest.raises(KeyError, match="no non-tensor field 'extra_info'"):
        installed.normalize_batch(data, index)
    unknown = MGSFSDPEngineConfig(domains=["math", "chat"]).domain_index()
    with pytest.raises(ValueError, match="code"):
        installed.normalize_batch(data, unknown)
