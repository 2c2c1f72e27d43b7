"""mgs._mixing (mgs.plan_mixture, mgs.batch_counts): exact per-batch domain counts, determinism, resume,
stopping rules, errors."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from mgs import MixturePlan, batch_counts, plan_mixture


def rows(prefix: str, n: int) -> list[dict]:
    return [{"prompt": f"{prefix}{i}"} for i in range(n)]


def per_batch_counts(plan: MixturePlan) -> list[Counter]:
    flat = list(plan.rows())
    b = plan.batch_size
    return [Counter(d for d, _ in flat[i : i + b]) for i in range(0, len(flat), b)]


# ---------------------------------------------------------------- counts


@pytest.mark.parametrize(
    "proportions, batch_size, expected",
    [
        ({"a": 0.5, "b": 0.5}, 4, {"a": 2, "b": 2}),
        ({"a": 0.5, "b": 0.5}, 3, {"a": 2, "b": 1}),  # tie -> name that sorts first
        ({"b": 0.25, "a": 0.75}, 6, {"a": 5, "b": 1}),  # quotas 4.5 / 1.5: tie -> larger proportion
        ({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 4, {"a": 2, "b": 1, "c": 1}),
        ({"math": 0.7, "chat": 0.2, "code": 0.1}, 10, {"chat": 2, "code": 1, "math": 7}),
        ({"math": 0.7, "chat": 0.2, "code": 0.1}, 8, {"chat": 1, "code": 1, "math": 6}),  # 5.6 1.6 0.8
        ({"a": 1.0, "b": 0.0}, 3, {"a": 3, "b": 0}),
        ({"x": 0.29, "y": 0.71}, 100, {"x": 29, "y": 71}),  # 0.29*100 = 28.999999999999996
    ],
)
def test_batch_counts_largest_remainder(proportions, batch_size, expected):
    assert batch_counts(proportions, batch_size) == expected


def test_batch_counts_sum_and_stay_within_one_of_the_quota():
    rng = random.Random(0)
    for _ in range(300):
        k = rng.randint(1, 6)
        raw = [rng.random() + 0.05 for _ in range(k)]
        props = {f"d{i}": w / sum(raw) for i, w in enumerate(raw)}
        b = rng.randint(k * 20, 200)
        counts = batch_counts(props, b)
        assert sum(counts.values()) == b
        assert all(abs(counts[d] - props[d] * b) < 1 for d in props)


@pytest.mark.parametrize("batch_size", [3, 7, 8, 10, 16])
@pytest.mark.parametrize("stopping", ["first_exhausted", "cycle"])
def test_every_batch_has_exact_counts(batch_size, stopping):
    props = {"math": 0.5, "chat": 0.3, "code": 0.2}
    sizes = {"math": 41, "chat": 17, "code": 9}
    plan = plan_mixture(sizes, props, batch_size, seed=3, stopping=stopping, num_batches=None)
    want = batch_counts(props, batch_size)
    assert plan.counts == tuple(want.values()) and plan.domains == ("chat", "code", "math")
    batches = per_batch_counts(plan)
    assert len(batches) == plan.num_batches
    for counts in batches:
        assert counts == Counter({d: c for d, c in want.items() if c})


# ---------------------------------------------------------------- draws, stopping


def test_first_exhausted_never_repeats_a_row_and_stops_at_the_scarcest_domain():
    plan = plan_mixture({"a": 10, "b": 7}, {"a": 0.5, "b": 0.5}, 4)  # 2 + 2 per batch
    assert plan.num_batches == 3  # b: 7 // 2
    drawn = list(plan.rows())
    assert len(drawn) == len(set(drawn)) == 12
    with pytest.raises(ValueError, match=r"domain 'b' has 7 rows, enough for 3 batches .* num_batches=4"):
        plan_mixture({"a": 10, "b": 7}, {"a": 0.5, "b": 0.5}, 4, num_batches=4)


def test_cycle_walks_one_permutation_per_epoch():
    plan = plan_mixture({"a": 5, "b": 3}, {"a": 0.5, "b": 0.5}, 4, stopping="cycle", num_batches=9)
    draws = {d: [i for dd, i in plan.rows() if dd == d] for d in ("a", "b")}
    # within a domain, rows come in draw order when taken batch by batch with group_by_domain
    grouped = plan_mixture({"a": 5, "b": 3}, {"a": 0.5, "b": 0.5}, 4, stopping="cycle", num_batches=9,
                           group_by_domain=True)
    for d, size in (("a", 5), ("b", 3)):
        seq = [i for dd, i in grouped.rows() if dd == d]
        assert sorted(seq) == sorted(draws[d])  # same rows, only the in-batch order differs
        epochs = [seq[k : k + size] for k in range(0, len(seq) - size + 1, size)]
        assert all(sorted(e) == list(range(size)) for e in epochs)  # each epoch is a permutation
        assert len({tuple(e) for e in epochs}) > 1  # and each epoch a new one
    assert Counter(d for d, _ in plan.rows()) == {"a": 18, "b": 18}


def test_default_lengths_of_the_two_stopping_rules():
    sizes, props = {"a": 10, "b": 7}, {"a": 0.5, "b": 0.5}
    assert plan_mixture(sizes, props, 4).num_batches == 3  # min(10 // 2, 7 // 2)
    assert plan_mixture(sizes, props, 4, stopping="cycle").num_batches == 5  # max(ceil(10/2), ceil(7/2))
    plan = plan_mixture(sizes, props, 4, stopping="cycle")
    assert {i for d, i in plan.rows() if d == "a"} == set(range(10))
    assert {i for d, i in plan.rows() if d == "b"} == set(range(7))


def test_zero_proportion_domain_is_never_drawn():
    plan = plan_mixture({"a": 4, "b": 1}, {"a": 1.0, "b": 0.0}, 2)
    assert plan.num_batches == 2 and {d for d, _ in plan.rows()} == {"a"}


def test_group_by_domain_lays_out_domains_in_sorted_order():
    kw = dict(sizes={"math": 20, "chat": 20}, proportions={"math": 0.75, "chat": 0.25}, batch_size=8, seed=1)
    grouped, shuffled = plan_mixture(**kw, group_by_domain=True), plan_mixture(**kw)
    for i in range(grouped.num_batches):
        assert [d for d, _ in grouped.batch(i)] == ["chat"] * 2 + ["math"] * 6
        assert sorted(grouped.batch(i)) == sorted(shuffled.batch(i))
    assert any([d for d, _ in shuffled.batch(i)] != [d for d, _ in grouped.batch(i)] for i in range(2))


# ---------------------------------------------------------------- determinism, resume


def test_deterministic_and_seed_dependent():
    kw = dict(sizes={"a": 50, "b": 30}, proportions={"a": 0.6, "b": 0.4}, batch_size=5, stopping="cycle")
    assert list(plan_mixture(**kw, seed=7).rows()) == list(plan_mixture(**kw, seed=7).rows())
    assert list(plan_mixture(**kw, seed=7).rows()) != list(plan_mixture(**kw, seed=8).rows())


def test_domain_permutations_do_not_depend_on_the_other_domains():
    one = plan_mixture({"a": 20, "b": 20}, {"a": 0.5, "b": 0.5}, 4, seed=2, group_by_domain=True)
    two = plan_mixture({"a": 20, "c": 99}, {"a": 0.5, "c": 0.5}, 4, seed=2, group_by_domain=True)
    assert [i for d, i in one.rows() if d == "a"] == [i for d, i in two.rows() if d == "a"]


@pytest.mark.parametrize("stopping, num_batches", [("first_exhausted", None), ("cycle", 23)])
def test_resume_from_any_batch_equals_the_tail_of_a_full_run(stopping, num_batches):
    plan = plan_mixture({"a": 13, "b": 8, "c": 5}, {"a": 0.5, "b": 0.3, "c": 0.2}, 6, seed=4,
                        stopping=stopping, num_batches=num_batches)
    full = list(plan.rows())
    for i in range(plan.num_batches + 1):
        assert list(plan.rows(start_batch=i)) == full[i * 6 :]
        if i < plan.num_batches:
            assert plan.batch(i) == full[i * 6 : (i + 1) * 6]


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(proportions={"a": 1.0}), ValueError, r"no proportion for \['b'\], no dataset for \[\]"),
        (dict(proportions={"a": 0.5, "b": 0.3, "c": 0.2}), ValueError, r"no proportion for \[\], no dataset for \['c"),
        (dict(proportions={"a": 1.2, "b": -0.2}), ValueError, r"proportions\['b'\] = -0.2 is negative"),
        (dict(proportions={"a": 0, "b": 0.0}), ValueError, r"proportions are all zero"),
        (dict(proportions={"a": 0.7, "b": 0.7}), ValueError, r"proportions sum to 1.4, not 1.*divide each by their"),
        (dict(proportions={"a": float("nan"), "b": 0.5}), ValueError, r"proportions\['a'\] = nan is not a finite"),
        (dict(proportions={"a": "0.5", "b": 0.5}), ValueError, r"proportions\['a'\] = '0.5' is not a finite number"),
        (dict(proportions={}), ValueError, r"proportions must be a non-empty mapping"),
        (dict(batch_size=0), ValueError, r"batch_size must be an integer >= 1; got 0"),
        (dict(batch_size=2.0), ValueError, r"batch_size must be an integer >= 1; got 2.0"),
        (dict(proportions={"a": 0.95, "b": 0.05}, batch_size=8), ValueError,
         r"domain 'b' \(proportion 0.05\) gets 0 of batch_size=8 rows per batch .* batch_size >= 20"),
        (dict(sizes={"a": 0, "b": 5}), ValueError, r"domain 'a' has no rows"),
        (dict(sizes={"a": [], "b": rows("b", 5)}), ValueError, r"domain 'a' has no rows"),
        (dict(sizes={"a": None, "b": 5}), TypeError, r"domain 'a': expected a row count or a dataset, got NoneType"),
        (dict(stopping="all_exhausted"), ValueError,
         r"stopping='all_exhausted' is not supported; choose one of 'first_exhausted', 'cycle'"),
        (dict(num_batches=0), ValueError, r"num_batches must be an integer >= 1 or None; got 0"),
        (dict(seed=1.5), TypeError, r"seed must be an integer; got 1.5"),
    ],
)
def test_errors_name_the_problem(kwargs, error, message):
    args = dict(sizes={"a": 5, "b": 5}, proportions={"a": 0.5, "b": 0.5}, batch_size=2) | kwargs
    with pytest.raises(error, match=message):
        plan_mixture(args.pop("sizes"), args.pop("proportions"), args.pop("batch_size"), **args)


def test_batch_index_out_of_range():
    plan = plan_mixture({"a": 4}, {"a": 1.0}, 2)
    with pytest.raises(IndexError, match=r"batch index 2 is out of range for a plan of 2 batches"):
        plan.batch(2)
    with pytest.raises(IndexError, match=r"start_batch=3 is out of range"):
        list(plan.rows(3))
