"""Metric export: the surgery statistics as host floats in one copy, and the per-domain metric names.

``GradientSurgery.apply()`` returns tens of scalar tensors (docs/metrics.md). Converting them one by
one costs one device-to-host copy (and, on a GPU, one sync) each; :func:`scalar_metrics` stacks them
and copies once. The per-domain metrics adapters add are named by :func:`domain_metric`, so a TRL run
and a verl run log the same keys for the same quantity.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

PREFIX = "mgs/"
"""Every key the adapters log starts with it (verl's driver adds ``actor/``)."""

DOMAIN_METRICS: dict[str, str] = {
    "reward_mean": "reward/{domain}/mean",
    "reward_std": "reward/{domain}/std",
    "completion_length": "completion_length/{domain}",
    "loss": "loss/{domain}",
}
"""Per-domain metrics, by quantity → key pattern under :data:`PREFIX` (docs/metrics.md says who logs which)."""


def domain_metric(quantity: str, domain: str) -> str:
    """The logged key of a per-domain ``quantity`` (a key of :data:`DOMAIN_METRICS`) for ``domain``."""
    return PREFIX + DOMAIN_METRICS[quantity].format(domain=domain)


def scalar_metrics(stats: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``{"mgs/<key>": float}`` for every scalar statistic, with one stacked device-to-host copy.

    Non-scalar entries (``nonfinite_flags``) are left out; NaN values are kept (TRL's logger skips them,
    verl's adapter drops them).
    """
    scalars = {k: v for k, v in stats.items() if isinstance(v, torch.Tensor) and v.numel() == 1}
    if not scalars:
        return {}
    values = torch.stack([v.detach().reshape(()).to(torch.float64) for v in scalars.values()]).cpu().tolist()
    return {PREFIX + key: value for key, value in zip(scalars, values)}


def domain_moments(values: torch.Tensor, ids: torch.Tensor, num_domains: int) -> torch.Tensor:
    """``[3, K]`` float64: per domain, the row count, the sum and the sum of squares of ``values`` ``[N]``
    (``ids`` ``[N]``: each row's domain index). Sums over ranks (all-reduce SUM) stay moments."""
    values = values.detach().to(torch.float64).reshape(-1)
    ids = ids.to(values.device).reshape(-1)
    moments = torch.zeros(3, num_domains, dtype=torch.float64, device=values.device)
    moments[0].index_add_(0, ids, torch.ones_like(values))
    moments[1].index_add_(0, ids, values)
    moments[2].index_add_(0, ids, values * values)
    return moments


def domain_summary(moments: torch.Tensor, domains: list[str] | tuple[str, ...],
                   quantities: list[tuple[str, str | None]]) -> dict[str, float]:
    """Per-domain means (and sample standard deviations) of several quantities, with one device-to-host copy.

    Args:
        moments: ``[Q, 3, K]``, one :func:`domain_moments` per quantity.
        domains: the K domain names.
        quantities: per quantity, the :data:`DOMAIN_METRICS` name of its mean and of its standard deviation
            (``None``: not logged).

    Returns:
        logged key → value; NaN where a domain has no row (no second row, for a standard deviation).
    """
    count, total, squares = moments.detach().to("cpu", torch.float64).unbind(1)  # each [Q, K]
    average = total / count  # 0/0 = NaN: the domain is absent
    variance = ((squares - count * average * average) / (count - 1)).clamp(min=0)
    deviation = torch.where(count > 1, variance.sqrt(), torch.nan)
    out = {}
    for q, (mean, std) in enumerate(quantities):
        for i, name in enumerate(domains):
            out[domain_metric(mean, name)] = float(average[q, i])
            if std is not None:
                out[domain_metric(std, name)] = float(deviation[q, i])
    return out
