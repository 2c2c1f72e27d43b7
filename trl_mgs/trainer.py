"""``MGSGRPOTrainer``: ``GRPOTrainer`` whose domains' gradients go through :mod:`mgs` surgery.

How the gradients are split, without touching TRL's loss code: during a training step,
``_get_per_token_logps_and_entropies`` runs the model once per domain on that domain's rows and hands
the stock loss *leaf copies* of the per-token log-probabilities and entropies, reassembled in the
micro-batch's row order; it keeps the real per-domain tensors. Stock ``training_step`` then runs
unchanged (loss, gradient-accumulation scaling, GradScaler, ``accelerator.backward``), but its
backward stops at those leaves. Their ``.grad`` is exactly the upstream gradient stock GRPO would
propagate into the model, for every ``loss_type``. Each domain's rows of it are backpropagated
through that domain's forward inside ``surgery.domain(d)``: K domains cost one backward of the
micro-batch, not K. (With image inputs or a MoE auxiliary loss the forward cannot be split by row:
one forward, then K masked backward passes; the auxiliary loss goes through ``surgery.shared()``.)
At the accumulation boundary, ``surgery.apply()`` writes ``p.grad`` before the trainer clips and
steps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from accelerate.utils import DistributedType, gather
from trl import GRPOTrainer
from trl.trainer.utils import split_tensor_dict

import mgs
from mgs.integration import domain_moments, domain_summary, load_surgery_state, save_surgery_state, scalar_metrics
from trl_mgs import _upstream
from trl_mgs.config import MGSGRPOConfig

DOMAIN_IDS = "mgs_domain_ids"
"""Key of the per-row domain index in TRL's generation batch (it survives buffering, shuffling and splitting)."""

ROW_ALIGNED_INPUTS = ("token_type_ids", "mm_token_type_ids")
"""Extra model inputs of ``_get_per_token_logps_and_entropies`` that are indexed by row like ``input_ids``."""


@dataclass
class _Capture:
    """One forward of a training micro-batch: per domain (id, its rows, its real outputs) and the leaves the
    stock loss saw. ``masked``: the outputs cover the whole micro-batch (one forward), so each domain's pass
    masks the other rows' gradient; otherwise each domain's outputs come from a forward of its rows only."""

    parts: list[tuple[int, torch.Tensor, tuple[torch.Tensor | None, ...]]]
    leaves: tuple[torch.Tensor | None, ...]
    masked: bool
    aux: torch.Tensor | None


def _leaf(t: torch.Tensor | None) -> torch.Tensor | None:
    """A detached copy the stock loss differentiates: its ``.grad`` is the upstream gradient at ``t``."""
    return t.detach().requires_grad_() if t is not None and t.requires_grad else t


def _regroup_by_domain(batches: list[dict]) -> list[dict]:
    """The same rows in the same number of micro-batches, stable-sorted by domain (TRL's shuffle order within a
    domain), so that most micro-batches hold one domain. Image batches are left as they are."""
    if any("pixel_values" in b and b["pixel_values"] is not None for b in batches):
        return batches
    merged = {}
    for key, first in batches[0].items():
        values = [b[key] for b in batches]
        if first is None or (isinstance(first, torch.Tensor) and first.ndim == 0):
            merged[key] = first  # per-batch constants (e.g. num_items_in_batch) are the same in every split
        elif isinstance(first, torch.Tensor):
            merged[key] = torch.cat(values)
        else:
            merged[key] = [row for value in values for row in value]
    order = torch.argsort(merged[DOMAIN_IDS], stable=True)
    for key, value in merged.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            merged[key] = value[order.to(value.device)]
        elif isinstance(value, list):
            merged[key] = [value[i] for i in order.tolist()]
    return split_tensor_dict(tensor_dict=merged, num_chunks=len(batches))


def _scatter_rows(parts: list[torch.Tensor | None], rows: list[torch.Tensor], n: int) -> torch.Tensor | None:
    """Reassemble per-domain row blocks into one [n, ...] leaf in the micro-batch's row order."""
    if parts[0] is None:
        return None
    out = parts[0].new_empty((n, *parts[0].shape[1:]))
    for block, index in zip(parts, rows):
        out.index_copy_(0, index, block.detach())
    return out.requires_grad_(parts[0].requires_grad)


