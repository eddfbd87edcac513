"""What the web app added to the model: a board's creation time, local email addresses."""
from __future__ import annotations

import pytest

from amphora_kanban import BadInput, Board, Site


def test_a_board_records_when_it_was_made():
    assert Board("team", "Team", now=1_700_000_000.0).created == 1_700_000_000.0


def test_a_board_older_than_the_attribute_dates_from_its_earliest_card_event():
    board = Board("team", "Team")
    del board._created  # as a board stored before boards recorded it
    assert board.created is None
    first = board.add_card({"title": "First"}, now=1_600_000_100.0).card
    board.add_card({"title": "Second"}, now=1_600_000_200.0)
    board.archive(first.id, now=1_600_000_300.0)  # the bag counts too
    assert board.created == 1_600_000_100.0


def test_an_email_address_may_name_a_host_without_a_dot():
    site = Site("Site")
    assert site.add_user("Admin@LocalHost", "Admin").email == "admin@localhost"
    for address in ("admin@", "@localhost", "admin@local..host", "admin@.host", "a b@host"):
        with pytest.raises(BadInput):
            site.add_user(address, "X")
