"""``GradientSurgery``: wires partition → per-domain buffers → Gram → method → apply, and owns the state."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
import warnings
from typing import Any

import torch
from torch import nn

from mgs._apply import combine_bucket
from mgs._balance import balance_scales, balanced_gram
from mgs._buffers import BUCKET_CAP, DomainBuffers
from mgs._collectives import agree_domains, average_replicas, is_distributed, sum_partial_grams
from mgs._fsdp2 import check_fsdp2_layout, fsdp2_modules, held_back_gradients
from mgs._gram import local_grams, without_nonfinite
from mgs._gram_ema import GramEMA
from mgs._options import Granularity, SurgeryOptions
from mgs._partition import Partition
from mgs._stats import surgery_stats
from mgs.methods import resolve_method, step_generator


_NO_CONTEXT = object()


def _renamed_process_groups(renamed: dict, dp: object | None, shard: object | None) -> tuple[object | None, object | None]:
    """Accept the process-group arguments' names up to 0.1.0 (``dp_group``, ``shard_group``) with a warning."""
    for old, new in (("dp_group", "dp_process_group"), ("shard_group", "shard_process_group")):
        if old not in renamed:
            continue
        warnings.warn(f"GradientSurgery({old}=...) is renamed {new}=... (in mgs 'group' means a parameter group); "
                      f"{old} will be removed in 0.3.", FutureWarning, stacklevel=3)
        value = renamed.pop(old)
        if (dp if new == "dp_process_group" else shard) is not None:
            raise TypeError(f"GradientSurgery got both {old}= and {new}=; pass {new}= only.")
        if new == "dp_process_group":
            dp = value
        else:
            shard = value
    if renamed:
        raise TypeError(f"GradientSurgery got unexpected keyword arguments {sorted(renamed)}.")
    return dp, shard


def _reject_unsupported(model: Any) -> Any:
    """Return the DDP wrapper if ``model`` is one; refuse wrappers whose gradients we cannot split."""
    if not isinstance(model, nn.Module):
        return None
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover - torch without distributed
        FullyShardedDataParallel = ()  # type: ignore[assignment]
    if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
        raise NotImplementedError(
            "FSDP1 (FullyShardedDataParallel) flattens parameters, so their gradients cannot be split by module; "
            "use FSDP2 (torch.distributed.fsdp.fully_shard), whose DTensor shards MGS supports."
        )
    from torch.nn.parallel import DistributedDataParallel

    return model if isinstance(model, DistributedDataParallel) else None


