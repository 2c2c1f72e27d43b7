"""Peak host memory of a verl 0.9.1 actor update: stock FSDP2 engine vs the MGS engine (CPU, gloo).

    python benchmarks/bench_verl_memory.py [--hidden 512 --layers 4 --updates 3 --world-size 1]

Each arm runs in its own spawned process group (tests/verl_adapter's CPU harness: verl's hydra config,
ActorRolloutRefWorker, the driver's batch preprocessing; no Ray, no rollout). After one warm-up update,
a thread samples the process RSS every 2 ms during ``--updates`` updates; the table shows the peak
above the RSS just before them, and after the last update whether any gradient or surgery buffer is
still held. The MGS engine keeps one gradient-sized buffer per domain (K = 3 here) from the first
backward to verl's zero_grad, where stock verl keeps one: the expected extra is (K - 1) x the
gradient bytes, printed beside the measurement. Requires the verl extra.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "verl_adapter"), str(ROOT / "tests" / "distributed"), str(ROOT)]


def arm_job(rank: int, world_size: int, out_dir: str, job: dict) -> None:
    import threading
    import time

    import _harness
    import psutil
    import torch

    from _model import write_tiny_model

    model_path = str(Path(out_dir).parent / "model")
    if rank == 0:
        write_tiny_model(model_path, hidden=job["hidden"], layers=job["layers"])
    torch.distributed.barrier()
    overrides = ["actor_rollout_ref.actor.ppo_mini_batch_size=12"]
    if job["arm"] != "stock":
        overrides += [_harness.MGS_TARGET, f"+actor_rollout_ref.actor.fsdp_config.surgery={job['arm']}",
                      "+actor_rollout_ref.actor.fsdp_config.domains=[chat,code,math]"]
    cfg = _harness.compose(model_path, world_size=world_size, overrides=overrides)
    worker = _harness.build_worker(cfg)
    module = worker.actor.engine.module
    grad_bytes = sum(p.to_local().numel() * p.element_size() if hasattr(p, "to_local") else p.numel() * p.element_size()
                     for p in module.parameters())

    def update(step):
        data = _harness.make_batch(12, seed=step)
        worker.update_actor(_harness.dp_shard(_harness.actor_input(data, cfg), world_size, rank))

    update(0)
    process = psutil.Process()
    baseline, peak, running = process.memory_info().rss, [0], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample)
    thread.start()
    t = time.perf_counter()
    for step in range(1, job["updates"] + 1):
        update(step)
    seconds = (time.perf_counter() - t) / job["updates"]
    running[0] = False
    thread.join()
    engine = worker.actor.engine
    held = sum(p.grad is not None for p in module.parameters())
    buffers = bool(getattr(engine, "_surgery", None) is not None and engine._surgery._buffers.is_open)
    if rank == 0:
        torch.save({"peak_mb": (peak[0] - baseline) / 2**20, "grad_mb": grad_bytes / 2**20, "seconds": seconds,
                    "held_grads": held, "held_buffers": buffers}, Path(out_dir) / "result.pt")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--arms", nargs="+", default=["stock", "none", "modular"])
    args = parser.parse_args(argv)

    import torch
    from _launch import launch

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.arms:
            out = Path(tmp) / arm
            out.mkdir()
            job = dict(arm=arm, hidden=args.hidden, layers=args.layers, updates=args.updates)
            result_dir = launch(arm_job, out, job, world_size=args.world_size, deadline_s=900, pg_timeout_s=600)
            results[arm] = torch.load(result_dir / "result.pt", weights_only=False)
    grad = results[args.arms[0]]["grad_mb"]
    print(f"model: hidden {args.hidden}, {args.layers} layers; gradient {grad:.1f} MB per rank; K = 3 domains; "
          f"world size {args.world_size}; peak RSS above the pre-update level during {args.updates} updates\n")
    print("| engine | peak extra (MB) | x stock | expected extra vs stock (MB) | s / update | grads / buffers held after |")
    print("|---|---|---|---|---|---|")
    stock = results.get("stock", {}).get("peak_mb")
    for arm, r in results.items():
        ratio = f"{r['peak_mb'] / stock:.2f}" if stock else "-"
        expected = "0" if arm == "stock" else f"{2 * r['grad_mb']:.1f}"
        print(f"| {arm} | {r['peak_mb']:.1f} | {ratio} | {expected} | {r['seconds']:.2f} | "
              f"{r['held_grads']} / {r['held_buffers']} |")


if __name__ == "__main__":
    main()
