"""The core under torch.distributed (gloo, CPU, 2 processes) against a plain single-process reference.

Two spawned groups, each running several scenarios (process start and ``import torch`` dominate):

- FSDP2 (``fully_shard``): modular (parameter / module granularity), global and none surgery over
  two steps with an optimizer step in between, gradient accumulation in separate ``domain``
  blocks, uneven and empty shards, a domain that one rank feeds a zero loss, a domain nobody
  feeds, and a ``shared()`` loss.
- Replicated data parallel: ``dp_process_group=WORLD`` on a plain model (domains missing on one rank, a
  rank with no data at all, ``shared()`` and a stray backward on one rank only), DDP under
  ``no_sync()`` (and the error without it), and domain discovery (``domains=None``).

The children only train and record: per rank and step, the per-domain gradients of an unsharded
copy of the model on that rank's data, the surgery result (``p.grad.full_tensor()``), the
statistics and the agreed domain list. The parent averages the per-rank gradients (FSDP2's
reduce-scatter and DDP both average: a rank without a domain contributes zero), runs the reference
below, and asserts. The reference is independent of mgs except for the projection orders, which
are part of the specification (``pcgrad_orders`` with ``step_generator(seed, step)``).
"""

from __future__ import annotations

import contextlib
import copy
import traceback
import zlib

import pytest
import torch
from _launch import launch
from pcgrad_reference import reference_pcgrad
from torch import nn

import mgs
from mgs.methods import pcgrad_orders, step_generator

pytestmark = pytest.mark.distributed

WORLD = 2
SEED = 11
SHARED = "__shared__"  # label of shared() / stray gradients in the records
TOL = 1e-5


