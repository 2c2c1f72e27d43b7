"""Every private member of verl that ``verl_mgs`` overrides, calls or reads, checked before it is used.

:func:`check` runs when ``verl_mgs.engine``, ``verl_mgs.config`` or ``verl_mgs.data`` is imported. At
``import verl`` (the plugin entry point imports the package, which registers the engine) a mismatch is
recorded, not raised, so that a verl run that does not use MGS is never failed by it; building an MGS
config raises it (see ``verl_mgs._registry``).
"""

from __future__ import annotations

from mgs.integration import Seam, check_instance, check_upstream

VERL_VERSIONS = ("0.9.1", "0.9.2")
"""Supported verl: ``>=0.9.1,<0.9.2`` (the tested one; setup.cfg pins it)."""

_ENGINE = "verl.workers.engine.fsdp.transformer_impl:FSDPEngineWithLMHead"

SEAMS = (
    Seam(f"{_ENGINE}.__init__", "call", ("model_config", "engine_config", "optimizer_config", "checkpoint_config")),
    Seam(f"{_ENGINE}.forward_backward_batch", "override", ("data", "loss_function", "forward_only")),
    Seam(f"{_ENGINE}.initialize", "override", ()),
    Seam(f"{_ENGINE}.save_checkpoint", "override",
         ("local_path", "hdfs_path", "global_step", "max_ckpt_to_keep", "kwargs")),
    Seam(f"{_ENGINE}.load_checkpoint", "override", ("local_path", "hdfs_path", "del_local_after_load", "kwargs")),
    Seam(f"{_ENGINE}.forward_step", "call", ("micro_batch", "loss_function", "forward_only")),
    Seam(f"{_ENGINE}._gradient_sync_context", "call", ("is_last_micro_batch",)),
    Seam(f"{_ENGINE}.get_data_parallel_group", "call", ()),
    Seam(f"{_ENGINE}.get_data_parallel_size", "call", ()),
    Seam("verl.workers.engine.utils:prepare_micro_batches", "call",
         ("data", "dp_group", "num_batches_divided_by", "same_micro_num_in_dp", "min_num_micro_batch",
          "use_dynamic_bsz_balance")),
    Seam("verl.workers.engine.utils:postprocess_batch_func", "call", ("output_lst", "indices", "data")),
    Seam("verl.workers.engine.base:EngineRegistry._engines", "read"),
    Seam("verl.workers.engine.base:EngineRegistry.register", "call", ("model_type", "backend", "device", "vendor")),
    Seam("verl.workers.engine.base:EngineRegistry.get_engine_cls", "call", ("model_type", "backend")),
    Seam("verl.utils.dataset.rl_dataset:RLHFDataset._read_files_and_tokenize", "override", ()),
    Seam("verl.models.transformers.monkey_patch:is_trl_available", "override", ()),
    Seam("verl.workers.config:FSDPEngineConfig", "read"),
)

DRIVER_SEAMS = (
    # normalize_advantage_by_domain (verl_mgs._driver): the driver's advantage computation, wrapped; the legacy
    # trainer's fit() calls it by its module-global name. Checked by check_driver(), where it is wrapped (the driver
    # process has the module loaded; workers never import it for this).
    Seam("verl.trainer.ppo.ray_trainer:compute_advantage", "override",
         ("data", "adv_estimator", "gamma", "lam", "num_repeat", "norm_adv_by_std_in_grpo", "config")),
)

ENGINE_ATTRIBUTES = ("engine_config", "module", "ulysses_sequence_parallel_size")
"""Attributes of a built verl FSDP engine that the MGS engine reads."""

DATASET_ATTRIBUTES = ("config", "dataframe", "original_data_files")
"""Attributes of ``RLHFDataset`` that ``MixtureDataset`` reads or replaces (after ``_read_files_and_tokenize``)."""


def check() -> None:
    """Check the installed verl against :data:`SEAMS` (raises ``UpstreamMismatchError``)."""
    check_upstream("verl", *VERL_VERSIONS, SEAMS, adapter="verl_mgs")


def check_driver() -> None:
    """Check the driver-side seams of :data:`DRIVER_SEAMS` (raises ``UpstreamMismatchError``)."""
    check_upstream("verl", *VERL_VERSIONS, DRIVER_SEAMS, adapter="verl_mgs")


def check_built(obj: object, attributes: tuple[str, ...]) -> None:
    check_instance(obj, attributes, adapter="verl_mgs", package="verl")
