"""``GradientSurgery``: wires partition → per-domain buffers → Gram → method → apply, and owns the state."""

from __future__ import annotations

import hashlib
import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from mgs._apply import combine_bucket
from mgs._balance import balance_scales, balanced_gram
from mgs._buffers import BUCKET_CAP, CHUNK, DomainBuffers
from mgs._collectives import (any_rank, average_replicas, check_same_everywhere, gather_objects, is_distributed,
                              sum_partial_grams)
from mgs._fsdp2 import check_fsdp2_layout, fsdp2_modules, held_back_gradients
from mgs._gram import local_grams, without_nonfinite
from mgs._gram_ema import GramEMA
from mgs._options import Granularity, SurgeryOptions, nonnegative_int, validate_domain_name, validate_domains
from mgs._partition import Partition
from mgs._stats import surgery_stats
from mgs._slicing import AttentionHeads, Slicing
from mgs.methods import Method, resolve_method, step_generator
from mgs.methods._pcgrad import ThresholdPCGrad


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
        surgery, granularity, method, domains, seed, on_nonfinite, balance, gram_ema, conflict_threshold: see
            :class:`mgs.SurgeryOptions`.
        heads: the attention head layout (:class:`mgs.AttentionHeads`) for ``granularity="head"`` when the model
            has no Hugging Face config giving it (or to override the config's).
        slicing: your own sub-tensor groups: a callable ``(parameter name, full shape) -> mgs.TensorSlices | None``
            consulted first for every parameter (``None``: the granularity decides, as usual).
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
        conflict_threshold: float = 0.0,
        *,
        heads: AttentionHeads | None = None,
        slicing: Slicing | None = None,
        dp_process_group: object | None = None,
        shard_process_group: object | None = None,
        bucket_cap: int = BUCKET_CAP,
        **renamed: object,
    ) -> None:
        dp_process_group, shard_process_group = _renamed_process_groups(renamed, dp_process_group, shard_process_group)
        if isinstance(bucket_cap, bool) or not isinstance(bucket_cap, numbers.Integral) or bucket_cap < CHUNK:
            raise ValueError(f"bucket_cap must be an integer number of elements >= {CHUNK}; got {bucket_cap!r}.")
        self.options = SurgeryOptions(
            surgery=surgery,
            granularity=granularity,
            method=method,
            domains=domains,
            seed=seed,
            on_nonfinite=on_nonfinite,
            balance=balance,
            gram_ema=gram_ema,
            conflict_threshold=conflict_threshold,
        )
        self._ddp = _reject_unsupported(model)
        if self._ddp is not None and dp_process_group is None:
            dp_process_group = self._ddp.process_group
        self._dp_process_group = dp_process_group
        self._fsdp2 = fsdp2_modules(model)
        check_fsdp2_layout(self._fsdp2)
        self.partition = Partition.build(model, granularity, heads=heads, slicing=slicing)
        self._model = model if isinstance(model, nn.Module) else None  # to notice parameters added or replaced later
        self._names = {id(p): names[0] for p, names in zip(self.partition.params, self.partition.names)}
        self._buffers = DomainBuffers(self.partition, shard_process_group, int(bucket_cap))
        self._layout_checked = False  # every rank's domain list and buffer layout compared (first distributed apply)
        self._device = self._buffers.buckets[0].device
        self._method = resolve_method(method) if surgery != "none" else None
        if self.options.conflict_threshold > 0:  # only with PCGrad (checked by SurgeryOptions)
            self._method = Method(ThresholdPCGrad(self.options.conflict_threshold), "pcgrad", projects=True)
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

    def _refuse_copy(self, *args: object) -> None:
        raise TypeError(
            "a GradientSurgery is bound to its model's parameters (its buffers are their .grad), so a copy would do "
            "nothing for the copied model's parameters; build a new one for the copy: "
            "mgs.GradientSurgery(copied_model, **vars(surgery.options)), then load_state_dict(surgery.state_dict())."
        )

    __copy__ = __deepcopy__ = __reduce_ex__ = _refuse_copy

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

    def group_slices(self) -> dict[str, list[tuple[str, int | None, int, int]]]:
        """Group key → its slices ``(parameter name, dim, start, stop)``, each ``param.narrow(dim, start, stop -
        start)`` of the full tensor (``dim`` None: the whole parameter). Differs from :meth:`groups` only for
        sub-tensor groups (``granularity="head"``, ``"expert"``, ``slicing=``)."""
        return self.partition.group_slices()

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
        if name in self._domains:
            return self._domains.index(name)
        validate_domain_name(name)
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
        self._check_parameter_types(f"entering surgery.{label}")
        if not self._buffers.is_open:
            self._buffers.open(len(self._domains))
        try:
            self._buffers.attach(row)
        except RuntimeError as error:  # leave nothing attached and the object usable
            self._buffers.detach()
            raise RuntimeError(f"surgery.{label} could not point the parameters' .grad at its buffers: {error}") from error
        self._active = label
        try:
            yield
        finally:
            self._buffers.detach()
            self._active = None
            self._last_row = row

    def _check_parameter_types(self, when: str) -> None:
        """Every parameter still has the dtype, device and shape its buffer slot was made for."""
        for bucket in self._buffers.buckets:
            for slot in bucket.slots:
                p = slot.param
                moved = p.dtype != bucket.dtype or (
                    slot.dtensor_spec is None and (p.device != bucket.device or p.shape != slot.local_shape))
                if moved:
                    name = self._names[id(p)]
                    raise RuntimeError(
                        f"{when}: parameter {name!r} is now {p.dtype} on {p.device} with shape {tuple(p.shape)}, but "
                        f"GradientSurgery was built for {bucket.dtype} on {bucket.device} with shape "
                        f"{tuple(slot.local_shape)}; build the surgery after casting or moving the model "
                        "(model.to(...), .half(), .double(), ...)."
                    )

    def _check_parameters(self, when: str) -> None:
        """No trainable parameter was added to, replaced in or unfrozen in the model after construction: its gradient
        would be left out of surgery (and, replicated, not averaged over the ranks)."""
        self._check_parameter_types(when)
        if self._model is None or self._fsdp2:  # FSDP2 registers its own unsharded parameters while they are unsharded
            return
        for name, p in self._model.named_parameters():
            if p.requires_grad and id(p) not in self._names:
                raise RuntimeError(
                    f"{when}: parameter {name!r} was added, replaced or unfrozen after GradientSurgery was built, so "
                    "its gradient would be left out of surgery; build the surgery when the model is final (after "
                    "wrapping, casting, moving or unfreezing its parameters)."
                )

    def _layout(self) -> list[tuple]:
        """What every rank must agree on: per buffer slot, its parameter's name, global shape and dtype (plain
        tensors sharded over ``shard_process_group`` may hold shards of different sizes: no shape for those)."""
        out = []
        for bucket in self._buffers.buckets:
            for slot in bucket.slots:
                if slot.dtensor_spec is not None:
                    shape = slot.dtensor_spec[2]
                else:
                    shape = slot.local_shape if bucket.shard_process_group is None else ()
                sliced = slot.slicing
                cut = () if sliced.dim is None else (sliced.segment, sliced.groups)
                out.append((self._names[id(slot.param)], tuple(shape), str(bucket.dtype), *cut))
        return out

    def _check_same_layout(self) -> None:
        """Every rank holds the same ordered domain list and the same parameters in the same buffer layout; else one
        clear error on every rank instead of mixed domains or a size mismatch deep inside a collective."""
        layout = self._layout()
        digest = hashlib.blake2b(repr((self._domains, layout)).encode(), digest_size=8).digest()
        fingerprint = int.from_bytes(digest, "little") >> 2

        def describe() -> str:
            elements = sum(int(torch.Size(entry[1]).numel()) for entry in layout if entry[1])
            return f"domains {list(self._domains)!r}, {len(layout)} parameters of {elements} elements"

        groups = [self._dp_process_group] if self._dp_process_group is not None else []
        groups += list(dict.fromkeys(b.shard_process_group for b in self._buffers.buckets
                                     if b.shard_process_group is not None))
        check_same_everywhere(fingerprint, describe, groups, self._device,
                              "the ordered domain list or the parameters surgery covers")
        self._layout_checked = True

    def _keeps_grad(self, slot) -> bool:
        """Whether ``slot``'s parameter gets the combined gradient, or keeps ``grad = None`` as in plain PyTorch: a
        frozen parameter, or one no backward reached in this process (known on the host from the accumulate-grad
        hooks). FSDP2 shards fire no hook, and under replication another rank may have reached the parameter, so
        there only a frozen parameter keeps None: the ranks decide alike without a collective."""
        if not slot.param.requires_grad:
            return False
        return slot.touched or slot.dtensor_spec is not None or self._dp_process_group is not None

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

    def agree_domains(self, names: Iterable[str] = (), process_group: object | None = None, *,
                      error: str | None = None) -> tuple[str, ...]:
        """Agree and check this step's domains on every rank before its first backward; return the domain list.

        One ``all_gather_object`` over ``process_group`` (default: all ranks; none outside torch.distributed)
        carries each rank's ``names`` and its ``error`` (a rank that could not read its rows' domains passes
        the reason): if any rank has an error, or a name the fixed domain list does not hold, every rank raises
        the same ``ValueError`` naming the ranks, instead of some ranks waiting in a later collective. When
        discovering domains (``domains=None``) every rank's new names are added, sorted, to the list on every
        rank, and :meth:`apply` does not agree again this step. Every rank must call it, also one that has no rows.
        """
        if self._active is not None:
            raise RuntimeError(f"agree_domains() called inside surgery.{self._active}.")
        names = list(names)
        if error is None:
            try:
                for name in names:
                    validate_domain_name(name)
                unknown = [] if self._discover else sorted(set(names) - set(self._domains))
                if unknown:
                    raise ValueError(f"unknown domains {unknown}; the known domains are {list(self._domains)!r}")
            except (TypeError, ValueError) as problem:
                error = str(problem)
        new = [] if error is not None or not self._discover else (
            self._domains[self._agreed :] + [n for n in dict.fromkeys(names) if n not in self._domains])
        if not self._discover and not any_rank(error is not None, process_group, self._device):
            return self.domains  # a fixed list and no problem anywhere: one flag all-reduce, no object gather
        gathered = gather_objects((new, error), process_group)
        errors = [f"rank {rank}: {str(problem).rstrip('.')}" for rank, (_, problem) in enumerate(gathered)
                  if problem is not None]
        if errors:
            raise ValueError(f"the step's domains could not be agreed across ranks: {'; '.join(errors)}.")
        if not self._discover:
            return self.domains
        known = self._domains[: self._agreed]
        agreed = known + sorted({d for rank_new, _ in gathered for d in rank_new} - set(known))
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
        else:
            step = nonnegative_int("step", step)
        self._check_parameters("apply()")
        if self._discover and is_distributed() and not self._agreed_this_step:
            self.agree_domains()  # before any other collective, so every rank has the same K
        self._agreed_this_step = False
        if not self._layout_checked and is_distributed():
            self._check_same_layout()  # once, before the first collective that depends on it
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
            shown = f"{bad[:10]}{' ...' if len(bad) > 10 else ''}"
            overflow = all(bool(torch.isfinite(b.data).all()) for b in buffers.buckets)  # this rank's shards
            buffers.release()
            if overflow:
                raise FloatingPointError(
                    f"the gradients are finite, but their squared norms overflow the Gram matrices' float32 in "
                    f"(group, domain) {shown}: some gradient entries are around 1e19 or larger; scale the loss down."
                )
            raise FloatingPointError(f"non-finite gradients in (group, domain) {shown}.")
        clean = without_nonfinite(gram, nonfinite)
        weights, projected = self._weights(clean, nonfinite, step)
        for bucket in buffers.buckets:
            combine_bucket(bucket, weights, self._dp_process_group, keep=self._keeps_grad)
        self._step = step + 1
        projects = self._method is None or self._method.projects
        return surgery_stats(gram, clean, nonfinite, self._domains, self._kind_masks, weights, projected, projects)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The step counter, seed and domain list, the Gram EMA when ``gram_ema > 0``, and the method's state
        under ``"method"`` when it keeps one (GradVac's per-group target cosines): all the state surgery has."""
        state = {"step": self._step, "seed": self.options.seed, "domains": list(self._domains),
                 "groups": self._groups_fingerprint()}
        if self._ema is not None:
            state["gram_ema"] = self._ema.state_dict()
        method_state = self._method.state_dict() if self._method is not None else {}
        if method_state:
            state["method"] = method_state
        return state

    def _groups_fingerprint(self) -> str:
        """The parameter groups (names and members) as a short hex digest: a checkpoint's must match."""
        groups = self.partition.layout_key() if self.partition.sliced else (self.partition.group_names,
                                                                            self.partition.group_of)
        return f"{len(self.partition.group_names)}:" + hashlib.blake2b(repr(groups).encode(), digest_size=8).hexdigest()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` saved with the same options (before the first backward).

        Raises:
            ValueError: the state is malformed, or was saved with another seed, another grouping of the parameters
                (granularity or model), another Gram-EMA setting or another method state; the message names both.
        """
        if not isinstance(state, dict) or "step" not in state or "domains" not in state:
            raise ValueError(f"not a GradientSurgery state (a dict with 'step' and 'domains'): {type(state).__name__}.")
        domains = list(validate_domains(state["domains"]) or ())
        step = nonnegative_int("the checkpoint's step", state["step"])
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
        if "seed" in state and int(state["seed"]) != self.options.seed:
            raise ValueError(f"the checkpoint was saved with seed={state['seed']}, this surgery has seed="
                             f"{self.options.seed}; resume with the seed it was saved with (surgery_seed).")
        if "groups" in state and state["groups"] != self._groups_fingerprint():
            raise ValueError(f"the checkpoint's parameter groups ({state['groups']}) differ from this surgery's "
                             f"({self._groups_fingerprint()}, granularity={self.options.granularity!r}): it was saved "
                             "with another granularity or another model; resume with the settings it was saved with.")
        if self._ema is None and "gram_ema" in state:
            raise ValueError(f"the checkpoint holds a Gram EMA (decay {state['gram_ema'].get('decay')}) but this "
                             "surgery has gram_ema=0 (or surgery='none'); resume with the settings it was saved with.")
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
        self._step = step
        if self._ema is not None:
            self._ema.load_state_dict(state["gram_ema"], self._device)
        if "method" in state:
            self._method.load_state_dict(state["method"])
