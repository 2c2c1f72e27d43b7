"""Benchmark: what does ``GradientSurgery.apply()`` cost, next to a plain sum and a research-code loop?

Measures, on one transformer-shaped parameter set (real ``nn.Parameter``\\ s with Hugging Face names,
no forward pass) and K synthetic, fixed domain gradients with a fixed fraction of conflicting
(tensor, domain pair)s:

1. ``surgery.apply()`` for ``surgery="modular"`` (granularity ``"parameter"``, method ``"pcgrad"``),
   and for ``"global"`` and ``"none"``. Only ``apply()`` is timed: the domain buffers are refilled
   before every repetition with ``p.grad.copy_(g)`` inside ``surgery.domain(name)`` (no autograd).
2. A per-tensor PCGrad loop written the way research code is: for each tensor, for each domain
   ``i``, clone ``g_i``, then for each other domain ``j`` in shuffled order ``dot = torch.dot(gi, gj)``,
   a Python ``if dot < 0:`` (a host sync), project; then sum.
3. The plain K-way sum of the same gradients (the memory-traffic floor): per tensor, from a ``[K, N]``
   contiguous stack (the layout of the surgery's buckets), ``torch.sum(X, 0, out=prealloc)`` and a
   chained ``torch.add(a, b, out=o); o.add_(c)``; "plain sum" is the faster of the two. Both write into
   preallocated, already-touched outputs, so the floor pays no allocation or page faults. ``apply()``
   does allocate its output (one bucket at a time) and frees the buffers, so "plain sum
   (allocating)" (``X.sum(0)`` into a fresh tensor) is reported for context.

All measurements are interleaved (one of each per repetition, in rotating order) and the minimum
over repetitions is reported. Targets (PASS/FAIL is printed; ``--strict`` turns a FAIL into exit 1):
``apply()`` <= 2.5x the plain sum on CPU (<= 2x on CUDA), and faster than the per-tensor loop.

It also reports memory in gradient units (1 unit = all parameters' bytes): what the K domain
buffers hold before ``apply()`` (about K), the peak during ``apply()`` (about K: it writes in place),
what is left after it (still K: ``p.grad`` is a view of the buffers' row 0) and after
``zero_grad()`` drops ``p.grad`` (about 0: surgery keeps no reference). On CUDA from the allocator's peak
statistics, on CPU from the process's peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``).

Launch::

    python benchmarks/bench_surgery.py                          # CPU, preset "small" (~34M params, 99 tensors), K=3
    python benchmarks/bench_surgery.py --quick                  # smoke run: tiny preset, 2 repetitions (seconds)
    python benchmarks/bench_surgery.py --device cuda --preset 1b            # ~1B params on a GPU
    python benchmarks/bench_surgery.py --device cuda --preset 1b --dtype bfloat16
    python benchmarks/bench_surgery.py --domains 4 --conflict-frac 0.5 --reps 25 --strict
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

import mgs

PRESETS = {
    # name: (hidden, intermediate, vocab, layers)
    "tiny": (64, 176, 512, 2),
    "small": (512, 1408, 8192, 8),
    "1b": (2048, 5632, 32000, 16),
    "7b-layers": (4096, 11008, 32000, 4),  # a 7B model's tensor shapes (Llama-2-7B), 4 of its 32 layers: ~1.07B
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

TARGET_CPU = 2.5  # apply() / plain sum
TARGET_CUDA = 2.0


# ---------------------------------------------------------------------------------------------- model
def _param(*shape: int, device: torch.device, dtype: torch.dtype) -> nn.Parameter:
    # Uninitialised: the values of the parameters never matter, only their gradients' shapes.
    return nn.Parameter(torch.empty(*shape, device=device, dtype=dtype))


class _Linear(nn.Module):
    def __init__(self, n_in: int, n_out: int, bias: bool, **kw) -> None:
        super().__init__()
        self.weight = _param(n_out, n_in, **kw)
        self.bias = _param(n_out, **kw) if bias else None


class _Norm(nn.Module):
    def __init__(self, n: int, **kw) -> None:
        super().__init__()
        self.weight = _param(n, **kw)


class _Embedding(nn.Module):
    def __init__(self, vocab: int, hidden: int, **kw) -> None:
        super().__init__()
        self.weight = _param(vocab, hidden, **kw)


class _Attention(nn.Module):
    def __init__(self, h: int, **kw) -> None:
        super().__init__()
        self.q_proj = _Linear(h, h, True, **kw)
        self.k_proj = _Linear(h, h, True, **kw)
        self.v_proj = _Linear(h, h, True, **kw)
        self.o_proj = _Linear(h, h, False, **kw)


class _MLP(nn.Module):
    def __init__(self, h: int, i: int, **kw) -> None:
        super().__init__()
        self.gate_proj = _Linear(h, i, False, **kw)
        self.up_proj = _Linear(h, i, False, **kw)
        self.down_proj = _Linear(i, h, False, **kw)


class _Layer(nn.Module):
    def __init__(self, h: int, i: int, **kw) -> None:
        super().__init__()
        self.self_attn = _Attention(h, **kw)
        self.mlp = _MLP(h, i, **kw)
        self.input_layernorm = _Norm(h, **kw)
        self.post_attention_layernorm = _Norm(h, **kw)


class _Inner(nn.Module):
    def __init__(self, h: int, i: int, vocab: int, layers: int, **kw) -> None:
        super().__init__()
        self.embed_tokens = _Embedding(vocab, h, **kw)
        self.layers = nn.ModuleList(_Layer(h, i, **kw) for _ in range(layers))
        self.norm = _Norm(h, **kw)


class TransformerShaped(nn.Module):
    """Parameters named like a Hugging Face Llama/Qwen2 causal LM (q/k/v biases, untied lm_head)."""

    def __init__(self, hidden: int, intermediate: int, vocab: int, layers: int, device, dtype) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.model = _Inner(hidden, intermediate, vocab, layers, **kw)
        self.lm_head = _Linear(hidden, vocab, False, **kw)


# ---------------------------------------------------------------------------------------------- data
def _sign_patterns(num_tensors: int, k: int, frac: float, rng: random.Random) -> list[list[int]]:
    """Per tensor, K signs; a tensor with m minus signs has m*(K-m) conflicting domain pairs.

    Chosen greedily so that the total number of conflicting (tensor, pair)s comes close to
    ``frac`` of all of them, then shuffled over the tensors.
    """
    pairs = k * (k - 1) // 2
    target = round(frac * num_tensors * pairs)
    counts = []
    remaining = target
    for t in range(num_tensors):
        left = num_tensors - t
        want = remaining / left
        m = min(range(k // 2 + 1), key=lambda m: (abs(m * (k - m) - want), m))
        counts.append(m)
        remaining -= m * (k - m)
    rng.shuffle(counts)
    patterns = []
    for m in counts:
        signs = [-1] * m + [1] * (k - m)
        rng.shuffle(signs)
        patterns.append(signs)
    return patterns


def make_gradients(params: list[nn.Parameter], k: int, frac: float, noise: float, seed: int, dtype):
    """``[K, N]`` contiguous stacks, one per parameter: ``g_d = s_d * base + noise * eps_d``."""
    device = params[0].device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    patterns = _sign_patterns(len(params), k, frac, random.Random(seed))
    stacks = []
    for p, signs in zip(params, patterns):
        n = p.numel()
        base = torch.randn(n, generator=gen, device=device)
        s = torch.tensor(signs, dtype=torch.float32, device=device).unsqueeze(1)
        g = s * base + noise * torch.randn(k, n, generator=gen, device=device)
        stacks.append(g.to(dtype).contiguous())
        del base, g
    return stacks


def measured_conflicts(stacks: list[torch.Tensor]) -> tuple[int, int]:
    """(conflicting, all) (tensor, domain pair)s, from the data as stored (float64 dot products)."""
    conflicting = total = 0
    for x in stacks:
        k = x.shape[0]
        gram = torch.zeros(k, k, dtype=torch.float64)
        for i in range(k):
            xi = x[i].double()
            for j in range(i + 1, k):
                gram[i, j] = torch.dot(xi, x[j].double()).cpu()
        iu = torch.triu_indices(k, k, offset=1)
        conflicting += int((gram[iu[0], iu[1]] < 0).sum())
        total += iu.shape[1]
    return conflicting, total


# ---------------------------------------------------------------------------------------------- the measured things
def fill(surgery: mgs.GradientSurgery, params, stacks, domains) -> None:
    """Write the synthetic gradients into the surgery's domain buffers (p.grad is a view of a buffer row)."""
    for d, name in enumerate(domains):
        with surgery.domain(name):
            for p, x in zip(params, stacks):
                p.grad.copy_(x[d].view(p.shape))


