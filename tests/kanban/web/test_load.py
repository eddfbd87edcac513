"""Load: 50 people moving and editing cards on 5 boards for a minute, against one app
process on a SQLite file (:mod:`amphora_kanban.load` drives it and checks the outcome).

What must hold: no request fails except moves refused with a documented 409 (the hard WIP
limit, or the neighbour a move named having moved elsewhere meanwhile); no move is lost
or applied twice (every card is where its owner's last accepted move put it, and its
history holds one change of state per accepted move that changed it); every listener of
the Server-Sent Events ends with the same board as a fresh GET.

``KANBAN_LOAD_SECONDS`` changes the duration (60 by default, as the app promises).
"""
from __future__ import annotations

import asyncio
import os

from kanbanprocess import ADMIN_EMAIL, PASSWORD

from amphora_kanban.load import run_load

SECONDS = float(os.environ.get("KANBAN_LOAD_SECONDS", "60"))


def test_fifty_people_on_five_boards(kanban_server):
    kanban_server.admin_client()  # takes the first administrator's invitation
    report = asyncio.run(run_load(kanban_server.url, ADMIN_EMAIL, PASSWORD, users=50,
                                  boards=5, seconds=SECONDS))
    summary = report.summary()
    print(f"\nkanban load: {summary}")
    assert report.problems == [], report.problems[:20]
    assert set(report.rules) <= {"wip-limit", "before-elsewhere"}, report.rules
    # The work really happened, concurrently, and the limit was really reached.
    assert report.moves > 500 and report.edits > 100, summary
    assert report.rules.get("wip-limit", 0) > 0, summary
    assert len(report.event_latencies) > report.moves // 4, summary
