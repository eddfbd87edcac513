"""Generations and deltas for live updates; concurrent writers to one board."""
import pytest

import amphora
from amphora_kanban import BadInput, RuleViolation, Site
from amphora_kanban.changes import HEAD_SIZE, KEEP

from kanban_sessions import open_session


def test_every_change_bumps_the_generation(board):
    g = board.generation
    f = board.add_card({"title": "F"}).card
    board.update_card(f.id, {"size": 3})
    board.move(f.id, "ready")
    board.comment(f.id, "hi")
    board.update_state("ready", {"title": "Ready!"})
    assert board.generation == g + 5


def test_a_client_at_n_gets_exactly_what_changed(board, session):
    f = board.add_card({"title": "F"}).card
    t = board.add_card({"title": "T", "parent": f.id}).card
    untouched = board.add_card({"title": "U"}).card
    session.commit()
    seen = board.generation
    assert board.changes_since(seen) == {"generation": seen, "full": False, "states": [],
                                         "cards": [], "removed": []}
    board.move(f.id, "ready")
    board.update_state("doing", {"wip": {"limit": 1}})
    new = board.add_card({"title": "N"}).card
    board.delete_card(new.id)
    gone = board.add_card({"title": "Gone"}).card
    session.commit()
    board.delete_card(gone.id)
    session.commit()
    delta = board.changes_since(seen)
    assert delta["generation"] == board.generation == seen + 6
    assert delta["full"] is False
    assert delta["cards"] == [f.to_json()]
    assert delta["states"] == [board.state("doing").to_json()]
    assert delta["removed"] == sorted([new.id, gone.id])
    assert untouched.id not in str(delta) and t.id not in str(delta)
    # Archiving removes the feature and its tasks; restoring brings them back.
    seen = board.generation
    board.archive(f.id)
    assert sorted(board.changes_since(seen)["removed"]) == sorted([f.id, t.id])
    board.restore(f.id)
    delta = board.changes_since(seen)
    assert delta["removed"] == [] and {c["id"] for c in delta["cards"]} == {f.id, t.id}


def test_a_too_old_client_gets_the_whole_board(board, session):
    f = board.add_card({"title": "F"}).card
    session.commit()
    start = board.generation
    for i in range(KEEP + 2 * HEAD_SIZE):
        board.update_card(f.id, {"size": i % 7})
        if i % 50 == 0:
            session.commit()
    session.commit()
    # The log keeps the last KEEP changes at least, as small pages plus a head.
    assert board.changes_since(board.generation - KEEP)["full"] is False
    assert len(board._log.head) <= HEAD_SIZE
    whole = board.changes_since(start)
    assert whole["full"] is True
    assert whole["cards"] == [f.to_json()] and len(whole["states"]) == 11
    assert whole["removed"] == []
    assert board.changes_since(board.generation + 1)["full"] is True
    with pytest.raises(BadInput, match="generation"):
        board.changes_since("12")


def test_deltas_reach_across_log_pages(board, session):
    cards = [board.add_card({"title": str(i)}).card for i in range(HEAD_SIZE + 5)]
    session.commit()
    seen = board.generation
    for card in cards:
        board.move(card.id, "ready")
    session.commit()
    assert board._log.flushes >= 1
    delta = board.changes_since(seen)
    assert sorted(c["id"] for c in delta["cards"]) == sorted(c.id for c in cards)
    assert board.changes_since(seen + 3)["cards"] == [c.to_json() for c in cards[3:]]


@pytest.fixture
def two_processes(tmp_path):
    """Two databases on one SQLite file (as two processes would have) and a board with
    two features."""
    uri = f"sqlite:///{tmp_path}/shared.db"
    first, second = amphora.open(uri), amphora.open(uri)
    with first.transaction() as conn:
        board = Site("S").add_board("team", "Team")
        conn.root.site = board  # the board alone is enough here
        ids = [board.add_card({"title": t}).card.id for t in ("a", "b")]
    yield first, second, ids
    first.close()
    second.close()


