"""Run under torchrun (2 CPU processes): MGSGRPOTrainer(surgery="none", normalize_advantage_by_domain=True) against
stock GRPOTrainer with the test's reference normalisation over both ranks' rows; writes each rank's recorded
advantages and per-step pre-clip gradients to $OUT_DIR/adv_rank{rank}.pt."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _advantage_reference import ReferenceNormalizedGRPO, make_recording_mgs_class  # noqa: E402
from _tiny import train_recording  # noqa: E402
from trl import GRPOConfig  # noqa: E402

from trl_mgs import MGSGRPOConfig  # noqa: E402


def run(cls, config_cls, out, **kw):
    return train_recording(cls, config_cls, out, **({"per_device_train_batch_size": 4, "max_steps": 3, "gradient_accumulation_steps": 2, "scale_rewards": "none"} | kw))


out = os.environ["OUT_DIR"]
rank = int(os.environ["RANK"])
_, reference = run(ReferenceNormalizedGRPO, GRPOConfig, out + "/reference")
mgs, grads = run(make_recording_mgs_class(), MGSGRPOConfig, out + "/mgs", surgery="none",
                 normalize_advantage_by_domain=True)
torch.save({"reference": reference, "grads": grads, "raw": mgs.raw, "final": mgs.final}, f"{out}/adv_rank{rank}.pt")
