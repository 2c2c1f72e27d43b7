"""The MGS paper's other baselines, and GDPO, as arms of the toy benchmark (issue 20): kept here so the arms table of
``experiment.py`` only names them.

==============  ================================================================================================
arm             what
==============  ================================================================================================
normadv         surgery="none", ``normalize_advantage_by_domain=True``: the paper's Normalized Advantage
gdpo            surgery="none", one reward function per domain (``trl_mgs.rewards.for_domains``: None on the other
                domains' rows), ``multi_objective_aggregation="normalize_then_sum"`` (TRL's GDPO)
merge_ta        one expert per domain from the warm start, each trained on its domain alone for a third of the steps
                (the sequential arm's phase, so the three experts together cost one run), merged by task arithmetic
                (weights 1/3, λ=1: the experts' mean) with ``mgs_tools.merge`` (mergekit)
merge_ties      the same experts merged by TIES (density 0.5, weights 1, λ=1, normalised by the agreeing weights)
==============  ================================================================================================

Equal total training compute: every arm draws ``steps × prompts_per_domain × domains × num_generations`` completions
and makes ``steps`` optimizer steps. A merge arm's evaluation curve is, at each evaluation step, the merge of the experts
after the same fraction of their training (so at equal compute along the way too); it logs no training statistics
(update norm, change ratio: n/a).
"""

from __future__ import annotations

import time

PAPER_ARMS: dict[str, dict] = {
    "normadv": {"surgery": "none", "normalize_advantage_by_domain": True},
    "gdpo": {"surgery": "none", "gdpo": True},
    "merge_ta": {"surgery": "none", "merge": "task_arithmetic"},
    "merge_ties": {"surgery": "none", "merge": "ties"},
}
"""Arm name -> MGSGRPOConfig overrides (``gdpo`` and ``merge`` are this benchmark's own keys)."""

MERGE = {"task_arithmetic": dict(weights=1 / 3, scale=1.0), "ties": dict(weights=1.0, density=0.5, scale=1.0)}


def gdpo_reward_funcs(domains, scores):
    """One reward function per domain, ``scores(completions, domain, digits) -> list[float]`` on that domain's rows."""
    from trl_mgs.rewards import for_domains

    funcs = []
    for d in domains:
        def one(completions, domain, digits, **kwargs):
            return scores(completions, domain, digits)
        one.__name__ = f"toy_{d}"
        funcs.append(for_domains(one, [d]))
    return funcs


def eval_schedule(size) -> list[int]:
    """The evaluation steps of every arm (``run_arm``'s callback): 0, every ``eval_every`` steps, and the last."""
    return [0] + [g for g in range(1, size.steps + 1) if g % size.eval_every == 0 or g == size.steps]


def run_merge_arm(size, setting: str, arm: str, seed: int, warm_path: str) -> dict:
    """Train the three experts (one phase of the sequential arm each, from the warm start) and merge them.

    The evaluation curve is at the same compute as the other arms' curves: at evaluation step ``s``, the merge of the
    experts after ``s / steps`` of their own training each (snapshots at ``round(s * n_d / steps)`` of expert ``d``'s
    ``n_d`` steps); at step 0 every expert is the warm start, and so is the merge."""
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback

    from mgs_tools.merge import merge_experts
    from mgs_tools.toy import char_tokenizer, target, tiny_causal_lm
    from mgs_tools.toy import score as toy_score
    from toy_multidomain_lib.experiment import (ARMS, SETTINGS, _checksum, _eval_rows, _evaluate, _grpo_config,
                                                _grpo_rows, _phases)
    from trl_mgs import MGSGRPOTrainer

    start = time.perf_counter()
    method = ARMS[arm]["merge"]
    conf = SETTINGS[setting]
    scales = {d: float(conf["reward_scale"].get(d, 1.0)) for d in size.domains}

    def toy_reward(completions, domain, digits, **kwargs):
        return [scales[d] * toy_score(c, target(d, x)) for c, d, x in zip(completions, domain, digits)]

    tokenizer = char_tokenizer()
    warm = torch.load(warm_path, weights_only=True)
    per_step = size.prompts_per_domain * len(size.domains) * size.num_generations
    prompts = per_step // size.num_generations
    rows = _grpo_rows(size, seed, sequential=True)
    schedule = eval_schedule(size)
    snapshots: dict[str, dict[int, dict]] = {}
    for d, (first, last) in _phases(size):
        n = last - first
        wanted = {round(s * n / size.steps) for s in schedule}
        kept = snapshots[d] = {0: warm}

        class Snapshot(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                if state.global_step in wanted:
                    kept[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

        model = tiny_causal_lm(hidden=size.hidden, layers=size.layers, seed=seed)
        model.load_state_dict(warm)
        with tempfile.TemporaryDirectory() as tmp:
            args = _grpo_config(size, seed, tmp, per_step, conf["scale_rewards"], [d], size.learning_rate, n,
                                surgery="none")
            trainer = MGSGRPOTrainer(model=model, reward_funcs=[toy_reward], args=args,
                                     train_dataset=Dataset.from_list(rows[first * prompts:last * prompts]),
                                     processing_class=tokenizer, callbacks=[Snapshot()])
            trainer.remove_callback(PrinterCallback)
            trainer.train()
    model = tiny_causal_lm(hidden=size.hidden, layers=size.layers, seed=seed)
    model.load_state_dict(warm)
    checksum = _checksum(model)
    eval_rows = _eval_rows(size, seed)
    evals: dict[str, list[float]] = {d: [] for d in size.domains}
    for s in schedule:
        experts = {d: snapshots[d][round(s * (last - first) / size.steps)]
                   for d, (first, last) in _phases(size)}
        model.load_state_dict(merge_experts(warm, experts, method=method, **MERGE[method]))
        for d, v in _evaluate(model, tokenizer, eval_rows, size, seed=1000 * seed + s).items():
            evals[d].append(v)
    return {
        "setting": setting, "arm": arm, "seed": seed, "checksum": checksum, "eval_steps": schedule,
        "eval": evals, "train_reward": {d: [None] * size.steps for d in size.domains},  # no mixed training steps
        **{key: [None] * size.steps for key in ("update_norm", "change_ratio", "cosine_global", "conflict_frac")},
        "seconds": time.perf_counter() - start,
    }
