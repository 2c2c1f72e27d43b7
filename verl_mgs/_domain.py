"""A row's domain from a field name or dotted path (``"data_source"``, ``"extra_info.domain"``)."""

from __future__ import annotations

from typing import Any


def split_key(key: str) -> tuple[str, list[str]]:
    """``"a.b.c"`` → ``("a", ["b", "c"])``: the batch field, then keys into each row's value of it."""
    head, _, rest = key.partition(".")
    return head, rest.split(".") if rest else []


def domain_of(value: Any, path: list[str]) -> str:
    """``value[path[0]][path[1]]…`` as a string (``value`` itself for an empty path)."""
    for part in path:
        value = value[part]
    return str(value)
