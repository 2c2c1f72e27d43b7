"""Run verl 0.9.1's FSDP engine on CPU: a platform for verl's platform layer, and the engine lookup.

verl resolves its device through ``verl.plugin.platform.get_platform()`` (a process-wide singleton,
auto-detected on first use; without a GPU it falls back to the CUDA platform) and picks an engine
class from ``EngineRegistry`` by ``(device, vendor)``; the FSDP engine is registered for ``cuda``
and ``npu`` only. :func:`install` sets a CPU platform (device ``cpu``, so tensors, meshes and
autocast stay on the CPU, and the gloo backend) and asks the registry, through verl's own
``VERL_ENGINE_DEVICE`` / ``VERL_ENGINE_VENDOR`` overrides, for the engine an NVIDIA GPU box would
get, so an engine registered for ``("cuda", "nvidia")`` (a plugin's) wins as it would there. It also
turns off host-memory pinning in the CPU offload policy verl forces on forward-only engines.

Call :func:`install` before importing any verl module that reads the device at import time
(``verl.workers.engine.fsdp.transformer_impl`` does: ``device_name = get_device_name()``).
"""

from __future__ import annotations

import os
import types
from contextlib import contextmanager

import torch

_installed = False


def _cpu_device_module() -> types.SimpleNamespace:
    """The parts of ``torch.cuda`` verl calls on its training path, as CPU no-ops."""
    return types.SimpleNamespace(
        is_available=lambda: True,
        current_device=lambda: "cpu",
        device_count=lambda: 1,
        set_device=lambda *_: None,
        synchronize=lambda *_: None,
        empty_cache=lambda: None,
        manual_seed=torch.manual_seed,
        manual_seed_all=torch.manual_seed,
        max_memory_allocated=lambda *_: 0,
        max_memory_reserved=lambda *_: 0,
        memory_allocated=lambda *_: 0,
        memory_reserved=lambda *_: 0,
        reset_peak_memory_stats=lambda *_: None,
        mem_get_info=lambda *_: (0, 0),
        get_device_name=lambda *_: "CPU",
        get_rng_state=torch.get_rng_state,  # checkpoints save and restore the "device" RNG
        set_rng_state=torch.set_rng_state,
    )


def install() -> None:
    """Make verl run on the CPU with gloo (idempotent; process-wide)."""
    global _installed
    if _installed:
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    # verl imports every installed "verl.plugins" entry point at `import verl`; the tests decide what is imported
    os.environ.setdefault("VERL_USE_EXTERNAL_PLUGINS", "none")
    os.environ["VERL_ENGINE_DEVICE"] = "cuda"
    os.environ["VERL_ENGINE_VENDOR"] = "nvidia"

    from verl.plugin.platform import PlatformBase, set_platform

    class PlatformCPU(PlatformBase):
        device_module_ns = _cpu_device_module()

        device_name = property(lambda self: "cpu")
        vendor_name = property(lambda self: "cpu")
        device_module = property(lambda self: self.device_module_ns)

        def is_available(self) -> bool:
            return True

        def current_device(self):
            return "cpu"  # verl passes it to .to(...) and torch.device(...)

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index) -> None:
            pass

        def synchronize(self, device_index=None) -> None:
            pass

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            pass

        def empty_cache(self) -> None:
            pass

        def get_device_capability(self, device_index: int = 0):
            return None, None

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            return "CUDA_VISIBLE_DEVICES"

        @contextmanager
        def nvtx_range(self, msg: str):
            yield

        def profiler_start(self) -> None:
            pass

        def profiler_stop(self) -> None:
            pass

        def ray_resource_name(self) -> str:
            return "CPU"

        def ray_noset_envvars(self) -> list[str]:
            return []

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self):
            return None

    set_platform(PlatformCPU())

    # Forward-only engines (the reference model) get FSDP2's CPUOffloadPolicy(pin_memory=True)
    # (FSDPEngine's model build); pinning host memory needs an accelerator, so pin nothing here.
    from verl.workers.engine.fsdp import transformer_impl

    policy = transformer_impl.CPUOffloadPolicy

    def cpu_offload_policy(pin_memory: bool = True, **kwargs):
        return policy(pin_memory=False, **kwargs)

    transformer_impl.CPUOffloadPolicy = cpu_offload_policy
    _installed = True
