"""docs/kanban.md says what the app does: its route table is the app's, each route with
who may call it; the rules it names are the rules the app refuses with; its script
example runs against a real app process."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from kanbanprocess import kanban_command

from amphora_kanban.web.app import API
from amphora_kanban.web.auth import ADMIN, PUBLIC, SIGNED_IN

REPO = Path(__file__).resolve().parents[3]
DOC = (REPO / "docs" / "kanban.md").read_text()
WHO = {"anyone": PUBLIC, "signed in": SIGNED_IN, "admin": ADMIN}


def documented_routes() -> dict[tuple[str, str], str]:
    """``(method, path) -> access`` from the table's rows ``| `METHOD PATH...` | who |``."""
    rows = re.findall(r"^\| `(GET|POST|PUT|PATCH|DELETE) (/[^`?]*)[^`]*` \| ([a-z ]+) \|",
                      DOC, re.M)
    return {(method, path): WHO[who] for method, path, who in rows}


def test_the_route_table_is_the_apps():
    documented = documented_routes()
    served = {(method, path): access for method, path, _, access, _ in API}
    served[("GET", "/api/boards/{name}/events")] = SIGNED_IN
    served[("GET", "/healthz")] = PUBLIC
    assert documented == served


def test_the_rules_named_are_the_rules_refused_with():
    sources = "\n".join(p.read_text() for p in (REPO / "src" / "amphora_kanban").rglob("*.py"))
    refused = set(re.findall(r'RuleViolation\(\s*"([a-z-]+)"', sources))
    listed = DOC.split("`rule` one of", 1)[1].split(")", 1)[0]
    assert set(re.findall(r"`([a-z-]+)`", listed)) == refused


def test_the_script_example_runs(kanban_server, admin, tmp_path):
    board = admin.post("/api/boards", json={"name": "team", "title": "Team"})
    assert board.status_code == 201, board.text
    password = tmp_path / "password"
    password.write_text("a long password")
    # Another process adds the account while the app runs, as on a live site.
    added = kanban_command("adduser", kanban_server.uri, "ann@example.com",
                           "--password-file", str(password))
    assert added.returncode == 0, added.stderr
    code = re.search(r"```python\n(.*?)```", DOC, re.S).group(1)
    code = code.replace("http://127.0.0.1:8000", kanban_server.url)
    code += ("\n    assert card.status_code == 201, card.text\n"
             "    cards = client.get('/api/boards/team').json()['cards']\n"
             "    print([(c['title'], c['state']) for c in cards])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[('Export to CSV', 'ready')]"
