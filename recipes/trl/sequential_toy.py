"""Sequential multi-domain GRPO on the toy domains with a curriculum (issue 19), then mgs-forgetting on its phases.

    python recipes/trl/sequential_toy.py --out runs/sequential_toy                       # copy -> reverse -> sort
    python recipes/trl/sequential_toy.py --out runs/sequential_toy --order sort,reverse,copy --refresh 0.1
    mgs-forgetting --base runs/sequential_toy/base --phase copy=runs/sequential_toy/copy \\
        --phase reverse=runs/sequential_toy/reverse --phase sort=runs/sequential_toy/sort --eval toy

The prompts are laid out by :func:`mgs.plan_curriculum` with :func:`mgs.sequential_phases` (one phase per domain, an
optional final refresh of the first domain taking ``--refresh`` of the steps; the same total), one curriculum batch
per GRPO step (``shuffle_dataset=False``, ``per_device_train_batch_size`` = prompts per step × ``num_generations``).
A callback saves the model after each phase (``OUT/<domain>``; a refresh phase as ``OUT/<domain>_refresh``), and the
warm start as ``OUT/base``. CPU, no download: the tiny Qwen2 of :mod:`mgs_tools.toy`, warm-started by
:func:`mgs_tools.toy.train_toy`. Surgery is off (``surgery="none"``): each batch holds one domain.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback

from mgs import plan_curriculum, sequential_phases
from mgs_tools import toy
from trl_mgs import MGSGRPOConfig, MGSGRPOTrainer


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for base/ and one folder per phase")
    parser.add_argument("--order", default="copy,reverse,sort", help="the phases' domains, in order")
    parser.add_argument("--steps", type=int, default=60, help="GRPO steps in all")
    parser.add_argument("--refresh", type=float, default=0.0, help="share of the steps for a final refresh phase")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--warm-steps", type=int, default=300, help="supervised warm-start steps")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    order = [d.strip() for d in args.order.split(",") if d.strip()]
    if not order or any(d not in toy.TRANSFORMS for d in order):
        parser.error(f"--order takes toy domains ({', '.join(toy.TRANSFORMS)}); got {args.order!r}.")
    try:
        phases = sequential_phases(order, args.steps, refresh_fraction=args.refresh)
    except ValueError as error:
        parser.error(str(error))
    pools = {d: toy.domain_rows(d, args.steps * args.prompts, seed=args.seed + 1) for d in order}
    plan = plan_curriculum(pools, phases, args.prompts, seed=args.seed)
    rows = [{"prompt": pools[d][i]["prompt"], "digits": pools[d][i]["digits"], "domain": d} for d, i in plan.rows()]

    model, tokenizer = toy.train_toy(args.warm_steps, seed=args.seed)
    saved = {"base": os.path.join(args.out, "base")}
    model.save_pretrained(saved["base"])
    tokenizer.save_pretrained(saved["base"])
    ends = {}
    for k, name in enumerate(plan.phase_names):
        folder = name.replace(" (refresh)", "_refresh")
        ends[plan.boundaries[k + 1]] = folder

    class SavePhases(TrainerCallback):
        def on_step_end(self, targs, state, control, model=None, **kwargs):
            if state.global_step in ends:
                path = os.path.join(args.out, ends[state.global_step])
                model.save_pretrained(path)
                tokenizer.save_pretrained(path)
                saved[ends[state.global_step]] = path

    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        config = MGSGRPOConfig(
            output_dir=tmp, use_cpu=True, bf16=False, beta=0.0, num_generations=args.num_generations,
            per_device_train_batch_size=args.prompts * args.num_generations, gradient_accumulation_steps=1,
            shuffle_dataset=False, max_completion_length=6, temperature=1.0, learning_rate=args.learning_rate,
            lr_scheduler_type="constant", max_steps=plan.num_batches, logging_steps=1, save_strategy="no",
            report_to="none", seed=args.seed, disable_tqdm=True, surgery="none", domains=sorted(order),
            domain_column="domain", dataloader_num_workers=0)
        trainer = MGSGRPOTrainer(model=model, reward_funcs=[toy.transform_reward], args=config,
                                 train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                                 callbacks=[SavePhases()])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    phase_args = " ".join(f"--phase {name}={path}" for name, path in saved.items() if name != "base")
    print(f"wrote {', '.join(saved.values())}\nnext: mgs-forgetting --base {saved['base']} {phase_args} --eval toy")
    return saved


if __name__ == "__main__":
    main()
