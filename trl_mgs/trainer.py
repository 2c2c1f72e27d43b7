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

import contextlib
import inspect
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import DistributedType, gather, parse_flag_from_env, reduce
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import get_config_model_id, split_tensor_dict

import mgs
from mgs.integration import domain_moments, domain_summary, load_surgery_state, save_surgery_state, scalar_metrics
from trl_mgs import _upstream
from trl_mgs._advantage import normalize_generation_batch
from trl_mgs._sources import DomainSource, plan_domains
from trl_mgs.config import MGSGRPOConfig, mgs_fields

DOMAIN_IDS = "mgs_domain_ids"
"""Key of the per-row domain index in TRL's generation batch (it survives buffering, shuffling and splitting)."""

ROW_ALIGNED_INPUTS = ("token_type_ids", "mm_token_type_ids")
"""Extra model inputs of ``_get_per_token_logps_and_entropies`` that are indexed by row like ``input_ids``."""


@dataclass
class _Capture:
    """One forward of a training micro-batch: per domain (id, its rows, its real outputs) and the leaves the
    stock loss saw. ``masked``: the outputs cover the whole micro-batch (one forward), so each domain's pass
    masks the other rows' gradient; otherwise each domain's outputs come from a forward of its rows only."""

    parts: list[_Part]
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


_GRPO_INIT = inspect.signature(GRPOTrainer.__init__)


def _grpo_arguments(args: tuple, kwargs: dict) -> dict[str, Any]:
    """``GRPOTrainer.__init__``'s arguments by name, however they were passed (a wrong call raises as stock's)."""
    bound = _GRPO_INIT.bind(None, *args, **kwargs)
    return {name: value for name, value in bound.arguments.items() if name != "self"}


def _mgs_config(config: Any, model: Any) -> MGSGRPOConfig:
    """The trainer's config: ``config`` itself; for ``None``, ``GRPOTrainer``'s default (output directory
    ``{model name}-GRPO``) as an ``MGSGRPOConfig``; a plain ``GRPOConfig`` carried over, with a warning."""
    if isinstance(config, MGSGRPOConfig):
        return config
    if config is None:
        name = model if isinstance(model, str) else get_config_model_id(config=model.config)
        return MGSGRPOConfig(f"{name.split('/')[-1]}-GRPO")
    if isinstance(config, GRPOConfig):
        defaults = ", ".join(f"{name}={f.default!r}" for name, f in mgs_fields().items())
        warnings.warn(
            f"MGSGRPOTrainer got a {type(config).__name__}, not an MGSGRPOConfig: every field is carried over into an "
            f"MGSGRPOConfig, with the surgery settings at their defaults ({defaults}). Pass an MGSGRPOConfig, or "
            "MGSGRPOConfig.from_grpo_config(config, surgery=...), to choose them.", UserWarning, stacklevel=3,
        )
        return MGSGRPOConfig.from_grpo_config(config)
    raise TypeError(f"MGSGRPOTrainer needs an MGSGRPOConfig (a GRPOConfig is carried over); got "
                    f"{type(config).__name__}. Build MGSGRPOConfig(output_dir=..., ...) with the same fields.")


FSDP2_CONFIG = "recipes/trl/accelerate_fsdp2.yaml"
"""The accelerate config of the sharded path this adapter supports (``fsdp_version: 2``; TRL ships the same settings
as ``trl/accelerate_configs/fsdp2.yaml``)."""

_SUPPORTED_DISTRIBUTED = ("MGSGRPOTrainer supports one process, DDP (distributed type MULTI_CPU / MULTI_GPU / ...) and "
                          "FSDP2; got {}. {}")
_USE_FSDP2 = (f"For sharded full fine-tuning use FSDP2: accelerate launch --config_file {FSDP2_CONFIG} (fsdp_version: "
              "2), or MGSGRPOConfig(fsdp=True, fsdp_config={'version': 2}).")
_DEEPSPEED_REASON = ("Under DeepSpeed ZeRO the gradients live in DeepSpeed's partitioned buffers, not in p.grad, so they "
                     "cannot be kept per domain. " + _USE_FSDP2)
_FSDP1_REASON = ("FSDP1 (fsdp_version 1) flattens each wrapped module's parameters into one FlatParameter, so their "
                 "gradients cannot be split by module. " + _USE_FSDP2)


