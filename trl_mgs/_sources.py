"""Where each rollout's domain comes from, decided from the config and the data before any model is loaded.

:func:`plan_domains` picks one :class:`DomainSource` (or none) from the trainer's arguments:

- ``"environment"``: ``MGSGRPOConfig.environment_domain_attribute`` is set: the attribute of each rollout's
  environment (TRL's ``environment_factory``), read once the rollout is scored; the list is ``domains``.
- ``"single"``: an environment that owns the data (``environment_factory`` without ``train_dataset``: TRL's
  placeholder prompts) and ``domains`` naming one domain: every rollout is that domain.
- ``"column"``: the dataset column (or dotted path) ``domain_column``; the list is ``domains``, or the training set's
  sorted distinct values. Eval sets are checked here too: one without the column evaluates without per-domain
  metrics, one with a domain outside the list is an error.
- none: ``surgery="none"`` with the default domain settings on data that carries no domain: the trainer is
  ``GRPOTrainer``.

Every other combination is an error that names the feature and what to set.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from datasets import Dataset, IterableDataset

from mgs.integration import DomainIndex
from trl_mgs.config import MGSGRPOConfig, mgs_fields

_STOCK_HINT = "or set surgery='none' to train as GRPOTrainer"


@dataclass(frozen=True)
class DomainSource:
    """How the trainer reads each rollout's domain (see the module docstring for the kinds)."""

    kind: str
    index: DomainIndex
    domains: tuple[str, ...]

    def labels(self, rows: Sequence[Mapping[str, Any]], environments: Sequence[object] | None, *,
               training: bool) -> list[str] | None:
        """Each rollout's domain name; ``None`` for eval rows without the domain column (no per-domain metrics)."""
        if self.kind == "single":
            return [self.domains[0]] * len(rows)
        if self.kind == "environment":
            return self._of_environments(environments, len(rows))
        if not training and rows and self.index.field not in rows[0]:
            return None
        return self.index.of_rows(rows)

    def ids(self, labels: Sequence[str]) -> list[int]:
        """Each label's index in :attr:`domains` (an unknown label is an error naming it and the list)."""
        return self.index.ids(labels, self.domains)

    def _of_environments(self, environments: Sequence[object] | None, n: int) -> list[str]:
        index = self.index
        if environments is None or len(environments) != n:
            found = "none" if environments is None else len(environments)
            raise RuntimeError(f"{index.where}={index.key!r}: TRL handed {found} environments for {n} rollouts; "
                               "the adapter was written for one environment per rollout (trl 1.16).")
        values = []
        for environment in environments:
            if not hasattr(environment, index.field):
                raise AttributeError(
                    f"{index.where}={index.key!r}: the environment {type(environment).__name__} has no attribute "
                    f"{index.field!r} once its rollout is scored; set it in reset() (self.{index.field} = the domain "
                    "name), or name the attribute that holds the domain."
                )
            values.append(getattr(environment, index.field))
        return index.of_values(values)


def trains_as_stock(config: MGSGRPOConfig) -> bool:
    """``surgery="none"``, no per-domain advantage normalisation and no domain setting changed: data without a domain column trains as ``GRPOTrainer``."""
    defaults = mgs_fields()
    return (config.surgery == "none" and config.domains is None and not config.normalize_advantage_by_domain
            and config.domain_column == defaults["domain_column"].default)


