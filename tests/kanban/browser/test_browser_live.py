"""Two people on one board see each other's changes as they happen; the time slider
shows the board as it was."""
from __future__ import annotations

import math
import time
from typing import Any, Callable

from playwright.sync_api import expect

from browser_support import MEMBER, drag


def test_two_browsers_on_one_board_see_each_others_moves_live(
        open_board: Callable[..., Any]) -> None:
    ada, _ = open_board()
    grace, grace_api = open_board(MEMBER)
    for page in (ada, grace):
        expect(page.get_by_test_id("live-status")).to_have_text("Live")

    box = ada.get_by_test_id("quick-add-backlog")
    box.fill("Shared calendar [2]")
    box.press("Enter")
    card = grace.get_by_test_id("cards-backlog").get_by_text("Shared calendar", exact=True)
    expect(card).to_be_visible()
    id = grace.get_by_test_id("cards-backlog").locator("[data-card]").first.get_attribute("data-card")

    drag(grace.get_by_test_id(f"card-{id}"), grace.get_by_test_id("cards-development"))
    expect(ada.get_by_test_id("cards-development").get_by_test_id(f"card-{id}")).to_be_visible()
    expect(ada.get_by_test_id(f"taskboard-{id}")).to_be_visible()

    # A task Grace adds, and one added through the API, show up on Ada's page.
    task_box = grace.get_by_test_id(f"quick-add-{id}-ready-task")
    task_box.fill("Pick a date library [1]")
    task_box.press("Enter")
    grace_api.add("Time zones", parent=id)
    expect(ada.get_by_test_id(f"cards-{id}-ready-task").locator("[data-card]")).to_have_count(2)

    drag(ada.get_by_test_id(f"cards-{id}-ready-task").get_by_text("Time zones"), 
        ada.get_by_test_id(f"cards-{id}-doing"))
    moved = grace.get_by_test_id(f"cards-{id}-doing").locator("[data-card]")
    expect(moved).to_have_count(1)
    expect(moved.locator(".assignee")).to_have_attribute("title", "Ada Lovelace")
    # Neither page was reloaded: the quick-add box Grace typed in is still focused.
    expect(grace.get_by_test_id(f"quick-add-{id}-ready-task")).to_be_focused()


def _next_second() -> int:
    """The next whole second (the slider moves in seconds), once the clock is past it."""
    second = math.ceil(time.time() + 0.05)
    while time.time() < second + 0.25:
        time.sleep(0.05)
    return second


def test_the_time_slider_shows_an_older_board_read_only(
        open_board: Callable[..., Any]) -> None:
    page, api = open_board()
    early = api.add("Early feature")
    then = _next_second()
    late = api.add("Late feature")
    api.move(early["id"], "ready")
    expect(page.get_by_test_id(f"card-{late['id']}")).to_be_visible()

    page.get_by_test_id("time-slider").fill(str(then))
    banner = page.get_by_test_id("time-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("As of")
    expect(page.get_by_test_id(f"card-{late['id']}")).to_have_count(0)
    expect(page.get_by_test_id("cards-backlog").get_by_test_id(f"card-{early['id']}")).to_be_visible()
    expect(page.get_by_test_id("quick-add-backlog")).to_have_count(0)
    assert "at=" in page.url

    # The URL's ?at= opens the same past board.
    page.reload()
    expect(page.get_by_test_id("time-banner")).to_be_visible()
    expect(page.get_by_test_id(f"card-{late['id']}")).to_have_count(0)
    expect(page.get_by_test_id("cards-backlog").get_by_test_id(f"card-{early['id']}")).to_be_visible()

    page.get_by_test_id("back-to-now").click()
    expect(page.get_by_test_id("time-banner")).to_be_hidden()
    expect(page.get_by_test_id(f"card-{late['id']}")).to_be_visible()
    expect(page.get_by_test_id("cards-ready").get_by_test_id(f"card-{early['id']}")).to_be_visible()
    assert "at=" not in page.url
    expect(page.get_by_test_id("live-status")).to_have_text("Live")
