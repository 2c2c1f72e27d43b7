"""What users install is what the docs use: the wheel built from this tree holds every module of ours that the README,
docs/, the recipes (scripts, YAMLs, READMEs) and the console scripts name by package path.

The wheel is built offline, as ``pip wheel . --no-deps --no-build-isolation`` (the venv's setuptools; nothing
downloaded), from a copy of the tracked files, so the working tree gets no build/ or egg-info. About 2 s.
References are: ``import``/``from`` lines (and ``from pkg import submodule``), ``pkg://`` paths, ``_target_``
values, ``python -m`` modules and dotted names in backticks that start with one of our packages; each is resolved to
the longest prefix that is a module of the source tree, so a reference to a module that does not exist fails too.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mgs", "trl_mgs", "verl_mgs", "mgs_tools")
_PKG = "(?:" + "|".join(PACKAGES) + r")\b"
PATTERNS = [
    re.compile(rf"^\s*from\s+((?:{_PKG})(?:\.\w+)*)\s+import\s+\(?([\w\s,]+)", re.M),  # from X import a, b
    re.compile(rf"^\s*import\s+((?:{_PKG})(?:\.\w+)*)", re.M),
    re.compile(rf"pkg://((?:{_PKG})(?:\.\w+)*)"),
    re.compile(rf"_target_\s*[:=]\s*((?:{_PKG})(?:\.\w+)+)"),
    re.compile(rf"python -m ((?:{_PKG})(?:\.\w+)*)"),
    re.compile(rf"`((?:{_PKG})(?:\.\w+)+)"),  # `mgs.integration.SETTINGS`, `mgs_tools.toy.train_toy`
]


def documents() -> list[Path]:
    """The README, the docs pages and everything under recipes/ that a user reads or runs."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    files += sorted(p for p in (ROOT / "recipes").rglob("*") if p.suffix in (".py", ".yaml", ".yml", ".md", ".sh"))
    return files


def source_module(dotted: str) -> str | None:
    """The longest prefix of ``dotted`` that is a module (``a/b.py`` or ``a/b/__init__.py``) of the source tree."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        path = ROOT.joinpath(*parts[:n])
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return ".".join(parts[:n])
    return None


def references() -> dict[str, set[str]]:
    """Module → the documents that name it."""
    found: dict[str, set[str]] = {}
    for doc in documents():
        text = doc.read_text()
        for pattern in PATTERNS:
            for match in pattern.finditer(text):
                names = [match.group(1)]
                if pattern is PATTERNS[0]:  # from X import a, b: a and b may be submodules
                    names += [f"{match.group(1)}.{n.strip()}" for n in match.group(2).split(",") if n.strip()]
                for name in names:
                    found.setdefault(name, set()).add(str(doc.relative_to(ROOT)))
    return found


def module_files(module: str) -> set[str]:
    path = module.replace(".", "/")
    return {f"{path}.py", f"{path}/__init__.py"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    tmp = tmp_path_factory.mktemp("wheel")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    source = tmp / "src"
    if tracked.returncode == 0 and tracked.stdout:
        for name in tracked.stdout.split("\0"):
            if name and (ROOT / name).is_file():
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, source / name)
    else:  # not a git checkout (an unpacked sdist): everything but build outputs
        shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                                                    "runs", "data", "__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                            "--no-index", "-q", "-w", str(tmp / "dist")], cwd=source, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    (built,) = (tmp / "dist").glob("mgs_rl-*.whl")
    return zipfile.ZipFile(built)


def test_the_docs_name_modules_that_exist():
    refs = references()
    assert {"mgs", "mgs.integration", "trl_mgs", "verl_mgs.config", "verl_mgs.data", "mgs_tools.toy",
            "mgs_tools.diagnose"} <= {source_module(r) for r in refs}, "the reference scan found too little"
    missing = {r: sorted(docs) for r, docs in refs.items() if source_module(r) is None}
    assert not missing, f"the docs name modules this tree does not have: {missing}"


def test_wheel_holds_every_module_the_docs_use(wheel):
    names = set(wheel.namelist())
    used = {source_module(r): docs for r, docs in references().items() if source_module(r)}
    absent = {m: sorted(docs) for m, docs in used.items() if not module_files(m) & names}
    assert not absent, f"modules the docs use that the wheel lacks: {absent}"
    # Every module of our packages is in it (a folder without __init__.py would be dropped silently).
    ours = {str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if "__pycache__" not in p.parts}
    assert ours <= names, f"the wheel lacks {sorted(ours - names)}"
    assert not {n for n in names if n.startswith(("tests/", "recipes/", "benchmarks/"))}


def test_wheel_entry_points_resolve(wheel):
    (entry_file,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    entries = configparser.ConfigParser()
    entries.read_string(wheel.read(entry_file).decode())
    assert entries["console_scripts"]["mgs-diagnose"] == "mgs_tools.diagnose.cli:main"
    assert entries["verl.plugins"]["verl_mgs"] == "verl_mgs"
    names = set(wheel.namelist())
    for section in ("console_scripts", "verl.plugins"):
        for target in entries[section].values():
            module = target.split(":")[0].strip()
            assert module_files(module) & names, f"{section} entry {target} is not in the wheel"
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    text = wheel.read(metadata).decode()
    for extra in ("trl", "verl", "tools", "plot", "torchjd", "test"):
        assert f"Provides-Extra: {extra}" in text
