"""docs/changes.md is executable documentation: its Python examples run, in order, and print
what the ``# prints ...`` comments say."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "changes.md").read_text()


def test_the_python_examples_run(tmp_path):
    blocks = re.findall(r"^```python\n(.*?)^```", DOC, re.S | re.M)
    assert len(blocks) >= 2
    expected = [line for block in blocks for line in re.findall(r"# prints (.+)$", block, re.M)]
    script = tmp_path / "changes_examples.py"
    script.write_text("\n".join(blocks))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected


def test_every_field_of_a_change_is_documented():
    from amphora.feeds import Change
    for name in list(Change.__dataclass_fields__) + ["time"]:
        assert f"`{name}`" in DOC, name
