"""Methods beyond plain PCGrad: norm balancing, the Gram EMA, TorchJD weightings (and GradVac's checkpointed
state), and their statistics.

References are written here with loops over groups and domains in float64 (or are TorchJD's own
aggregators), sharing nothing with mgs but the PCGrad projection orders (part of the specification)."""

from __future__ import annotations

import pytest
import torch
from _reference import TinyLlama, feed, max_group_error, named_params, synthetic_grads
from pcgrad_reference import reference_pcgrad

import mgs
from mgs.methods import TORCHJD_WEIGHTINGS, pcgrad_orders, step_generator

DOMAINS = ["math", "chat", "code", "if", "safety"]


def _setup(k, seed=3, grad_seed=0, **kw):
    torch.manual_seed(0)
    model = TinyLlama()
    s = mgs.GradientSurgery(model, domains=DOMAINS[:k], seed=seed, **kw)
    params = named_params(model)
    grads = synthetic_grads(params, k, grad_seed, list(s.groups().values()))
    return model, s, params, grads


def _vectors(grads, names, domains):
    return [torch.cat([grads[n][d].flatten() for n in names]) for d in domains]


def _scatter(combined, grads, names, out):
    offset = 0
    for n in names:
        size = grads[n][0].numel()
        out[n] = combined[offset : offset + size].view(grads[n][0].shape)
        offset += size


def _groups_for(s, surgery):
    groups = list(s.groups().values())
    return [sum(groups, [])] if surgery in ("global", "none") else groups


def reference_balanced(grads, s, surgery, seed, step):
    """Scale each domain to the mean norm of the domains (per group for modular, whole model otherwise), then
    PCGrad (or the plain sum for surgery="none")."""
    k = len(next(iter(grads.values())))
    group_lists = _groups_for(s, surgery)
    orders = pcgrad_orders(len(group_lists), k, step_generator(seed, step))
    out = {}
    for m, names in enumerate(group_lists):
        vectors = _vectors(grads, names, range(k))
        norms = [float(v.norm()) for v in vectors]
        mean = sum(norms) / k
        scaled = [v * (mean / nrm) for v, nrm in zip(vectors, norms)]
        combined = sum(scaled) if surgery == "none" else reference_pcgrad(scaled, orders[m])[0]
        _scatter(combined, grads, names, out)
    return out


@pytest.mark.parametrize("surgery", ["none", "global", "modular"])
def test_balance_norm_equals_reference(surgery):
    model, s, params, grads = _setup(3, surgery=surgery, balance="norm")
    feed(s, params, grads, DOMAINS[:3])
    s.apply(step=0)
    expected = reference_balanced(grads, s, surgery, 3, 0)
    assert max_group_error(params, expected, s.groups()) <= 1e-5
    plain = {n: sum(g) for n, g in grads.items()}
    assert max_group_error(params, plain, s.groups()) > 1e-2  # balancing changed something


def test_gram_ema_zero_is_pcgrad_bit_for_bit():
    results = []
    for kw in ({}, {"gram_ema": 0.0}):
        model, s, params, grads = _setup(3, **kw)
        feed(s, params, grads, DOMAINS[:3])
        s.apply(step=5)
        results.append({n: p.grad.clone() for n, p in params.items()})
    assert all(torch.equal(results[0][n], results[1][n]) for n in results[0])
    gram = torch.randn(4, 3, 3, dtype=torch.float64)
    usable = torch.tensor([[True, True, False]] * 4)
    out = mgs._gram_ema.GramEMA(0.0).update(gram, usable)
    assert torch.equal(out[:, :2, :2], gram[:, :2, :2]) and not out[:, 2].any() and not out[:, :, 2].any()


def reference_pcgrad_weights(gram: list[list[float]], order: torch.Tensor) -> list[float]:
    """PCGrad on coefficients with Python floats: weights w such that the update is Σ_k w_k g_k."""
    k = len(gram)
    weights = [0.0] * k
    for i in range(k):
        coef = [1.0 if c == i else 0.0 for c in range(k)]
        for j in order[i].tolist():
            if j == i:
                continue
            dot = sum(coef[c] * gram[c][j] for c in range(k))
            if dot < 0 and gram[j][j] > 0:
                coef[j] -= dot / gram[j][j]
        weights = [w + c for w, c in zip(weights, coef)]
    return weights


