"""``MGSGRPOTrainer``: ``GRPOTrainer`` whose domains' gradients go through :mod:`mgs` surgery.

How the gradients are split, without touching TRL's loss code: during a training step,
``_get_per_token_logps_and_entropies`` hands the stock loss *leaf copies* of the per-token
log-probabilities, entropies and MoE auxiliary loss, and keeps the real tensors. Stock
``training_step`` then runs unchanged (loss, gradient-accumulation scaling, GradScaler,
``accelerator.backward``), but its backward stops at those leaves. Their ``.grad`` is exactly the
upstream gradient stock GRPO would propagate into the model, for every ``loss_type``. Split by the
rows' domains, each part is backpropagated through the model inside ``surgery.domain(d)``. The
auxiliary loss goes through ``surgery.shared()``. At the accumulation boundary, ``surgery.apply()``
writes ``p.grad`` before the trainer clips and steps.
"""

from __future__ import annotations

import torch
from accelerate.utils import DistributedType, gather
from trl import GRPOTrainer

import mgs
from trl_mgs.config import MGSGRPOConfig

DOMAIN_IDS = "mgs_domain_ids"
"""Key of the per-row domain index in TRL's generation batch (it survives buffering, shuffling and splitting)."""


class MGSGRPOTrainer(GRPOTrainer):
    """A drop-in ``GRPOTrainer`` for multi-domain data: pass an :class:`MGSGRPOConfig` and a dataset with a
    domain column. ``surgery="none"`` trains exactly like ``GRPOTrainer``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, MGSGRPOConfig):
            raise TypeError(f"MGSGRPOTrainer needs an MGSGRPOConfig; got {type(self.args).__name__}.")
        dp_group = None
        if self.accelerator.num_processes > 1:
            kind = self.accelerator.distributed_type
            if kind not in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
                # FSDP's and DeepSpeed's hooks would reduce every domain's backward into whichever buffer is active.
                raise NotImplementedError(
                    f"MGSGRPOTrainer supports single-process and DDP (MULTI_CPU / MULTI_GPU) training; got {kind}."
                )
            # DDP: forward and backward run under no_sync(); surgery averages each domain over the ranks.
            dp_group = torch.distributed.group.WORLD
        found = self._domains_in_dataset()
        domains = self.args.domains or found
        if found is not None and self.args.domains:
            unknown = sorted(set(found) - set(domains))
            if unknown:
                raise ValueError(
                    f"the training dataset has domains {unknown} that MGSGRPOConfig.domains {list(domains)} does not list."
                )
        if domains is None:
            raise ValueError(
                "MGSGRPOConfig.domains must be set when the training dataset has no column list (e.g. an IterableDataset)."
            )
        options = self.args.surgery_options(domains=domains)
        self.surgery = mgs.GradientSurgery(self.model, **vars(options), dp_group=dp_group)
        self._captured: list | None = None
        self._row_domains: torch.Tensor | None = None

    # ------------------------------------------------------------------ domains from the data
    def _domains_in_dataset(self) -> list[str] | None:
        """The sorted distinct domains of the training set, or None when it cannot be read (iterable datasets)."""
        column, dataset = self.args.domain_column, self.train_dataset
        names = getattr(dataset, "column_names", None)
        if names is None:
            return None
        if column not in names:
            raise ValueError(f"the training dataset has no domain column {column!r}; its columns are {names}. "
                             "Set MGSGRPOConfig.domain_column.")
        return sorted(set(dataset[column]))

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.args.domain_column not in self._signature_columns:  # keep it under remove_unused_columns=True
            self._signature_columns = [*self._signature_columns, self.args.domain_column]

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        column = self.args.domain_column
        rows = []
        for row in inputs:
            if column not in row:
                raise KeyError(f"a training row has no domain column {column!r}; its keys are {sorted(row)}.")
            name = row[column]
            if name not in self.surgery.domains:
                raise ValueError(f"unknown domain {name!r} in column {column!r}; the known domains are {list(self.surgery.domains)}.")
            rows.append(self.surgery.domains.index(name))
        output[DOMAIN_IDS] = torch.tensor(rows, device=self.accelerator.device)
        if self.model.training:
            self._log_domain_metrics(output[DOMAIN_IDS], output["completion_mask"].sum(dim=1))
        return output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards_per_func = rewards_per_func  # already gathered over ranks, in rank order
        return rewards_per_func

    def _log_domain_metrics(self, local_ids: torch.Tensor, local_lengths: torch.Tensor) -> None:
        """Per-domain reward mean/std and completion length over the whole generation batch (all ranks)."""
        ids, lengths = gather(local_ids), gather(local_lengths).float()  # same rank order as the rewards
        weights = self.reward_weights.to(self._rewards_per_func.device).unsqueeze(0)
        rewards = (self._rewards_per_func * weights).nansum(dim=1)  # the scalar reward GRPO uses
        metrics = self._metrics["train"]
        for d, name in enumerate(self.surgery.domains):
            rows = ids == d
            present = bool(rows.any())
            nan = float("nan")
            metrics[f"mgs/reward/{name}/mean"].append(float(rewards[rows].mean()) if present else nan)
            metrics[f"mgs/reward/{name}/std"].append(float(rewards[rows].std()) if rows.sum() > 1 else nan)
            metrics[f"mgs/completion_length/{name}"].append(float(lengths[rows].mean()) if present else nan)

    # ------------------------------------------------------------------ per-domain backward
    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        logps, entropies, aux_loss = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        if self._captured is None or not torch.is_grad_enabled():  # generation-time and reference passes
            return logps, entropies, aux_loss
        real = (logps, entropies, aux_loss)
        leaves = tuple(t.detach().requires_grad_() if t is not None and t.requires_grad else t for t in real)
        self._captured.append((real, leaves))
        return leaves

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.model.training:
            self._row_domains = inputs[DOMAIN_IDS]
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def training_step(self, model, inputs, num_items_in_batch):
        self._captured = []
        with self.accelerator.no_sync(model):  # DDP decides at forward time; surgery reduces per domain instead
            try:
                loss = super().training_step(model, inputs, num_items_in_batch)  # stock; backward stops at the leaves
                captured = self._captured
            finally:
                self._captured = None
            for real, leaves in captured:
                self._backward_by_domain(real, leaves, self._row_domains)
        if self.accelerator.sync_gradients:
            stats = self.surgery.apply(step=self.state.global_step)
            self._log_surgery(stats)
        return loss

    def _backward_by_domain(self, real, leaves, row_domains: torch.Tensor) -> None:
        """Backpropagate each domain's rows of the upstream gradient into that domain's buffer."""
        pairs = [(t, leaf.grad) for t, leaf in zip(real[:2], leaves[:2]) if t is not None and leaf.grad is not None]
        present = row_domains.unique().tolist()
        for i, d in enumerate(present):
            mask = (row_domains == d).unsqueeze(1)
            with self.surgery.domain(self.surgery.domains[d]):
                torch.autograd.backward(
                    [t for t, _ in pairs],
                    [g * mask for _, g in pairs],
                    retain_graph=i < len(present) - 1 or real[2] is not None,
                )
        aux, aux_leaf = real[2], leaves[2]
        if aux is not None and aux_leaf is not None and aux_leaf.grad is not None:
            with self.surgery.shared():
                aux.backward(aux_leaf.grad)

    def _log_surgery(self, stats: dict[str, torch.Tensor]) -> None:
        metrics = self._metrics["train"]
        for key, value in stats.items():
            if value.ndim == 0:
                metrics[f"mgs/{key}"].append(float(value))