def _fsdp_version(config: MGSGRPOConfig) -> int:
    """The FSDP version the config or the launcher asks for (accelerate's default, 1, for a bare ACCELERATE_USE_FSDP)."""
    if config.fsdp and config.fsdp_plugin_args is not None:
        return int(config.fsdp_plugin_args.get("fsdp_version", 2))
    return int(os.environ.get("FSDP_VERSION", "1"))


def _refuse_sharded_setups(config: MGSGRPOConfig) -> None:
    """Refuse, before any model is loaded, a sharded strategy whose gradients cannot be kept per domain: DeepSpeed
    (partitioned gradient buffers) and FSDP1 (flat parameters). FSDP2 is supported."""
    asked = reason = None
    if config.deepspeed:
        asked, reason = f"DeepSpeed (MGSGRPOConfig.deepspeed={config.deepspeed!r})", _DEEPSPEED_REASON
    elif parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        asked, reason = "DeepSpeed (ACCELERATE_USE_DEEPSPEED, set by accelerate launch)", _DEEPSPEED_REASON
    elif (config.fsdp or parse_flag_from_env("ACCELERATE_USE_FSDP")) and _fsdp_version(config) != 2:
        where = (f"MGSGRPOConfig.fsdp_config version {_fsdp_version(config)}" if config.fsdp
                 else f"ACCELERATE_USE_FSDP with FSDP_VERSION={os.environ.get('FSDP_VERSION', '1 (the default)')}")
        asked, reason = f"FSDP1 ({where})", _FSDP1_REASON
    else:
        state = getattr(config, "distributed_state", None)
        kind = getattr(state, "distributed_type", DistributedType.NO)
        if kind == DistributedType.DEEPSPEED:
            asked, reason = str(kind), _DEEPSPEED_REASON
        elif kind not in (DistributedType.NO, DistributedType.FSDP) and not kind.name.startswith("MULTI_"):
            asked, reason = str(kind), _USE_FSDP2
    if asked is not None:
        raise NotImplementedError(_SUPPORTED_DISTRIBUTED.format(asked, reason))


def _refuse_accelerator(accelerator: Any) -> None:
    """The same refusals for the distributed type accelerate finally chose (e.g. from its config file)."""
    kind = accelerator.distributed_type
    if kind == DistributedType.NO or kind.name.startswith("MULTI_") or accelerator.is_fsdp2:
        return
    reason = {DistributedType.DEEPSPEED: _DEEPSPEED_REASON, DistributedType.FSDP: _FSDP1_REASON}.get(kind, _USE_FSDP2)
    raise NotImplementedError(_SUPPORTED_DISTRIBUTED.format(kind, reason))


@dataclass
class _Part:
    """One domain's pass over a micro-batch: its rows and the real outputs of their forward. ``padding``: this rank
    has no row of the domain but another rank has, so a zero-gradient pass over one row keeps FSDP2's collectives
    (all-gathers, reduce-scatters) in the same order on every rank."""

    domain: int
    rows: torch.Tensor
    outputs: tuple[torch.Tensor | None, ...]
    padding: bool = False