def test_gram_ema_decisions_equal_reference_and_absent_domains_keep_their_rows():
    """Three steps, domain 'code' absent in the second: decisions from a bias-corrected EMA of each group's Gram
    (entries updated only when both domains are present), applied to the current gradients."""
    decay, k = 0.8, 3
    model, s, params, _ = _setup(k, gram_ema=decay)
    groups = list(s.groups().values())
    ema = [[[0.0] * k for _ in range(k)] for _ in groups]
    count = [[[0] * k for _ in range(k)] for _ in groups]
    present_by_step = [[0, 1, 2], [0, 1], [0, 1, 2]]
    for step, present in enumerate(present_by_step):
        grads = synthetic_grads(params, k, step, groups)
        feed(s, params, grads, [DOMAINS[d] for d in present])
        if step == 1:
            before = s._ema.average.clone()
        s.apply(step=step)
        if step == 1:
            code = DOMAINS.index("code")
            assert torch.equal(s._ema.average[:, code], before[:, code])
            assert torch.equal(s._ema.average[:, :, code], before[:, :, code])
        orders = pcgrad_orders(len(groups), k, step_generator(3, step))
        expected = {}
        for m, names in enumerate(groups):
            vectors = _vectors(grads, names, range(k))
            for i in present:
                for j in present:
                    dot = float(vectors[i] @ vectors[j])
                    ema[m][i][j] = decay * ema[m][i][j] + (1 - decay) * dot
                    count[m][i][j] += 1
            smoothed = [[ema[m][i][j] / (1 - decay ** count[m][i][j]) if i in present and j in present else 0.0
                         for j in range(k)] for i in range(k)]
            w = reference_pcgrad_weights(smoothed, orders[m])
            _scatter(sum(w[d] * vectors[d] for d in present), grads, names, expected)
        assert max_group_error(params, expected, s.groups()) <= 1e-5, f"step {step}"
        model.zero_grad()


def test_gram_ema_state_round_trips():
    k = 3
    model, s, params, _ = _setup(k, gram_ema=0.5)
    groups = list(s.groups().values())
    for step in range(2):
        feed(s, params, synthetic_grads(params, k, step, groups), DOMAINS[:k])
        s.apply(step=step)
        model.zero_grad()
    state = s.state_dict()
    assert state["gram_ema"]["average"].shape == (len(groups), k, k)
    _, restored, restored_params, _ = _setup(k, gram_ema=0.5)
    restored.load_state_dict(state)
    grads = synthetic_grads(params, k, 7, groups)
    for surgery, p in ((s, params), (restored, restored_params)):
        feed(surgery, p, grads, DOMAINS[:k])
        surgery.apply()
    assert all(torch.equal(params[n].grad, restored_params[n].grad) for n in params)
    _, fresh, _, _ = _setup(k, gram_ema=0.5)
    with pytest.raises(ValueError, match="decay 0.5 differs from the configured 0.9"):
        _setup(k, gram_ema=0.9)[1].load_state_dict(state)
    with pytest.raises(ValueError, match="no Gram EMA state"):
        fresh.load_state_dict({k_: v for k_, v in state.items() if k_ != "gram_ema"})


TORCHJD_AGGREGATORS = {
    "upgrad": "UPGrad", "mgda": "MGDA", "dualproj": "DualProj", "aligned_mtl": "AlignedMTL",
    "imtl_g": "IMTLG", "gradvac": "GradVac", "cagrad": "CAGrad",
}


@pytest.mark.parametrize("name", sorted(TORCHJD_WEIGHTINGS))
def test_torchjd_method_equals_torchjd_aggregator_per_module(name):
    aggregation = pytest.importorskip("torchjd.aggregation")
    try:
        model, s, params, grads = _setup(3, method=name, granularity="block")
    except ImportError as error:  # an optional solver of that weighting is missing
        pytest.skip(str(error))
    feed(s, params, grads, DOMAINS[:3])
    s.apply(step=4)
    seed = int(torch.randint(0, 2**62, (1,), generator=step_generator(3, 4)))
    kwargs = TORCHJD_WEIGHTINGS[name][1]
    expected = {}
    torch.manual_seed(seed)  # TorchJD's own randomness, in the group order mgs uses
    for names in s.groups().values():
        matrix = torch.stack(_vectors(grads, names, range(3)))  # [K, n] float64: the module's Jacobian
        aggregator = getattr(aggregation, TORCHJD_AGGREGATORS[name])(**kwargs)
        _scatter(aggregator(matrix), grads, names, expected)
    assert max_group_error(params, expected, s.groups()) <= 1e-4


