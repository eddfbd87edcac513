"""Board settings in a real browser: an administrator edits the columns (others see the
change live; a member has no settings), and a board exported from its page is imported
under a new name on the boards page."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from playwright.sync_api import expect

from browser_support import MEMBER, BoardApi


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
    reads: list[str] = []
    grace.on("request", lambda request: reads.append(request.url)
             if request.url.endswith("/api/boards/team") else None)
    panel.get_by_test_id("settings-save").click()
    expect(panel).to_be_hidden()

    columns = ["Backlog", "Selected", "Development", "Design review", "Acceptance", "Deployed"]
    for page in (ada, grace):
        expect(feature_columns(page)).to_have_text(columns)
        expect(page.get_by_test_id("wip-design-review")).to_have_text("0/5 pts")
    # Grace's page took the new columns from the live stream alone (no reload, not even of
    # the board's JSON), and its state filter lists them too.
    assert reads == []
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


def test_a_board_exported_from_its_page_is_imported_under_a_new_name(
        open_board: Callable[..., Any], tmp_path: Path, screenshots: Path) -> None:
    page, api = open_board()
    feature = api.add("Sign-up", size=5, state="development")
    api.add("Validate the email", parent=feature["id"], size=3, state="doing")
    api.add("Welcome mail", size=2)
    api.post(f"/cards/{feature['id']}/comments", {"body": "Keep it short."})

    page.get_by_test_id("open-settings").click()
    with page.expect_download() as download:
        page.get_by_test_id("export-link").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name.startswith("team-") and saved.suffix == ".json"
    assert json.loads(saved.read_text())["board"]["name"] == "team"
    page.keyboard.press("Escape")

    page.goto("/")
    form = page.get_by_test_id("import-form")
    form.get_by_label("Export file").set_input_files(saved)
    form.get_by_test_id("import-submit").click()
    # The file's own name is taken: the refusal says so and the form keeps its file.
    expect(form.get_by_test_id("import-error")).to_contain_text("team")
    form.get_by_label("Import as").fill("team-copy")
    form.get_by_test_id("import-submit").click()
    expect(page.get_by_test_id("board-team-copy")).to_be_visible()
    expect(form.get_by_test_id("import-error")).to_be_hidden()
    page.screenshot(path=str(screenshots / "boards.png"), animations="disabled", full_page=True)
    page.get_by_test_id("board-team-copy").click()
    expect(page.get_by_test_id("column-backlog")).to_be_visible()
    expect(page.get_by_test_id(f"taskboard-{feature['id']}")).to_contain_text("Validate the email")

    copy = BoardApi(api.request, api.headers["X-CSRF-Token"], "team-copy")

    def cards(board: BoardApi) -> list[tuple[Any, ...]]:
        return sorted((c["id"], c["title"], c["size"], c["state"], c["parent"],
                       len(board.card(c["id"])["history"]),
                       [m["body"] for m in board.card(c["id"])["comments"]])
                      for c in board.board()["cards"])

    assert len(cards(copy)) == 3
    assert cards(copy) == cards(api)
