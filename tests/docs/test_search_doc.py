"""docs/search.md is executable documentation: its Python examples run, and print what the
``# prints ...`` comments say (a comment on the line after a call stands for that call)."""
from __future__ import annotations

import re
from pathlib import Path

from doc_examples import python_blocks, run_blocks

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "search.md").read_text()


def test_the_json_mapping_section_has_examples():
    section = DOC.split("## JSON mapping", 1)[1].split("\n## ", 1)[0]
    assert len(python_blocks(section)) >= 5


def test_the_python_examples_run(tmp_path):
    done, expected = run_blocks("docs/search.md", python_blocks(DOC), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected


def test_every_markup_tag_of_the_module_is_documented():
    package = REPO / "src" / "amphora" / "jsonpickle"
    # each module without its docstring
    code = "".join(path.read_text().split('"""', 2)[2] for path in package.glob("*.py"))
    tags = set(re.findall(r'"(@[a-z]+)"', code))
    assert tags >= {"@ref", "@wref", "@xref", "@class", "@global", "@unknown", "@tuple",
                    "@set", "@frozenset", "@dict", "@bytes", "@str", "@float", "@int",
                    "@decimal", "@datetime", "@date", "@time", "@timedelta", "@items",
                    "@keys", "@children"}
    for tag in tags:
        assert f'"{tag}"' in DOC, tag
