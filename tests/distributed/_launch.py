"""Run a function in N spawned processes joined by a gloo process group, with a wall-clock guard.

Nothing here can hang a test run: the process group has a timeout (a collective that one rank never
joins raises after ``pg_timeout_s``), and :func:`launch` kills the processes it started once
``deadline_s`` has passed and raises :class:`LaunchTimeout`.

The function must be importable by the children (a module-level function of a module on
``sys.path``; spawned children inherit the parent's ``sys.path``). It is called as
``fn(rank, world_size, out_dir, *args)`` after ``init_process_group`` and should write what the
parent needs to check under ``out_dir`` (e.g. with ``torch.save``): the assertions belong in the
parent, where pytest reports them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch.multiprocessing as mp


class LaunchTimeout(AssertionError):
    """The spawned group did not finish before its deadline (its processes were killed)."""


def _entry(rank: int, fn: Callable, world_size: int, store: str, out_dir: str, pg_timeout_s: float, args: tuple) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=pg_timeout_s),
    )
    try:
        fn(rank, world_size, out_dir, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def launch(
    fn: Callable,
    tmp_path: Path,
    *args,
    world_size: int = 2,
    deadline_s: float = 150.0,
    pg_timeout_s: float = 60.0,
) -> Path:
    """Run ``fn(rank, world_size, out_dir, *args)`` on ``world_size`` gloo ranks; return ``out_dir``.

    Raises the first child's exception (``torch.multiprocessing.ProcessRaisedException``, with the
    child's traceback) or :class:`LaunchTimeout`.
    """
    tmp_path = Path(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    store = tmp_path / "store"
    if store.exists():
        store.unlink()
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the children before they import torch
    try:
        context = mp.start_processes(
            _entry,
            args=(fn, world_size, str(store), str(out_dir), pg_timeout_s, args),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    deadline = time.monotonic() + deadline_s
    try:
        # join() returns True once all exited cleanly and raises (after killing the rest) if one failed
        while not context.join(timeout=0.25):
            if time.monotonic() > deadline:
                raise LaunchTimeout(f"{getattr(fn, '__name__', fn)} did not finish within {deadline_s:.0f} s; killed.")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
        for process in context.processes:
            process.join(timeout=10)
    return out_dir
