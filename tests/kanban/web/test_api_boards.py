"""The board routes over HTTP, on a real server process, on each storage kind.

Boards have the default two-tier states: features flow backlog -> ready -> development
(where their task board opens: ready-task -> doing -> needs-review -> review -> done)
-> acceptance -> deploying -> deployed.
"""
from __future__ import annotations

import datetime
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kanbanprocess import add, assert_error, move


def cards_by_id(client: Any, board: str) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in client.get(f"/api/boards/{board}").json()["cards"]}


# -- boards ----------------------------------------------------------------------------

def test_an_admin_makes_a_board_that_members_open(team):
    name = team.new_board()
    assert {"name": name, "title": name} in team.member.get("/api/boards").json()
    board = team.member.get(f"/api/boards/{name}").json()
    assert board["name"] == name and board["title"] == name
    assert [s["id"] for s in board["states"]][:4] == ["backlog", "ready", "development",
                                                      "ready-task"]
    assert board["cards"] == [] and board["created"].endswith("+00:00")
    assert {"admin@localhost", "member@example.org"} <= {u["email"] for u in board["users"]}


def test_board_creation_is_checked(team):
    assert_error(team.admin.post("/api/boards", json={"name": "Not A Slug", "title": "x"}),
                 400, field="name")
    assert_error(team.admin.post("/api/boards", json={"name": "fine"}), 400, field="title")
    name = team.new_board()
    assert_error(team.admin.post("/api/boards", json={"name": name, "title": "again"}),
                 400, field="name")
    assert_error(team.admin.post("/api/boards", content=b"{not json",
                                 headers={"content-type": "application/json"}),
                 400, field="body")
    assert_error(team.member.post("/api/boards", json={"name": "mine", "title": "x"}), 403)
    assert_error(team.member.get("/api/boards/no-such-board"), 404)


def test_states_are_replaced_as_a_whole_list(team, board):
    states = team.admin.get(f"/api/boards/{board}").json()["states"]
    backlog, ready = states[0], states[1]
    # rename one, give another a WIP limit, add one, drop "deploying", reorder two
    edited = [ready, {**backlog, "title": "Ideas"},
              {"title": "Triage"}] + [s for s in states[2:] if s["id"] != "deploying"]
    edited[3] = {**edited[3], "wip": {"limit": 2, "unit": "points", "hard": True}}
    reply = team.admin.put(f"/api/boards/{board}/states", json=edited)
    assert reply.status_code == 200, reply.text
    got = reply.json()["states"]
    assert [s["id"] for s in got][:4] == ["ready", "backlog", "triage", "development"]
    assert got[1]["title"] == "Ideas" and "deploying" not in [s["id"] for s in got]
    assert got[3]["wip"] == {"limit": 2, "unit": "points", "hard": True}
    assert team.member.get(f"/api/boards/{board}").json()["states"] == got


def test_a_state_holding_cards_is_not_removed(team, board):
    add(team.member, board, title="Waiting")
    states = team.admin.get(f"/api/boards/{board}").json()["states"]
    body = assert_error(team.admin.put(f"/api/boards/{board}/states", json=states[1:]),
                        409, rule="state-not-empty")
    assert "Backlog" in body["error"]
    assert team.admin.get(f"/api/boards/{board}").json()["states"] == states  # untouched
    assert_error(team.admin.put(f"/api/boards/{board}/states",
                                json=[{**states[0], "wip": {"limit": 0}}] + states[1:]),
                 400, field="wip.limit")
    assert_error(team.admin.put(f"/api/boards/{board}/states", json={"id": "x"}),
                 400, field="states")
    assert_error(team.member.put(f"/api/boards/{board}/states", json=states), 403)


# -- cards -----------------------------------------------------------------------------

