"""trl_mgs.data: the mixed datasets.Dataset (interleave_domains, mixture_dataset), its errors, and the check that
TRL's GRPOTrainer reads it in the plan's blocks (check_trl_compatible); docs/data.md's examples run."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("trl")

from mgs import plan_mixture  # noqa: E402
from trl_mgs.data import check_trl_compatible, interleave_domains, mixture_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def rows(prefix: str, n: int) -> list[dict]:
    return [{"prompt": f"{prefix}{i}"} for i in range(n)]


# ---------------------------------------------------------------- datasets.Dataset


def test_interleave_domains_builds_a_dataset_from_lists_and_datasets():
    hf = pytest.importorskip("datasets")
    sources = {"math": hf.Dataset.from_list(rows("m", 12)), "chat": rows("c", 9)}
    props = {"math": 2 / 3, "chat": 1 / 3}
    ds = interleave_domains(sources, props, 3, seed=5)
    plan = plan_mixture(sources, props, 3, seed=5)
    assert isinstance(ds, hf.Dataset) and ds.column_names == ["prompt", "domain"]
    assert len(ds) == plan.num_rows == 18
    expected = [{"math": "m", "chat": "c"}[d] + str(i) for d, i in plan.rows()]
    assert ds["prompt"] == expected
    assert all(p[0] == {"math": "m", "chat": "c"}[d] for p, d in zip(ds["prompt"], ds["domain"]))
    for k in range(0, len(ds), 3):
        assert Counter(ds["domain"][k : k + 3]) == {"math": 2, "chat": 1}
    tail = interleave_domains(sources, props, 3, seed=5, start_batch=4)
    assert tail["prompt"] == ds["prompt"][12:] and tail["domain"] == ds["domain"][12:]


def test_existing_domain_column_is_kept_when_it_matches_and_rejected_when_it_conflicts():
    pytest.importorskip("datasets")
    same = [{"prompt": "p", "domain": "math"}] * 4
    ds = interleave_domains({"math": same, "chat": rows("c", 4)}, {"math": 0.5, "chat": 0.5}, 2)
    assert Counter(ds["domain"]) == {"math": 4, "chat": 4}
    bad = same[:3] + [{"prompt": "p", "domain": "code"}]
    with pytest.raises(ValueError, match=r"datasets\['math'\] already has a 'domain' column with values 'code',"):
        interleave_domains({"math": bad, "chat": rows("c", 4)}, {"math": 0.5, "chat": 0.5}, 2)
    custom = [{"prompt": "p", "task": "chat"}] * 2
    with pytest.raises(ValueError, match=r"'task' column with values 'chat' instead of 'math'"):
        interleave_domains({"math": custom}, {"math": 1.0}, 1, domain_column="task")


def test_dataset_errors():
    hf = pytest.importorskip("datasets")
    props = {"math": 0.5, "chat": 0.5}
    with pytest.raises(ValueError, match=r"every domain must have the same columns.*'answer'"):
        interleave_domains({"math": [{"prompt": "p", "answer": 1}] * 2, "chat": rows("c", 2)}, props, 2)
    with pytest.raises(ValueError, match=r"column types differ"):
        interleave_domains({"math": [{"prompt": 1}] * 2, "chat": rows("c", 2)}, props, 2)
    with pytest.raises(ValueError, match=r"datasets\['math'\]\[1\] has keys \['x'\], row 0 has \['prompt'\]"):
        interleave_domains({"math": [{"prompt": "p"}, {"x": 1}], "chat": rows("c", 2)}, props, 2)
    with pytest.raises(TypeError, match=r"datasets\['math'\]\[0\] is a str; rows must be dicts"):
        interleave_domains({"math": ["p", "q"], "chat": rows("c", 2)}, props, 2)
    plan = plan_mixture({"math": 2, "chat": 2}, props, 2)
    with pytest.raises(ValueError, match=r"datasets has domains \['math'\] but the plan has \['chat', 'math'\]"):
        mixture_dataset(plan, {"math": rows("m", 2)})
    with pytest.raises(ValueError, match=r"datasets\['chat'\] has 3 rows but the plan was made for 2"):
        mixture_dataset(plan, {"math": rows("m", 2), "chat": hf.Dataset.from_list(rows("c", 3))})


# ---------------------------------------------------------------- TRL


def config(**kw) -> SimpleNamespace:
    base = dict(shuffle_dataset=False, num_generations=4, per_device_train_batch_size=8,
                gradient_accumulation_steps=2, steps_per_generation=None, generation_batch_size=None, world_size=1)
    return SimpleNamespace(**(base | kw))


def test_check_trl_formula_on_plain_objects():
    assert check_trl_compatible(config(), 4) == 4  # 8 x 1 x 2 / 4
    assert check_trl_compatible(config(world_size=4), 16) == 16
    assert check_trl_compatible(config(generation_batch_size=64, gradient_accumulation_steps=8), 16) == 16
    assert check_trl_compatible(config(steps_per_generation=1), 4, world_size=2) == 4  # 8 x 2 x 1 / 4
    with pytest.raises(ValueError, match=r"batch_size=5 but GRPOTrainer takes 4 unique prompts .*"
                                         r"per_device_train_batch_size=8 x world_size=1 x steps_per_generation=2"):
        check_trl_compatible(config(), 5)
    with pytest.raises(ValueError, match=r"shuffle_dataset=True .* set shuffle_dataset=False"):
        check_trl_compatible(config(shuffle_dataset=True), 4)
    with pytest.raises(ValueError, match=r"generation_batch_size=16 does not match world_size=2"):
        check_trl_compatible(config(generation_batch_size=16, steps_per_generation=2), 8, world_size=2)
    with pytest.warns(UserWarning, match=r"gradient_accumulation_steps=2 is not a multiple of steps_per_generation=4"):
        check_trl_compatible(config(steps_per_generation=4), 8)


def test_check_trl_compatible_with_grpo_config_and_trls_sampler(tmp_path):
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    from trl import GRPOConfig
    from trl.trainer.utils import RepeatSampler

    kw = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", num_generations=4,
              per_device_train_batch_size=6, gradient_accumulation_steps=2, num_iterations=2)
    args = GRPOConfig(**kw, shuffle_dataset=False)
    assert check_trl_compatible(args, 3) == 3  # 6 x 1 x 2 / 4
    with pytest.raises(ValueError, match=r"shuffle_dataset=True"):
        check_trl_compatible(GRPOConfig(**kw), 3)
    with pytest.raises(ValueError, match=r"mix with batch_size=3"):
        check_trl_compatible(args, 4)

    # The sampler GRPOTrainer._get_train_sampler builds: each generation batch is one mixed batch.
    props = {"math": 2 / 3, "chat": 1 / 3}
    ds = interleave_domains({"math": rows("m", 20), "chat": rows("c", 10)}, props, 3, seed=1)
    sampler = RepeatSampler(ds, mini_repeat_count=args.num_generations,
                            batch_size=args.generation_batch_size // args.num_generations,
                            repeat_count=args.num_iterations * args.steps_per_generation,
                            shuffle=args.shuffle_dataset, seed=args.seed)
    stream = list(sampler)
    gen, reps = args.generation_batch_size, args.num_iterations * args.steps_per_generation
    for k in range(len(stream) // (gen * reps)):
        used = stream[k * gen * reps : k * gen * reps + gen]  # the copy that is generated from
        assert sorted(set(used)) == list(range(3 * k, 3 * k + 3))
        assert Counter(ds[i]["domain"] for i in set(used)) == {"math": 2, "chat": 1}


def test_docs_python_blocks_run():
    pytest.importorskip("datasets")
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "data.md").read_text(), flags=re.S)
    assert blocks, "docs/data.md has no python example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/data.md", "exec"), namespace)
