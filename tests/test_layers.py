"""The core stays the core: ``import mgs`` (and ``mgs.methods``) imports torch and nothing above it, and no source
file of ``mgs/`` imports a library that needs more (transformers, TRL, verl, datasets, ...) or a layer above the
core (``trl_mgs``, ``verl_mgs``, ``mgs_tools``), not even inside a function."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HEAVY = {"transformers", "trl", "verl", "datasets", "tokenizers", "accelerate", "peft", "matplotlib"}
"""Libraries the core must not need: they belong to the adapters, the tools and the recipes."""
ABOVE = {"trl_mgs", "verl_mgs", "mgs_tools"}
"""This project's layers above the core."""
FORBIDDEN = HEAVY | ABOVE


def imported_top_names(path: Path) -> dict[str, list[int]]:
    """Top-level names of every absolute import in ``path`` (anywhere in the file, functions included, and
    ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name) -> the lines importing them."""
    found: dict[str, list[int]] = {}

    def add(name: str, line: int) -> None:
        found.setdefault(name.split(".")[0], []).append(line)

    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            add(node.module, node.lineno)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                add(node.args[0].value, node.lineno)
    return found


def forbidden_imports(package: Path) -> list[str]:
    """``"file:line imports name"`` for every import of a :data:`FORBIDDEN` name under ``package``."""
    out = []
    for path in sorted(package.rglob("*.py")):
        for name, lines in sorted(imported_top_names(path).items()):
            if name in FORBIDDEN:
                out += [f"{path.relative_to(package.parent)}:{line} imports {name}" for line in lines]
    return out


def test_import_mgs_loads_no_heavy_library_and_no_layer_above():
    code = "import json, sys; import mgs, mgs.methods; print(json.dumps(sorted(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    modules = json.loads(run.stdout)
    assert "mgs" in modules and "mgs.methods" in modules and "torch" in modules
    loaded = sorted(m for m in modules if m.split(".")[0] in FORBIDDEN)
    assert not loaded, f"import mgs loaded {loaded}"


def test_no_file_of_mgs_imports_a_heavy_library_or_a_layer_above():
    assert forbidden_imports(ROOT / "mgs") == []


def test_the_scan_catches_a_new_module_that_imports_transformers(tmp_path):
    package = tmp_path / "mgs"
    (package / "methods").mkdir(parents=True)
    (package / "__init__.py").write_text("import torch\nfrom mgs._ok import x\n")
    (package / "_ok.py").write_text("import math\nfrom . import methods\nx = 1\n")
    (package / "foo.py").write_text("import transformers\n")
    (package / "methods" / "_lazy.py").write_text(
        "def load():\n    from datasets import Dataset\n    import importlib\n"
        "    return importlib.import_module('peft.tuners'), Dataset\n")
    (package / "methods" / "_up.py").write_text("import trl_mgs.data as d\n")
    assert forbidden_imports(package) == [
        "mgs/foo.py:1 imports transformers",
        "mgs/methods/_lazy.py:2 imports datasets",
        "mgs/methods/_lazy.py:4 imports peft",
        "mgs/methods/_up.py:1 imports trl_mgs",
    ]


def test_the_core_does_not_import_the_integration_layer():
    """mgs.integration sits above the core (the adapters use it): no core file imports it, and ``import mgs`` loads
    none of it."""
    code = "import json, sys; import mgs; print(json.dumps(sorted(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert not [m for m in json.loads(run.stdout) if m.startswith("mgs.integration")]
    core = [p for p in (ROOT / "mgs").rglob("*.py") if "integration" not in p.relative_to(ROOT / "mgs").parts]
    for path in core:
        tree = ast.parse(path.read_text(), filename=str(path))
        modules = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module] + \
                  [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in modules if m.startswith("mgs.integration")], path
