"""States as data, cards, the two-tier rules, WIP limits, assignment on pull, progress."""
import pytest

from amphora_kanban import BadInput, Board, NotFound, RuleViolation, Site


def feature(board, title="F", **fields):
    return board.add_card({"title": title, **fields}).card


def task(board, parent, title="T", **fields):
    return board.add_card({"title": title, "parent": parent.id, **fields}).card


def test_a_new_board_has_the_two_tier_default_states(board, session):
    session.abort()
    assert [(s.id, s.task) for s in board.states()] == [
        ("backlog", False), ("ready", False), ("development", False),
        ("ready-task", True), ("doing", True), ("needs-review", True), ("review", True),
        ("done", True), ("acceptance", False), ("deploying", False), ("deployed", False)]
    dev = board.state("development").to_json()
    assert dev == {"id": "development", "title": "Development", "task": False,
                   "explode": True, "working": True, "complete": False, "wip": None}
    assert board.state("done").complete and board.state("doing").working


def test_states_are_editable_data(board, session):
    qa = board.add_state({"title": "QA", "task": True, "working": True,
                          "wip": {"limit": 2, "unit": "points", "hard": True}}, position=5)
    assert [s.id for s in board.states()][4:7] == ["doing", "qa", "needs-review"]
    assert qa.to_json()["wip"] == {"limit": 2, "unit": "points", "hard": True}
    board.update_state("qa", {"title": "Quality", "wip": None})
    assert board.state("qa").title == "Quality" and board.state("qa").wip is None
    order = [s.id for s in board.states()]
    board.reorder_states(order[::-1])
    assert [s.id for s in board.states()] == order[::-1]
    board.remove_state("qa")
    session.commit()
    with pytest.raises(NotFound):
        board.state("qa")
    # Same title again: a fresh unique id.
    assert board.add_state({"title": "Backlog"}).id == "backlog-2"


def test_state_edits_are_checked(board):
    with pytest.raises(BadInput, match="title"):
        board.add_state({"title": "  "})
    with pytest.raises(BadInput, match="wip.unit"):
        board.add_state({"title": "X", "wip": {"limit": 1, "unit": "hours"}})
    with pytest.raises(BadInput, match="wip.limit"):
        board.update_state("doing", {"wip": {"limit": 0}})
    with pytest.raises(BadInput, match="working"):
        board.update_state("doing", {"working": "yes"})
    with pytest.raises(BadInput, match="id"):
        board.add_state({"title": "X", "id": "backlog"})
    with pytest.raises(BadInput, match="states"):
        board.reorder_states(["backlog"])
    with pytest.raises(NotFound, match="nope"):
        board.update_state("nope", {"title": "X"})


def test_a_state_holding_cards_is_neither_removed_nor_switched(board):
    f = feature(board)
    with pytest.raises(RuleViolation) as err:
        board.remove_state("backlog")
    assert err.value.rule == "state-not-empty"
    with pytest.raises(RuleViolation, match="switch tiers"):
        board.update_state("backlog", {"task": True})
    board.move(f.id, "ready")
    board.remove_state("backlog")


def test_the_last_feature_state_stays():
    board = Board("b", "B", [{"title": "Only"}, {"title": "T", "task": True}])
    with pytest.raises(RuleViolation) as err:
        board.remove_state("only")
    assert err.value.rule == "last-state"
    with pytest.raises(RuleViolation):
        board.update_state("only", {"task": True})
    with pytest.raises(BadInput, match="feature state"):
        Board("b", "B", [{"title": "T", "task": True}])


def test_cards_take_their_tier_s_first_state_and_json_shape(board):
    f = feature(board, "Sign-up", description="<p>Let people <b>in</b></p>", size=5)
    t = task(board, f, "Form", blocked="waiting for design", assignee="ann")
    assert f.state == "backlog" and t.state == "ready-task"
    assert f.to_json() == {"id": f.id, "title": "Sign-up",
                           "description": "<p>Let people <b>in</b></p>", "size": 5,
                           "parent": None, "state": "backlog", "blocked": None,
                           "assignee": None, "position": f.position}
    full = t.to_json_full()
    assert full["parent"] == f.id and full["blocked"] == "waiting for design"
    assert full["history"][0]["event"] == "created" and full["comments"] == []
    assert board.card(t.id) is t and board.tasks(f.id) == [t]


