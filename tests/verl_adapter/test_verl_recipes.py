"""recipes/verl: every YAML composes with verl 0.9.1's config and builds the MGS engine config; the data-prep
script writes files verl reads; ``MixtureDataset`` holds the proportions in every train batch; the reward
function scores each domain. In-process (no workers): hydra, verl's dataset factory and the reward function."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
from _jobs import verl_installed
from _scripts import import_script

if not verl_installed():
    pytest.skip("verl is not installed (pip install -e '.[verl]')", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes" / "verl"
ARMS = sorted(p.stem for p in RECIPES.glob("mgs_*.yaml") if p.stem != "mgs_common")


def compose(name: str, overrides: list[str] = ()):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(RECIPES), version_base=None):
        return hydra_compose(config_name=name, overrides=list(overrides))


def test_the_recipes_cover_both_models_both_domain_sets_and_every_arm():
    expected = {f"mgs_{m}_{s}{arm}" for m in ("qwen2.5_7b", "llama3.1_8b") for s in ("math_chat", "math_chat_if")
                for arm in ("", "_none", "_global", "_gdpo")}
    assert set(ARMS) == expected


@pytest.mark.parametrize("name", ARMS)
def test_recipe_composes_with_verl_and_builds_the_surgery_engine_config(name, monkeypatch):
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.utils.config import omega_conf_to_dataclass
    from verl.utils.dataset.rl_dataset import get_dataset_class

    from verl_mgs.config import MGSFSDPEngineConfig
    from verl_mgs.data import MixtureDataset

    monkeypatch.chdir(ROOT)  # the recipes name recipes/verl/rewards.py relative to the repository root
    cfg = compose(name)
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    arm = name.rsplit("_", 1)[-1] if name.endswith(("_none", "_global")) else "none" if name.endswith("_gdpo") else "modular"
    assert isinstance(actor.fsdp_config, MGSFSDPEngineConfig) and actor.fsdp_config.surgery == arm
    assert actor.strategy == "fsdp2" and actor.optim.lr == 1e-6 and actor.ppo_mini_batch_size == 64
    assert cfg.actor_rollout_ref.rollout.n == 8
    assert cfg.algorithm.adv_estimator == ("gdpo" if name.endswith("_gdpo") else "grpo")
    assert actor.fsdp_config.normalize_advantage_by_domain is False
    domains = ["math", "chat", "ifeval"] if "_if" in name else ["math", "chat"]
    assert list(actor.fsdp_config.domains) == domains and set(cfg.data.mixture.proportions) == set(domains)
    assert get_dataset_class(cfg.data) is MixtureDataset
    assert get_custom_reward_fn(cfg) is not None
    # the documented command-line switch needs no "+" on a recipe
    assert compose(name, ["actor_rollout_ref.actor.fsdp_config.surgery=global"]).actor_rollout_ref.actor.fsdp_config.surgery == "global"


# ----------------------------------------------------------------------------- data prep + mixture
def _write_sources(folder: Path, n: int = 30) -> dict[str, Path]:
    rows = {
        "math": [{"problem": f"What is {i} + {i}?", "solution": f"It is $\\boxed{{{2 * i}}}$."} for i in range(n)]
        + [{"problem": "no answer", "solution": "none"}],  # no \boxed: dropped
        "chat": [{"prompt": f"tell me about topic {i}"} for i in range(n)],
        "ifeval": [{"prompt": f"write {i} words, no commas", "instruction_id_list": ["punctuation:no_comma",
                    "length_constraints:number_words"], "kwargs": [{}, {"num_words": 3, "relation": "at least"}]}
                   for i in range(n)]
        + [{"prompt": "x", "instruction_id_list": ["language:response_language"], "kwargs": [{"language": "de"}]}],
    }
    paths = {}
    for domain, items in rows.items():
        paths[domain] = folder / f"{domain}.jsonl"
        paths[domain].write_text("".join(json.dumps(r) + "\n" for r in items))
    return paths


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    sys.path.insert(0, str(RECIPES))
    import prepare_data

    folder = tmp_path_factory.mktemp("sources")
    paths = _write_sources(folder)
    out = folder / "mgs"
    prepare_data.main(["--out", str(out), "--test-size", "5", "--math-dataset", str(paths["math"]),
                       "--chat-dataset", str(paths["chat"]), "--ifeval-dataset", str(paths["ifeval"])])
    return out


def _tokenizer():
    from mgs_tools.toy import char_tokenizer

    tokenizer = char_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    return tokenizer


def _dataset(prepared: Path, overrides: list[str] = (), files: str = "train"):
    from verl.trainer.ppo.utils import create_rl_dataset

    train = [str(prepared / d / "train.parquet") for d in ("math", "chat", "ifeval")]
    val = [str(prepared / d / "test.parquet") for d in ("math", "chat", "ifeval")]
    cfg = compose("mgs_qwen2.5_7b_math_chat_if", [f"data.train_files=[{','.join(train)}]",
                                                  f"data.val_files=[{','.join(val)}]",
                                                  "data.train_batch_size=6", *overrides])
    return create_rl_dataset(train if files == "train" else val, cfg.data, _tokenizer(), None)


def test_prepared_files_drop_unscorable_rows(prepared):
    import datasets

    sizes = {d: len(datasets.Dataset.from_parquet(str(prepared / d / "train.parquet"))) for d in ("math", "chat", "ifeval")}
    assert sizes == {"math": 25, "chat": 25, "ifeval": 25}  # 30 usable rows - 5 test rows each


def test_mixture_dataset_holds_the_proportions_in_every_train_batch(prepared):
    dataset = _dataset(prepared)
    sources = dataset.dataframe["data_source"]
    assert len(sources) == len(dataset) and len(dataset) % 6 == 0 and len(dataset) >= 75
    for start in range(0, len(sources), 6):
        assert Counter(sources[start:start + 6]) == {"math": 2, "chat": 2, "ifeval": 2}, start
    again = _dataset(prepared)
    assert again.dataframe["extra_info"] == dataset.dataframe["extra_info"]  # seeded: the same layout every time
    assert _dataset(prepared, ["data.mixture.seed=1"]).dataframe["extra_info"] != dataset.dataframe["extra_info"]
    row = dataset[0]  # verl's __getitem__ works on the reordered rows
    assert "input_ids" in row or "raw_prompt" in row


def test_mixture_dataset_leaves_validation_files_alone(prepared):
    dataset = _dataset(prepared, files="val")
    assert dataset.dataframe["data_source"] == ["math"] * 5 + ["chat"] * 5 + ["ifeval"] * 5


def test_mixture_dataset_errors(prepared):
    with pytest.raises(ValueError, match="data.shuffle=false"):
        _dataset(prepared, ["data.shuffle=true"])
    with pytest.raises(ValueError, match="'ifeval'.*does not list"):
        _dataset(prepared, ["~data.mixture.proportions.ifeval", "data.mixture.proportions.math=0.5",
                            "data.mixture.proportions.chat=0.5"])
    with pytest.raises(KeyError, match="'source'.*columns are"):
        _dataset(prepared, ["data.mixture.domain_key=source"])


# ----------------------------------------------------------------------------- rewards
def _rewards():
    """recipes/verl/rewards.py, imported as prepare_data.py imports it: from its folder."""
    return import_script(RECIPES, "rewards")


def test_reward_function_is_a_file_relative_to_the_repository_root(tmp_path, monkeypatch):
    """verl opens the recipes' reward path relative to the current directory (recipes/verl/README.md)."""
    from verl.trainer.ppo.reward import get_custom_reward_fn

    cfg = compose(ARMS[0])
    assert cfg.reward.custom_reward_function.path == "recipes/verl/rewards.py"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="recipes/verl/rewards.py"):
        get_custom_reward_fn(cfg)
    absolute = compose(ARMS[0], [f"reward.custom_reward_function.path={RECIPES / 'rewards.py'}"])
    assert get_custom_reward_fn(absolute) is not None


