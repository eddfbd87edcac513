"""A load generator for the Kanban app: simulated people moving and editing cards over HTTP.

:func:`run_load` drives a running app (``amphora kanban serve``) the way a team does: an
administrator makes the boards and invites the people; each person signs in, then, for
the given time, moves cards (to another state, in front of another card) and edits them,
as fast as the app answers; on every board, listeners follow the Server-Sent Events and
keep their own copy of the board from the deltas.

It checks what must hold afterwards and reports what did not:

- no request failed, except moves refused with 409 (the documented refusals: a hard WIP
  limit, the two-tier rules);
- no move was lost or applied twice: each person moves only the cards they own (others'
  cards are the neighbours they are placed among), so the final state, parent and
  position of every card equal those its owner's last accepted move returned, and its
  history holds exactly one ``moved`` event per accepted move that changed its state;
- no state holds more cards than its hard WIP limit;
- every listener ends with the same board as a fresh ``GET``.

It also measures what :mod:`benchmarks.kanban_load` reports: requests per second, the
latency of moves, and the time from sending a move to its event reaching a listener.

The tests run it for a short time (``tests/kanban/web/test_load.py``); the benchmark for
longer (``benchmarks/kanban_load.py``).
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["LoadReport", "run_load", "percentile"]

# The feature states cards are moved among; the last one has a hard WIP limit, so that
# some moves are refused with 409 as the app documents.
STATES = [
    {"id": "todo", "title": "To do", "task": False},
    {"id": "next", "title": "Next", "task": False},
    {"id": "making", "title": "Making", "task": False, "working": True},
    {"id": "checking", "title": "Checking", "task": False,
     "wip": {"limit": 6, "unit": "cards", "hard": True}},
    {"id": "finished", "title": "Finished", "task": False, "complete": True},
]
CARDS_PER_PERSON = 3


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of ``values`` by the nearest rank (0.0 if none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, round(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class LoadReport:
    """What a run did and found. ``problems`` is empty when everything held."""

    seconds: float = 0.0
    requests: int = 0
    moves: int = 0
    refused: int = 0                        # moves answered 409
    rules: dict[str, int] = field(default_factory=dict)            # 409s by rule
    edits: int = 0
    move_latencies: list[float] = field(default_factory=list)     # seconds
    event_latencies: list[float] = field(default_factory=list)    # move sent -> event
    problems: list[str] = field(default_factory=list)

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        ms = 1000.0
        return {
            "seconds": round(self.seconds, 1), "requests": self.requests,
            "requests_per_second": round(self.requests_per_second, 1),
            "moves": self.moves, "refused_409": self.refused, "edits": self.edits,
            "move_p50_ms": round(percentile(self.move_latencies, 50) * ms, 1),
            "move_p99_ms": round(percentile(self.move_latencies, 99) * ms, 1),
            "event_p50_ms": round(percentile(self.event_latencies, 50) * ms, 1),
            "event_p99_ms": round(percentile(self.event_latencies, 99) * ms, 1),
            "refused_by_rule": dict(sorted(self.rules.items())),
            "problems": len(self.problems),
        }


@dataclass
class Owned:
    """What the owner of a card knows of it from the answers to their own requests."""

    id: str
    state: str
    parent: str | None
    position: str
    moved: int = 0                          # accepted moves that changed its state


class Person:
    """One simulated person: a signed-in HTTP client on one board, and the cards they own."""

    def __init__(self, client: httpx.AsyncClient, board: str, rng: random.Random):
        self.client = client
        self.board = board
        self.rng = rng
        self.cards: list[Owned] = []

    async def request(self, report: LoadReport, method: str, path: str,
                      body: Any = None) -> httpx.Response:
        response = await self.client.request(method, path, json=body)
        report.requests += 1
        return response


async def _sign_in(base_url: str, email: str, password: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=base_url, timeout=30.0)
    response = await client.post("/api/login", json={"email": email, "password": password})
    if response.status_code != 200:
        await client.aclose()
        raise RuntimeError(f"sign-in as {email} failed: {response.status_code} "
                           f"{response.text}")
    client.headers["X-CSRF-Token"] = response.json()["csrf_token"]
    return client


async def _invite(admin: httpx.AsyncClient, base_url: str, email: str,
                  password: str) -> httpx.AsyncClient:
    invitation = await admin.post("/api/invitations", json={"email": email, "role": "member"})
    invitation.raise_for_status()
    client = httpx.AsyncClient(base_url=base_url, timeout=30.0)
    accepted = await client.post(f"/api/invitations/{invitation.json()['token']}",
                                 json={"password": password, "display_name": email})
    accepted.raise_for_status()
    client.headers["X-CSRF-Token"] = accepted.json()["csrf_token"]
    return client


async def _set_up(base_url: str, admin: httpx.AsyncClient, users: int, boards: int,
                  seed: int) -> list[Person]:
    names = [f"load-{i + 1}" for i in range(boards)]
    for name in names:
        created = await admin.post("/api/boards", json={"name": name, "title": name})
        created.raise_for_status()
        (await admin.put(f"/api/boards/{name}/states", json=STATES)).raise_for_status()
    people: list[Person] = []
    for i in range(users):
        client = await _invite(admin, base_url, f"person{i + 1}@example.com",
                               f"password-{i + 1}-{seed}")
        people.append(Person(client, names[i % boards], random.Random(seed * 1000 + i)))
    for person in people:
        for n in range(CARDS_PER_PERSON):
            response = await person.client.post(
                f"/api/boards/{person.board}/cards",
                json={"title": f"Card {n + 1} of {person.client.headers['X-CSRF-Token'][:6]}",
                      "size": 1 + n, "state": "todo"})
            response.raise_for_status()
            card = response.json()
            person.cards.append(Owned(card["id"], card["state"], card["parent"],
                                      card["position"]))
    return people


class Listener:
    """Follows a board's events and keeps its own copy of the board from the deltas."""

    def __init__(self, client: httpx.AsyncClient, board: str):
        self.client = client
        self.board = board
        self.generation = 0
        self.states: dict[str, dict] = {}
        self.cards: dict[str, dict] = {}
        self.seen: dict[tuple[str, str, str], float] = {}   # (id, state, position) -> when
        self.task: asyncio.Task | None = None
        self.error: BaseException | None = None

    def apply(self, delta: dict[str, Any]) -> None:
        now = time.monotonic()
        if delta["full"]:
            self.states, self.cards = {}, {}
        for state in delta["states"]:
            self.states[state["id"]] = state
        for card in delta["cards"]:
            self.cards[card["id"]] = card
            self.seen.setdefault((card["id"], card["state"], card["position"]), now)
        for id in delta.get("removed", []):
            self.states.pop(id, None)
            self.cards.pop(id, None)
        self.generation = delta["generation"]

    async def follow(self) -> None:
        while True:
            try:
                async with self.client.stream(
                        "GET", f"/api/boards/{self.board}/events",
                        params={"generation": self.generation},
                        timeout=httpx.Timeout(30.0, read=60.0)) as response:
                    response.raise_for_status()
                    data: list[str] = []
                    async for line in response.aiter_lines():
                        if line.startswith("data:"):
                            data.append(line[5:].strip())
                        elif not line and data:
                            self.apply(json.loads("\n".join(data)))
                            data = []
            except asyncio.CancelledError:
                raise
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                self.error = exc        # reconnect from the last generation, as a browser does
                await asyncio.sleep(0.2)

    def start(self) -> None:
        self.task = asyncio.ensure_future(self.follow())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass


