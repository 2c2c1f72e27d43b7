"""GradientSurgery against the plain float64 reference, and its invariants."""

from __future__ import annotations

import re

import pytest
import torch
from _reference import (
    TinyLlama,
    feed,
    max_group_error,
    named_params,
    reference_surgery,
    synthetic_grads,
)

import mgs

DOMAINS = ["math", "chat", "code", "if", "safety"]
GRANULARITIES = ["parameter", "module", "block", "layer", re.compile(r"layers\.\d+\.(self_attn|mlp)"), lambda n: n.split(".")[-1]]


def _setup(k, surgery="modular", granularity="parameter", seed=3, grad_seed=0, **kw):
    torch.manual_seed(0)
    model = TinyLlama()
    s = mgs.GradientSurgery(model, surgery=surgery, granularity=granularity, domains=DOMAINS[:k], seed=seed, **kw)
    params = named_params(model)
    grads = synthetic_grads(params, k, grad_seed, list(s.groups().values()))
    return model, s, params, grads


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("granularity", GRANULARITIES, ids=["parameter", "module", "block", "layer", "regex", "callable"])
def test_modular_equals_reference(k, granularity):
    model, s, params, grads = _setup(k, granularity=granularity)
    feed(s, params, grads, DOMAINS[:k])
    s.apply(step=7)
    expected = reference_surgery(grads, s.groups(), "modular", seed=3, step=7)
    assert max_group_error(params, expected, s.groups()) <= 1e-5


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("surgery", ["global", "none"])
def test_global_and_none_equal_reference(k, surgery):
    model, s, params, grads = _setup(k, surgery=surgery, granularity="block")
    feed(s, params, grads, DOMAINS[:k])
    s.apply(step=2)
    expected = reference_surgery(grads, s.groups(), surgery, seed=3, step=2)
    assert max_group_error(params, expected, s.groups()) <= 1e-5


def test_surgery_actually_changes_the_update():
    """Guard against a reference that agrees because nothing is projected."""
    model, s, params, grads = _setup(3)
    feed(s, params, grads, DOMAINS[:3])
    stats = s.apply(step=0)
    plain = reference_surgery(grads, s.groups(), "none", 0, 0)
    assert 0.2 < float(stats["conflict_frac"]) < 0.8
    assert max_group_error(params, plain, s.groups()) > 1e-2


def test_none_equals_one_backward_of_summed_losses():
    torch.manual_seed(0)
    model = TinyLlama()
    ids = [torch.randint(0, 32, (3, 5)) for _ in range(3)]
    losses = lambda: [model(x).log_softmax(-1)[..., 0].mean() * (d + 1) for d, x in enumerate(ids)]
    sum(losses()).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    s = mgs.GradientSurgery(model, surgery="none", domains=DOMAINS[:3])
    for d, loss in enumerate(losses()):
        with s.domain(DOMAINS[d]):
            loss.backward()
    s.apply()
    for n, p in model.named_parameters():
        assert (p.grad - expected[n]).norm() <= 1e-6 * expected[n].norm(), n


def test_gradient_accumulation_and_shared():
    """Several backward calls per domain accumulate; shared() and stray gradients are added unprojected."""
    model, s, params, grads = _setup(3)
    half = {n: [g / 2 for g in gs] for n, gs in grads.items()}
    aux = {n: [torch.randn(p.shape, dtype=torch.float64)] for n, p in params.items()}
    stray = {n: [torch.randn(p.shape, dtype=torch.float64)] for n, p in params.items()}
    sum((p * stray[n][0].float()).sum() for n, p in params.items()).backward()  # left over in p.grad
    feed(s, params, half, DOMAINS[:3])
    with s.shared():
        sum((p * aux[n][0].float()).sum() for n, p in params.items()).backward()
    feed(s, params, half, DOMAINS[:3])
    s.apply(step=1)
    ref = reference_surgery(grads, s.groups(), "modular", 3, 1)
    expected = {n: ref[n] + aux[n][0] + stray[n][0] for n in params}
    assert max_group_error(params, expected, s.groups()) <= 1e-5