def test_moves_of_different_cards_by_two_connections_both_commit(two_processes):
    first, second, (a, b) = two_processes
    one, two = open_session(first), open_session(second)
    start = one.root.site.generation
    one.root.site.move(a, "ready", by="ann")
    two.root.site.move(b, "development", by="bob")
    added = two.root.site.add_card({"title": "c"}).card.id
    one.commit()
    two.commit()  # the change log and the cards' BTree merge: no conflict
    with first.transaction() as conn:
        board = conn.root.site
        assert board.card(a).state == "ready" and board.card(b).state == "development"
        assert board.card(added).title == "c"
        assert board.generation == start + 3
        # Generations follow commit order: a client that saw the first commit gets
        # the second one's changes.
        after_first = board.changes_since(start + 1)
        assert sorted(c["id"] for c in after_first["cards"]) == sorted([b, added])
        assert {c["id"] for c in board.changes_since(start)["cards"]} == {a, b, added}
    for s in (one, two):
        s.conn.close()


def test_when_both_fill_a_log_page_one_retries_cleanly(two_processes):
    first, second, (a, b) = two_processes
    with first.transaction() as conn:
        board = conn.root.site
        while len(board._log.head) < HEAD_SIZE:
            board.update_card(a, {"size": 2})
        start = board.generation
    one, two = open_session(first), open_session(second)
    one.root.site.move(a, "ready")
    two.root.site.move(b, "ready")
    one.commit()
    with pytest.raises(amphora.ConflictError):
        two.commit()
    two.abort()
    two.root.site.move(b, "ready")  # the retry, on the fresh state
    two.commit()
    with first.transaction() as conn:
        board = conn.root.site
        assert board.generation == start + 2
        assert {c["id"] for c in board.changes_since(start)["cards"]} == {a, b}
    for s in (one, two):
        s.conn.close()


def test_the_same_card_moved_twice_at_once_conflicts(two_processes):
    first, second, (a, b) = two_processes
    one, two = open_session(first), open_session(second)
    one.root.site.move(a, "ready")
    two.root.site.move(a, "development")
    one.commit()
    with pytest.raises(amphora.ConflictError):
        two.commit()
    two.abort()
    for s in (one, two):
        s.conn.close()


def moved_into_a_limited_state_at_once(two_processes, hard):
    """Two connections, each moving a different card into "ready" (room for one more
    card), the first committed: the sessions (the second not yet committed), the ids."""
    first, second, (a, b) = two_processes
    with first.transaction() as conn:
        conn.root.site.update_state("ready", {"wip": {"limit": 1, "hard": hard}})
    one, two = open_session(first), open_session(second)
    one.root.site.move(a, "ready")
    two.root.site.move(b, "ready")
    one.commit()
    return one, two, (a, b)


def in_ready(db):
    with db.transaction() as conn:
        return sorted(c.id for c in conn.root.site.cards() if c.state == "ready")


def test_a_hard_limit_holds_when_two_cards_enter_at_once(two_processes):
    """Each connection counts the state without the other's card, so both pass the
    check; the second commit conflicts, and its retry, counting again, is refused."""
    one, two, (a, b) = moved_into_a_limited_state_at_once(two_processes, hard=True)
    with pytest.raises(amphora.ConflictError):
        two.commit()
    two.abort()
    with pytest.raises(RuleViolation) as refused:
        two.root.site.move(b, "ready")
    assert refused.value.rule == "wip-limit"
    two.abort()
    assert in_ready(two_processes[0]) == [a]
    for s in (one, two):
        s.conn.close()


def test_a_soft_limit_lets_two_cards_enter_at_once(two_processes):
    """Only hard limits serialise entries: over a soft one both moves commit."""
    one, two, (a, b) = moved_into_a_limited_state_at_once(two_processes, hard=False)
    two.commit()
    assert in_ready(two_processes[0]) == sorted([a, b])
    for s in (one, two):
        s.conn.close()
