"""docs/layers.md is executable documentation: its Python examples run (the plain ones
as one program, the pytest plugin's ``conftest.py`` and test file as a test suite), and
what they print is checked against the ``# prints ...`` comments beside the calls."""
from __future__ import annotations

import re
from pathlib import Path

from doc_examples import python_blocks, run_blocks

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "layers.md").read_text()

pytest_plugins = ["pytester"]


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
    blocks = [(line_number, code) for line_number, code in python_blocks(DOC)
              if code.splitlines()[0][2:] not in files(DOC)]
    assert len(blocks) >= 4
    done, expected = run_blocks("docs/layers.md", blocks, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected


def test_the_plugin_example_passes(pytester):
    example = files(DOC)
    assert sorted(example) == ["conftest.py", "test_accounts.py"]
    for name, code in example.items():
        (pytester.path / name).write_text(code)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
