"""The method registry: every name ``method=`` accepts, and the one place a ``method=`` value is validated.

A registered method is a :class:`MethodSpec`: its name, a factory building a fresh method object
(once per :class:`mgs.GradientSurgery`, so state is never shared between two runs) and what it
promises (:attr:`MethodSpec.projects`, :attr:`MethodSpec.host_sync`, :attr:`MethodSpec.extra`).
:func:`resolve_method` turns any accepted ``method=`` value (a registered name, a TorchJD
``Weighting`` instance, or a user callable) into a :class:`Method`, which the surgery calls the
same way whatever it wraps.

Adding a method: write ``mgs/methods/_mine.py`` with a callable meeting the contract of
:mod:`mgs.methods._base`, and call :func:`register_method` once (the built-ins are registered in
:mod:`mgs.methods`; a user's own method can be registered from anywhere before the surgery is built).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from mgs.methods._base import GramMethod, MethodOutput
from mgs.methods._torchjd import TorchJDMethod, is_torchjd_weighting


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        name: the name ``method=`` selects it by.
        factory: a zero-argument callable returning a fresh method object: a :class:`~mgs.methods.GramMethod`,
            with ``state_dict()``/``load_state_dict()`` when it keeps state. Called once per surgery.
        projects: the method reports which (group, i, j) it projected (:attr:`MethodOutput.projected`), so
            ``projection_frac`` is measured; otherwise that statistic is NaN.
        host_sync: the method synchronises with the host (TorchJD copies the Gram matrices to the CPU); without
            it, the method promises tensor ops only, and apply() stays sync-free.
        extra: the pip extra the method needs (``"torchjd"``), named when building it fails with ImportError.
    """

    name: str
    factory: Callable[[], GramMethod]
    projects: bool = False
    host_sync: bool = False
    extra: str | None = None


_REGISTRY: dict[str, MethodSpec] = {}

REGISTRY = MappingProxyType(_REGISTRY)
"""Read-only, live view of the registry: name → :class:`MethodSpec`, in registration order."""


def register_method(
    name: str,
    factory: Callable[[], GramMethod],
    *,
    projects: bool = False,
    host_sync: bool = False,
    extra: str | None = None,
) -> MethodSpec:
    """Make a method selectable by name in ``GradientSurgery(method=name)``, ``SurgeryOptions`` and the adapters.

    Args:
        name: the new name; must not be registered already (see :func:`unregister_method`).
        factory: zero-argument callable returning a fresh method object (a class, or ``lambda: my_function``
            for a stateless function). See :class:`MethodSpec`.
        projects, host_sync, extra: see :class:`MethodSpec`.

    Returns:
        The registered :class:`MethodSpec`.

    Raises:
        ValueError: ``name`` is already registered, or not a non-empty string.
        TypeError: ``factory`` is not callable, or a flag has the wrong type.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a method name is a non-empty string; got {name!r}.")
    if name in _REGISTRY:
        raise ValueError(f"method {name!r} is already registered; unregister_method({name!r}) first to replace it.")
    if not callable(factory):
        raise TypeError(f"factory for method {name!r} must be a zero-argument callable; got {factory!r}.")
    for flag, value in (("projects", projects), ("host_sync", host_sync)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be a bool; got {value!r}.")
    if extra is not None and not isinstance(extra, str):
        raise TypeError(f"extra must be a pip extra's name or None; got {extra!r}.")
    spec = MethodSpec(name, factory, projects=projects, host_sync=host_sync, extra=extra)
    _REGISTRY[name] = spec
    return spec


def unregister_method(name: str) -> MethodSpec:
    """Remove a registered method (surgeries already built with it keep working).

    Args:
        name: a registered name.

    Returns:
        The removed :class:`MethodSpec`.
    """
    return _REGISTRY.pop(method_spec(name).name)


def method_names() -> tuple[str, ...]:
    """Every name ``method=`` accepts now, in registration order (built-ins first)."""
    return tuple(_REGISTRY)


def _unknown(value: object) -> ValueError:
    return ValueError(f"method={value!r} is not supported; choose one of {', '.join(map(repr, _REGISTRY))}.")


def method_spec(name: str) -> MethodSpec:
    """The :class:`MethodSpec` registered as ``name``.

    Raises:
        ValueError: ``name`` is not registered; the message lists the registered names.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise _unknown(name)
    return _REGISTRY[name]


