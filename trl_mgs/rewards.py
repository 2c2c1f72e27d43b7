"""Reward routing for multi-domain GRPO: TRL calls every reward function on every completion.

``for_domains(f, ["math"])`` calls ``f`` on the math rows only and returns ``None`` for the others, which
TRL 1.16 treats as "no reward from this function" (NaN, skipped by ``nansum``). Any TRL reward function
can be routed, a reward model's too: ``recipes/trl/reward_model.py`` (``RewardModelScorer``) scores chat
prompts only that way in the paper recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

RewardFunc = Callable[..., list]


def for_domains(reward_func: RewardFunc, domains: Sequence[str], domain_column: str = "domain") -> RewardFunc:
    """A TRL reward function applying ``reward_func`` to the rows of ``domains`` and ``None`` elsewhere.

    Its ``__name__`` is ``<name>@<domains>``, so TRL logs ``rewards/<name>@<domains>/mean``."""
    if isinstance(domains, str):
        raise TypeError(f"domains must be a list of names, not the string {domains!r}; did you mean [{domains!r}]?")
    wanted = set(domains)

    def routed(prompts=None, completions=None, **kwargs) -> list:
        if domain_column not in kwargs:
            raise KeyError(f"reward function {name!r} needs the dataset column {domain_column!r}; the columns passed "
                           f"are {sorted(['prompts', 'completions', *kwargs])}.")
        rows = [i for i, d in enumerate(kwargs[domain_column]) if d in wanted]
        out: list = [None] * len(completions)
        if not rows:
            return out
        pick = (lambda values: [values[i] for i in rows])
        sub = {k: (pick(v) if isinstance(v, list) and len(v) == len(completions) else v) for k, v in kwargs.items()}
        values = reward_func(prompts=pick(prompts) if prompts is not None else None, completions=pick(completions), **sub)
        for i, value in zip(rows, values):
            out[i] = value
        return out

    name = f"{getattr(reward_func, '__name__', type(reward_func).__name__)}@{'+'.join(domains)}"
    routed.__name__ = name
    return routed
