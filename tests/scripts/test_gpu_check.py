"""The GPU check kit (scripts/gpu_check.sh) runs end to end on the CPU (--smoke), so it cannot rot between leases.

The smoke run takes the same code paths as a lease at tiny shapes, in fp32: every step must come back with
numbers or an explicit skip reason; where trl / verl are installed (the test extras), their steps must run and
none ≡ stock must hold at fp32 tolerance; the Ray stand-in must have served verl without being called.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _scripts import import_script

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "scripts" / "gpu_check"


def _installed(name: str) -> bool:
    spec = importlib.util.find_spec(name)
    return spec is not None and spec.origin is not None


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), OUT=str(out))
    proc = subprocess.run([sys.executable, str(KIT / "run.py"), "--smoke"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=400)
    log = out / "gpu_check.log"
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + (log.read_text()[-4000:] if log.exists() else "")
    return json.loads((out / "gpu_check.json").read_text()), proc.stdout


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_every_step_reports_numbers_or_a_reason(smoke):
    result, stdout = smoke
    assert set(result["steps"]) == {"core", "sync", "trl", "verl"}
    for name, rec in result["steps"].items():
        assert rec["status"] in ("ok", "skipped"), (name, rec.get("reason"), rec.get("checks"))
        if rec["status"] == "skipped":
            assert rec["reason"].strip(), name
        else:
            assert rec["checks"] and all(c["ok"] for c in rec["checks"]), (name, rec["checks"])
    assert result["smoke"] is True and result["date"] and result["versions"]["torch"]
    assert {"cuda_available", "torch_cuda"} <= set(result["device"])
    table = stdout[stdout.index("MGS GPU check"):]  # the table comes last: no progress line after it
    assert "[gpu_check]" not in table and stdout.index("[gpu_check] wrote") < stdout.index("MGS GPU check")
    assert all(f"\n  {name} " in table for name in result["steps"])


def test_core_bench_has_every_case_with_timings(smoke):
    core = smoke[0]["steps"]["core"]
    assert core["status"] == "ok"
    assert [c["dtype"] for c in core["cases"]] == ["float32", "bfloat16"]
    assert _positive(core["copy"]["gb_s"])
    for case in core["cases"]:
        assert set(case["ms_median"]) == {"apply_modular", "apply_none", "plain_sum", "per_tensor_loop"}
        assert all(_positive(v) for v in case["ms_median"].values())
        assert all(_positive(v) for v in (case["apply_over_sum"], case["loop_over_apply"], case["apply_bw_vs_copy"]))
        assert case["none_equals_sum"] is True and case["K"] == 3
        assert 0 < case["conflict_frac"] < 1


def test_sync_step_ran_the_cpu_sync_free_test(smoke):
    sync = smoke[0]["steps"]["sync"]
    for name in ("test_apply_is_sync_free", "test_sub_tensor_apply_is_sync_free"):
        assert sync["tests"][name]["outcome"] == "passed"
    for name in ("test_apply_is_sync_free_on_cuda", "test_sub_tensor_apply_is_sync_free_on_cuda"):
        assert name in sync["tests"]  # collected: on a GPU it must pass


@pytest.mark.skipif(not _installed("trl"), reason="trl is not installed")
def test_trl_step_none_equals_stock_in_fp32(smoke):
    trl = smoke[0]["steps"]["trl"]
    assert trl["status"] == "ok", trl.get("reason") or trl.get("checks")
    assert trl["dtype"] == "fp32" and trl["tolerance"] == 1e-5
    assert trl["rel_none_vs_stock"] <= 1e-5
    assert trl["rel_stock_vs_fp32"] == 0.0  # the reference arm is the same computation in fp32
    assert trl["rel_modular_vs_stock"] > 1e-4  # surgery changed the update: the comparison can tell arms apart
    assert all(_positive(trl["arms"][a]["step_ms"]) for a in ("stock", "none", "modular"))
    assert [trl["arms"][a]["trainer"] for a in ("stock", "none", "modular")] == ["GRPOTrainer", "MGSGRPOTrainer", "MGSGRPOTrainer"]
    assert all(_positive(v) for v in trl["domain_grad_norms"].values()) and len(trl["domain_grad_norms"]) == 3


@pytest.mark.skipif(not _installed("verl"), reason="verl is not installed")
def test_verl_step_none_equals_stock_with_packed_sequences(smoke):
    verl = smoke[0]["steps"]["verl"]
    assert verl["status"] == "ok", verl.get("reason") or verl.get("checks")
    assert verl["use_remove_padding"] and verl["gradient_checkpointing"]
    assert verl["rel_none_vs_stock"] <= 1e-5 and verl["rel_modular_vs_stock"] > 1e-4
    assert verl["engines"]["none"] == verl["engines"]["modular"] == "MGSFSDPEngine"
    assert not verl["engines"]["stock"].startswith("MGS")
    assert verl["ray_standin"]["called"] == [] and "ray.ObjectRef" in verl["ray_standin"]["accessed"]
    assert all(_positive(verl["update_ms"][a]) for a in ("stock", "none", "modular"))


def test_ray_standin_fails_on_any_call():
    code = (
        "import ray_standin; ray_standin.install()\n"
        "import ray\n"
        "from ray.util.placement_group import PlacementGroup\n"
        "@ray.remote\n"
        "class Actor: pass\n"
        "assert Actor.__name__ == 'Actor' and not isinstance(object(), ray.ObjectRef)\n"
        "for call in (lambda: ray.init(), lambda: ray.get([]), lambda: PlacementGroup(), lambda: ray.remote(num_cpus=1)(1)):\n"
        "    try:\n"
        "        call()\n"
        "    except ray_standin.RayCalled:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit('a Ray call did not raise')\n"
        "r = ray_standin.report()\n"
        "assert r['decorated'] == 1 and len(r['called']) == 4, r\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=KIT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_bf16_tolerance_scales_with_measured_noise():
    common = import_script(KIT, "common")
    assert common.tolerance(0.0, fp32=True)[0] == 1e-5
    assert common.tolerance(1e-2, fp32=False)[0] == pytest.approx(3e-2)
    assert common.tolerance(0.0, fp32=False)[0] == 2.0**-9
    import torch

    a, b = {"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([3.0, 4.5])}
    assert common.rel(a, b) == pytest.approx(0.5 / (3**2 + 4.5**2) ** 0.5)
    with pytest.raises(ValueError):
        common.rel(a, {"v": torch.ones(2)})


def test_shell_entry_point_is_valid_bash():
    script = ROOT / "scripts" / "gpu_check.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