async def _act(person: Person, report: LoadReport, listeners: list[Listener],
               sent: list[tuple[str, str, str, float]]) -> None:
    """One action: mostly a move of an owned card, sometimes an edit."""
    rng = person.rng
    card = rng.choice(person.cards)
    if rng.random() < 0.25:
        response = await person.request(
            report, "PATCH", f"/api/boards/{person.board}/cards/{card.id}",
            {"title": f"Edited {rng.randrange(10**6)}", "size": rng.randrange(1, 9)})
        report.edits += 1
        if response.status_code != 200:
            report.problems.append(f"edit of {card.id}: {response.status_code} "
                                   f"{response.text[:200]}")
        return
    state = rng.choice(STATES)["id"]
    before = None
    neighbours = [c for c in listeners[0].cards.values()
                  if c["state"] == state and c["id"] != card.id] if listeners else []
    if neighbours and rng.random() < 0.6:
        before = rng.choice(neighbours)["id"]
    started = time.monotonic()
    response = await person.request(
        report, "POST", f"/api/boards/{person.board}/cards/{card.id}/move",
        {"state": state, "parent": None, "before": before})
    report.move_latencies.append(time.monotonic() - started)
    report.moves += 1
    if response.status_code == 409:
        report.refused += 1
        rule = response.json().get("rule", "?")
        report.rules[rule] = report.rules.get(rule, 0) + 1
        return
    if response.status_code != 200:
        report.problems.append(f"move of {card.id}: {response.status_code} "
                               f"{response.text[:200]}")
        return
    moved = response.json()
    if moved["state"] != card.state:
        card.moved += 1
    card.state, card.parent, card.position = moved["state"], moved["parent"], moved["position"]
    sent.append((card.id, card.state, card.position, started))


async def _work(person: Person, report: LoadReport, listeners: list[Listener],
                sent: list[tuple[str, str, str, float]], until: float) -> None:
    while time.monotonic() < until:
        try:
            await _act(person, report, listeners, sent)
        except httpx.HTTPError as exc:
            report.problems.append(f"{exc.request.method} {exc.request.url.path} by a "
                                   f"person on {person.board} failed: {exc!r}")


