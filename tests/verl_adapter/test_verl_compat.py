"""verl 0.9.1 next to trl >= 1.0: importing ``verl_mgs`` makes verl's model patching work.

Fresh interpreters (the fix is process-wide): a direct check, and the ``verl.plugins`` entry-point route.
The reference model built before anything imported ``verl_mgs`` (``model.external_lib``) is checked in
test_verl_engine.py, inside its DP=1 job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _jobs import verl_installed

if not verl_installed():
    pytest.skip("verl is not installed (pip install -e '.[verl]')", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]


PATCH_CHECK = """
import json
from transformers import AutoModelForCausalLM, Qwen2Config
from verl.models.transformers import monkey_patch
import verl.utils.import_utils as import_utils
import verl.utils.model as verl_model

config = Qwen2Config(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1)
model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
kwargs = dict(model=model, use_remove_padding=False, ulysses_sp_size=1)
try:
    monkey_patch.apply_monkey_patch(**kwargs)
    before = "ok"
except ImportError as error:
    before = str(error)

import verl_mgs
from verl_mgs._compat import patch_verl_for_trl, trl_has_value_head

monkey_patch.apply_monkey_patch(**kwargs)  # raises if the fix is missing
print(json.dumps({
    "before": before,
    "trl_has_value_head": trl_has_value_head(),
    "idempotent": patch_verl_for_trl() and patch_verl_for_trl(),
    "patched_check": monkey_patch.is_trl_available(),
    "verl_check_untouched": import_utils.is_trl_available is verl_model.is_trl_available
                            and import_utils.is_trl_available(),
}))
"""

ENTRY_POINT_CHECK = """
import json, sys
import verl
from verl.models.transformers import monkey_patch
out = {"imported": "verl_mgs" in sys.modules,
       "patched": getattr(monkey_patch.is_trl_available, "_verl_mgs_trl_compat", False)}

# the config's errors, while verl is imported anyway
from tensordict import TensorDict
from verl.protocol import DataProto
import numpy as np, torch
from verl_mgs.config import MGSFSDPEngineConfig
from verl_mgs.engine import domain_labels
for field, value in (("surgery", "modualr"), ("surgery_method", "pcgard"), ("domains", ["math", "math"])):
    try:
        MGSFSDPEngineConfig(strategy="fsdp2", **{field: value})
        out[field] = None
    except (ValueError, TypeError) as error:
        out[field] = str(error)
td = DataProto.from_dict(tensors={"x": torch.zeros(2, 1)},
                         non_tensors={"data_source": np.array(["a", "b"], dtype=object),
                                      "extra_info": np.array([{"domain": "m"}, {"domain": "c"}], dtype=object)}
                         ).to_tensordict()
out["labels"] = domain_labels(td, "data_source") + domain_labels(td, "extra_info.domain")
try:
    domain_labels(td, "ability")
except KeyError as error:
    out["missing"] = str(error)

print(json.dumps(out))
"""

# a platform whose vendor verl_mgs does not list (VERL_ENGINE_DEVICE/VENDOR set by the test): the MGS engine is
# registered for it too when the plugin is imported
OTHER_VENDOR_CHECK = """
import json
import verl
from verl.workers.engine.base import EngineRegistry
from verl_mgs.config import MGSFSDPEngineConfig
MGSFSDPEngineConfig(strategy="fsdp2")
print(json.dumps({"other_vendor_engine": EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__}))
"""

# another plugin holds the keys before verl_mgs is imported: verl_mgs's import must not fail (a verl run without MGS
# goes on with the other plugin's engine), and building an MGS config must refuse to run without surgery
CONFLICT_CHECK = """
import json
import verl
from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead


class OtherPluginEngine(FSDPEngineWithLMHead):
    pass


EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device="cuda", vendor="nvidia")(
    OtherPluginEngine)
import verl_mgs
out = {"engine": EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__}
from verl_mgs.config import MGSFSDPEngineConfig
try:
    MGSFSDPEngineConfig(strategy="fsdp2")
    out["error"] = None
except RuntimeError as error:
    out["error"] = str(error)

