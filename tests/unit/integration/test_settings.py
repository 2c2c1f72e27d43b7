"""One declaration of every surgery setting: the core's options, TRL's config and verl's config agree on it."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

import mgs
from mgs.integration import SETTINGS, setting_field, surgery_options


def _adapter_configs():
    configs = []
    try:
        from trl_mgs import MGSGRPOConfig

        configs.append(MGSGRPOConfig)
    except ImportError:  # pragma: no cover - depends on the environment
        pass
    try:
        from verl_mgs.config import MGSFSDPEngineConfig

        configs.append(MGSFSDPEngineConfig)
    except ImportError:  # pragma: no cover
        pass
    return configs


def test_every_option_has_one_setting():
    options = {f.name for f in dataclasses.fields(mgs.SurgeryOptions)}
    assert sorted(s.option for s in SETTINGS) == sorted(options)
    assert len({s.name for s in SETTINGS}) == len(SETTINGS)


@pytest.mark.parametrize("config", _adapter_configs(), ids=lambda c: c.__name__)
def test_every_adapter_declares_every_setting(config):
    fields = {f.name: f for f in dataclasses.fields(config)}
    for setting in SETTINGS:
        assert setting.name in fields, f"{config.__name__} lacks the setting {setting.name}"
        found = fields[setting.name]
        assert found.default == setting.default, setting.name
        assert found.metadata.get("help") == setting.help, setting.name
    doc = " ".join(config.__doc__.split())
    for setting in SETTINGS:
        assert " ".join(setting.help.split()) in doc, f"{config.__name__}'s docstring lacks {setting.name}'s help"


def test_both_adapters_are_checked():
    assert len(_adapter_configs()) == 2, "the test environment has both adapters (the trl and verl extras)"


def test_surgery_options_maps_every_setting():
    values = {"surgery": "global", "surgery_granularity": "block", "surgery_method": "pcgrad", "surgery_balance": "norm",
              "surgery_gram_ema": 0.5, "surgery_on_nonfinite": "raise", "surgery_seed": 7, "domains": ["b", "a"],
              "surgery_conflict_threshold": 0.25}
    options = surgery_options(SimpleNamespace(**values), framework_seed=42)
    assert options == mgs.SurgeryOptions(surgery="global", granularity="block", method="pcgrad", balance="norm",
                                         gram_ema=0.5, on_nonfinite="raise", seed=7, domains=("b", "a"),
                                         conflict_threshold=0.25)
    defaults = SimpleNamespace(**{s.name: s.default for s in SETTINGS})
    options = surgery_options(defaults, framework_seed=42, domains=["x"])
    assert options.seed == 42 and options.domains == ("x",)
    assert options == mgs.SurgeryOptions(seed=42, domains=["x"])  # the settings' defaults are the core's


def test_setting_field_carries_help_and_choices():
    f = setting_field("surgery")
    assert f.default == "modular" and f.metadata["choices"] == list(mgs.SURGERY_MODES)
    assert "choices" not in setting_field("surgery_seed").metadata
    with pytest.raises(ValueError, match="surgery='modualr'"):
        surgery_options(SimpleNamespace(**({s.name: s.default for s in SETTINGS} | {"surgery": "modualr"})),
                        framework_seed=0)


def test_a_registered_method_is_selectable_from_the_trl_command_line():
    pytest.importorskip("trl")
    from transformers import HfArgumentParser

    from trl_mgs import MGSGRPOConfig

    mgs.register_method("plain_sum_for_test", lambda: (lambda gram, generator: gram.new_ones(gram.shape[:2])))
    try:
        (args,) = HfArgumentParser(MGSGRPOConfig).parse_args_into_dataclasses(
            ["--output_dir", "/tmp/unused", "--use_cpu", "true", "--report_to", "none",
             "--surgery_method", "plain_sum_for_test"])
        assert args.surgery_options().method == "plain_sum_for_test"
    finally:
        mgs.methods.unregister_method("plain_sum_for_test")
    with pytest.raises(ValueError, match="method='plain_sum_for_test' is not supported"):
        HfArgumentParser(MGSGRPOConfig).parse_args_into_dataclasses(
            ["--output_dir", "/tmp/unused", "--use_cpu", "true", "--report_to", "none",
             "--surgery_method", "plain_sum_for_test"])
