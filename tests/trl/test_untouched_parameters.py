"""surgery="none" equals stock GRPOTrainer when parameters get no gradient: frozen mid-run by a callback, or unused
by the loss. Under AdamW with weight decay a parameter whose p.grad is a zero tensor (not None) would move."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

import torch
from _tiny import COMMON, StubGRPOTrainer, dataset, make_stub_mgs_trainer_class, reward, tiny_model, tiny_tokenizer
from transformers import TrainerCallback
from trl import GRPOConfig

from trl_mgs import MGSGRPOConfig


class FreezeEmbeddings(TrainerCallback):
    """Freeze the input embeddings after the first optimizer step (the optimizer still holds them)."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1:
            model.get_input_embeddings().weight.requires_grad_(False)


def _train(trainer_cls, config_cls, tmp_path):
    # AdamW's decoupled weight decay moves every parameter that has a gradient, zero or not; a large epsilon keeps
    # its step linear in the gradient, so rounding-level gradients (k_proj's bias) are not blown up to ±lr
    settings = COMMON | {"optim": "adamw_torch", "weight_decay": 0.5, "adam_epsilon": 1.0, "learning_rate": 0.05,
                         "max_steps": 3}
    if config_cls is MGSGRPOConfig:
        settings["surgery"] = "none"
    model = tiny_model()
    unused = torch.nn.Parameter(torch.ones(4))  # registered but never in the forward: no gradient, ever
    model.register_parameter("unused_for_test", unused)
    trainer = trainer_cls(model=model, reward_funcs=[reward], args=config_cls(output_dir=str(tmp_path), **settings),
                          train_dataset=dataset(), processing_class=tiny_tokenizer(), callbacks=[FreezeEmbeddings()])
    before = model.get_input_embeddings().weight.detach().clone()
    trainer.train()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}, before


def test_frozen_and_unused_parameters_train_like_stock(tmp_path):
    stock, _ = _train(StubGRPOTrainer, GRPOConfig, tmp_path / "stock")
    params, _ = _train(make_stub_mgs_trainer_class(), MGSGRPOConfig, tmp_path / "mgs")
    assert torch.equal(params["unused_for_test"], torch.ones(4))  # AdamW skipped it: p.grad stayed None
    for name in stock:
        assert torch.allclose(params[name], stock[name], rtol=1e-5, atol=1e-6), name