def test_cards_are_made_read_and_edited(team, board):
    feature = add(team.member, board, title="Sign-up", size=3,
                  description="<p>New <b>accounts</b></p><script>alert(1)</script>")
    assert feature["state"] == "backlog" and feature["size"] == 3
    assert feature["progress"] == {"complete": 0, "total": 0}
    assert feature["warnings"] == [] and feature["generation"] > 0
    assert "<script>" not in feature["description"]
    assert "<b>accounts</b>" in feature["description"]
    task = add(team.member, board, title="Form", parent=feature["id"], size=2)
    assert task["state"] == "ready-task" and "progress" not in task

    member_id = team.member.get("/api/me").json()["user"]["id"]
    reply = team.member.patch(f"/api/boards/{board}/cards/{task['id']}",
                              json={"blocked": "waiting for design", "assignee": member_id})
    assert reply.status_code == 200, reply.text
    assert reply.json()["blocked"] == "waiting for design"
    comment = team.member.post(f"/api/boards/{board}/cards/{task['id']}/comments",
                               json={"body": "<em>soon</em><img src=x onerror=alert(1)>"})
    assert comment.status_code == 201, comment.text
    assert "onerror" not in comment.json()["body"] and comment.json()["by"] == member_id

    full = team.admin.get(f"/api/boards/{board}/cards/{task['id']}").json()
    assert full["assignee"] == member_id and full["blocked"] == "waiting for design"
    assert [c["body"] for c in full["comments"]] == [comment.json()["body"]]
    assert [e["event"] for e in full["history"]] == ["created"]
    assert team.admin.get(f"/api/boards/{board}/cards/{feature['id']}").json()[
        "progress"] == {"complete": 0, "total": 2}


def test_card_input_errors_name_the_field(team, board):
    url = f"/api/boards/{board}/cards"
    assert_error(team.member.post(url, json={"size": 2}), 400, field="title")
    assert_error(team.member.post(url, json={"title": "x", "size": "big"}), 400, field="size")
    assert_error(team.member.post(url, json={"title": "x", "colour": "red"}), 400,
                 field="colour")
    assert_error(team.member.post(url, json={"title": "x", "state": "nowhere"}), 404)
    feature = add(team.member, board, title="Feature")
    card = f"{url}/{feature['id']}"
    assert_error(team.member.patch(card, json={"size": -1}), 400, field="size")
    assert_error(team.member.patch(card, json={"assignee": "nobody"}), 400, field="assignee")
    assert_error(team.member.post(f"{card}/comments", json={"body": " "}), 400, field="body")
    assert_error(team.member.get(f"{url}/no-such-card"), 404)
    assert_error(team.member.patch(f"{url}/no-such-card", json={"title": "x"}), 404)
    assert cards_by_id(team.member, board)[feature["id"]]["title"] == "Feature"


def test_moves_follow_the_two_tier_rules(team, board):
    one, two, three = (add(team.member, board, title=t) for t in ("One", "Two", "Three"))
    # before: in front of a card of the target column; null: at its end
    reply = move(team.member, board, three["id"], state="backlog", parent=None,
                 before=one["id"])
    assert reply.status_code == 200, reply.text
    column = [c["id"] for c in team.member.get(f"/api/boards/{board}").json()["cards"]
              if c["state"] == "backlog"]
    assert column == [three["id"], one["id"], two["id"]]
    moved = move(team.member, board, one["id"], state="development", parent=None,
                 before=None).json()
    assert moved["state"] == "development" and moved["generation"] > three["generation"]

    task = add(team.member, board, title="Task", parent=one["id"])
    member_id = team.member.get("/api/me").json()["user"]["id"]
    pulled = move(team.member, board, task["id"], state="doing", parent=one["id"],
                  before=None).json()
    assert pulled["assignee"] == member_id  # pulled into a working state
    # into another feature, done there: the progress of each feature follows
    move(team.member, board, task["id"], state="done", parent=two["id"], before=None)
    cards = cards_by_id(team.member, board)
    assert cards[task["id"]]["parent"] == two["id"]
    assert cards[two["id"]]["progress"] == {"complete": 1, "total": 1}
    assert cards[one["id"]]["progress"] == {"complete": 0, "total": 0}

    assert_error(move(team.member, board, task["id"], state="backlog", parent=two["id"],
                      before=None), 409, rule="task-state")
    assert_error(move(team.member, board, one["id"], state="doing", parent=None,
                      before=None), 409, rule="feature-state")
    assert_error(move(team.member, board, two["id"], state="doing", parent=one["id"],
                      before=None), 409, rule="feature-with-tasks")
    assert_error(move(team.member, board, one["id"], state="doing", parent=task["id"],
                      before=None), 409, rule="two-levels")
    # before: a card of the board in another column (it moved since the client looked)
    # is a refusal of the race; no card of the board, or the card itself, is bad input
    assert_error(move(team.member, board, one["id"], state="backlog", parent=None,
                      before=task["id"]), 409, rule="before-elsewhere")
    assert_error(move(team.member, board, one["id"], state="backlog", parent=None,
                      before="no-such-card"), 400, field="before")
    assert_error(move(team.member, board, one["id"], state="backlog", parent=None,
                      before=one["id"]), 400, field="before")
    assert_error(move(team.member, board, one["id"], state="backlog", parent=None,
                      before=7), 400, field="before")
    assert_error(move(team.member, board, one["id"], state="backlog", parent=7,
                      before=None), 400, field="parent")
    assert_error(move(team.member, board, "no-such-card", state="backlog"), 404)
    assert cards_by_id(team.member, board)[task["id"]]["state"] == "done"