class GradientSurgery:
    """Per-domain gradients → (modular) gradient surgery → ``p.grad``.

    Usage, in a plain PyTorch loop::

        surgery = mgs.GradientSurgery(model, surgery="modular", domains=["math", "chat"])
        with surgery.domain("math"):
            loss_math.backward()      # accumulates into math's buffer
        with surgery.domain("chat"):
            loss_chat.backward()
        with surgery.shared():
            aux_loss.backward()       # belongs to no domain: added after surgery, never projected
        stats = surgery.apply(step=step)  # writes p.grad; returns logging statistics (tensors)
        optimizer.step(); optimizer.zero_grad()

    Args:
        model: an ``nn.Module`` (plain, FSDP2 ``fully_shard``-ed, or DDP) or an iterable of
            ``(name, parameter)``. Only parameters with ``requires_grad`` take part; a tensor under
            several names (tied weights) is one parameter.
        surgery, granularity, method, domains, seed, on_nonfinite, balance, gram_ema: see
            :class:`mgs.SurgeryOptions`.
        dp_process_group: a process group over which the domains' gradients are *replicated* (data
            parallel without gradient sync, e.g. DDP under ``no_sync()``): apply() averages each domain's
            buffer over it before surgery, as DDP would. Defaults to the DDP wrapper's process group when
            ``model`` is a ``DistributedDataParallel``. (``dp_group``, its name up to 0.1.0, still works
            with a ``FutureWarning``.)
        shard_process_group: the process group over which plain-tensor parameters are shards (their
            partial Gram matrices are summed over it). FSDP2 DTensor parameters need nothing: it is read
            from their mesh. (``shard_group`` likewise.)
        bucket_cap: elements per buffer bucket (a larger tensor gets its own); bounds the Gram pass's
            temporary, ``[bucket elements / 512, K, K]`` floats.

    Gradients written to ``p.grad`` outside any :meth:`domain` context (a backward outside the
    contexts, or a gradient left from before) are treated as :meth:`shared`.
    """

    def __init__(
        self,
        model: nn.Module | Iterable[tuple[str, torch.Tensor]],
        surgery: str = "modular",
        granularity: Granularity = "parameter",
        method: str | Callable = "pcgrad",
        domains: Sequence[str] | None = None,
        seed: int = 0,
        on_nonfinite: str = "propagate",
        balance: str = "none",
        gram_ema: float = 0.0,
        *,
        dp_process_group: object | None = None,
        shard_process_group: object | None = None,
        bucket_cap: int = BUCKET_CAP,
        **renamed: object,
    ) -> None:
        dp_process_group, shard_process_group = _renamed_process_groups(renamed, dp_process_group, shard_process_group)
        self.options = SurgeryOptions(
            surgery=surgery,
            granularity=granularity,
            method=method,
            domains=domains,
            seed=seed,
            on_nonfinite=on_nonfinite,
            balance=balance,
            gram_ema=gram_ema,
        )
        self._ddp = _reject_unsupported(model)
        if self._ddp is not None and dp_process_group is None:
            dp_process_group = self._ddp.process_group
        self._dp_process_group = dp_process_group
        self._fsdp2 = fsdp2_modules(model)
        check_fsdp2_layout(self._fsdp2)
        self.partition = Partition.build(model, granularity)
        self._buffers = DomainBuffers(self.partition, shard_process_group, bucket_cap)
        self._device = self._buffers.buckets[0].device
        self._method = resolve_method(method) if surgery != "none" else None
        self._ema = GramEMA(gram_ema) if gram_ema > 0 and surgery != "none" else None
        self._domains: list[str] = list(self.options.domains or ())
        self._discover = self.options.domains is None
        self._agreed = 0  # how many of self._domains all ranks have agreed on (discovery mode)
        self._agreed_this_step = False  # agree_domains() ran since the last apply(): apply() need not agree again
        self._step = 0
        self._active: str | None = None
        self._last_row: object = _NO_CONTEXT  # row of the last context, for the FSDP2 flush check
        kinds = self.partition.group_kinds
        self._kind_masks = {kind: torch.tensor([k == kind for k in kinds], device=self._device) for kind in dict.fromkeys(kinds)}

    # ------------------------------------------------------------------ inspection
    @property
    def domains(self) -> tuple[str, ...]:
        """The ordered domain list (grows on first use when constructed with ``domains=None``)."""
        return tuple(self._domains)

    @property
    def step(self) -> int:
        """The step the next :meth:`apply` uses when called without ``step``."""
        return self._step

    def groups(self) -> dict[str, list[str]]:
        """Group key → parameter names: the modules surgery treats separately (and statistics report on)."""
        return self.partition.groups()

    def group_kinds(self) -> dict[str, str]:
        """Group key → kind (attention, mlp, embedding, norm, other) used for statistics."""
        return dict(zip(self.partition.group_names, self.partition.group_kinds))

    def __repr__(self) -> str:
        o = self.options
        return (
            f"GradientSurgery(surgery={o.surgery!r}, granularity={o.granularity!r}, method={o.method!r}, "
            f"domains={list(self._domains)!r}, groups={len(self.partition.group_names)}, "
            f"parameters={len(self.partition.params)}, step={self._step})"
        )

    # ------------------------------------------------------------------ gradient capture
    def _row(self, name: str) -> int:
        if not isinstance(name, str):
            raise TypeError(f"domain names are strings; got {name!r}.")
        if name in self._domains:
            return self._domains.index(name)
        if not self._discover:
            raise ValueError(f"unknown domain {name!r}; the known domains are {list(self._domains)!r}.")
        if self._agreed_this_step and is_distributed():
            raise ValueError(f"domain {name!r} is not among the domains agreed across ranks for this step "
                             f"({list(self._domains)!r}); pass every domain of the step to agree_domains().")
        self._domains.append(name)
        if self._buffers.is_open:
            self._buffers.resize(len(self._domains), list(range(len(self._domains) - 1)))
        return len(self._domains) - 1

    @contextmanager
    def _capture(self, row: int | None, label: str) -> Iterator[None]:
        if self._active is not None:
            raise RuntimeError(f"surgery.{label} entered inside surgery.{self._active}; contexts do not nest.")
        if self._ddp is not None and self._ddp.require_backward_grad_sync:
            raise RuntimeError(
                "the model is DistributedDataParallel with gradient sync on, so backward would all-reduce into "
                "one domain's buffer whatever the other ranks computed; run forward and backward under "
                "model.no_sync(): surgery.apply() averages each domain's gradient over the DDP group itself."
            )
        if row != self._last_row:
            self._check_fsdp2_flushed(f"entering surgery.{label}")
        if not self._buffers.is_open:
            self._buffers.open(len(self._domains))
        self._active = label
        self._buffers.attach(row)
        try:
            yield
        finally:
            self._buffers.detach()
            self._active = None
            self._last_row = row

    def _check_fsdp2_flushed(self, when: str) -> None:
        held_back = self._fsdp2 and held_back_gradients(self._fsdp2)
        if held_back:
            raise RuntimeError(
                f"{when}: {held_back} in the previous domain's context; FSDP2 would reduce it into the wrong domain. "
                "Turn gradient sync back on for the last backward of each domain."
            )

    def domain(self, name: str):
        """Context manager: gradients from backward passes inside it belong to domain ``name``."""
        row = self._row(name)
        return self._capture(row, f"domain({name!r})")

    def shared(self):
        """Context manager: gradients from backward passes inside it belong to no domain (added, never projected)."""
        return self._capture(None, "shared()")

    def reset(self) -> None:
        """Discard everything captured since the last :meth:`apply` (e.g. a skipped step)."""
        if self._active is not None:
            raise RuntimeError(f"reset() called inside surgery.{self._active}.")
        self._buffers.release()
        self._last_row = _NO_CONTEXT
        self._agreed_this_step = False

    def agree_domains(self, names: Iterable[str] = (), process_group: object | None = None) -> tuple[str, ...]:
        """Agree this step's domains across ranks before its first backward; return the domain list.

        With a fixed domain list this only checks ``names`` (no collective). When discovering domains
        (``domains=None``), one ``all_gather_object`` over ``process_group`` (default: all ranks) adds every
        rank's new names, sorted, to the list on every rank, so adapters can run the same per-domain passes
        on every rank; :meth:`apply` then does not agree again this step. Every rank must call it, also one
        that has no rows.
        """
        names = list(names)
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"domain names are strings; got {name!r}.")
        if not self._discover:
            unknown = sorted(set(names) - set(self._domains))
            if unknown:
                raise ValueError(f"unknown domains {unknown}; the known domains are {list(self._domains)!r}.")
            return self.domains
        if self._active is not None:
            raise RuntimeError(f"agree_domains() called inside surgery.{self._active}.")
        local = list(self._domains) + [n for n in dict.fromkeys(names) if n not in self._domains]
        agreed = agree_domains(local[: self._agreed], local[self._agreed :], process_group=process_group)
        if self._buffers.is_open and agreed != self._domains:  # rows captured so far move to their agreed place
            self._buffers.resize(len(agreed), [agreed.index(d) for d in self._domains])
        self._domains, self._agreed = agreed, len(agreed)
        self._agreed_this_step = is_distributed()
        return self.domains

    # ------------------------------------------------------------------ surgery

    def _weights(self, clean: torch.Tensor, nonfinite: torch.Tensor, step: int):
        """``(weights [M, K] or None, projected [M, K, K] or None)`` from the Gram matrices without non-finite
        entries: M = groups for modular, 1 for the whole model. Groups with non-finite gradients get the plain
        sum. ``None`` weights: the plain sum everywhere."""
        o = self.options
        if o.surgery == "none" and o.balance == "none":
            return None, None
        current = clean
        if o.surgery == "modular":
            bad = nonfinite.any(dim=1)
        else:  # balancing and decisions over the whole model
            current, bad = current.sum(0, keepdim=True), nonfinite.any().reshape(1)
        scales = balance_scales(current) if o.balance == "norm" else None
        if o.surgery == "none":
            return torch.where(bad.unsqueeze(1), 1.0, scales), None
        decide = current
        if self._ema is not None:
            decide = self._ema.update(current, current.diagonal(dim1=1, dim2=2) > 0)
        if scales is not None:
            decide = balanced_gram(decide, scales)
        weights, projected = self._method(decide, step_generator(o.seed, step))  # shapes checked there
        weights = weights.to(clean.dtype)
        if scales is not None:
            weights = weights * scales
        return torch.where(bad.unsqueeze(1), 1.0, weights), projected

    def apply(self, step: int | None = None) -> dict[str, torch.Tensor]:
        """Combine the domains' buffers into ``p.grad``; return statistics (tensors).

        The result is written in place into the buffers (no allocation); they are freed when ``p.grad``
        is dropped (``optimizer.zero_grad()``), as surgery keeps no reference to them.

        Every rank must call it once per step (also a rank that saw no data). It never syncs with the
        host when the domain list is fixed, ``on_nonfinite="propagate"`` and the method is registered
        without ``host_sync`` (PCGrad; TorchJD weightings copy the Gram matrices to the CPU once).

        Args:
            step: the training step, which seeds the method's random choices with ``seed``; defaults to
                an internal counter, which then continues from ``step + 1``.
        """
        if self._active is not None:
            raise RuntimeError(f"apply() called inside surgery.{self._active}; call it after the context exits.")
        if step is None:
            step = self._step
        elif isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise TypeError(f"step must be a non-negative int; got {step!r}.")
        if self._discover and is_distributed() and not self._agreed_this_step:
            self.agree_domains()  # before any other collective, so every rank has the same K
        self._agreed_this_step = False
        self._check_fsdp2_flushed("apply()")
        self._last_row = _NO_CONTEXT
        buffers = self._buffers
        if not buffers.is_open:
            buffers.open(len(self._domains))
        buffers.collect_strays()
        if self._dp_process_group is not None:
            average_replicas([b.data for b in buffers.buckets], self._dp_process_group)
        num_groups, k = len(self.partition.group_names), len(self._domains)
        gram = sum_partial_grams(local_grams(buffers.buckets, num_groups, k, self._device))
        nonfinite = ~torch.isfinite(gram.diagonal(dim1=1, dim2=2))
        if self.options.on_nonfinite == "raise" and bool(nonfinite.any()):
            bad = [(self.partition.group_names[g], self._domains[d]) for g, d in nonfinite.nonzero().tolist()]
            buffers.release()
            raise FloatingPointError(f"non-finite gradients in (group, domain) {bad[:10]}{' ...' if len(bad) > 10 else ''}.")
        clean = without_nonfinite(gram, nonfinite)
        weights, projected = self._weights(clean, nonfinite, step)
        for bucket in buffers.buckets:
            combine_bucket(bucket, weights, self._dp_process_group)
        self._step = step + 1
        projects = self._method is None or self._method.projects
        return surgery_stats(gram, clean, nonfinite, self._domains, self._kind_masks, weights, projected, projects)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The step counter, seed and domain list, the Gram EMA when ``gram_ema > 0``, and the method's state
        under ``"method"`` when it keeps one (GradVac's per-group target cosines): all the state surgery has."""
        state = {"step": self._step, "seed": self.options.seed, "domains": list(self._domains)}
        if self._ema is not None:
            state["gram_ema"] = self._ema.state_dict()
        method_state = self._method.state_dict() if self._method is not None else {}
        if method_state:
            state["method"] = method_state
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` saved with the same options (before the first backward)."""
        domains = list(state["domains"])
        stateful = self._method is not None and self._method.stateful
        if stateful and "method" not in state:
            raise ValueError(f"the checkpoint has no method state but method={self.options.method!r} keeps state; "
                             "resume with the settings it was saved with, or start a new run.")
        # a method whose state is still empty (nothing learned yet) but that can load state takes it
        loads = self._method is not None and callable(getattr(self._method.fn, "load_state_dict", None))
        if "method" in state and not (stateful or loads):
            raise ValueError(f"the checkpoint holds method state (keys {sorted(state['method'])}) but method="
                             f"{self.options.method!r} with surgery={self.options.surgery!r} keeps none; resume with "
                             "the settings it was saved with, or drop state['method'] to discard it.")
        if not self._discover and domains != self._domains:
            raise ValueError(f"checkpoint domains {domains!r} differ from the configured domains {self._domains!r}.")
        if self._buffers.is_open:
            raise RuntimeError("load_state_dict() called with gradients captured; call it before the first backward.")
        if self._ema is not None and "gram_ema" not in state:
            raise ValueError("the checkpoint has no Gram EMA state but gram_ema > 0 is configured; resume with the "
                             "settings it was saved with, or start a new run.")
        # every check above runs before anything is assigned: a refused state leaves the surgery as it was
        self._domains = domains
        self._agreed = len(domains) if self._discover and is_distributed() else self._agreed
        self._step = int(state["step"])
        if self._ema is not None:
            self._ema.load_state_dict(state["gram_ema"], self._device)
        if "method" in state:
            self._method.load_state_dict(state["method"])
