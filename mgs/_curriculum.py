"""Curricula: training in phases, each with its own domain proportions (sequential training, a final refresh).

A curriculum is a list of phases, each ``(proportions, num_batches)``: batch ``i`` of phase ``k`` holds exactly
:func:`mgs.batch_counts` ``(proportions_k, batch_size)`` rows of each domain, as in :mod:`mgs._mixing`. Draws
continue across phases: the ``n``-th row ever drawn from domain ``d`` is ``perm(seed, d, n // N_d)[n % N_d]``, the
same permutations as :func:`mgs.plan_mixture`, so a phase that returns to a domain (a refresh) takes rows that
domain has not used yet, until its epoch runs out. A one-phase curriculum is exactly :func:`mgs.plan_mixture`'s
plan with ``stopping="cycle"``.

Deterministic and resumable: batch ``b`` (counted over the whole curriculum) is computed from its index alone
(:meth:`CurriculumPlan.batch`, :meth:`CurriculumPlan.rows` with ``start_batch``); rebuild the plan from the same
arguments to resume. In-batch order is shuffled by a generator seeded by (seed, global batch index), or laid out
domain by domain (``group_by_domain``).

:func:`sequential_phases` builds the usual sequential curriculum: one phase per domain, in order, splitting the
batches equally (remainder to the last), optionally with a final **refresh** phase of the first domain that takes
``refresh_fraction`` of all batches out of the others, so the total compute is unchanged.

Pure Python, standard library only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass

from mgs._mixing import _check_stream_options, _domain_sizes, _draw_batch, _is_int, batch_counts


@dataclass(frozen=True)
class CurriculumPhase:
    """One phase: ``num_batches`` batches with these domain proportions (summing to 1; 0 leaves a domain out)."""

    proportions: Mapping[str, float]
    num_batches: int
    name: str = ""


@dataclass(frozen=True)
class CurriculumPlan:
    """Which source row fills each position of a phased stream. Build it with :func:`plan_curriculum`.

    ``boundaries[k]`` is the first batch of phase ``k`` (``boundaries[-1] == num_batches``); ``counts[k]`` the
    rows per domain (in ``domains`` order) of each of its batches. A plan holds no data.
    """

    domains: tuple[str, ...]  # sorted
    sizes: tuple[int, ...]
    phase_names: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]
    boundaries: tuple[int, ...]
    batch_size: int
    seed: int
    stopping: str
    group_by_domain: bool

    @property
    def num_batches(self) -> int:
        return self.boundaries[-1]

    @property
    def num_rows(self) -> int:
        return self.num_batches * self.batch_size

    def phase_of(self, index: int) -> tuple[int, int]:
        """``(phase, batch within the phase)`` of global batch ``index``."""
        if not _is_int(index) or not 0 <= index < self.num_batches:
            raise IndexError(f"batch index {index!r} is out of range for a curriculum of {self.num_batches} batches.")
        for k in range(len(self.counts)):
            if index < self.boundaries[k + 1]:
                return k, index - self.boundaries[k]
        raise AssertionError("unreachable")

    def _offset(self, phase: int, d: int) -> int:
        """Rows of domain ``d`` drawn before phase ``phase``."""
        return sum(self.counts[k][d] * (self.boundaries[k + 1] - self.boundaries[k]) for k in range(phase))

    def batch(self, index: int) -> list[tuple[str, int]]:
        """The ``batch_size`` ``(domain, row)`` pairs of global batch ``index``, computed from the index alone."""
        return self._batch(index, {})

    def _batch(self, index: int, cache: dict) -> list[tuple[str, int]]:
        phase, local = self.phase_of(index)
        counts = self.counts[phase]
        starts = [self._offset(phase, d) + local * count for d, count in enumerate(counts)]
        return _draw_batch(self.seed, index, self.domains, self.sizes, starts, counts, self.group_by_domain, cache)

    def rows(self, start_batch: int = 0) -> Iterator[tuple[str, int]]:
        """Every ``(domain, row)`` pair from global batch ``start_batch`` on (a resumed run's exact continuation)."""
        if not _is_int(start_batch) or not 0 <= start_batch <= self.num_batches:
            raise IndexError(f"start_batch={start_batch!r} is out of range for a curriculum of {self.num_batches} "
                             "batches.")
        cache: dict = {}
        for i in range(start_batch, self.num_batches):
            yield from self._batch(i, cache)


def plan_curriculum(
    sizes: Mapping[str, int | Sized],
    phases: Sequence[CurriculumPhase | Mapping],
    batch_size: int,
    *,
    seed: int = 0,
    stopping: str = "cycle",
    group_by_domain: bool = False,
) -> CurriculumPlan:
    """Plan a stream of phases, each with exact per-domain counts in every batch (see the module docstring).

    Args:
        sizes: per domain, its number of rows or its dataset. Every domain a phase names must be here.
        phases: :class:`CurriculumPhase` objects or mappings with ``proportions``, ``num_batches`` (and ``name``).
            A phase's proportions may name a subset of the domains (the others get 0).
        batch_size: rows per batch (for TRL, the unique prompts per generation batch).
        seed: seeds the per-domain permutations and the in-batch orders.
        stopping: ``"cycle"`` (a domain that runs out starts a new permutation) or ``"first_exhausted"`` (no row
            repeats: a curriculum that needs more rows of a domain than it has is an error).
        group_by_domain: lay each batch out domain after domain instead of shuffling it.
    """
    _check_stream_options(stopping, seed)
    if not isinstance(sizes, Mapping) or not sizes:
        raise TypeError(f"sizes must be a non-empty mapping domain -> rows or dataset; got {sizes!r}.")
    domains = tuple(sorted(sizes))
    lengths = _domain_sizes(sizes, domains)
    if not phases:
        raise ValueError("a curriculum needs at least one phase.")
    names, counts, boundaries = [], [], [0]
    for k, phase in enumerate(phases):
        if isinstance(phase, Mapping):
            unknown = sorted(set(phase) - {"proportions", "num_batches", "name"})
            if unknown or "proportions" not in phase or "num_batches" not in phase:
                raise ValueError(f"phase {k}: a mapping with 'proportions' and 'num_batches' (and 'name'); got keys "
                                 f"{sorted(phase)}.")
            phase = CurriculumPhase(dict(phase["proportions"]), phase["num_batches"], str(phase.get("name", "")))
        other = sorted(set(phase.proportions) - set(domains))
        if other:
            raise ValueError(f"phase {k} names domains {other} that have no rows; the domains are {list(domains)}.")
        if not _is_int(phase.num_batches) or phase.num_batches < 1:
            raise ValueError(f"phase {k}: num_batches must be an integer >= 1; got {phase.num_batches!r}.")
        try:
            c = batch_counts(phase.proportions, batch_size)
        except ValueError as error:
            raise ValueError(f"phase {k} ({phase.name or 'unnamed'}): {error}") from None
        counts.append(tuple(c.get(d, 0) for d in domains))
        names.append(phase.name or "+".join(d for d in domains if c.get(d, 0)))
        boundaries.append(boundaries[-1] + phase.num_batches)
    if stopping == "first_exhausted":
        for d, (domain, n) in enumerate(zip(domains, lengths)):
            need = sum(c[d] * (boundaries[k + 1] - boundaries[k]) for k, c in enumerate(counts))
            if need > n:
                raise ValueError(f"domain {domain!r} has {n} rows but the curriculum draws {need}; use "
                                 "stopping='cycle' to reuse rows, or fewer batches.")
    return CurriculumPlan(domains, tuple(lengths), tuple(names), tuple(counts), tuple(boundaries), batch_size, seed,
                          stopping, bool(group_by_domain))


def sequential_phases(domains: Sequence[str], num_batches: int, *, refresh_fraction: float = 0.0
                      ) -> list[CurriculumPhase]:
    """One phase per domain in ``domains`` order over ``num_batches`` batches in all (equal shares, the remainder to
    the last domain). With ``refresh_fraction > 0``, a final phase of the first domain gets ``max(1,
    round(refresh_fraction · num_batches))`` batches, taken from the domains' phases (the same split of what is
    left), so the total stays ``num_batches``."""
    domains = list(domains)
    if not domains or len(set(domains)) != len(domains):
        raise ValueError(f"domains must be distinct and non-empty; got {domains}.")
    if isinstance(refresh_fraction, bool) or not 0 <= refresh_fraction < 1:
        raise ValueError(f"refresh_fraction must be in [0, 1); got {refresh_fraction!r}.")
    refresh = max(1, round(refresh_fraction * num_batches)) if refresh_fraction > 0 else 0
    left = num_batches - refresh if _is_int(num_batches) else -1
    if left < len(domains):
        raise ValueError(f"num_batches={num_batches!r} leaves {left} batches for {len(domains)} domain phases"
                         + (f" after a refresh of {refresh}" if refresh else "") + ".")
    share = left // len(domains)
    phases = [CurriculumPhase({d: 1.0}, share if i < len(domains) - 1 else left - share * (len(domains) - 1), d)
              for i, d in enumerate(domains)]
    if refresh:
        phases.append(CurriculumPhase({domains[0]: 1.0}, refresh, f"{domains[0]} (refresh)"))
    return phases