def plan_domains(config: MGSGRPOConfig, *, train_dataset: Any, eval_dataset: Any,
                 environment_factory: Any) -> DomainSource | None:
    """The domain source for these trainer arguments, or ``None`` to train as ``GRPOTrainer``.

    Raises:
        ValueError: no source fits (the message names the feature and the settings that fix it), or the data
            holds domains outside ``domains``.
    """
    column = config.domain_index()
    if config.environment_domain_attribute is not None:
        if environment_factory is None:
            raise ValueError(
                f"MGSGRPOConfig.environment_domain_attribute={config.environment_domain_attribute!r} reads each "
                "rollout's environment, but no environment_factory was passed: pass one, or unset "
                "environment_domain_attribute to read domains from the dataset (domain_column)."
            )
        return DomainSource("environment", config.environment_domain_index(), tuple(config.domains))
    if train_dataset is None:
        if environment_factory is None or isinstance(environment_factory, dict):
            return None  # GRPOTrainer refuses these itself: they need a train_dataset
        if config.domains is not None and len(config.domains) == 1:
            return DomainSource("single", column, tuple(config.domains))
        if trains_as_stock(config):
            return None
        listed = "" if config.domains is None else f" (MGSGRPOConfig.domains lists {list(config.domains)})"
        raise ValueError(
            "environment_factory without a train_dataset: the environment owns the data, and TRL's placeholder "
            f"prompts carry no domain column {column.field!r}{listed}. Set MGSGRPOConfig.environment_domain_attribute "
            "to the attribute your environment sets in reset() to name each rollout's domain (with "
            "MGSGRPOConfig.domains, the list of those names), set MGSGRPOConfig.domains to one name if the "
            f"environment is a single domain, {_STOCK_HINT}."
        )
    if not isinstance(train_dataset, (Dataset, IterableDataset)):  # GRPOTrainer's own check, before it loads models
        raise TypeError(f"`train_dataset` must be a `Dataset` or `IterableDataset`, got `{type(train_dataset).__name__}`.")
    names = train_dataset.column_names
    if names is None:  # a stream whose columns are unknown until read
        if column.domains is None:
            raise ValueError("MGSGRPOConfig.domains must be set when the training dataset has no column list "
                             "(e.g. an IterableDataset from a generator).")
        domains = column.domains
    elif column.field not in names:
        if trains_as_stock(config):
            return None
        hint = ("; with a dict environment_factory, domain_column='environment' makes each environment a domain"
                if isinstance(environment_factory, dict) else "")
        raise ValueError(f"{column.missing_field(names, ValueError)} Add the column, set MGSGRPOConfig.domain_column "
                         f"to the column that holds each prompt's domain{hint}, {_STOCK_HINT}.")
    else:
        domains = column.discover(column.of_values(train_dataset[column.field]))
    _check_eval_sets(column, domains, eval_dataset, configured=config.domains is not None)
    return DomainSource("column", column, tuple(domains))


def _check_eval_sets(column: DomainIndex, domains: Sequence[str], eval_dataset: Any, *, configured: bool) -> None:
    """Eval sets without the column evaluate without per-domain metrics (one warning); an eval set with a domain
    outside the list is an error. Streams are checked as they are read."""
    if eval_dataset is None:
        return
    sets = ([(f"eval_dataset[{name!r}]", data) for name, data in eval_dataset.items()]
            if isinstance(eval_dataset, Mapping) else [("eval_dataset", data) for data in (eval_dataset,)])
    without = []
    for label, data in sets:
        names = getattr(data, "column_names", None)
        if names is None:
            continue
        if column.field not in names:
            without.append(label)
            continue
        if not isinstance(data, Dataset):
            continue  # an IterableDataset: not read ahead
        unknown = sorted(set(column.of_values(data[column.field])) - set(domains))
        if unknown:
            where = "MGSGRPOConfig.domains" if configured else "the training set's domains"
            raise ValueError(
                f"{label} has domains {unknown} that {where} {list(domains)} do not include (read from "
                f"{column.key!r}); list every domain in MGSGRPOConfig.domains (a domain may have no training rows), "
                "or filter the eval set."
            )
    if without:
        verb, it = ("has", "it") if len(without) == 1 else ("have", "them")
        warnings.warn(
            f"{', '.join(without)} {verb} no domain column {column.field!r}: evaluate() runs on {it} as GRPOTrainer "
            "does, without the per-domain metrics (eval_mgs/reward/{domain}/mean, ...).", UserWarning, stacklevel=4,
        )