def test_single_domain_and_absent_domains_give_the_plain_gradient():
    model, s, params, grads = _setup(3)
    feed(s, params, {n: g[:1] for n, g in grads.items()}, DOMAINS[:1])  # only "math" this step
    s.apply()
    for n, p in params.items():
        assert torch.equal(p.grad, grads[n][0].float())
    torch.manual_seed(0)
    m, stock = TinyLlama(), TinyLlama()
    stock.load_state_dict(m.state_dict())
    x = torch.randint(0, 32, (2, 3))
    k1 = mgs.GradientSurgery(m, domains=["only"])
    with k1.domain("only"):
        m(x).sum().backward()
    k1.apply()  # K = 1: the gradient as computed
    stock(x).sum().backward()
    for (n, p), q in zip(m.named_parameters(), stock.parameters()):
        assert torch.equal(p.grad, q.grad), n


def test_absent_domain_is_a_zero_row():
    """A domain absent this step equals the reference with a zero gradient for it."""
    model, s, params, grads = _setup(3)
    grads = {n: [g[0], g[1], torch.zeros_like(g[0])] for n, g in grads.items()}
    feed(s, params, {n: g[:2] for n, g in grads.items()}, DOMAINS[:2])
    stats = s.apply(step=4)
    assert max_group_error(params, reference_surgery(grads, s.groups(), "modular", 3, 4), s.groups()) <= 1e-5
    assert float(stats["grad_norm/code"]) == 0.0


def test_parameter_without_gradient_in_a_domain_counts_as_zero():
    torch.manual_seed(0)
    model = TinyLlama()
    s = mgs.GradientSurgery(model, domains=["a", "b"])
    params = named_params(model)
    grads = synthetic_grads(params, 2, 1, list(s.groups().values()))
    untouched = "model.layers.1.mlp.up_proj.weight"
    grads[untouched][1] = torch.zeros_like(grads[untouched][1])
    for d, dom in enumerate("ab"):
        with s.domain(dom):
            sum((p * grads[n][d].float()).sum() for n, p in params.items() if not (d == 1 and n == untouched)).backward()
    s.apply(step=0)
    assert max_group_error(params, reference_surgery(grads, s.groups(), "modular", 0, 0), s.groups()) <= 1e-5


def test_determinism_and_private_rng():
    outs = []
    for _ in range(2):
        model, s, params, grads = _setup(5, seed=11)
        state = torch.get_rng_state()
        feed(s, params, grads, DOMAINS[:5])
        s.apply(step=5)
        assert torch.equal(state, torch.get_rng_state()), "surgery must not touch the global RNG"
        outs.append(torch.cat([p.grad.flatten() for p in params.values()]))
    assert torch.equal(outs[0], outs[1])
    orders = lambda step: mgs.methods.pcgrad_orders(10, 5, mgs.methods.step_generator(11, step))
    assert torch.equal(orders(5), orders(5)) and not torch.equal(orders(5), orders(6))
    assert not torch.equal(orders(5), mgs.methods.pcgrad_orders(10, 5, mgs.methods.step_generator(12, 5)))


def test_internal_step_counter_and_state_dict():
    model, s, params, grads = _setup(3)
    for step in range(2):
        feed(s, params, grads, DOMAINS[:3])
        s.apply()
        assert max_group_error(params, reference_surgery(grads, s.groups(), "modular", 3, step), s.groups()) <= 1e-5
        model.zero_grad()
    state = s.state_dict()
    assert state == {"step": 2, "seed": 3, "domains": DOMAINS[:3], "groups": s._groups_fingerprint()}
    _, fresh, _, _ = _setup(3)
    fresh.load_state_dict(state)
    assert fresh.step == 2
    _, wrong, _, _ = _setup(2)
    with pytest.raises(ValueError, match="differ"):
        wrong.load_state_dict(state)


