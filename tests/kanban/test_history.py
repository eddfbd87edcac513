"""History events, flow metrics with a fixed clock, the bag, export and import."""
import datetime
import json

import pytest

from amphora_kanban import (BadInput, NotFound, RuleViolation, export_board, flow_metrics,
                            import_board)

DAY = 86400.0
T0 = datetime.datetime(2026, 3, 2, 9, 0, tzinfo=datetime.timezone.utc).timestamp()


def flow(board):
    """Two features, three tasks, moved on known days (T0 = 2 March 2026, 09:00 UTC)."""
    f = board.add_card({"title": "F"}, by="ann", now=T0).card
    board.move(f.id, "development", by="ann", now=T0 + 1 * DAY)
    a = board.add_card({"title": "a", "parent": f.id}, now=T0 + 1 * DAY).card
    b = board.add_card({"title": "b", "parent": f.id}, now=T0 + 1 * DAY).card
    board.move(a.id, "doing", f.id, by="bob", now=T0 + 2 * DAY)
    board.move(a.id, "done", f.id, by="bob", now=T0 + 3 * DAY)
    board.move(b.id, "doing", f.id, by="ann", now=T0 + 3 * DAY)
    board.move(b.id, "done", f.id, by="ann", now=T0 + 3 * DAY + 3600)
    board.move(f.id, "deployed", by="ann", now=T0 + 5 * DAY)
    return f, a, b


def test_history_records_each_state_change(board):
    f, a, b = flow(board)
    assert [(e["event"], e["state"], e["working"], e["complete"], e["by"])
            for e in a.history] == [
        ("created", "ready-task", False, False, None),
        ("moved", "doing", True, False, "bob"),
        ("moved", "done", False, True, "bob")]
    assert a.history[1]["at"] == T0 + 2 * DAY
    assert a.to_json_full()["history"][1]["at"] == "2026-03-04T09:00:00+00:00"


def test_flow_metrics_from_history(board):
    f, a, b = flow(board)
    metrics = flow_metrics(board, datetime.date(2026, 3, 2), datetime.date(2026, 3, 7))
    assert metrics["lead_times"] == {f.id: 5 * DAY, a.id: 2 * DAY, b.id: 2 * DAY + 3600}
    assert metrics["cycle_times"] == {f.id: 4 * DAY, a.id: DAY, b.id: 3600}
    assert metrics["throughput"] == {"2026-03-05": 2, "2026-03-07": 1}
    assert metrics["cfd"] == {
        "2026-03-02": {"backlog": 1},
        "2026-03-03": {"development": 1, "ready-task": 2},
        "2026-03-04": {"development": 1, "doing": 1, "ready-task": 1},
        "2026-03-05": {"development": 1, "done": 2},
        "2026-03-06": {"development": 1, "done": 2},
        "2026-03-07": {"deployed": 1, "done": 2},
    }


def test_archive_and_restore_a_feature_with_its_tasks(board, session):
    f, a, b = flow(board)
    other = board.add_card({"title": "Other"}).card
    with pytest.raises(RuleViolation) as err:
        board.archive(a.id)
    assert err.value.rule == "archive-features"
    board.archive(f.id, by="ann", now=T0 + 6 * DAY)
    session.commit()
    assert board.cards() == [other] and board.archived() == [f]
    assert board.bagged(f.id) == (f, a, b)
    assert f.history[-1]["event"] == "archived"
    with pytest.raises(NotFound):
        board.card(a.id)
    # Archived cards leave the flow diagram the day they are bagged.
    cfd = flow_metrics(board, datetime.date(2026, 3, 8), datetime.date(2026, 3, 8))["cfd"]
    assert cfd == {"2026-03-08": {}}
    # Their state was removed meanwhile: restored into the first state of their tier.
    board.remove_state("deployed")
    assert board.restore(f.id, by="bob", now=T0 + 7 * DAY) is f
    session.commit()
    assert set(board.cards()) == {f, a, b, other} and board.archived() == []
    assert f.state == "backlog" and a.state == "done"
    assert f.history[-1]["event"] == "restored" and board.progress(f.id)["total"] == 2
    with pytest.raises(NotFound):
        board.restore(f.id)


def test_export_then_import_gives_the_same_board(board, session):
    f, a, b = flow(board)
    board.comment(a.id, "nice", by="ann", now=T0)
    board.update_state("doing", {"wip": {"limit": 3, "unit": "points", "hard": True}})
    g = board.add_card({"title": "G", "description": "<em>x</em>", "blocked": "why"}).card
    board.add_card({"title": "g1", "parent": g.id})
    board.archive(g.id, now=T0)
    exported = json.loads(json.dumps(export_board(board)))
    copy = import_board(exported, name="copy")
    session.root.site._boards["copy"] = copy
    session.commit()
    assert export_board(copy) == {**exported, "board": {"name": "copy", "title": "Team board"}}
    original, imported = board.to_json(), copy.to_json()
    assert imported["states"] == original["states"]
    assert imported["cards"] == original["cards"]
    assert [c.to_json_full() for c in copy.cards()] == [c.to_json_full() for c in board.cards()]
    assert copy.restore(g.id).title == "G"
    site_copy = session.root.site.import_board(exported, name="copy-2")
    assert site_copy.to_json()["cards"] == original["cards"]


@pytest.mark.parametrize("damage, field", [
    (lambda d: d.update(format="trello"), "format"),
    (lambda d: d.update(states="x"), "export.states"),
    (lambda d: d["states"].append({"title": ""}), "states"),
    (lambda d: d["cards"][0].update(state="nowhere"), "cards[0].state"),
    (lambda d: d["cards"][0].update(position="a b"), "cards[0].position"),
    (lambda d: d["cards"][0].update(size=-3), "cards[0].size"),
    (lambda d: d["cards"][0].update(history=[{"event": "x"}]), "cards[0].history"),
    (lambda d: d["cards"][1].update(parent="ghost"), "cards"),
    (lambda d: d["cards"].append(dict(d["cards"][0])), "cards[3].id"),
    (lambda d: d["cards"][2].update(state="doing"), "cards[2].state"),  # a feature
])
def test_import_refuses_a_damaged_export_naming_the_part(board, damage, field):
    flow(board)
    data = json.loads(json.dumps(export_board(board)))
    damage(data)
    with pytest.raises(BadInput) as err:
        import_board(data)
    assert err.value.field == field
