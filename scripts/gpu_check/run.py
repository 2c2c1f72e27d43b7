"""The GPU check's driver: run each step in its own process, collect one JSON, print a table last.

    scripts/gpu_check.sh [--smoke] [--steps core,sync,trl,verl] [--json PATH]

Each step (``step_*.py`` beside this file) writes its own record; one that crashes, times out or cannot run
(missing package, no CUDA) is recorded with its reason and the others still run. The JSON (``--json``, else
``$OUT/gpu_check.json`` when ``$OUT`` is set) holds every step plus the device, driver, package versions and
the date; the steps' own output goes to ``gpu_check.log`` beside it. Exit status 1 when a step failed a check
or crashed, else 0 (skips included). ``$MGS_VERL_SITE`` (set by gpu_check.sh from ``.whl/verl``) goes first on
the verl step's ``PYTHONPATH`` only.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
STEPS = {  # name: (script, timeout on the GPU in s, timeout in --smoke)
    "core": ("step_core.py", 120, 60),
    "sync": ("step_sync.py", 60, 60),
    "trl": ("step_trl.py", 180, 90),
    "verl": ("step_verl.py", 180, 90),
}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "accelerate", "trl", "datasets", "verl", "tensordict", "mgs-rl"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    site = os.environ.get("MGS_VERL_SITE")
    if site:  # what the verl step imports instead
        for dist in importlib.metadata.distributions(path=[site]):
            out[f"verl_site/{dist.metadata['Name']}"] = dist.version
    return out


def device_info() -> dict:
    import torch

    info = {"cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(name=p.name, memory_gib=p.total_memory / 2**30, capability=f"{p.major}.{p.minor}",
                    multiprocessors=p.multi_processor_count)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if smi.returncode == 0:
            info["nvidia_smi"] = smi.stdout.strip()
            info["driver"] = smi.stdout.strip().split(",")[-1].strip()
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
    return info


def run_step(name: str, smoke: bool, log, workdir: Path) -> dict:
    script, timeout_gpu, timeout_smoke = STEPS[name]
    out = workdir / f"{name}.json"
    cmd = [sys.executable, str(HERE / script), "--json-out", str(out)] + (["--smoke"] if smoke else [])
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRL_EXPERIMENTAL_SILENCE="1")
    paths = [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if name == "verl" and env.get("MGS_VERL_SITE"):
        paths.insert(0, env["MGS_VERL_SITE"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if smoke:
        env.setdefault("OMP_NUM_THREADS", "1")
    log.write(f"\n===== step {name}: {' '.join(cmd)}\n")
    log.flush()
    t0 = time.perf_counter()
    timeout = timeout_smoke if smoke else timeout_gpu
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = None
    seconds = time.perf_counter() - t0
    if out.exists():
        record = json.loads(out.read_text())
    elif rc is None:
        record = {"status": "error", "reason": f"timed out after {timeout} s"}
    else:
        record = {"status": "error", "reason": f"exited {rc} without a record (see the log)"}
    record["seconds"] = seconds
    return record


def _f(x, fmt="{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def table(result: dict) -> str:
    rows = []
    steps = result["steps"]
    for name, rec in steps.items():
        status = rec["status"]
        if status in ("skipped", "error"):
            rows.append((name, status, rec.get("reason", "")[:150]))
            continue
        failed = [c["name"] for c in rec.get("checks", []) if not c["ok"]]
        if name == "core":
            rows.append((name, status, f"copy {rec['copy']['gb_s']:.0f} GB/s ({rec['timer']}, medians)"))
            for c in rec["cases"]:
                m = c["ms_median"]
                rows.append(("", "", f"{c['preset']:<9} {c['dtype']:<8} {c['params'] / 1e6:7.1f}M  apply {m['apply_modular']:8.2f} ms  "
                             f"sum {m['plain_sum']:8.2f} ms  apply/sum {c['apply_over_sum']:5.2f}x  loop/apply "
                             f"{c['loop_over_apply']:5.1f}x  sum {c['sum_bw_vs_copy'] * 100:3.0f}% / apply "
                             f"{c['apply_bw_vs_copy'] * 100:3.0f}% of copy"))
        elif name == "sync":
            rows.append((name, status, ", ".join(f"{k}: {v['outcome']}" for k, v in rec["tests"].items())))
        elif name == "trl":
            arms = rec["arms"]
            rows.append((name, status, f"{rec['params'] / 1e6:.1f}M {rec['dtype']}: none vs stock rel {rec['rel_none_vs_stock']:.2e} "
                         f"(tol {rec['tolerance']:.2e}; stock vs fp32 {rec['rel_stock_vs_fp32']:.2e})"))
            for arm in ("stock", "none", "modular"):
                r = arms[arm]
                rows.append(("", "", f"{arm:<8} step {_f(r['step_ms'], '{:.1f}')} ms  throughput {_f(r['throughput_vs_stock'])}x  "
                             f"peak {_f(r['peak_mib'], '{:.0f}')} MiB ({_f(r['peak_vs_stock'])}x)"))
        elif name == "verl":
            ratio = rec["time_ratio_vs_stock"]
            rows.append((name, status, f"{rec['params'] / 1e6:.1f}M {rec['dtype']} rmpad+ckpt: none vs stock rel "
                         f"{rec['rel_none_vs_stock']:.2e} (tol {rec['tolerance']:.2e}); update ms stock "
                         f"{_f(rec['update_ms']['stock'], '{:.1f}')}, time none {_f(ratio['none'])}x, modular {_f(ratio['modular'])}x"))
        for f in failed:
            rows.append(("", "FAILED", f))
    w = max(len(r[0]) for r in rows)
    lines = [f"MGS GPU check ({'smoke, CPU' if result['smoke'] else 'device'}): {result['device'].get('name', 'no CUDA device')}, "
             f"driver {result['device'].get('driver')}, torch {result['versions']['torch']}, {result['date']}"]
    lines += [f"  {a:<{w}}  {b:<8} {c}" for a, b, c in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the same code paths on the CPU at tiny shapes")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, from {list(STEPS)}")
    parser.add_argument("--json", help="where to write the JSON (default: $OUT/gpu_check.json when $OUT is set)")
    args = parser.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {list(STEPS)}")
    json_path = Path(args.json) if args.json else (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None)
    workdir = Path(tempfile.mkdtemp(prefix="mgs_gpu_check_"))
    log_path = (json_path.parent if json_path else workdir) / "gpu_check.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "smoke": args.smoke,
              "host": platform.node(), "device": device_info(), "versions": versions(), "steps": {}}
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        for name in steps:
            print(f"[gpu_check] {name} ...", flush=True)
            record = run_step(name, args.smoke, log, workdir)
            result["steps"][name] = record
            print(f"[gpu_check] {name}: {record['status']} in {record['seconds']:.1f} s"
                  + (f" ({record['reason'][:200]})" if record.get("reason") else ""), flush=True)
    result["seconds"] = time.perf_counter() - t0
    result["log"] = str(log_path)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1, default=str))
        print(f"[gpu_check] wrote {json_path} and {log_path}")
    else:
        print(f"[gpu_check] log: {log_path} (set $OUT or --json to keep the JSON)")
    print(table(result))
    return 1 if any(r["status"] in ("fail", "error") for r in result["steps"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
