"""Modular Gradient Surgery for verl 0.9 (FSDP engine), switched on by config.

Importing this package makes verl 0.9.1 usable with trl >= 1.0 installed alongside
(:func:`verl_mgs._compat.patch_verl_for_trl`); without verl installed it does nothing.
"""

from verl_mgs._compat import patch_verl_for_trl

patch_verl_for_trl()

__all__: list[str] = []
