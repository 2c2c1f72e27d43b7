"""Registering :class:`verl_mgs.engine.MGSFSDPEngine` in verl's ``EngineRegistry``: one explicit step.

It runs when the ``verl_mgs`` package is imported: by verl's ``verl.plugins`` entry point at ``import
verl`` (every process), by ``actor_rollout_ref.model.external_lib=verl_mgs``, or by hydra importing
``verl_mgs.config`` for ``fsdp_config._target_``. At that point a failure (another plugin holds the
keys, an unsupported verl) must not fail a verl run that does not use MGS, so it is recorded, not
raised; building an :class:`~verl_mgs.config.MGSFSDPEngineConfig` then raises it (:func:`require`), so
an MGS run never silently gets the stock engine.
"""

from __future__ import annotations

import importlib.util
import os

REGISTRY_KEYS = (("cuda", "nvidia"), ("cuda", "amd"), ("npu", "huawei"))
"""verl 0.9.1's platform (device, vendor) keys; the current process's own key is registered as well."""

_problem: str | None = None


def current_key() -> tuple[str, str]:
    """The ``(device, vendor)`` key verl's ``EngineRegistry.get_engine_cls`` looks up first in this process."""
    from verl.utils.device import get_device_name, get_vendor

    return (os.getenv("VERL_ENGINE_DEVICE") or get_device_name(), os.getenv("VERL_ENGINE_VENDOR") or get_vendor())


def register() -> None:
    """Register the MGS engine for verl's fsdp/fsdp2 language-model engines (idempotent).

    The vendor-specific keys are looked up before verl's own device-only keys (``EngineRegistry.get_engine_cls``),
    so this overrides the stock engine without touching it; for a plain ``FSDPEngineConfig`` the MGS engine class
    builds verl's own engine instead (``MGSFSDPEngine.__new__``).

    Raises:
        RuntimeError: another engine is registered under one of the keys (another plugin).
        UpstreamMismatchError: the installed verl is not the supported one.
    """
    from verl.workers.engine.base import EngineRegistry

    from verl_mgs.engine import MGSFSDPEngine

    keys = list(dict.fromkeys([*REGISTRY_KEYS, current_key()]))
    for backend in ("fsdp", "fsdp2"):
        registry = EngineRegistry._engines.get("language_model", {}).get(backend, {})
        taken = {key: registry[key] for key in keys if registry.get(key) not in (None, MGSFSDPEngine)}
        if taken:
            holders = ", ".join(f"{key}: {cls.__module__}.{cls.__name__}" for key, cls in taken.items())
            raise RuntimeError(f"verl_mgs cannot register its engine for {backend}: {holders} registered there "
                               "already (another plugin?).")
        for device, vendor in keys:
            if registry.get((device, vendor)) is None:
                EngineRegistry.register(model_type="language_model", backend=backend, device=device, vendor=vendor)(
                    MGSFSDPEngine
                )


def register_quietly() -> None:
    """:func:`register`, recording instead of raising any failure (see the module docstring)."""
    global _problem
    if importlib.util.find_spec("verl") is None:
        return
    try:
        register()
        _problem = None
    except Exception as error:  # noqa: BLE001 - recorded and raised by require() when MGS is used
        _problem = f"{type(error).__name__}: {error}"


def require() -> None:
    """Raise unless verl will build the MGS engine for an fsdp/fsdp2 actor in this process."""
    from verl.workers.engine.base import EngineRegistry

    from verl_mgs.engine import MGSFSDPEngine

    if _problem is not None:
        raise RuntimeError(f"verl_mgs could not register its surgery engine, so verl would train without surgery: "
                           f"{_problem}")
    for backend in ("fsdp", "fsdp2"):
        found = EngineRegistry.get_engine_cls("language_model", backend)
        if found is not MGSFSDPEngine:
            raise RuntimeError(
                f"verl would build {found.__module__}.{found.__name__} for the {backend} actor on {current_key()}, not "
                "verl_mgs's surgery engine: verl_mgs was imported on another platform setting. Import verl_mgs in "
                "this process first (actor_rollout_ref.model.external_lib=verl_mgs)."
            )
