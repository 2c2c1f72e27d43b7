"""mgs.plan_curriculum and mgs.sequential_phases: phase boundaries, exact counts, draws across phases, resume."""

from __future__ import annotations

import pytest

import mgs
from mgs import CurriculumPhase, plan_curriculum, plan_mixture, sequential_phases


def test_one_phase_is_plan_mixture_with_cycle():
    sizes = {"math": 7, "chat": 5}
    proportions = {"math": 0.5, "chat": 0.5}
    mixture = plan_mixture(sizes, proportions, 4, seed=3, num_batches=9, stopping="cycle")
    curriculum = plan_curriculum(sizes, [CurriculumPhase(proportions, 9)], 4, seed=3)
    assert list(curriculum.rows()) == list(mixture.rows())


def test_phase_boundaries_counts_and_draws_across_phases():
    sizes = {"math": 10, "chat": 30}
    phases = [{"proportions": {"math": 1.0}, "num_batches": 2, "name": "math"},
              {"proportions": {"chat": 0.75, "math": 0.25}, "num_batches": 3},
              {"proportions": {"math": 1.0}, "num_batches": 1, "name": "refresh"}]
    plan = plan_curriculum(sizes, phases, 4, seed=1)
    assert plan.boundaries == (0, 2, 5, 6) and plan.num_batches == 6 and plan.num_rows == 24
    assert plan.phase_names == ("math", "chat+math", "refresh")
    assert [plan.phase_of(i) for i in range(6)] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 0)]
    rows = list(plan.rows())
    batches = [rows[i * 4 : (i + 1) * 4] for i in range(6)]
    expected = [{"math": 4}] * 2 + [{"chat": 3, "math": 1}] * 3 + [{"math": 4}]
    for batch, counts in zip(batches, expected):
        got: dict[str, int] = {}
        for d, _ in batch:
            got[d] = got.get(d, 0) + 1
        assert got == counts
    # math's draws continue across phases (8, then 3, then 4): its first 10 are one permutation of its 10 rows
    math_rows = [r for d, r in rows if d == "math"]
    assert len(math_rows) == 15 and sorted(math_rows[:10]) == list(range(10))
    assert len(set(math_rows[10:])) == 5  # the refresh starts a new epoch: distinct rows again
    assert len({r for d, r in rows if d == "chat"}) == 9  # no chat row repeats within its epoch


def test_resume_and_random_access_match_the_stream():
    plan = plan_curriculum({"a": 6, "b": 4, "c": 9}, sequential_phases(["a", "b", "c"], 10, refresh_fraction=0.2), 3,
                           seed=7)
    rows = list(plan.rows())
    for start in range(plan.num_batches + 1):
        assert list(plan.rows(start)) == rows[start * 3 :]  # a resumed run continues exactly
    assert [p for i in range(plan.num_batches) for p in plan.batch(i)] == rows
    rebuilt = plan_curriculum({"a": 6, "b": 4, "c": 9}, sequential_phases(["a", "b", "c"], 10, refresh_fraction=0.2),
                              3, seed=7)
    assert list(rebuilt.rows()) == rows  # deterministic from the arguments
    assert list(plan_curriculum({"a": 6, "b": 4, "c": 9}, sequential_phases(["a", "b", "c"], 10), 3, seed=8).rows()) \
        != list(plan_curriculum({"a": 6, "b": 4, "c": 9}, sequential_phases(["a", "b", "c"], 10), 3, seed=7).rows())
    grouped = plan_curriculum({"a": 6, "b": 4}, [CurriculumPhase({"a": 0.5, "b": 0.5}, 2)], 4, group_by_domain=True)
    assert [d for d, _ in grouped.batch(1)] == ["a", "a", "b", "b"]


def test_sequential_phases_keep_the_total():
    phases = sequential_phases(["math", "code", "qa"], 50)
    assert [(p.name, p.num_batches, dict(p.proportions)) for p in phases] == [
        ("math", 16, {"math": 1.0}), ("code", 16, {"code": 1.0}), ("qa", 18, {"qa": 1.0})]
    refreshed = sequential_phases(["math", "code", "qa"], 50, refresh_fraction=0.1)
    assert [(p.name, p.num_batches) for p in refreshed] == [("math", 15), ("code", 15), ("qa", 15),
                                                            ("math (refresh)", 5)]
    assert sum(p.num_batches for p in refreshed) == 50
    assert sequential_phases(["a", "b"], 3, refresh_fraction=0.01)[-1].num_batches == 1  # at least one batch


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="sum to 1.4"):
        plan_curriculum({"a": 3}, [CurriculumPhase({"a": 1.4}, 1)], 2)
    with pytest.raises(ValueError, match="no rows; the domains are"):
        plan_curriculum({"a": 3}, [CurriculumPhase({"b": 1.0}, 1)], 2)
    with pytest.raises(ValueError, match="draws 8"):
        plan_curriculum({"a": 3}, [CurriculumPhase({"a": 1.0}, 4)], 2, stopping="first_exhausted")
    with pytest.raises(ValueError, match="num_batches must be an integer"):
        plan_curriculum({"a": 3}, [{"proportions": {"a": 1.0}, "num_batches": 0}], 2)
    with pytest.raises(ValueError, match="leaves 2 batches for 3"):
        sequential_phases(["a", "b", "c"], 3, refresh_fraction=0.2)
    with pytest.raises(IndexError):
        plan_curriculum({"a": 3}, [CurriculumPhase({"a": 1.0}, 2)], 1).batch(2)
    assert "plan_curriculum" in mgs.__all__ and "sequential_phases" in mgs.__all__
