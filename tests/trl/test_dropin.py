"""MGSGRPOTrainer used the ways GRPOTrainer is used (issue 17): no args, a plain GRPOConfig, surgery="none" on data
without domains, eval sets with and without the domain column, environments that own the data and the rewards, and
every refusal coming before the parent trainer loads anything. The reference is stock GRPOTrainer itself."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import warnings

import pytest

pytest.importorskip("trl")

import torch
import trl
from _tiny import (
    COMMON, ENV_DOMAINS, AddTool, GradRecorder, StubGRPOTrainer, StubToolGRPOTrainer, dataset,
    make_stub_mgs_trainer_class, make_stub_tool_mgs_trainer_class, math_code_environment, reward, tiny_model,
    tiny_tokenizer, tool_model, tool_tokenizer,
)
from datasets import Dataset
from transformers import TrainingArguments
from trl import GRPOConfig

from trl_mgs import MGSGRPOConfig
from trl_mgs.config import mgs_fields

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # environment_factory's "experimental" warning


def _grpo_fields(config) -> dict:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(GRPOConfig)}


def _no_domain_dataset():
    return dataset().remove_columns("domain")


def _text_reward(completions, **kwargs) -> list[float]:
    """A reward that reads no domain (for data without the column)."""
    return [float(len(c) % 4 + c.count("a")) for c in completions]


def _run(cls, args, data=None, callbacks=(), **kw):
    recorder = GradRecorder()
    trainer = cls(model=kw.pop("model", None) or tiny_model(), reward_funcs=kw.pop("reward_funcs", [reward]), args=args,
                  train_dataset=dataset() if data is None else data, processing_class=kw.pop("processing_class", None)
                  or tiny_tokenizer(), callbacks=[recorder, *callbacks], **kw)
    trainer.train()
    return trainer, recorder.grads


def _assert_same_grads(grads, reference, exact=False):
    assert len(grads) == len(reference) > 0
    for step, (g, s) in enumerate(zip(grads, reference)):
        assert g.keys() == s.keys()
        assert sum(float(v.norm()) for v in s.values()) > 0, "the reference gradient is zero: the test could not fail"
        for n in s:
            same = torch.equal(g[n], s[n]) if exact else torch.allclose(g[n], s[n], rtol=1e-5, atol=1e-7)
            assert same, f"step {step} {n}"


# ---------------------------------------------------------------------- 1. no args, a plain GRPOConfig
def test_no_args_builds_grpo_trainers_default_config(tmp_path, monkeypatch):
    """GRPOTrainer(model, reward_funcs, train_dataset=...) without args builds GRPOConfig('{model}-GRPO'); the drop-in
    builds the same config as an MGSGRPOConfig (surgery settings at their defaults) and trains with it."""
    import transformers.training_args

    monkeypatch.chdir(tmp_path)
    # GRPOConfig's default bf16=True is refused on a machine without a bf16 GPU (stock's default config too): this
    # CPU machine stands in for one (bf16 autocast runs on the CPU)
    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)
    stock = StubGRPOTrainer(model=tiny_model(), reward_funcs=reward, train_dataset=dataset(),
                            processing_class=tiny_tokenizer())
    cls = make_stub_mgs_trainer_class()
    trainer = cls(tiny_model(), reward, train_dataset=dataset(), processing_class=tiny_tokenizer())  # positional too
    assert type(trainer.args) is MGSGRPOConfig and type(stock.args) is GRPOConfig
    assert _grpo_fields(trainer.args) == _grpo_fields(stock.args)
    assert trainer.args.output_dir == stock.args.output_dir and trainer.args.output_dir.endswith("-GRPO")
    assert {name: getattr(trainer.args, name) for name in mgs_fields()} == {n: f.default for n, f in mgs_fields().items()}
    trainer.args.max_steps = 1
    trainer.train()
    assert trainer.state.global_step == 1 and trainer.surgery.domains == ("chat", "code", "math")


def test_a_plain_grpo_config_is_carried_over_with_a_warning(tmp_path):
    """Every GRPOConfig field (also those its __post_init__ derived) is kept, the surgery settings take their defaults,
    a warning says so, and training equals a run built with MGSGRPOConfig and the same fields."""
    settings = COMMON | {"max_steps": 2, "gradient_accumulation_steps": 2}
    plain = GRPOConfig(output_dir=str(tmp_path / "a"), **settings)
    before = dict(vars(plain))
    cls = make_stub_mgs_trainer_class()
    with pytest.warns(UserWarning, match=r"got a GRPOConfig, not an MGSGRPOConfig: every field is carried over.*"
                                         r"surgery='modular'.*domain_column='domain'"):
        carried, grads = _run(cls, plain)
    assert type(carried.args) is MGSGRPOConfig and type(plain) is GRPOConfig
    assert vars(plain).keys() == before.keys()  # the user's config gains no field
    reference, reference_grads = _run(cls, MGSGRPOConfig(output_dir=str(tmp_path / "a"), **settings))
    assert _grpo_fields(carried.args) == _grpo_fields(reference.args)
    assert carried.args.steps_per_generation == 2 and carried.args.generation_batch_size == 16
    _assert_same_grads(grads, reference_grads, exact=True)


def test_positional_fields_are_grpo_configs(tmp_path):
    """MGSGRPOConfig("out") sets output_dir as GRPOConfig("out") does: GRPOConfig's fields come first, in its order."""
    assert MGSGRPOConfig(str(tmp_path), use_cpu=True, report_to="none").output_dir == str(tmp_path)
    grpo = [f.name for f in dataclasses.fields(GRPOConfig)]
    assert [f.name for f in dataclasses.fields(MGSGRPOConfig)][:len(grpo)] == grpo


