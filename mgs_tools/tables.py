"""Local tables as ``datasets.Dataset``: what ``mgs-diagnose --data`` and ``recipes/verl/prepare_data.py`` read.

Needs ``datasets`` (the ``tools`` extra); it is imported when :func:`load_table` is called.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datasets as hf

__all__ = ["load_table"]

_TABLE_BUILDERS = {"json": "json", "jsonl": "json", "parquet": "parquet", "csv": "csv"}


def load_table(path: str, split: str = "train") -> hf.Dataset:
    """A local table as a ``datasets.Dataset``: a .json/.jsonl/.parquet/.csv file, or a directory written by
    ``Dataset.save_to_disk`` (``split`` picks from a ``DatasetDict``). ``datasets.load_dataset`` takes a single
    file only with its builder named, so this names it from the suffix."""
    import datasets as hf

    if os.path.isdir(path):
        loaded = hf.load_from_disk(path)
        if isinstance(loaded, hf.DatasetDict):
            if split not in loaded:
                raise ValueError(f"split {split!r} is not in {path}; its splits are {sorted(loaded)}.")
            loaded = loaded[split]
        return loaded
    if not os.path.isfile(path):
        raise ValueError(f"no such data file or saved dataset directory: {path!r}.")
    builder = _TABLE_BUILDERS.get(path.lower().rsplit(".", 1)[-1])
    if builder is None:
        raise ValueError(f"cannot tell the format of {path!r}; use a .json, .jsonl, .parquet or .csv file, "
                         "or a directory written by Dataset.save_to_disk.")
    return hf.load_dataset(builder, data_files=path, split="train")
