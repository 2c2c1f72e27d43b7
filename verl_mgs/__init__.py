"""Modular Gradient Surgery for verl 0.9 (FSDP2 engine), switched on by config.

Importing this package (verl's ``verl.plugins`` entry point does it at ``import verl``, in every
process) does two things, neither of which can fail a verl run that does not use MGS:

- makes verl 0.9.1 usable with trl >= 1.0 installed alongside (:func:`verl_mgs._compat.patch_verl_for_trl`
  replaces one function, ``is_trl_available``, in ``verl.models.transformers.monkey_patch`` only);
- registers the surgery engine for verl's fsdp/fsdp2 key of this process's platform
  (:mod:`verl_mgs._registry`); a failure is recorded, not raised. With a plain ``FSDPEngineConfig`` verl
  still builds its own engine class (``MGSFSDPEngine.__new__``).

Without verl installed it does nothing.
"""

from verl_mgs._compat import patch_verl_for_trl
from verl_mgs._registry import register_quietly

patch_verl_for_trl()
register_quietly()

__all__: list[str] = []
