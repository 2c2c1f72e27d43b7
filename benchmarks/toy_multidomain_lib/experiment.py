"""The toy benchmark's runs (``benchmarks/toy_multidomain.py`` describes the benchmark): the arms and settings,
each seed's supervised warm start, the GRPO run of one arm (:func:`run_arm`), the process pool that runs them
(:func:`_warm_started_pool`), and the noise check's runs at learning rate 0 (:func:`noise_run`).

The functions run in spawned worker processes; they import torch, transformers, TRL and ``trl_mgs`` where they
run.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from toy_multidomain_lib.paper_arms import PAPER_ARMS, gdpo_reward_funcs, run_merge_arm
from toy_multidomain_lib.statistics import _cosines, _finite_mean

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DOMAINS = ("copy", "reverse", "sort")

ARMS: dict[str, dict] = {
    "none": {"surgery": "none"},
    "global": {"surgery": "global"},
    "modular": {"surgery": "modular", "surgery_granularity": "parameter"},
    "modular_block": {"surgery": "modular", "surgery_granularity": "block"},
    "modular_head": {"surgery": "modular", "surgery_granularity": "head"},
    "sequential": {"surgery": "none", "sequential": True},
    "balance": {"surgery": "none", "surgery_balance": "norm"},
    "balance_modular": {"surgery": "modular", "surgery_granularity": "parameter", "surgery_balance": "norm"},
    "modular_ema": {"surgery": "modular", "surgery_granularity": "parameter", "surgery_gram_ema": 0.9},
    "sequential_reverse": {"surgery": "none", "sequential": True, "order": "reverse"},
    "sequential_refresh": {"surgery": "none", "sequential": True, "refresh": 0.1},
    "sequential_rollback_mlp": {"surgery": "none", "sequential": True, "rollback": ("mlp", 2.0)},
    "sequential_rollback_joint": {"surgery": "none", "sequential": True, "rollback": ("joint", 32.0)},
}
"""Arm name -> MGSGRPOConfig overrides. The benchmark's own keys: ``sequential`` (one domain per phase, phases from
:func:`mgs.sequential_phases`), ``order`` (``"reverse"``: the domains in reverse order), ``refresh`` (a final phase of
the first domain with this fraction of the steps, taken from the others: same total), ``rollback`` (``(scope,
percent)``: the plain sequential run, then ``mgs-forgetting``'s conflict-subspace rollback toward the checkpoint after
the first phase; derived from the ``sequential`` run of the same seed, not trained again); ``gdpo`` and ``merge``:
paper_arms.py."""
ARMS.update(PAPER_ARMS)  # normadv, gdpo, merge_ta, merge_ties: toy_multidomain_lib/paper_arms.py

DEFAULT_ARMS = ("none", "global", "modular", "modular_block", "sequential", "balance", "balance_modular", "modular_ema",
                *PAPER_ARMS)
"""The arms of a run without ``--arms``: the paper's main table and the project's controls (``modular_head`` and the
forgetting arms run when named)."""

DERIVED = {a: c["rollback"] for a, c in ARMS.items() if "rollback" in c}
"""Arms computed from the ``sequential`` run of their seed: arm -> (scope, percent)."""

SETTINGS: dict[str, dict] = {
    "default": {"scale_rewards": "group", "reward_scale": {}},
    "dominant": {"scale_rewards": "batch", "reward_scale": {"copy": 10.0}},
}
"""Setting name -> GRPO's reward scaling and per-domain reward multipliers."""


@dataclass
class Size:
    """Everything that sets the size of one run (the same for every arm)."""

    steps: int = 50
    eval_every: int = 10
    digits: int = 4
    hidden: int = 64
    layers: int = 2
    sft_steps: int = 60
    sft_batch: int = 32
    sft_learning_rate: float = 3e-3
    prompts_per_domain: int = 4  # per GRPO step
    num_generations: int = 8
    learning_rate: float = 1e-3
    max_completion_length: int = 6
    eval_prompts: int = 32  # per domain
    eval_samples: int = 4  # completions per evaluation prompt, sampled at temperature 1
    domains: tuple[str, ...] = field(default=DOMAINS)


