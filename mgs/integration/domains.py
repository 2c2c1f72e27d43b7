"""``DomainIndex``: a row's domain, read one way in every adapter, with one wording for every domain error.

A domain key is a field name (``"domain"``, ``"data_source"``) or a dotted path into a per-row dict
(``"extra_info.domain"``: field ``extra_info``, then its key ``domain``). The TRL trainer (dataset
column), the verl engine (non-tensor batch field), the verl mixture dataset and the recipes' reward
function all read domains through this class, so they cannot disagree about a row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mgs._options import validate_domains


class DomainIndex:
    """Reads rows' domains from ``key`` and maps them to their index in ``domains``.

    Args:
        key: the field holding each row's domain, or a dotted path into a per-row dict.
        domains: the ordered domain names, or ``None`` to take them from the data (:meth:`discover`).
        key_setting: how error messages name the setting that holds ``key`` (``"MGSGRPOConfig.domain_column"``).
        domains_setting: how they name the setting that holds the list (``"MGSGRPOConfig.domains"``).

    Raises:
        ValueError: ``key`` is empty or ``domains`` is not a list of unique non-empty names.
    """

    def __init__(self, key: str, domains: Sequence[str] | None = None, *, key_setting: str = "the domain key",
                 domains_setting: str = "the domain list") -> None:
        if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
            raise ValueError(f"{key_setting} must be a column name or a dotted path such as 'extra_info.domain'; "
                             f"got {key!r}.")
        self.key = key
        self.where = key_setting
        self.domains_setting = domains_setting
        self.field, _, rest = key.partition(".")
        self.path: tuple[str, ...] = tuple(rest.split(".")) if rest else ()
        self.domains: tuple[str, ...] | None = validate_domains(domains)

    def __repr__(self) -> str:
        return f"DomainIndex(key={self.key!r}, domains={self.domains!r})"

    # ------------------------------------------------------------------ reading
    def _value(self, value: Any, row: object) -> Any:
        for part in self.path:
            if not isinstance(value, Mapping) or part not in value:
                shown = sorted(value) if isinstance(value, Mapping) else type(value).__name__
                raise KeyError(f"{self.where}={self.key!r}: a row's {self.field!r} has no key {part!r} "
                               f"(it holds {shown}); row {row}.")
            value = value[part]
        return value

    def _names(self, values: list[Any]) -> list[str]:
        """``values`` as domain names, or one error naming every kind of bad value and what to do."""
        bad = [(i, v) for i, v in enumerate(values) if not isinstance(v, str) or not v]
        if not bad:
            return [str(v) for v in values]  # numpy.str_ from object arrays becomes a plain str
        shown = ", ".join(f"row {i}: {v!r}" for i, v in bad[:5]) + (" ..." if len(bad) > 5 else "")
        if all(v is None or (isinstance(v, str) and not v) for _, v in bad):
            raise ValueError(f"{self.where}={self.key!r}: {len(bad)} of {len(values)} rows have no domain (None or "
                             f"empty): {shown}; give every row its domain name, or filter those rows out.")
        raise ValueError(
            f"{self.where}={self.key!r}: domain names are non-empty strings, but {len(bad)} of {len(values)} rows hold "
            f"other values ({shown}); cast the column to strings. A datasets ClassLabel column holds integer ids: "
            "map them to their names first, e.g. dataset.map(lambda r: {c: names[r[c]]}) with "
            "names = dataset.features[c].names, then cast the column to Value('string')."
        )

    def missing_field(self, fields: Iterable[str], error_type: type[Exception] = KeyError) -> Exception:
        """The error (to raise) for data whose fields (columns) lack this key's field."""
        return error_type(f"{self.where}={self.key!r}: the data has no domain column {self.field!r}; its columns are "
                        f"{[str(f) for f in fields]}.")

    def of_row(self, row: Mapping[str, Any]) -> str:
        """The domain of one row (a mapping of field → value)."""
        return self.of_rows([row])[0]

    def of_rows(self, rows: Iterable[Mapping[str, Any]]) -> list[str]:
        """The domain of each row."""
        values = []
        for row in rows:
            if self.field not in row:
                raise self.missing_field(row)
            values.append(self._value(row[self.field], f"with fields {sorted(row)}"))
        return self._names(values)

    def of_values(self, values: Iterable[Any]) -> list[str]:
        """The domain of each row, from the values of this key's field (a column)."""
        return self._names([self._value(value, f"{i}") for i, value in enumerate(values)])

    # ------------------------------------------------------------------ checking
    def discover(self, labels: Iterable[str]) -> tuple[str, ...]:
        """The domain list: the configured one after checking ``labels`` against it, or the sorted distinct
        ``labels`` when none is configured."""
        labels = list(labels)
        if self.domains is None:
            return validate_domains(sorted(set(labels))) if labels else ()
        self.check(labels)
        return self.domains

    def check(self, labels: Iterable[str], domains: Sequence[str] | None = None) -> None:
        """Raise ``ValueError`` naming the labels that ``domains`` (default: the configured list) does not list."""
        known = self.domains if domains is None else tuple(domains)
        if known is None:
            return
        unknown = sorted(set(labels) - set(known))
        if unknown:
            raise ValueError(f"the data has domains {unknown} that {self.domains_setting} {list(known)} does not "
                             f"list (domains read from {self.key!r}); add them there or filter the data.")

    def ids(self, labels: Iterable[str], domains: Sequence[str] | None = None) -> list[int]:
        """Each label's index in ``domains`` (default: the configured list), after :meth:`check`."""
        known = tuple(self.domains if domains is None else domains)
        labels = list(labels)
        self.check(labels, known)
        position = {d: i for i, d in enumerate(known)}
        return [position[label] for label in labels]
