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


def test_bench_trl_step_two_processes_fsdp2():
    """The 2-process mode under FSDP2 (tiny model, one timed step): it prints the bytes per collective, and modular
    surgery adds no gradient-sized all-reduce: its all-reduce column is the [groups, K, K] Gram tensor only."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_trl_step.py"), "--nproc", "2", "--backends", "fsdp2",
         "--arms", "stock,modular", "--steps", "2", "--rounds", "1", "--hidden", "32", "--layers", "1", "--batch", "4",
         "--grad-accum", "2"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    lines = result.stdout.splitlines()
    gradient_mib = float(next(line for line in lines if "fp32 gradient of the whole model" in line)
                         .split(":")[1].split("MiB")[0])
    table = lines[lines.index("fsdp2") + 1 :]
    assert table[0].split()[9:12] == ["all_reduce", "reduce_scatter", "all_gather"]
    # a row: arm, step ms, vs stock, peak MiB, vs stock, all_reduce, reduce_scatter, all_gather, other, total, vs stock
    rows = {line.split()[0]: line.split() for line in table[1:3]}
    assert set(rows) == {"stock", "modular"}
    assert float(rows["modular"][5]) < 0.05 * gradient_mib, rows["modular"]
    assert float(rows["modular"][6]) >= float(rows["stock"][6]) > 0