DEFAULT = Size()
QUICK = Size(steps=3, eval_every=3, hidden=32, sft_steps=10, sft_batch=16, prompts_per_domain=1, num_generations=4,
             eval_prompts=4, eval_samples=2)


# --------------------------------------------------------------------------------------------- workers
def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    import transformers

    transformers.logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()


def _checksum(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def warm_start(size: Size, seed: int, path: str) -> dict:
    """One supervised warm start (TRL's SFTTrainer) for ``seed``; saves its ``state_dict`` to ``path``."""
    import torch
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from mgs_tools.toy import char_tokenizer, sft_dataset, tiny_causal_lm

    start = time.perf_counter()
    tokenizer = char_tokenizer()
    model = tiny_causal_lm(hidden=size.hidden, layers=size.layers, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        config = SFTConfig(
            output_dir=tmp, max_steps=size.sft_steps, per_device_train_batch_size=size.sft_batch,
            learning_rate=size.sft_learning_rate, lr_scheduler_type="constant", use_cpu=True, bf16=False,
            report_to="none", save_strategy="no", logging_steps=max(1, size.sft_steps), seed=seed,
            disable_tqdm=True, max_length=32, gradient_checkpointing=False, dataloader_num_workers=0,
        )
        data = sft_dataset(list(size.domains), n_per_domain=size.sft_steps * size.sft_batch // len(size.domains) + 1,
                           length=size.digits, seed=seed)
        trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    model = trainer.model
    torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, path)
    return {"seed": seed, "checksum": _checksum(model), "seconds": time.perf_counter() - start}


def _grpo_rows(size: Size, seed: int, sequential: bool, order: tuple[str, ...] | None = None,
               refresh: float = 0.0) -> list[dict]:
    """The GRPO prompts in training order: ``prompts_per_domain`` of each domain per step (mixed, the same for
    every mixed arm), or one domain's prompts per step in the phases of :func:`_phases` (sequential). Both draw
    from the same per-domain pool: the mixed arms in :func:`mgs.plan_mixture`'s seeded order, the sequential arms in
    pool order (a refresh phase continues its domain's pool where its first phase stopped)."""
    from mgs_tools.toy import domain_rows
    from trl_mgs import interleave_domains

    per_step = size.prompts_per_domain * len(size.domains)
    need = size.steps * per_step  # the most any domain can use (sequential)
    sources = {d: [{"prompt": r["prompt"], "digits": r["digits"]} for r in domain_rows(d, need, size.digits, seed=seed + 1)]
               for d in size.domains}
    if not sequential:
        mixed = interleave_domains(sources, {d: 1 / len(size.domains) for d in size.domains}, batch_size=per_step,
                                   seed=seed, num_batches=size.steps, stopping="first_exhausted")
        return [dict(row) for row in mixed]
    rows, used = [], {d: 0 for d in size.domains}
    for d, (first, last) in _phases(size, order, refresh):
        n = (last - first) * per_step
        rows += [{**r, "domain": d} for r in sources[d][used[d] : used[d] + n]]
        used[d] += n
    return rows


def _phases(size: Size, order: tuple[str, ...] | None = None, refresh: float = 0.0) -> list[tuple[str, tuple[int, int]]]:
    """Sequential arms: each phase's domain and its [first, last) steps, from :func:`mgs.sequential_phases` (equal
    shares in ``order``, remainder last; with ``refresh``, a final phase of the first domain)."""
    from mgs import sequential_phases

    out, start = [], 0
    for phase in sequential_phases(order or size.domains, size.steps, refresh_fraction=refresh):
        (domain,) = [d for d, p in phase.proportions.items() if p > 0]
        out.append((domain, (start, start + phase.num_batches)))
        start += phase.num_batches
    return out


def _eval_rows(size: Size, seed: int) -> dict[str, list[dict]]:
    from mgs_tools.toy import domain_rows

    return {d: domain_rows(d, size.eval_prompts, size.digits, seed=seed + 1000) for d in size.domains}


def _evaluate(model, tokenizer, rows: dict[str, list[dict]], size: Size, seed: int) -> dict[str, float]:
    """Mean over prompts of :func:`_evaluate_rows`."""
    return {d: sum(v) / len(v) for d, v in _evaluate_rows(model, tokenizer, rows, size, seed).items()}


def _evaluate_rows(model, tokenizer, rows: dict[str, list[dict]], size: Size, seed: int) -> dict[str, list[float]]:
    """Mean score per domain of ``size.eval_samples`` completions per prompt sampled at temperature 1 (GRPO's
    objective), from a private generator seeded by ``seed`` (the training RNG is left as it was). Every toy
    prompt has the same length: no padding."""
    import torch

    from mgs_tools.toy import score

    was_training = model.training
    model.eval()
    out = {}
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for d, group in rows.items():
            ids = torch.tensor([tokenizer(r["prompt"])["input_ids"] for r in group])
            ids = ids.repeat_interleave(size.eval_samples, dim=0)
            generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=size.max_completion_length, do_sample=True, temperature=1.0,
                                       top_k=0, top_p=1.0, pad_token_id=tokenizer.pad_token_id,
                                       eos_token_id=tokenizer.eos_token_id)
            texts = tokenizer.batch_decode(generated[:, ids.shape[1]:], skip_special_tokens=True)
            expected = [r["completion"] for r in group for _ in range(size.eval_samples)]
            scores = [score(t, e) for t, e in zip(texts, expected)]
            k = size.eval_samples
            out[d] = [sum(scores[i : i + k]) / k for i in range(0, len(scores), k)]  # per prompt
    model.train(was_training)
    return out


