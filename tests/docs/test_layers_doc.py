"""docs/layers.md is executable documentation: its Python examples run (the plain ones
as one program, the pytest plugin's ``conftest.py`` and test file as a test suite), and
what they print is checked against the ``# prints ...`` comments beside the calls."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "layers.md").read_text()

pytest_plugins = ["pytester"]


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every ```python block."""
    return [(text.count("\n", 0, match.start()) + 2, match.group(1))
            for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)]


def files(text: str) -> dict[str, str]:
    """The blocks that start with a ``# name.py`` line: the files of an example suite."""
    found = {}
    for _, code in python_blocks(text):
        first = code.splitlines()[0]
        if re.fullmatch(r"# \w+\.py", first):
            found[first[2:]] = code
    return found


def test_the_doc_covers_the_three_uses():
    for heading in ("## Demo layers", "## A point in time", "## The pytest plugin",
                    "### Staging on a copy of production"):
        assert heading in DOC


def test_the_python_examples_run(tmp_path):
    parts, expected = [], []
    for line_number, code in python_blocks(DOC):
        if code.splitlines()[0][2:] in files(DOC):
            continue
        parts.append(f"# ---- docs/layers.md line {line_number} ----\n{code}")
        expected += re.findall(r"# prints (.+)$", code, re.M)
    assert len(parts) >= 4
    script = tmp_path / "layers_examples.py"
    script.write_text("\n".join(parts))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected


def test_the_plugin_example_passes(pytester):
    example = files(DOC)
    assert sorted(example) == ["conftest.py", "test_accounts.py"]
    for name, code in example.items():
        (pytester.path / name).write_text(code)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