def clear_grads(params) -> None:
    for p in params:
        p.grad = None  # as optimizer.zero_grad(set_to_none=True); else the next fill() treats it as shared


def pcgrad_loop(stacks: list[torch.Tensor], rng: random.Random) -> list[torch.Tensor]:
    """Per-tensor PCGrad as research code writes it (one host sync per ``if dot < 0``)."""
    out = []
    for x in stacks:
        k = x.shape[0]
        grads = [x[d] for d in range(k)]
        projected = []
        for i in range(k):
            gi = grads[i].clone()
            others = [j for j in range(k) if j != i]
            rng.shuffle(others)
            for j in others:
                gj = grads[j]
                dot = torch.dot(gi, gj)
                if dot < 0:
                    gi -= dot / torch.dot(gj, gj) * gj
            projected.append(gi)
        total = projected[0]
        for g in projected[1:]:
            total = total + g
        out.append(total)
    return out


def sum_out(stacks, outs) -> None:
    for x, o in zip(stacks, outs):
        torch.sum(x, dim=0, out=o)


def add_out(stacks, outs) -> None:
    for x, o in zip(stacks, outs):
        k = x.shape[0]
        if k == 1:
            o.copy_(x[0])
            continue
        torch.add(x[0], x[1], out=o)
        for d in range(2, k):
            o.add_(x[d])


