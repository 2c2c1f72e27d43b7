"""Deterministic multi-domain mixing: the same per-domain row counts in every batch.

A weighted random sampler (the research code's ``WeightedRandomSampler``) only gets the
proportions right on average. Here, every consecutive block of ``batch_size`` rows holds exactly
``counts[d]`` rows of each domain ``d``:

* **Counts** (largest remainder): the quota ``q_d = p_d · batch_size`` gives ``floor(q_d)`` rows
  to ``d``; the ``batch_size − Σ_d floor(q_d)`` rows left go one each to the domains with the
  largest remainders ``q_d − floor(q_d)``; ties go to the larger proportion, then to the name that
  sorts first. So ``Σ_d counts[d] = batch_size`` and ``|counts[d] − q_d| < 1``. Quotas and
  remainders are rounded to 9 decimals, so float noise (``5.6 − 5 = 0.5999999999999996``) never
  decides a tie.
* **Draws**: the ``n``-th row ever drawn from domain ``d`` (of size ``N_d``) is
  ``perm(seed, d, n // N_d)[n % N_d]``: a permutation per (seed, domain, epoch), walked without
  replacement. Batch ``i`` takes draws ``i·counts[d] … (i+1)·counts[d] − 1`` of each domain, so
  any batch is computed directly from its index (resuming needs no replay).
* **Order in a batch**: shuffled by a generator seeded by (seed, batch index), or, with
  ``group_by_domain=True``, the domains one after the other in sorted name order.
* **Stopping**: ``"first_exhausted"`` never repeats a row: at most ``min_d floor(N_d / counts[d])``
  batches. ``"cycle"`` starts a domain's next epoch (a new permutation) when it runs out; by
  default it runs until every row of every domain has been used at least once,
  ``max_d ceil(N_d / counts[d])`` batches. A batch that straddles an epoch boundary of a domain
  may hold one of its rows twice (always, if ``counts[d] > N_d``).

Randomness comes only from :class:`random.Random` seeded by a hash of the key, through its
``random()`` method, whose sequence Python promises to keep across versions; nothing touches the
global random generators.

Proportions must sum to 1 (within 1e-6): an error, not a silent normalisation, so that a typo
such as ``{"math": 0.7, "chat": 0.7}`` cannot pass. A domain whose proportion is 0 is never drawn.

The plan holds ``(domain, row)`` pairs only, and this module needs nothing but the standard library: the
mixed ``datasets.Dataset`` for TRL is :func:`trl_mgs.data.mixture_dataset` (or
:func:`trl_mgs.data.interleave_domains`), and verl reorders its own dataset with
:class:`verl_mgs.data.MixtureDataset`. What keeps the counts exact downstream is that the trainer reads
the rows in order, in blocks of ``batch_size`` unique prompts: see :func:`trl_mgs.data.check_trl_compatible`
and ``docs/data.md`` (verl).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass

STOPPING = ("first_exhausted", "cycle")


def _rng(seed: int, *key: object) -> random.Random:
    digest = hashlib.blake2b(repr((seed, *key)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def _shuffle(items: list, rng: random.Random) -> None:
    # Fisher-Yates on rng.random(): random.shuffle's algorithm is not promised stable across Pythons.
    for i in range(len(items) - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        items[i], items[j] = items[j], items[i]


def _permutation(seed: int, domain: str, epoch: int, size: int) -> list[int]:
    order = list(range(size))
    _shuffle(order, _rng(seed, "domain", domain, epoch))
    return order


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_proportions(proportions: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(proportions, Mapping) or not proportions:
        raise ValueError(f"proportions must be a non-empty mapping domain -> proportion; got {proportions!r}.")
    out = {}
    for name, p in proportions.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"every domain must be a non-empty string; got {name!r} in proportions.")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
            raise ValueError(f"proportions[{name!r}] = {p!r} is not a finite number.")
        if p < 0:
            raise ValueError(f"proportions[{name!r}] = {p!r} is negative; proportions must be >= 0.")
        out[name] = float(p)
    total = sum(out.values())
    if total == 0:
        raise ValueError(f"proportions are all zero: {out}; give at least one domain a positive proportion.")
    if abs(total - 1) > 1e-6:
        raise ValueError(
            f"proportions sum to {total:g}, not 1: {out}. They are fractions of each batch; "
            f"for relative weights, divide each by their sum ({total:g})."
        )
    return out


def batch_counts(proportions: Mapping[str, float], batch_size: int) -> dict[str, int]:
    """Rows of each domain per batch, by largest remainder (see the module docstring); sorted by domain.

    Raises ``ValueError`` if a domain with a positive proportion would get no row.
    """
    props = _check_proportions(proportions)
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}.")
    total = sum(props.values())
    quotas = {d: round(p / total * batch_size, 9) for d, p in props.items()}
    counts = {d: math.floor(q) for d, q in quotas.items()}
    left = batch_size - sum(counts.values())
    remainders = {d: round(quotas[d] - counts[d], 9) for d in props}  # 5.6 - 5 = 0.5999999999999996
    ranked = sorted((d for d in props if props[d] > 0), key=lambda d: (-remainders[d], -props[d], d))
    for d in ranked[:left]:
        counts[d] += 1
    for d in sorted(props):
        if props[d] > 0 and counts[d] == 0:
            raise ValueError(
                f"domain {d!r} (proportion {props[d]:g}) gets 0 of batch_size={batch_size} rows per batch "
                f"(counts {dict(sorted(counts.items()))}); use batch_size >= {math.ceil(1 / props[d])} "
                f"or drop the domain."
            )
    return dict(sorted(counts.items()))


def _draw_batch(seed: int, index: int, domains: Sequence[str], sizes: Sequence[int], starts: Sequence[int],
                counts: Sequence[int], group_by_domain: bool, cache: dict[str, tuple[int, list[int]]]
                ) -> list[tuple[str, int]]:
    """Batch ``index``: ``counts[d]`` rows of each domain from its ``starts[d]``-th draw on (the ``n``-th draw of domain
    ``d`` is ``perm(seed, d, n // N_d)[n % N_d]``), shuffled by (seed, index) unless ``group_by_domain``.
    ``cache``: domain -> (epoch, its permutation); draws only move forward, so one epoch per domain is kept."""
    rows = []
    for domain, size, start, count in zip(domains, sizes, starts, counts):
        for n in range(start, start + count):
            epoch, position = divmod(n, size)
            if cache.get(domain, (None,))[0] != epoch:
                cache[domain] = (epoch, _permutation(seed, domain, epoch, size))
            rows.append((domain, cache[domain][1][position]))
    if not group_by_domain:
        _shuffle(rows, _rng(seed, "batch", index))
    return rows


def _domain_sizes(sizes: Mapping[str, int | Sized], domains: Sequence[str]) -> list[int]:
    """Each domain's row count, from a count or a dataset's length; a type error or an empty domain is refused."""
    lengths = []
    for d in domains:
        if not (_is_int(sizes[d]) or isinstance(sizes[d], Sized)):
            raise TypeError(f"domain {d!r}: expected a row count or a dataset, got {type(sizes[d]).__name__}.")
        size = sizes[d] if _is_int(sizes[d]) else len(sizes[d])
        if size < 1:
            raise ValueError(f"domain {d!r} has no rows; remove it or give it data.")
        lengths.append(size)
    return lengths


def _check_stream_options(stopping: object, seed: object) -> None:
    if not isinstance(stopping, str) or stopping not in STOPPING:
        raise ValueError(f"stopping={stopping!r} is not supported; choose one of {', '.join(map(repr, STOPPING))}.")
    if not _is_int(seed):
        raise TypeError(f"seed must be an integer; got {seed!r}.")


@dataclass(frozen=True)
class MixturePlan:
    """Which source row fills each position of the mixed stream. Build it with :func:`plan_mixture`.

    Row ``k`` of the stream is ``rows()[k]``, a ``(domain, index into that domain's rows)`` pair;
    batch ``i`` is rows ``i·batch_size … (i+1)·batch_size − 1``. A plan holds no data: save the
    arguments of :func:`plan_mixture` and rebuild it to resume.
    """

    domains: tuple[str, ...]  # sorted
    sizes: tuple[int, ...]  # rows available per domain
    counts: tuple[int, ...]  # rows per batch per domain; sums to batch_size
    batch_size: int
    num_batches: int
    seed: int
    stopping: str
    group_by_domain: bool

    @property
    def num_rows(self) -> int:
        return self.num_batches * self.batch_size

    def batch(self, index: int) -> list[tuple[str, int]]:
        """The ``batch_size`` ``(domain, row)`` pairs of batch ``index``, computed from the index alone."""
        if not _is_int(index) or not 0 <= index < self.num_batches:
            raise IndexError(f"batch index {index!r} is out of range for a plan of {self.num_batches} batches.")
        return self._batch(index, {})

    def _batch(self, index: int, cache: dict[str, tuple[int, list[int]]]) -> list[tuple[str, int]]:
        return _draw_batch(self.seed, index, self.domains, self.sizes, [index * c for c in self.counts], self.counts,
                           self.group_by_domain, cache)

    def rows(self, start_batch: int = 0) -> Iterator[tuple[str, int]]:
        """Every ``(domain, row)`` pair from batch ``start_batch`` on: a resumed run's exact continuation."""
        if not _is_int(start_batch) or not 0 <= start_batch <= self.num_batches:
            raise IndexError(f"start_batch={start_batch!r} is out of range for a plan of {self.num_batches} batches.")
        cache: dict[str, tuple[int, list[int]]] = {}
        for i in range(start_batch, self.num_batches):
            yield from self._batch(i, cache)


def plan_mixture(
    sizes: Mapping[str, int | Sized],
    proportions: Mapping[str, float],
    batch_size: int,
    *,
    seed: int = 0,
    num_batches: int | None = None,
    stopping: str = "first_exhausted",
    group_by_domain: bool = False,
) -> MixturePlan:
    """Plan a stream whose every block of ``batch_size`` rows has the same per-domain counts.

    Args:
        sizes: per domain, its number of rows, or anything with a length (its dataset).
        proportions: per domain, its fraction of each batch; the same domains as ``sizes``, summing to 1.
        batch_size: rows per batch. For TRL, the unique prompts per generation batch
            (:func:`trl_mgs.data.check_trl_compatible`); for verl, ``data.gen_batch_size`` or ``data.train_batch_size``.
        seed: seeds every permutation (per domain and epoch) and every in-batch order (per batch).
        num_batches: how many batches; ``None`` takes the most ``"first_exhausted"`` allows, or, with
            ``"cycle"``, just enough for every row to be used once.
        stopping: ``"first_exhausted"`` (no row repeats; more batches than the smallest domain
            allows is an error) or ``"cycle"`` (a domain that runs out starts a new permutation).
        group_by_domain: lay each batch out domain after domain instead of shuffling it.
    """
    _check_stream_options(stopping, seed)
    _check_proportions(proportions)
    if not isinstance(sizes, Mapping):
        raise TypeError(f"sizes must be a mapping domain -> rows or dataset; got {type(sizes).__name__}.")
    missing, unknown = sorted(set(sizes) - set(proportions)), sorted(set(proportions) - set(sizes))
    if missing or unknown:
        raise ValueError(
            f"datasets and proportions must name the same domains: no proportion for {missing}, "
            f"no dataset for {unknown}."
        )
    counts = batch_counts(proportions, batch_size)
    domains = tuple(counts)
    lengths = _domain_sizes(sizes, domains)
    active = [(d, n, c) for d, n, c in zip(domains, lengths, counts.values()) if c > 0]
    available = min(n // c for _, n, c in active)
    if num_batches is None:
        num_batches = available if stopping == "first_exhausted" else max(-(-n // c) for _, n, c in active)
    elif not _is_int(num_batches) or num_batches < 1:
        raise ValueError(f"num_batches must be an integer >= 1 or None; got {num_batches!r}.")
    if stopping == "first_exhausted" and num_batches > available:
        d, n, c = min(active, key=lambda a: (a[1] // a[2], a[0]))
        raise ValueError(
            f"domain {d!r} has {n} rows, enough for {n // c} batches of {c} of its rows, "
            f"fewer than num_batches={num_batches}; use stopping='cycle' to reuse rows, or a smaller num_batches."
        )
    return MixturePlan(
        domains=domains,
        sizes=tuple(lengths),
        counts=tuple(counts.values()),
        batch_size=batch_size,
        num_batches=num_batches,
        seed=seed,
        stopping=stopping,
        group_by_domain=bool(group_by_domain),
    )
