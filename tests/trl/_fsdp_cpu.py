"""Test-only shim: let accelerate take its FSDP2 path on a CPU-only machine.

accelerate keys FSDP on an accelerator: on CPU, ``AcceleratorState`` builds ``MULTI_CPU`` (DDP) even when it is
handed a ``FullyShardedDataParallelPlugin`` (accelerate/state.py lists FSDP only under the ``MULTI_GPU``-like
types). This shim changes exactly that decision, after accelerate made it: a CPU state that was given an FSDP plugin
becomes ``DistributedType.FSDP`` with that plugin, as on GPUs. Everything after it is accelerate's own code
(``Accelerator.prepare`` → ``_prepare_fsdp2`` → ``fsdp2_prepare_model`` → ``fully_shard``), which
:func:`assert_prepared_by_accelerate` checks on the trained model.
"""

from __future__ import annotations

import functools

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

FSDP_CONFIG = {"version": 2, "reshard_after_forward": True, "state_dict_type": "SHARDED_STATE_DICT",
               "auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}
"""TRL's accelerate_configs/fsdp2.yaml as ``TrainingArguments.fsdp_config`` (sharded checkpoints, as at scale)."""

_calls: list[str] = []


def enable_fsdp2_on_cpu() -> None:
    """Patch ``AcceleratorState.__init__`` (once per process) so a CPU state with an FSDP plugin is FSDP."""
    if getattr(AcceleratorState.__init__, "_mgs_cpu_fsdp", False):
        return
    original = AcceleratorState.__init__

    @functools.wraps(original)
    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    init._mgs_cpu_fsdp = True
    AcceleratorState.__init__ = init

    import accelerate.accelerator as accelerator_module

    prepare = accelerator_module.fsdp2_prepare_model

    @functools.wraps(prepare)
    def counted(accelerator, model):  # only counts accelerate's own preparation; the call goes through unchanged
        _calls.append(type(model).__name__)
        return prepare(accelerator, model)

    accelerator_module.fsdp2_prepare_model = counted


def assert_prepared_by_accelerate(trainer) -> None:
    """The trained model was sharded by accelerate's ``fsdp2_prepare_model``: it is an ``FSDPModule``, so is every
    decoder layer (TRANSFORMER_BASED_WRAP) and the input embedding, and every parameter is a DTensor sharded on dim 0."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor, Shard

    model = trainer.model
    assert trainer.accelerator.is_fsdp2, trainer.accelerator.distributed_type
    assert _calls, "accelerate's fsdp2_prepare_model never ran"
    assert isinstance(model, FSDPModule), type(model)
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    assert layers and all(isinstance(m, FSDPModule) for m in layers)
    assert isinstance(model.get_input_embeddings(), FSDPModule)
    for name, p in model.named_parameters():
        assert isinstance(p, DTensor) and tuple(p.placements) == (Shard(0),), (name, type(p))