async def _check(admin: httpx.AsyncClient, people: list[Person],
                 listeners: list[Listener], report: LoadReport) -> None:
    boards = {person.board for person in people}
    fresh: dict[str, dict] = {}
    for name in sorted(boards):
        response = await admin.get(f"/api/boards/{name}")
        response.raise_for_status()
        fresh[name] = response.json()
    for name, board in fresh.items():
        for state in STATES:
            wip = state.get("wip")
            held = sum(1 for c in board["cards"] if c["state"] == state["id"])
            if wip and wip["hard"] and held > wip["limit"]:
                report.problems.append(f"{name}: {held} cards in {state['id']}, over its "
                                       f"hard limit of {wip['limit']}")
    for person in people:
        cards = {c["id"]: c for c in fresh[person.board]["cards"]}
        for owned in person.cards:
            card = cards.get(owned.id)
            if card is None:
                report.problems.append(f"card {owned.id} is gone from {person.board}")
                continue
            if (card["state"], card["parent"], card["position"]) != (
                    owned.state, owned.parent, owned.position):
                report.problems.append(
                    f"card {owned.id} is at {card['state']}/{card['position']}, but its "
                    f"last accepted move put it at {owned.state}/{owned.position}")
            alone = await admin.get(f"/api/boards/{person.board}/cards/{owned.id}")
            alone.raise_for_status()
            moves = [e for e in alone.json()["history"] if e["event"] == "moved"]
            states = [e["state"] for e in alone.json()["history"]]
            changed = sum(1 for a, b in zip(states, states[1:]) if a != b)
            if changed != owned.moved:
                report.problems.append(
                    f"card {owned.id}: {owned.moved} accepted moves changed its state, "
                    f"its history shows {changed} ({len(moves)} moved events)")
    for listener in listeners:
        board = fresh[listener.board]
        deadline = time.monotonic() + 10.0
        while listener.generation < board["generation"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if listener.generation != board["generation"]:
            report.problems.append(f"a listener on {listener.board} stopped at generation "
                                   f"{listener.generation}, the board is at "
                                   f"{board['generation']}")
        fields = ("state", "parent", "position", "title", "size", "assignee")
        theirs = {id: tuple(c[f] for f in fields) for id, c in listener.cards.items()}
        ours = {c["id"]: tuple(c[f] for f in fields) for c in board["cards"]}
        if theirs != ours:
            report.problems.append(f"a listener's copy of {listener.board} differs from "
                                   f"a fresh GET in {len(set(theirs.items()) ^ set(ours.items()))}"
                                   f" cards")
        if [s["id"] for s in board["states"]] != list(listener.states):
            report.problems.append(f"a listener's states of {listener.board} differ")


async def run_load(base_url: str, admin_email: str, admin_password: str, *,
                   users: int = 50, boards: int = 5, seconds: float = 60.0,
                   listeners_per_board: int = 2, seed: int = 1) -> LoadReport:
    """Drive the app at ``base_url`` for ``seconds`` with ``users`` people on ``boards``
    boards (made here, named ``load-1``...) and check the outcome; see the module
    docstring. ``admin_email``/``admin_password`` are an administrator's account."""
    report = LoadReport()
    admin = await _sign_in(base_url, admin_email, admin_password)
    people: list[Person] = []
    listeners: list[Listener] = []
    try:
        people = await _set_up(base_url, admin, users, boards, seed)
        by_board: dict[str, list[Listener]] = {}
        for name in sorted({p.board for p in people}):
            for _ in range(listeners_per_board):
                client = await _sign_in(base_url, admin_email, admin_password)
                listener = Listener(client, name)
                listener.start()
                listeners.append(listener)
                by_board.setdefault(name, []).append(listener)
        # Let every listener receive its first (full) board before the work starts.
        deadline = time.monotonic() + 10.0
        while any(not listener.cards for listener in listeners) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        sent: list[tuple[str, str, str, float]] = []
        report.requests = 0
        started = time.monotonic()
        await asyncio.gather(*(_work(p, report, by_board[p.board], sent, started + seconds)
                               for p in people))
        report.seconds = time.monotonic() - started
        await _check(admin, people, listeners, report)
        board_of = {card.id: p.board for p in people for card in p.cards}
        for id, state, position, at in sent:
            for listener in by_board[board_of[id]]:
                seen = listener.seen.get((id, state, position))
                if seen is not None:
                    report.event_latencies.append(max(0.0, seen - at))
    finally:
        for listener in listeners:
            await listener.stop()
            await listener.client.aclose()
        for person in people:
            await person.client.aclose()
        await admin.aclose()
    return report
