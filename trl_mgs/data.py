"""Multi-domain mixing for TRL: the rows of a :class:`mgs.MixturePlan` as one ``datasets.Dataset``, and the check
that ``GRPOTrainer`` reads that dataset in the plan's blocks.

:func:`mgs.plan_mixture` decides which row of which domain fills each position (exact per-domain counts in
every block of ``batch_size`` rows; the rules are in :mod:`mgs._mixing`). Here:

* :func:`mixture_dataset` lays the domains' rows (``datasets.Dataset`` or lists of dicts) out in the plan's
  order, with a domain column; :func:`interleave_domains` plans and lays out in one call.
* :func:`check_trl_compatible` checks that TRL's ``GRPOTrainer`` reads the rows in order, in blocks of
  ``batch_size`` unique prompts, which is what keeps the counts exact downstream (``docs/data.md``).

Needs ``datasets``, imported when a dataset is built.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

from mgs import MixturePlan, plan_mixture

if TYPE_CHECKING:
    import datasets as hf

__all__ = ["check_trl_compatible", "interleave_domains", "mixture_dataset"]

Rows = Union["hf.Dataset", Sequence[Mapping[str, Any]]]


def mixture_dataset(
    plan: MixturePlan, datasets: Mapping[str, Rows], *, domain_column: str = "domain", start_batch: int = 0
) -> hf.Dataset:
    """The rows of ``plan`` (:func:`mgs.plan_mixture`) as one ``datasets.Dataset``, from batch ``start_batch`` on.

    Each value is a ``datasets.Dataset`` or a sequence of dicts (the same keys in every row), and
    all domains must have the same columns. ``domain_column`` is added holding the domain's name;
    a domain that already has it must hold its own name in every row. The result is the
    concatenation of the domains with an index mapping (``select``): no row is copied.
    """
    import datasets as hf

    if set(datasets) != set(plan.domains):
        raise ValueError(f"datasets has domains {sorted(datasets)} but the plan has {list(plan.domains)}.")
    parts, offsets, offset = [], {}, 0
    for domain, size in zip(plan.domains, plan.sizes):
        part = datasets[domain]
        if not isinstance(part, hf.Dataset):
            part = _from_rows(domain, part)
        if len(part) != size:
            raise ValueError(f"datasets[{domain!r}] has {len(part)} rows but the plan was made for {size}.")
        if domain_column in part.column_names:
            found = part.unique(domain_column)
            if found != [domain]:
                shown = sorted(map(repr, found))[:5]
                raise ValueError(
                    f"datasets[{domain!r}] already has a {domain_column!r} column with values "
                    f"{', '.join(shown)} instead of {domain!r}; drop the column or fix the key."
                )
        else:
            part = part.add_column(domain_column, [domain] * size)
        parts.append(part)
        offsets[domain], offset = offset, offset + size
    columns = {d: sorted(p.column_names) for d, p in zip(plan.domains, parts)}
    if len({tuple(c) for c in columns.values()}) > 1:
        raise ValueError(f"every domain must have the same columns to be mixed; got {columns}.")
    try:
        mixed = hf.concatenate_datasets([p.select_columns(parts[0].column_names) for p in parts])
    except ValueError as error:
        features = {d: dict(p.features) for d, p in zip(plan.domains, parts)}
        raise ValueError(f"the domains' column types differ, cast them to one schema: {features}") from error
    return mixed.select([offsets[d] + i for d, i in plan.rows(start_batch)])


def _from_rows(domain: str, rows: Sequence[Mapping[str, Any]]) -> hf.Dataset:
    import datasets as hf

    rows = list(rows)
    keys = set(rows[0]) if rows and isinstance(rows[0], Mapping) else None
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"datasets[{domain!r}][{i}] is a {type(row).__name__}; rows must be dicts.")
        if set(row) != keys:
            raise ValueError(f"datasets[{domain!r}][{i}] has keys {sorted(row)}, row 0 has {sorted(keys)}.")
    return hf.Dataset.from_list([dict(r) for r in rows])


def interleave_domains(
    datasets: Mapping[str, Rows],
    proportions: Mapping[str, float],
    batch_size: int,
    *,
    seed: int = 0,
    num_batches: int | None = None,
    stopping: str = "first_exhausted",
    group_by_domain: bool = False,
    domain_column: str = "domain",
    start_batch: int = 0,
) -> hf.Dataset:
    """One ``datasets.Dataset`` mixing ``datasets`` with exact ``proportions`` in every ``batch_size`` rows.

    ``mixture_dataset(plan_mixture(datasets, proportions, batch_size, ...), datasets, ...)``: see
    :func:`mgs.plan_mixture` for the arguments and :func:`mixture_dataset` for the result.
    """
    plan = plan_mixture(
        datasets,
        proportions,
        batch_size,
        seed=seed,
        num_batches=num_batches,
        stopping=stopping,
        group_by_domain=group_by_domain,
    )
    return mixture_dataset(plan, datasets, domain_column=domain_column, start_batch=start_batch)


def check_trl_compatible(args: Any, batch_size: int, *, world_size: int | None = None) -> int:
    """Check that TRL's ``GRPOTrainer`` (trl 1.16) reads a mixed dataset in blocks of ``batch_size``.

    Returns the number of unique prompts per generation batch, which ``batch_size`` must equal:

    ``generation_batch_size // num_generations``, where ``generation_batch_size =
    per_device_train_batch_size · world_size · steps_per_generation`` and ``steps_per_generation``
    defaults to ``gradient_accumulation_steps`` (``GRPOConfig.__post_init__``).
    ``GRPOTrainer._get_train_sampler`` builds ``RepeatSampler(batch_size=generation_batch_size // num_generations,
    mini_repeat_count=num_generations, repeat_count=num_iterations · steps_per_generation,
    shuffle=shuffle_dataset)``: with ``shuffle_dataset=False`` it cuts the dataset, in order, into
    chunks of that many prompts (dropping a last partial chunk) and each chunk is one generation
    batch, split over the ranks. With ``shuffle_dataset=True`` (the default) it permutes the whole
    dataset first, which destroys the per-batch counts.

    ``args`` is a ``GRPOConfig`` or any object with its attributes. ``world_size`` defaults to
    ``args.world_size`` (the processes the config was built in); when given, the generation batch
    is computed for it and must agree with ``args.generation_batch_size``.

    Warns when ``gradient_accumulation_steps`` is not a multiple of ``steps_per_generation``: an
    optimizer step then sees part of a generation batch, picked by TRL's unseeded in-rank shuffle
    (``shuffle_sequence_dict``, called by ``GRPOTrainer._prepare_inputs``), so the counts hold per
    generation batch but not per optimizer step.
    """
    if getattr(args, "shuffle_dataset", True):
        raise ValueError(
            "shuffle_dataset=True makes GRPOTrainer's RepeatSampler permute the dataset, which breaks the "
            "per-batch domain counts; set shuffle_dataset=False (the mixed dataset is already shuffled)."
        )
    num_generations = args.num_generations
    per_device = args.per_device_train_batch_size
    accumulation = getattr(args, "gradient_accumulation_steps", 1)
    if world_size is None:
        world_size = getattr(args, "world_size", 1)
    steps = getattr(args, "steps_per_generation", None)
    generation = getattr(args, "generation_batch_size", None)
    if steps is None:  # a config that GRPOConfig.__post_init__ has not completed
        steps = generation // (per_device * world_size) if generation else accumulation
    expected = per_device * world_size * steps
    if generation is None:
        generation = expected
    elif generation != expected:
        raise ValueError(
            f"generation_batch_size={generation} does not match world_size={world_size}: "
            f"per_device_train_batch_size={per_device} x world_size={world_size} x steps_per_generation={steps} "
            f"= {expected}; build the config in the training processes (or pass their world_size)."
        )
    if generation % num_generations:
        raise ValueError(f"generation_batch_size={generation} is not divisible by num_generations={num_generations}.")
    prompts = generation // num_generations
    if batch_size != prompts:
        raise ValueError(
            f"batch_size={batch_size} but GRPOTrainer takes {prompts} unique prompts per generation batch "
            f"(generation_batch_size={generation} = per_device_train_batch_size={per_device} x world_size="
            f"{world_size} x steps_per_generation={steps}, divided by num_generations={num_generations}); "
            f"mix with batch_size={prompts}."
        )
    if accumulation % steps:
        warnings.warn(
            f"gradient_accumulation_steps={accumulation} is not a multiple of steps_per_generation={steps}: "
            "the domain counts hold per generation batch, not per optimizer step.",
            stacklevel=2,
        )
    return prompts