def test_wip_limits_warn_or_refuse(team, board):
    states = team.admin.get(f"/api/boards/{board}").json()["states"]
    for state in states:
        if state["id"] == "ready":
            state["wip"] = {"limit": 1, "unit": "cards", "hard": False}
        if state["id"] == "acceptance":
            state["wip"] = {"limit": 1, "unit": "cards", "hard": True}
    assert team.admin.put(f"/api/boards/{board}/states", json=states).status_code == 200
    a, b = add(team.member, board, title="A"), add(team.member, board, title="B")
    assert move(team.member, board, a["id"], state="ready").json()["warnings"] == []
    warned = move(team.member, board, b["id"], state="ready").json()
    assert [w["rule"] for w in warned["warnings"]] == ["wip-limit"]
    assert warned["state"] == "ready"  # soft: done, with a warning
    assert move(team.member, board, a["id"], state="acceptance").status_code == 200
    body = assert_error(move(team.member, board, b["id"], state="acceptance"), 409,
                        rule="wip-limit")
    assert "limit of 1" in body["error"]
    assert cards_by_id(team.member, board)[b["id"]]["state"] == "ready"  # hard: refused


# -- the bag ---------------------------------------------------------------------------

def test_archived_features_are_found_by_a_word_of_a_task(team, board):
    feature = add(team.member, board, title="Payments")
    task = add(team.member, board, title="Reconcile ledgers nightly", parent=feature["id"])
    other = add(team.member, board, title="Search", description="<p>find things</p>")
    archived = team.member.post(f"/api/boards/{board}/cards/{feature['id']}/archive")
    assert archived.status_code == 200, archived.text
    assert archived.json()["archived"] == [feature["id"], task["id"]]
    team.member.post(f"/api/boards/{board}/cards/{other['id']}/archive")
    assert set(cards_by_id(team.member, board)) == set()

    found = team.member.get(f"/api/boards/{board}/archive", params={"text": "ledgers"}).json()
    assert [f["feature"]["id"] for f in found] == [feature["id"]]
    assert [t["id"] for t in found[0]["tasks"]] == [task["id"]]
    assert found[0]["matched"] == [task["id"]]
    # through the mirror's text index, which stems words (a scan of the bag would not)
    stemmed = team.member.get(f"/api/boards/{board}/archive",
                              params={"text": "reconciled ledger"}).json()
    assert [f["feature"]["id"] for f in stemmed] == [feature["id"]]
    by_description = team.member.get(f"/api/boards/{board}/archive",
                                     params={"text": "things"}).json()
    assert [f["feature"]["id"] for f in by_description] == [other["id"]]
    assert team.member.get(f"/api/boards/{board}/archive",
                           params={"text": "absent"}).json() == []
    everything = team.member.get(f"/api/boards/{board}/archive").json()
    assert {f["feature"]["id"] for f in everything} == {feature["id"], other["id"]}

    restored = team.member.post(f"/api/boards/{board}/cards/{feature['id']}/restore")
    assert restored.status_code == 200, restored.text
    assert restored.json()["progress"] == {"complete": 0, "total": 1}
    assert set(cards_by_id(team.member, board)) == {feature["id"], task["id"]}
    assert_error(team.member.post(f"/api/boards/{board}/cards/{feature['id']}/restore"), 404)
    assert_error(team.member.post(f"/api/boards/{board}/cards/{task['id']}/archive"), 409,
                 rule="archive-features")


# -- metrics, export, import, time travel ------------------------------------------------