def validate_method(method: object) -> None:
    """Check a ``method=`` value without building it (TorchJD is not imported).

    Args:
        method: a registered name, a TorchJD ``Weighting`` instance or a callable
            ``(gram [M, K, K] float64, generator) -> weights [M, K]`` (or a :class:`MethodOutput`).

    Raises:
        ValueError: an unknown name; the message lists the registered ones.
        TypeError: neither a string nor a callable.
    """
    if isinstance(method, str):
        method_spec(method)
    elif not callable(method):
        raise TypeError(f"method must be one of {method_names()} or a callable; got {method!r}.")


def _build(spec: MethodSpec) -> GramMethod:
    try:
        return spec.factory()
    except ImportError as error:
        if spec.extra is None or f"mgs-rl[{spec.extra}]" in str(error):  # no extra, or its hint is there already
            raise
        raise ImportError(
            f"method {spec.name!r} needs the {spec.extra!r} extra: pip install 'mgs-rl[{spec.extra}]' ({error})"
        ) from error


def resolve_method(method: str | object) -> Method:
    """The :class:`Method` for a ``method=`` value, validated (see :func:`validate_method`).

    Args:
        method: a registered name (a fresh object from its factory), a TorchJD ``Weighting`` instance (copied
            per group; ``host_sync=True``), a user callable (used as is: ``projects=False``,
            ``host_sync=False``; it may have ``state_dict``/``load_state_dict``), or a :class:`Method`
            (returned as is).

    Returns:
        A :class:`Method` wrapping it.
    """
    if isinstance(method, Method):
        return method
    validate_method(method)
    if isinstance(method, str):
        spec = method_spec(method)
        return Method(_build(spec), spec.name, projects=spec.projects, host_sync=spec.host_sync)
    if is_torchjd_weighting(method):
        weighting = method
        torchjd = TorchJDMethod(lambda: copy.deepcopy(weighting))
        torchjd.name = type(method).__name__
        return Method(torchjd, repr(method), host_sync=True)
    return Method(method, getattr(method, "__name__", repr(method)))  # type: ignore[arg-type]


class Method:
    """A method ready to run: how the surgery calls every method, and reads and restores its state.

    Args:
        fn: the method object (see :mod:`mgs.methods._base`).
        name: its name in error messages.
        projects, host_sync: see :class:`MethodSpec`.

    Attributes:
        fn, name, projects, host_sync: as given.
    """

    def __init__(self, fn: GramMethod, name: str, *, projects: bool = False, host_sync: bool = False) -> None:
        self.fn = fn
        self.name = name
        self.projects = projects
        self.host_sync = host_sync

    def __call__(self, gram: torch.Tensor, generator: torch.Generator) -> MethodOutput:
        """Run the method and check its output's shapes (metadata only: no host sync).

        Args:
            gram: ``[M, K, K]`` Gram matrices.
            generator: the step's generator.

        Returns:
            The weights ``[M, K]`` and, for a method that projects, the ``[M, K, K]`` projection flags.

        Raises:
            ValueError: the method returned something else, or projections it was not registered to report.
        """
        out = self.fn(gram, generator)
        weights, projected = (out.weights, out.projected) if isinstance(out, MethodOutput) else (out, None)
        if not isinstance(weights, torch.Tensor) or weights.shape != gram.shape[:2]:
            raise ValueError(
                f"method {self.name!r} returned {getattr(weights, 'shape', type(weights))}; "
                f"expected weights of shape {tuple(gram.shape[:2])} (groups × domains)."
            )
        if self.projects and (
            not isinstance(projected, torch.Tensor) or projected.shape != gram.shape or projected.dtype != torch.bool
        ):
            raise ValueError(
                f"method {self.name!r} is registered with projects=True but returned projected="
                f"{getattr(projected, 'shape', projected)!r}; expected {tuple(gram.shape)} booleans."
            )
        if not self.projects and projected is not None:
            raise ValueError(
                f"method {self.name!r} returned projections but does not declare them; register it with "
                "mgs.methods.register_method(name, factory, projects=True)."
            )
        return MethodOutput(weights, projected)

    def state_dict(self) -> dict[str, Any]:
        """The method's state (``{}`` for a stateless method)."""
        state_dict = getattr(self.fn, "state_dict", None)
        return dict(state_dict()) if state_dict is not None else {}

    @property
    def stateful(self) -> bool:
        """Whether the method keeps state across steps (its :meth:`state_dict` is not empty)."""
        return bool(self.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Raises:
            ValueError: ``state`` is not empty but the method keeps no state.
        """
        load = getattr(self.fn, "load_state_dict", None)
        if load is None:
            if state:
                raise ValueError(f"method {self.name!r} keeps no state, but got state with keys {sorted(state)}.")
            return
        load(state)

    def __repr__(self) -> str:
        return f"Method({self.name!r}, projects={self.projects}, host_sync={self.host_sync})"
