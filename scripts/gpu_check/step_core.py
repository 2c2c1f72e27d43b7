"""Step 1 of the GPU check: what ``GradientSurgery.apply()`` costs on the device, against the memory-traffic floor.

For each shape (``benchmarks/bench_surgery.py``'s presets ``1b`` and ``7b-layers``) and buffer dtype (fp32,
bf16), K = 3 domains, it times with CUDA events (CPU: ``perf_counter``), after warm-up, over interleaved
repetitions: ``apply()`` for ``modular`` (per parameter, PCGrad) and ``none``; the plain K-way sum of the same
``[K, N]`` stacks into preallocated outputs (``torch.sum(X, 0, out=)``; bench_surgery's floor); the per-tensor
research loop (one host sync per ``if dot < 0``). It reports medians and minima, the ratios to the plain sum,
and the bandwidth each achieves counting the plain sum's bytes (K reads + 1 write per element) against a
measured device-to-device copy (bytes read + written). Target: apply(modular) <= 2x the plain sum (median).

``--smoke``: the ``tiny`` preset on the CPU, 2 repetitions.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.ROOT / "benchmarks"))
import bench_surgery as bench  # noqa: E402

K = 3
TARGET = 2.0  # apply(modular) / plain sum, on CUDA (bench_surgery's TARGET_CUDA)


def parse(rest, smoke: bool) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--presets", default="tiny" if smoke else "1b,7b-layers")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--reps", type=int, default=2 if smoke else 15)
    p.add_argument("--warmup", type=int, default=1 if smoke else 3)
    p.add_argument("--copy-mib", type=int, default=8 if smoke else 4096, help="buffer of the copy-bandwidth probe")
    return p.parse_args(rest)


class Timer:
    """Elapsed milliseconds of ``fn()``: CUDA events around it on the current stream, else ``perf_counter``."""

    def __init__(self, device) -> None:
        import torch

        self.cuda = device.type == "cuda"
        self.torch = torch

    def __call__(self, fn) -> float:
        torch = self.torch
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def copy_bandwidth(device, mib: int, timer: Timer, reps: int) -> dict:
    import torch

    n = mib * 2**20 // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    times = [timer(lambda: dst.copy_(src)) for _ in range(max(reps, 5))]
    best = min(times)
    return {"bytes": 2 * n * 4, "ms_min": best, "ms_median": statistics.median(times),
            "gb_s": 2 * n * 4 / (best * 1e-3) / 1e9}


def one_case(preset: str, dtype_name: str, device, a, timer: Timer) -> dict:
    import torch

    import mgs

    dtype = bench.DTYPES[dtype_name]
    hidden, inter, vocab, layers = bench.PRESETS[preset]
    model = bench.TransformerShaped(hidden, inter, vocab, layers, device, dtype)
    params = list(model.parameters())
    numel = sum(p.numel() for p in params)
    esize = params[0].element_size()
    stacks = bench.make_gradients(params, K, 0.3, 1.0, 0, dtype)
    domains = [f"domain{d}" for d in range(K)]
    surgeries = {name: mgs.GradientSurgery(model, surgery=name, granularity="parameter", method="pcgrad",
                                           domains=domains, seed=0) for name in ("modular", "none")}
    outs = [torch.zeros(p.numel(), device=device, dtype=dtype) for p in params]
    loop_rng = random.Random(0)
    conflict = []

    def apply_ms(name: str, rep: int) -> float:
        s = surgeries[name]
        bench.fill(s, params, stacks, domains)
        holder = {}
        t = timer(lambda: holder.setdefault("stats", s.apply(step=rep)))
        if name == "modular":
            conflict.append(holder["stats"]["conflict_frac"])
        bench.clear_grads(params)
        return t

    measures = {
        "apply_modular": lambda rep: apply_ms("modular", rep),
        "apply_none": lambda rep: apply_ms("none", rep),
        "plain_sum": lambda rep: timer(lambda: bench.sum_out(stacks, outs)),
        "per_tensor_loop": lambda rep: timer(lambda: bench.pcgrad_loop(stacks, loop_rng)),
    }
    labels = list(measures)
    for rep in range(a.warmup):
        for label in labels:
            measures[label](rep)
    times = {label: [] for label in labels}
    for rep in range(a.reps):
        shift = rep % len(labels)
        for label in labels[shift:] + labels[:shift]:
            times[label].append(measures[label](a.warmup + rep))

    # correctness: surgery="none" is the plain sum
    bench.fill(surgeries["none"], params, stacks, domains)
    surgeries["none"].apply(step=0)
    bench.sum_out(stacks, outs)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    none_ok = all(torch.allclose(p.grad.reshape(-1).float(), o.float(), rtol=tol, atol=tol * 10) for p, o in zip(params, outs))
    bench.clear_grads(params)

    med = {label: statistics.median(t) for label, t in times.items()}
    traffic = (K + 1) * numel * esize  # bytes the plain sum moves: K reads and one write per element
    result = {
        "preset": preset, "dtype": dtype_name, "params": numel, "tensors": len(params), "K": K,
        "groups": len(surgeries["modular"].partition.group_names),
        "ms_median": med, "ms_min": {label: min(t) for label, t in times.items()},
        "apply_over_sum": med["apply_modular"] / med["plain_sum"],
        "none_over_sum": med["apply_none"] / med["plain_sum"],
        "loop_over_apply": med["per_tensor_loop"] / med["apply_modular"],
        "traffic_bytes": traffic,
        "gb_s_at_sum_traffic": {label: traffic / (m * 1e-3) / 1e9 for label, m in med.items()},
        "conflict_frac": float(sum(float(c) for c in conflict) / len(conflict)) if conflict else None,
        "none_equals_sum": bool(none_ok),
    }
    del surgeries, stacks, outs, model, params
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def run(args, rest) -> dict:
    import torch

    a = parse(rest, args.smoke)
    device = torch.device("cpu" if args.smoke else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return common.skipped("no CUDA device (torch.cuda.is_available() is False)")
    timer = Timer(device)
    copy = copy_bandwidth(device, a.copy_mib, timer, a.reps)
    cases = [one_case(p, d, device, a, timer) for p in a.presets.split(",") for d in a.dtypes.split(",")]
    for case in cases:
        case["sum_bw_vs_copy"] = case["gb_s_at_sum_traffic"]["plain_sum"] / copy["gb_s"]
        case["apply_bw_vs_copy"] = case["gb_s_at_sum_traffic"]["apply_modular"] / copy["gb_s"]
    result = {"device": str(device), "reps": a.reps, "warmup": a.warmup, "copy": copy, "cases": cases,
              "timer": "cuda events" if device.type == "cuda" else "perf_counter"}
    checks = [(f"{c['preset']} {c['dtype']}: surgery='none' equals the plain sum", c["none_equals_sum"], "allclose")
              for c in cases]
    if device.type == "cuda":
        checks += [(f"{c['preset']} {c['dtype']}: apply(modular) <= {TARGET:g}x plain sum", c["apply_over_sum"] <= TARGET,
                    f"{c['apply_over_sum']:.2f}x") for c in cases]
        checks += [(f"{c['preset']} {c['dtype']}: apply(modular) faster than the per-tensor loop",
                    c["loop_over_apply"] > 1, f"loop {c['loop_over_apply']:.1f}x apply") for c in cases]
    return common.finish(result, checks)


if __name__ == "__main__":
    sys.exit(common.run_step(run))
