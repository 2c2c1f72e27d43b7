"""docs/architecture.md, checked against the code: adapters use the public core (no private module, no tool) and do
no gradient arithmetic (tests/test_layers.py checks the core itself)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = ("trl_mgs", "verl_mgs")
TENSOR_ALGEBRA = {"einsum", "matmul", "mm", "bmm", "dot", "vdot", "tensordot", "inner", "outer", "linalg", "cosine_similarity"}


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _private_core_imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if (parts[0] == "mgs" and any(p.startswith("_") for p in parts[1:])) or parts[0] == "mgs_tools":
                found.append(name)
    return found


def _tensor_algebra(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
            found.append(f"line {node.lineno}: @")
        elif isinstance(node, ast.Attribute) and node.attr in TENSOR_ALGEBRA:
            found.append(f"line {node.lineno}: .{node.attr}")
    return found


@pytest.mark.parametrize("package", ADAPTERS)
def test_adapters_use_only_the_public_core(package):
    for path in _sources(package):
        tree = ast.parse(path.read_text(), filename=str(path))
        assert not _private_core_imports(tree), f"{path.relative_to(ROOT)} imports private core modules"


@pytest.mark.parametrize("package", ADAPTERS)
def test_adapters_hold_no_gradient_arithmetic(package):
    for path in _sources(package):
        tree = ast.parse(path.read_text(), filename=str(path))
        assert not _tensor_algebra(tree), f"{path.relative_to(ROOT)}: {_tensor_algebra(tree)}"


def test_the_checks_can_fail():
    tree = ast.parse("from mgs._gram import local_grams\nimport mgs.methods._pcgrad\nx = a @ b\ny = torch.einsum('i,i', a, b)\n"
                     "import mgs_tools.toy\nfrom mgs.integration import DomainIndex")
    assert _private_core_imports(tree) == ["mgs._gram", "mgs._gram.local_grams", "mgs.methods._pcgrad", "mgs_tools.toy"]
    assert _tensor_algebra(tree) == ["line 3: @", "line 4: .einsum"]
