"""``MGSFSDPEngine``: verl 0.9.1's FSDP LM engine with per-domain backward passes and ``mgs`` surgery.

Overrides ``FSDPEngineWithLMHead.forward_backward_batch`` (plus ``initialize`` and the checkpoint methods),
and only for training with an :class:`verl_mgs.config.MGSFSDPEngineConfig`; everything else (the
reference model, log-prob inference, a plain ``FSDPEngineConfig``) is the stock code path. The verl
members it relies on are listed and checked in :mod:`verl_mgs._upstream`.

Per mini-batch, on every data-parallel rank:

1. the stock preamble: the global token count (all-reduce), ``dp_size``, ``sp_size``;
2. rows grouped by domain (``domain_key``); each domain's rows are split into micro-batches like
   verl does (fixed size, or token-balanced with dynamic batch size), and every micro-batch keeps the
   whole mini-batch's normalisers (``batch_num_tokens``, ``global_batch_size``, ``dp_size`` are
   non-tensor entries that row selection copies), so the domains' losses add up to the stock loss;
   (without configured ``domains``, the step's domains are agreed across ranks first, once:
   ``GradientSurgery.agree_domains``);
3. one all-reduce (MAX) of the per-domain micro-batch counts; a rank with fewer runs zero-loss
   passes, so every rank runs the same FSDP collectives;
4. per domain, inside ``surgery.domain(d)``: forward/backward of its micro-batches, FSDP gradient
   sync deferred to the domain's last micro-batch when ``use_no_sync_for_gradient_accumulation``
   is on (so the reduce-scatter lands in that domain's buffer), then ``surgery.apply(step)``;
5. verl's own ``optimizer_step`` (clip, step) follows in ``train_batch``; the K per-domain buffers are
   freed with ``p.grad`` at verl's ``zero_grad`` (surgery keeps no reference after ``apply``).

Metrics (one value per mini-batch, identical on every rank, so verl's DP aggregation keeps them):
``mgs/loss/{domain}`` (this domain's share of verl's ``loss``: they add up to it), the per-domain reward
and completion length, and every scalar statistic of :meth:`mgs.GradientSurgery.apply` as ``mgs/{key}``
(docs/metrics.md); the driver logs them as ``actor/mgs/...``. The surgery state (step counter, Gram EMA,
method state) is saved next to verl's checkpoint shards by :func:`mgs.integration.save_surgery_state`
and restored by ``load_checkpoint``.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from verl.utils import tensordict_utils as tu
from verl.utils.device import get_device_id
from verl.utils.metric import AggregationType, Metric
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.engine.utils import postprocess_batch_func, prepare_micro_batches

from mgs import GradientSurgery
from mgs.integration import (DomainIndex, domain_metric, domain_moments, domain_summary, load_surgery_state,
                             save_surgery_state, scalar_metrics)
from verl_mgs import _upstream
from verl_mgs.config import MGSFSDPEngineConfig

_upstream.check()


def _filler_output(meta_info: dict) -> dict:
    """A zero-loss pass's output: verl aggregates per-micro-batch metrics position by position across DP
    ranks (``Metric.aggregate_dp``), so every rank must report one entry per pass; sums (the loss, SUM
    metrics) must count nothing, means keep the filler row's own value."""
    meta_info["loss"] = 0.0
    metrics = meta_info.get("metrics", {})
    for key, value in metrics.items():
        if isinstance(value, Metric) and value.aggregation == AggregationType.SUM:
            zero = Metric(AggregationType.SUM)
            zero.extend([0.0] * len(value.values))
            metrics[key] = zero
    return meta_info


def _metrics(stats: dict, domain_loss: dict, domains: list[str]) -> dict:
    """``mgs/...`` metrics as verl's ``Metric`` values, one per mini-batch.

    The statistics come from all-reduced Gram matrices, so they are the same on every rank (MEAN over DP
    keeps them); a domain's loss is this rank's sum over its micro-batches, which verl's DP aggregation
    averages like the total ``loss``. NaN statistics (no pair to measure) are left out on every rank alike.
    """
    metrics = {k: Metric(AggregationType.MEAN, v) for k, v in scalar_metrics(stats).items() if not math.isnan(v)}
    for name in domains:
        metrics[domain_metric("loss", name)] = Metric(AggregationType.SUM, float(domain_loss.get(name, 0.0)))
    return metrics


def domain_labels(data, key: str | DomainIndex) -> list[str]:
    """Each row's domain from the non-tensor field ``key`` (``"a.b"``: field ``a``, then key ``b`` of each row's dict)."""
    index = key if isinstance(key, DomainIndex) else DomainIndex(key)
    if index.field not in data.keys():
        raise index.missing_field([k for k in data.keys() if isinstance(k, str)])
    return index.of_values(tu.get(data, index.field))