def test_discovery_single_process():
    torch.manual_seed(0)
    model = TinyLlama()
    s = mgs.GradientSurgery(model, domains=None, seed=3)
    params = named_params(model)
    grads = synthetic_grads(params, 3, 0, list(s.groups().values()))
    feed(s, params, grads, ["x", "y", "z"])
    s.apply(step=0)
    assert s.domains == ("x", "y", "z")
    assert max_group_error(params, reference_surgery(grads, s.groups(), "modular", 3, 0), s.groups()) <= 1e-5


def test_nonfinite_flags_and_isolation():
    model, s, params, grads = _setup(3)
    bad = "model.layers.0.mlp.gate_proj.weight"
    grads[bad][1] = grads[bad][1].clone()
    grads[bad][1][0, 0] = float("inf")
    feed(s, params, grads, DOMAINS[:3])
    stats = s.apply(step=0)
    names = list(s.groups())
    flags = stats["nonfinite_flags"]
    assert flags.shape == (len(names), 3)
    assert flags.sum() == 1 and flags[names.index(bad), 1]
    assert float(stats["nonfinite/chat"]) == 1.0
    finite = {n: [g.clone() for g in gs] for n, gs in grads.items()}
    ref = reference_surgery(finite, s.groups(), "modular", 3, 0)
    others = {k: v for k, v in s.groups().items() if k != bad}
    assert max_group_error(params, ref, others) <= 1e-5  # every other module is still exact
    assert torch.isinf(params[bad].grad[0, 0])  # propagated, as without surgery
    assert torch.isfinite(stats["conflict_frac"])


def test_nonfinite_raise():
    model, s, params, grads = _setup(2, on_nonfinite="raise")
    grads["lm_head.weight"][0][0, 0] = float("nan")
    feed(s, params, grads, DOMAINS[:2])
    with pytest.raises(FloatingPointError, match="lm_head.weight"):
        s.apply()


def test_bf16_model():
    torch.manual_seed(0)
    model = TinyLlama().to(torch.bfloat16)
    s = mgs.GradientSurgery(model, domains=DOMAINS[:3], seed=3)
    params = named_params(model)
    grads = synthetic_grads(params, 3, 0, list(s.groups().values()), min_abs_cos=0.05)
    grads = {n: [g.bfloat16().double() for g in gs] for n, gs in grads.items()}  # what bf16 buffers hold
    feed(s, params, grads, DOMAINS[:3])
    s.apply(step=0)
    assert all(p.grad.dtype == torch.bfloat16 for p in params.values())
    # output rounding to bf16 (2^-9 relative per element, K roundings) bounds the error
    assert max_group_error(params, reference_surgery(grads, s.groups(), "modular", 3, 0), s.groups()) <= 1e-2


def test_gram_is_float32_from_bf16_buffers():
    from mgs._gram import chunk_grams

    x = torch.randn(3, 8 * 512, dtype=torch.float64)
    low = x.bfloat16()
    got = chunk_grams(low)
    assert got.dtype == torch.float32
    exact = torch.bmm(*(lambda v: (v, v.transpose(1, 2)))(low.double().view(3, 8, 512).transpose(0, 1)))
    assert ((got.double() - exact).abs() <= 1e-6 * exact.abs().amax()).all()


def test_apply_is_sync_free(monkeypatch):
    model, s, params, grads = _setup(3)
    feed(s, params, grads, DOMAINS[:3])

    def forbidden(*_a, **_k):
        raise AssertionError("host sync inside apply()")

    for attr in ("item", "tolist", "__bool__", "nonzero", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, attr, forbidden)
    stats = s.apply(step=0)
    monkeypatch.undo()
    assert max_group_error(params, reference_surgery(grads, s.groups(), "modular", 3, 0), s.groups()) <= 1e-5
    assert set(stats) >= {"conflict_frac", "cosine_mean", "grad_norm/math"}