def _grpo_config(size: Size, seed: int, output_dir: str, per_step: int, scale_rewards: str, domains: list[str],
                 learning_rate: float, steps: int, **overrides):
    """The ``MGSGRPOConfig`` of every GRPO run here: one micro-batch of ``per_step`` completions per step, data in
    order, ``beta=0``, constant learning rate, logging every step."""
    from trl_mgs import MGSGRPOConfig

    return MGSGRPOConfig(
        output_dir=output_dir, use_cpu=True, bf16=False, gradient_checkpointing=False, beta=0.0,
        num_generations=size.num_generations, per_device_train_batch_size=per_step,
        gradient_accumulation_steps=1, shuffle_dataset=False, max_completion_length=size.max_completion_length,
        temperature=1.0, learning_rate=learning_rate, lr_scheduler_type="constant", max_steps=steps,
        logging_steps=1, save_strategy="no", report_to="none", seed=seed, disable_tqdm=True,
        scale_rewards=scale_rewards, domains=domains, domain_column="domain",
        dataloader_num_workers=0, **overrides,
    )


def run_arm(size: Size, setting: str, arm: str, seed: int, warm_path: str, derive: tuple[str, ...] = ()) -> dict:
    """One GRPO run of ``arm`` under ``setting`` from the seed's warm start; returns its curves and statistics.
    ``derive`` (with ``arm="sequential"``): the rollback arms (:data:`DERIVED`) to compute from this run, returned
    under ``"derived"``."""
    import torch
    from transformers import PrinterCallback, TrainerCallback

    from mgs_tools.toy import char_tokenizer, target, tiny_causal_lm
    from mgs_tools.toy import score as toy_score
    from trl_mgs import MGSGRPOTrainer

    if "merge" in ARMS[arm]:
        return run_merge_arm(size, setting, arm, seed, warm_path)
    start = time.perf_counter()
    overrides = dict(ARMS[arm])
    sequential = overrides.pop("sequential", False)
    order = tuple(reversed(size.domains)) if overrides.pop("order", None) == "reverse" else tuple(size.domains)
    refresh = overrides.pop("refresh", 0.0)
    overrides.pop("rollback", None)
    phase_ends = {last: d for d, (_, last) in _phases(size, order, refresh)} if sequential else {}
    snapshots: dict[int, dict] = {}
    gdpo = overrides.pop("gdpo", False)
    conf = SETTINGS[setting]
    scales = {d: float(conf["reward_scale"].get(d, 1.0)) for d in size.domains}

    def toy_reward(completions, domain, digits, **kwargs):
        return [scales[d] * toy_score(c, target(d, x)) for c, d, x in zip(completions, domain, digits)]

    tokenizer = char_tokenizer()
    model = tiny_causal_lm(hidden=size.hidden, layers=size.layers, seed=seed)
    model.load_state_dict(torch.load(warm_path, weights_only=True))
    checksum = _checksum(model)
    eval_rows = _eval_rows(size, seed)
    per_step = size.prompts_per_domain * len(size.domains) * size.num_generations
    evals: dict[str, list[float]] = {d: [] for d in size.domains}
    eval_steps: list[int] = []

    class Evaluate(TrainerCallback):
        def _record(self, step, model):
            eval_steps.append(step)
            for d, v in _evaluate(model, tokenizer, eval_rows, size, seed=1000 * seed + step).items():
                evals[d].append(v)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self._record(0, model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % size.eval_every == 0 or state.global_step == size.steps:
                self._record(state.global_step, model)
            if derive and state.global_step in phase_ends:
                snapshots[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    with tempfile.TemporaryDirectory() as tmp:
        args = _grpo_config(size, seed, tmp, per_step, conf["scale_rewards"], list(size.domains), size.learning_rate,
                            size.steps, **overrides)
        from datasets import Dataset

        dataset = Dataset.from_list(_grpo_rows(size, seed, sequential, order, refresh))
        if gdpo:
            args.multi_objective_aggregation = "normalize_then_sum"
        funcs = gdpo_reward_funcs(size.domains, toy_reward) if gdpo else [toy_reward]
        trainer = MGSGRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=dataset,
                                 processing_class=tokenizer, callbacks=[Evaluate()])
        trainer.remove_callback(PrinterCallback)  # the per-step log dicts; the curves are read from log_history
        trainer.train()
    history = [h for h in trainer.state.log_history if "mgs/update_norm" in h]

    def series(key, scale=1.0):
        return [None if h.get(key) is None or (isinstance(h.get(key), float) and math.isnan(h[key]))
                else h[key] / scale for h in history]

    run = {
        "setting": setting, "arm": arm, "seed": seed, "checksum": checksum,
        "eval_steps": eval_steps, "eval": evals,
        "train_reward": {d: series(f"mgs/reward/{d}/mean", scales[d]) for d in size.domains},
        "update_norm": series("mgs/update_norm"), "change_ratio": series("mgs/change_ratio"),
        "cosine_global": series("mgs/cosine_global"), "conflict_frac": series("mgs/conflict_frac"),
    }
    if derive:
        if arm != "sequential":
            raise ValueError(f"rollback arms are derived from the sequential arm, not {arm!r}.")
        warm = torch.load(warm_path, weights_only=True)
        states = [warm] + [snapshots[last] for last in sorted(snapshots)]
        analysis = forgetting_analysis(size, seed, trainer.model, tokenizer, states, list(order),
                                       [DERIVED[a] for a in derive], eval_rows)
        run["forgetting"] = analysis
        run["derived"] = []
        for name in derive:
            scope, percent = DERIVED[name]
            point = next(p for p in analysis["rollback"]["curves"][scope] if p["percent"] == percent)
            rolled = {d: v[:-1] + [point["value"][d]] for d, v in evals.items()}
            run["derived"].append({**run, "arm": name, "seconds": 0.0, "eval": rolled, "forgetting": None, "derived": None,
                                   "rollback": {"scope": scope, "percent": percent, "units": point["units"],
                                                "of": point["of"], "recovery": point["recovery"]}})
        for r in run["derived"]:
            r.pop("derived")
            r.pop("forgetting")
    run["seconds"] = time.perf_counter() - start
    return run


FORGETTING_ROWS = 32
"""Rows per domain (prompt + target completion, ``domain_rows(..., seed=seed + 2000)``) for the analysis's routes
and damage decomposition: disjoint in seed from the training pool (seed + 1) and the evaluation prompts (seed +
1000)."""


def forgetting_analysis(size: Size, seed: int, model, tokenizer, states: list[dict], order: list[str],
                        rollbacks: list[tuple[str, float]], eval_rows: dict[str, list[dict]]) -> dict:
    """:func:`mgs_tools.forgetting.analyze` of one sequential run: the warm start and the state after each phase;
    the rollback toward the first phase's state, evaluated by the benchmark's final evaluation (same prompts, same
    sampling seed), so its ``after`` is the run's final evaluation. Returns a compact summary and the curves."""
    from mgs_tools.forgetting import Checkpoint, analyze
    from mgs_tools.toy import domain_rows

    checkpoints = [Checkpoint(s, label=label) for s, label in zip(states, ["warm start", *order])]
    rows = {d: domain_rows(d, FORGETTING_ROWS, size.digits, seed=seed + 2000) for d in size.domains}
    final_seed = 1000 * seed + size.steps

    def evaluate(m):
        return _evaluate_rows(m, tokenizer, eval_rows, size, seed=final_seed)

    result = analyze(checkpoints, order, model, tokenizer, rows, evaluate=evaluate, max_rows=FORGETTING_ROWS,
                     rollback_percents=sorted({p for _, p in rollbacks}), config=model.config)
    d = result["damage"]
    return {
        "sparsity": {p: result["sparsity"][p]["overall"] for p in order},
        "edits": {k: v["overall"] for k, v in result["edits"]["pairs"].items()},
        "edits_by_kind": {k: v["by_kind"] for k, v in result["edits"]["pairs"].items()},
        "routes": {k: v["overall"] for k, v in result["routes"]["pairs"].items()},
        "routes_by_kind": {k: v["by_kind"] for k, v in result["routes"]["pairs"].items()},
        "chance": {"edits": result["edits"]["chance"], "routes": result["routes"]["chance"]},
        "damage": {k: d[k] for k in ("loss_before", "loss_after", "actual", "first_order", "second_order", "residual",
                                     "delta_norm")} | {"by_unit_kind": d["by_unit_kind"]},
        "gradient_cosine": {k: {x: v[x] for x in ("global", "negative_frac", "most_conflicting", "most_synergistic")}
                            for k, v in d["gradient_cosine"].items()},
        "rollback": {k: result["rollback"][k] for k in ("before", "after", "noise", "curves")},
    }


@contextmanager
def _warm_started_pool(size: Size, seeds: list[int], workers: int, start: float) -> Iterator[tuple]:
    """A spawned process pool (one torch thread per worker) and each seed's warm start, saved for the runs to
    load: yields ``(pool, {seed: warm-start path}, [warm_start() results])``."""
    with tempfile.TemporaryDirectory() as warm_dir, ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
    ) as pool:
        paths = {seed: os.path.join(warm_dir, f"warm_seed{seed}.pt") for seed in seeds}
        warm = list(pool.map(warm_start, [size] * len(seeds), seeds, [paths[s] for s in seeds]))
        print(f"warm starts done at {time.perf_counter() - start:.0f} s", flush=True)
        yield pool, paths, warm


