"""Board settings in a real browser: an administrator edits the columns (others see the
change live; a member has no settings)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from playwright.sync_api import expect

from browser_support import MEMBER


def feature_columns(page: Any) -> Any:
    return page.locator(".board > .column .column-title h2")


def test_an_administrator_edits_the_columns_and_others_see_them_live(
        open_board: Callable[..., Any], screenshots: Path) -> None:
    ada, api = open_board()
    grace, _ = open_board(MEMBER)
    expect(grace.get_by_test_id("live-status")).to_have_text("Live")
    expect(grace.get_by_test_id("open-settings")).to_be_hidden()
    waiting = api.add("Onboarding tour")
    expect(ada.get_by_test_id(f"card-{waiting['id']}")).to_be_visible()

    ada.get_by_test_id("open-settings").click()
    panel = ada.get_by_test_id("settings-panel")
    expect(panel.get_by_test_id("state-row-backlog")).to_contain_text("1 card")
    panel.get_by_test_id("state-row-ready").get_by_label("Title").fill("Selected")
    panel.get_by_test_id("state-row-deploying").get_by_role("button", name="Remove").click()
    expect(panel.get_by_test_id("state-row-deploying")).to_have_count(0)

    panel.get_by_test_id("add-feature-state").click()
    design = panel.get_by_test_id("state-row-new-1")
    expect(design.get_by_label("Title")).to_be_focused()
    design.get_by_label("Title").fill("Design review")
    design.get_by_label("Working").check()
    design.get_by_label("WIP limit").fill("5")
    design.get_by_label("Unit").select_option("points")
    design.get_by_label("Hard").check()
    for _ in range(2):  # after Deployed and Acceptance: behind Development
        design.get_by_role("button", name="Move up").click()
    expect(design.get_by_role("button", name="Move up")).to_be_focused()

    panel.get_by_test_id("add-task-state").click()
    testing = panel.get_by_test_id("state-row-new-2")
    testing.get_by_label("Title").fill("Testing")
    testing.get_by_role("button", name="Move up").click()  # before Done
    assert panel.get_by_test_id("task-states").get_by_label("Title").evaluate_all(
        "boxes => boxes.map((box) => box.value)") == [
        "Ready", "Doing", "Needs review", "Review", "Testing", "Done"]
    panel.locator(".panel-body").evaluate("body => { body.scrollTop = 0; }")
    ada.screenshot(path=str(screenshots / "board-settings.png"), animations="disabled")
    panel.get_by_test_id("settings-save").click()
    expect(panel).to_be_hidden()

    columns = ["Backlog", "Selected", "Development", "Design review", "Acceptance", "Deployed"]
    for page in (ada, grace):
        expect(feature_columns(page)).to_have_text(columns)
        expect(page.get_by_test_id("wip-design-review")).to_have_text("0/5 pts")
    # Grace's page was not reloaded: its state filter lists the new columns too.
    expect(grace.locator("#filter-state optgroup[label=Features] option")).to_have_text(columns)
    expect(grace.locator("#filter-state optgroup[label=Tasks] option")).to_contain_text(["Testing"])
    states = {s["id"]: s for s in api.board()["states"]}
    assert [id for id, s in states.items() if not s["task"]] == [
        "backlog", "ready", "development", "design-review", "acceptance", "deployed"]
    assert states["design-review"]["working"] is True
    assert states["design-review"]["wip"] == {"limit": 5, "unit": "points", "hard": True}
    assert states["ready"]["title"] == "Selected"
    assert [s["title"] for s in states.values() if s["task"]][-2:] == ["Testing", "Done"]

    # A column that holds cards is not removed: the server's refusal shows, nothing changes.
    ada.get_by_test_id("open-settings").click()
    panel.get_by_test_id("state-row-backlog").get_by_role("button", name="Remove").click()
    panel.get_by_test_id("settings-save").click()
    expect(panel.get_by_test_id("settings-error")).to_have_text(
        "State 'Backlog' holds cards: move them first")
    expect(panel).to_be_visible()
    panel.get_by_role("button", name="Cancel").click()
    expect(ada.get_by_test_id("cards-backlog").get_by_test_id(f"card-{waiting['id']}")).to_be_visible()
    assert [s["id"] for s in api.board()["states"]] == list(states)
