"""MGSGRPOTrainer under accelerate's FSDP2 (2 CPU processes, gloo), against independent references.

One launch of ``fsdp_worker.py`` at 2 ranks (``torch.distributed.run``'s environment, gloo) and one plain process
(world size 1) run the whole matrix (module-scoped fixture); the tests here compare what they saved. On this CPU-only machine accelerate
would build DDP, so the worker uses the test-only shim ``_fsdp_cpu.py`` and checks on every trained model that
accelerate's own ``fsdp2_prepare_model`` sharded it (``fully_shard`` state on the root, the decoder layers and the
embedding; every parameter a ``Shard(0)`` DTensor).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("trl")

import torch

pytestmark = pytest.mark.distributed

WORKER = Path(__file__).with_name("fsdp_worker.py")
sys.path.insert(0, str(WORKER.parent))
from fsdp_worker import LAYOUT, MODULAR_CASES, NONE_CASES  # noqa: E402  (constants only; importing runs nothing)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world: int, out: Path, timeout: float) -> None:
    """Start the worker once per rank (``torch.distributed.run``'s environment, each rank in its own session, output to
    a log file) and wait; once a rank fails or ``timeout`` passes, kill every rank still running, so that a rank
    stuck in a collective fails the test instead of hanging it or outliving it."""
    port = _free_port()
    processes, logs = [], []
    for rank in range(world):
        env = dict(os.environ, OUT_DIR=str(out), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(name, None)
        if world > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        logs.append(out / f"log_world{world}_rank{rank}.txt")
        with open(logs[-1], "w") as log:
            processes.append(subprocess.Popen([sys.executable, str(WORKER)], env=env, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in processes):
            if any(p.poll() not in (None, 0) for p in processes) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
            p.wait()
    codes = [p.returncode for p in processes]
    if codes != [0] * world:
        tails = "\n".join(f"--- rank {r} (exit {c}):\n{logs[r].read_text()[-3000:]}" for r, c in enumerate(codes))
        hung = time.monotonic() > deadline
        pytest.fail(f"the {world}-process run {'did not finish within %.0f s' % timeout if hung else 'failed'}:\n{tails}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2")
    _launch(2, out, timeout=360)
    _launch(1, out, timeout=180)
    load = lambda name: torch.load(out / name, weights_only=False)  # noqa: E731
    return {"rank0": load("world2_rank0.pt"), "rank1": load("world2_rank1.pt"), "single": load("world1_rank0.pt")}


def _assert_close(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys(), what
    assert sum(float(v.norm()) for v in want.values()) > 0, f"{what}: the reference is zero, the test could not fail"
    for n in want:
        assert torch.allclose(got[n], want[n], rtol=1e-5, atol=1e-7), f"{what} {n}"
        assert float((got[n] - want[n]).norm()) <= 1e-5 * float(want[n].norm()) + 1e-7, f"{what} {n}"


@pytest.mark.parametrize("loss_type, grad_accum", NONE_CASES, ids=[f"{l}-ga{g}" for l, g in NONE_CASES])
def test_surgery_none_equals_stock_under_fsdp2(runs, loss_type, grad_accum):
    """The same FSDP2 setup, stock GRPOTrainer vs surgery="none": pre-clip gradients at every step and parameters
    after 3 steps (unsharded) agree to 1e-5, on TRL's shuffled multi-domain batches."""
    stock, none = runs["rank0"][f"stock_{loss_type}_{grad_accum}"], runs["rank0"][f"none_{loss_type}_{grad_accum}"]
    assert len(none["grads"]) == len(stock["grads"]) == 3
    for step, (g, s) in enumerate(zip(none["grads"], stock["grads"])):
        _assert_close(g, s, f"step {step} gradient")
    _assert_close(none["params"], stock["params"], "parameters after 3 steps")
    assert max(len(p) for p in none["passes"]) >= 2, "no mixed micro-batch: the per-domain split went untested"


def test_a_reference_model_passes_through_trls_own_fsdp2_preparation(runs):
    """beta > 0: TRL builds a reference model and shards it with its own prepare_fsdp (fully_shard) under the MGS
    trainer as under the stock one; surgery="none" still equals stock (the KL term included), and modular runs."""
    stock, none, modular = (runs["rank0"][f"{arm}_beta"] for arm in ("stock", "none", "modular"))
    assert stock["ref_fsdp2"] is True and none["ref_fsdp2"] is True and modular["ref_fsdp2"] is True
    for step, (g, s) in enumerate(zip(none["grads"], stock["grads"], strict=True)):
        _assert_close(g, s, f"beta step {step} gradient")
    _assert_close(none["params"], stock["params"], "beta: parameters after 3 steps")
    assert any(float((a - b).norm()) > 1e-6 for a, b in zip(modular["grads"][0].values(), stock["grads"][0].values()))