# ====================================================================== model and data (both sides)
class Net(nn.Module):
    """Linear layers with biases, a LayerNorm, an embedding; ``row`` has dim0 = 1 (rank 1's FSDP shard
    is empty) and ``fc1`` / ``embed`` / ``fc2`` have odd dim0 (uneven shards)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.row = nn.Parameter(torch.randn(1, 6) * 0.5)
        self.fc1 = nn.Linear(6, 5)
        self.norm = nn.LayerNorm(5)
        self.fc2 = nn.Linear(5, 7)
        self.head = nn.Linear(7, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.row
        x = self.norm(torch.tanh(self.fc1(x)))
        return self.head(torch.tanh(self.fc2(x)))


def make_net() -> Net:
    torch.manual_seed(0)
    return Net()


class HeadNet(nn.Module):
    """Attention-like projections (3 query heads and 1 key-value head of 2 features) and a fused experts module
    (3 experts), for sub-tensor groups. At 2 ranks FSDP2's Shard(0) cuts q_proj's rows 3 + 3 (inside head 1),
    k_proj's and v_proj's 1 + 1 (inside the key-value head), o_proj's 3 + 2 (its groups are columns) and the
    experts 2 + 1."""

    HEADS = mgs.AttentionHeads(num_heads=3, head_dim=2, num_kv_heads=1)

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 5)
        self.attn = nn.Module()
        self.attn.q_proj, self.attn.k_proj, self.attn.v_proj = nn.Linear(5, 6), nn.Linear(5, 2), nn.Linear(5, 2)
        self.attn.o_proj = nn.Linear(6, 5)
        self.mlp = nn.Module()
        self.mlp.gate = nn.Linear(5, 3, bias=False)
        self.mlp.experts = nn.Module()
        self.mlp.experts.gate_up_proj = nn.Parameter(torch.randn(3, 4, 5) * 0.5)
        self.mlp.experts.down_proj = nn.Parameter(torch.randn(3, 5, 2) * 0.5)
        self.head = nn.Linear(5, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        a = self.attn
        mixed = torch.tanh(a.q_proj(x)) * a.k_proj(x).repeat_interleave(3, -1) + a.v_proj(x).repeat_interleave(3, -1)
        x = x + a.o_proj(mixed)
        route = torch.softmax(self.mlp.gate(x), -1)  # [..., E]
        gate, up = torch.einsum("eih,...h->...ei", self.mlp.experts.gate_up_proj, x).chunk(2, dim=-1)
        y = torch.einsum("ehi,...ei->...eh", self.mlp.experts.down_proj, nn.functional.silu(gate) * up)
        return self.head(torch.tanh(x + (route.unsqueeze(-1) * y).sum(-2)))


def make_head_net() -> HeadNet:
    torch.manual_seed(0)
    return HeadNet()


def head_net_slices() -> dict[str, list[tuple[str, int | None, int, int]]]:
    """The groups of HeadNet under granularity="head+expert", written out by hand (the reference's own)."""
    out: dict[str, list] = {"embed": [("embed.weight", None, 0, 11)], "mlp.gate": [("mlp.gate.weight", None, 0, 3)],
                            "head": [("head.weight", None, 0, 4), ("head.bias", None, 0, 4)],
                            "attn.o_proj": [("attn.o_proj.bias", None, 0, 5)]}
    for proj, heads in (("q_proj", 3), ("k_proj", 1), ("v_proj", 1)):
        for h in range(heads):
            out[f"attn.{proj}:head{h}"] = [(f"attn.{proj}.weight", 0, 2 * h, 2 * h + 2),
                                           (f"attn.{proj}.bias", 0, 2 * h, 2 * h + 2)]
    for h in range(3):
        out[f"attn.o_proj:head{h}"] = [("attn.o_proj.weight", 1, 2 * h, 2 * h + 2)]
    for e in range(3):
        out[f"mlp.experts:expert{e}"] = [("mlp.experts.gate_up_proj", 0, e, e + 1), ("mlp.experts.down_proj", 0, e, e + 1)]
    return out


def batch(rank: int, label: str, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets that differ per rank, domain, step and micro-batch (same on both sides)."""
    shared = torch.Generator().manual_seed(1_000_003 * rank + 10_007 * step + 101 * micro)
    ids = torch.randint(0, 11, (3, 4), generator=shared)
    base = torch.randn(1, 1, 4, generator=shared) * 0.6  # coherent over positions, like the output
    gen = torch.Generator().manual_seed(1_000_003 * rank + 10_007 * step + 101 * micro + zlib.crc32(label.encode()))
    # "math" pulls against "code" and "chat" (so its projection order matters), plus per-domain noise
    sign = {"math": 2.0, "code": -1.5, "chat": -1.0}.get(label, 0.0)
    target = sign * base + torch.randn(3, 4, 4, generator=gen) * 1.5
    return ids, target


def loss_of(model: nn.Module, rank: int, label: str, step: int, micro: int, scale: float) -> torch.Tensor:
    ids, target = batch(rank, label, step, micro)
    return ((model(ids) - target) ** 2).mean() * scale


# ====================================================================== child side
def _strip(name: str) -> str:
    return name[len("module.") :] if name.startswith("module.") else name


def _full(t: torch.Tensor) -> torch.Tensor:
    t = t.full_tensor() if hasattr(t, "full_tensor") else t
    return t.detach().double().clone()


def _reference_grads(ref_model: nn.Module, rank: int, step: int, actions) -> dict[str, dict[str, torch.Tensor]]:
    """This rank's gradient of each label (domain or shared) on the unsharded copy, summed over its actions."""
    out = {}
    for label in dict.fromkeys(a[1] for a in actions):
        ref_model.zero_grad(set_to_none=True)
        for _, lab, micro, scale in actions:
            if lab == label:
                loss_of(ref_model, rank, lab, step, micro, scale).backward()
        out[label] = {
            n: (p.grad.double().clone() if p.grad is not None else torch.zeros(p.shape, dtype=torch.float64))
            for n, p in ref_model.named_parameters()
        }
    ref_model.zero_grad(set_to_none=True)
    return out


def run_steps(rank, model, ref_model, surgery, plan, steps, *, no_sync=None, zero_to_none=True, step_arg=True,
              before_step=None):
    """Train ``len(steps)`` steps; return one record per step.

    ``before_step(i, actions)``, if given, runs before a step's first backward (and may return extra record
    entries).

    ``plan(rank, i)`` lists actions ``(kind, label, micro, scale)``: kind "domain" (inside
    ``surgery.domain(label)``), "deferred" (the same with FSDP2 gradient sync off for that backward),
    "shared" (inside ``surgery.shared()``) or "stray" (no context).
    """
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    records = []
    for i, step in enumerate(steps):
        actions = plan(rank, i)
        extra = before_step(i, actions) if before_step is not None else {}
        for kind, label, micro, scale in actions:
            with contextlib.ExitStack() as stack:
                if no_sync is not None:  # DDP: forward and backward under no_sync()
                    stack.enter_context(no_sync())
                if kind in ("domain", "deferred"):
                    stack.enter_context(surgery.domain(label))
                if kind == "deferred":
                    model.set_requires_gradient_sync(False)
                    stack.callback(model.set_requires_gradient_sync, True)
                elif kind == "shared":
                    stack.enter_context(surgery.shared())
                loss_of(model, rank, label, step, micro, scale).backward()
        stats = surgery.apply(step=step) if step_arg else surgery.apply()
        grads, placements_ok = {}, True
        for n, p in model.named_parameters():
            g = p.grad
            if hasattr(p, "placements"):
                placements_ok &= (
                    hasattr(g, "placements")
                    and tuple(g.placements) == tuple(p.placements)
                    and g.to_local().shape == p.to_local().shape
                )
            grads[_strip(n)] = _full(g)
        records.append(
            {
                "step": step,
                "domains": list(surgery.domains),
                "groups": {k: [_strip(n) for n in v] for k, v in surgery.groups().items()},
                "result": grads,
                "placements_ok": placements_ok,
                "stats": {k: v.detach().double().tolist() for k, v in stats.items()},
                "local": _reference_grads(ref_model, rank, step, actions),
                "next_step": surgery.step,
                **(extra or {}),
            }
        )
        opt.step()
        opt.zero_grad(set_to_none=zero_to_none)
        with torch.no_grad():  # the reference copy follows the trained model
            for (_, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
                q.copy_(_full(p).to(q.dtype))
    return records


def _run_scenarios(rank: int, out_dir: str, scenarios) -> None:
    for name, body in scenarios:
        try:
            record = {"ok": True, "data": body(rank)}
        except BaseException:
            torch.save({"ok": False, "error": traceback.format_exc()}, f"{out_dir}/{name}.{rank}.pt")
            raise  # a failure may leave collectives unmatched: stop the group rather than risk a hang
        torch.save(record, f"{out_dir}/{name}.{rank}.pt")


# ---------------------------------------------------------------------- FSDP2 scenarios
D3 = ["math", "code", "chat"]
FSDP_MODES = [("modular", "parameter"), ("modular", "module"), ("global", "parameter"), ("none", "parameter")]


def _fsdp_model(hsdp: bool = False):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = make_net()
    ref_model = copy.deepcopy(model)
    if hsdp:  # 2 replicas of 1 shard: FSDP2 all-reduces (averages) over the replicate dimension
        mesh = init_device_mesh("cpu", (WORLD, 1), mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh("cpu", (WORLD,))
    fully_shard(model.fc1, mesh=mesh)
    fully_shard(model.fc2, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, ref_model


def _plan_fsdp_modes(rank, i):
    # every rank runs the same backward sequence (FSDP2's reduce-scatter runs inside backward);
    # step 1 accumulates "code" over two micro-batches in two separate domain blocks.
    if i == 0:
        return [("domain", "math", 0, 1.0), ("domain", "code", 0, 1.0), ("domain", "chat", 0, 0.5)]
    return [("domain", "code", 0, 1.0), ("domain", "math", 0, 2.0), ("domain", "code", 1, 1.0), ("domain", "chat", 0, 1.0)]


def _fsdp_modes(surgery_mode, granularity):
    def body(rank):
        model, ref_model = _fsdp_model()
        s = mgs.GradientSurgery(model, surgery=surgery_mode, granularity=granularity, domains=D3, seed=SEED)
        return run_steps(rank, model, ref_model, s, _plan_fsdp_modes, [5, 6], zero_to_none=surgery_mode != "none")

    return body


D4 = ["math", "code", "chat", "safety"]  # nobody feeds "safety"


def _plan_fsdp_partial(rank, i):
    # "math" exists on rank 0 only: rank 1 joins FSDP's collectives with a zero loss.
    math_scale = 1.0 if rank == 0 else 0.0
    return [
        ("stray", SHARED, 1, 0.2),  # a backward outside any context: FSDP2 creates p.grad itself → shared
        ("domain", "math", 0, math_scale),
        ("shared", SHARED, 0, 0.3),
        ("domain", "code", 0, 1.0),
        ("domain", "chat", 0, 1.0),
        ("domain", "math", 1, math_scale),
    ]


def _fsdp_partial(rank):
    model, ref_model = _fsdp_model()
    s = mgs.GradientSurgery(model, surgery="modular", domains=D4, seed=SEED)
    return run_steps(rank, model, ref_model, s, _plan_fsdp_partial, [0, 1])


def _hsdp(rank):
    model, ref_model = _fsdp_model(hsdp=True)
    s = mgs.GradientSurgery(model, surgery="modular", domains=D3, seed=SEED)
    return run_steps(rank, model, ref_model, s, _plan_fsdp_modes, [5, 6])


def _fsdp_nonfinite(rank):
    """on_nonfinite="raise" with an infinite loss on rank 0 only: every rank must raise (the flags come
    from the all-reduced Gram), or the ranks' collectives would part ways; the next step is clean."""
    model, ref_model = _fsdp_model()
    s = mgs.GradientSurgery(model, surgery="modular", domains=D3, seed=SEED, on_nonfinite="raise")
    for _, label, micro, scale in _plan_fsdp_modes(rank, 0):
        if rank == 0 and label == "code":
            scale = float("inf")
        with s.domain(label):
            loss_of(model, rank, label, 0, micro, scale).backward()
    try:
        s.apply(step=0)
    except FloatingPointError as e:
        error = str(e)
    else:
        error = None
    grads_cleared = all(p.grad is None for p in model.parameters())
    records = run_steps(rank, model, ref_model, s, _plan_fsdp_modes, [5])
    return {"error": error, "grads_cleared": grads_cleared, "records": records}


def _plan_fsdp_deferred(rank, i):
    # gradient accumulation without communication inside a domain: "math" defers its first micro-batch
    # (sync off, its own context) and syncs on its second, before any other domain runs
    return [("deferred", "math", 0, 1.0), ("domain", "math", 1, 1.0), ("domain", "code", 0, 1.0), ("domain", "chat", 0, 0.5)]


def _fsdp_deferred_sync(rank):
    model, ref_model = _fsdp_model()
    s = mgs.GradientSurgery(model, surgery="modular", domains=D3, seed=SEED)
    return run_steps(rank, model, ref_model, s, _plan_fsdp_deferred, [3])


def _fsdp_sync_off(rank):
    """FSDP2 gradient accumulation without communication across domains: "math" backprops with gradient
    sync off, so FSDP2 keeps its unsharded gradient and would reduce-scatter it at the next syncing
    backward, in "code"'s context. mgs must refuse on entering "code" and at apply()."""
    model, _ = _fsdp_model()
    s = mgs.GradientSurgery(model, surgery="modular", domains=D3, seed=SEED)
    errors = []
    model.set_requires_gradient_sync(False)
    with s.domain("math"):
        loss_of(model, rank, "math", 0, 0, 1.0).backward()
    for attempt in (lambda: s.domain("code").__enter__(), lambda: s.apply(step=0)):
        try:
            attempt()
        except RuntimeError as e:
            errors.append(str(e))
    model.set_requires_gradient_sync(True)
    return {"errors": errors}


def _sliced(mode: str):
    """HeadNet under granularity="head+expert": FSDP2 (uneven shards cut inside heads), or replicated data parallel
    (dp_process_group=WORLD, rank 1 lacking "chat" in the first step)."""

    def body(rank):
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        model = make_head_net()
        ref_model = copy.deepcopy(model)
        kwargs = {}
        if mode == "fsdp":
            mesh = init_device_mesh("cpu", (WORLD,))
            fully_shard(model.attn.o_proj, mesh=mesh)
            fully_shard(model, mesh=mesh)
        else:
            kwargs["dp_process_group"] = dist.group.WORLD
        s = mgs.GradientSurgery(model, granularity="head+expert", heads=HeadNet.HEADS, domains=D3, seed=SEED,
                                **kwargs)
        plan = _plan_fsdp_modes if mode == "fsdp" else _plan_ddp
        records = run_steps(rank, model, ref_model, s, plan, [5, 6],
                            before_step=lambda i, actions: {"slices": s.group_slices()})
        if mode == "fsdp":
            records[0]["local_shapes"] = {n: tuple(p.to_local().shape) for n, p in model.named_parameters()}
        return records

    return body


FSDP_SCENARIOS = [(f"fsdp_{m}_{g}", _fsdp_modes(m, g)) for m, g in FSDP_MODES] + [
    ("fsdp_sliced", _sliced("fsdp")),
    ("fsdp_partial", _fsdp_partial),
    ("hsdp", _hsdp),
    ("fsdp_nonfinite", _fsdp_nonfinite),
    ("fsdp_deferred_sync", _fsdp_deferred_sync),
    ("fsdp_sync_off", _fsdp_sync_off),  # last: it exercises an unsupported pattern
]


def fsdp_worker(rank: int, world: int, out_dir: str) -> None:
    _run_scenarios(rank, out_dir, FSDP_SCENARIOS)


# ---------------------------------------------------------------------- replicated scenarios
def _plan_replicated(rank, i):
    if i == 0:  # rank 1 lacks "chat"; shared() on rank 0 only; rank 1 accumulates "math" in two blocks
        if rank == 0:
            return [("domain", "math", 0, 1.0), ("domain", "code", 0, 1.0), ("domain", "chat", 0, 1.0), ("shared", SHARED, 0, 0.5)]
        return [("domain", "math", 0, 1.0), ("domain", "code", 0, 1.5), ("domain", "math", 1, 1.0)]
    if i == 1:  # rank 1 backprops outside any context (a stray gradient: shared)
        if rank == 0:
            return [("domain", "chat", 0, 1.0), ("domain", "code", 0, 1.0)]
        return [("stray", SHARED, 0, 0.4), ("domain", "math", 0, 1.0), ("domain", "chat", 0, 1.0)]
    # rank 1 saw no data at all
    return [("domain", "math", 0, 1.0), ("domain", "code", 0, 1.0), ("domain", "chat", 0, 0.7)] if rank == 0 else []


def _replicated(surgery_mode, granularity):
    def body(rank):
        import torch.distributed as dist

        model = make_net()
        ref_model = copy.deepcopy(model)
        s = mgs.GradientSurgery(model, surgery=surgery_mode, granularity=granularity, domains=D3, seed=SEED, dp_process_group=dist.group.WORLD)
        return run_steps(rank, model, ref_model, s, _plan_replicated, [3, 4, 9])

    return body


def _plan_ddp(rank, i):
    if rank == 0:
        return [("domain", "math", 0, 1.0), ("domain", "code", 0, 1.0), ("domain", "chat", 0, 1.0)]
    return [("domain", "code", 0, 1.0), ("domain", "math", 0, 1.0), ("domain", "math", 1, 0.5)]  # no "chat"


def _ddp(rank):
    from torch.nn.parallel import DistributedDataParallel

    model = make_net()
    ref_model = copy.deepcopy(model)
    ddp = DistributedDataParallel(model)
    s = mgs.GradientSurgery(ddp, surgery="modular", granularity="module", domains=D3, seed=SEED)
    errors = {}
    for label, ctx in (("domain", lambda: s.domain("math")), ("shared", s.shared)):
        try:
            with ctx():
                pass
        except RuntimeError as e:
            errors[label] = str(e)
        else:
            errors[label] = None
    records = run_steps(rank, ddp, ref_model, s, _plan_ddp, [2, 8], no_sync=ddp.no_sync)
    return {"errors": errors, "records": records}


def _plan_discovery(rank, i):
    if i == 0:
        labels = ["math", "code"] if rank == 0 else ["chat", "math"]
    elif i == 1:  # other first-use orders: the agreed list is reused
        labels = ["code", "math"] if rank == 0 else ["math", "chat"]
    else:  # a new domain on rank 1 only is appended on both
        labels = ["code"] if rank == 0 else ["if", "math"]
    return [("domain", d, 0, 1.0) for d in labels]


def _discovery(rank):
    import torch.distributed as dist

    model = make_net()
    ref_model = copy.deepcopy(model)
    s = mgs.GradientSurgery(model, surgery="modular", domains=None, seed=SEED, dp_process_group=dist.group.WORLD)
    return run_steps(rank, model, ref_model, s, _plan_discovery, [0, 1, 2], step_arg=False)


def _discovery_agreed(rank):
    """The discovery plan with the domains agreed up front (as the verl engine does): one all_gather_object per
    step in all, not one by the adapter and one by apply(); a name outside the agreed list is refused."""
    import torch.distributed as dist

    import mgs._collectives as collectives

    model = make_net()
    ref_model = copy.deepcopy(model)
    s = mgs.GradientSurgery(model, surgery="modular", domains=None, seed=SEED, dp_process_group=dist.group.WORLD)
    current: dict[str, list] = {"calls": []}
    gather = collectives.dist.all_gather_object

    def counting(*args, **kwargs):
        current["calls"].append(1)
        return gather(*args, **kwargs)

    def before_step(i, actions):
        current["calls"] = []  # this step's record keeps this list: the agreement below and apply() add to it
        s.agree_domains([label for _, label, _, _ in actions], process_group=dist.group.WORLD)
        try:
            with s.domain("not-agreed"):
                pass
            refused = None
        except ValueError as error:
            refused = str(error)
        return {"gathers": current["calls"], "refused": refused}

    collectives.dist.all_gather_object = counting
    try:
        records = run_steps(rank, model, ref_model, s, _plan_discovery, [0, 1, 2], step_arg=False,
                            before_step=before_step)
    finally:
        collectives.dist.all_gather_object = gather
    for record in records:
        record["gathers"] = len(record["gathers"])
    return records


def _agree_errors(rank):
    """A problem on one rank only (an unknown domain, a row it could not read) is the same error on every rank."""
    import torch.distributed as dist

    out = {}
    fixed = mgs.GradientSurgery(make_net(), domains=["math", "chat"], seed=SEED, dp_process_group=dist.group.WORLD)
    free = mgs.GradientSurgery(make_net(), domains=None, seed=SEED, dp_process_group=dist.group.WORLD)
    cases = {"unknown": (fixed, ["code"] if rank == 1 else ["math"], None),
             "unreadable": (free, ["math"], "row 3 has no domain" if rank == 0 else None)}
    for case, (surgery, names, error) in cases.items():
        try:
            surgery.agree_domains(names, process_group=dist.group.WORLD, error=error)
            out[case] = None
        except ValueError as problem:
            out[case] = str(problem)
    out["after"] = list(free.agree_domains(["math"], process_group=dist.group.WORLD))  # still usable
    return out


def _layout_mismatch(rank):
    """The same domains in another order on rank 1: refused on both ranks at the first apply, naming both lists."""
    import torch.distributed as dist

    domains = ["math", "chat"] if rank == 0 else ["chat", "math"]
    model = make_net()
    s = mgs.GradientSurgery(model, domains=domains, seed=SEED, dp_process_group=dist.group.WORLD)
    with s.domain("math"):
        loss_of(model, rank, "math", 0, 0, 1.0).backward()
    try:
        s.apply(step=0)
        return None
    except ValueError as problem:
        return str(problem)


REPLICATED_SCENARIOS = [
    ("replicated_sliced", _sliced("replicated")),
    ("replicated_modular_parameter", _replicated("modular", "parameter")),
    ("replicated_global_parameter", _replicated("global", "parameter")),
    ("ddp", _ddp),
    ("discovery", _discovery),
    ("discovery_agreed", _discovery_agreed),
    ("agree_errors", _agree_errors),
    ("layout_mismatch", _layout_mismatch),
]


def replicated_worker(rank: int, world: int, out_dir: str) -> None:
    _run_scenarios(rank, out_dir, REPLICATED_SCENARIOS)


# ====================================================================== reference (parent side)
def mean_grads(records: list[dict]) -> dict[str, dict[str, torch.Tensor]]:
    """label → name → mean over ranks of the rank's gradient (a rank without the label contributes zero)."""
    r0 = records[0]
    shapes = {n: t.shape for n, t in r0["result"].items()}
    labels = list(r0["domains"]) + [SHARED]
    out = {}
    for label in labels:
        out[label] = {n: torch.zeros(shape, dtype=torch.float64) for n, shape in shapes.items()}
        for rec in records:
            for n, g in rec["local"].get(label, {}).items():
                out[label][n] += g / len(records)
    return out


def reference(records: list[dict], surgery_mode: str, seed: int = SEED, step: int | None = None):
    """Expected p.grad per name, expected stats, and the smallest branch margin."""
    r0 = records[0]
    step = r0["step"] if step is None else step
    domains, groups = r0["domains"], r0["groups"]
    mean = mean_grads(records)
    k = len(domains)
    names = [n for g in groups.values() for n in g]
    expected = {n: mean[SHARED][n].clone() for n in names}
    margin = float("inf")
    if surgery_mode == "none":
        for d in domains:
            for n in names:
                expected[n] += mean[d][n]
    else:
        lists = [names] if surgery_mode == "global" else list(groups.values())
        orders = pcgrad_orders(len(lists), k, step_generator(seed, step))
        for m, group in enumerate(lists):
            vectors = [torch.cat([mean[d][n].flatten() for n in group]) for d in domains]
            combined, mg = reference_pcgrad(vectors, orders[m])
            margin = min(margin, mg)
            offset = 0
            for n in group:
                size = expected[n].numel()
                expected[n] += combined[offset : offset + size].view(expected[n].shape)
                offset += size
    # statistics: over (group, pair) with both norms > 0
    conflicts = valid = 0
    for group in groups.values():
        vecs = [torch.cat([mean[d][n].flatten() for n in group]) for d in domains]
        for i in range(k):
            for j in range(i + 1, k):
                if float(vecs[i].norm()) > 0 and float(vecs[j].norm()) > 0:
                    valid += 1
                    conflicts += float(vecs[i] @ vecs[j]) < 0
    stats = {"conflict_frac": conflicts / valid if valid else float("nan")}
    for d in domains:
        stats[f"grad_norm/{d}"] = sum(float(mean[d][n].pow(2).sum()) for n in names) ** 0.5
    return expected, stats, margin


def group_errors(result: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], groups) -> dict[str, float]:
    errors = {}
    for key, names in groups.items():
        got = torch.cat([result[n].flatten() for n in names])
        ref = torch.cat([expected[n].flatten() for n in names])
        errors[key] = float((got - ref).norm() / ref.norm().clamp_min(1e-300))
    return errors


def check_step(records: list[dict], surgery_mode: str, **kw) -> tuple[dict, dict]:
    """Assert one step of all ranks against the reference; return (expected, reference stats)."""
    r0 = records[0]
    expected, ref_stats, margin = reference(records, surgery_mode, **kw)
    # mgs works from float32 gradients (float32 chunk Grams): their cosines are good to ~1e-6 here
    assert margin > 1e-5, f"test data too close to a PCGrad branch point (margin {margin:.2e}); change the data"
    for rank, rec in enumerate(records):
        assert rec["domains"] == r0["domains"], f"rank {rank} domains {rec['domains']} != {r0['domains']}"
        assert rec["groups"] == r0["groups"]
        assert rec["placements_ok"], f"rank {rank}: p.grad is not a DTensor shaped like its parameter"
        errors = group_errors(rec["result"], expected, rec["groups"])
        bad = {g: e for g, e in errors.items() if not e <= TOL}
        assert not bad, f"rank {rank} step {rec['step']}: group errors above {TOL}: {bad}"
        # statistics: identical on every rank, and equal to the reference
        assert rec["stats"].keys() == r0["stats"].keys()
        for key, value in rec["stats"].items():
            assert value == r0["stats"][key] or (value != value and r0["stats"][key] != r0["stats"][key]), (rank, key)
    for key, value in ref_stats.items():
        got = r0["stats"][key]
        assert abs(got - value) <= 1e-5 * max(abs(value), 1e-12), f"stat {key}: {got} != reference {value}"
    return expected, ref_stats


# ====================================================================== parent: launch once per group
def _load(out_dir, name: str) -> list:
    files = [out_dir / f"{name}.{rank}.pt" for rank in range(WORLD)]
    return [torch.load(f, weights_only=True) if f.exists() else None for f in files]


class _Group:
    def __init__(self, worker, tmp_path) -> None:
        self.error = None
        self.out_dir = tmp_path / "out"
        try:
            launch(worker, tmp_path, world_size=WORLD, deadline_s=150, pg_timeout_s=60)
        except BaseException as e:  # report it in every test whose scenario did not finish
            self.error = f"{type(e).__name__}: {e}"

    def scenario(self, name: str) -> list:
        loaded = _load(self.out_dir, name)
        for rank, rec in enumerate(loaded):
            if rec is None:
                pytest.fail(f"scenario {name} did not run on rank {rank}; the group failed with:\n{self.error}")
            if not rec["ok"]:
                pytest.fail(f"scenario {name} raised on rank {rank}:\n{rec['error']}")
        return [rec["data"] for rec in loaded]


@pytest.fixture(scope="module")
def fsdp_group(tmp_path_factory):
    return _Group(fsdp_worker, tmp_path_factory.mktemp("fsdp"))


@pytest.fixture(scope="module")
def replicated_group(tmp_path_factory):
    return _Group(replicated_worker, tmp_path_factory.mktemp("replicated"))


def _steps(per_rank: list[list[dict]]) -> list[list[dict]]:
    """[rank][step] → [step][rank]."""
    return [list(step) for step in zip(*per_rank)]


# ====================================================================== tests
@pytest.mark.parametrize("surgery_mode,granularity", FSDP_MODES, ids=[f"{m}-{g}" for m, g in FSDP_MODES])
def test_fsdp2_equals_reference(fsdp_group, surgery_mode, granularity):
    """FSDP2 shards (uneven, one empty on rank 1), K = 3, two steps with an optimizer step between and
    "code" accumulated over two domain blocks in step 2: p.grad.full_tensor() and the statistics equal
    the reference on per-domain gradients averaged over the ranks."""
    steps = _steps(fsdp_group.scenario(f"fsdp_{surgery_mode}_{granularity}"))
    assert [s[0]["step"] for s in steps] == [5, 6] and steps[-1][0]["next_step"] == 7
    groups = steps[0][0]["groups"]
    if granularity == "module":
        assert "row" in groups[""] and groups["fc1"] == ["fc1.weight", "fc1.bias"]
    for records in steps:
        expected, ref_stats = check_step(records, surgery_mode)
        assert 0 < ref_stats["conflict_frac"] < 1, "the data should conflict in some groups only"
        if surgery_mode != "none":  # guard: surgery changed the update, and with it the random orders matter
            plain, _, _ = reference(records, "none")
            assert max(group_errors(expected, plain, groups).values()) > 1e-3
    if surgery_mode == "modular":
        m, k = len(groups), 3
        assert not torch.equal(pcgrad_orders(m, k, step_generator(SEED, 5)), pcgrad_orders(m, k, step_generator(SEED, 6)))
        # guard: in some group, the other step's orders would give another result (so the matches
        # above show that apply(step=...) reaches the method's random orders)
        sensitive = 0.0
        for records, other in ((steps[0], 6), (steps[1], 5)):
            wrong, _, _ = reference(records, surgery_mode, step=other)
            sensitive = max(sensitive, *group_errors(records[0]["result"], wrong, groups).values())
        assert sensitive > 1e-3


def _narrow(t: torch.Tensor, dim: int | None, start: int, stop: int) -> torch.Tensor:
    return t if dim is None else t.narrow(dim, start, stop - start)


def check_sliced_step(records: list[dict]) -> None:
    """Per hand-written group of slices: the K domains' rank-averaged slices concatenated, PCGrad'ed (the plain
    reference), put back; every rank's p.grad equals that."""
    r0 = records[0]
    slices = head_net_slices()
    assert {k: sorted(map(tuple, v)) for k, v in r0["slices"].items()} == {k: sorted(v) for k, v in slices.items()}
    domains, mean = r0["domains"], mean_grads(records)
    expected = {n: mean[SHARED][n].clone() for n in r0["result"]}
    order = list(r0["slices"])  # mgs's group positions, which index the projection orders
    orders = pcgrad_orders(len(order), len(domains), step_generator(SEED, r0["step"]))
    margin, changed = float("inf"), 0.0
    for key, pieces in slices.items():
        vectors = [torch.cat([_narrow(mean[d][n], *cut).flatten() for n, *cut in pieces]) for d in domains]
        combined, mg = reference_pcgrad(vectors, orders[order.index(key)])
        margin = min(margin, mg)
        changed = max(changed, float((combined - sum(vectors)).norm() / combined.norm()))
        offset = 0
        for n, *cut in pieces:
            target = _narrow(expected[n], *cut)
            target += combined[offset : offset + target.numel()].view(target.shape)
            offset += target.numel()
    assert margin > 1e-5, margin
    assert changed > 1e-3  # surgery changed some group: the test can tell slices apart
    for rank, rec in enumerate(records):
        assert rec["placements_ok"]
        for n, got in rec["result"].items():
            error = float((got - expected[n]).norm() / expected[n].norm())
            assert error <= TOL, (rank, rec["step"], n, error)


def test_fsdp2_sub_tensor_groups_equal_the_reference(fsdp_group):
    """granularity="head+expert" under FSDP2 with uneven shards cut inside heads (q_proj rows 3 + 3, k/v 1 + 1,
    o_proj 3 + 2, experts 2 + 1): p.grad.full_tensor() equals the float64 reference on rank-averaged gradients."""
    per_rank = fsdp_group.scenario("fsdp_sliced")
    assert per_rank[0][0]["local_shapes"]["attn.q_proj.weight"] == (3, 5)  # the cut falls inside head 1
    assert per_rank[0][0]["local_shapes"]["mlp.experts.gate_up_proj"] == (2, 4, 5)
    for records in _steps(per_rank):
        check_sliced_step(records)


def test_replicated_sub_tensor_groups_equal_the_reference(replicated_group):
    for records in _steps(replicated_group.scenario("replicated_sliced")):
        check_sliced_step(records)


def test_fsdp2_domain_absent_on_one_rank(fsdp_group):
    """Rank 1 feeds "math" a zero loss (FSDP2's collectives run inside backward), nobody feeds "safety",
    a stray backward outside any context and a shared() loss on both ranks: equal to the reference
    (shared and stray added unprojected), "safety" is a zero row (norm 0)."""
    steps = _steps(fsdp_group.scenario("fsdp_partial"))
    for records in steps:
        check_step(records, "modular")
        assert records[0]["stats"]["grad_norm/safety"] == 0.0
        # the zero-loss pass really was zero on rank 1, and not on rank 0
        assert all(float(g.abs().max()) == 0 for g in records[1]["local"]["math"].values())
        assert any(float(g.abs().max()) > 0 for g in records[0]["local"]["math"].values())


def test_hsdp_replicate_and_shard_mesh(fsdp_group):
    """HSDP (a 2 × 1 mesh: FSDP2 averages over the replicate dimension in backward, the shard group has
    one rank): the same results as the reference on averaged gradients, on both replicas."""
    steps = _steps(fsdp_group.scenario("hsdp"))
    for records in steps:
        check_step(records, "modular")


def test_fsdp2_nonfinite_raise_is_collective(fsdp_group):
    """An infinite loss on rank 0 only: both ranks raise FloatingPointError naming "code", keep no
    gradient, and the next step equals the reference."""
    per_rank = fsdp_group.scenario("fsdp_nonfinite")
    for rank, data in enumerate(per_rank):
        assert data["error"] is not None, f"rank {rank} did not raise"
        assert "code" in data["error"] and "math" not in data["error"]
        assert data["grads_cleared"]
    for records in _steps([d["records"] for d in per_rank]):
        check_step(records, "modular")


def test_fsdp2_deferred_sync_within_a_domain(fsdp_group):
    """set_requires_gradient_sync(False) for a domain's first micro-batch, on for its last: allowed, exact."""
    for records in _steps(fsdp_group.scenario("fsdp_deferred_sync")):
        check_step(records, "modular")


def test_fsdp2_gradient_held_back_across_domains_is_refused(fsdp_group):
    """A gradient FSDP2 still holds unreduced when another domain starts (or apply() runs) would be reduced
    into the wrong domain: both are clear errors naming gradient sync, on every rank."""
    for data in fsdp_group.scenario("fsdp_sync_off"):
        assert len(data["errors"]) == 2, data
        assert all("set_requires_gradient_sync(False)" in e for e in data["errors"]), data["errors"]


@pytest.mark.parametrize("surgery_mode", ["modular", "global"])
def test_replicated_dp_group_averages_domains_and_shared(replicated_group, surgery_mode):
    """dp_process_group=WORLD on a plain replicated model: rank 1 lacks "chat" (step 1), a shared() loss on rank 0
    only, a stray backward outside any context on rank 1 (step 2), and rank 1 without any data (step 3).
    apply() averages each domain and the shared part over the ranks (absent = zero) before surgery;
    the replicas stay identical."""
    steps = _steps(replicated_group.scenario(f"replicated_{surgery_mode}_parameter"))
    assert [s[0]["step"] for s in steps] == [3, 4, 9]
    for records in steps:
        check_step(records, surgery_mode)
        for n, g in records[1]["result"].items():
            assert torch.equal(g, records[0]["result"][n]), f"replicas diverge on {n}"
    assert "chat" not in steps[0][1]["local"] and SHARED in steps[0][0]["local"] and SHARED in steps[1][1]["local"]


def test_ddp_requires_no_sync_and_uses_its_group(replicated_group):
    """Under DDP, surgery contexts outside no_sync() raise; under no_sync() the DDP group is the default
    dp_process_group (rank 1 lacks "chat"; results equal the averaged reference)."""
    per_rank = replicated_group.scenario("ddp")
    for data in per_rank:
        for label, message in data["errors"].items():
            assert message is not None, f"surgery.{label} without no_sync() did not raise"
            assert "no_sync" in message
    steps = _steps([d["records"] for d in per_rank])
    for records in steps:
        check_step(records, "modular")
    assert "chat" not in steps[0][1]["local"]


def test_domain_discovery_is_agreed_across_ranks(replicated_group):
    """domains=None: rank 0 uses [math, code], rank 1 [chat, math] → both agree on the sorted new names;
    step 2 (other first-use orders) keeps the list; step 3 appends a name seen on rank 1 only."""
    steps = _steps(replicated_group.scenario("discovery"))
    assert [s[0]["step"] for s in steps] == [0, 1, 2]  # apply() without step: the internal counter
    assert [s[0]["domains"] for s in steps] == [["chat", "code", "math"]] * 2 + [["chat", "code", "math", "if"]]
    for records in steps:
        check_step(records, "modular")


def test_domains_agreed_up_front_are_agreed_once_per_step(replicated_group):
    """GradientSurgery.agree_domains() before the backward passes (the verl engine's order) gives the same
    lists and results as agreeing in apply(), with one all_gather_object per step, not two."""
    steps = _steps(replicated_group.scenario("discovery_agreed"))
    assert [s[0]["domains"] for s in steps] == [["chat", "code", "math"]] * 2 + [["chat", "code", "math", "if"]]
    for records in steps:
        check_step(records, "modular")
        for record in records:
            assert "'not-agreed' is not among the domains agreed across ranks" in record["refused"]
            assert record["gathers"] == 1


def test_a_domain_problem_on_one_rank_is_the_same_error_on_every_rank(replicated_group):
    per_rank = replicated_group.scenario("agree_errors")
    for out in per_rank:
        assert "rank 1: unknown domains ['code']" in out["unknown"]
        assert "rank 0: row 3 has no domain" in out["unreadable"]
        assert out["after"] == ["math"]
    assert per_rank[0]["unknown"] == per_rank[1]["unknown"]


def test_ranks_with_different_domain_orders_are_refused_on_every_rank(replicated_group):
    for message in replicated_group.scenario("layout_mismatch"):
        assert message and "the ranks disagree on the ordered domain list" in message
        assert "rank 0: domains ['math', 'chat']" in message and "rank 1: domains ['chat', 'math']" in message