def test_descriptions_and_comments_are_sanitised(board):
    f = feature(board, description='<p onclick="steal()">Hi<script>alert(1)</script>'
                                   '<a href="javascript:steal()">x</a></p>')
    assert "script" not in f.description and "onclick" not in f.description
    assert "javascript" not in f.description and "Hi" in f.description
    board.update_card(f.id, {"description": "<img src=x onerror=alert(1)>"})
    assert "onerror" not in f.description
    comment = board.comment(f.id, "<b>ok</b><script>x()</script>", by="ann", now=100.0)
    assert comment == {"at": 100.0, "by": "ann", "body": "<b>ok</b>"}
    assert f.to_json_full()["comments"][0]["at"].startswith("1970-01-01T00:01:40")


def test_without_nh3_text_is_escaped():
    from amphora_kanban.text import escape_html
    assert escape_html('<script>alert("x")</script>') == \
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"


@pytest.mark.parametrize("fields, field", [
    ({"title": ""}, "title"), ({"title": 3}, "title"), ({"title": "x" * 201}, "title"),
    ({"title": "X", "size": -1}, "size"), ({"title": "X", "size": True}, "size"),
    ({"title": "X", "size": "3"}, "size"), ({"title": "X", "blocked": 1}, "blocked"),
    ({"title": "X", "assignee": 5}, "assignee"), ({"title": "X", "colour": "red"}, "colour"),
    ({"title": "X", "position": -1}, "position"), ({}, "title"),
])
def test_bad_card_fields_name_the_field(board, fields, field):
    with pytest.raises(BadInput) as err:
        board.add_card(fields)
    assert err.value.field == field


def test_update_checks_everything_first(board):
    f = feature(board, "Keep")
    with pytest.raises(BadInput, match="size"):
        board.update_card(f.id, {"title": "Changed", "size": "big"})
    assert f.title == "Keep"
    with pytest.raises(BadInput, match="parent"):
        board.update_card(f.id, {"parent": None})
    with pytest.raises(NotFound):
        board.update_card("missing", {"title": "x"})


def test_two_tier_rules(board):
    f = feature(board, "F")
    g = feature(board, "G")
    t = task(board, f)
    cases = [
        (lambda: board.move(f.id, "doing"), "feature-state"),
        (lambda: board.move(t.id, "ready", parent=f.id), "task-state"),
        (lambda: board.move(g.id, "doing", parent=t.id), "two-levels"),
        (lambda: board.move(g.id, "doing", parent=g.id), "two-levels"),
        (lambda: board.move(f.id, "doing", parent=g.id), "feature-with-tasks"),
        (lambda: board.add_card({"title": "X", "state": "doing"}), "feature-state"),
        (lambda: board.add_card({"title": "X", "parent": f.id, "state": "ready"}),
         "task-state"),
    ]
    for attempt, rule in cases:
        with pytest.raises(RuleViolation) as err:
            attempt()
        assert err.value.rule == rule, rule
        assert rule in str(err.value)
    with pytest.raises(NotFound):
        board.move(g.id, "doing", parent="missing")
    # Allowed: an empty feature becomes a task, a task becomes a feature.
    board.move(g.id, "doing", parent=f.id)
    board.move(t.id, "ready", parent=None)
    assert (g.parent, t.parent) == (f.id, None)


def test_move_orders_by_position(board):
    cards = [feature(board, str(i)) for i in range(4)]
    column = lambda: [c.title for c in board.cards() if c.state == "backlog"]  # noqa: E731
    assert column() == ["0", "1", "2", "3"]
    board.move(cards[3].id, "backlog", position=0)
    assert column() == ["3", "0", "1", "2"]
    board.move(cards[0].id, "backlog", position=2)
    assert column() == ["3", "1", "0", "2"]
    board.move(cards[2].id, "ready", position=0)
    assert column() == ["3", "1", "0"]
    # Reordering within a column is no state change: no history event.
    assert [e["event"] for e in cards[0].history] == ["created"]