# --------------------------------------------------------------------------------------------- noise floor
NOISE_STEPS = 6
"""GRPO steps (at learning rate 0) of the noise check."""


def pseudo_domains(domains: tuple[str, ...] | list[str]) -> list[str]:
    """Each domain split in two: ``copy#a``, ``copy#b``, ``reverse#a``, ... (the reward reads the part before ``#``)."""
    return [f"{d}#{half}" for d in domains for half in "ab"]


def _noise_rows(size: Size, seed: int, prompts: int, steps: int) -> list[dict]:
    """The noise check's prompts in training order: ``prompts`` of each pseudo-domain per step. Both halves of a
    domain draw from the benchmark's pool of that domain (seed + 1): ``#a`` its first ``steps * prompts`` rows,
    ``#b`` the next ones, so the two batches of a domain are independent draws of the same distribution."""
    from mgs_tools.toy import domain_rows
    from trl_mgs import interleave_domains

    n = steps * prompts
    sources = {}
    for d in size.domains:
        pool = [{"prompt": r["prompt"], "digits": r["digits"]} for r in domain_rows(d, 2 * n, size.digits, seed=seed + 1)]
        sources[f"{d}#a"], sources[f"{d}#b"] = pool[:n], pool[n:]
    names = pseudo_domains(size.domains)
    mixed = interleave_domains(sources, {p: 1 / len(names) for p in names}, batch_size=prompts * len(names),
                               seed=seed, num_batches=steps, stopping="first_exhausted")
    return [dict(row) for row in mixed]


