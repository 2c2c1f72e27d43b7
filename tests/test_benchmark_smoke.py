"""The benchmark runs end to end (tiny preset) and its correctness check passes; timings are not asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_surgery_quick():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_surgery.py"), "--quick"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[PASS] surgery='none' equals the plain sum" in result.stdout, result.stdout[-2000:]
    assert "apply(modular) / plain sum" in result.stdout


def test_bench_sub_tensor_quick():
    """Head and expert granularities run at reduced shapes and report their ratio to parameter granularity."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_surgery.py"), "--sub-tensor", "--quick"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "apply(head) / apply(parameter)" in result.stdout and "apply(expert) / apply(parameter)" in result.stdout
    assert "head 64" in result.stdout  # 28 + 4 + 4 + 28 attention groups in the 7B-shaped layer