def test_from_grpo_config_sets_and_checks_the_mgs_fields(tmp_path):
    plain = GRPOConfig(output_dir=str(tmp_path), **COMMON)
    config = MGSGRPOConfig.from_grpo_config(plain, surgery="none", domains=["b", "a"])
    assert (config.surgery, config.domains, config.surgery_method) == ("none", ["b", "a"], "pcgrad")
    assert _grpo_fields(config) == _grpo_fields(plain)
    assert MGSGRPOConfig.from_grpo_config(config).surgery == "none"  # an MGSGRPOConfig keeps its own settings
    with pytest.raises(ValueError, match="surgery='sometimes'"):
        MGSGRPOConfig.from_grpo_config(plain, surgery="sometimes")
    with pytest.raises(TypeError, match=r"sets the MGS fields .*got \['learning_rate'\]"):
        MGSGRPOConfig.from_grpo_config(plain, learning_rate=1.0)
    with pytest.raises(TypeError, match="needs a GRPOConfig; got TrainingArguments"):
        MGSGRPOConfig.from_grpo_config(TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    with pytest.raises(ValueError, match=r"environment_domain_attribute='domain' reads .* set MGSGRPOConfig.domains"):
        MGSGRPOConfig(output_dir=str(tmp_path), environment_domain_attribute="domain", **COMMON)


# ---------------------------------------------------------------------- refusals before the parent's __init__
def _env_factory():
    return math_code_environment([])


REFUSALS = {
    "not a GRPOConfig": (lambda p: dict(args=TrainingArguments(output_dir=str(p), use_cpu=True, report_to="none")),
                         TypeError, r"needs an MGSGRPOConfig \(a GRPOConfig is carried over\); got TrainingArguments"),
    "no domain column": (lambda p: dict(train_dataset=_no_domain_dataset()), ValueError,
                         r"no domain column 'domain'.*\['prompt'\]\..*surgery='none' to train as GRPOTrainer"),
    "a plain GRPOConfig, no domain column": (
        lambda p: dict(args=GRPOConfig(output_dir=str(p), **COMMON), train_dataset=_no_domain_dataset()),
        ValueError, r"no domain column 'domain'"),
    "surgery none, a named column missing": (
        lambda p: dict(args=MGSGRPOConfig(output_dir=str(p), surgery="none", domain_column="task", **COMMON)),
        ValueError, r"no domain column 'task'"),
    "a DatasetDict as the training set": (lambda p: dict(train_dataset={"train": dataset()}), TypeError,
                                          r"`train_dataset` must be a `Dataset` or `IterableDataset`, got `dict`"),
    "unlisted domains": (lambda p: dict(args=MGSGRPOConfig(output_dir=str(p), domains=["chat"], **COMMON)),
                         ValueError, r"domains \['code', 'math'\] that MGSGRPOConfig.domains \['chat'\]"),
    "fsdp1": (lambda p: dict(args=MGSGRPOConfig(output_dir=str(p), fsdp=True, fsdp_config={"version": 1}, **COMMON)),
              NotImplementedError, r"one process, DDP .* and FSDP2; got FSDP1 \(MGSGRPOConfig.fsdp_config version 1\)"
                                   r"\. FSDP1 .* FlatParameter.*--config_file recipes/trl/accelerate_fsdp2.yaml"),
    "an eval set with another domain": (
        lambda p: dict(eval_dataset={"held_out": Dataset.from_list([{"prompt": "a poem", "domain": "poetry"}] * 2)}),
        ValueError, r"eval_dataset\['held_out'\] has domains \['poetry'\] that the training set's domains "
                    r"\['chat', 'code', 'math'\] do not include.*MGSGRPOConfig.domains"),
    "environment attribute, no environment": (
        lambda p: dict(args=MGSGRPOConfig(output_dir=str(p), environment_domain_attribute="domain",
                                          domains=ENV_DOMAINS, **COMMON)),
        ValueError, r"environment_domain_attribute='domain' reads each rollout's environment, but no "
                    r"environment_factory was passed"),
    "environment owns the data, no domain source": (
        lambda p: dict(train_dataset=None, reward_funcs=None, environment_factory=_env_factory()), ValueError,
        r"environment_factory without a train_dataset.*placeholder prompts carry no domain column 'domain'.*"
        r"environment_domain_attribute.*surgery='none'"),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_refusals_come_before_the_parent_init(tmp_path, monkeypatch, case):
    """A wrong setting is reported before GRPOTrainer.__init__ loads models (patched here to fail if it runs)."""
    build, error, pattern = REFUSALS[case]

    def parent_init(self, *args, **kwargs):
        raise AssertionError("GRPOTrainer.__init__ ran before the refusal")

    monkeypatch.setattr(trl.GRPOTrainer, "__init__", parent_init)
    kwargs = dict(model=tiny_model(), reward_funcs=[reward], args=MGSGRPOConfig(output_dir=str(tmp_path), **COMMON),
                  train_dataset=dataset(), processing_class=tiny_tokenizer()) | build(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the carried-over GRPOConfig's warning
        with pytest.raises(error, match=pattern):
            make_stub_mgs_trainer_class()(**kwargs)


LAUNCHERS = {  # what accelerate launch sets for an FSDP1 config (FSDP_VERSION unset means 1) and a DeepSpeed one
    "fsdp1": ({"ACCELERATE_USE_FSDP": "true"}, r"got FSDP1 \(ACCELERATE_USE_FSDP with FSDP_VERSION=1 \(the default\)\)"
                                               r"\. FSDP1 \(fsdp_version 1\) flattens"),
    "fsdp1 explicit": ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, r"got FSDP1 .*FSDP_VERSION=1\)"),
    "deepspeed": ({"ACCELERATE_USE_DEEPSPEED": "true"}, r"got DeepSpeed \(ACCELERATE_USE_DEEPSPEED, set by accelerate "
                                                         r"launch\)\. Under DeepSpeed ZeRO .* use FSDP2: accelerate launch "
                                                         r"--config_file recipes/trl/accelerate_fsdp2.yaml"),
}


@pytest.mark.parametrize("case", LAUNCHERS, ids=list(LAUNCHERS))
def test_a_sharded_launcher_is_refused_before_the_parent_init(tmp_path, monkeypatch, case):
    """accelerate launch with an FSDP1 or DeepSpeed config sets these variables (DeepSpeed is not installed here, so
    the config is built before the variable is set)."""
    variables, pattern = LAUNCHERS[case]
    args = MGSGRPOConfig(output_dir=str(tmp_path), **COMMON)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(trl.GRPOTrainer, "__init__", lambda self, *a, **k: pytest.fail("the parent init ran"))
    with pytest.raises(NotImplementedError, match=r"one process, DDP .* and FSDP2; " + pattern):
        make_stub_mgs_trainer_class()(model=tiny_model(), reward_funcs=[reward], args=args, train_dataset=dataset(),
                                      processing_class=tiny_tokenizer())


@pytest.mark.parametrize("how", ["launcher", "config"])
def test_fsdp2_is_not_refused(tmp_path, monkeypatch, how):
    """FSDP2 (accelerate launch with fsdp_version 2, or fsdp_config version 2) reaches the parent's __init__."""
    class Reached(Exception):
        pass

    def parent_init(self, *args, **kwargs):
        raise Reached

    settings = COMMON
    if how == "launcher":
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
        monkeypatch.setenv("FSDP_VERSION", "2")
    else:
        settings = COMMON | {"fsdp": True, "fsdp_config": {"version": 2}}
    args = MGSGRPOConfig(output_dir=str(tmp_path), **settings)
    monkeypatch.setattr(trl.GRPOTrainer, "__init__", parent_init)
    with pytest.raises(Reached):
        make_stub_mgs_trainer_class()(model=tiny_model(), reward_funcs=[reward], args=args, train_dataset=dataset(),
                                      processing_class=tiny_tokenizer())


# ---------------------------------------------------------------------- 4. surgery="none" without domains
@pytest.mark.parametrize("grad_accum", [1, 2])
def test_surgery_none_without_a_domain_column_is_grpo_trainer(tmp_path, grad_accum):
    """A user who swaps GRPOTrainer for MGSGRPOTrainer with surgery='none' and no domain column gets GRPOTrainer: the
    same gradients and parameters bit for bit, no surgery, no mgs/ metrics."""
    settings = COMMON | {"max_steps": 2, "gradient_accumulation_steps": grad_accum}
    stock, stock_grads = _run(StubGRPOTrainer, GRPOConfig(output_dir=str(tmp_path / "s"), **settings),
                              _no_domain_dataset(), reward_funcs=[_text_reward])
    trainer, grads = _run(make_stub_mgs_trainer_class(), MGSGRPOConfig(output_dir=str(tmp_path / "m"), surgery="none",
                          **settings), _no_domain_dataset(), reward_funcs=[_text_reward])
    assert trainer.surgery is None and "domains_per_microbatch" not in trainer.__dict__
    _assert_same_grads(grads, stock_grads, exact=True)
    for (n, p), q in zip(trainer.model.named_parameters(), stock.model.parameters()):
        assert torch.equal(p, q), n
    assert not any(k.startswith("mgs/") for h in trainer.state.log_history for k in h)


def test_surgery_none_without_domains_saves_and_resumes_as_stock(tmp_path):
    """Its checkpoints are GRPOTrainer's (no surgery state file) and it resumes from them."""
    settings = COMMON | {"surgery": "none", "save_strategy": "steps", "save_steps": 1}
    cls = make_stub_mgs_trainer_class()
    first, _ = _run(cls, MGSGRPOConfig(output_dir=str(tmp_path), max_steps=1, **settings), _no_domain_dataset(),
                    reward_funcs=[_text_reward])
    checkpoint = tmp_path / "checkpoint-1"
    assert (checkpoint / "trainer_state.json").exists() and not list(checkpoint.glob("mgs_surgery*"))
    resumed = cls(model=tiny_model(), reward_funcs=[_text_reward], args=MGSGRPOConfig(output_dir=str(tmp_path),
                  max_steps=2, **settings), train_dataset=_no_domain_dataset(), processing_class=tiny_tokenizer())
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 2 and resumed.surgery is None


# ---------------------------------------------------------------------- 3. eval sets
def _eval_rows(with_domain: bool):
    rows = [{"prompt": f"what is {i}+1?", "domain": "math"} for i in range(2)]
    rows += [{"prompt": f"def g{i}(y):", "domain": "code"} for i in range(2)]
    return Dataset.from_list(rows if with_domain else [{"prompt": r["prompt"]} for r in rows])


def test_an_eval_set_without_the_domain_column_evaluates_as_stock(tmp_path):
    """An eval set without the column is evaluated, during training (eval_strategy='steps') and by evaluate(), with
    GRPOTrainer's eval metrics: the same as stock's on the same model, and no eval_mgs/ key."""
    settings = COMMON | {"max_steps": 2, "per_device_eval_batch_size": 8}
    cls = make_stub_mgs_trainer_class()

    def build(trainer_cls, config_cls, out, **kw):
        return trainer_cls(model=tiny_model(), reward_funcs=[_text_reward], args=config_cls(output_dir=str(out),
                           **(settings | kw)), train_dataset=dataset(), eval_dataset=_eval_rows(with_domain=False),
                           processing_class=tiny_tokenizer())

    with pytest.warns(UserWarning, match=r"eval_dataset has no domain column 'domain': evaluate\(\) runs on it"):
        trainer = build(cls, MGSGRPOConfig, tmp_path / "m")
    stock = build(StubGRPOTrainer, GRPOConfig, tmp_path / "s")
    metrics, reference = trainer.evaluate(), stock.evaluate()
    assert reference["eval_reward"] > 0 and not any(k.startswith("eval_mgs/") for k in metrics)
    for key in ("eval_loss", "eval_reward", "eval_reward_std", "eval_completions/mean_length"):
        assert metrics[key] == pytest.approx(reference[key], rel=1e-6, abs=1e-9), key
    trained = build(cls, MGSGRPOConfig, tmp_path / "t", eval_strategy="steps", eval_steps=1)
    trained.train()
    evals = [h for h in trained.state.log_history if "eval_reward" in h]
    assert len(evals) == 2 and trained.state.global_step == 2


def test_dict_eval_sets_with_and_without_domains(tmp_path):
    """A dict of eval sets, evaluated during training: the one whose rows carry domains logs eval_mgs/ keys, the one
    without the column is evaluated as stock."""
    args = MGSGRPOConfig(output_dir=str(tmp_path), max_steps=1, eval_strategy="steps", eval_steps=1,
                         per_device_eval_batch_size=8, **COMMON)
    with pytest.warns(UserWarning, match=r"eval_dataset\['plain'\] has no domain column 'domain'"):
        trainer = make_stub_mgs_trainer_class()(
            model=tiny_model(), reward_funcs=[_text_reward], args=args, train_dataset=dataset(),
            eval_dataset={"mixed": _eval_rows(with_domain=True), "plain": _eval_rows(with_domain=False)},
            processing_class=tiny_tokenizer())
    trainer.train()
    (mixed,) = [h for h in trainer.state.log_history if "eval_mixed_loss" in h]
    (plain,) = [h for h in trainer.state.log_history if "eval_plain_loss" in h]
    assert mixed["eval_mgs/reward/math/mean"] is not None and mixed["eval_mgs/reward/code/mean"] is not None
    assert "eval_reward" in plain and not any(k.startswith("eval_mgs/") for k in plain)


def test_eval_rows_with_domains_log_per_domain_rewards(tmp_path):
    """eval_mgs/reward/{domain}/mean and /std, eval_mgs/completion_length/{domain}: the reward function's eval outputs
    grouped by domain (one eval batch here, so the batch means are the eval means)."""
    seen = []

    def recording_reward(completions, domain, trainer_state=None, **kwargs):
        values = reward(completions, domain)
        seen.append(list(zip(domain, values)))
        return values

    args = MGSGRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_eval_batch_size=8,
                         **(COMMON | {"num_generations": 2}))
    trainer = make_stub_mgs_trainer_class()(model=tiny_model(), reward_funcs=[recording_reward], args=args,
                                            train_dataset=dataset(), eval_dataset=_eval_rows(with_domain=True),
                                            processing_class=tiny_tokenizer())
    seen.clear()
    metrics = trainer.evaluate()
    assert len(seen) == 1  # one eval batch
    for d in ("code", "math"):
        values = torch.tensor([v for dom, v in seen[0] if dom == d])
        assert metrics[f"eval_mgs/reward/{d}/mean"] == pytest.approx(float(values.mean()), rel=1e-5, abs=1e-6)
        assert metrics[f"eval_mgs/reward/{d}/std"] == pytest.approx(float(values.std()), rel=1e-5, abs=1e-6)
        assert metrics[f"eval_mgs/completion_length/{d}"] > 0
    assert metrics["eval_mgs/reward/chat/mean"] is None  # no chat row in the eval set
    assert not any(k.startswith("eval_mgs/grad") for k in metrics)  # no surgery statistics in eval


# ---------------------------------------------------------------------- 2. environments (TRL's environment_factory)
needs_jmespath = pytest.mark.skipif(importlib.util.find_spec("jmespath") is None,
                                    reason="TRL's tools and environments need jmespath on transformers < 5.13")

ENV_COMMON = COMMON | {"max_steps": 2, "max_completion_length": 256}


def _length_reward(completions, **kwargs):
    return [float(len(c[-1]["content"]) % 3) for c in completions]


def _env_run(cls, args, factory, reward_funcs, data=None):
    recorder = GradRecorder()
    trainer = cls(model=tool_model(), reward_funcs=reward_funcs, args=args, train_dataset=data,
                  processing_class=tool_tokenizer(), environment_factory=factory, callbacks=[recorder])
    trainer.train()
    return trainer, recorder.grads


@needs_jmespath
@pytest.mark.parametrize("with_reward_funcs", [True, False], ids=["reward_funcs+environment", "environment-reward"])
def test_an_environment_that_owns_the_data_trains_like_stock(tmp_path, with_reward_funcs):
    """environment_factory without a train_dataset (TRL's placeholder prompts), the domain from an attribute the
    environment sets in reset(), tool calls, and the environment's get_reward beside reward_funcs or alone:
    surgery='none' gives GRPOTrainer's gradients at every step, with mixed-domain micro-batches split by domain."""
    def funcs():  # a new list per trainer: GRPOTrainer appends the environment's reward to the list it is given
        return [_length_reward] if with_reward_funcs else None

    stock, stock_grads = _env_run(StubToolGRPOTrainer, GRPOConfig(output_dir=str(tmp_path / "s"), **ENV_COMMON),
                                  math_code_environment([]), funcs())
    args = MGSGRPOConfig(output_dir=str(tmp_path / "m"), surgery="none", environment_domain_attribute="domain",
                         domains=ENV_DOMAINS, order_by_domain=False, **ENV_COMMON)
    trainer, grads = _env_run(make_stub_tool_mgs_trainer_class(), args, math_code_environment([]), funcs())
    names = (["_length_reward"] if with_reward_funcs else []) + ["MathCodeEnv"]
    assert trainer.reward_func_names == stock.reward_func_names == names
    assert max(trainer.domains_per_microbatch) == 2, "no mixed micro-batch: the split by domain went untested"
    assert all(h["tools/call_frequency"] > 0 for h in trainer.state.log_history if "tools/call_frequency" in h)
    assert min(trainer.tool_tokens) > 0  # tool results, masked out of the loss, were in every batch
    _assert_same_grads(grads, stock_grads)


@needs_jmespath
def test_environment_domains_log_per_domain_rewards_and_model_token_lengths(tmp_path):
    """Modular surgery on environment-owned data: mgs/reward/{domain}/mean equals the environment's get_reward values
    grouped by its domain attribute, and the per-domain completion lengths count the model's tokens only (tool
    results masked out), so their row-weighted mean is TRL's completions/mean_length."""
    records = []
    args = MGSGRPOConfig(output_dir=str(tmp_path), environment_domain_attribute="domain", domains=ENV_DOMAINS,
                         **ENV_COMMON)
    trainer, _ = _env_run(make_stub_tool_mgs_trainer_class(), args, math_code_environment(records), None)
    logs = [h for h in trainer.state.log_history if "mgs/conflict_frac" in h]
    rows = args.generation_batch_size
    assert len(logs) == 2 and len(records) == 2 * rows  # one generation batch per step
    for step, log in enumerate(logs):
        batch = records[step * rows:(step + 1) * rows]
        counts = {}
        for d in ENV_DOMAINS:
            values = [r for dom, r in batch if dom == d]
            counts[d] = len(values)
            assert values and log[f"mgs/reward/{d}/mean"] == pytest.approx(sum(values) / len(values), rel=1e-5)
        mean_length = sum(counts[d] * log[f"mgs/completion_length/{d}"] for d in ENV_DOMAINS) / rows
        assert mean_length == pytest.approx(log["completions/mean_length"], rel=1e-5)
        assert log["tools/call_frequency"] > 0
    assert min(trainer.tool_tokens) > 0, "no tool result in the completions: the length check could not fail"


@needs_jmespath
def test_one_environment_per_domain_with_the_environment_column(tmp_path):
    """A dict environment_factory routes each row by its `environment` column; domain_column='environment' makes each
    environment a domain. Only the math environment owns a reward and there are no reward_funcs, so the chat rows are
    unscored: their domain reward is absent (None), as TRL leaves them out of `reward`, not 0."""
    records = []
    math_env = math_code_environment(records)

    class ChatEnv(AddTool):
        def reset(self, **kwargs) -> str:
            return " chat"

    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "environment": env} for i in range(4)
            for env in ("math", "chat")]
    args = MGSGRPOConfig(output_dir=str(tmp_path), domain_column="environment", **ENV_COMMON)
    trainer, _ = _env_run(make_stub_tool_mgs_trainer_class(), args, {"math": math_env, "chat": ChatEnv}, None,
                          data=Dataset.from_list(rows))
    assert trainer.surgery.domains == ("chat", "math")
    logs = [h for h in trainer.state.log_history if "mgs/conflict_frac" in h]
    assert len(logs) == 2
    for log in logs:
        assert log["mgs/reward/chat/mean"] is None and log["mgs/completion_length/chat"] > 0
        assert log["mgs/reward/math/mean"] == pytest.approx(log["reward"], rel=1e-5)  # TRL's reward: the math rows


