"""docs/deploy.md tells the truth: its tables list every setting with its default, and its
example file is a valid deployment whose explanation is the one it shows."""
from __future__ import annotations

import re
from pathlib import Path

from amphora.deploy.schema import SCHEMA, loads

DOC = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()


def _table(part: str) -> dict[str, str]:
    section = DOC.split(f"### `[{part}]`", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \|", section, re.MULTILINE)
    return dict(rows)


def test_the_tables_list_every_setting_with_its_default():
    for part, settings in SCHEMA.items():
        table = _table(part)
        assert list(table) == [setting.name for setting in settings], part
        for setting in settings:
            written = table[setting.name].split(" (")[0].strip("`")
            default = setting.default_for(frozenset({"server"}))
            expected = (f'"{default}"' if isinstance(default, str)
                        else str(default).lower() if isinstance(default, bool)
                        else f"{default:g}")
            assert written == expected, (part, setting.name)


def test_the_whole_stack_example_is_what_explain_describes(tmp_path):
    text = DOC.split("```toml\n", 1)[1].split("```", 1)[0]
    deployment = loads(text, tmp_path / "amphora.toml")
    assert list(deployment.parts) == ["storage", "server", "follower", "kanban"]
    kanban = deployment.parts["kanban"]
    assert kanban.needs == ("server",)
    assert kanban.sources["listen"] == "amphora.toml:14"
    assert kanban.sources["storage"] == "amphora.toml:15 (${server:uri})"
    assert deployment.parts["storage"].sources["local"] == "amphora.toml:4"