def test_memory_at_most_k_buffers_freed_with_p_grad():
    """K gradient-sized buffers while capturing; apply() writes in place (p.grad is one of them) and keeps
    no reference, so zero_grad() frees everything; nothing points at the buffers between contexts."""
    import gc
    import weakref

    model, s, params, grads = _setup(3)
    chunk = mgs._buffers.CHUNK
    padded_bytes = sum(-(-p.numel() // chunk) * chunk * p.element_size() for p in params.values())

    def storage_bytes():
        return sum({p.grad.untyped_storage().data_ptr(): p.grad.untyped_storage().nbytes() for p in params.values()}.values())

    with s.domain("math"):
        assert storage_bytes() == 3 * padded_bytes
    assert all(p.grad is None for p in params.values())
    feed(s, params, grads, DOMAINS[:3])
    s.apply()
    assert storage_bytes() == 3 * padded_bytes  # the result lives in row 0 of the K buffers
    assert not s._buffers.is_open
    buffers = [weakref.ref(p.grad._base) for p in params.values()]
    model.zero_grad()
    gc.collect()
    assert all(ref() is None for ref in buffers)


def test_stats_against_reference():
    model, s, params, grads = _setup(3, granularity="block")
    feed(s, params, grads, DOMAINS[:3])
    stats = s.apply(step=0)
    kinds = s.group_kinds()
    pairs, conflicts, cosines = {}, {}, {}
    for key, names in s.groups().items():
        flat = [torch.cat([grads[n][d].flatten() for n in names]) for d in range(3)]
        for i in range(3):
            for j in range(i + 1, 3):
                cos = float(flat[i] @ flat[j] / (flat[i].norm() * flat[j].norm()))
                for bucket in ("all", kinds[key]):
                    pairs[bucket] = pairs.get(bucket, 0) + 1
                    conflicts[bucket] = conflicts.get(bucket, 0) + (cos < 0)
                    cosines[bucket] = cosines.get(bucket, 0.0) + cos
    assert float(stats["conflict_frac"]) == pytest.approx(conflicts["all"] / pairs["all"])
    assert float(stats["cosine_mean"]) == pytest.approx(cosines["all"] / pairs["all"], rel=1e-5)
    for kind in set(kinds.values()):
        assert float(stats[f"conflict_frac/{kind}"]) == pytest.approx(conflicts[kind] / pairs[kind])
    for d, name in enumerate(DOMAINS[:3]):
        norm = float(torch.cat([grads[n][d].flatten() for n in params]).norm())
        assert float(stats[f"grad_norm/{name}"]) == pytest.approx(norm, rel=1e-5)
    scalar_keys = [k for k, v in stats.items() if v.ndim == 0]
    assert len(scalar_keys) < 80  # tens of scalars: cheap to log every step


def test_tied_parameters_are_one_parameter():
    torch.manual_seed(0)
    model = TinyLlama(tie=True)
    s = mgs.GradientSurgery(model, domains=["a", "b"])
    assert "lm_head.weight" not in sum(s.groups().values(), [])
    assert len(s.partition.params) == len(list(model.parameters()))
    x = torch.randint(0, 32, (2, 3))
    with s.domain("a"):
        model(x).sum().backward()
    ref = TinyLlama(tie=True)
    ref.load_state_dict(model.state_dict())
    ref(x).sum().backward()
    s.apply()
    assert torch.allclose(model.model.embed_tokens.weight.grad, ref.model.embed_tokens.weight.grad)


def test_iterable_of_named_parameters_and_frozen_parameters():
    torch.manual_seed(0)
    model = TinyLlama()
    model.model.embed_tokens.weight.requires_grad_(False)
    s = mgs.GradientSurgery(list(model.named_parameters()), domains=["a"])
    assert "model.embed_tokens.weight" not in sum(s.groups().values(), [])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"surgery": "modualr"}, ValueError, "surgery='modualr'.*'none', 'global', 'modular'"),
        ({"granularity": "paramter"}, ValueError, "granularity='paramter'.*re.compile"),
        ({"method": "pcgard"}, ValueError, "method='pcgard'.*'pcgrad'"),
        ({"domains": "math"}, TypeError, "list of names"),
        ({"domains": ["a", "a"]}, ValueError, "duplicates"),
        ({"domains": []}, ValueError, "empty"),
        ({"on_nonfinite": "ignore"}, ValueError, "'propagate', 'raise'"),
        ({"seed": 1.5}, TypeError, "seed"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        mgs.GradientSurgery(TinyLlama(), **({"domains": ["a"]} | kwargs))


def test_usage_errors():
    torch.manual_seed(0)
    model = TinyLlama()
    s = mgs.GradientSurgery(model, domains=["math", "chat"])
    with pytest.raises(ValueError, match=r"unknown domain 'code'.*\['math', 'chat'\]"):
        s.domain("code")
    with pytest.raises(RuntimeError, match="do not nest"):
        with s.domain("math"):
            with s.domain("chat"):
                pass
    with pytest.raises(RuntimeError, match="inside"):
        with s.domain("math"):
            s.apply()
    frozen = TinyLlama().requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        mgs.GradientSurgery(frozen, domains=["a"])
    with pytest.raises(ValueError, match="expected weights of shape"):
        bad = mgs.GradientSurgery(model, domains=["a", "b"], method=lambda gram, gen: gram.sum(-1, keepdim=True))
        with bad.domain("a"):
            model(torch.randint(0, 32, (1, 2))).sum().backward()
        bad.apply()


def test_custom_method_is_called_per_group_with_the_gram():
    seen = {}

    def half(gram, generator):
        seen["shape"] = tuple(gram.shape)
        seen["gram"] = gram.clone()
        return torch.full(gram.shape[:2], 0.5, dtype=gram.dtype)

    model, s, params, grads = _setup(3, method=half)
    feed(s, params, grads, DOMAINS[:3])
    s.apply()
    assert seen["shape"] == (len(s.groups()), 3, 3)
    names = s.groups()["lm_head.weight"]
    flat = [torch.cat([grads[n][d].flatten() for n in names]) for d in range(3)]
    m = list(s.groups()).index("lm_head.weight")
    assert torch.allclose(seen["gram"][m], torch.stack(flat) @ torch.stack(flat).T, rtol=1e-5)
    expected = reference_surgery(grads, s.groups(), "none", 0, 0)
    assert max_group_error(params, {n: v / 2 for n, v in expected.items()}, s.groups()) <= 1e-6


def test_bucket_cap_splits_buckets_without_changing_results():
    model, s, params, grads = _setup(3, bucket_cap=1024)
    assert len(s._buffers.buckets) > 5
    feed(s, params, grads, DOMAINS[:3])
    s.apply(step=3)
    assert max_group_error(params, reference_surgery(grads, s.groups(), "modular", 3, 3), s.groups()) <= 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_apply_is_sync_free_on_cuda():
    torch.manual_seed(0)
    model = TinyLlama().cuda()
    s = mgs.GradientSurgery(model, domains=DOMAINS[:3], seed=3)
    params = named_params(model)
    grads = synthetic_grads(params, 3, 0, list(s.groups().values()))
    feed(s, params, {n: [g.cuda() for g in gs] for n, gs in grads.items()}, DOMAINS[:3])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        s.apply(step=0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    expected = reference_surgery(grads, s.groups(), "modular", 3, 0)
    worst = max(float((params[n].grad.double().cpu() - expected[n]).norm() / expected[n].norm()) for n in params)
    assert worst <= 1e-5


def test_process_group_arguments_renamed_with_a_warning():
    model = torch.nn.Linear(3, 2)
    with pytest.warns(FutureWarning, match=r"dp_group=\.\.\.\) is renamed dp_process_group"):
        mgs.GradientSurgery(model, domains=["a"], dp_group=None)
    with pytest.warns(FutureWarning, match=r"shard_group=\.\.\.\) is renamed shard_process_group"):
        mgs.GradientSurgery(model, domains=["a"], shard_group=None)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['dp_grup'\]"):
        mgs.GradientSurgery(model, domains=["a"], dp_grup=None)
    with pytest.raises(TypeError, match="got both dp_group= and dp_process_group="), pytest.warns(FutureWarning):
        mgs.GradientSurgery(model, domains=["a"], dp_group=object(), dp_process_group=object())


def test_a_refused_state_leaves_the_surgery_as_it_was():
    model = torch.nn.Linear(3, 2)
    surgery = mgs.GradientSurgery(model, domains=None, gram_ema=0.5)
    with pytest.raises(ValueError, match="no Gram EMA state"):
        surgery.load_state_dict({"step": 7, "seed": 0, "domains": ["a", "b"]})
    assert surgery.step == 0 and surgery.domains == ()


def test_an_unknown_fsdp2_layout_is_a_named_error():
    from types import SimpleNamespace

    from mgs._fsdp2 import check_fsdp2_layout
    from mgs.integration import UpstreamMismatchError

    class FakeFSDP2(torch.nn.Module):
        def __init__(self, param_attrs):
            super().__init__()
            self.param = SimpleNamespace(**param_attrs)

        def _get_fsdp_state(self):
            return SimpleNamespace(_fsdp_param_groups=[SimpleNamespace(fsdp_params=[self.param], _partial_reduce_output=None)])

    check_fsdp2_layout([FakeFSDP2({"unsharded_accumulated_grad": None})])
    with pytest.raises(UpstreamMismatchError, match=r"FSDP2's private FSDPParam.unsharded_accumulated_grad.*torch \("):
        check_fsdp2_layout([FakeFSDP2({})])  # a torch that renamed it: refused, not a check that never fires


# ---------------------------------------------------------------------- misuse (issue 13)
def _two_layer():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


def test_untouched_parameters_keep_grad_none_as_in_plain_pytorch():
    """Frozen after construction, unused in the forward, or no backward at all: p.grad stays None, so AdamW with
    weight decay leaves those parameters where they are, exactly as without surgery."""

    def train(with_surgery: bool):
        model = _two_layer()
        surgery = mgs.GradientSurgery(model, domains=["a", "b"]) if with_surgery else None
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
        x = torch.randn(3, 4)
        for step in range(3):
            if step == 1:
                model[0].weight.requires_grad_(False)  # frozen mid-run
            for d in ("a", "b"):
                loss = model[2](model[0](x).relu() if step < 2 else x).sum()  # step 2: layer 0 unused
                if surgery is None:
                    loss.backward()
                else:
                    with surgery.domain(d):
                        loss.backward()
            if surgery is not None:
                surgery.apply(step=step)
            grads = {n: p.grad is None for n, p in model.named_parameters()}
            optimizer.step()
            optimizer.zero_grad()
        if surgery is not None:  # a step with no backward at all
            surgery.apply(step=3)
            assert all(p.grad is None for p in model.parameters())
        return grads, {n: p.detach().clone() for n, p in model.named_parameters()}

    (plain_none, plain), (mgs_none, surgery) = train(False), train(True)
    assert mgs_none == plain_none == {"0.weight": True, "0.bias": True, "2.weight": False, "2.bias": False}
    for name in plain:
        assert torch.allclose(surgery[name], plain[name], atol=1e-6), name


def test_parameters_added_or_unfrozen_after_construction_are_an_error():
    model = _two_layer()
    model[0].bias.requires_grad_(False)
    surgery = mgs.GradientSurgery(model, domains=["a"])
    model[0].bias.requires_grad_(True)
    with surgery.domain("a"):
        model(torch.randn(2, 4)).sum().backward()
    with pytest.raises(RuntimeError, match=r"apply\(\): parameter '0.bias' was added, replaced or unfrozen"):
        surgery.apply()
    model[0].bias.requires_grad_(False)
    surgery.reset()
    model.add_module("3", torch.nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match=r"parameter '3.weight' was added"):
        surgery.apply()


def test_a_failed_context_entry_leaves_the_surgery_usable():
    model = _two_layer()
    surgery = mgs.GradientSurgery(model, domains=["a"])
    model.double()
    with pytest.raises(RuntimeError, match=r"parameter '0.weight' is now torch.float64.*build the surgery after casting"):
        with surgery.domain("a"):
            pass
    assert all(p.grad is None for p in model.parameters())
    model.float()
    with surgery.domain("a"):  # the cause undone: usable again
        model(torch.randn(2, 4)).sum().backward()
    surgery.apply()
    assert model[0].weight.grad is not None


def test_load_state_dict_checks_what_it_loads():
    model = _two_layer()
    saved = mgs.GradientSurgery(model, domains=["a", "b"], seed=3, gram_ema=0.5).state_dict()
    with pytest.raises(ValueError, match="saved with seed=3, this surgery has seed=4"):
        mgs.GradientSurgery(model, domains=["a", "b"], seed=4, gram_ema=0.5).load_state_dict(saved)
    with pytest.raises(ValueError, match="parameter groups .* granularity='layer'"):
        mgs.GradientSurgery(model, domains=["a", "b"], seed=3, gram_ema=0.5, granularity="layer").load_state_dict(saved)
    with pytest.raises(ValueError, match="holds a Gram EMA .* gram_ema=0"):
        mgs.GradientSurgery(model, domains=["a", "b"], seed=3).load_state_dict(saved)
    fresh = mgs.GradientSurgery(model, domains=None, seed=3, gram_ema=0.5)
    with pytest.raises(ValueError, match="the checkpoint's step must be >= 0"):
        fresh.load_state_dict(saved | {"step": -1})
    with pytest.raises(TypeError, match="not the string 'ab'"):
        fresh.load_state_dict(saved | {"domains": "ab"})
    with pytest.raises(ValueError, match="duplicates"):
        fresh.load_state_dict(saved | {"domains": ["a", "a"]})
    assert fresh.step == 0 and fresh.domains == ()  # nothing half-restored
    fresh.load_state_dict(saved)
    assert fresh.domains == ("a", "b")


def test_copies_are_refused():
    import copy
    import pickle

    surgery = mgs.GradientSurgery(_two_layer(), domains=["a"])
    for copier in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="bound to its model's parameters.*build a new one"):
            copier(surgery)


def test_zero_grad_without_set_to_none_keeps_the_k_buffers():
    """Documented (docs/core.md): after apply() p.grad is a view of the domains' [K, n] buffer, so
    zero_grad(set_to_none=False) keeps all K rows alive until the next step's buffers replace them."""
    model = torch.nn.Linear(512, 1, bias=False)
    surgery = mgs.GradientSurgery(model, domains=["a", "b", "c"])
    for d in "abc":
        with surgery.domain(d):
            model(torch.randn(2, 512)).sum().backward()
    surgery.apply()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad(set_to_none=False)
    assert model.weight.grad.untyped_storage().nbytes() == 3 * 512 * 4  # K rows, not one
    optimizer.zero_grad(set_to_none=True)
    assert model.weight.grad is None


def test_domain_names_and_lists_that_cannot_be_used():
    model = _two_layer()
    with pytest.raises(ValueError, match="contains '/'"):
        mgs.GradientSurgery(model, domains=["math/easy"])
    with pytest.raises(TypeError, match="not a set, whose order can differ between processes"):
        mgs.GradientSurgery(model, domains={"a", "b"})
    surgery = mgs.GradientSurgery(model, domains=None)
    with pytest.raises(ValueError, match="contains '/'"):
        surgery.domain("a/b")
    with pytest.raises(TypeError, match="domain names are non-empty strings; got 3"):
        surgery.domain(3)


def test_small_input_checks():
    import numpy as np

    model = _two_layer()
    surgery = mgs.GradientSurgery(model, domains=["a"], seed=np.int64(5))
    assert surgery.options.seed == 5 and type(surgery.options.seed) is int
    surgery.apply(step=np.int32(2))
    assert surgery.step == 3
    with pytest.raises(ValueError, match="step must be >= 0; got -1"):
        surgery.apply(step=-1)
    with pytest.raises(TypeError, match="step must be an integer; got 1.5"):
        surgery.apply(step=1.5)
    with pytest.raises(ValueError, match="bucket_cap must be an integer number of elements >= 512; got 1000.5"):
        mgs.GradientSurgery(model, domains=["a"], bucket_cap=1000.5)
    sparse = torch.nn.Sequential(torch.nn.Embedding(10, 4, sparse=True), torch.nn.Linear(4, 1))
    with pytest.raises(ValueError, match="module '0' \\(Embedding\\) has sparse=True"):
        mgs.GradientSurgery(sparse, domains=["a"])
    complex_model = torch.nn.Linear(2, 2).to(torch.complex64)
    with pytest.raises(TypeError, match="parameter 'weight' is complex"):
        mgs.GradientSurgery(complex_model, domains=["a"])


def test_a_second_thread_inside_a_context_is_an_error():
    import threading

    surgery = mgs.GradientSurgery(_two_layer(), domains=["a", "b"])
    inside, release, errors = threading.Event(), threading.Event(), []

    def first():
        with surgery.domain("a"):
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=first)
    thread.start()
    inside.wait(5)
    try:
        with surgery.domain("b"):
            pass
    except RuntimeError as error:
        errors.append(str(error))
    release.set()
    thread.join()
    assert errors and "contexts do not nest" in errors[0]


