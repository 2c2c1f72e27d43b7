"""Multi-domain GRPO (math + chat) with modular gradient surgery: the paper's setting, for GPUs.

    accelerate launch --config_file recipes/trl/accelerate_ddp.yaml recipes/trl/grpo_multidomain.py \\
        --config recipes/trl/qwen2.5_7b_math_chat_lora.yaml [--surgery none|global|modular]

Math prompts are rewarded by math-verify (``trl.rewards.accuracy_reward`` against the dataset's
solution), chat prompts by a sequence-classification reward model (``RewardModelScorer`` of
``reward_model.py``, beside this script); ``trl_mgs.rewards.for_domains`` routes each reward function to
its domain's rows. The two datasets are mixed with ``trl_mgs.interleave_domains`` so every generation
batch holds the configured proportions. Any ``MGSGRPOConfig`` / ``ModelConfig`` field can be
set in the YAML or on the command line; LoRA through ``--use_peft``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig, TrlParser, get_peft_config
from trl.rewards import accuracy_reward

from reward_model import RewardModelScorer  # recipes/trl/reward_model.py: this script's folder is on sys.path
from trl_mgs import MGSGRPOConfig, MGSGRPOTrainer, check_trl_compatible, interleave_domains
from trl_mgs.rewards import for_domains


@dataclass
class MultiDomainArguments:
    """Where the two domains' prompts and rewards come from."""

    math_dataset: str = field(default="DigitalLearningGmbH/MATH-lighteval",
                              metadata={"help": "Hub id or local path/file of the math prompts."})
    math_split: str = field(default="train", metadata={"help": "Split of the math dataset."})
    math_prompt_column: str = field(default="problem", metadata={"help": "Math question column."})
    math_solution_column: str = field(default="solution", metadata={"help": "Math reference solution column."})
    math_system_prompt: str = field(
        default="Reason step by step, and put your final answer within \\boxed{}.",
        metadata={"help": "System message of every math prompt ('' for none)."},
    )
    chat_dataset: str = field(default="HuggingFaceH4/ultrafeedback_binarized",
                              metadata={"help": "Hub id or local path/file of the chat prompts."})
    chat_split: str = field(default="train_prefs", metadata={"help": "Split of the chat dataset."})
    chat_prompt_column: str = field(default="prompt", metadata={"help": "Chat prompt column (a string)."})
    chat_reward_model: str = field(default="Skywork/Skywork-Reward-V2-Llama-3.1-8B",
                                   metadata={"help": "Sequence-classification reward model for chat."})
    chat_reward_batch_size: int = field(default=8, metadata={"help": "Texts per reward-model forward."})
    math_proportion: float = field(default=0.5, metadata={"help": "Share of math prompts in every generation batch."})
    max_prompts_per_domain: int | None = field(default=None, metadata={"help": "Cap on prompts read per domain."})


def _load(path: str, split: str):
    if path.endswith((".json", ".jsonl")):
        return load_dataset("json", data_files=path, split=split)
    return load_dataset(path, split=split)


def _prompts(data, column: str, limit: int | None, name: str):
    if column not in data.column_names:
        raise ValueError(f"the {name} dataset has no column {column!r}; its columns are {data.column_names}.")
    return data.select(range(min(limit, len(data)))) if limit else data


def build_dataset(script: MultiDomainArguments, args: MGSGRPOConfig):
    """Conversational prompts of both domains with a ``domain`` column, mixed at the configured proportions."""
    math = _prompts(_load(script.math_dataset, script.math_split), script.math_prompt_column,
                    script.max_prompts_per_domain, "math")
    if script.math_solution_column not in math.column_names:
        raise ValueError(f"the math dataset has no column {script.math_solution_column!r}; its columns are "
                         f"{math.column_names}.")
    chat = _prompts(_load(script.chat_dataset, script.chat_split), script.chat_prompt_column,
                    script.max_prompts_per_domain, "chat")
    system = [{"role": "system", "content": script.math_system_prompt}] if script.math_system_prompt else []
    math = math.map(lambda row: {"prompt": [*system, {"role": "user", "content": row[script.math_prompt_column]}],
                                 "solution": row[script.math_solution_column]}, remove_columns=math.column_names)
    chat = chat.map(lambda row: {"prompt": [{"role": "user", "content": row[script.chat_prompt_column]}],
                                 "solution": ""}, remove_columns=chat.column_names)
    prompts_per_batch = args.generation_batch_size // args.num_generations
    check_trl_compatible(args, prompts_per_batch)
    proportions = {"math": script.math_proportion, "chat": 1.0 - script.math_proportion}
    return interleave_domains({"math": math, "chat": chat}, proportions, batch_size=prompts_per_batch,
                              seed=args.seed, stopping="cycle")


def main(argv: list[str] | None = None) -> MGSGRPOTrainer:
    parser = TrlParser((MultiDomainArguments, MGSGRPOConfig, ModelConfig))
    script, args, model_args = parser.parse_args_and_config(argv)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path, dtype=model_args.dtype, attn_implementation=model_args.attn_implementation,
    )
    rewards = [
        for_domains(accuracy_reward, ["math"]),
        for_domains(RewardModelScorer(script.chat_reward_model, device=args.device,
                                      batch_size=script.chat_reward_batch_size), ["chat"]),
    ]
    trainer = MGSGRPOTrainer(model=model, reward_funcs=rewards, args=args, train_dataset=build_dataset(script, args),
                             processing_class=tokenizer, peft_config=get_peft_config(model_args))
    trainer.train()
    trainer.save_model(args.output_dir)
    return trainer


if __name__ == "__main__":
    main(sys.argv[1:])
