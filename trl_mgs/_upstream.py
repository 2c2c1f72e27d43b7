"""Every private member of TRL and transformers that ``trl_mgs`` overrides, calls or reads, checked at import.

The trainer overrides narrow hooks of ``GRPOTrainer`` (trl 1.16) and transformers' ``Trainer``; if a
new release renames one or changes its parameters, :func:`check` raises an error naming the member and
the versions instead of letting the override bind arguments wrong or never run. The instance attributes
the trainer reads are checked once the parent trainer is built (:data:`TRAINER_ATTRIBUTES`).
"""

from __future__ import annotations

from mgs.integration import Seam, check_instance, check_upstream

TRL_VERSIONS = ("1.16.0", "1.17")
"""Supported trl: ``>=1.16.0,<1.17`` (the tested one; setup.cfg pins it)."""

TRANSFORMERS_VERSIONS = ("5.10", "5.11")
"""Supported transformers: ``>=5.10,<5.11`` (the tested one, which serves trl 1.16 and verl 0.9.1)."""

TRL_SEAMS = (
    # read by name: a positional call is bound to these parameters before the parent builds anything
    Seam("trl:GRPOTrainer.__init__", "override",
         ("model", "reward_funcs", "args", "train_dataset", "eval_dataset", "processing_class",
          "reward_processing_classes", "callbacks", "optimizers", "quantization_config", "peft_config", "tools",
          "rollout_func", "environment_factory")),
    Seam("trl:GRPOTrainer._generate_and_score_completions", "override", ("inputs",)),
    Seam("trl:GRPOTrainer._prepare_inputs", "override", ("generation_batch",)),
    Seam("trl:GRPOTrainer._calculate_rewards", "override", ("inputs", "prompts", "completions", "completion_ids_list")),
    Seam("trl:GRPOTrainer._get_per_token_logps_and_entropies", "override",
         ("model", "input_ids", "attention_mask", "logits_to_keep", "batch_size", "compute_entropy", "compute_aux_loss",
          "pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes", "num_tiles",
          "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")),
    Seam("trl:GRPOTrainer._set_signature_columns_if_needed", "override", ()),
    Seam("trl:GRPOTrainer.compute_loss", "override", ("model", "inputs", "return_outputs", "num_items_in_batch")),
    Seam("trl:GRPOTrainer.training_step", "override", ("model", "inputs", "num_items_in_batch")),
    Seam("trl.trainer.utils:split_tensor_dict", "call", ("tensor_dict", "num_chunks")),
    Seam("trl.trainer.utils:get_config_model_id", "call", ("config",)),  # args=None: GRPOTrainer's default name
)

TRANSFORMERS_SEAMS = (
    Seam("transformers:Trainer._save_optimizer_and_scheduler", "override", ("output_dir",)),
    Seam("transformers:Trainer._load_optimizer_and_scheduler", "override", ("checkpoint",)),
)

TRAINER_ATTRIBUTES = ("_buffered_inputs", "_step", "_metrics", "_signature_columns", "aux_loss_enabled",
                      "reward_weights", "environments")
"""Attributes of a built ``GRPOTrainer`` that the trainer reads (``_buffered_inputs``, ``_step``: the generation
buffer and its position; ``_metrics``: TRL's metric lists; ``_signature_columns``: the kept dataset columns;
``environments``: each rollout's environment instance, ``None`` without ``environment_factory``)."""


def check() -> None:
    """Check the installed trl and transformers against the seams above (raises ``UpstreamMismatchError``)."""
    check_upstream("trl", *TRL_VERSIONS, TRL_SEAMS, adapter="trl_mgs")
    check_upstream("transformers", *TRANSFORMERS_VERSIONS, TRANSFORMERS_SEAMS, adapter="trl_mgs")


def check_trainer(trainer: object) -> None:
    """Check a built trainer for the attributes of :data:`TRAINER_ATTRIBUTES`."""
    check_instance(trainer, TRAINER_ATTRIBUTES, adapter="trl_mgs", package="trl")