def test_metrics_cover_the_days_asked(team, board):
    card = add(team.member, board, title="Ship")
    move(team.member, board, card["id"], state="development")
    move(team.member, board, card["id"], state="deployed")
    metrics = team.member.get(f"/api/boards/{board}/metrics").json()
    assert list(metrics["lead_times"]) == [card["id"]] == list(metrics["cycle_times"])
    assert sum(metrics["throughput"].values()) == 1
    assert len(metrics["cfd"]) == 30 and metrics["cfd"][metrics["to"]] == {"deployed": 1}
    span = team.member.get(f"/api/boards/{board}/metrics",
                           params={"from": "2026-01-01", "to": "2026-01-03"}).json()
    assert list(span["cfd"]) == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert_error(team.member.get(f"/api/boards/{board}/metrics", params={"from": "soon"}),
                 400, field="from")
    assert_error(team.member.get(f"/api/boards/{board}/metrics",
                                 params={"from": "2026-02-01", "to": "2026-01-01"}),
                 400, field="from")


def test_export_and_import_give_the_same_board(team, board):
    feature = add(team.member, board, title="Feature", size=5)
    add(team.member, board, title="Task", parent=feature["id"])
    exported = team.admin.get(f"/api/boards/{board}/export")
    assert exported.status_code == 200 and exported.json()["format"] == "amphora-kanban/1"
    assert re.fullmatch(rf'attachment; filename="{board}-\d{{4}}-\d\d-\d\d\.json"',
                        exported.headers["content-disposition"])
    copy = f"{board}-copy"
    imported = team.admin.post("/api/boards/import",
                               json={"name": copy, "data": exported.json()})
    assert imported.status_code == 201, imported.text
    assert cards_by_id(team.member, copy) == cards_by_id(team.member, board)
    assert imported.json()["title"] == exported.json()["board"]["title"]
    retitled = team.admin.post("/api/boards/import", json={
        "name": f"{board}-again", "title": "A copy", "data": exported.json()})
    assert retitled.status_code == 201 and retitled.json()["title"] == "A copy"
    assert_error(team.admin.post("/api/boards/import", json={
        "name": f"{board}-bad", "title": 7, "data": exported.json()}), 400, field="title")
    assert_error(team.admin.post("/api/boards/import", json={"data": {"format": "x"}}),
                 400, field="format")
    assert_error(team.member.get(f"/api/boards/{board}/export"), 403)
    assert_error(team.member.post("/api/boards/import", json={"data": exported.json()}), 403)


def test_a_board_as_it_was(team, board):
    card = add(team.member, board, title="Travel")
    moved = move(team.member, board, card["id"], state="ready").json()
    then = team.member.get(f"/api/boards/{board}/cards/{card['id']}").json()["history"][-1]
    # the move's event time: after the card was made, before the move committed
    past = team.member.get(f"/api/boards/{board}", params={"at": then["at"]})
    assert past.status_code == 200, past.text
    assert [c["state"] for c in past.json()["cards"]] == ["backlog"]
    assert past.json()["at"] == then["at"] and past.json()["generation"] < moved["generation"]
    assert [c["state"] for c in team.member.get(f"/api/boards/{board}").json()["cards"]] \
        == ["ready"]
    seconds = datetime.datetime.fromisoformat(then["at"]).timestamp()  # epoch seconds too
    assert team.member.get(f"/api/boards/{board}", params={"at": seconds}).json()[
        "cards"] == past.json()["cards"]
    assert_error(team.member.get(f"/api/boards/{board}", params={"at": "yesterday-ish"}),
                 400, field="at")
    assert_error(team.member.get(f"/api/boards/{board}", params={"at": "2001-01-01"}), 404)


# -- concurrency -------------------------------------------------------------------------

def test_concurrent_changes_all_succeed(team, board):
    """Writers at once on one board: conflicts the database cannot merge (the change
    log moving a page, a bucket of cards splitting) are retried, never a 500."""
    def work(n: int) -> list[int]:
        client = team.server.client(cookies=team.member.cookies,
                                    headers=dict(team.member.headers))
        statuses = []
        for i in range(12):
            reply = client.post(f"/api/boards/{board}/cards", json={"title": f"{n}.{i}"})
            statuses.append(reply.status_code)
            if reply.status_code == 201:
                statuses.append(move(client, board, reply.json()["id"],
                                     state="ready").status_code)
        return statuses
    with ThreadPoolExecutor(6) as pool:
        statuses = [s for done in pool.map(work, range(6)) for s in done]
    assert sorted(set(statuses)) == [200, 201] and len(statuses) == 6 * 12 * 2
    cards = team.member.get(f"/api/boards/{board}").json()["cards"]
    assert len(cards) == 72 and {c["state"] for c in cards} == {"ready"}