class MGSGRPOTrainer(GRPOTrainer):
    """A drop-in ``GRPOTrainer`` for multi-domain data: pass an :class:`MGSGRPOConfig` and a dataset with a
    domain column. ``surgery="none"`` trains exactly like ``GRPOTrainer``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, MGSGRPOConfig):
            raise TypeError(f"MGSGRPOTrainer needs an MGSGRPOConfig; got {type(self.args).__name__}.")
        kind = self.accelerator.distributed_type
        if kind != DistributedType.NO and not kind.name.startswith("MULTI_"):
            # FSDP's and DeepSpeed's hooks reduce every domain's backward into whichever buffer is active.
            raise NotImplementedError(
                f"MGSGRPOTrainer supports one process and DDP (distributed type MULTI_CPU / MULTI_GPU / ...); got {kind}. "
                "For FSDP2, use mgs.GradientSurgery directly on a fully_shard model (docs/core.md)."
            )
        _upstream.check_trainer(self)
        # DDP: forward and backward run under no_sync(); surgery averages each domain over the ranks.
        dp_process_group = torch.distributed.group.WORLD if self.accelerator.num_processes > 1 else None
        self.domain_index = self.args.domain_index()
        domains = self._domains_in_dataset()
        # Domain-pure micro-batches leave the gradient unchanged unless a term depends on the micro-batch's make-up.
        self.orders_by_domain = (self.args.order_by_domain and self.args.loss_type != "bnpo"
                                 and self.args.top_entropy_quantile >= 1.0 and not self.aux_loss_enabled)
        options = self.args.surgery_options(domains=domains)
        self.surgery = mgs.GradientSurgery(self.model, **vars(options), dp_process_group=dp_process_group)
        self._captured: list | None = None
        self._row_domains: torch.Tensor | None = None

    # ------------------------------------------------------------------ domains from the data
    def _domains_in_dataset(self) -> tuple[str, ...]:
        """The configured domains, checked against the training set, or the training set's sorted distinct domains.
        A dataset without a column list (an IterableDataset) cannot be read ahead: it needs configured domains."""
        index, dataset = self.domain_index, self.train_dataset
        names = getattr(dataset, "column_names", None)
        if names is None:
            if index.domains is None:
                raise ValueError("MGSGRPOConfig.domains must be set when the training dataset has no column list "
                                 "(e.g. an IterableDataset).")
            return index.domains
        if index.field not in names:
            raise index.missing_field(names, ValueError)
        return index.discover(index.of_values(dataset[index.field]))

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        column = self.domain_index.field
        if column not in self._signature_columns:  # keep it under remove_unused_columns=True
            self._signature_columns = [*self._signature_columns, column]

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs=inputs)
        ids = self.domain_index.ids(self.domain_index.of_rows(inputs), self.surgery.domains)
        output[DOMAIN_IDS] = torch.tensor(ids, device=self.accelerator.device)
        if self.model.training:
            self._log_domain_metrics(output[DOMAIN_IDS], output["completion_mask"].sum(dim=1))
        return output

    def _prepare_inputs(self, generation_batch):
        before = self._buffered_inputs
        inputs = super()._prepare_inputs(generation_batch=generation_batch)
        regenerated = self.model.training and self._buffered_inputs is not before
        if regenerated and self.orders_by_domain and len(self._buffered_inputs) > 1:
            self._buffered_inputs = _regroup_by_domain(self._buffered_inputs)
            inputs = self._buffered_inputs[self._step % self.args.steps_per_generation]
        return inputs

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs=inputs, prompts=prompts, completions=completions,
                                                      completion_ids_list=completion_ids_list)
        self._rewards_per_func = rewards_per_func  # already gathered over ranks, in rank order
        return rewards_per_func

    def _log_domain_metrics(self, local_ids: torch.Tensor, local_lengths: torch.Tensor) -> None:
        """Per-domain reward mean/std and completion length over the whole generation batch (all ranks)."""
        ids, lengths = gather(local_ids), gather(local_lengths).float()  # same rank order as the rewards
        weights = self.reward_weights.to(self._rewards_per_func.device).unsqueeze(0)
        rewards = (self._rewards_per_func * weights).nansum(dim=1)  # the scalar reward GRPO uses
        k, domains = len(self.surgery.domains), self.surgery.domains
        moments = torch.stack([domain_moments(rewards, ids, k), domain_moments(lengths, ids, k)])
        summary = domain_summary(moments, domains, [("reward_mean", "reward_std"), ("completion_length", None)])
        metrics = self._metrics["train"]
        for key, value in summary.items():
            metrics[key].append(value)

    # ------------------------------------------------------------------ per-domain backward
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **extra):
        stock = super()._get_per_token_logps_and_entropies
        if self._captured is None or not torch.is_grad_enabled():  # generation-time and reference passes
            return stock(model=model, input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep,
                         batch_size=batch_size, compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **extra)
        row_domains = self._row_domains
        if compute_aux_loss or any(v is not None for k, v in extra.items() if k not in ROW_ALIGNED_INPUTS):
            # A batch-level aux loss or image inputs do not split by row: one forward, K masked backward passes.
            real = stock(model=model, input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep,
                         batch_size=batch_size, compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **extra)
            parts = [(d, (row_domains == d).nonzero().squeeze(1), real[:2]) for d in row_domains.unique().tolist()]
            leaves = tuple(_leaf(t) for t in real)
            self._captured.append(_Capture(parts, leaves, masked=True, aux=real[2]))
            return leaves
        # One forward per domain on its rows: the backward passes then cost what one backward of the whole
        # micro-batch costs. The loss still sees every row in stock order, so it is unchanged.
        parts = []
        for d in row_domains.unique().tolist():
            rows = (row_domains == d).nonzero().squeeze(1)
            sub = {k: (v.index_select(0, rows) if v is not None else None) for k, v in extra.items()}
            logps, entropies, _ = stock(model=model, input_ids=input_ids.index_select(0, rows),
                                        attention_mask=attention_mask.index_select(0, rows),
                                        logits_to_keep=logits_to_keep, batch_size=batch_size,
                                        compute_entropy=compute_entropy, compute_aux_loss=False, **sub)
            parts.append((d, rows, (logps, entropies)))
        leaves = tuple(_scatter_rows([p[2][i] for p in parts], [p[1] for p in parts], len(row_domains))
                       for i in range(2)) + (None,)
        self._captured.append(_Capture(parts, leaves, masked=False, aux=None))
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
            for capture in captured:
                self._backward_by_domain(capture)
        if self.accelerator.sync_gradients:
            stats = self.surgery.apply(step=self.state.global_step)
            self._log_surgery(stats)
        return loss

    def _backward_by_domain(self, capture: _Capture) -> None:
        """Backpropagate each domain's rows of the upstream gradient (at the leaves) into that domain's buffer."""
        for i, (d, rows, real) in enumerate(capture.parts):
            outputs, grads = [], []
            for t, leaf in zip(real, capture.leaves):
                if t is None or leaf is None or leaf.grad is None:
                    continue
                outputs.append(t)
                if capture.masked:  # every domain's pass runs through the whole micro-batch's graph
                    mask = torch.zeros(leaf.grad.size(0), 1, dtype=leaf.grad.dtype, device=leaf.grad.device)
                    grads.append(leaf.grad * mask.index_fill_(0, rows, 1))
                else:
                    grads.append(leaf.grad.index_select(0, rows))
            if not outputs:
                continue
            retain = capture.masked and (i < len(capture.parts) - 1 or capture.aux is not None)
            with self.surgery.domain(self.surgery.domains[d]):
                torch.autograd.backward(outputs, grads, retain_graph=retain)
        aux_leaf = capture.leaves[2]
        if capture.aux is not None and aux_leaf is not None and aux_leaf.grad is not None:
            with self.surgery.shared():
                capture.aux.backward(aux_leaf.grad)

    # ------------------------------------------------------------------ checkpoints
    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir=output_dir)
        os.makedirs(output_dir, exist_ok=True)  # every rank writes its own file: nodes need not share a filesystem
        save_surgery_state(output_dir, self.accelerator.process_index, self.surgery.state_dict())

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint=checkpoint)
        if checkpoint is not None:
            state = load_surgery_state(checkpoint, self.accelerator.process_index)
            self.surgery.load_state_dict(state["surgery"])

    def _log_surgery(self, stats: dict[str, torch.Tensor]) -> None:
        metrics = self._metrics["train"]
        for key, value in scalar_metrics(stats).items():
            metrics[key].append(value)
