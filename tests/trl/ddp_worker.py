"""Run under torchrun (2 CPU processes): stock GRPOTrainer vs MGSGRPOTrainer(surgery=none) under DDP, then
modular; writes rank 0's per-step pre-clip gradients and each rank's surgery stats to $OUT_DIR."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _tiny import StubGRPOTrainer, make_stub_mgs_trainer_class, train_recording  # noqa: E402
from trl import GRPOConfig  # noqa: E402

from trl_mgs import MGSGRPOConfig  # noqa: E402


def run(cls, config_cls, out, **kw):
    return train_recording(cls, config_cls, out, **({"per_device_train_batch_size": 4, "max_steps": 2} | kw))


out = os.environ["OUT_DIR"]
rank = int(os.environ["RANK"])
_, stock = run(StubGRPOTrainer, GRPOConfig, out + "/stock", gradient_accumulation_steps=2)
# TRL's shuffled order (mixed micro-batches: the per-domain split is exercised); modular sorts by domain (default)
unsorted, none = run(make_stub_mgs_trainer_class(), MGSGRPOConfig, out + "/none", surgery="none",
                     gradient_accumulation_steps=2, order_by_domain=False)
modular, modular_grads = run(make_stub_mgs_trainer_class(), MGSGRPOConfig, out + "/modular", surgery="modular",
                             gradient_accumulation_steps=2)
stats = [h for h in modular.state.log_history if "mgs/conflict_frac" in h]
torch.save({"stock": stock, "none": none, "modular": modular_grads, "stats": stats,
            "domains_per_microbatch": unsorted.domains_per_microbatch}, f"{out}/rank{rank}.pt")

# a row whose domain cannot be read on rank 1 only: the same error on both ranks, no rank left waiting
bad_cls = make_stub_mgs_trainer_class()


class BadRowOnRank1(bad_cls):
    def _generate_and_score_completions(self, inputs):
        if rank == 1:
            inputs = [dict(row, domain=None) if i == 0 else row for i, row in enumerate(inputs)]
        return super()._generate_and_score_completions(inputs)


try:
    run(BadRowOnRank1, MGSGRPOConfig, out + "/bad", surgery="modular", max_steps=1)
    bad_row = None
except ValueError as error:
    bad_row = str(error)
torch.save({"bad_row": bad_row}, f"{out}/bad_rank{rank}.pt")
