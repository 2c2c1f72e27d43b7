"""Entry points for spawned verl test processes, importable without verl (the parent never imports it).

:func:`_launch.launch` pickles the function it runs by reference, so the pytest process imports this
module; only the children import :mod:`_harness` (which installs the CPU platform and imports verl).
"""

from __future__ import annotations


def compare(rank: int, world_size: int, out_dir: str, job: dict) -> None:
    import _harness

    _harness.compare_job(rank, world_size, out_dir, job)


def train(rank: int, world_size: int, out_dir: str, job: dict) -> None:
    import _harness

    _harness.train_job(rank, world_size, out_dir, job)


def verl_installed() -> bool:
    """Whether the real verl is importable: a module with a file, not a namespace package that some directory
    named ``verl`` on ``sys.path`` would provide (this directory is named ``verl_adapter`` for that reason)."""
    import importlib.util

    spec = importlib.util.find_spec("verl")
    return spec is not None and spec.origin is not None
