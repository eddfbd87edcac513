"""What the browser tests share: the people, a JSON API client acting as one of them,
the server (``start_kanban``, from the API tests' ``kanbanprocess``), and a board with
three weeks of history for the metrics page."""
from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amphora_kanban import key_between

# The API tests' server processes (kanbanprocess.py beside their conftest).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "web"))
from kanbanprocess import start_kanban  # noqa: E402,F401


@dataclass
class Account:
    email: str
    password: str
    name: str


ADMIN = Account("ada@example.org", "analytical-engine", "Ada Lovelace")
MEMBER = Account("grace@example.org", "compiler-1952", "Grace Hopper")


class BoardApi:
    """The JSON API of board ``team`` as one signed-in person (shares the browser
    context's cookies when made from ``context.request``)."""

    def __init__(self, request: Any, csrf_token: str, board: str = "team"):
        self.request = request
        self.headers = {"X-CSRF-Token": csrf_token}
        self.base = f"/api/boards/{board}"

    def _json(self, response: Any) -> Any:
        assert response.ok, f"{response.status} {response.text()}"
        return response.json()

    def get(self, path: str = "") -> Any:
        return self._json(self.request.get(self.base + path))

    def post(self, path: str, data: Any = None) -> Any:
        return self._json(self.request.post(self.base + path, data=data, headers=self.headers))

    def put(self, path: str, data: Any) -> Any:
        return self._json(self.request.put(self.base + path, data=data, headers=self.headers))

    def patch(self, id: str, changes: dict[str, Any]) -> Any:
        return self._json(self.request.patch(f"{self.base}/cards/{id}", data=changes,
                                             headers=self.headers))

    def users(self) -> dict[str, str]:
        """Display name -> user id."""
        response = self.request.get("/api/users")
        return {u["display_name"]: u["id"] for u in self._json(response)}

    def board(self) -> dict[str, Any]:
        return self.get()

    def card(self, id: str) -> dict[str, Any]:
        return self.get(f"/cards/{id}")

    def add(self, title: str, **fields: Any) -> dict[str, Any]:
        return self.post("/cards", {"title": title, **fields})

    def move(self, id: str, state: str, parent: str | None = None,
             before: str | None = None) -> dict[str, Any]:
        return self.post(f"/cards/{id}/move", {"state": state, "parent": parent,
                                               "before": before})

    def set_wip(self, limits: dict[str, dict[str, Any] | None]) -> None:
        """Give states WIP limits (state id -> {limit, unit, hard} or None)."""
        states = self.board()["states"]
        for state in states:
            if state["id"] in limits:
                state["wip"] = limits[state["id"]]
        self.put("/states", states)


@dataclass
class Kanban:
    url: str
    admin: Account
    member: Account


def sign_in(context: Any, account: Account) -> BoardApi:
    response = context.request.post("/api/login", data={"email": account.email,
                                                        "password": account.password})
    assert response.ok, response.text()
    return BoardApi(context.request, response.json()["csrf_token"])


def drag(card: Any, target: Any, **options: Any) -> Any:
    """Drags ``card`` (a locator) onto ``target`` and waits for the server's answer to
    the move (the page shows a dropped card at once, before the server has it).

    A drag whose drop sent no move within a few seconds is made again, up to three
    times: a live update that re-renders the board while the mouse is down (after a
    quick-add, say) ends the browser's drag without a drop. A move that was sent is
    never sent twice: its answer is awaited instead."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    for attempt in range(3):
        try:
            with card.page.expect_request(lambda request: request.url.endswith("/move"),
                                          timeout=7_000) as sent:
                card.drag_to(target, **options)
        except PlaywrightTimeout:
            if attempt == 2:
                raise
            continue
        return sent.value.response()


DAY = 86400
FEATURES = ["Sign-up", "Password reset", "Team spaces", "Dark theme", "CSV export",
            "Audit log", "Mentions", "Due dates", "Board import", "Webhooks",
            "Search filters", "Keyboard shortcuts", "Card covers", "Weekly digest"]
TASKS = ["Design", "Build", "Test", "Document"]


def flow_history(states: list[dict[str, Any]], now: float, seed: int = 7
                 ) -> dict[str, Any]:
    """An export document of a board ``flow`` whose features arrived one every day or
    two over the three weeks before ``now`` and went through the feature states, each
    with two to four tasks worked through the task states while it was in the
    ``explode`` state; the later ones are still under way at ``now``."""
    rng = random.Random(seed)
    flags = {s["id"]: s for s in states}
    feature_path = [s["id"] for s in states if not s["task"]]
    task_path = [s["id"] for s in states if s["task"]]
    explode = next(s["id"] for s in states if s["explode"])
    last_key: dict[tuple[str, str | None], str] = {}
    cards = []

    def card(id: str, title: str, parent: str | None, events: list[dict[str, Any]]) -> None:
        state = events[-1]["state"]
        column = (state, parent)
        last_key[column] = key_between(last_key.get(column), None)
        cards.append({"id": id, "title": title, "description": None,
                      "size": rng.choice([1, 2, 3, 5, 8]), "parent": parent, "state": state,
                      "blocked": None, "assignee": None, "position": last_key[column],
                      "history": events, "comments": []})

    def walk(path: list[str], at: float, parent: str | None, low: float, high: float,
             hold: Any = None) -> tuple[list[dict[str, Any]], float]:
        events: list[dict[str, Any]] = []
        for i, state in enumerate(path):
            events.append({"at": at, "event": "moved" if i else "created", "state": state,
                           "working": flags[state]["working"],
                           "complete": flags[state]["complete"], "parent": parent,
                           "by": None})
            at += rng.uniform(low, high) * DAY
            if hold is not None and state == explode:
                at = max(at, hold(events[-1]["at"]))
            if at > now:
                break
        return events, at

    for i, title in enumerate(FEATURES):
        id = f"feature{i:02d}"
        tasks: list[tuple[str, list[dict[str, Any]]]] = []

        def work(started: float) -> float:
            ends = []
            for j in range(rng.randint(2, 4)):
                events, end = walk(task_path, started, id, 0.1, 1.2)
                tasks.append((f"{id}task{j}", events))
                ends.append(end)
            return max(ends) + 0.2 * DAY

        events, _ = walk(feature_path, now - 21 * DAY + i * 1.5 * DAY, None, 0.5, 2.5, work)
        card(id, title, None, events)
        for j, (task_id, task_events) in enumerate(tasks):
            card(task_id, f"{TASKS[j]}: {title.lower()}", id, task_events)
    return {"format": "amphora-kanban/1", "board": {"name": "flow", "title": "Product flow"},
            "states": states, "cards": cards, "archive": []}