def test_overflowing_gram_is_reported_as_overflow():
    model = torch.nn.Linear(512, 1, bias=False)
    surgery = mgs.GradientSurgery(model, domains=["a"], on_nonfinite="raise")
    with surgery.domain("a"):
        (model(torch.full((1, 512), 1e20)) * 1.0).sum().backward()  # every gradient entry 1e20: finite
    with pytest.raises(FloatingPointError, match="finite, but their squared norms overflow"):
        surgery.apply()


def test_gradients_written_by_hand_inside_a_context_are_kept():
    """Writing into p.grad inside a domain context (no backward, no hook) still counts: its bucket is touched."""
    model = _two_layer()
    surgery = mgs.GradientSurgery(model, domains=["a"])
    with surgery.domain("a"):
        model[2].bias.grad.add_(1.0)
    surgery.apply()
    assert torch.equal(model[2].bias.grad, torch.ones(2))


def test_a_hand_write_is_seen_even_when_another_gradient_is_replaced():
    """create_graph=True replaces one parameter's p.grad (a hook call without an in-place write); a hand write into
    another parameter of the same bucket must still count."""
    model = _two_layer()
    surgery = mgs.GradientSurgery(model, domains=["a"])
    with surgery.domain("a"):
        model[2](torch.randn(2, 4)).sum().backward(create_graph=True)
        model[0].bias.grad.add_(1.0)
    surgery.apply()
    assert torch.equal(model[0].bias.grad, torch.ones(4))


def test_rebuilding_the_surgery_adds_no_hooks():
    import gc

    model = _two_layer()
    for _ in range(3):
        mgs.GradientSurgery(model, domains=["a"])
        gc.collect()
    assert len(model[0].weight._post_accumulate_grad_hooks or {}) <= 1
