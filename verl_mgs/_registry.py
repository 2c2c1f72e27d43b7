"""Registering :class:`verl_mgs.engine.MGSFSDPEngine` in verl's ``EngineRegistry``: one explicit step.

It runs when the ``verl_mgs`` package is imported: by verl's ``verl.plugins`` entry point at ``import
verl`` (every process), by ``actor_rollout_ref.model.external_lib=verl_mgs``, or by hydra importing
``verl_mgs.config`` for ``fsdp_config._target_``. It takes only the key verl looks up in this process
(its platform's ``(device, vendor)``), so other plugins keep every other key. A failure there (another
plugin holds the key, an unsupported verl) must not fail a verl run that does not use MGS, so it is
recorded, not raised; building an :class:`~verl_mgs.config.MGSFSDPEngineConfig` tries once more and
then raises it (:func:`require`), so an MGS run never silently gets the stock engine. For a plain
``FSDPEngineConfig`` the registered class builds verl's own engine (``MGSFSDPEngine.__new__``).
"""

from __future__ import annotations

import importlib.util
import os

_problem: str | None = None


def current_key() -> tuple[str, str]:
    """The ``(device, vendor)`` key verl's ``EngineRegistry.get_engine_cls`` looks up first in this process."""
    from verl.utils.device import get_device_name, get_vendor

    return (os.getenv("VERL_ENGINE_DEVICE") or get_device_name(), os.getenv("VERL_ENGINE_VENDOR") or get_vendor())


def register() -> None:
    """Register the MGS engine for verl's fsdp/fsdp2 language-model engines under this process's key (idempotent).

    The vendor-specific key is looked up before verl's own device-only keys (``EngineRegistry.get_engine_cls``),
    so this overrides the stock engine without touching it.

    Raises:
        RuntimeError: another engine is registered under the key (another plugin).
        UpstreamMismatchError: the installed verl is not the supported one.
    """
    from verl.workers.engine.base import EngineRegistry

    from verl_mgs.engine import MGSFSDPEngine

    device, vendor = key = current_key()
    for backend in ("fsdp", "fsdp2"):
        holder = EngineRegistry._engines.get("language_model", {}).get(backend, {}).get(key)
        if holder is MGSFSDPEngine:
            continue
        if holder is not None:
            raise RuntimeError(f"verl_mgs cannot register its engine for {backend} {key}: "
                               f"{holder.__module__}.{holder.__name__} is registered there already (another plugin?).")
        EngineRegistry.register(model_type="language_model", backend=backend, device=device, vendor=vendor)(MGSFSDPEngine)


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
    """Raise unless verl will build the MGS engine for an fsdp/fsdp2 actor in this process (after one more
    :func:`register_quietly` if the import-time registration failed or another key is looked up now)."""
    from verl.workers.engine.base import EngineRegistry

    from verl_mgs.engine import MGSFSDPEngine

    if _problem is not None or any(EngineRegistry.get_engine_cls("language_model", b) is not MGSFSDPEngine
                                   for b in ("fsdp", "fsdp2")):
        register_quietly()
    if _problem is not None:
        raise RuntimeError(f"verl_mgs could not register its surgery engine, so verl would train without surgery: "
                           f"{_problem}")
    for backend in ("fsdp", "fsdp2"):
        found = EngineRegistry.get_engine_cls("language_model", backend)
        if found is not MGSFSDPEngine:
            raise RuntimeError(
                f"verl would build {found.__module__}.{found.__name__} for the {backend} actor on {current_key()}, not "
                "verl_mgs's surgery engine."
            )