def check_loss_normaliser(data, loss_function) -> None:
    """Refuse a per-micro-batch normaliser that would make the domains' losses differ from the stock loss.

    ``seq-mean-token-sum-norm`` without ``loss_scale_factor`` divides by ``loss_mask.shape[-1]``
    (``agg_loss`` in verl/trainer/ppo/core_algos.py). With jagged response fields (verl's default v1 trainer) that is the
    longest response *of the micro-batch*, so the stock loss itself depends on how rows are grouped
    into micro-batches, and per-domain micro-batches cannot reproduce it."""
    config = getattr(loss_function, "keywords", {}).get("config")
    if getattr(config, "loss_agg_mode", None) != "seq-mean-token-sum-norm" or config.loss_scale_factor is not None:
        return
    mask = data["response_mask"] if "response_mask" in data.keys() else None
    if mask is not None and getattr(mask, "is_nested", False):
        raise ValueError(
            "loss_agg_mode='seq-mean-token-sum-norm' with loss_scale_factor=None normalises each micro-batch by its "
            "own longest response, which depends on how rows are grouped into micro-batches; set "
            "actor_rollout_ref.actor.loss_scale_factor (e.g. to data.max_response_length) to use it with surgery."
        )


class MGSFSDPEngine(FSDPEngineWithLMHead):
    """The stock FSDP LM engine; training with an MGS config runs one backward group per domain, then surgery."""

    _surgery: GradientSurgery | None = None
    _mgs_step: int = 0

    def __new__(cls, *args, **kwargs):
        # Registered under verl's own fsdp/fsdp2 keys, this class is what verl builds for every FSDP engine of a
        # process that imported verl_mgs; a plain FSDPEngineConfig (a run without MGS) gets verl's own class.
        config = kwargs["engine_config"] if "engine_config" in kwargs else args[1] if len(args) > 1 else None
        if cls is MGSFSDPEngine and not isinstance(config, MGSFSDPEngineConfig):
            return FSDPEngineWithLMHead(*args, **kwargs)
        return super().__new__(cls)

    def _mgs_enabled(self) -> bool:
        return isinstance(self.engine_config, MGSFSDPEngineConfig) and not self.engine_config.forward_only

    def _mgs_active(self, forward_only: bool) -> bool:
        return not forward_only and self._mgs_enabled()

    def initialize(self):
        if self._mgs_enabled():  # refuse before building anything (the config cannot: verl sets strategy later)
            strategy = self.engine_config.strategy
            if strategy != "fsdp2":
                raise NotImplementedError(
                    f"verl_mgs needs actor_rollout_ref.actor.strategy=fsdp2; got {strategy!r} (FSDP1 flattens "
                    "parameters, so per-parameter gradient buffers cannot be attached)."
                )
            if self.engine_config.ulysses_sequence_parallel_size > 1:
                raise NotImplementedError(
                    "verl_mgs does not support ulysses_sequence_parallel_size > 1 yet; set "
                    "actor_rollout_ref.actor.ulysses_sequence_parallel_size=1."
                )
        return super().initialize()

    def _mgs_surgery(self) -> GradientSurgery:
        if self._surgery is None:
            _upstream.check_built(self, _upstream.ENGINE_ATTRIBUTES)
            self._surgery = GradientSurgery(self.module, **vars(self.engine_config.surgery_options))
            self._domain_index = self.engine_config.domain_index()
        return self._surgery

    def _mgs_domains(self, data) -> tuple[list[str], list[str]]:
        """Each row's domain and the step's domain list, the same on every rank: the configured one, or the
        domains seen so far on any rank. One all_gather_object over the DP group agrees the list and the rows'
        validity: a row one rank cannot read, or a domain the configured list lacks, raises the same error on
        every rank before any other collective (a check on one rank only would leave the others waiting)."""
        labels, error = [], None
        try:
            labels = domain_labels(data, self._domain_index)
            self._domain_index.check(labels)
        except Exception as problem:  # noqa: BLE001 - raised on every rank by agree_domains, none left waiting
            error = problem.args[0] if isinstance(problem, KeyError) and problem.args else str(problem)
        domains = self._surgery.agree_domains(sorted(set(labels)), process_group=self.get_data_parallel_group(),
                                              error=error)
        return labels, list(domains)

    def _mgs_micro_batches(self, data, rows: list[int]) -> list:
        if not rows:
            return []
        sub = tu.index_select_tensor_dict(data, rows)
        if tu.get_non_tensor_data(data=data, key="use_dynamic_bsz", default=True):
            micro_batches, _ = prepare_micro_batches(data=sub, dp_group=None, same_micro_num_in_dp=False)
            return micro_batches
        size = data["micro_batch_size_per_gpu"]
        return [
            tu.index_select_tensor_dict(sub, list(range(i, min(i + size, len(rows))))) for i in range(0, len(rows), size)
        ]

    def forward_backward_batch(self, data, loss_function, forward_only=False):
        if not self._mgs_active(forward_only):
            return super().forward_backward_batch(data=data, loss_function=loss_function, forward_only=forward_only)
        if tu.get_non_tensor_data(data=data, key="return_model_output", default=False):
            raise NotImplementedError("verl_mgs: return_model_output=True is not supported with surgery.")
        check_loss_normaliser(data, loss_function)
        surgery = self._mgs_surgery()

        # the stock preamble of FSDPEngineWithLMHead.forward_backward_batch
        tu.assign_non_tensor(data, sp_size=self.ulysses_sequence_parallel_size)
        batch_num_tokens = data["loss_mask"].sum().to(get_device_id())
        dist.all_reduce(batch_num_tokens, op=dist.ReduceOp.SUM, group=self.get_data_parallel_group())
        tu.assign_non_tensor(data, batch_num_tokens=batch_num_tokens.item())
        tu.assign_non_tensor(data, dp_size=self.get_data_parallel_size())

        labels, domains = self._mgs_domains(data)
        rewards = self._mgs_domain_rewards(data, labels, domains)
        per_domain = [self._mgs_micro_batches(data, [i for i, d in enumerate(labels) if d == name]) for name in domains]
        counts = torch.tensor([len(m) for m in per_domain], dtype=torch.long, device=get_device_id())
        dist.all_reduce(counts, op=dist.ReduceOp.MAX, group=self.get_data_parallel_group())
        counts = counts.tolist()
        filler = tu.index_select_tensor_dict(data, [0]) if len(data) else None

        scaler = getattr(self, "scaler", None)
        output_lst = []
        domain_loss = {}
        for name, micro_batches, count in zip(domains, per_domain, counts):
            if count == 0:
                continue
            with surgery.domain(name):
                for i in range(count):
                    real = i < len(micro_batches)
                    micro_batch = micro_batches[i] if real else filler
                    sync_ctx = self._gradient_sync_context(is_last_micro_batch=i == count - 1)
                    with sync_ctx, torch.profiler.record_function(f"mgs_{name}_micro_batch{i}"):
                        loss, meta_info = self.forward_step(micro_batch=micro_batch, loss_function=loss_function,
                                                            forward_only=False)
                        if not real:
                            loss = loss * 0.0
                        (scaler.scale(loss) if scaler is not None else loss).backward()
                    meta_info.pop("model_output", None)
                    output_lst.append(meta_info if real else _filler_output(meta_info))
                    domain_loss[name] = domain_loss.get(name, 0.0) + meta_info["loss"]
        stats = surgery.apply(step=self._mgs_step)
        self._mgs_step += 1
        output = postprocess_batch_func(output_lst=output_lst, indices=None, data=data)
        output["metrics"].update(_metrics(stats, domain_loss, domains))
        output["metrics"].update(rewards)
        return output

    def _mgs_domain_rewards(self, data, labels: list[str], domains: list[str]) -> dict:
        """``mgs/reward/{domain}/mean`` and ``/std`` (the sequence score, ``token_level_scores`` summed over the
        response) and ``mgs/completion_length/{domain}`` (response tokens) of the domain's rows in this mini-batch,
        over all DP ranks: one all-reduce. verl's driver logs no per-domain training reward; its batch reaches the
        actor with the scores (legacy trainer), so the actor reports them. Empty when the batch carries no scores
        (the v1 trainer sends the loss fields only)."""
        if "token_level_scores" not in data.keys():
            return {}
        device = get_device_id()
        ids = torch.tensor([domains.index(d) for d in labels], dtype=torch.long).to(device)
        values = [_row_sums(data["token_level_scores"])]
        names = [("reward_mean", "reward_std")]
        if "response_mask" in data.keys():
            values.append(_row_sums(data["response_mask"]))
            names.append(("completion_length", None))
        moments = torch.stack([domain_moments(v.to(device), ids, len(domains)) for v in values])
        dist.all_reduce(moments, op=dist.ReduceOp.SUM, group=self.get_data_parallel_group())
        summary = domain_summary(moments, domains, names)
        return {k: Metric(AggregationType.MEAN, v) for k, v in summary.items() if not math.isnan(v)}

    # ------------------------------------------------------------------ checkpointing
    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None, **kwargs):
        super().save_checkpoint(local_path=local_path, hdfs_path=hdfs_path, global_step=global_step,
                                max_ckpt_to_keep=max_ckpt_to_keep, **kwargs)
        if self._mgs_enabled():
            save_surgery_state(local_path, dist.get_rank(), self._mgs_surgery().state_dict(), engine_step=self._mgs_step)

    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=True, **kwargs):
        # read first: verl may delete local_path after loading
        state = load_surgery_state(local_path, dist.get_rank()) if self._mgs_enabled() else None
        super().load_checkpoint(local_path=local_path, hdfs_path=hdfs_path, del_local_after_load=del_local_after_load,
                                **kwargs)
        if state is not None:
            self._mgs_surgery().load_state_dict(state["surgery"])
            self._mgs_step = int(state.get("engine_step", state["surgery"]["step"]))  # the same count


def _row_sums(values) -> torch.Tensor:
    """``[rows]`` float64: each row's sum of ``values`` (a padded ``[rows, length]`` tensor or a jagged nested one)."""
    if getattr(values, "is_nested", False):
        return torch.stack([row.sum() for row in values.unbind()]).detach().double()
    return values.sum(-1).detach().double()


__all__ = ["MGSFSDPEngine", "domain_labels"]
