"""Build verl 0.9.1's stock actor on CPU and run one PPO update on a synthetic 3-domain mini-batch.

The path is the one ``main_ppo`` takes, minus Ray and the rollout:

    hydra config (verl/trainer/config/ppo_trainer.yaml + overrides)
    → ActorRolloutRefWorker(config.actor_rollout_ref, role="actor").init_model()
    → (the driver's RayPPOTrainer._update_actor: DataProto → TensorDict → no-padding, the
       mini-batch keys) → the DP dispatch (BatchData.chunk) → update_actor
    → TrainingWorker.train_mini_batch → train_batch → engine.train_batch
    → FSDPEngine.forward_backward_batch (verl's micro-batching and ppo_loss) + optimizer_step

:func:`record_pre_clip_grads` wraps the engine's ``optimizer_step`` to keep a full (unsharded) copy
of every gradient just before verl clips it, which is what the tests compare.

Import this module before any other verl module: it installs the CPU platform (:mod:`_cpu`).
:func:`build_worker` imports ``verl_mgs`` first (the trl compatibility fix, without which no verl model
builds next to trl 1.x), which registers no engine: the MGS engine is registered when hydra
instantiates ``verl_mgs.config.MGSFSDPEngineConfig``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import _cpu

_cpu.install()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _model import CHARS, EOS, PAD, write_tiny_model  # noqa: E402,F401

DOMAINS = ("chat", "code", "math")


# ----------------------------------------------------------------------------- config
def compose(model_path: str, *, world_size: int, overrides: list[str] | tuple[str, ...] = ()):
    """verl's full PPO trainer config with the settings a tiny CPU run needs, then ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import verl

    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    base = [
        f"actor_rollout_ref.model.path={model_path}",
        "actor_rollout_ref.model.use_remove_padding=false",
        "actor_rollout_ref.model.enable_gradient_checkpointing=false",
        "+actor_rollout_ref.model.override_config.attn_implementation=eager",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.ref.strategy=fsdp2",
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=false",
        "actor_rollout_ref.actor.use_torch_compile=false",
        "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}",
        "actor_rollout_ref.actor.ppo_mini_batch_size=12",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=64",
        "actor_rollout_ref.actor.optim.lr=1e-2",
        "actor_rollout_ref.actor.optim.clip_grad=1e6",
        "actor_rollout_ref.rollout.n=1",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=64",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
        f"trainer.n_gpus_per_node={world_size}",
        "trainer.nnodes=1",
        "trainer.use_v1=false",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = hydra_compose(config_name="ppo_trainer", overrides=base + list(overrides))
    return cfg


# ----------------------------------------------------------------------------- workers
def _worker_env(rank: int, world_size: int) -> None:
    """What verl's Worker base class reads (Ray sets it on a cluster); the process group exists already."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT="0")


def build_worker(cfg, role: str = "actor", compat: bool = True):
    """``ActorRolloutRefWorker`` for ``role`` ("actor" or "ref"; no rollout on CPU), initialised.

    ``compat=False`` leaves the trl fix to the config (e.g. ``actor_rollout_ref.model.external_lib``)."""
    import torch.distributed as dist
    from verl.workers.engine_workers import ActorRolloutRefWorker

    if compat:
        import verl_mgs  # noqa: F401

    _worker_env(dist.get_rank(), dist.get_world_size())
    worker = ActorRolloutRefWorker(cfg.actor_rollout_ref, role=role)
    worker.init_model()
    return worker


# ----------------------------------------------------------------------------- data
def make_batch(size: int, seed: int = 0, domains=DOMAINS, prompt_len: int = 6, response_len: int = 7, labels=None):
    """A padded rollout batch as the driver holds it before the actor update (after advantages).

    Prompts are left-padded, responses right-padded, lengths vary (so normalisers matter), and
    ``data_source`` cycles through ``domains`` with a seed-dependent shuffle (micro-batches mix them),
    unless ``labels`` gives each row's domain.
    """
    from verl.protocol import DataProto

    g = torch.Generator().manual_seed(seed)
    vocab = len(CHARS) + 3
    prompts = torch.full((size, prompt_len), PAD, dtype=torch.long)
    responses = torch.full((size, response_len), PAD, dtype=torch.long)
    p_mask = torch.zeros(size, prompt_len, dtype=torch.long)
    r_mask = torch.zeros(size, response_len, dtype=torch.long)
    for i in range(size):
        pl = int(torch.randint(2, prompt_len + 1, (1,), generator=g))
        rl = int(torch.randint(1, response_len + 1, (1,), generator=g))
        prompts[i, prompt_len - pl :] = torch.randint(3, vocab, (pl,), generator=g)
        p_mask[i, prompt_len - pl :] = 1
        responses[i, :rl] = torch.randint(3, vocab, (rl,), generator=g)
        r_mask[i, :rl] = 1
    attention_mask = torch.cat([p_mask, r_mask], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    order = torch.randperm(size, generator=g).tolist()
    if labels is None:
        labels = [domains[order[i] % len(domains)] for i in range(size)]
    data_source = np.array(list(labels), dtype=object)
    scores = torch.randn(size, generator=g)
    tensors = {
        "prompts": prompts,
        "responses": responses,
        "input_ids": torch.cat([prompts, responses], dim=1),
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "response_mask": r_mask,
        # near the untrained model's log-probs (about -log(vocab)), so only some tokens clip
        "old_log_probs": (-float(np.log(vocab)) + 0.1 * torch.randn(size, response_len, generator=g)) * r_mask,
        "advantages": scores[:, None] * r_mask,
    }
    return DataProto.from_dict(tensors=tensors, non_tensors={"data_source": data_source}, meta_info={})


def actor_input(batch, cfg):
    """``RayPPOTrainer._update_actor`` (verl/trainer/ppo/ray_trainer.py), up to the worker-group call."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    actor = cfg.actor_rollout_ref.actor
    batch.meta_info["multi_turn"] = False
    batch.meta_info["temperature"] = cfg.actor_rollout_ref.rollout.temperature
    td = left_right_2_no_padding(batch.to_tensordict())
    mini = actor.ppo_mini_batch_size * cfg.actor_rollout_ref.rollout.n
    tu.assign_non_tensor(
        td,
        calculate_entropy=actor.calculate_entropy or actor.entropy_coeff != 0.0,
        distillation_use_topk=False,
        distillation_only=False,
        global_batch_size=mini,
        mini_batch_size=mini,
        epochs=actor.ppo_epochs,
        seed=actor.data_loader_seed,
        dataloader_kwargs={"shuffle": actor.shuffle},
        compute_loss=True,
    )
    return td


def to_v1_layout(td):
    """The actor input as verl's default (v1, TransferQueue) trainer hands it over: every per-sample field
    jagged (verl's v1 agent_loop_tq and trainer_base), no attention_mask / max_response_len."""
    from verl.utils import tensordict_utils as tu

    attention = td["attention_mask"]
    prompt_width = td["prompts"].shape[1]
    p_len = attention[:, :prompt_width].sum(1).tolist()
    r_len = td["response_mask"].sum(1).tolist()

    def jagged(rows):
        return torch.nested.as_nested_tensor(list(rows), layout=torch.jagged)

    fields = {
        "prompts": jagged(td["prompts"][i, prompt_width - p:] for i, p in enumerate(p_len)),
        "responses": jagged(td["responses"][i, :r] for i, r in enumerate(r_len)),
    }
    for key in ("response_mask", "old_log_probs", "advantages"):
        fields[key] = jagged(td[key][i, :r] for i, r in enumerate(r_len))
    fields["loss_mask"] = fields["response_mask"]
    for key in ("attention_mask", "max_seq_len", "max_response_len", "indices"):
        tu.pop(td, key)
    for key, value in fields.items():
        td[key] = value
    return td


def log_prob_input(batch, *, calculate_entropy: bool, temperature: float = 1.0):
    """``RayPPOTrainer._compute_old_log_prob`` / ``_compute_ref_log_prob`` (ray_trainer.py), up to the call
    (the rollout leaves ``temperature`` in the batch's meta_info)."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    batch.meta_info["temperature"] = temperature
    td = left_right_2_no_padding(batch.to_tensordict())
    tu.assign_non_tensor(td, calculate_entropy=calculate_entropy, compute_loss=False)
    return td


def dp_shard(td, world_size: int, rank: int):
    """This rank's part, as verl's nd-compute dispatch splits a TensorDict (BatchData.chunk)."""
    from verl.protocol import BatchData

    part = BatchData(td).chunk(chunks=world_size)[rank]
    return part.unlock_()  # consolidate() locks it; Ray's transport hands the worker an unlocked copy


# ----------------------------------------------------------------------------- recording
def full_grads(module) -> dict[str, torch.Tensor]:
    """Every parameter's gradient, unsharded (a collective under FSDP2: call on every rank)."""
    out = {}
    for name, p in module.named_parameters():
        g = p.grad
        if g is None:
            continue
        g = g.full_tensor() if hasattr(g, "full_tensor") else g
        out[name] = g.detach().clone()
    return out


def full_params(module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in module.named_parameters():
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = t.detach().clone()
    return out


def record_pre_clip_grads(engine) -> list[dict[str, torch.Tensor]]:
    """Wrap ``engine.optimizer_step`` (clip, then step) to record the gradients it receives."""
    records: list[dict[str, torch.Tensor]] = []
    original = engine.optimizer_step

    def optimizer_step():
        records.append(full_grads(engine.module))
        return original()

    engine.optimizer_step = optimizer_step
    return records


# ----------------------------------------------------------------------------- one job, many updates
MGS_TARGET = "actor_rollout_ref.actor.fsdp_config._target_=verl_mgs.config.MGSFSDPEngineConfig"
FP32_REF = "+actor_rollout_ref.ref.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}"


def set_scenario(worker, td, *, dynamic: bool, no_sync: bool, loss_agg_mode: str, loss_scale_factor: float | None = None,
                 micro: int = 3, max_tokens: int = 32):
    """Switch the settings one update reads, on a built worker (test instrumentation: verl's configs are frozen).

    ``use_dynamic_bsz`` / ``micro_batch_size_per_gpu`` / ``max_token_len_per_gpu`` are read from the batch
    when present (TrainingWorker.train_batch only fills in missing ones), ``loss_agg_mode`` from the loss
    function's ActorConfig, ``use_no_sync_for_gradient_accumulation`` from the engine config at every call.
    """
    from verl.utils import tensordict_utils as tu

    object.__setattr__(worker.actor.loss_fn.keywords["config"], "loss_agg_mode", loss_agg_mode)
    object.__setattr__(worker.actor.loss_fn.keywords["config"], "loss_scale_factor", loss_scale_factor)
    object.__setattr__(worker.actor.engine.engine_config, "use_no_sync_for_gradient_accumulation", no_sync)
    tu.assign_non_tensor(td, use_dynamic_bsz=dynamic, micro_batch_size_per_gpu=micro, max_token_len_per_gpu=max_tokens)
    return td


def shared_model(out_dir: str) -> str:
    """Rank 0 writes the tiny model next to ``out_dir``; every rank returns its path."""
    import torch.distributed as dist

    path = Path(out_dir).parent / "model"
    if dist.get_rank() == 0:
        write_tiny_model(path)
    dist.barrier()
    return str(path)


def compare_job(rank: int, world_size: int, out_dir: str, job: dict) -> None:
    """Stock actor vs MGS actors (config-only activation), the same data, every scenario, in one process group.

    ``job``: ``scenarios`` (list of :func:`set_scenario` kwargs, plus ``layout="v1"`` for :func:`to_v1_layout`
    ``expect_error`` for settings the MGS engines must refuse, ``step`` for the surgery step), ``variants`` (name → hydra overrides of an
    MGS actor), ``labels`` (each row's domain or None), ``batch_size``, ``seed``, ``domain_grads`` (also the
    stock gradient of each domain's share: advantages zeroed outside it, same normalisers).
    The learning rate is 0, so every update starts from the same parameters.

    Rank 0 writes ``result.pt``: engine classes, per-run pre-clip gradients (and losses, MGS steps),
    log-probs of the stock actor, an MGS actor and a reference model built by the MGS engine class.
    """
    import time

    from verl.utils import tensordict_utils as tu

    model_path = shared_model(out_dir)
    common = ["actor_rollout_ref.actor.optim.lr=0.0", FP32_REF]
    t0 = time.perf_counter()
    ref_external_lib = reference_with_external_lib(model_path, world_size) if job.get("ref_external_lib") else None
    stock_cfg = compose(model_path, world_size=world_size, overrides=common)
    workers = {"stock": build_worker(stock_cfg)}  # built before verl_mgs.config registers the MGS engine
    cfgs = {}
    for name, overrides in job["variants"].items():
        cfgs[name] = compose(model_path, world_size=world_size, overrides=common + [MGS_TARGET] + list(overrides))
        workers[name] = build_worker(cfgs[name])
    ref = build_worker(cfgs[next(iter(cfgs))], role="ref") if cfgs else None  # plain FSDPEngineConfig, MGS class
    t_build = time.perf_counter() - t0
    records = {name: record_pre_clip_grads(w.actor.engine) for name, w in workers.items()}

    def batch(advantage_domain: str | None = None, labels=None):
        data = make_batch(job["batch_size"], seed=job["seed"], labels=labels or job.get("labels"))
        if advantage_domain is not None:
            keep = torch.tensor([d == advantage_domain for d in data.non_tensor_batch["data_source"]])
            data.batch["advantages"] = data.batch["advantages"] * keep[:, None]
        return data

    # inference: an MGS actor's log-probs (forward_only) and the reference model's must be the stock ones
    log_probs = {}
    if ref is not None:
        shard = lambda entropy: dp_shard(log_prob_input(batch(), calculate_entropy=entropy), world_size, rank)  # noqa: E731
        outs = {"stock": workers["stock"].compute_log_prob(shard(True)),
                "mgs": workers[next(iter(cfgs))].compute_log_prob(shard(True)),
                "ref": ref.compute_ref_log_prob(shard(False))}
        log_probs = {k: tu.get(v, "log_probs").values().clone() for k, v in outs.items()}
        log_probs.update({f"{k}_entropy": tu.get(outs[k], "entropy").values().clone() for k in ("stock", "mgs")})

    def update(worker, scenario, advantage_domain=None):
        td = actor_input(batch(advantage_domain, scenario.get("labels")), stock_cfg)  # the same actor settings everywhere
        if scenario.get("layout") == "v1":
            td = to_v1_layout(td)
        td = dp_shard(td, world_size, rank)
        if "step" in scenario and worker is not workers["stock"]:
            worker.actor.engine._mgs_step = scenario["step"]  # the surgery step this update uses
        scenario = {k: v for k, v in scenario.items() if k not in ("layout", "expect_error", "step", "labels")}
        output = worker.update_actor(set_scenario(worker, td, **scenario))
        return float(tu.get(output, "metrics")["loss"][0]) if rank == 0 else None

    runs = []
    t1 = time.perf_counter()
    for scenario in job["scenarios"]:
        run = {"scenario": dict(scenario)}
        for name, worker in workers.items():
            if scenario.get("expect_error") and name != "stock":
                try:
                    update(worker, scenario)
                    run[f"{name}_error"] = None
                except ValueError as error:
                    run[f"{name}_error"] = str(error)
                continue
            t = time.perf_counter()
            run[f"{name}_loss"] = update(worker, scenario)
            run[f"{name}_seconds"] = time.perf_counter() - t
            run[name] = records[name][-1]
            if name != "stock":
                run[f"{name}_step"] = worker.actor.engine._mgs_step - 1
        runs.append(run)
    domain_grads = {}
    if job.get("domain_grads"):
        for domain in DOMAINS:
            update(workers["stock"], job["scenarios"][0], advantage_domain=domain)
            domain_grads[domain] = records["stock"][-1]
    t_updates = time.perf_counter() - t1
    if rank == 0:
        engines = {name: type(w.actor.engine).__name__ for name, w in workers.items()}
        if ref is not None:
            engines["ref"] = type(ref.ref.engine).__name__
        torch.save({"engines": engines, "runs": runs, "log_probs": log_probs, "domain_grads": domain_grads,
                    "ref_external_lib": ref_external_lib, "t_build": t_build, "t_updates": t_updates},
                   Path(out_dir) / "result.pt")


def reference_with_external_lib(model_path: str, world_size: int) -> dict:
    """Build a reference model before anything imported verl_mgs, as a Ray worker does when only the actor's
    ``fsdp_config._target_`` names the plugin (init_model builds the reference first): with verl's defaults,
    then with ``actor_rollout_ref.model.external_lib=verl_mgs``. Must run first in a fresh process."""
    if "verl_mgs" in sys.modules:
        raise RuntimeError("reference_with_external_lib() must run before anything imports verl_mgs.")
    outcome = {}
    for label, overrides in (("default", []), ("external_lib", ["actor_rollout_ref.model.external_lib=verl_mgs"])):
        try:
            build_worker(compose(model_path, world_size=world_size, overrides=overrides), role="ref", compat=False)
            outcome[label] = "built"
        except ImportError as error:
            outcome[label] = f"ImportError: {error}"
    outcome["verl_mgs_imported"] = "verl_mgs" in sys.modules
    return outcome


# ----------------------------------------------------------------------------- training, metrics, resume
def train_job(rank: int, world_size: int, out_dir: str, job: dict) -> None:
    """An MGS actor trained for ``job["steps"]`` updates (lr > 0), each on its own batch; then the same run
    checkpointed after ``job["resume_at"]`` updates and resumed by a freshly built worker.

    Rank 0 writes ``result.pt``: the parameters after every update of the straight run and of the resumed
    one, verl's returned metrics per update, and after every update whether any ``p.grad`` or surgery buffer
    is still held (verl zeroes gradients when ``train_mode`` exits, which must free the K domain buffers)."""
    from verl.utils import tensordict_utils as tu

    model_path = shared_model(out_dir)
    overrides = [MGS_TARGET] + [f"+actor_rollout_ref.actor.fsdp_config.{k}={v}" for k, v in job["surgery"].items()]
    cfg = compose(model_path, world_size=world_size, overrides=overrides)

    expected_rewards = []

    def update(worker, step, record=False):
        data = make_batch(job["batch_size"], seed=100 + step, labels=job.get("labels"))
        # the driver's per-token scores: a sequence's score on its last response token
        g = torch.Generator().manual_seed(step)
        seq_scores = torch.rand(job["batch_size"], generator=g)
        mask = data.batch["response_mask"]
        last = mask.cumsum(-1).argmax(-1)
        data.batch["token_level_scores"] = torch.zeros(mask.shape).scatter(1, last[:, None], seq_scores[:, None])
        if record:
            labels = list(data.non_tensor_batch["data_source"])
            expected_rewards.append({d: float(np.mean([float(s) for s, l in zip(seq_scores, labels) if l == d]))
                                     for d in sorted(set(labels))})
        td = dp_shard(actor_input(data, cfg), world_size, rank)
        output = worker.update_actor(td)
        engine = worker.actor.engine
        held = {"grads": sum(p.grad is not None for p in engine.module.parameters()),
                "buffers": bool(engine._surgery is not None and engine._surgery._buffers.is_open)}
        metrics = tu.get(output, "metrics") if rank == 0 else None
        return full_params(engine.module), metrics, held

    refused = {}
    for label, extra in (("fsdp1", ["actor_rollout_ref.actor.strategy=fsdp"]),
                         ("ulysses", ["actor_rollout_ref.actor.ulysses_sequence_parallel_size=2",
                                      "actor_rollout_ref.model.use_remove_padding=true"])):
        try:
            build_worker(compose(model_path, world_size=world_size, overrides=overrides + extra))
            refused[label] = None
        except NotImplementedError as error:
            refused[label] = str(error)

    straight = build_worker(cfg)
    params, metrics, held = [], [], []
    for step in range(job["steps"]):
        p, m, h = update(straight, step, record=True)
        params.append(p), metrics.append(m), held.append(h)
    del straight

    checkpoint = str(Path(out_dir).parent / "checkpoint")
    first = build_worker(cfg)
    for step in range(job["resume_at"]):
        update(first, step)
    first.save_checkpoint(checkpoint, global_step=job["resume_at"])
    del first
    resumed = build_worker(cfg)
    resumed.load_checkpoint(checkpoint)
    resumed_params = [update(resumed, step)[0] for step in range(job["resume_at"], job["steps"])]
    if rank == 0:
        torch.save({"params": params, "metrics": metrics, "held": held, "resumed_params": resumed_params,
                    "checkpoint_files": sorted(os.listdir(checkpoint)),
                    "refused": refused,
                    "expected_rewards": expected_rewards}, Path(out_dir) / "result.pt")