def noise_run(size: Size, seed: int, prompts: int, steps: int, warm_path: str) -> dict:
    """``steps`` GRPO steps at learning rate 0 from the seed's warm start, on the pseudo-domains (``prompts`` per
    pseudo-domain per step, ``size.num_generations`` completions each), with ``surgery="none"``. Returns the
    whole-model Gram matrix of the pseudo-domains' gradients at every step.

    The Gram matrices are read where ``GradientSurgery.apply`` hands them to its ``_weights`` (mgs/_surgery.py),
    summed over groups: the whole model. This wraps that method on this trainer's surgery object only; the mean
    cosine over all pairs is checked against the logged ``mgs/cosine_global`` of the same step."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback

    from mgs_tools.toy import char_tokenizer, target, tiny_causal_lm
    from mgs_tools.toy import score as toy_score
    from trl_mgs import MGSGRPOTrainer

    start = time.perf_counter()
    names = pseudo_domains(size.domains)

    def toy_reward(completions, domain, digits, **kwargs):  # routed by the real domain
        return [toy_score(c, target(d.split("#")[0], x)) for c, d, x in zip(completions, domain, digits)]

    tokenizer = char_tokenizer()
    model = tiny_causal_lm(hidden=size.hidden, layers=size.layers, seed=seed)
    model.load_state_dict(torch.load(warm_path, weights_only=True))
    before = _checksum(model)
    grams: list[list[list[float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        per_step = prompts * len(names) * size.num_generations
        args = _grpo_config(size, seed, tmp, per_step, SETTINGS["default"]["scale_rewards"], names, 0.0, steps,
                            surgery="none")
        trainer = MGSGRPOTrainer(model=model, reward_funcs=[toy_reward], args=args,
                                 train_dataset=Dataset.from_list(_noise_rows(size, seed, prompts, steps)),
                                 processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        weights = trainer.surgery._weights

        def recording(clean, nonfinite, step):
            grams.append(clean.sum(0).tolist())  # [K, K]: the whole model's Gram (all groups, no non-finite here)
            return weights(clean, nonfinite, step)

        trainer.surgery._weights = recording
        trainer.train()
    logged = [h["mgs/cosine_global"] for h in trainer.state.log_history if "mgs/cosine_global" in h]
    if len(logged) != len(grams) or len(grams) != steps:
        raise RuntimeError(f"noise check: {len(grams)} Gram matrices and {len(logged)} logged steps for {steps} steps.")
    for gram, value in zip(grams, logged):  # a pseudo-domain with a zero gradient has no cosine (NaN, skipped)
        cos = _cosines(gram)
        mean = _finite_mean([cos[i][j] for i in range(len(names)) for j in range(i + 1, len(names))])
        value = float("nan") if value is None else value
        if not (abs(mean - value) <= 1e-4 or (math.isnan(mean) and math.isnan(value))):
            raise RuntimeError(f"noise check: mean cosine {mean} of the captured Gram != logged cosine_global {value}.")
    return {"seed": seed, "prompts": prompts, "completions": prompts * size.num_generations, "domains": names,
            "checksum_before": before, "checksum_after": _checksum(trainer.model), "grams": grams,
            "cosine_global": logged, "seconds": time.perf_counter() - start}
