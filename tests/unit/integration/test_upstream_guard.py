"""Upstream guards: a version out of range, a missing member or a changed signature raises a named error."""

from __future__ import annotations

import importlib.metadata
import sys
import types

import pytest

from mgs.integration import Seam, UpstreamMismatchError, check_instance, check_upstream
from mgs.integration.upstream import parse_version


@pytest.fixture
def fake_upstream(monkeypatch):
    module = types.ModuleType("fake_upstream")

    class Trainer:
        def _hook(self, inputs, *, flag=False):
            return inputs

    module.Trainer = Trainer
    monkeypatch.setitem(sys.modules, "fake_upstream", module)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: {"fake-upstream": "1.4.2"}[name])
    return module


def test_passes_when_everything_matches(fake_upstream):
    seams = [Seam("fake_upstream:Trainer._hook", "override", ("inputs", "flag"))]
    assert check_upstream("fake-upstream", "1.4", "1.5", seams, adapter="x_mgs") == "1.4.2"


def test_version_out_of_range(fake_upstream):
    with pytest.raises(UpstreamMismatchError, match=r"x_mgs supports fake-upstream>=1.5,<1.6; fake-upstream 1.4.2 is installed"):
        check_upstream("fake-upstream", "1.5", "1.6", [], adapter="x_mgs")


def test_changed_signature_names_the_member(fake_upstream):
    def changed(self, inputs, extra, *, flag=False):
        return inputs

    fake_upstream.Trainer._hook = changed  # a new upstream release added a parameter
    seams = [Seam("fake_upstream:Trainer._hook", "override", ("inputs", "flag"))]
    with pytest.raises(UpstreamMismatchError, match=r"x_mgs overrides fake_upstream:Trainer._hook \(fake-upstream 1.4.2 "
                                                    r"is installed; supported: fake-upstream>=1.4,<1.5\), written for the "
                                                    r"parameters \('inputs', 'flag'\), but the installed one takes "
                                                    r"\('inputs', 'extra', 'flag'\)"):
        check_upstream("fake-upstream", "1.4", "1.5", seams, adapter="x_mgs")


def test_missing_member(fake_upstream):
    with pytest.raises(UpstreamMismatchError, match=r"reads fake_upstream:Trainer._gone .* does not exist"):
        check_upstream("fake-upstream", "1.4", None, [Seam("fake_upstream:Trainer._gone", "read")], adapter="x_mgs")


def test_instance_attributes(fake_upstream):
    obj = fake_upstream.Trainer()
    obj._metrics = {}
    check_instance(obj, ["_metrics"], adapter="x_mgs", package="fake-upstream")
    with pytest.raises(UpstreamMismatchError, match=r"x_mgs reads _buffer of Trainer, which this fake-upstream \(1.4.2\)"):
        check_instance(obj, ["_metrics", "_buffer"], adapter="x_mgs", package="fake-upstream")


def test_parse_version():
    assert parse_version("2.13.0+cpu") == (2, 13, 0) and parse_version("1.17.0rc1") == (1, 17, 0)


def test_the_adapters_seams_match_the_installed_packages():
    pytest.importorskip("trl")
    from trl_mgs import _upstream as trl_seams

    trl_seams.check()
    pytest.importorskip("verl")
    from verl_mgs import _upstream as verl_seams

    verl_seams.check()


def test_trl_adapter_guard_names_a_changed_trl_method(monkeypatch):
    pytest.importorskip("trl")
    import trl

    from trl_mgs import _upstream as trl_seams

    def changed(self, generation_batch, extra):
        return generation_batch

    monkeypatch.setattr(trl.GRPOTrainer, "_prepare_inputs", changed)  # what a trl release could do
    with pytest.raises(UpstreamMismatchError, match=r"trl_mgs overrides trl:GRPOTrainer._prepare_inputs \(trl 1\.16\.0 "
                                                    r"is installed; supported: trl>=1\.16\.0,<1\.17\).*'extra'"):
        trl_seams.check()


def test_trl_adapter_guard_refuses_another_trl_version(monkeypatch):
    pytest.importorskip("trl")
    from trl_mgs import _upstream as trl_seams

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.17.0" if name == "trl" else real(name))
    with pytest.raises(UpstreamMismatchError, match=r"trl_mgs supports trl>=1\.16\.0,<1\.17; trl 1\.17\.0 is installed"):
        trl_seams.check()


def test_setup_cfg_declares_the_versions_the_guards_support():
    """The ranges live in setup.cfg (what pip installs) and in the adapters' _upstream modules (what they check):
    they must say the same."""
    import configparser
    from pathlib import Path

    pytest.importorskip("trl")
    pytest.importorskip("verl")
    from trl_mgs import _upstream as trl_seams
    from verl_mgs import _upstream as verl_seams

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[3] / "setup.cfg")
    extras = {name: [line.strip() for line in value.splitlines() if line.strip() and not line.strip().startswith("#")]
              for name, value in cfg["options.extras_require"].items()}
    lo, hi = trl_seams.TRANSFORMERS_VERSIONS
    for extra in ("trl", "verl", "tools"):
        assert f"transformers>={lo},<{hi}" in extras[extra], extra
    assert f"trl=={trl_seams.TRL_VERSIONS[0]}" in extras["trl"]
    assert f"verl=={verl_seams.VERL_VERSIONS[0]}" in extras["verl"]