@needs_jmespath
def test_a_single_environment_is_one_configured_domain(tmp_path):
    """An environment that owns the data with domains=['math']: every rollout is math, and the domain's metrics are
    TRL's own (reward, completions/mean_length) over the same rows."""
    args = MGSGRPOConfig(output_dir=str(tmp_path), domains=["math"], **ENV_COMMON)
    trainer, _ = _env_run(make_stub_tool_mgs_trainer_class(), args, math_code_environment([]), [_length_reward])
    logs = [h for h in trainer.state.log_history if "mgs/conflict_frac" in h]
    assert len(logs) == 2 and trainer.surgery.domains == ("math",)
    for log in logs:
        assert log["mgs/reward/math/mean"] == pytest.approx(log["reward"], rel=1e-5)
        assert log["mgs/completion_length/math"] == pytest.approx(log["completions/mean_length"], rel=1e-5)


@needs_jmespath
def test_an_environment_without_the_domain_attribute_is_an_error_naming_it(tmp_path):
    args = MGSGRPOConfig(output_dir=str(tmp_path), environment_domain_attribute="task", domains=ENV_DOMAINS,
                         **ENV_COMMON)
    with pytest.raises(AttributeError, match=r"environment_domain_attribute='task': the environment MathCodeEnv has no "
                                             r"attribute 'task'.*set it in reset\(\)"):
        _env_run(make_stub_tool_mgs_trainer_class(), args, math_code_environment([]), None)
