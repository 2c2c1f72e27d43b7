"""Benchmark: what do sub-tensor groups (attention heads, MoE experts) cost in ``apply()``?

One run, two layer shapes, K synthetic domain gradients (``bench_surgery.make_gradients``), interleaved
repetitions, the minimum reported:

- ``attention``: the attention of one Qwen2-7B layer (hidden 3584, 28 query heads, 4 key-value heads, head_dim
  128: q/k/v with biases, o without) — where head groups change the layout: q/k/v heads are row ranges, o_proj's
  heads are 128-wide columns (units of 128 elements instead of 512-element chunks).
- ``moe``: one fused MoE experts module with 64 experts (``gate_up_proj`` [64, 2I, H], ``down_proj`` [64, H, I]; H = 1024, I = 512)
  plus its router.

For each: ``apply()`` with ``granularity="parameter"`` (the baseline), ``"head"`` (attention) or ``"expert"``
(moe), and the plain K-way sum of the same gradients (``torch.sum(X, 0, out=)``, the memory-traffic floor).
Target: head and expert ``apply()`` <= 1.5x the parameter granularity's (PASS/FAIL printed; ``--strict``: exit 1).

Launch::

    python benchmarks/bench_sub_tensor.py                  # full shapes (about 1.6 GB of buffers at K=3, fp32)
    python benchmarks/bench_sub_tensor.py --quick          # smoke: shapes divided by 8, 2 repetitions
    python benchmarks/bench_surgery.py --sub-tensor        # the same, from the main benchmark
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_surgery import DTYPES, clear_grads, fill, make_gradients, sum_out  # noqa: E402

import mgs  # noqa: E402

TARGET = 1.5  # sub-tensor apply() / parameter apply()


def _param(*shape: int, **kw) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, **kw))


class _Proj(nn.Module):
    def __init__(self, n_in: int, n_out: int, bias: bool, **kw) -> None:
        super().__init__()
        self.weight = _param(n_out, n_in, **kw)
        self.bias = _param(n_out, **kw) if bias else None


class AttentionLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, **kw) -> None:
        super().__init__()
        attn = nn.Module()
        attn.q_proj = _Proj(hidden, heads * head_dim, True, **kw)
        attn.k_proj = _Proj(hidden, kv_heads * head_dim, True, **kw)
        attn.v_proj = _Proj(hidden, kv_heads * head_dim, True, **kw)
        attn.o_proj = _Proj(heads * head_dim, hidden, False, **kw)
        self.layers = nn.ModuleList([nn.Module()])
        self.layers[0].self_attn = attn


class MoELayer(nn.Module):
    def __init__(self, hidden: int, experts: int, inter: int, **kw) -> None:
        super().__init__()
        mlp = nn.Module()
        mlp.gate = _Proj(hidden, experts, False, **kw)
        mlp.experts = nn.Module()
        mlp.experts.gate_up_proj = _param(experts, 2 * inter, hidden, **kw)
        mlp.experts.down_proj = _param(experts, hidden, inter, **kw)
        self.layers = nn.ModuleList([nn.Module()])
        self.layers[0].mlp = mlp


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domains", type=int, default=3, help="K")
    ap.add_argument("--reps", type=int, default=7, help="interleaved repetitions (the minimum is reported)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    ap.add_argument("--quick", action="store_true", help="smoke: shapes divided by 8, 2 repetitions")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target FAILs")
    args = ap.parse_args(argv)
    if args.quick:
        args.reps = 2
    return args


def bench_shape(label: str, model: nn.Module, granularity: str, surgery_kw: dict, args, device) -> dict:
    k, dtype = args.domains, DTYPES[args.dtype]
    domains = [f"domain{d}" for d in range(k)]
    params = list(model.parameters())
    stacks = make_gradients(params, k, 0.3, 1.0, 0, dtype)
    surgeries = {g: mgs.GradientSurgery(model, granularity=g, domains=domains, **(surgery_kw if g != "parameter" else {}))
                 for g in ("parameter", granularity)}
    outs = [torch.zeros(p.numel(), device=device, dtype=dtype) for p in params]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run_apply(g: str, rep: int) -> float:
        s = surgeries[g]
        fill(s, params, stacks, domains)
        sync()
        t0 = time.perf_counter()
        s.apply(step=rep)
        sync()
        t = time.perf_counter() - t0
        clear_grads(params)
        return t

    def run_sum(rep: int) -> float:
        sync()
        t0 = time.perf_counter()
        sum_out(stacks, outs)
        sync()
        return time.perf_counter() - t0

    measures = {"parameter": lambda rep: run_apply("parameter", rep),
                granularity: lambda rep: run_apply(granularity, rep), "plain sum": run_sum}
    times = {m: [] for m in measures}
    for m in measures:  # warm-up
        measures[m](0)
    gc.collect()
    names = list(measures)
    for rep in range(args.reps):
        shift = rep % len(names)
        for m in names[shift:] + names[:shift]:
            times[m].append(measures[m](rep + 1))
    best = {m: min(t) for m, t in times.items()}
    groups = {g: len(s.groups()) for g, s in surgeries.items()}
    numel = sum(p.numel() for p in params)
    print(f"\n{label}: {numel / 1e6:.1f}M parameters in {len(params)} tensors, K={k}, {args.dtype}, "
          f"groups: parameter {groups['parameter']}, {granularity} {groups[granularity]}")
    for m, t in best.items():
        print(f"  {m:<22} {t * 1e3:9.2f} ms")
    ratio = best[granularity] / best["parameter"]
    print(f"  apply({granularity}) / apply(parameter) = {ratio:.2f}x   "
          f"[{'PASS' if ratio <= TARGET else 'FAIL'}] target <= {TARGET}x")
    print(f"  apply(parameter) / plain sum = {best['parameter'] / best['plain sum']:.2f}x   "
          f"apply({granularity}) / plain sum = {best[granularity] / best['plain sum']:.2f}x")
    return {"ratio": ratio}


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    div = 8 if args.quick else 1
    kw = {"device": device, "dtype": DTYPES[args.dtype]}
    heads = mgs.AttentionHeads(num_heads=28, head_dim=128 // div, num_kv_heads=4)
    results = [
        bench_shape("attention (Qwen2-7B layer: 28 q heads, 4 kv heads, head_dim 128)",
                    AttentionLayer(3584 // div, 28, 4, 128 // div, **kw), "head", {"heads": heads}, args, device),
        bench_shape("moe (64 experts, hidden 1024, intermediate 512)",
                    MoELayer(1024 // div, 64, 512 // div, **kw), "expert", {}, args, device),
    ]
    print(f"\nthreads: {torch.get_num_threads()}, device: {device}")
    failed = any(r["ratio"] > TARGET for r in results)
    return 1 if (failed and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