def test_pulling_a_task_into_a_working_state_assigns_the_mover(board):
    f = feature(board)
    t = task(board, f)
    board.move(t.id, "needs-review", parent=f.id, by="bob")
    assert t.assignee is None
    board.move(t.id, "doing", parent=f.id, by="ann")
    assert t.assignee == "ann"
    board.move(t.id, "doing", parent=f.id, position=0, by="bob")  # reorder, no pull
    assert t.assignee == "ann"
    board.move(t.id, "review", parent=f.id, by="bob")
    assert t.assignee == "bob"
    board.move(f.id, "development", by="carl")  # features are not assigned on pull
    assert f.assignee is None


@pytest.mark.parametrize("unit", ["cards", "points"])
def test_wip_limit_warns_when_soft_and_refuses_when_hard(board, unit):
    f = feature(board)
    board.update_state("doing", {"wip": {"limit": 2 if unit == "cards" else 5,
                                         "unit": unit}})
    a = task(board, f, "a", size=2)
    b = task(board, f, "b", size=3)
    c = task(board, f, "c", size=1)
    assert board.move(a.id, "doing", f.id).warnings == []
    assert board.move(b.id, "doing", f.id).warnings == []
    warned = board.move(c.id, "doing", f.id)
    assert c.state == "doing"
    [warning] = warned.warnings
    assert warning["rule"] == "wip-limit" and warning["state"] == "doing"
    assert f"3 {unit}" in warning["message"] if unit == "cards" else "6 points" in \
        warning["message"]
    # Hard: the same move is refused and nothing changes.
    board.move(c.id, "ready-task", f.id)
    board.update_state("doing", {"wip": {"limit": 2 if unit == "cards" else 5,
                                         "unit": unit, "hard": True}})
    with pytest.raises(RuleViolation) as err:
        board.move(c.id, "doing", f.id, by="ann")
    assert err.value.rule == "wip-limit"
    assert c.state == "ready-task" and c.assignee is None
    with pytest.raises(RuleViolation):
        board.add_card({"title": "d", "parent": f.id, "state": "doing"})
    # Moving within the full state is fine.
    assert board.move(a.id, "doing", f.id, position=0).warnings == []


def test_progress_rolls_up_task_points(board):
    f = feature(board)
    a = task(board, f, "a", size=3)
    task(board, f, "b", size=5)
    assert board.progress(f.id) == {"complete": 0, "total": 8}
    board.move(a.id, "done", f.id)
    assert board.progress(f.id) == {"complete": 3, "total": 8}
    board.update_card(a.id, {"size": 4})
    assert board.progress(f.id) == {"complete": 4, "total": 9}
    with pytest.raises(NotFound):
        board.progress("missing")


def test_delete_a_feature_deletes_its_tasks(board):
    f = feature(board)
    t = task(board, f)
    other = feature(board)
    assert sorted(board.delete_card(f.id)) == sorted([f.id, t.id])
    assert board.cards() == [other]


def test_errors_share_one_root():
    from amphora_kanban import KanbanError
    for error in (NotFound("card", "x"), BadInput("f", "bad"), RuleViolation("r", "no")):
        assert isinstance(error, KanbanError)
    assert str(NotFound("card", "x")) == "no card 'x'"


def test_the_model_persists(kanban_db, board, session):
    f = feature(board, "Persisted")
    task(board, f)
    session.commit()
    with kanban_db.transaction() as conn:
        other = conn.root.site.board("team")
        assert [c.title for c in other.cards()] == ["Persisted", "T"]
        assert other.generation == board.generation


def test_sites_boards_lookup(session):
    site = Site("S")
    site.add_board("a-board", "A")
    with pytest.raises(BadInput, match="name"):
        site.add_board("a-board", "again")
    with pytest.raises(BadInput, match="name"):
        site.add_board("Bad Name", "x")
    with pytest.raises(NotFound):
        site.board("nope")
    site.remove_board("a-board")
    assert site.boards() == []
