"""docs/diagnose.md's examples run and print what the page quotes.

Every ```console block of the page is a sequence of ``$ command`` lines, each followed by the stdout the page quotes
(a line ``...`` stands for lines left out). This test runs the commands in order, in a scratch folder, through the
same entry points as the shell (``mgs-diagnose`` and ``python -m mgs_tools.diagnose``: ``mgs_tools.diagnose.main``;
``python -m mgs_tools.toy``: ``mgs_tools.toy.main``), and compares the output line by line: the text exactly,
the numbers within a rounding tolerance (decimals 0.01 or 2%, percentages 5 points, counts 1). It also checks the
page's JSON excerpt against the file the command wrote, runs the page's Python block, and checks that every signed
number in the examples' prose is one of the quoted outputs'.

The commands run with one torch thread: on this repository's CPU their output is identical with 1 and 2 threads
(the toy training included), and one thread is 5x faster under load. After a change of the numbers:

    PYTHONPATH=. python tests/doc/test_diagnose_doc.py --regenerate     # rewrites the quoted outputs and excerpt

(the prose's numbers are then checked against the new outputs, and must be edited by hand).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "diagnose.md"
ELIDED = "..."
_NUMBER = re.compile(r"([-+]?\d+(?:\.\d+)?)(%?)")


def console_blocks(text: str) -> list[list[tuple[str, list[str]]]]:
    """Each ```console block as ``[(command, quoted output lines), ...]``."""
    blocks = []
    for body in re.findall(r"^```console\n(.*?)^```", text, flags=re.S | re.M):
        commands: list[tuple[str, list[str]]] = []
        for line in body.splitlines():
            if line.startswith("$ "):
                commands.append((line[2:], []))
            elif not commands:
                raise AssertionError(f"a console block of {DOC.name} starts with output, not a $ command: {line!r}")
            else:
                commands[-1][1].append(line)
        blocks.append(commands)
    return blocks


def run_command(command: str) -> list[str]:
    """Run one documented command in this process; its stdout lines."""
    import torch

    argv = shlex.split(command)
    if argv[0] == "mgs-diagnose" or argv[:3] == ["python", "-m", "mgs_tools.diagnose"]:
        from mgs_tools.diagnose import main

        args = argv[1:] if argv[0] == "mgs-diagnose" else argv[3:]
    elif argv[:3] == ["python", "-m", "mgs_tools.toy"]:
        from mgs_tools.toy import main

        args = argv[3:]
    else:
        raise AssertionError(f"{DOC.name} quotes a command this test cannot run: {command!r}; use mgs-diagnose or "
                             "python -m mgs_tools.{diagnose,toy}")
    threads = torch.get_num_threads()
    out = io.StringIO()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out):
            main(args)
    finally:
        torch.set_num_threads(threads)
    return out.getvalue().splitlines()


def _template(line: str) -> tuple[str, list[tuple[str, str]]]:
    line = " ".join(line.split())
    return _NUMBER.sub("#", line), _NUMBER.findall(line)


def _close(want: tuple[str, str], got: tuple[str, str]) -> bool:
    (w, w_pct), (g, g_pct) = want, got
    a, b = float(w), float(g)
    if w_pct or g_pct:
        return w_pct == g_pct and abs(a - b) <= 5
    if "." in w or "." in g:
        return abs(a - b) <= max(0.01, 0.02 * abs(a))
    return abs(a - b) <= 1


def line_mismatch(want: str, got: str) -> str | None:
    (wt, wn), (gt, gn) = _template(want), _template(got)
    if wt != gt or len(wn) != len(gn):
        return f"text differs:\n  page: {want}\n  run:  {got}"
    bad = [(w, g) for w, g in zip(wn, gn) if not _close(w, g)]
    return f"numbers differ beyond rounding {bad}:\n  page: {want}\n  run:  {got}" if bad else None


def output_mismatch(quoted: list[str], actual: list[str]) -> str | None:
    """None if ``actual`` is ``quoted`` (``...`` lines standing for any lines) up to rounding; else the first difference."""
    chunks: list[list[str]] = [[]]
    for line in quoted:
        if line.strip() == ELIDED:
            chunks.append([])
        else:
            chunks[-1].append(line)
    position = 0
    for n, chunk in enumerate(chunks):
        if not chunk:
            continue
        if n == 0:
            candidates = [0]
        elif n == len(chunks) - 1:
            candidates = [len(actual) - len(chunk)]
        else:
            candidates = range(position, len(actual) - len(chunk) + 1)
        errors = []
        for start in candidates:
            if start < position or start + len(chunk) > len(actual):
                continue
            errors = [e for w, g in zip(chunk, actual[start : start + len(chunk)]) if (e := line_mismatch(w, g))]
            if not errors:
                position = start + len(chunk)
                break
        else:
            return errors[0] if errors else f"the run printed {len(actual)} lines, fewer than the page quotes"
    if len(chunks) == 1 and len(actual) != len(quoted):
        return f"the run printed {len(actual)} lines, the page quotes {len(quoted)} (mark left-out lines with ...)"
    return None


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Every console command of the page, run in order in one scratch folder: [(command, quoted, printed)]."""
    pytest.importorskip("transformers")
    pytest.importorskip("matplotlib")
    folder = tmp_path_factory.mktemp("diagnose_doc")
    here = os.getcwd()
    os.chdir(folder)
    try:
        results = [(command, quoted, run_command(command))
                   for block in console_blocks(DOC.read_text()) for command, quoted in block]
    finally:
        os.chdir(here)
    return folder, results


def test_every_console_example_prints_what_the_page_quotes(ran):
    _, results = ran
    assert len(results) >= 4, "docs/diagnose.md lost its worked examples"
    for command, quoted, printed in results:
        problem = output_mismatch(quoted, printed)
        assert problem is None, f"$ {command}\n{problem}\n(regenerate: see this test's docstring)"


def _excerpt_mismatch(excerpt, data, where: str) -> str | None:
    if isinstance(excerpt, dict):
        for key, value in excerpt.items():
            if not isinstance(data, dict) or key not in data:
                return f"{where}: the file has no {key!r}"
            if problem := _excerpt_mismatch(value, data[key], f"{where}.{key}"):
                return problem
        return None
    if isinstance(excerpt, list):
        items = excerpt[:-1] if excerpt and excerpt[-1] == ELIDED else excerpt
        if not isinstance(data, list) or len(data) < len(items) or (items is excerpt and len(data) != len(items)):
            return f"{where}: the page lists {excerpt!r}, the file {data!r}"
        for n, (e, d) in enumerate(zip(items, data)):
            if problem := _excerpt_mismatch(e, d, f"{where}[{n}]"):
                return problem
        return None
    if isinstance(excerpt, float) and isinstance(data, (int, float)):
        return None if abs(excerpt - data) <= max(0.01, 0.02 * abs(excerpt)) else f"{where}: {excerpt} vs {data}"
    return None if excerpt == data else f"{where}: the page says {excerpt!r}, the file {data!r}"


def test_json_excerpt_is_the_file_the_command_wrote(ran):
    folder, _ = ran
    text = DOC.read_text()
    found = re.findall(r"Excerpt of `([^`]+)`[^\n]*\n\n```json\n(.*?)^```", text, flags=re.S | re.M)
    assert found, "docs/diagnose.md has no JSON excerpt"
    for path, excerpt in found:
        data = json.loads((folder / path).read_text())
        problem = _excerpt_mismatch(json.loads(excerpt), data, path)
        assert problem is None, problem


def test_prose_numbers_are_the_quoted_outputs(ran):
    """A signed number in the examples' prose (``+0.179``, ``−0.16``) is one that a quoted output prints."""
    _, results = ran
    text = DOC.read_text()
    section = text[text.index("## Examples") : text.index("## Why training logs more conflict")]
    prose = re.sub(r"^```.*?^```", "", section, flags=re.S | re.M)
    printed = " ".join(" ".join(p) for _, _, p in results)
    quoted = {m.replace("−", "-") for m in re.findall(r"[+−-]\d\.\d{3}", prose)}
    assert quoted, "the examples' prose cites no number"
    missing = sorted(q for q in quoted if q not in printed)
    assert not missing, f"docs/diagnose.md's prose cites {missing}, which no quoted command prints"


def test_python_block_runs(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("matplotlib")
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
    assert blocks, "docs/diagnose.md has no Python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    assert (tmp_path / "diagnose.png").read_bytes()[:4] == b"\x89PNG"
    assert -1.0 <= namespace["result"].global_cosine("copy", "sort") <= 1.0


def test_the_matcher_catches_what_it_should():
    assert output_mismatch(["a +0.100 19%", "b"], ["a +0.104 20%", "b"]) is None
    assert "numbers differ" in output_mismatch(["a +0.100"], ["a +0.179"])
    assert "text differs" in output_mismatch(["copy|sort +0.1"], ["copy|reverse +0.1"])
    assert "fewer" in output_mismatch(["a", "...", "z"], ["a"])
    assert output_mismatch(["head", "...", "tail"], ["head", "x", "y", "tail"]) is None
    assert "mark left-out lines" in output_mismatch(["head"], ["head", "more"])
    assert _excerpt_mismatch({"a": [1.0, ELIDED]}, {"a": [1.001, 2.0]}, "f") is None
    assert _excerpt_mismatch({"a": [1.0, 2.0]}, {"a": [1.0, 2.0, 3.0]}, "f") is not None


def _recut(excerpt, data):
    """``data`` cut the way ``excerpt`` is: the same keys, the same list heads followed by ``...``."""
    if isinstance(excerpt, dict):
        return {k: _recut(v, data[k]) for k, v in excerpt.items()}
    if isinstance(excerpt, list) and excerpt and excerpt[-1] == ELIDED:
        return [_recut(e, d) for e, d in zip(excerpt[:-1], data)] + [ELIDED]
    return data


def regenerate() -> None:
    """Rewrite the quoted outputs of docs/diagnose.md's console blocks, and its JSON excerpts, from a fresh run (in a
    scratch folder)."""
    import tempfile

    text = DOC.read_text()
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        try:
            def block(match: re.Match) -> str:
                lines = []
                for command, quoted in console_blocks(f"```console\n{match.group(1)}```\n")[0]:
                    printed = run_command(command)
                    if ELIDED in [q.strip() for q in quoted]:  # keep the page's head ... tail cut
                        cut = [q.strip() for q in quoted].index(ELIDED)
                        tail = len(quoted) - cut - 1
                        printed = printed[:cut] + [ELIDED] + (printed[len(printed) - tail :] if tail else [])
                    lines += [f"$ {command}", *printed]
                return "```console\n" + "\n".join(lines) + "\n```"

            text = re.sub(r"^```console\n(.*?)^```", block, text, flags=re.S | re.M)

            def excerpt(match: re.Match) -> str:
                data = json.loads(Path(match.group(1)).read_text())
                return match.group(0).replace(match.group(2), json.dumps(_recut(json.loads(match.group(2)), data),
                                                                         indent=1, ensure_ascii=False) + "\n")

            text = re.sub(r"Excerpt of `([^`]+)`[^\n]*\n\n```json\n(.*?)^```", excerpt, text, flags=re.S | re.M)
        finally:
            os.chdir(here)
    DOC.write_text(text)


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        raise SystemExit(f"usage: PYTHONPATH=. python {Path(__file__).relative_to(ROOT)} --regenerate")
    regenerate()
