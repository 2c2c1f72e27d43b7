"""The method contract (mgs.methods._base), checked on every registered method and on a user callable; and the
registry: one register_method call makes a method selectable by name everywhere ``method=`` is accepted."""

from __future__ import annotations

import pytest
import torch
from _reference import TinyLlama, feed, max_group_error, named_params, reference_surgery, synthetic_grads

import mgs
from mgs.methods import (
    MethodOutput,
    method_names,
    method_spec,
    register_method,
    resolve_method,
    step_generator,
    unregister_method,
)

# what reads a tensor's values on the host; the core's sync-free test (test_surgery.py) patches the same
HOST_READS = ("item", "tolist", "__bool__", "nonzero", "__int__", "__float__", "__index__", "cpu", "numpy")


def inverse_norm(gram: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A user callable meeting the contract: each present domain scaled to unit norm, absent ones weight 1."""
    sq = gram.diagonal(dim1=1, dim2=2)
    return torch.where(sq > 0, sq.clamp(min=1e-300).rsqrt(), 1.0)


CASES = [*method_names(), "callable"]
SYNC_FREE = [c for c in CASES if c == "callable" or not method_spec(c).host_sync]


def _method(case):
    """A fresh Method for ``case`` (skipped when its optional dependencies are missing), and its spec's promises."""
    if case == "callable":
        return resolve_method(inverse_norm)
    spec = method_spec(case)
    if spec.extra == "torchjd":
        pytest.importorskip("torchjd.aggregation")
    try:
        method = resolve_method(case)
    except ImportError as error:  # an optional solver of that weighting is missing
        pytest.skip(str(error))
    assert (method.projects, method.host_sync) == (spec.projects, spec.host_sync)
    return method


def _grams(m=5, k=4, seed=0):
    """``[m, k, k]`` Gram matrices of conflicting gradients; domain k−1 absent from group 0, group 1 all absent."""
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(m, k, 16, generator=g, dtype=torch.float64)
    vectors[:, 1] -= 1.5 * vectors[:, 0]  # make conflicts likely
    vectors[0, k - 1] = 0
    vectors[1] = 0
    return vectors @ vectors.transpose(1, 2)


@pytest.mark.parametrize("case", CASES)
def test_output_shape_dtype_and_gram_left_unchanged(case):
    method = _method(case)
    gram = _grams()
    before = gram.clone()
    out = method(gram, step_generator(1, 2))
    assert isinstance(out, MethodOutput)
    assert out.weights.shape == (5, 4) and out.weights.dtype == torch.float64 and out.weights.device == gram.device
    assert torch.isfinite(out.weights).all()
    assert torch.equal(gram, before), "the method changed its input (the surgery reuses it for its statistics)"
    if method.projects:
        assert out.projected.shape == (5, 4, 4) and out.projected.dtype == torch.bool
        assert not out.projected.diagonal(dim1=1, dim2=2).any()
        assert out.projected.any(), "no projection on conflicting gradients"
    else:
        assert out.projected is None


@pytest.mark.parametrize("case", CASES)
def test_deterministic_from_the_generator_alone(case):
    """Same (seed, step) → the same weights, whatever the global RNG holds; the global RNG is left as it was."""
    gram = _grams(seed=1)
    results = []
    for global_seed in (0, 123):
        torch.manual_seed(global_seed)
        state = torch.random.get_rng_state()
        results.append(_method(case)(gram, step_generator(7, 3)))  # fresh object: stateful methods start equal
        assert torch.equal(torch.random.get_rng_state(), state), "the method drew from the global RNG"
    assert torch.equal(results[0].weights, results[1].weights)
    if results[0].projected is not None:
        assert torch.equal(results[0].projected, results[1].projected)


@pytest.mark.parametrize("case", CASES)
def test_absent_domains_get_finite_weights_and_change_nothing_else(case):
    """An absent domain (zero row and column) must not change the other domains' weights: with domain 2 absent
    everywhere, the weights of domains 0 and 1 are those of the 2-domain problem (where no order matters)."""
    gram = _grams(k=3, seed=2)
    gram[:, 2] = 0
    gram[:, :, 2] = 0
    out = _method(case)(gram, step_generator(4, 0))
    assert torch.isfinite(out.weights).all()
    alone = _method(case)(gram[:, :2, :2].contiguous(), step_generator(4, 0))
    torch.testing.assert_close(out.weights[:, :2], alone.weights, rtol=1e-9, atol=1e-12)
    if out.projected is not None:
        assert not out.projected[:, 2].any() and not out.projected[:, :, 2].any()
        assert not out.projected[1].any()


@pytest.mark.parametrize("case", SYNC_FREE)
def test_no_host_sync_unless_registered_with_host_sync(case, monkeypatch):
    method = _method(case)
    gram = _grams(seed=3)
    expected = method(gram, step_generator(2, 5))

    def forbidden(*_a, **_k):
        raise AssertionError(f"host sync inside method {case!r}")

    with monkeypatch.context() as patch:
        for attr in HOST_READS:
            patch.setattr(torch.Tensor, attr, forbidden)
        out = method(gram, step_generator(2, 5))
    assert torch.equal(out.weights, expected.weights)
    # on the meta device a tensor has no data: any read of a value, or copy to the host, fails
    meta = method(gram.to("meta"), step_generator(2, 5))
    assert meta.weights.device.type == "meta" and meta.weights.shape == expected.weights.shape


def test_host_sync_check_catches_a_sync(monkeypatch):
    """The check above can fail: a method with one .item() is caught by the patch, one .cpu() by the meta run."""
    with monkeypatch.context() as patch:
        for attr in HOST_READS:
            patch.setattr(torch.Tensor, attr, lambda *_a, **_k: (_ for _ in ()).throw(AssertionError("sync")))
        with pytest.raises(AssertionError, match="sync"):
            resolve_method(lambda gram, gen: gram.diagonal(dim1=1, dim2=2) * gram.sum().item())(_grams(), None)
    copy_to_host = resolve_method(lambda gram, gen: gram.diagonal(dim1=1, dim2=2).to("cpu").clamp(min=0))
    with pytest.raises(NotImplementedError, match="meta"):
        copy_to_host(_grams().to("meta"), None)


# ---------------------------------------------------------------------------------------------- the registry
class Halves:
    """A stateful user method: weight 1/2 on every domain, counting its calls (its state)."""

    def __init__(self):
        self.calls = torch.zeros((), dtype=torch.int64)

    def __call__(self, gram, generator):
        self.calls += 1
        return torch.full(gram.shape[:2], 0.5, dtype=gram.dtype, device=gram.device)

    def state_dict(self):
        return {"calls": self.calls.clone()}

    def load_state_dict(self, state):
        self.calls = state["calls"].clone()


@pytest.fixture
def mine():
    spec = register_method("mine", Halves)
    try:
        yield spec
    finally:
        unregister_method("mine")


def test_one_registration_makes_a_method_selectable_everywhere(mine, tmp_path):
    assert "mine" in method_names() and "mine" in mgs.methods.METHOD_NAMES and mgs.methods.METHODS["mine"] is mine
    assert mgs.SurgeryOptions(method="mine").method == "mine"
    torch.manual_seed(0)
    model = TinyLlama()
    s = mgs.GradientSurgery(model, domains=["a", "b", "c"], method="mine", seed=3)
    params = named_params(model)
    grads = synthetic_grads(params, 3, 0, list(s.groups().values()))
    feed(s, params, grads, ["a", "b", "c"])
    stats = s.apply(step=0)
    expected = reference_surgery(grads, s.groups(), "none", 0, 0)
    assert max_group_error(params, {n: v / 2 for n, v in expected.items()}, s.groups()) <= 1e-6
    assert torch.isnan(stats["projection_frac"])  # registered without projects=True
    # its state is the surgery's state, through a weights_only checkpoint
    assert int(s.state_dict()["method"]["calls"]) == 1
    torch.save(s.state_dict(), tmp_path / "s.pt")
    restored = mgs.GradientSurgery(TinyLlama(), domains=["a", "b", "c"], method="mine", seed=3)  # the saved seed
    assert int(restored.state_dict()["method"]["calls"]) == 0
    restored.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert int(restored.state_dict()["method"]["calls"]) == 1
    with pytest.raises(ValueError, match="no method state but method='mine' keeps state"):
        restored.load_state_dict({k: v for k, v in s.state_dict().items() if k != "method"})
    with pytest.raises(ValueError, match="holds method state.*method='pcgrad'.*keeps none"):
        mgs.GradientSurgery(TinyLlama(), domains=["a", "b", "c"]).load_state_dict(s.state_dict())
    assert "method" not in mgs.GradientSurgery(TinyLlama(), domains=["a"]).state_dict()  # stateless: no key


def test_unregistered_and_duplicate_names_are_clear_errors(mine):
    with pytest.raises(ValueError, match="'mine' is already registered"):
        register_method("mine", Halves)
    unregister_method("mine")
    try:
        for build in (lambda: mgs.SurgeryOptions(method="mine"),
                      lambda: mgs.GradientSurgery(TinyLlama(), method="mine")):
            with pytest.raises(ValueError, match=r"method='mine' is not supported; choose one of 'pcgrad', 'upgrad'"):
                build()
    finally:
        register_method("mine", Halves)  # for the fixture's teardown
    with pytest.raises(TypeError, match="method must be one of"):
        mgs.SurgeryOptions(method=3)
    with pytest.raises(TypeError, match="zero-argument callable"):
        register_method("other", "not callable")
    assert "other" not in method_names()


def test_the_registry_validates_what_a_method_returns():
    def no_solver():
        raise ImportError("No module named 'solver'")

    register_method("needs_extra", no_solver, extra="solver")
    register_method("claims_projections", lambda: inverse_norm, projects=True)
    register_method("hides_projections", lambda: lambda gram, gen: MethodOutput(inverse_norm(gram, gen), gram > 0))
    try:
        with pytest.raises(ImportError, match=r"'needs_extra' needs the 'solver' extra: pip install 'mgs-rl\[solver"):
            mgs.GradientSurgery(TinyLlama(), method="needs_extra")
        with pytest.raises(ValueError, match="projects=True but returned projected=None"):
            resolve_method("claims_projections")(_grams(), step_generator(0, 0))
        with pytest.raises(ValueError, match="returned projections but does not declare them"):
            resolve_method("hides_projections")(_grams(), step_generator(0, 0))
        pcgrad = resolve_method("pcgrad")
        assert resolve_method(pcgrad) is pcgrad and resolve_method("pcgrad") is not pcgrad  # one object per surgery
        with pytest.raises(ValueError, match=r"expected weights of shape \(5, 4\)"):
            resolve_method(lambda gram, gen: gram)(_grams(), step_generator(0, 0))
    finally:
        for name in ("needs_extra", "claims_projections", "hides_projections"):
            unregister_method(name)


def test_a_method_whose_state_is_still_empty_restores_a_checkpoint():
    """A method that learns its state at its first step reports none before it (state_dict() == {}), yet a fresh
    surgery built with it must take a checkpoint's method state, not refuse it."""

    class Lazy:
        def __init__(self):
            self.seen = None

        def __call__(self, gram, generator):
            self.seen = gram.diagonal(dim1=1, dim2=2).clone()
            return torch.ones(gram.shape[:2], dtype=gram.dtype)

        def state_dict(self):
            return {} if self.seen is None else {"seen": self.seen}

        def load_state_dict(self, state):
            self.seen = state.get("seen")

    register_method("lazy_for_test", Lazy)
    try:
        fresh = mgs.GradientSurgery(torch.nn.Linear(2, 2), domains=["a"], method="lazy_for_test")
        fresh.load_state_dict({"step": 3, "seed": 0, "domains": ["a"], "method": {"seen": torch.ones(2, 1)}})
        assert torch.equal(fresh.state_dict()["method"]["seen"], torch.ones(2, 1)) and fresh.step == 3
    finally:
        unregister_method("lazy_for_test")
