"""verl 0.9.1 with trl >= 1.0 in the same environment.

verl's ``apply_monkey_patch`` (verl/models/transformers/monkey_patch.py, near its end), which the FSDP
engine calls on every model it builds (actor, reference, critic), does::

    if is_trl_available():
        try:
            from trl.experimental.ppo import AutoModelForCausalLMWithValueHead
        except ImportError:
            from trl import AutoModelForCausalLMWithValueHead
        AutoModelForCausalLMWithValueHead.state_dict = state_dict   # for trl's value-head models

``is_trl_available`` only asks whether a package named ``trl`` exists; trl 1.x has no
``AutoModelForCausalLMWithValueHead`` anywhere, so the second import raises and no model can be
built. The patch exists for trl's value-head class only, and with no such class there is nothing
to patch. :func:`patch_verl_for_trl` therefore narrows the check *in that one module*: it is true
when trl is installed **and** provides the class. Everything else keeps verl's behaviour.

verl/utils/model.py (``load_valuehead_model``, ``patch_valuehead_model``) imports the same class, but
only on the critic path that really needs a trl value-head model (after
``AutoModelForTokenClassification`` failed to load the checkpoint); there the ImportError is the
right error, so that module is left alone.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from functools import cache

_MARK = "_verl_mgs_trl_compat"


@cache
def trl_has_value_head() -> bool:
    """Whether trl is installed and still provides ``AutoModelForCausalLMWithValueHead`` (where verl looks)."""
    if importlib.util.find_spec("trl") is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trl.experimental warns on import
        for module in ("trl.experimental.ppo", "trl"):
            try:
                if hasattr(importlib.import_module(module), "AutoModelForCausalLMWithValueHead"):
                    return True
            except ImportError:
                continue
    return False


def patch_verl_for_trl() -> bool:
    """Make verl's model monkey patch skip trl's value-head class when trl no longer has it.

    Idempotent. Returns whether the check is in place (False when verl is not installed).
    """
    try:
        monkey_patch = importlib.import_module("verl.models.transformers.monkey_patch")
    except ImportError:
        return False
    current = getattr(monkey_patch, "is_trl_available", None)
    if current is None:  # another verl layout: nothing of ours to fix
        return False
    if getattr(current, _MARK, False):
        return True

    def is_trl_available() -> bool:
        return bool(current()) and trl_has_value_head()

    setattr(is_trl_available, _MARK, True)
    is_trl_available.__doc__ = "verl's is_trl_available, true only if trl has AutoModelForCausalLMWithValueHead (verl_mgs)."
    monkey_patch.is_trl_available = is_trl_available
    return True
