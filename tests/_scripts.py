"""Import a script's module (a recipe, a benchmark) from its own folder, as running the script would."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType


def import_script(folder: Path, name: str) -> ModuleType:
    """``folder/name.py`` as module ``name``, with ``folder`` on ``sys.path`` only while it is imported."""
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))
