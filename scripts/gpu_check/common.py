"""What every step of the GPU check shares: the result record, relative errors, timing, the device."""

from __future__ import annotations

import json
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def rel(a: dict, b: dict) -> float:
    """sqrt(sum ||a - b||^2 / sum ||b||^2) over the tensors of two same-keyed dicts, in float64."""
    if a.keys() != b.keys():
        raise ValueError(f"different parameters: {sorted(a.keys() ^ b.keys())[:5]}")
    num = den = 0.0
    for k in b:
        x, y = a[k].double(), b[k].double()
        num += float((x - y).square().sum())
        den += float(y.square().sum())
    return (num / den) ** 0.5 if den > 0 else float("inf")


def tolerance(noise: float, fp32: bool) -> tuple[float, str]:
    """The none ≡ stock bound: 1e-5 in fp32; in bf16, 3x the measured bf16 rounding noise of stock itself.

    The noise is the relative error of stock's own bf16 gradient against the same step in fp32 on the same
    (bf16-representable) weights. MGS's surgery="none" changes only how the rows of a micro-batch are grouped
    (one forward/backward per domain) and sums K bf16 partial gradients: each of those is as far from exact
    arithmetic as stock's, so |none - stock| <= |none - exact| + |stock - exact| ~ 2 noise; the third is margin.
    The floor, bf16's unit roundoff 2^-9, keeps the bound meaningful if the noise came out tiny.
    """
    if fp32:
        return 1e-5, "fp32: 1e-5"
    bound = max(3.0 * noise, 2.0**-9)
    return bound, f"max(3 x stock's bf16 noise vs fp32 = 3 x {noise:.2e}, 2^-9)"


def median_ms(times: list[float]) -> float | None:
    return statistics.median(times) * 1e3 if times else None


class Stopwatch:
    """Wall time of a region, synchronising the device on both ends (CUDA) so queued kernels count."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def __enter__(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start


def skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


def missing(*modules: str) -> str | None:
    """The first of ``modules`` that does not import, as a skip reason; None when all do."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - any import failure is a reason to skip the step
            return f"cannot import {name}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None


def finish(result: dict, checks: list[tuple[str, bool, str]]) -> dict:
    """Attach the checks; the status is "ok" when every check holds, else "fail"."""
    result["checks"] = [{"name": n, "ok": bool(ok), "detail": d} for n, ok, d in checks]
    result["status"] = "ok" if all(ok for _, ok, _ in checks) else "fail"
    return result


def run_step(fn, argv=None) -> int:
    """Call ``fn(args)`` for a step script's ``main``: write its record as JSON to ``--json-out``."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--json-out", required=True)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--device", default="cuda")
    args, rest = parser.parse_known_args(argv)
    try:
        result = fn(args, rest)
    except Exception as error:  # noqa: BLE001 - recorded, so the other steps still run
        result = {"status": "error", "reason": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        print(result["traceback"], file=sys.stderr)
    Path(args.json_out).write_text(json.dumps(result, indent=1, default=str))
    return 0
