"""MGSGRPOTrainer against the stock GRPOTrainer (stubbed generation, tiny model)."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

import torch
from _tiny import COMMON, StubGRPOTrainer, dataset, make_stub_mgs_trainer_class, reward, tiny_model, tiny_tokenizer
from transformers import TrainerCallback
from trl import GRPOConfig

from trl_mgs import MGSGRPOConfig


class GradRecorder(TrainerCallback):
    """Pre-optimizer-step gradients (max_grad_norm=0 disables clipping, so they are pre-clip)."""

    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


def _train(trainer_cls, config_cls, tmp_path, steps, **overrides):
    args = config_cls(output_dir=str(tmp_path), max_steps=steps, **(COMMON | overrides))
    recorder = GradRecorder()
    trainer = trainer_cls(
        model=tiny_model(), reward_funcs=[reward], args=args, train_dataset=dataset(),
        processing_class=tiny_tokenizer(), callbacks=[recorder],
    )
    trainer.train()
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    return trainer, recorder.grads, params


LOSS_CASES = [
    ("grpo", 1, 1), ("bnpo", 2, 1), ("dr_grpo", 1, 2), ("dapo", 2, 2),
    ("cispo", 2, 1), ("sapo", 1, 2), ("luspo", 2, 2), ("vespo", 1, 1),
]


@pytest.mark.parametrize("loss_type, grad_accum, iterations", LOSS_CASES)
def test_surgery_none_trains_like_stock(tmp_path, loss_type, grad_accum, iterations):
    kw = dict(loss_type=loss_type, gradient_accumulation_steps=grad_accum, num_iterations=iterations)
    _, stock_grads, stock_params = _train(StubGRPOTrainer, GRPOConfig, tmp_path / "stock", 3, **kw)
    trainer, grads, params = _train(make_stub_mgs_trainer_class(), MGSGRPOConfig, tmp_path / "mgs", 3, surgery="none", **kw)
    assert len(grads) == len(stock_grads) == 3
    for step, (g, s) in enumerate(zip(grads, stock_grads)):
        assert g.keys() == s.keys()
        total = sum(float(v.norm()) for v in s.values())
        assert total > 0, "stock gradient is zero: the test could not fail"
        for n in s:
            assert torch.allclose(g[n], s[n], rtol=1e-5, atol=1e-7), f"step {step} {n}"
    for n in stock_params:
        assert torch.allclose(params[n], stock_params[n], rtol=1e-5, atol=1e-6), n
    assert max(trainer.domains_per_microbatch) >= 2, "no mixed micro-batch: the domain split went untested"
    history = trainer.state.log_history
    assert any("mgs/conflict_frac" in h for h in history)