def test_torchjd_weighting_instance_and_unknown_names():
    aggregation = pytest.importorskip("torchjd.aggregation")
    model, s, params, grads = _setup(3, method=aggregation.MGDAWeighting())
    feed(s, params, grads, DOMAINS[:3])
    by_instance = s.apply(step=0)
    got = {n: p.grad.clone() for n, p in params.items()}
    model, s, params, grads = _setup(3, method="mgda")
    feed(s, params, grads, DOMAINS[:3])
    by_name = s.apply(step=0)
    assert all(torch.allclose(got[n], params[n].grad) for n in got)
    assert torch.isnan(by_name["projection_frac"]) and torch.isnan(by_instance["projection_frac"])
    with pytest.raises(ValueError, match=r"method='upgradd' is not supported; choose one of 'pcgrad', 'upgrad'"):
        mgs.GradientSurgery(TinyLlama(), method="upgradd")
    with pytest.raises(ValueError, match=r"balance='l2' is not supported; choose one of 'none', 'norm'"):
        mgs.GradientSurgery(TinyLlama(), balance="l2")
    with pytest.raises(ValueError, match=r"gram_ema=1.0 is not supported; give a decay in \[0, 1\)"):
        mgs.GradientSurgery(TinyLlama(), gram_ema=1.0)


def _gradvac_run(steps, surgery=None, record=None, **kw):
    """Run GradVac surgery (domain "code" absent at step 1, so the groups' states change size) over ``steps``;
    return the surgery and each step's p.grad. ``record`` collects each step's weights."""
    k = 3
    model, s, params, _ = _setup(k, method="gradvac", granularity="block", **kw)
    if surgery is not None:
        s = surgery(model)
    groups = list(s.groups().values())
    if record is not None:  # wrap the method object to see its weights
        inner = s._method.fn

        class Recording:
            def __call__(self, gram, generator):
                record.append(inner(gram, generator))
                return record[-1]

            def state_dict(self):
                return inner.state_dict()

        s._method.fn = Recording()
    grads_out = []
    for step in steps:
        present = [0, 1] if step == 1 else [0, 1, 2]
        feed(s, params, synthetic_grads(params, k, step, groups), [DOMAINS[d] for d in present])
        s.apply(step=step)
        grads_out.append({n: p.grad.clone() for n, p in params.items()})
        model.zero_grad()
    return s, grads_out


def test_gradvac_state_survives_a_weights_only_checkpoint_bit_for_bit(tmp_path):
    """GradVac keeps per-group target cosines: 6 steps straight equal 3 steps, checkpoint (torch.save,
    torch.load(weights_only=True)) into a fresh GradientSurgery, 3 more steps; bit for bit. Without the method
    state the resumed steps differ, and a checkpoint without it is refused."""
    pytest.importorskip("torchjd.aggregation")
    straight_weights, resumed_weights = [], []
    straight, straight_grads = _gradvac_run(range(6), record=straight_weights)
    first, _ = _gradvac_run(range(3))
    state = first.state_dict()
    groups = state["method"]["groups"]
    assert len(groups) == len(first.groups()) and all(g["phi"].shape == (3, 3) for g in groups.values())
    torch.save(state, tmp_path / "surgery.pt")
    loaded = torch.load(tmp_path / "surgery.pt", weights_only=True)

    def restore(model):
        s = mgs.GradientSurgery(model, domains=DOMAINS[:3], seed=3, method="gradvac", granularity="block")
        s.load_state_dict(loaded)
        return s

    resumed, resumed_grads = _gradvac_run(range(3, 6), surgery=restore, record=resumed_weights)
    assert resumed.step == straight.step == 6
    for a, b in zip(straight_weights[3:], resumed_weights):
        assert torch.equal(a, b)
    for a, b in zip(straight_grads[3:], resumed_grads):
        assert all(torch.equal(a[n], b[n]) for n in a)
    final, after = straight.state_dict()["method"]["groups"], resumed.state_dict()["method"]["groups"]
    assert final.keys() == after.keys() and all(torch.equal(final[g]["phi"], after[g]["phi"]) for g in final)

    def without_method_state(model):
        s = mgs.GradientSurgery(model, domains=DOMAINS[:3], seed=3, method="gradvac", granularity="block")
        s.load_state_dict(loaded | {"method": {"groups": {}}})  # step and domains restored, targets from zero
        return s

    _, cold_grads = _gradvac_run(range(3, 6), surgery=without_method_state)
    assert not all(torch.equal(a[n], b[n]) for a, b in zip(straight_grads[3:], cold_grads) for n in a)
    with pytest.raises(ValueError, match="no method state but method='gradvac' keeps state"):
        fresh = _setup(3, method="gradvac", granularity="block")[1]
        fresh.load_state_dict({k: v for k, v in loaded.items() if k != "method"})


