"""Live updates: Server-Sent Events of a board's changes, on a real server process.

The stream's messages are ``id: <generation>``, ``event: board``, ``data: <delta>``; the
tests wait for them (failing after a generous timeout), never time them.
"""
from __future__ import annotations

from typing import Any, Iterator

import httpx
import pytest

import amphora
from amphora_kanban.ordering import key_between
from amphora_kanban.web.accounts import add_account
from amphora_kanban.web.auth import Passwords
from kanbanprocess import PASSWORD, EventStream, InProcess, add, move


@pytest.fixture
def streams() -> Iterator[Any]:
    """``open(url, client, path, headers=None)``: an EventStream, closed after the test."""
    opened: list[EventStream] = []

    def open_stream(url: str, client: Any, path: str,
                    headers: dict[str, str] | None = None) -> EventStream:
        stream = EventStream(url, client, path, headers)
        opened.append(stream)
        return stream
    yield open_stream
    for stream in opened:
        stream.close()


def generation(client: Any, board: str) -> int:
    return client.get(f"/api/boards/{board}").json()["generation"]


def test_a_move_reaches_every_listener(team, board, streams):
    card = add(team.member, board, title="Live")
    now = generation(team.member, board)
    watching = [streams(team.server.url, c, f"/api/boards/{board}/events?generation={now}")
                for c in (team.admin, team.member)]
    assert [w.status for w in watching] == [200, 200]
    moved = move(team.member, board, card["id"], state="ready").json()
    for stream in watching:
        message = stream.next()
        assert message["event"] == "board" and message["id"] == message["data"]["generation"]
        delta = message["data"]
        assert delta["full"] is False and delta["generation"] >= moved["generation"]
        assert [(c["id"], c["state"]) for c in delta["cards"]] == [(card["id"], "ready")]
        assert delta["removed"] == [] and delta["states"] == []
    # and the next change after that
    team.admin.patch(f"/api/boards/{board}/cards/{card['id']}", json={"title": "Renamed"})
    for stream in watching:
        assert [c["title"] for c in stream.next()["data"]["cards"]] == ["Renamed"]


def test_a_stream_starts_with_the_whole_board_without_a_generation(team, board, streams):
    feature = add(team.member, board, title="Feature")
    task = add(team.member, board, title="Task", parent=feature["id"], size=2)
    stream = streams(team.server.url, team.member, f"/api/boards/{board}/events")
    first = stream.next()["data"]
    assert first["full"] is True and first["name"] == board
    assert first["generation"] == generation(team.member, board)
    assert [s["id"] for s in first["states"]][:2] == ["backlog", "ready"]
    assert {c["id"] for c in first["cards"]} == {feature["id"], task["id"]}
    # a task's change also brings its feature, with the progress it changed
    move(team.member, board, task["id"], state="done", parent=feature["id"])
    delta = stream.next()["data"]
    assert {c["id"]: c.get("progress") for c in delta["cards"]} == {
        task["id"]: None, feature["id"]: {"complete": 2, "total": 2}}


def test_a_reconnection_gets_exactly_what_it_missed(team, board, streams):
    a, b, c = (add(team.member, board, title=t) for t in ("A", "B", "C"))
    seen = generation(team.member, board)
    move(team.member, board, a["id"], state="ready")
    team.member.patch(f"/api/boards/{board}/cards/{b['id']}", json={"size": 8})
    d = add(team.member, board, title="D")
    team.member.post(f"/api/boards/{board}/cards/{c['id']}/archive")
    now = generation(team.member, board)
    # Last-Event-ID (what a reconnecting EventSource sends) overrides ?generation
    stream = streams(team.server.url, team.member,
                     f"/api/boards/{board}/events?generation=0", {"Last-Event-ID": str(seen)})
    message = stream.next()
    delta = message["data"]
    assert delta["full"] is False and message["id"] == delta["generation"] == now
    assert {card["id"]: (card["state"], card["size"]) for card in delta["cards"]} == {
        a["id"]: ("ready", 1), b["id"]: ("backlog", 8), d["id"]: ("backlog", 1)}
    assert delta["removed"] == [c["id"]]
    up_to_date = streams(team.server.url, team.member,
                         f"/api/boards/{board}/events?generation={now}")
    move(team.member, board, d["id"], state="ready")
    assert [card["id"] for card in up_to_date.next()["data"]["cards"]] == [d["id"]]
    assert up_to_date.pending() == []  # nothing was sent before the change


def test_a_client_too_old_for_the_log_gets_the_whole_board(team, streams):
    # An import records every card in the change log: 400 entries push generation 1 out.
    name = team.new_board()
    data = team.admin.get(f"/api/boards/{name}/export").json()
    position = None
    for n in range(400):
        position = key_between(position, None)
        data["cards"].append({"id": f"card-{n}", "title": f"Card {n}", "state": "backlog",
                              "parent": None, "position": position, "size": 1})
    imported = team.admin.post("/api/boards/import",
                               json={"name": f"{name}-big", "data": data})
    assert imported.status_code == 201, imported.text
    stream = streams(team.server.url, team.member,
                     f"/api/boards/{name}-big/events?generation=1")
    delta = stream.next()["data"]
    assert delta["full"] is True and len(delta["cards"]) == 400
    assert delta["generation"] == imported.json()["generation"]


def test_stream_errors(kanban_server, admin, member, streams):
    admin.post("/api/boards", json={"name": "team", "title": "Team"})
    url = kanban_server.url
    assert streams(url, kanban_server.client(), "/api/boards/team/events").status == 401
    assert streams(url, member, "/api/boards/nothing/events").status == 404
    bad = member.get("/api/boards/team/events?generation=soon")
    assert bad.status_code == 400 and bad.json()["field"] == "generation"
    # a garbled Last-Event-ID counts as none: the whole board
    stream = streams(url, member, "/api/boards/team/events", {"Last-Event-ID": "garbled"})
    assert stream.next()["data"]["full"] is True


def test_pings_keep_a_quiet_stream_open(tmp_path, streams):
    db = amphora.open(f"sqlite:///{tmp_path}/kanban.db")
    served = InProcess(db, ping_interval=0.2)
    try:
        with db.transaction() as conn:
            add_account(conn, Passwords(fast=True), "ann@example.org", PASSWORD, None, True)
        client = httpx.Client(base_url=served.url)
        reply = client.post("/api/login", json={"email": "ann@example.org",
                                                "password": PASSWORD})
        client.headers["X-CSRF-Token"] = reply.json()["csrf_token"]
        client.post("/api/boards", json={"name": "quiet", "title": "Quiet"})
        stream = streams(served.url, client, "/api/boards/quiet/events")
        assert stream.next(comments=True)["data"]["full"] is True
        assert stream.next(comments=True) == {"comment": "ping"}
        assert stream.next(comments=True) == {"comment": "ping"}
        client.close()
    finally:
        served.stop()
        db.close()