def test_reward_function_scores_each_domain(prepared):
    import datasets

    compute_score = _rewards().compute_score

    def first(domain):
        return datasets.Dataset.from_parquet(str(prepared / domain / "train.parquet"))[0]

    math = first("math")
    answer = math["reward_model"]["ground_truth"]
    assert compute_score("math", f"so \\boxed{{{answer}}}", answer, math["extra_info"]) == 1.0
    assert compute_score("math", "\\boxed{-1}", answer, math["extra_info"]) == 0.0
    ifeval = first("ifeval")
    assert compute_score("ifeval", "three words here", "", ifeval["extra_info"]) == 1.0
    assert compute_score("ifeval", "two, words", "", ifeval["extra_info"]) == 0.0  # a comma, and 2 words
    assert compute_score("ifeval", "a, b c", "", ifeval["extra_info"]) == 0.5
    with pytest.raises(ValueError, match="reward.reward_model.enable=true"):
        compute_score("chat", "hello", "", first("chat")["extra_info"])
    with pytest.raises(ValueError, match="'code'"):
        compute_score("code", "x", "", {"domain": "code"})


def test_surgery_mixture_and_reward_read_the_same_domain_key():
    """One setting, actor_rollout_ref.actor.fsdp_config.domain_key, names the domain for the engine, the mixture
    and the reward function (which reads it through the same DomainIndex), so they cannot disagree about a row."""
    from verl.trainer.ppo.reward import get_custom_reward_fn

    cfg = compose(ARMS[0], [f"reward.custom_reward_function.path={RECIPES / 'rewards.py'}",
                            "actor_rollout_ref.actor.fsdp_config.domain_key=extra_info.domain"])
    assert cfg.data.mixture.domain_key == "extra_info.domain"
    assert cfg.reward.custom_reward_function.reward_kwargs.domain_key == "extra_info.domain"
    score = get_custom_reward_fn(cfg)
    # data_source says "chat", the configured key says math: the reward follows the key, as the engine does
    assert score(data_source="chat", solution_str="so \\boxed{2}", ground_truth="2", extra_info={"domain": "math"}) == 1.0
    with pytest.raises(KeyError, match=r"reward_kwargs.domain_key='extra_info.domain'.*has no key 'domain'"):
        score(data_source="math", solution_str="x", ground_truth="2", extra_info={"task": "math"})