class MGSGRPOTrainer(GRPOTrainer):
    """A drop-in ``GRPOTrainer`` for multi-domain data: the same arguments, an :class:`MGSGRPOConfig` (``args=None``
    builds one; a ``GRPOConfig`` is carried over with a warning), and a domain per rollout, from a dataset column,
    an environment attribute or ``MGSGRPOConfig.domains`` (:mod:`trl_mgs._sources`). ``surgery="none"`` trains
    exactly like ``GRPOTrainer``; on data without domains it is ``GRPOTrainer``.

    Every refusal that needs no model (config type, sharded strategies, the domain source and the data's domains,
    eval sets) comes before the parent's ``__init__`` loads anything."""

    def __init__(self, *args, **kwargs):
        call = _grpo_arguments(args, kwargs)
        call["args"] = config = _mgs_config(call.get("args"), call["model"])
        _refuse_sharded_setups(config)  # before any model is loaded
        source = plan_domains(config, train_dataset=call.get("train_dataset"), eval_dataset=call.get("eval_dataset"),
                              environment_factory=call.get("environment_factory"))
        self.domain_source: DomainSource | None = source  # read by the hooks below, some of them during training only
        self.surgery: mgs.GradientSurgery | None = None
        self.orders_by_domain = False
        super().__init__(**call)
        _refuse_accelerator(self.accelerator)  # what accelerate finally chose (e.g. from its config file)
        _upstream.check_trainer(self)
        self._captured: list | None = None
        self._row_domains: torch.Tensor | None = None
        self.fsdp2 = bool(self.accelerator.is_fsdp2)
        self._pass_plan: list[list[int]] | None = None  # FSDP2: per micro-batch, the domains some rank has rows of
        if source is None:  # surgery="none" on data without domains: GRPOTrainer, untouched
            return
        # Domain-pure micro-batches leave the gradient unchanged unless a term depends on the micro-batch's make-up.
        self.orders_by_domain = (self.args.order_by_domain and self.args.loss_type != "bnpo"
                                 and self.args.top_entropy_quantile >= 1.0 and not self.aux_loss_enabled)
        self._surgery_options = self.args.surgery_options(domains=list(source.domains))
        # FSDP2: accelerate shards the model when training starts (fully_shard swaps every parameter for a DTensor),
        # so this surgery, built on the full model to check the settings, is rebuilt on the shards then.
        self.surgery = self._build_surgery()
        self._surgery_on_shards = not self.fsdp2

    def _build_surgery(self) -> mgs.GradientSurgery:
        # DDP: forward and backward run under no_sync(); surgery averages each domain over the ranks. FSDP2: gradients
        # are sharded, not replicated; FSDP2 reduce-scatters each domain's backward into its buffer.
        replicated = self.accelerator.num_processes > 1 and not self.fsdp2
        dp_process_group = torch.distributed.group.WORLD if replicated else None
        return mgs.GradientSurgery(self.model, **vars(self._surgery_options), dp_process_group=dp_process_group)

    def _bind_surgery_to_shards(self) -> None:
        """FSDP2, once the model is sharded: rebuild the surgery on the DTensor parameters, carrying its state over."""
        if self.surgery is None or self._surgery_on_shards:
            return
        state = self.surgery.state_dict()
        self.surgery = self._build_surgery()
        self.surgery.load_state_dict(state)
        self._surgery_on_shards = True

    # ------------------------------------------------------------------ domains from the data
    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        source = self.domain_source
        if source is not None and source.kind == "column" and source.index.field not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, source.index.field]  # kept: remove_unused_columns

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs=inputs)
        if self.surgery is None:
            return output
        training = self.model.training
        problem = None
        try:
            labels = self.domain_source.labels(inputs, self.environments, training=training)
            ids = None if labels is None else self.domain_source.ids(labels)
        except Exception as error:  # noqa: BLE001 - raised on every rank below, so no rank is left waiting
            problem, ids = error, []
        self._raise_on_every_rank(problem)
        if ids is None:  # an eval set without the domain column: evaluated as stock, no per-domain metrics
            return output
        output[DOMAIN_IDS] = torch.tensor(ids, device=self.accelerator.device)
        if self.args.normalize_advantage_by_domain:  # before the batch is split: every slice gets the same scale
            output["advantages"], _ = normalize_generation_batch(
                output["advantages"], output[DOMAIN_IDS], len(self.surgery.domains),
                process_index=self.accelerator.process_index, num_processes=self.accelerator.num_processes)
        mask = output["completion_mask"]
        if output.get("tool_mask") is not None:  # count the model's tokens only, as TRL's completion lengths do
            mask = mask * output["tool_mask"]
        self._log_domain_metrics("train" if training else "eval", output[DOMAIN_IDS], mask.sum(dim=1))
        return output

    def _raise_on_every_rank(self, problem: Exception | None) -> None:
        """Raise ``problem`` here and the same error on every other rank (a flag gather under DDP, then the messages),
        so a bad row on one rank does not leave the others waiting in the next collective."""
        if self.accelerator.num_processes == 1:
            if problem is not None:
                raise problem
            return
        from accelerate.utils import gather_object

        flags = gather(torch.tensor([problem is not None], device=self.accelerator.device))
        if not bool(flags.any()):  # the common case: one flag gather; the messages only when some rank failed
            return
        reasons = gather_object([None if problem is None else f"{type(problem).__name__}: {problem}"])
        failed = [f"rank {rank}: {reason}" for rank, reason in enumerate(reasons) if reason is not None]
        if failed:
            raise ValueError(f"rows' domains could not be read on every rank: {'; '.join(failed)}") from problem

    def _prepare_inputs(self, generation_batch):
        before = self._buffered_inputs
        inputs = super()._prepare_inputs(generation_batch=generation_batch)
        regenerated = self.model.training and self._buffered_inputs is not before
        if regenerated and self.orders_by_domain and len(self._buffered_inputs) > 1:
            self._buffered_inputs = _regroup_by_domain(self._buffered_inputs)
            inputs = self._buffered_inputs[self._step % self.args.steps_per_generation]
        if regenerated and self.fsdp2 and self.surgery is not None:
            self._pass_plan = self._agree_pass_plan(self._buffered_inputs)
        return inputs

    def _agree_pass_plan(self, batches: list[dict]) -> list[list[int]]:
        """FSDP2: which domains each micro-batch of the generation batch holds on *some* rank (one all-reduce of a
        [micro-batches, K] flag tensor per generation batch). Every rank then runs those domains' forward and backward
        passes in that order (a zero-gradient pass where it has no row), so FSDP2's collectives line up."""
        k = len(self.surgery.domains)
        present = torch.zeros(len(batches), k, dtype=torch.int64, device=self.accelerator.device)
        for i, batch in enumerate(batches):
            present[i, batch[DOMAIN_IDS].unique()] = 1
        present = reduce(present, reduction="sum").tolist()  # the same on every rank
        return [[d for d in range(k) if flags[d] > 0] for flags in present]

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs=inputs, prompts=prompts, completions=completions,
                                                      completion_ids_list=completion_ids_list)
        self._rewards_per_func = rewards_per_func  # already gathered over ranks, in rank order
        return rewards_per_func

    def _log_domain_metrics(self, mode: str, local_ids: torch.Tensor, local_lengths: torch.Tensor) -> None:
        """Per-domain reward mean/std and completion length over the whole generation batch (all ranks), into TRL's
        ``mode`` metrics (``"eval"``: logged with TRL's ``eval_`` prefix). Rows no reward function scored (all None)
        are left out of the rewards, as TRL leaves them out of ``reward``."""
        ids, lengths = gather(local_ids), gather(local_lengths).float()  # same rank order as the rewards
        rewards_per_func = self._rewards_per_func
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        rewards = (rewards_per_func * weights).nansum(dim=1)  # the scalar reward GRPO uses
        scored = ~torch.isnan(rewards_per_func).all(dim=1)
        k, domains = len(self.surgery.domains), self.surgery.domains
        ids = ids.to(rewards.device)
        moments = torch.stack([domain_moments(rewards[scored], ids[scored], k), domain_moments(lengths, ids, k)])
        summary = domain_summary(moments, domains, [("reward_mean", "reward_std"), ("completion_length", None)])
        metrics = self._metrics[mode]
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
        # The domains this micro-batch's passes run for: under FSDP2 the ones some rank has (the same on every rank),
        # else the local ones.
        order = row_domains.unique().tolist() if self._pass_plan is None else self._pass_plan[self._micro_index()]
        if compute_aux_loss or any(v is not None for k, v in extra.items() if k not in ROW_ALIGNED_INPUTS):
            # A batch-level aux loss or image inputs do not split by row: one forward, K masked backward passes.
            real = stock(model=model, input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep,
                         batch_size=batch_size, compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **extra)
            parts = [_Part(d, (row_domains == d).nonzero().squeeze(1), real[:2]) for d in order]
            leaves = tuple(_leaf(t) for t in real)
            self._captured.append(_Capture(parts, leaves, masked=True, aux=real[2]))
            return leaves
        # One forward per domain on its rows: the backward passes then cost what one backward of the whole
        # micro-batch costs. The loss still sees every row in stock order, so it is unchanged.
        parts = []
        for d in order:
            rows = (row_domains == d).nonzero().squeeze(1)
            padding = rows.numel() == 0  # FSDP2: another rank has rows of d; one row here, its gradient zeroed
            selected = torch.zeros(1, dtype=rows.dtype, device=rows.device) if padding else rows
            sub = {k: (v.index_select(0, selected) if v is not None else None) for k, v in extra.items()}
            logps, entropies, _ = stock(model=model, input_ids=input_ids.index_select(0, selected),
                                        attention_mask=attention_mask.index_select(0, selected),
                                        logits_to_keep=logits_to_keep, batch_size=batch_size,
                                        compute_entropy=compute_entropy, compute_aux_loss=False, **sub)
            parts.append(_Part(d, rows, (logps, entropies), padding))
        real = [p for p in parts if not p.padding]
        leaves = tuple(_scatter_rows([p.outputs[i] for p in real], [p.rows for p in real], len(row_domains))
                       for i in range(2)) + (None,)
        self._captured.append(_Capture(parts, leaves, masked=False, aux=None))
        return leaves

    def _micro_index(self) -> int:
        """The current micro-batch's index in the generation buffer (TRL advances ``_step`` after the step)."""
        return self._step % self.args.steps_per_generation

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.surgery is not None and self.model.training:
            self._row_domains = inputs[DOMAIN_IDS]
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def training_step(self, model, inputs, num_items_in_batch):
        if self.surgery is None:
            return super().training_step(model, inputs, num_items_in_batch)
        self._bind_surgery_to_shards()
        self._captured = []
        # DDP decides at forward time, so forward and backward run under no_sync(); surgery reduces per domain instead.
        # FSDP2 reduce-scatters at backward time: _backward_by_domain sets its gradient sync pass by pass.
        with contextlib.nullcontext() if self.fsdp2 else self.accelerator.no_sync(model):
            index = self._micro_index()
            try:
                loss = super().training_step(model, inputs, num_items_in_batch)  # stock; backward stops at the leaves
                captured = self._captured
            finally:
                self._captured = None
            try:
                for n, capture in enumerate(captured):
                    self._backward_by_domain(capture, model, self._next_domain(index) if n == len(captured) - 1 else None)
            finally:
                if self.fsdp2:
                    model.set_requires_gradient_sync(True)
        if self.accelerator.sync_gradients:
            stats = self.surgery.apply(step=self.state.global_step)
            self._log_surgery(stats)
        return loss

    def _next_domain(self, index: int) -> int | None:
        """FSDP2: the domain of the first pass of the micro-batch after ``index`` when that one belongs to the same
        optimizer step and generation buffer (else None). A last pass of that domain may then hold its gradient back
        (unsharded, not yet reduce-scattered): FSDP2 reduces both passes together into that domain's buffer."""
        if not self.fsdp2 or self._pass_plan is None or self.accelerator.sync_gradients:
            return None
        following = index + 1
        if following >= len(self._pass_plan) or not self._pass_plan[following]:
            return None
        return self._pass_plan[following][0]

    def _backward_by_domain(self, capture: _Capture, model: Any = None, next_domain: int | None = None) -> None:
        """Backpropagate each domain's rows of the upstream gradient (at the leaves) into that domain's buffer.
        Under FSDP2 each pass reduce-scatters into that buffer, except a last pass of ``next_domain`` (the next
        micro-batch's first pass, same optimizer step), whose gradient FSDP2 holds back until that pass."""
        for i, part in enumerate(capture.parts):
            outputs, grads = [], []
            for t, leaf in zip(part.outputs, capture.leaves):
                if t is None or leaf is None or leaf.grad is None:
                    continue
                outputs.append(t)
                if part.padding:  # no row of this domain here: a zero gradient, the same collectives as the others
                    grads.append(torch.zeros_like(t))
                elif capture.masked:  # every domain's pass runs through the whole micro-batch's graph
                    mask = torch.zeros(leaf.grad.size(0), 1, dtype=leaf.grad.dtype, device=leaf.grad.device)
                    grads.append(leaf.grad * mask.index_fill_(0, part.rows, 1))
                else:
                    grads.append(leaf.grad.index_select(0, part.rows))
            if not outputs:
                continue
            retain = capture.masked and (i < len(capture.parts) - 1 or capture.aux is not None)
            if self.fsdp2:
                last = i == len(capture.parts) - 1 and capture.aux is None
                defer = last and next_domain == part.domain
                model.set_requires_gradient_sync(not defer)
            with self.surgery.domain(self.surgery.domains[part.domain]):
                torch.autograd.backward(outputs, grads, retain_graph=retain)
        aux_leaf = capture.leaves[2]
        if capture.aux is not None and aux_leaf is not None and aux_leaf.grad is not None:
            if self.fsdp2:
                model.set_requires_gradient_sync(True)
            with self.surgery.shared():
                capture.aux.backward(aux_leaf.grad)

    # ------------------------------------------------------------------ checkpoints
    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir=output_dir)
        if self.surgery is None:
            return
        os.makedirs(output_dir, exist_ok=True)  # every rank writes its own file: nodes need not share a filesystem
        save_surgery_state(output_dir, self.accelerator.process_index, self.surgery.state_dict())

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint=checkpoint)
        if checkpoint is not None and self.surgery is not None:
            self._bind_surgery_to_shards()  # FSDP2: the model is sharded by now
            state = load_surgery_state(checkpoint, self.accelerator.process_index)
            self.surgery.load_state_dict(state["surgery"])

    def _log_surgery(self, stats: dict[str, torch.Tensor]) -> None:
        metrics = self._metrics["train"]
        for key, value in scalar_metrics(stats).items():
            metrics[key].append(value)


MGSGRPOTrainer.__init__.__signature__ = _GRPO_INIT  # help() and IDEs show GRPOTrainer's parameters