def test_the_none_matrix_exercised_padding_passes(runs):
    """Somewhere in the matrix a rank lacked a domain another rank had in the same micro-batch (the padding pass)."""
    padded = sum(pad for r in ("rank0", "rank1") for case in runs[r] if case.startswith("none_")
                 for passes in runs[r][case]["passes"] for _, pad in passes)
    assert padded > 0


@pytest.mark.parametrize("case", [f"modular_{l}" for l, _ in MODULAR_CASES] + ["modular_lora"])
def test_modular_at_two_ranks_equals_one_process(runs, case):
    """Modular surgery under FSDP2 at 2 ranks equals one process on the same global batch (grpo with domain-sorted
    micro-batches, dapo with TRL's order, LoRA adapters): pre-clip gradients every step, parameters after 3 steps and
    the surgery statistics, on a batch where a domain is on one rank only (step 0) and no rank has code (step 1)."""
    two, other, one = runs["rank0"][case], runs["rank1"][case], runs["single"][case]
    ids = {"chat": 0, "code": 1, "math": 2}
    half = len(LAYOUT[0]) // 2 * 2  # rows per rank per step: 4 prompts x 2 generations
    for step, rows in enumerate(LAYOUT):  # the batch landed on the ranks as laid out: the scenario really ran
        assert sorted(set(two["local_domains"][step])) == sorted({ids[d] for d in rows[:half // 2]})
        assert sorted(set(other["local_domains"][step])) == sorted({ids[d] for d in rows[half // 2:]})
    assert set(two["local_domains"][0]) == {2} and 2 not in other["local_domains"][0]
    assert 1 not in two["local_domains"][1] + other["local_domains"][1]
    assert any(pad for passes in two["passes"] for _, pad in passes)
    assert any(pad for passes in other["passes"] for _, pad in passes)
    for step, (g, s) in enumerate(zip(two["grads"], one["grads"], strict=True)):
        _assert_close(g, s, f"step {step} gradient")
    _assert_close(two["params"], one["params"], "parameters after 3 steps")
    assert len(two["stats"]) == len(one["stats"]) == 3
    for a, b, c in zip(two["stats"], other["stats"], one["stats"]):
        assert a == b  # both ranks log the same statistics
        for key, value in c.items():
            if value is None or a[key] is None:
                assert a[key] is None and value is None, key  # an absent domain is NaN (None) in both
            else:
                assert a[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert any(h["mgs/conflict_frac"] > 0 for h in two["stats"]), "no conflict: surgery changed nothing"
    if case == "modular_lora":
        assert two["grads"][0] and all("lora_" in n for n in two["grads"][0])


def test_reduce_scatter_is_deferred_within_a_domain(runs):
    """With domain-sorted micro-batches, a domain that ends one micro-batch and starts the next is reduce-scattered
    once, after its second pass (the core raises if a held-back gradient met another domain: none did)."""
    run = runs["rank0"]["modular_grpo"]
    assert run["deferred"], "no deferral happened: the path went untested"
    for index in run["deferred"]:
        assert index % 2 == 0 and run["passes"][index][-1][0] == run["passes"][index + 1][0][0]


def test_resume_under_fsdp2_continues_identically(runs):
    """4 steps straight equal 2 steps, an FSDP2 sharded checkpoint (accelerate's), a fresh trainer resuming from it
    and 2 more steps; with a Gram EMA, the surgery state travels per rank and ends equal."""
    r0, r1 = runs["rank0"], runs["rank1"]
    assert {"pytorch_model_fsdp_0", "optimizer_0", "mgs_surgery_rank0.pt", "mgs_surgery_rank1.pt"} <= set(
        r0["checkpoint_files"])
    for r in (r0, r1):
        _assert_close(r["resumed"]["params"], r["straight"]["params"], "parameters after resume")
        assert r["resumed"]["surgery"]["step"] == r["straight"]["surgery"]["step"] == 4
        for key, value in r["straight"]["surgery"]["gram_ema"].items():
            got = r["resumed"]["surgery"]["gram_ema"][key]
            assert torch.allclose(got, value, rtol=1e-5, atol=1e-7) if torch.is_tensor(value) else got == value, key
    moved = sum(float((r0["first"]["params"][n] - p).norm()) for n, p in r0["straight"]["params"].items())
    assert moved > 0, "steps 3-4 changed nothing: the test could not fail"
