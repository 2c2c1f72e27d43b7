"""Guards for the upstream code an adapter depends on beyond its public API.

An adapter that overrides or reads private members of TRL, transformers, verl or torch lists them as
:class:`Seam` objects in one module and calls :func:`check_upstream` at import: the installed version
must lie in the supported range, every member must exist, and every overridden or called method must
have the parameters the adapter was written for. A mismatch raises :class:`UpstreamMismatchError`
naming the member, the installed version and the supported versions, instead of binding arguments
silently wrong. Instance attributes, which exist only once an object is built, are checked with
:func:`check_instance`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mgs._errors import UpstreamMismatchError


@dataclass(frozen=True)
class Seam:
    """One upstream member an adapter depends on.

    Attributes:
        target: ``"module:Qualified.name"`` (e.g. ``"trl:GRPOTrainer._prepare_inputs"``).
        use: ``"override"`` (the adapter subclasses and replaces it), ``"call"`` or ``"read"``.
        parameters: for a function or method, its parameter names in order (without ``self``) as the
            adapter expects them; ``None`` checks only that the member exists.
    """

    target: str
    use: str
    parameters: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if ":" not in self.target:
            raise ValueError(f"a seam target is 'module:Qualified.name'; got {self.target!r}.")
        if self.use not in ("override", "call", "read"):
            raise ValueError(f"a seam's use is 'override', 'call' or 'read'; got {self.use!r}.")


def parse_version(version: str) -> tuple[int, ...]:
    """``"2.13.0+cpu"`` → ``(2, 13, 0)``: the leading release numbers (pre-release tags are ignored)."""
    match = re.match(r"\d+(\.\d+)*", version.strip())
    if match is None:
        raise ValueError(f"cannot read the version {version!r}.")
    return tuple(int(part) for part in match.group(0).split("."))


def _in_range(version: tuple[int, ...], minimum: str, below: str | None) -> bool:
    width = max(len(version), 3)

    def pad(v: tuple[int, ...]) -> tuple[int, ...]:
        return v + (0,) * (width - len(v))

    return pad(version) >= pad(parse_version(minimum)) and (below is None or pad(version) < pad(parse_version(below)))


def supported_text(minimum: str, below: str | None) -> str:
    return f">={minimum}" + (f",<{below}" if below else "")


def _resolve(target: str) -> Any:
    module_name, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _parameters(func: Any) -> tuple[str, ...]:
    names = tuple(inspect.signature(func).parameters)
    return names[1:] if names and names[0] in ("self", "cls") else names


def check_upstream(package: str, minimum: str, below: str | None, seams: Sequence[Seam], *, adapter: str) -> str:
    """Check the installed ``package`` and every seam; return the installed version.

    Args:
        package: the distribution name (``"trl"``, ``"verl"``, ``"transformers"``, ``"torch"``).
        minimum: the lowest supported version (inclusive).
        below: the first unsupported version (exclusive), or ``None``.
        seams: the members to check.
        adapter: the adapter's name, for the message (``"trl_mgs"``).

    Raises:
        UpstreamMismatchError: the version is outside the range, a member is missing, or a method's
            parameters differ; the message names the member, the installed and the supported versions.
    """
    supported = supported_text(minimum, below)
    try:
        installed = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError as error:
        raise UpstreamMismatchError(f"{adapter} needs {package}{supported}, which is not installed.") from error
    if not _in_range(parse_version(installed), minimum, below):
        raise UpstreamMismatchError(
            f"{adapter} supports {package}{supported}; {package} {installed} is installed. Install a supported "
            f"version (pip install '{package}{supported}')."
        )
    for seam in seams:
        where = f"{adapter} {seam.use}s {seam.target} ({package} {installed} is installed; supported: {package}{supported})"
        try:
            member = _resolve(seam.target)
        except (ImportError, AttributeError) as error:
            raise UpstreamMismatchError(f"{where}, but it does not exist: {error}.") from error
        if seam.parameters is not None:
            found = _parameters(member)
            if found != seam.parameters:
                raise UpstreamMismatchError(
                    f"{where}, written for the parameters {seam.parameters}, but the installed one takes {found}."
                )
    return installed


def check_instance(obj: object, attributes: Sequence[str], *, adapter: str, package: str) -> None:
    """Check that ``obj`` (built by upstream code) has every attribute the adapter reads.

    Raises:
        UpstreamMismatchError: naming the missing attributes and the installed version of ``package``.
    """
    missing = [name for name in attributes if not hasattr(obj, name)]
    if missing:
        try:
            installed = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        raise UpstreamMismatchError(
            f"{adapter} reads {', '.join(missing)} of {type(obj).__name__}, which this {package} ({installed}) "
            "does not set; the adapter was written for another version."
        )
