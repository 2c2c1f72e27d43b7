"""Step 2 of the GPU check: ``apply()`` makes no host sync, by the core's own tests.

Runs ``tests/unit/test_surgery.py`` and ``tests/unit/test_slicing.py -k sync_free`` (whole tensors; heads and the
conflict threshold) in pytest: the ``..._on_cuda`` tests call
``apply()`` under ``torch.cuda.set_sync_debug_mode("error")`` (any synchronising CUDA call raises) and checks
the result against the reference; ``test_apply_is_sync_free`` forbids ``.item()``/``.tolist()``/``bool()``...
on tensors. On CUDA all four must pass; ``--smoke`` (CPU) needs the CPU ones to pass and records the CUDA ones' skips.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TESTS = ["tests/unit/test_surgery.py", "tests/unit/test_slicing.py"]  # whole tensors; heads and the threshold
CUDA_TESTS = ["test_apply_is_sync_free_on_cuda", "test_sub_tensor_apply_is_sync_free_on_cuda"]
CPU_TESTS = ["test_apply_is_sync_free", "test_sub_tensor_apply_is_sync_free"]


def run(args, rest) -> dict:
    reason = common.missing("pytest")
    if reason:
        return common.skipped(reason)
    import torch

    cuda = not args.smoke and torch.cuda.is_available()
    if not args.smoke and not cuda:
        return common.skipped("no CUDA device (torch.cuda.is_available() is False)")
    report = Path(tempfile.mkdtemp(prefix="mgs_gpu_check_sync_")) / "junit.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS, "-k", "sync_free",
                           f"--junitxml={report}"], cwd=common.ROOT, capture_output=True, text=True, timeout=300)
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name")
        status, detail = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                status = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                detail = (node.get("message") or "")[:300]
        outcomes[name] = {"outcome": status, "detail": detail}
    needed = CUDA_TESTS + CPU_TESTS if cuda else CPU_TESTS
    result = {"device": "cuda" if cuda else "cpu", "pytest_rc": proc.returncode, "tests": outcomes,
              "output_tail": proc.stdout[-1500:]}
    checks = [(f"{name} passed", outcomes.get(name, {}).get("outcome") == "passed",
               outcomes.get(name, {"outcome": "not collected"})["outcome"]) for name in needed]
    return common.finish(result, checks)


if __name__ == "__main__":
    sys.exit(common.run_step(run))
