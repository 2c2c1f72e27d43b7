"""Does modular gradient surgery help, at a scale we can run? A seeded multi-arm GRPO comparison on CPU.

    python benchmarks/toy_multidomain.py                 # the default run: 8 arms x 2 settings x 10 seeds
    python benchmarks/toy_multidomain.py --quick         # smoke run (seconds; writes under runs/ unless --out)
    python benchmarks/toy_multidomain.py --seeds 3 --steps 60 --arms none,modular --settings default
    python benchmarks/toy_multidomain.py --from-json docs/results/toy_multidomain.json --compare modular-global
    python benchmarks/toy_multidomain.py --noise-check 16,32,64    # gradient noise floor (seconds)

Per seed, a tiny Qwen2-architecture causal LM (:func:`mgs_tools.toy.tiny_causal_lm`, random weights, no download)
is warm-started once with TRL's ``SFTTrainer`` on the three toy domains of :mod:`mgs_tools.toy` (copy, reverse,
sort: one prompt format, one input, only the tag differs). Its ``state_dict`` is saved, and every arm of
that seed loads it, so all arms start from identical weights (a SHA-256 of the weights is recorded per
run). Then each arm runs GRPO with ``MGSGRPOTrainer`` for the same number of steps, on the same prompts in
the same order, with the same seed:

==================  ============================================================================
arm                 MGSGRPOConfig
==================  ============================================================================
none                surgery="none": naive mixing (stock GRPO on the mixture)
global              surgery="global": PCGrad over the whole model
modular             surgery="modular", granularity="parameter": PCGrad per parameter tensor
modular_block       surgery="modular", granularity="block": PCGrad per attention / MLP block
sequential          surgery="none", one domain after the other (steps split in 3 equal phases)
balance             surgery="none", balance="norm": equal-norm domains, no projection
balance_modular     surgery="modular", balance="norm": equal norms per module, then PCGrad
modular_ema         surgery="modular", gram_ema=0.9: PCGrad decided from smoothed Gram matrices
==================  ============================================================================

Two settings:

* ``default``: GRPO's default reward scaling (``scale_rewards="group"``: each prompt's rewards divided
  by their std over its completions), every domain's reward in [0, 1].
* ``dominant``: the copy domain's reward is multiplied by 10 and ``scale_rewards="batch"`` (one std
  over the whole generation batch), so copy's advantages are about 10x the others'. Under "group"
  scaling the factor would cancel out in every group; under "batch" it survives. Rewards are reported
  unscaled.

Every arm is evaluated every ``--eval-every`` steps (and at step 0) on a fixed held-out set of prompts per
domain: the mean :func:`mgs_tools.toy.score` of completions sampled at temperature 1, the quantity GRPO maximizes,
from a generator seeded by (seed, step) that leaves the training RNG alone. "final" is the last evaluation, "AUC" the
mean of the evaluation curve over training (trapezoid over steps, divided by the steps: in [0, 1]).
Each arm's metrics are compared with naive mixing (``none``) seed by seed: mean of the paired
difference with a 95% t-interval over seeds. ``update norm`` and ``change ratio`` are the per-step
means of the logged ``mgs/update_norm`` and ``mgs/change_ratio``, averaged over seeds.

``--compare A-B[,C-D...]`` tabulates the same paired per-seed difference (same t-interval) between any two arms,
per setting: with ``--from-json``, from a saved run without training, into ``toy_multidomain_compare.md``; in a
training run, as an extra section of ``toy_multidomain.md``.

``--noise-check N[,N...]`` measures instead how much of a domain's GRPO gradient is batch noise, for N completions
per domain batch: from the benchmark's warm start (seed 0; seeds 0..S-1 with ``--seeds S``), each domain split
into two pseudo-domains (``copy#a``, ``copy#b``: two independent prompt batches, the reward routed by the real
domain), ``NOISE_STEPS`` GRPO steps at learning rate 0 with ``surgery="none"``, and at each step the whole-model
cosines from the Gram matrix of the pseudo-domains' gradients: same domain (``d#a`` vs ``d#b``, the noise floor)
vs different domains. Writes ``toy_multidomain_noise.md`` and ``.json`` to ``--out``.

Writes ``toy_multidomain.md`` (the tables, command and wall time), ``toy_multidomain.json`` (config,
per-run curves and checksums, the summary) and ``toy_multidomain.png`` (per-domain evaluation curves per
arm, mean over seeds) to ``--out`` (default ``docs/results``; ``runs/toy_multidomain_quick`` for ``--quick``).
Runs go through a process pool of ``--workers`` processes (default 2) with one torch thread each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]

DOMAINS = ("copy", "reverse", "sort")

ARMS: dict[str, dict] = {
    "none": {"surgery": "none"},
    "global": {"surgery": "global"},
    "modular": {"surgery": "modular", "surgery_granularity": "parameter"},
    "modular_block": {"surgery": "modular", "surgery_granularity": "block"},
    "sequential": {"surgery": "none", "sequential": True},
    "balance": {"surgery": "none", "surgery_balance": "norm"},
    "balance_modular": {"surgery": "modular", "surgery_granularity": "parameter", "surgery_balance": "norm"},
    "modular_ema": {"surgery": "modular", "surgery_granularity": "parameter", "surgery_gram_ema": 0.9},
}
"""Arm name -> MGSGRPOConfig overrides (``sequential`` is this benchmark's own: one domain per phase)."""

SETTINGS: dict[str, dict] = {
    "default": {"scale_rewards": "group", "reward_scale": {}},
    "dominant": {"scale_rewards": "batch", "reward_scale": {"copy": 10.0}},
}
"""Setting name -> GRPO's reward scaling and per-domain reward multipliers."""

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
        29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
"""Two-sided 95% quantiles of Student's t by degrees of freedom."""


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


def _grpo_rows(size: Size, seed: int, sequential: bool) -> list[dict]:
    """The GRPO prompts in training order: ``prompts_per_domain`` of each domain per step (mixed, the same for
    every mixed arm), or one domain's prompts per step for a third of the steps each (sequential). Both draw
    from the same per-domain pool: the mixed arms in :func:`mgs.plan_mixture`'s seeded order, the sequential arm in
    pool order."""
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
    rows = []
    for d, (first, last) in zip(size.domains, _phases(size)):
        rows += [{**r, "domain": d} for r in sources[d][: (last - first) * per_step]]
    return rows


def _phases(size: Size) -> list[tuple[int, int]]:
    """Sequential arm: [first, last) steps of each domain, in ``size.domains`` order (equal thirds, remainder last)."""
    k, n = len(size.domains), size.steps // len(size.domains)
    return [(i * n, size.steps if i == k - 1 else (i + 1) * n) for i in range(k)]


def _eval_rows(size: Size, seed: int) -> dict[str, list[dict]]:
    from mgs_tools.toy import domain_rows

    return {d: domain_rows(d, size.eval_prompts, size.digits, seed=seed + 1000) for d in size.domains}


def _evaluate(model, tokenizer, rows: dict[str, list[dict]], size: Size, seed: int) -> dict[str, float]:
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
            out[d] = sum(score(t, e) for t, e in zip(texts, expected)) / len(expected)
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


def run_arm(size: Size, setting: str, arm: str, seed: int, warm_path: str) -> dict:
    """One GRPO run of ``arm`` under ``setting`` from the seed's warm start; returns its curves and statistics."""
    import torch
    from transformers import PrinterCallback, TrainerCallback

    from mgs_tools.toy import char_tokenizer, target, tiny_causal_lm
    from mgs_tools.toy import score as toy_score
    from trl_mgs import MGSGRPOTrainer

    start = time.perf_counter()
    overrides = dict(ARMS[arm])
    sequential = overrides.pop("sequential", False)
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

    with tempfile.TemporaryDirectory() as tmp:
        args = _grpo_config(size, seed, tmp, per_step, conf["scale_rewards"], list(size.domains), size.learning_rate,
                            size.steps, **overrides)
        from datasets import Dataset

        dataset = Dataset.from_list(_grpo_rows(size, seed, sequential))
        trainer = MGSGRPOTrainer(model=model, reward_funcs=[toy_reward], args=args, train_dataset=dataset,
                                 processing_class=tokenizer, callbacks=[Evaluate()])
        trainer.remove_callback(PrinterCallback)  # the per-step log dicts; the curves are read from log_history
        trainer.train()
    history = [h for h in trainer.state.log_history if "mgs/update_norm" in h]

    def series(key, scale=1.0):
        return [None if h.get(key) is None or (isinstance(h.get(key), float) and math.isnan(h[key]))
                else h[key] / scale for h in history]

    return {
        "setting": setting, "arm": arm, "seed": seed, "checksum": checksum,
        "eval_steps": eval_steps, "eval": evals,
        "train_reward": {d: series(f"mgs/reward/{d}/mean", scales[d]) for d in size.domains},
        "update_norm": series("mgs/update_norm"), "change_ratio": series("mgs/change_ratio"),
        "cosine_global": series("mgs/cosine_global"), "conflict_frac": series("mgs/conflict_frac"),
        "seconds": time.perf_counter() - start,
    }


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


def _finite_mean(xs: list[float]) -> float:
    return _mean([x for x in xs if x is not None and not math.isnan(x)])


def _cosines(gram: list[list[float]]) -> list[list[float]]:
    k = len(gram)
    return [[gram[i][j] / math.sqrt(gram[i][i] * gram[j][j]) if gram[i][i] > 0 and gram[j][j] > 0 else float("nan")
             for j in range(k)] for i in range(k)]


def noise_summary(runs: list[dict]) -> dict:
    """Per completions per domain batch: per step (and seed), the mean whole-model cosine of the same-domain pairs
    (``d#a``, ``d#b``) and of the cross-domain pairs; their mean and std over steps, the same-domain cosine per
    domain, and the paired difference same − cross over steps (:func:`paired`)."""
    out: dict = {}
    for c in sorted({r["completions"] for r in runs}):
        same, cross, per_domain, missing = [], [], {}, 0
        for run in (r for r in runs if r["completions"] == c):
            real = [n.split("#")[0] for n in run["domains"]]
            k = len(real)
            for gram in run["grams"]:
                cos = _cosines(gram)
                pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
                missing += sum(math.isnan(cos[i][j]) for i, j in pairs)
                s = _finite_mean([cos[i][j] for i, j in pairs if real[i] == real[j]])
                x = _finite_mean([cos[i][j] for i, j in pairs if real[i] != real[j]])
                if math.isnan(s) or math.isnan(x):
                    continue  # a step without a usable pair of either kind
                same.append(s)
                cross.append(x)
                for i, j in pairs:
                    if real[i] == real[j] and not math.isnan(cos[i][j]):
                        per_domain.setdefault(real[i], []).append(cos[i][j])
        out[str(c)] = {
            "prompts": next(r["prompts"] for r in runs if r["completions"] == c), "n": len(same),
            "pairs_without_cosine": missing,
            "same": _mean(same), "same_std": _std(same), "cross": _mean(cross), "cross_std": _std(cross),
            "same_by_domain": {d: _mean(v) for d, v in per_domain.items()},
            "same_minus_cross": paired([a - b for a, b in zip(same, cross)]),
            "same_steps": same, "cross_steps": cross,
        }
    return out


def noise_markdown(result: dict) -> str:
    size, summary = result["size"], result["summary"]
    runs, domains = result["runs"], result["size"]["domains"]
    unchanged = all(r["checksum_before"] == r["checksum_after"] for r in runs)
    warm = ", ".join(f"seed {w['seed']}: {w['checksum']}" for w in result["warm_starts"])
    lines = [
        "## Noise floor: the same domain in two batches vs different domains",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Wall time: {result['wall_seconds']:.0f} s on {result['workers']} worker processes, one torch thread each.",
        "",
        f"Each domain is split into two pseudo-domains (`{domains[0]}#a`, `{domains[0]}#b`, ...: two independent prompt "
        f"batches of that domain, the reward routed by the real domain). From the benchmark's warm start (weights "
        f"checksum {warm}), {result['steps']} GRPO steps at learning rate 0 with `MGSGRPOTrainer`, "
        f"`surgery=\"none\"`, the `default` setting (`scale_rewards=\"group\"`), {size['num_generations']} completions "
        f"per prompt (weights unchanged after the steps: {'yes' if unchanged else 'NO'}). At each step, the whole-model "
        f"cosines come from the Gram matrix of the {2 * len(domains)} pseudo-domains' gradients: same domain = the "
        f"{len(domains)} pairs (`d#a`, `d#b`); different domains = the other "
        f"{len(domains) * (2 * len(domains) - 1) - len(domains)} pairs. Cells: mean ± std over the "
        f"{result['steps']} steps{' and seeds' if len(result['seeds']) > 1 else ''}; same − different: mean of the "
        "per-step difference with its 95% t-interval over steps.",
        "",
        "| completions per domain batch | same domain, two batches (noise floor) | different domains | same − different | "
        + " | ".join(f"same: {d}" for d in domains) + " |",
        "|---" * (4 + len(domains)) + "|",
    ]
    for c, row in summary.items():
        plural = "s" if row["prompts"] > 1 else ""
        label = f"{c} ({row['prompts']} prompt{plural} × {size['num_generations']})"
        if row["prompts"] == size["prompts_per_domain"]:
            label += ": **the default**"
        diff = row["same_minus_cross"]
        cells = [label, f"{row['same']:+.3f} ± {row['same_std']:.3f}", f"{row['cross']:+.3f} ± {row['cross_std']:.3f}",
                 f"{diff['mean']:+.3f} [{diff['lo']:+.3f}, {diff['hi']:+.3f}]"]
        cells += [f"{row['same_by_domain'].get(d, float('nan')):+.3f}" for d in domains]
        lines.append("| " + " | ".join(cells) + " |")
    missing = {c: row["pairs_without_cosine"] for c, row in summary.items() if row["pairs_without_cosine"]}
    if missing:
        lines += ["", "Pairs without a cosine (a pseudo-domain whose gradient was zero: every completion of each of "
                  f"its prompts got the same reward), left out: {missing}."]
    return "\n".join(lines) + "\n"


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


def noise_check(args: argparse.Namespace, size: Size, command: str, out: Path) -> dict:
    """The noise check of ``--noise-check``: writes ``toy_multidomain_noise.md`` and ``.json`` to ``out``."""
    seeds = list(range(args.seeds)) if args.seeds is not None else [0]
    start = time.perf_counter()
    with _warm_started_pool(size, seeds, args.workers, start) as (pool, paths, warm):
        jobs = [(seed, c // size.num_generations) for seed in seeds for c in args.noise_list]
        futures = [pool.submit(noise_run, size, seed, prompts, NOISE_STEPS, paths[seed]) for seed, prompts in jobs]
        runs = []
        for future in futures:
            runs.append(future.result())
            print(f"seed {runs[-1]['seed']}, {runs[-1]['completions']} completions per domain batch: "
                  f"{runs[-1]['seconds']:.1f} s", flush=True)
    result = {"command": command, "wall_seconds": time.perf_counter() - start, "workers": args.workers, "seeds": seeds,
              "steps": NOISE_STEPS, "size": asdict(size) | {"domains": list(size.domains)}, "warm_starts": warm,
              "summary": noise_summary(runs), "runs": runs}
    table = noise_markdown(result)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "toy_multidomain_noise.json", "w") as f:
        json.dump(_rounded(result), f, separators=(",", ":"))
    (out / "toy_multidomain_noise.md").write_text(table)
    print("\n" + table)
    print(f"wrote {out}/toy_multidomain_noise.md, .json")
    return result


# --------------------------------------------------------------------------------------------- statistics
def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def _std(xs: list[float]) -> float:
    if len(xs) < 2:
        return float("nan")
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def t_quantile(df: int) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` degrees of freedom (table; next smaller df listed)."""
    if df < 1:
        return float("nan")
    return T975[max(k for k in T975 if k <= df)]


def paired(diffs: list[float]) -> dict:
    """Mean of per-seed differences and its 95% t-interval (exactly 0 ± 0 when every difference is 0)."""
    n, m = len(diffs), _mean(diffs)
    half = t_quantile(n - 1) * _std(diffs) / math.sqrt(n) if n > 1 else float("nan")
    if all(d == 0 for d in diffs):
        half = 0.0
    return {"mean": m, "lo": m - half, "hi": m + half, "n": n}


def auc(steps: list[int], values: list[float]) -> float:
    """Trapezoid area under ``values`` over ``steps``, divided by the step span: a mean reward in [0, 1]."""
    area = sum((steps[i + 1] - steps[i]) * (values[i] + values[i + 1]) / 2 for i in range(len(steps) - 1))
    return area / (steps[-1] - steps[0]) if steps[-1] > steps[0] else values[0]


def run_metrics(run: dict, domains: list[str]) -> dict[str, float]:
    """Scalar metrics of one run: per-domain and mean final reward and AUC, mean update norm and change ratio."""
    out = {}
    for d in domains:
        out[f"final/{d}"] = run["eval"][d][-1]
        out[f"auc/{d}"] = auc(run["eval_steps"], run["eval"][d])
    out["final/mean"] = _mean([out[f"final/{d}"] for d in domains])
    out["auc/mean"] = _mean([out[f"auc/{d}"] for d in domains])
    out["update_norm"] = _mean(run["update_norm"])
    out["change_ratio"] = _mean(run["change_ratio"])
    out["cosine_global"] = _mean(run["cosine_global"])
    return out


def _metrics_by_arm(runs: list[dict], domains: list[str], setting: str, arms: list[str]) -> dict[str, dict[int, dict]]:
    """Arm -> seed -> :func:`run_metrics` of that run, for the runs of ``setting``."""
    return {a: {r["seed"]: run_metrics(r, domains) for r in runs if r["setting"] == setting and r["arm"] == a}
            for a in arms}


def paired_diffs(a: dict[int, dict], b: dict[int, dict]) -> dict[str, dict]:
    """Per reward metric (``final/...``, ``auc/...``): :func:`paired` of the per-seed differences a − b over the
    seeds both have. ``a`` and ``b`` map seed -> :func:`run_metrics`."""
    seeds = sorted(a)
    keys = list(a[seeds[0]]) if seeds else []
    common = [s for s in seeds if s in b]
    return {key: paired([a[s][key] - b[s][key] for s in common])
            for key in keys if key.startswith("final/") or key.startswith("auc/")}


def summarize(runs: list[dict], domains: list[str], arms: list[str], settings: list[str]) -> dict:
    """Per (setting, arm): mean and std over seeds of every metric, and the paired difference against ``none``."""
    summary: dict = {}
    for setting in settings:
        by_arm = _metrics_by_arm(runs, domains, setting, arms)
        summary[setting] = {}
        for arm in arms:
            seeds = sorted(by_arm[arm])
            keys = list(by_arm[arm][seeds[0]]) if seeds else []
            row = {"seeds": seeds, "mean": {}, "std": {}, "diff": {}}
            for key in keys:
                values = [by_arm[arm][s][key] for s in seeds]
                row["mean"][key], row["std"][key] = _mean(values), _std(values)
            if "none" in by_arm:
                row["diff"] = paired_diffs(by_arm[arm], by_arm["none"])
            summary[setting][arm] = row
    return summary


def compare(runs: list[dict], domains: list[str], settings: list[str], pairs: list[tuple[str, str]]) -> dict:
    """Setting -> "A-B" -> the paired per-seed differences A − B of every reward metric (:func:`paired_diffs`, the
    same statistic as the table's difference against ``none``)."""
    out: dict = {}
    for setting in settings:
        by_arm = _metrics_by_arm(runs, domains, setting, sorted({a for pair in pairs for a in pair}))
        out[setting] = {f"{a}-{b}": paired_diffs(by_arm[a], by_arm[b]) for a, b in pairs}
    return out


# --------------------------------------------------------------------------------------------- output
def _pm(row: dict, key: str) -> str:
    m, s = row["mean"][key], row["std"][key]
    return f"{m:.3f} ± {s:.3f}" if not math.isnan(s) else f"{m:.3f}"


def _ci(row: dict, key: str) -> str:
    d = row["diff"].get(key)
    if d is None:
        return "–"
    if math.isnan(d["lo"]):
        return f"{d['mean']:+.3f}"
    star = "**" if d["lo"] > 0 or d["hi"] < 0 else ""
    return f"{star}{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]{star}"


def markdown(result: dict) -> str:
    size, summary, domains = result["size"], result["summary"], result["size"]["domains"]
    n_seeds = len(result["seeds"])
    lines = [
        "# Toy multi-domain GRPO: naive mixing vs gradient surgery",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Wall time: {result['wall_seconds']:.0f} s ({result['wall_seconds'] / 60:.1f} min) on {result['workers']} "
        f"worker processes, one torch thread each; {len(result['runs'])} GRPO runs, {n_seeds} seeds "
        f"({', '.join(map(str, result['seeds']))}).",
        "",
        f"Size: tiny Qwen2 (hidden {size['hidden']}, {size['layers']} layers), warm start {size['sft_steps']} SFT steps "
        f"× {size['sft_batch']}, then {size['steps']} GRPO steps of {size['prompts_per_domain']} prompts per domain × "
        f"{size['num_generations']} completions ({size['prompts_per_domain'] * size['num_generations']} completions per "
        f"domain per step), learning rate {size['learning_rate']:g} (constant), evaluation every "
        f"{size['eval_every']} steps (and at step 0) on {size['eval_prompts']} held-out prompts per domain × "
        f"{size['eval_samples']} completions sampled at temperature 1.",
        "",
        "final: reward at the last evaluation; AUC: mean of the evaluation curve over training (trapezoid). "
        "Levels are mean ± std over seeds. Δ is the mean over seeds of the paired per-seed difference against "
        "`none` (naive mixing), with its 95% t-interval; bold where the interval excludes 0. Update norm and "
        "change ratio: per-step means of `mgs/update_norm` and `mgs/change_ratio`, mean over seeds.",
    ]
    for setting, rows in summary.items():
        conf = result["settings"][setting]
        scale = ", ".join(f"{d} ×{s:g}" for d, s in conf["reward_scale"].items()) or "none"
        lines += ["", f"## Setting `{setting}`: scale_rewards=\"{conf['scale_rewards']}\", reward multipliers: {scale}",
                  "", "### Levels", "",
                  "| arm | " + " | ".join(f"{d} final" for d in domains) + " | **mean final** | "
                  + " | ".join(f"{d} AUC" for d in domains) + " | **mean AUC** | update norm | change ratio |",
                  "|---" * (2 * len(domains) + 5) + "|"]
        for arm, row in rows.items():
            cells = [_pm(row, f"final/{d}") for d in domains] + [_pm(row, "final/mean")]
            cells += [_pm(row, f"auc/{d}") for d in domains] + [_pm(row, "auc/mean")]
            cells += [f"{row['mean']['update_norm']:.3g}", f"{row['mean']['change_ratio']:.3f}"]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines += ["", "### Paired difference against `none` (95% t-interval over seeds)", "", *_diff_header(["arm"], domains)]
        for arm, row in rows.items():
            lines.append(f"| {arm} | " + " | ".join(_diff_cells(row["diff"], domains)) + " |")
    if result.get("comparisons"):
        lines += ["", compare_markdown(result["comparisons"], domains).rstrip("\n")]
    lines += ["", "Curves: `toy_multidomain.png`; per-run data and checksums: `toy_multidomain.json`.", ""]
    return "\n".join(lines)


def _diff_header(first: list[str], domains: list[str]) -> list[str]:
    """Header and separator of a table of paired differences whose first columns are ``first``."""
    return ["| " + " | ".join(first) + " | " + " | ".join(f"Δ {d} final" for d in domains) + " | **Δ mean final** | "
            + " | ".join(f"Δ {d} AUC" for d in domains) + " | **Δ mean AUC** |",
            "|---" * (2 * len(domains) + 2 + len(first)) + "|"]


def _diff_cells(diffs: dict, domains: list[str]) -> list[str]:
    """The cells of one row of paired differences (:func:`paired_diffs`), in :func:`_diff_header`'s order."""
    row = {"diff": diffs}
    return [_ci(row, f"final/{d}") for d in [*domains, "mean"]] + [_ci(row, f"auc/{d}") for d in [*domains, "mean"]]


def compare_markdown(comparisons: dict, domains: list[str], command: str | None = None) -> str:
    """The table of :func:`compare`'s paired differences between arms, one row per (setting, comparison)."""
    lines = ["## Paired differences between arms (95% t-interval over seeds)", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += ["Δ is the mean over seeds of the paired per-seed difference A − B, with its 95% t-interval (the same "
              "statistic as the difference against `none`); bold where the interval excludes 0.", "",
              *_diff_header(["setting", "comparison"], domains)]
    for setting, pairs in comparisons.items():
        for name, diffs in pairs.items():
            a, b = name.split("-")
            lines.append(f"| {setting} | {a} − {b} | " + " | ".join(_diff_cells(diffs, domains)) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings, arms, domains = list(result["summary"]), result["arms"], result["size"]["domains"]
    fig, axes = plt.subplots(len(settings), len(arms), figsize=(2.3 * len(arms), 2.3 * len(settings)),
                             sharex=True, sharey=True, squeeze=False)
    for i, setting in enumerate(settings):
        for j, arm in enumerate(arms):
            ax = axes[i][j]
            runs = [r for r in result["runs"] if r["setting"] == setting and r["arm"] == arm]
            if not runs:
                continue
            steps = runs[0]["eval_steps"]
            for d in domains:
                curve = [_mean([r["eval"][d][k] for r in runs]) for k in range(len(steps))]
                ax.plot(steps, curve, label=d)
            curve = [_mean([_mean([r["eval"][d][k] for d in domains]) for r in runs]) for k in range(len(steps))]
            ax.plot(steps, curve, color="black", linestyle="--", label="mean")
            ax.set_title(f"{arm}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{setting}\neval reward", fontsize=9)
            if i == len(settings) - 1:
                ax.set_xlabel("GRPO step", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Per-domain eval reward (sampled, T=1), mean over {len(result['seeds'])} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- main
def _names(value: str, allowed: dict | tuple, what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise SystemExit(f"--{what}: unknown {unknown or value!r}; choose from {', '.join(allowed)}.")
    return names


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 2 seeds, 3 steps")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (0..N-1); default 10, 2 with --quick")
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps per run")
    parser.add_argument("--eval-every", type=int, default=None, help="steps between evaluations")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated arms: {', '.join(ARMS)}")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated settings: {', '.join(SETTINGS)}")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (one torch thread each)")
    parser.add_argument("--from-json", default=None, metavar="PATH",
                        help="re-render the table and plot from a saved toy_multidomain.json (no training) into --out "
                             "(default: the JSON's folder)")
    parser.add_argument("--compare", default=None, metavar="A-B[,C-D...]",
                        help="also tabulate the paired per-seed differences A − B between arms (same t-interval as the "
                             "difference against none); with --from-json: only this table, written to "
                             "toy_multidomain_compare.md in --out (default: the JSON's folder)")
    parser.add_argument("--noise-check", default=None, metavar="N[,N...]",
                        help="instead of the benchmark: the gradient noise floor for N completions per domain batch "
                             f"(multiples of num_generations): each domain split into two pseudo-domains, {NOISE_STEPS} "
                             "GRPO steps at learning rate 0 from the warm start of seed 0 (seeds 0..S-1 with --seeds S); "
                             "writes toy_multidomain_noise.md and .json to --out")
    parser.add_argument("--out", default=None,
                        help="output folder (default docs/results; runs/toy_multidomain_quick with --quick)")
    args = parser.parse_args(argv)
    args.compare_pairs = _pairs(args.compare) if args.compare else []
    args.noise_list = []
    if args.noise_check:
        try:
            args.noise_list = [int(v) for v in args.noise_check.split(",") if v.strip()]
        except ValueError:
            raise SystemExit(f"--noise-check: comma-separated integers, got {args.noise_check!r}.") from None
        if not args.noise_list or any(n <= 0 for n in args.noise_list):
            raise SystemExit(f"--noise-check: positive completion counts, got {args.noise_check!r}.")
        if args.from_json or args.compare:
            raise SystemExit("--noise-check runs on its own: not with --from-json or --compare.")
    args.arm_list = _names(args.arms, ARMS, "arms")
    if "none" not in args.arm_list:
        args.arm_list = ["none", *args.arm_list]  # the reference of every paired difference
    args.setting_list = _names(args.settings, SETTINGS, "settings")
    return args


def _pairs(value: str) -> list[tuple[str, str]]:
    """``"A-B,C-D"`` -> ``[("A", "B"), ("C", "D")]`` (arm names have no hyphen)."""
    pairs = []
    for item in (v.strip() for v in value.split(",") if v.strip()):
        parts = item.split("-")
        if len(parts) != 2 or not all(parts):
            raise SystemExit(f"--compare: each comparison is A-B with two arm names; got {item!r}.")
        pairs.append((parts[0].strip(), parts[1].strip()))
    if not pairs:
        raise SystemExit(f"--compare: no comparison in {value!r}.")
    return pairs


def _check_arms(pairs: list[tuple[str, str]], arms: list[str]) -> None:
    unknown = sorted({a for pair in pairs for a in pair} - set(arms))
    if unknown:
        raise SystemExit(f"--compare: arms {unknown} were not run; the arms are {', '.join(arms)}.")


def _rounded(value, digits: int = 6):
    """``value`` with every float rounded to ``digits`` significant digits (a smaller JSON; NaN becomes null)."""
    if isinstance(value, float):
        return None if math.isnan(value) else float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v, digits) for v in value]
    return value


def write(result: dict, out: Path) -> str:
    """Write the JSON, the markdown table and the plot of ``result`` to ``out``; return the table."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "toy_multidomain.json", "w") as f:
        json.dump(_rounded(result), f, separators=(",", ":"))
    table = markdown(result)
    (out / "toy_multidomain.md").write_text(table)
    plot(result, out / "toy_multidomain.png")
    return table


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    given = sys.argv[1:] if argv is None else argv
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *given])
    if args.from_json:
        source = Path(args.from_json)
        out = Path(args.out) if args.out else source.parent
        result = json.loads(source.read_text())
        domains, settings = result["size"]["domains"], list(result["settings"])
        result["summary"] = summarize(result["runs"], domains, result["arms"], settings)
        if args.compare_pairs:  # only the comparison table; the saved table and plot are left as they are
            _check_arms(args.compare_pairs, result["arms"])
            result["comparisons"] = compare(result["runs"], domains, settings, args.compare_pairs)
            table = compare_markdown(result["comparisons"], domains, command)
            out.mkdir(parents=True, exist_ok=True)
            (out / "toy_multidomain_compare.md").write_text(table)
            print(table)
            return result
        if result.get("compare"):
            result["comparisons"] = compare(result["runs"], domains, settings, _pairs(",".join(result["compare"])))
        print(write(result, out))
        return result
    size = Size(**asdict(QUICK if args.quick else DEFAULT))
    if args.steps is not None:
        size.steps = args.steps
    if args.eval_every is not None:
        size.eval_every = args.eval_every
    if size.steps < len(size.domains) or size.eval_every < 1:
        raise SystemExit(f"--steps must be >= {len(size.domains)} (sequential phases) and --eval-every >= 1.")
    seeds = list(range(args.seeds if args.seeds is not None else (2 if args.quick else 10)))
    out = Path(args.out) if args.out else ROOT / ("runs/toy_multidomain_quick" if args.quick else "docs/results")
    if args.noise_list:
        bad = [n for n in args.noise_list if n % size.num_generations]
        if bad:
            raise SystemExit(f"--noise-check: {bad} are not multiples of num_generations={size.num_generations}.")
        return noise_check(args, size, command, out)
    _check_arms(args.compare_pairs, args.arm_list)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    jobs = [(s, a, seed) for seed in seeds for s in args.setting_list for a in args.arm_list]
    print(f"{len(seeds)} warm starts, then {len(jobs)} GRPO runs of {size.steps} steps on {args.workers} workers", flush=True)
    runs = []
    with _warm_started_pool(size, seeds, args.workers, start) as (pool, paths, warm):
        futures = [pool.submit(run_arm, size, s, a, seed, paths[seed]) for s, a, seed in jobs]
        for i, future in enumerate(futures):
            run = future.result()
            runs.append(run)
            final = _mean([run["eval"][d][-1] for d in size.domains])
            print(f"[{i + 1}/{len(jobs)}] {run['setting']:8s} {run['arm']:16s} seed {run['seed']:2d}: mean final "
                  f"{final:.3f} ({run['seconds']:.1f} s, elapsed {time.perf_counter() - start:.0f} s)", flush=True)
    wall = time.perf_counter() - start
    result = {
        "command": command, "wall_seconds": wall, "workers": args.workers, "seeds": seeds,
        "arms": args.arm_list, "arm_configs": {a: ARMS[a] for a in args.arm_list},
        "settings": {s: SETTINGS[s] for s in args.setting_list}, "size": asdict(size) | {"domains": list(size.domains)},
        "warm_starts": warm, "summary": summarize(runs, list(size.domains), args.arm_list, args.setting_list),
        "runs": runs,
    }
    if args.compare_pairs:
        result["compare"] = [f"{a}-{b}" for a, b in args.compare_pairs]
        result["comparisons"] = compare(runs, list(size.domains), args.setting_list, args.compare_pairs)
    table = write(result, out)
    print("\n" + table)
    print(f"wrote {out}/toy_multidomain.md, .json, .png ({wall:.0f} s)")
    return result


if __name__ == "__main__":
    main()
