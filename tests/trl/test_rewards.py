"""trl_mgs.rewards.for_domains: a reward function applied to some domains' rows only."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

from trl_mgs.rewards import for_domains  # noqa: E402


def test_for_domains_routes_rows():
    calls = []

    def length(prompts, completions, solution, **kwargs):
        calls.append((prompts, completions, solution))
        return [float(len(c)) for c in completions]

    routed = for_domains(length, ["math"])
    out = routed(prompts=["p0", "p1", "p2"], completions=["a", "bb", "ccc"], domain=["math", "chat", "math"],
                 solution=["s0", "s1", "s2"], trainer_state=None)
    assert out == [1.0, None, 3.0]
    assert calls == [(["p0", "p2"], ["a", "ccc"], ["s0", "s2"])]  # only its rows, every column sliced alike
    assert routed.__name__ == "length@math"
    assert routed(prompts=["p"], completions=["a"], domain=["chat"]) == [None]
    with pytest.raises(KeyError, match=r"needs the dataset column 'domain'; the columns passed are \['completions', 'prompts', 'solution'\]"):
        routed(prompts=["p"], completions=["a"], solution=["s"])
    with pytest.raises(TypeError, match="not the string 'math'"):
        for_domains(length, "math")
