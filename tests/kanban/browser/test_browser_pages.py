"""The pages around the board: signing in (and its refusals), the boards list with the
administrator's forms, and the flow metrics page."""
from __future__ import annotations

import datetime
import re
import time
from pathlib import Path
from typing import Any, Callable

from playwright.sync_api import expect

from browser_support import ADMIN, DAY, MEMBER, Kanban, flow_history, sign_in


def test_sign_in_shows_refusals_and_opens_the_page_asked_for(
        new_context: Callable[[], Any], kanban: Kanban, screenshots: Path) -> None:
    page = new_context().new_page()
    page.goto("/boards/team")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.screenshot(path=str(screenshots / "sign-in.png"), animations="disabled")

    page.get_by_label("Email").fill(MEMBER.email)
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("login-error")).to_have_text("Wrong email or password.")

    page.get_by_label("Password").fill(MEMBER.password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{kanban.url}/boards/team")
    expect(page.get_by_test_id("column-backlog")).to_be_visible()
    expect(page.get_by_test_id("signed-in-as")).to_have_text(MEMBER.name)

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login\?next="))

    # Too many failures: the page says so (429) instead of "wrong password".
    for _ in range(10):
        page.get_by_label("Email").fill("mallory@example.org")
        page.get_by_label("Password").fill("guess-guess")
        page.get_by_role("button", name="Sign in").click()
        error = page.get_by_test_id("login-error")
        expect(error).to_be_visible()
        expect(page.get_by_role("button", name="Sign in")).to_be_enabled()
        if "Too many" in error.inner_text():
            break
    expect(page.get_by_test_id("login-error")).to_contain_text("Too many sign-in attempts")


def test_an_administrator_creates_a_board_and_invites_a_person(
        new_context: Callable[[], Any], kanban: Kanban) -> None:
    context = new_context()
    sign_in(context, ADMIN)
    page = context.new_page()
    page.goto("/")
    expect(page.get_by_test_id("board-team")).to_have_text(re.compile("Team board"))
    page.get_by_label("Title").fill("Platform Team")
    expect(page.get_by_label("Name")).to_have_value("platform-team")
    page.get_by_test_id("board-create").click()
    expect(page.get_by_test_id("board-platform-team")).to_be_visible()

    page.get_by_label("Email").fill("linus@example.org")
    page.get_by_test_id("invite-create").click()
    link = page.get_by_test_id("invite-link")
    expect(link).to_have_value(re.compile(r"/invite/"))

    newcomer = accept_invitation(new_context(), link.input_value(), "Linus Newcomer")
    expect(newcomer.get_by_test_id("signed-in-as")).to_have_text("Linus Newcomer")
    expect(newcomer.get_by_test_id("board-platform-team")).to_be_visible()
    expect(newcomer.locator("#admin")).to_be_hidden()

    # The link was for one use only.
    again = accept_invitation(new_context(), link.input_value(), "Someone Else")
    expect(again.get_by_test_id("invite-error")).to_contain_text("no longer valid")


def accept_invitation(context: Any, link: str, name: str) -> Any:
    """A page that filled in the invitation form at ``link`` and sent it."""
    page = context.new_page()
    page.goto(link)
    page.get_by_label("Your name").fill(name)
    page.get_by_label("Password", exact=True).fill("penguins-42")
    page.get_by_label("Password again").fill("penguins-42")
    page.get_by_role("button", name="Set password and sign in").click()
    return page


def test_the_metrics_page_draws_flow_charts(open_board: Callable[..., Any]) -> None:
    page, api = open_board()
    feature = api.add("Search", size=5, state="development")
    tasks = [api.add(title, parent=feature["id"]) for title in ("Index", "Query", "Ranking")]
    for task in tasks[:2]:
        api.move(task["id"], "doing", parent=feature["id"])
        api.move(task["id"], "done", parent=feature["id"])
    api.move(tasks[2]["id"], "doing", parent=feature["id"])
    api.move(feature["id"], "deployed")
    api.add("Next idea")

    page.get_by_test_id("metrics-link").click()
    expect(page).to_have_url(re.compile(r"/boards/team/metrics$"))
    cfd = page.get_by_test_id("cfd-tasks")
    expect(cfd).to_be_visible()
    assert cfd.evaluate("svg => svg.namespaceURI") == "http://www.w3.org/2000/svg"
    # Bands for the states holding tasks today: Doing and Done.
    expect(cfd.locator("polygon")).to_have_count(2)
    expect(page.get_by_test_id("cfd-features").locator("polygon")).to_have_count(2)
    expect(page.get_by_test_id("throughput-chart").locator("rect")).to_have_count(1)
    # Completed today: the feature and two of its tasks.
    expect(page.get_by_test_id("tile-throughput").locator(".tile-value")).to_have_text("3")
    expect(page.get_by_test_id("lead-table")).to_contain_text("Search")


def test_the_metrics_page_charts_three_weeks_of_flow(
        new_context: Callable[[], Any], screenshots: Path) -> None:
    context = new_context()
    api = sign_in(context, ADMIN)
    now = time.time()
    data = flow_history(api.board()["states"], now)
    response = context.request.post("/api/boards/import", data={"data": data},
                                    headers=api.headers)
    assert response.status == 201, response.text()

    first = datetime.date.fromtimestamp(now - 21 * DAY)
    last = datetime.date.fromtimestamp(now)
    completed = {}
    for card in data["cards"]:
        done = next((e["at"] for e in card["history"] if e["complete"]), None)
        if done is not None:
            completed[card["title"]] = (done, done - card["history"][0]["at"])
    days = {datetime.datetime.fromtimestamp(done, datetime.timezone.utc).date()
            for done, _ in completed.values()}
    slowest = max(completed, key=lambda title: completed[title][1])

    page = context.new_page()
    page.goto(f"/boards/flow/metrics?from={first}&to={last}")
    expect(page.get_by_test_id("range-from")).to_have_value(first.isoformat())
    expect(page.get_by_test_id("throughput-chart").locator("rect")).to_have_count(len(days))
    expect(page.get_by_test_id("tile-throughput").locator(".tile-value")).to_have_text(
        str(len(completed)))
    expect(page.get_by_test_id("lead-table").locator("tbody tr").first).to_contain_text(slowest)
    assert page.get_by_test_id("cfd-features").locator("polygon").count() >= 4
    assert page.get_by_test_id("cfd-tasks").locator("polygon").count() >= 4
    page.screenshot(path=str(screenshots / "metrics.png"), animations="disabled", full_page=True)
