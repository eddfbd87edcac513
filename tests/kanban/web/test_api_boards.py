"""The board routes over HTTP, on a real server process."""
from __future__ import annotations


def test_an_admin_makes_a_board_that_members_open(admin, member):
    made = admin.post("/api/boards", json={"name": "team", "title": "Team board"})
    assert made.status_code == 201, made.text
    assert member.get("/api/boards").json() == [{"name": "team", "title": "Team board"}]
    board = member.get("/api/boards/team").json()
    assert board["name"] == "team" and board["title"] == "Team board"
    assert [s["id"] for s in board["states"]][:3] == ["backlog", "ready", "development"]
    assert board["cards"] == [] and board["created"].endswith("+00:00")
    assert {u["email"] for u in board["users"]} == {"admin@localhost", "member@example.org"}