def test_surgery_settings_on_verls_own_engine_config_are_an_error_not_ignored():
    """Surgery settings without the MGS engine config (`_target_` left at verl's FSDPEngineConfig) fail when verl
    builds the config, naming the setting, instead of training without surgery."""
    from verl.utils.config import omega_conf_to_dataclass

    cfg = compose(ARMS[0], ["actor_rollout_ref.actor.fsdp_config._target_=verl.workers.config.FSDPEngineConfig"])
    with pytest.raises(Exception, match="surgery"):
        omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)


# ----------------------------------------------------------------------------- sequential recipes (issue 19)
@pytest.mark.parametrize("order", [("math", "chat"), ("chat", "math")])
def test_sequential_recipes_compose_and_lay_out_their_phases(order, prepared, monkeypatch):
    from verl.trainer.ppo.utils import create_rl_dataset
    from verl.utils.config import omega_conf_to_dataclass

    monkeypatch.chdir(ROOT)
    name = f"sequential_qwen2.5_7b_{order[0]}_to_{order[1]}"
    cfg = compose(name)
    assert omega_conf_to_dataclass(cfg.actor_rollout_ref.actor).fsdp_config.surgery == "none"
    assert list(cfg.data.mixture.curriculum.order) == list(order) and cfg.trainer.total_epochs == 1
    train = [str(prepared / d / "train.parquet") for d in ("math", "chat")]
    cfg = compose(name, [f"data.train_files=[{','.join(train)}]", "data.train_batch_size=4",
                         "data.mixture.curriculum.num_batches=10", "data.mixture.curriculum.refresh_fraction=0.2"])
    dataset = create_rl_dataset(train, cfg.data, _tokenizer(), None)
    sources = dataset.dataframe["data_source"]
    assert len(sources) == 40  # exactly num_batches x batch size: one pass is the curriculum
    first, second = order
    assert sources == [first] * 16 + [second] * 16 + [first] * 8  # 4 + 4 batches, then a refresh of 2
    assert dataset.mixture_plan.phase_names == (first, second, f"{first} (refresh)")


