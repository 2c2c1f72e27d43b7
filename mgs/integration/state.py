"""The surgery state in a checkpoint folder: one file name scheme, ``weights_only`` loading, one policy.

Every rank writes its own ``mgs_surgery_rank{rank}.pt`` (nodes need not share a filesystem; the state
is the same on every rank). Loading takes this rank's file, else any rank's (a resume at another world
size), else a file name written before this scheme (``mgs_surgery.pt``, TRL adapter up to 0.1.0).
A checkpoint without any of them is an error: it was not written with surgery, and resuming would
silently restart the step counter, the Gram EMA and any stateful method.

The file holds ``{"format": 1, "surgery": GradientSurgery.state_dict(), **extra}``; ``extra`` is
the adapter's own (e.g. verl's engine step). Only tensors, numbers, strings, lists and dicts, so
``torch.load(..., weights_only=True)`` reads it.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import torch

STATE_FILE = "mgs_surgery_rank{rank}.pt"
"""The state file of rank ``rank`` in a checkpoint folder."""

LEGACY_STATE_FILES = ("mgs_surgery.pt",)
"""Names written before :data:`STATE_FILE` (TRL adapter, version 0.1.0: the bare surgery state); still read."""

FORMAT = 1


def save_surgery_state(directory: str, rank: int, surgery_state: dict[str, Any], **extra: Any) -> str:
    """Write ``surgery_state`` (and the adapter's ``extra`` entries) as this rank's file; return its path."""
    if "surgery" in extra or "format" in extra:
        raise ValueError("extra state entries may not be named 'surgery' or 'format'.")
    path = os.path.join(directory, STATE_FILE.format(rank=rank))
    torch.save({"format": FORMAT, "surgery": surgery_state, **extra}, path)
    return path


def _candidates(directory: str, rank: int) -> list[str]:
    own = os.path.join(directory, STATE_FILE.format(rank=rank))
    others = sorted(glob.glob(os.path.join(glob.escape(directory), STATE_FILE.format(rank="*"))))
    legacy = [os.path.join(directory, name) for name in LEGACY_STATE_FILES]
    return [own, *others, *legacy]


def load_surgery_state(directory: str, rank: int) -> dict[str, Any]:
    """``{"surgery": <GradientSurgery state>, **extra}`` from ``directory`` (see the module docstring).

    Raises:
        FileNotFoundError: the folder holds no surgery state file; the message names the file looked for.
    """
    for path in _candidates(directory, rank):
        if os.path.isfile(path):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(loaded, dict):
                raise ValueError(f"{path} does not hold a surgery state (a dict); it holds a {type(loaded).__name__}.")
            if "surgery" not in loaded:  # legacy TRL file: the bare GradientSurgery state
                return {"surgery": loaded}
            return {k: v for k, v in loaded.items() if k != "format"}
    raise FileNotFoundError(
        f"{os.path.join(directory, STATE_FILE.format(rank=rank))} is missing (and no other rank's or older surgery "
        "state file is there): the checkpoint was not written with MGS surgery, so its state (step, Gram EMA, "
        "method state) cannot be restored. Resume from a checkpoint written by an MGS trainer, or start a new run "
        "from the checkpoint's model weights."
    )