def test_stateless_torchjd_methods_add_no_state_and_unknown_stateful_weightings_warn():
    aggregation = pytest.importorskip("torchjd.aggregation")
    model, s, params, grads = _setup(3, method="upgrad")
    feed(s, params, grads, DOMAINS[:3])
    s.apply(step=0)
    assert "method" not in s.state_dict()
    with pytest.warns(UserWarning, match="PCDWeighting is stateful, but mgs does not know how to checkpoint"):
        model, s, params, grads = _setup(3, method=aggregation.PCDWeighting())
    feed(s, params, grads, DOMAINS[:3])
    s.apply(step=0)
    assert "method" not in s.state_dict()


@pytest.mark.parametrize("surgery, balance", [("modular", "none"), ("global", "none"), ("modular", "norm"), ("none", "none")])
def test_update_statistics_against_reference(surgery, balance):
    k = 3
    model, s, params, grads = _setup(k, surgery=surgery, balance=balance, granularity="block")
    feed(s, params, grads, DOMAINS[:k])
    stats = s.apply(step=2)
    kinds = s.group_kinds()
    names_of = s.groups()
    result = {n: params[n].grad.double() for n in params}

    def flat(tensors, names):
        return torch.cat([tensors[n].flatten() for n in names])

    plain = {n: sum(grads[n]) for n in params}
    all_names = list(params)
    assert float(stats["update_norm"]) == pytest.approx(float(flat(result, all_names).norm()), rel=1e-5)
    change = float((flat(result, all_names) - flat(plain, all_names)).norm() / flat(plain, all_names).norm())
    assert float(stats["change_ratio"]) == pytest.approx(change, rel=1e-4, abs=1e-6)
    for kind in set(kinds.values()):
        names = [n for g, ns in names_of.items() if kinds[g] == kind for n in ns]
        ratio = float((flat(result, names) - flat(plain, names)).norm() / flat(plain, names).norm())
        assert float(stats[f"change_ratio/{kind}"]) == pytest.approx(ratio, rel=1e-4, abs=1e-6)
    # effective weights: solve each group's update for its K coefficients, average with weights ‖g_d‖²
    num, den = [0.0] * k, [0.0] * k
    made, pairs = 0, 0
    orders = pcgrad_orders(len(names_of), k, step_generator(3, 2))
    whole = _vectors(grads, all_names, range(k))
    for m, names in enumerate(names_of.values()):
        vectors = torch.stack(_vectors(grads, names, range(k)), dim=1)  # [n, K]
        w = torch.linalg.lstsq(vectors, flat(result, names).unsqueeze(1)).solution.squeeze(1)
        for d in range(k):
            energy = float(vectors[:, d] @ vectors[:, d])
            num[d] += float(w[d]) * energy
            den[d] += energy
        cols = list(vectors.T) if surgery == "modular" else whole
        order = orders[m] if surgery == "modular" else pcgrad_orders(1, k, step_generator(3, 2))[0]
        if balance == "none":
            for i in range(k):  # count PCGrad's projections as the plain loop makes them
                g = cols[i].clone()
                for j in order[i].tolist():
                    if j == i:
                        continue
                    pairs += 1
                    dot = float(g @ cols[j])
                    if dot < 0 and surgery != "none":
                        made += 1
                        g = g - dot / float(cols[j] @ cols[j]) * cols[j]
    for d in range(k):
        assert float(stats[f"weight/{DOMAINS[d]}"]) == pytest.approx(num[d] / den[d], rel=1e-4)
    if balance == "none":
        assert float(stats["projection_frac"]) == pytest.approx(made / pairs)
    if surgery == "none":
        assert float(stats["change_ratio"]) == 0.0 and float(stats["projection_frac"]) == 0.0
    else:
        assert float(stats["change_ratio"]) > 1e-3