def test_mixture_dataset_curriculum_errors(prepared):
    with pytest.raises(ValueError, match="order, num_batches and refresh_fraction"):
        _dataset(prepared, ["+data.mixture.curriculum={order: [math], steps: 3}"])


@pytest.mark.parametrize("name", [a for a in ARMS if a.endswith("_gdpo")])
def test_gdpo_recipes_name_one_reward_per_domain_and_verl_gdpo_uses_them(name, prepared):
    """The GDPO arms: verl's gdpo estimator with gdpo_reward_keys = one `{domain}_reward` per recipe domain, which
    rewards.py returns with gdpo=true (the score on the row's domain, 0 elsewhere); verl's GDPO then gives every
    response of a group whose own-domain reward varies a non-zero advantage, and none to a group whose does not."""
    import datasets
    import numpy as np
    import torch
    from verl.trainer.ppo.core_algos import compute_gdpo_outcome_advantage

    cfg = compose(name)
    domains = list(cfg.actor_rollout_ref.actor.fsdp_config.domains)
    assert list(cfg.algorithm.gdpo_reward_keys) == [f"{d}_reward" for d in domains]
    assert cfg.reward.custom_reward_function.reward_kwargs.gdpo is True
    math = datasets.Dataset.from_parquet(str(prepared / "math" / "train.parquet"))[0]
    answer = math["reward_model"]["ground_truth"]
    compute_score = _rewards().compute_score
    right = compute_score("math", f"\\boxed{{{answer}}}", answer, math["extra_info"], gdpo=True)
    wrong = compute_score("math", "\\boxed{-1}", answer, math["extra_info"], gdpo=True)
    assert right == {"score": 1.0, "math_reward": 1.0, "chat_reward": 0.0, "ifeval_reward": 0.0}
    assert wrong["score"] == 0.0 and all(v == 0.0 for v in wrong.values())
    ifeval = datasets.Dataset.from_parquet(str(prepared / "ifeval" / "train.parquet"))[0]
    half = compute_score("ifeval", "a, b c", "", ifeval["extra_info"], gdpo=True)
    assert half["ifeval_reward"] == 0.5 and half["math_reward"] == 0.0
    # a math group (right, wrong) and an ifeval group (half, half): what verl's GDPO makes of these rewards
    scores = [right, wrong, half, half]
    n, prompt, response = len(scores), 2, 3
    batch = {"prompts": torch.zeros(n, prompt, dtype=torch.long),
             "attention_mask": torch.ones(n, prompt + response, dtype=torch.long)}
    non_tensor = {key: np.array([s[key] for s in scores], dtype=np.float32) for key in cfg.algorithm.gdpo_reward_keys}
    advantages, _ = compute_gdpo_outcome_advantage(
        token_level_rewards=torch.zeros(n, response), response_mask=torch.ones(n, response),
        index=np.array(["a", "a", "b", "b"], dtype=object), config=cfg.algorithm, non_tensor_batch=non_tensor,
        batch=batch)
    assert torch.isfinite(advantages).all()
    assert advantages[0].abs().sum() > 0 and advantages[1].abs().sum() > 0
    assert advantages[0, 0] > advantages[1, 0]
    torch.testing.assert_close(advantages[2], advantages[3])  # the ifeval group: no signal, both rows alike
