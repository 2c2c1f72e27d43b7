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


def test_the_driver_sequence_wraps_it_from_a_recipe(installed, monkeypatch):
    """What verl's legacy TaskRunner does before fit(): main_ppo_v0 is imported (and with it ray_trainer), then
    validate_config builds the actor config: with the recipe switch on, that wraps the driver's compute_advantage."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from verl.trainer import main_ppo_v0  # noqa: F401 - the legacy TaskRunner's module, as the driver imports it
    from verl.trainer.ppo import ray_trainer
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    stock_fn = ray_trainer.compute_advantage
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(root / "recipes" / "verl"), version_base=None):
        off = compose(config_name="mgs_qwen2.5_7b_math_chat_none")
        on = compose(config_name="mgs_qwen2.5_7b_math_chat_none",
                     overrides=["actor_rollout_ref.actor.fsdp_config.normalize_advantage_by_domain=true"])
    for cfg in (off, on):  # verl's own check, as the TaskRunner calls it (it builds the actor config)
        validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
        assert (ray_trainer.compute_advantage is stock_fn) == (cfg is off)
    assert ray_trainer.compute_advantage is not stock_fn
    assert list(ray_trainer.compute_advantage.domain_index.domains) == ["math", "chat"]


def test_a_dotted_domain_key(installed):
    """domain_key="extra_info.domain" reads each row's dict, as the engine does; the result equals data_source's."""
    from verl_mgs.config import MGSFSDPEngineConfig

    by_source, domains = _batch()
    by_extra, _ = _batch()  # the same batch, built twice
    by_source, by_extra = _stock(by_source), _stock(by_extra)
    by_extra.non_tensor_batch["extra_info"] = np.array([{"domain": d, "index": i} for i, d in enumerate(domains)],
                                                       dtype=object)
    by_extra.non_tensor_batch["data_source"] = np.array(["unused"] * len(domains), dtype=object)
    stds = installed.normalize_batch(by_source, MGSFSDPEngineConfig().domain_index())
    assert stds == installed.normalize_batch(by_extra, MGSFSDPEngineConfig(domain_key="extra_info.domain").domain_index())
    torch.testing.assert_close(by_source.batch["advantages"], by_extra.batch["advantages"])
    assert set(stds) == set(domains) and len(set(round(v, 6) for v in stds.values())) == 3
