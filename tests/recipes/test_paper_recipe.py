"""The paper-setting recipe (recipes/trl/grpo_multidomain.py) and its reward model (reward_model.py), on tiny
local models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from _scripts import import_script

pytest.importorskip("trl")
pytest.importorskip("math_verify")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForSequenceClassification  # noqa: E402

from mgs_tools.toy import char_tokenizer  # noqa: E402

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "trl"
sys.path.insert(0, str(RECIPES))  # recipe modules import each other as scripts do: from their folder
try:
    from reward_model import RewardModelScorer  # noqa: E402
finally:
    sys.path.remove(str(RECIPES))

CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}\n{% endfor %}" \
                "{% if add_generation_prompt %}a:{% endif %}"


def _tokenizer():
    tokenizer = char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _config(**kw):
    return Qwen2Config(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, max_position_embeddings=512, pad_token_id=0, eos_token_id=1,
                       bos_token_id=None, tie_word_embeddings=False, **kw)


def test_reward_model_scorer_equals_a_direct_forward(tmp_path):
    torch.manual_seed(0)
    model = Qwen2ForSequenceClassification(_config(num_labels=1)).eval()
    tokenizer = _tokenizer()
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    scorer = RewardModelScorer(str(tmp_path / "rm"), device="cpu", batch_size=2)
    prompts = [[{"role": "user", "content": "hello there"}], [{"role": "user", "content": "hi"}], "plain "]
    completions = [[{"role": "assistant", "content": "good day"}], [{"role": "assistant", "content": "yo yo yo"}], "text"]
    scores = scorer(prompts, completions)
    texts = ["u:hello there\na:good day\n", "u:hi\na:yo yo yo\n", "plain text"]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "rm")  # as loaded from the directory (transformers' choice)
    with torch.no_grad():  # one text at a time: no padding at all in the reference
        expected = [float(model(**tokenizer(t, return_tensors="pt")).logits[0, 0]) for t in texts]
    assert scores == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert len(set(round(s, 6) for s in scores)) == 3


@pytest.mark.parametrize("extra", [[], ["--normalize_advantage_by_domain", "true", "--multi_objective_aggregation",
                                         "normalize_then_sum", "--surgery", "none"]], ids=["modular", "normadv-gdpo"])
def test_recipe_runs_with_lora(tmp_path, monkeypatch, extra):
    """The paper recipe end to end; also as the Normalized Advantage + GDPO arm (two command-line switches)."""
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(_config(), attn_implementation="eager")
    policy.save_pretrained(tmp_path / "policy")
    _tokenizer().save_pretrained(tmp_path / "policy")
    rm = Qwen2ForSequenceClassification(_config(num_labels=1))
    rm.save_pretrained(tmp_path / "rm")
    _tokenizer().save_pretrained(tmp_path / "rm")
    math = [{"problem": f"what is {i}+{i}?", "solution": f"\\boxed{{{2 * i}}}"} for i in range(8)]
    chat = [{"prompt": f"say hello {i}"} for i in range(8)]
    (tmp_path / "math.json").write_text(json.dumps(math))
    (tmp_path / "chat.json").write_text(json.dumps(chat))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    trainer = import_script(RECIPES, "grpo_multidomain").main([
        "--model_name_or_path", str(tmp_path / "policy"), "--dtype", "float32", "--attn_implementation", "eager",
        "--math_dataset", str(tmp_path / "math.json"), "--chat_dataset", str(tmp_path / "chat.json"),
        "--chat_split", "train", "--chat_reward_model", str(tmp_path / "rm"),
        "--use_peft", "--lora_r", "2", "--lora_alpha", "4", "--lora_target_modules", "q_proj", "v_proj",
        "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--use_cpu", "--bf16", "false",
        "--gradient_checkpointing", "false", "--beta", "0.0", "--num_generations", "2",
        "--per_device_train_batch_size", "4", "--max_completion_length", "4", "--shuffle_dataset", "false",
        "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "true", *extra,
    ])
    assert trainer.args.normalize_advantage_by_domain is bool(extra)
    assert trainer.args.multi_objective_aggregation == ("normalize_then_sum" if extra else "sum_then_normalize")
    logs = [h for h in trainer.state.log_history if "mgs/conflict_frac" in h]
    assert len(logs) == 2
    assert all("rewards/accuracy_reward@math/mean" in h and "rewards/reward_model:rm@chat/mean" in h for h in logs)
    assert all(h["mgs/reward/chat/mean"] is not None and h["mgs/reward/math/mean"] is not None for h in logs)
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert all("lora_" in n for names in trainer.surgery.groups().values() for n in names)


def test_full_fine_tuning_configs_are_the_papers_setting_under_fsdp2():
    """The full fine-tuning recipe parses into the recipe's own dataclasses with the paper's settings (no LoRA,
    lr 1e-6, n = 8, math + chat, modular), and its accelerate config asks for FSDP2 on 8 GPUs, the sharded path the
    trainer accepts (FSDP1 and DeepSpeed are refused)."""
    import yaml

    recipe = import_script(RECIPES, "grpo_multidomain")
    from trl import ModelConfig, TrlParser

    from trl_mgs import MGSGRPOConfig

    parser = TrlParser((recipe.MultiDomainArguments, MGSGRPOConfig, ModelConfig))
    script, args, model_args = parser.parse_args_and_config(
        ["--config", str(RECIPES / "qwen2.5_7b_math_chat_full.yaml"), "--use_cpu", "true", "--bf16", "false"])
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-7B-Instruct" and not model_args.use_peft
    assert (args.learning_rate, args.num_generations, args.surgery, args.domains) == (1e-6, 8, "modular", ["chat", "math"])
    assert not args.gradient_checkpointing  # FSDP2's activation checkpointing instead (both at once is an error)
    launch = yaml.safe_load((RECIPES / "accelerate_fsdp2.yaml").read_text())
    assert launch["distributed_type"] == "FSDP" and launch["num_processes"] == 8
    assert launch["fsdp_config"]["fsdp_version"] == 2 and launch["fsdp_config"]["fsdp_activation_checkpointing"]