# and one that registers after verl_mgs, for another vendor: verl_mgs took only this process's key
class AmdPluginEngine(FSDPEngineWithLMHead):
    pass


EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device="cuda", vendor="amd")(
    AmdPluginEngine)
out["amd"] = EngineRegistry._engines["language_model"]["fsdp2"][("cuda", "amd")].__name__
print(json.dumps(out))
"""


def start_python(code: str, env: dict[str, str]) -> subprocess.Popen:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", **env}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, cwd=ROOT)


_results: dict[int, dict] = {}


def result(proc: subprocess.Popen, timeout: float = 120) -> dict:
    """The JSON line ``proc`` printed last (waited for once, then cached)."""
    if id(proc) not in _results:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, stderr[-4000:]
        _results[id(proc)] = json.loads(stdout.strip().splitlines()[-1])
    return _results[id(proc)]


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    """Both interpreters at once (each mostly waits on ``import verl``)."""
    plugin_dir = tmp_path_factory.mktemp("plugin")
    dist = plugin_dir / "verl_mgs_plugin-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: verl-mgs-plugin\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[verl.plugins]\nverl_mgs = verl_mgs\n")
    procs = {
        # no plugin may import verl_mgs before the check (should the entry point be installed)
        "patch": start_python(PATCH_CHECK, {"VERL_USE_EXTERNAL_PLUGINS": "none"}),
        "entry_point": start_python(ENTRY_POINT_CHECK, {"PYTHONPATH": str(plugin_dir), "VERL_USE_EXTERNAL_PLUGINS": "auto"}),
        "other_vendor": start_python(OTHER_VENDOR_CHECK, {"PYTHONPATH": str(plugin_dir), "VERL_USE_EXTERNAL_PLUGINS": "auto",
                                                          "VERL_ENGINE_DEVICE": "xpu", "VERL_ENGINE_VENDOR": "intel"}),
        "conflict": start_python(CONFLICT_CHECK, {"VERL_USE_EXTERNAL_PLUGINS": "none"}),
    }
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()


def test_verl_model_patch_works_after_importing_verl_mgs(checks):
    out = result(checks["patch"])
    if not out["trl_has_value_head"]:  # trl >= 1.0 (this repo's trl extra): verl alone cannot build a model
        assert "AutoModelForCausalLMWithValueHead" in out["before"]
    assert out["idempotent"] is True
    assert out["patched_check"] is out["trl_has_value_head"]
    assert out["verl_check_untouched"] is True  # verl/utils/model.py's value-head path keeps verl's check


def test_verl_plugin_entry_point_applies_the_fix_at_import_verl(checks):
    """What ``[options.entry_points] verl.plugins = verl_mgs = verl_mgs`` in setup.cfg would do: verl 0.9.1
    imports every ``verl.plugins`` entry point at ``import verl`` (the plugin loop at the end of verl/__init__.py), in every process."""
    out = result(checks["entry_point"])
    assert out["imported"] is True and out["patched"] is True


def test_config_errors_name_the_bad_value(checks):
    out = result(checks["entry_point"])
    assert "'modualr'" in out["surgery"] and "'modular'" in out["surgery"]
    assert "'pcgard'" in out["surgery_method"] and "'pcgrad'" in out["surgery_method"]
    assert "duplicates" in out["domains"]
    assert out["labels"] == ["a", "b", "m", "c"]
    assert "'ability'" in out["missing"] and "data_source" in out["missing"]  # names the available fields



def test_an_unlisted_platform_vendor_still_gets_the_mgs_engine(checks):
    """Otherwise verl would fall back to its device-only key, the stock engine, and skip surgery silently."""
    assert result(checks["other_vendor"])["other_vendor_engine"] == "MGSFSDPEngine"


def test_another_plugins_engine_does_not_fail_verl_but_an_mgs_config_refuses_it(checks):
    out = result(checks["conflict"])
    assert out["engine"] == "OtherPluginEngine"  # verl without MGS: untouched, no error at import
    assert "could not register its surgery engine" in out["error"] and "OtherPluginEngine" in out["error"]
    assert out["amd"] == "AmdPluginEngine"  # a plugin registering after verl_mgs for another key is unaffected