def sum_alloc(stacks) -> list[torch.Tensor]:
    return [x.sum(0) for x in stacks]


# ---------------------------------------------------------------------------------------------- memory
def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _glibc():
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both exist in glibc only
        return libc
    except (OSError, AttributeError):  # not glibc: the numbers are less exact, nothing else changes
        return None


def _pin_glibc_mmap_threshold() -> None:
    """Make glibc serve every allocation >= 256 KiB with its own mmap.

    glibc raises its mmap threshold (up to 32 MiB) each time an mmapped block is freed, after which
    a bucket-sized tensor may come from heap memory that is already resident and so never shows in
    RSS. Setting the threshold explicitly turns that adjustment off. Called only after the timings.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD


def _trim_heap() -> None:
    """Give freed heap memory back to the OS, so that it stops counting in RSS."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _reset_peak_rss() -> bool:
    # Writing "5" to clear_refs resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryProbe:
    """Bytes in use now and the peak since :meth:`reset`.

    CUDA: the caching allocator's statistics (tensor bytes, exact). CPU: the process's resident set.
    That tracks tensors because PyTorch's CPU allocator calls plain malloc/posix_memalign and glibc
    serves large allocations (>= M_MMAP_THRESHOLD, pinned to 256 KiB here) with their own mmap: the
    pages count in RSS once touched (zeroed or written) and leave it at munmap when the tensor is
    freed. Smaller tensors come from the heap and may stay resident after being freed, so CPU numbers
    are only meaningful for presets whose buckets are large (not ``--quick``), and not under another
    allocator (jemalloc, tcmalloc) or MALLOC_MMAP_MAX_=0, which keep freed memory resident.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.ok = True
        if not self.cuda:
            _pin_glibc_mmap_threshold()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def now(self) -> int | None:
        self.sync()
        if self.cuda:
            return torch.cuda.memory_allocated(self.device)
        kib = _proc_status_kib("VmRSS")
        return None if kib is None else kib * 1024

    def trim(self) -> None:
        if not self.cuda:
            _trim_heap()

    def reset(self) -> None:
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif not _reset_peak_rss():
            self.ok = False

    def peak(self) -> int | None:
        self.sync()
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device)
        kib = _proc_status_kib("VmHWM")
        return None if kib is None or not self.ok else kib * 1024


# ---------------------------------------------------------------------------------------------- driver
@dataclass
class Timing:
    label: str
    times: list[float]

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Time GradientSurgery.apply() against a plain K-way sum and a per-tensor PCGrad loop.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small",
                    help="parameter set: tiny (smoke), small (~34M params, 99 tensors), 1b (~1B, for CUDA), "
                         "7b-layers (a 7B model's shapes, 4 layers, ~1.07B, for CUDA)")
    ap.add_argument("--hidden", type=int, help="override the preset's hidden size")
    ap.add_argument("--intermediate", type=int, help="override the preset's MLP intermediate size")
    ap.add_argument("--vocab", type=int, help="override the preset's vocabulary size")
    ap.add_argument("--layers", type=int, help="override the preset's number of layers")
    ap.add_argument("--domains", type=int, default=3, help="K, the number of domains")
    ap.add_argument("--conflict-frac", type=float, default=0.3,
                    help="target fraction of (tensor, domain pair)s whose gradients conflict (negative dot)")
    ap.add_argument("--noise", type=float, default=1.0, help="noise scale relative to the shared direction")
    ap.add_argument("--reps", type=int, default=21, help="interleaved repetitions (the minimum is reported)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="parameter / gradient dtype")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (CPU); default: torch's choice")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", choices=["all", "pcgrad"], default="all",
                    help="all: also time balance='norm', gram_ema and every TorchJD weighting (modular)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny preset, 2 repetitions")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target FAILs")
    ap.add_argument("--sub-tensor", action="store_true",
                    help="instead: head and expert granularities against parameter granularity (bench_sub_tensor.py)")
    args = ap.parse_args(argv)
    if args.quick:
        args.preset, args.reps = "tiny", 2
    if args.domains < 2:
        ap.error("--domains must be at least 2")
    if not 0.0 <= args.conflict_frac <= 1.0:
        ap.error("--conflict-frac must be in [0, 1]")
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.sub_tensor:
        import bench_sub_tensor

        forwarded = ["--domains", str(args.domains), "--device", args.device, "--dtype", args.dtype]
        forwarded += (["--threads", str(args.threads)] if args.threads else []) + (["--quick"] if args.quick else [])
        return bench_sub_tensor.main(forwarded + (["--strict"] if args.strict else []))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    hidden, inter, vocab, layers = PRESETS[args.preset]
    hidden = args.hidden or hidden
    inter = args.intermediate or inter
    vocab = args.vocab or vocab
    layers = args.layers or layers
    k = args.domains
    domains = [f"domain{d}" for d in range(k)]
    torch.manual_seed(args.seed)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    model = TransformerShaped(hidden, inter, vocab, layers, device, dtype)
    params = [p for p in model.parameters()]
    numel = sum(p.numel() for p in params)
    unit = numel * params[0].element_size()  # one gradient, in bytes

    stacks = make_gradients(params, k, args.conflict_frac, args.noise, args.seed, dtype)
    conflicting, pairs_total = measured_conflicts(stacks)

    surgeries = {
        "modular": mgs.GradientSurgery(model, surgery="modular", granularity="parameter", method="pcgrad",
                                       domains=domains, seed=args.seed),
        "global": mgs.GradientSurgery(model, surgery="global", granularity="parameter", method="pcgrad",
                                      domains=domains, seed=args.seed),
        "none": mgs.GradientSurgery(model, surgery="none", domains=domains, seed=args.seed),
    }
    variants = {}  # label -> extra GradientSurgery kwargs, all modular per parameter
    skipped = []
    if args.methods == "all":
        variants = {"modular +balance=norm": {"balance": "norm"}, "modular +gram_ema=0.9": {"gram_ema": 0.9},
                    "none +balance=norm": {"surgery": "none", "balance": "norm"}}
        variants |= {f"modular {name}": {"method": name} for name in mgs.methods.TORCHJD_WEIGHTINGS}
    for label, kw in variants.items():
        options = {"surgery": "modular", "granularity": "parameter", "domains": domains, "seed": args.seed} | kw
        try:
            surgeries[label] = mgs.GradientSurgery(model, **options)
        except ImportError as error:  # torchjd or one of its optional solvers is missing
            skipped.append(f"{label}: {str(error).splitlines()[0]}")
    buckets = surgeries["modular"]._buffers.buckets  # private: only for the printed layout
    outs = [torch.zeros(p.numel(), device=device, dtype=dtype) for p in params]  # touched: no page faults later

    stats_seen: dict[str, float] = {}

    def run_apply(name: str, rep: int) -> float:
        s = surgeries[name]
        fill(s, params, stacks, domains)
        sync()
        t0 = time.perf_counter()
        stats = s.apply(step=rep)
        sync()
        t = time.perf_counter() - t0
        if name == "modular":
            stats_seen["conflict_frac"] = float(stats["conflict_frac"])
        clear_grads(params)
        return t

    loop_rng = random.Random(args.seed)

    def run_loop(rep: int) -> float:
        sync()
        t0 = time.perf_counter()
        res = pcgrad_loop(stacks, loop_rng)
        sync()
        t = time.perf_counter() - t0
        del res
        return t

    def timed(fn) -> float:
        sync()
        t0 = time.perf_counter()
        res = fn()
        sync()
        t = time.perf_counter() - t0
        del res
        return t

    measures = {
        "apply() modular": lambda rep: run_apply("modular", rep),
        "apply() global": lambda rep: run_apply("global", rep),
        "apply() none": lambda rep: run_apply("none", rep),
        **{f"apply() {label}": (lambda rep, label=label: run_apply(label, rep)) for label in variants if label in surgeries},
        "per-tensor PCGrad loop": run_loop,
        "plain sum: sum(0, out=)": lambda rep: timed(lambda: sum_out(stacks, outs)),
        "plain sum: add(out=)+add_": lambda rep: timed(lambda: add_out(stacks, outs)),
        "plain sum (allocating)": lambda rep: timed(lambda: sum_alloc(stacks)),
    }
    timings = {label: Timing(label, []) for label in measures}
    labels = list(measures)

    # warm-up (untimed): first calls, lazy initialisation, allocator caches
    for label in labels:
        measures[label](0)
    gc.collect()
    t_start = time.perf_counter()
    for rep in range(args.reps):
        shift = rep % len(labels)
        for label in labels[shift:] + labels[:shift]:  # rotate the order: no measurement always goes first
            timings[label].times.append(measures[label](rep + 1))
    bench_s = time.perf_counter() - t_start

    # ------------------------------------------------------------------ memory (separate, untimed runs)
    probe = MemoryProbe(device)
    memory = {}
    for name in ("modular", "global", "none"):
        s = surgeries[name]
        clear_grads(params)
        gc.collect()
        probe.trim()
        base = probe.now()
        fill(s, params, stacks, domains)
        held = probe.now()
        probe.reset()
        s.apply(step=0)
        peak = probe.peak()
        after = probe.now()
        if name == "none":  # sanity: surgery="none" must equal the plain sum
            sum_out(stacks, outs)
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            none_ok = all(torch.allclose(p.grad.reshape(-1).float(), o.float(), rtol=tol, atol=tol * 10)
                          for p, o in zip(params, outs))
        clear_grads(params)  # optimizer.zero_grad(): the buffers die with p.grad
        gc.collect()
        released = probe.now()
        if None in (base, held, peak, after, released):
            memory[name] = None
        else:
            memory[name] = tuple((v - base) / unit for v in (held, peak, after, released)) + ((peak - held) / unit,)

    # ------------------------------------------------------------------ report
    plain = min(timings["plain sum: sum(0, out=)"].best, timings["plain sum: add(out=)+add_"].best)
    loop = timings["per-tensor PCGrad loop"].best
    apply_t = timings["apply() modular"].best
    target = TARGET_CUDA if device.type == "cuda" else TARGET_CPU
    threads = torch.get_num_threads()
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {threads} threads"

    print("MGS GradientSurgery.apply() benchmark")
    print(f"  torch {torch.__version__}, {dev_name}, dtype {args.dtype}")
    print(f"  preset {args.preset}: hidden {hidden}, intermediate {inter}, vocab {vocab}, layers {layers}")
    print(f"  parameters {numel / 1e6:.1f}M in {len(params)} tensors; 1 gradient unit = {unit / 2**20:.1f} MiB")
    groups = len(surgeries["modular"].partition.group_names)
    print(f"  surgery buckets: {len(buckets)} ({', '.join(f'{b.numel / 1e6:.1f}M' for b in buckets)} elements); "
          f"modular groups: {groups}")
    print(f"  domains K={k}; conflicting (tensor, domain pair)s: target {args.conflict_frac:.3f}, "
          f"measured {conflicting / pairs_total:.3f} ({conflicting}/{pairs_total}); "
          f"apply() stats conflict_frac {stats_seen.get('conflict_frac', float('nan')):.3f}")
    print(f"  {args.reps} interleaved repetitions (+1 warm-up), minimum reported; {bench_s:.1f} s")
    print()
    w = 34
    print(f"  {'measurement':<{w}} {'min ms':>9} {'median ms':>10} {'x plain sum':>12}")
    print(f"  {'-' * w} {'-' * 9} {'-' * 10} {'-' * 12}")
    for label in labels:
        t = timings[label]
        print(f"  {label:<{w}} {t.best * 1e3:>9.2f} {t.median * 1e3:>10.2f} {t.best / plain:>12.2f}")
    print(f"  {'plain sum (min of out= rows)':<{w}} {plain * 1e3:>9.2f} {'':>10} {1.0:>12.2f}")
    for line in skipped:
        print(f"  skipped {line}")
    if variants:
        print()
        print(f"  cost of each method beyond apply(modular) with PCGrad ({groups} groups, K={k}):")
        for label in variants:
            if f"apply() {label}" in timings:
                extra = timings[f"apply() {label}"].best - apply_t
                print(f"  {label:<{w}} {extra * 1e3:>+9.2f} ms  ({extra / groups * 1e6:+.1f} us per group)")
    print()
    print(f"  apply(modular) / plain sum        = {apply_t / plain:.2f}x")
    print(f"  apply(modular) / per-tensor loop  = {apply_t / loop:.2f}x   (loop / apply = {loop / apply_t:.1f}x)")
    print()
    checks = [
        (f"apply(modular) <= {target:g}x plain sum ({device.type})", apply_t <= target * plain,
         f"{apply_t / plain:.2f}x"),
        ("apply(modular) faster than the per-tensor loop", apply_t < loop, f"{apply_t * 1e3:.1f} vs {loop * 1e3:.1f} ms"),
        ("surgery='none' equals the plain sum", none_ok, "allclose"),
    ]
    for text, ok, detail in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}  ({detail})")
    print()
    how = "CUDA allocator peak" if device.type == "cuda" else "process RSS, peak from VmHWM"
    print(f"  memory in gradient units (1 unit = {unit / 2**20:.1f} MiB; {how}), relative to no gradient held:")
    print(f"  {'apply()':<10} {'buffers before':>15} {'peak during':>12} {'peak - buffers':>15} {'after':>7} {'after zero_grad':>16}")
    for name, m in memory.items():
        if m is None:
            print(f"  {name:<10} {'n/a (cannot read or reset the peak)':>52}")
        else:
            print(f"  {name:<10} {m[0]:>15.2f} {m[1]:>12.2f} {m[4]:>15.2f} {m[2]:>7.2f} {m[3]:>16.2f}")
    if device.type == "cpu" and unit < 64 * 2**20:
        print("  (small parameter set: heap-allocated tensors make CPU RSS numbers unreliable)")

    failed = not all(ok for _, ok, _ in checks)
    return 1 if (failed and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
