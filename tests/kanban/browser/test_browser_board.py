"""The board page in a real browser: drag and drop, task boards, quick-add, WIP limits,
the card panel, the bag, and a reload that shows what the server kept."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from playwright.sync_api import expect

from browser_support import MEMBER, BoardApi, drag


def column_cards(page: Any, column: str) -> Any:
    return page.get_by_test_id(f"cards-{column}").locator(":scope > [data-card]")


def quick_add(page: Any, testid: str, text: str) -> None:
    box = page.get_by_test_id(f"quick-add-{testid}")
    box.fill(text)
    box.press("Enter")
    expect(box).to_have_value("")


def card_in(page: Any, column: str, title: str) -> Any:
    card = column_cards(page, column).filter(has=page.get_by_text(title, exact=True))
    expect(card).to_have_count(1)
    return card


def test_a_feature_dragged_into_development_opens_its_task_board(
        open_board: Callable[..., Any], screenshots: Path) -> None:
    page, api = open_board()
    quick_add(page, "backlog", "Sign-up form [5]")
    feature = card_in(page, "backlog", "Sign-up form")
    id = feature.get_attribute("data-card")
    expect(page.get_by_test_id(f"size-{id}")).to_have_text("5")
    expect(page.get_by_test_id(f"taskboard-{id}")).to_have_count(0)

    drag(feature, page.get_by_test_id("cards-development"))
    expect(column_cards(page, "development")).to_have_count(1)
    expect(column_cards(page, "backlog")).to_have_count(0)
    expect(page.get_by_test_id(f"taskboard-{id}")).to_be_visible()
    assert api.card(id)["state"] == "development"

    # Tasks by quick-add: "Title [3]" is a task of 3 points, no size is 1 point.
    quick_add(page, f"{id}-ready-task", "Validate the email [3]")
    quick_add(page, f"{id}-ready-task", "Store the account")
    expect(column_cards(page, f"{id}-ready-task")).to_have_count(2)
    tasks = {c["title"]: c for c in api.board()["cards"] if c["parent"] == id}
    assert {t: (c["size"], c["state"]) for t, c in tasks.items()} == {
        "Validate the email": (3, "ready-task"), "Store the account": (1, "ready-task")}

    # A task pulled into a working state is the mover's; in Done it counts as progress.
    validate = page.get_by_test_id(f"card-{tasks['Validate the email']['id']}")
    drag(validate, page.get_by_test_id(f"cards-{id}-doing"))
    expect(column_cards(page, f"{id}-doing")).to_have_count(1)
    expect(page.get_by_test_id(f"assignee-{tasks['Validate the email']['id']}")
           ).to_have_attribute("title", "Ada Lovelace")
    drag(validate, page.get_by_test_id(f"cards-{id}-done"))
    expect(page.get_by_test_id(f"progress-{id}")).to_contain_text("3/4 pts")
    assert api.card(id)["progress"] == {"complete": 3, "total": 4}

    # Ordering: the second task dropped in front of the first lands first.
    store = page.get_by_test_id(f"card-{tasks['Store the account']['id']}")
    drag(store, page.get_by_test_id(f"cards-{id}-done"),
                  target_position={"x": 20, "y": 4})
    expect(column_cards(page, f"{id}-done").first).to_contain_text("Store the account")
    done = [c["title"] for c in api.board()["cards"]
            if c["parent"] == id and c["state"] == "done"]
    assert done == ["Store the account", "Validate the email"]

    # A task moves into another feature's task board.
    other = api.add("Password reset", state="development")
    expect(page.get_by_test_id(f"taskboard-{other['id']}")).to_be_visible()
    drag(store, page.get_by_test_id(f"cards-{other['id']}-review"))
    expect(column_cards(page, f"{other['id']}-review")).to_have_count(1)
    moved = api.card(tasks["Store the account"]["id"])
    assert (moved["parent"], moved["state"]) == (other["id"], "review")
    expect(page.get_by_test_id(f"progress-{id}")).to_contain_text("3/3 pts")

    fill_the_board(api, id)
    expect(page.get_by_test_id("wip-warning-acceptance")).to_be_visible()
    page.mouse.move(0, 0)
    page.screenshot(path=str(screenshots / "board.png"), animations="disabled")
    page.emulate_media(color_scheme="dark")
    page.screenshot(path=str(screenshots / "board-dark.png"), animations="disabled")

    # On a 1280x800 screen the columns scroll sideways, nothing else, and nothing overlaps.
    page.emulate_media(color_scheme="light")
    page.set_viewport_size({"width": 1280, "height": 800})
    assert overlaps(page) == []
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    toolbar = page.locator("#toolbar").bounding_box()
    assert toolbar is not None and toolbar["height"] < 60, "the tool bar takes one line"
    page.screenshot(path=str(screenshots / "board-1280.png"), animations="disabled")
    page.get_by_test_id("column-deployed").scroll_into_view_if_needed()
    expect(page.get_by_test_id("column-deployed")).to_be_in_viewport()
    expect(page.get_by_test_id("open-settings")).to_be_in_viewport()


def overlaps(page: Any) -> list[str]:
    """The pairs of neighbours that overlap on the page: the top bar's and the tool bar's
    items, the board's columns, the task columns of each feature."""
    return page.evaluate("""() => {
        const rows = [".topbar > *", ".toolbar > :not(label)", ".board > .column",
                      ".taskboard > *", ".task-head > *", ".column-title > *"];
        const found = [];
        for (const selector of rows) {
            const items = [...document.querySelectorAll(selector)]
                .filter((item) => item.getClientRects().length);
            for (const [i, a] of items.entries()) {
                for (const b of items.slice(i + 1)) {
                    if (a.parentElement !== b.parentElement) continue;
                    const p = a.getBoundingClientRect(), q = b.getBoundingClientRect();
                    if (p.left < q.right - 0.5 && q.left < p.right - 0.5
                        && p.top < q.bottom - 0.5 && q.top < p.bottom - 0.5) {
                        found.push(`${a.className || a.tagName} / ${b.className || b.tagName}`);
                    }
                }
            }
        }
        return found;
    }""")


def fill_the_board(api: BoardApi, feature: str) -> None:
    """More of what a team's board holds, for the screenshot."""
    users = api.users()
    api.set_wip({"acceptance": {"limit": 1, "unit": "cards", "hard": False},
                 "doing": {"limit": 3, "unit": "cards", "hard": True}})
    for title, size in [("Dark theme", 2), ("Export to CSV", 3), ("Audit log", 8)]:
        api.add(title, size=size)
    api.add("Two-factor sign-in", size=5, state="ready")
    blocked = api.add("Invoices as PDF", size=3, state="ready")
    api.patch(blocked["id"], {"blocked": "Waiting for the legal team",
                              "assignee": users["Grace Hopper"]})
    for title in ("Search in the bag", "Team avatars"):
        api.add(title, size=3, state="acceptance")
    api.add("Board import", size=5, state="deployed")
    for title, state, size in [("Send the welcome email", "doing", 2),
                               ("Rate-limit sign-ups", "needs-review", 1)]:
        api.add(title, parent=feature, state=state, size=size)


def test_wip_limits_warn_when_soft_and_refuse_when_hard(
        open_board: Callable[..., Any]) -> None:
    page, api = open_board()
    api.set_wip({"ready": {"limit": 1, "unit": "cards", "hard": False},
                 "deploying": {"limit": 1, "unit": "cards", "hard": True}})
    first = api.add("Onboarding tour")
    second = api.add("Weekly digest")
    api.add("Release notes", state="deploying")
    expect(page.get_by_test_id("wip-ready")).to_have_text("0/1")
    # Every card on the page before the first drag (the page draws them as they come).
    expect(page.get_by_test_id(f"card-{second['id']}")).to_be_visible()
    expect(page.get_by_test_id("wip-deploying")).to_have_text("1/1")

    drag(page.get_by_test_id(f"card-{first['id']}"), page.get_by_test_id("cards-ready"))
    expect(page.get_by_test_id("wip-ready")).to_have_text("1/1")
    expect(page.get_by_test_id("wip-warning-ready")).to_have_count(0)

    # Soft: the move is done, the column is warned.
    drag(page.get_by_test_id(f"card-{second['id']}"), page.get_by_test_id("cards-ready"))
    expect(page.get_by_test_id("wip-warning-ready")).to_have_text(
        "Over the WIP limit: 2 cards for a limit of 1")
    expect(page.get_by_test_id("column-ready")).to_have_class("column over")
    expect(page.get_by_test_id("toast").filter(has_text="over its limit of 1")).to_be_visible()
    assert api.card(second["id"])["state"] == "ready"

    # Hard: the move is refused, the card stays where the server keeps it.
    drag(page.get_by_test_id(f"card-{first['id']}"), page.get_by_test_id("cards-deploying"))
    refusal = page.get_by_test_id("toast").filter(has_text="Deploying")
    expect(refusal).to_be_visible()
    expect(refusal).to_have_attribute("data-kind", "error")
    expect(column_cards(page, "deploying")).to_have_count(1)
    expect(page.get_by_test_id("cards-ready").get_by_test_id(f"card-{first['id']}")).to_be_visible()
    assert api.card(first["id"])["state"] == "ready"


def test_a_dropped_card_moves_at_once_and_a_refusal_puts_it_back(
        open_board: Callable[..., Any]) -> None:
    page, api = open_board()
    api.set_wip({"deploying": {"limit": 1, "unit": "cards", "hard": True}})
    first = api.add("Onboarding tour")
    second = api.add("Weekly digest")
    expect(page.get_by_test_id(f"card-{second['id']}")).to_be_visible()
    # The page's moves are held on their way to the server until the test lets them go,
    # to see the page before the server answers.
    held: list[Any] = []
    page.route("**/cards/*/move", lambda route: held.append(route))

    def release() -> Any:
        while not held:
            page.wait_for_timeout(20)
        with page.expect_response("**/move") as response:
            held.pop().continue_()
        return response.value

    page.get_by_test_id(f"card-{first['id']}").drag_to(page.get_by_test_id("cards-ready"))
    moved = page.get_by_test_id("cards-ready").get_by_test_id(f"card-{first['id']}")
    expect(moved).to_have_attribute("aria-busy", "true")
    expect(column_cards(page, "backlog")).to_have_count(1)
    assert api.card(first["id"])["state"] == "backlog"
    assert release().ok
    assert api.card(first["id"])["state"] == "ready"
    expect(moved).not_to_have_attribute("aria-busy", "true")

    # Meanwhile someone fills the hard-limited column: the server refuses the move, and
    # the card goes back where it was.
    page.get_by_test_id(f"card-{second['id']}").drag_to(page.get_by_test_id("cards-deploying"))
    expect(page.get_by_test_id("cards-deploying").get_by_test_id(f"card-{second['id']}")).to_be_visible()
    api.add("Hotfix", state="deploying")
    expect(column_cards(page, "deploying")).to_have_count(2)
    assert release().status == 409
    expect(page.get_by_test_id("toast").filter(has_text="Deploying")).to_be_visible()
    expect(page.get_by_test_id("cards-backlog").get_by_test_id(f"card-{second['id']}")).to_be_visible()
    expect(column_cards(page, "deploying")).to_have_text(["Hotfix1"])
    assert api.card(second["id"])["state"] == "backlog"


def test_the_card_panel_edits_comments_and_a_reload_keeps_everything(
        open_board: Callable[..., Any], screenshots: Path) -> None:
    page, api = open_board()
    feature = api.add("Notifications", size=2)
    page.get_by_test_id(f"title-{feature['id']}").click()
    panel = page.get_by_test_id("card-panel")
    expect(panel).to_be_visible()
    expect(panel.get_by_test_id("card-history")).to_contain_text("Created in Backlog by Ada Lovelace")

    panel.get_by_label("Title").fill("E-mail notifications")
    panel.get_by_label("Description").fill("Tell people when a card they follow moves.\nDaily at most.")
    panel.get_by_label("Size (points)").fill("8")
    panel.get_by_label("Assignee").select_option(label=MEMBER.name)
    panel.get_by_label("Blocked because").fill("Waiting for the mail server")
    panel.get_by_test_id("card-save").click()
    expect(panel).to_be_hidden()

    card = page.get_by_test_id(f"card-{feature['id']}")
    expect(card).to_have_class("card feature blocked")
    expect(page.get_by_test_id(f"blocked-{feature['id']}")).to_have_text("Waiting for the mail server")
    expect(page.get_by_test_id(f"assignee-{feature['id']}")).to_contain_text(MEMBER.name)
    expect(page.get_by_test_id(f"size-{feature['id']}")).to_have_text("8")

    page.get_by_test_id(f"title-{feature['id']}").click()
    panel.get_by_test_id("comment-body").fill("The mail server arrives on Monday.")
    panel.get_by_test_id("comment-submit").click()
    expect(panel.get_by_test_id("card-comments")).to_contain_text("The mail server arrives on Monday.")
    page.screenshot(path=str(screenshots / "card-panel.png"), animations="disabled")
    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()

    stored = api.card(feature["id"])
    assert (stored["title"], stored["size"], stored["blocked"]) == (
        "E-mail notifications", 8, "Waiting for the mail server")
    assert [c["body"] for c in stored["comments"]] == ["The mail server arrives on Monday."]

    # The filters: by text in the description, by assignee.
    other = api.add("Calendar view")
    expect(page.get_by_test_id(f"card-{other['id']}")).to_be_visible()
    page.keyboard.press("/")
    expect(page.get_by_test_id("filter-text")).to_be_focused()
    page.keyboard.type("daily")
    expect(page.get_by_test_id(f"card-{other['id']}")).to_have_count(0)
    expect(card).to_be_visible()
    page.get_by_test_id("filter-text").fill("")
    page.get_by_test_id("filter-assignee").select_option(label=MEMBER.name)
    expect(page.get_by_test_id(f"card-{other['id']}")).to_have_count(0)
    expect(card).to_be_visible()

    page.reload()
    card = page.get_by_test_id(f"card-{feature['id']}")
    expect(page.get_by_test_id(f"title-{feature['id']}")).to_have_text("E-mail notifications")
    expect(page.get_by_test_id(f"card-{other['id']}")).to_be_visible()
    expect(page.get_by_test_id(f"blocked-{feature['id']}")).to_have_text("Waiting for the mail server")
    expect(page.get_by_test_id(f"assignee-{feature['id']}")).to_contain_text(MEMBER.name)
    card.focus()
    page.keyboard.press("Enter")
    expect(panel.get_by_label("Description")).to_have_value(
        "Tell people when a card they follow moves.\nDaily at most.")
    expect(panel.get_by_test_id("card-comments")).to_contain_text("The mail server arrives on Monday.")

    # The keyboard's way to move a card: its state in the panel.
    panel.get_by_label("State").select_option(label="Ready")
    panel.get_by_test_id("card-save").click()
    expect(page.get_by_test_id("cards-ready").get_by_test_id(f"card-{feature['id']}")).to_be_visible()
    assert api.card(feature["id"])["state"] == "ready"


def test_an_archived_feature_is_found_by_a_word_of_its_task_and_restored(
        open_board: Callable[..., Any]) -> None:
    page, api = open_board()
    feature = api.add("Billing", size=5, state="development")
    task = api.add("Reconcile the ledger", parent=feature["id"], state="doing")
    expect(page.get_by_test_id(f"card-{task['id']}")).to_be_visible()

    page.get_by_test_id(f"title-{feature['id']}").click()
    page.get_by_test_id("card-archive").click()
    expect(page.get_by_test_id(f"card-{feature['id']}")).to_have_count(0)
    expect(page.get_by_test_id(f"card-{task['id']}")).to_have_count(0)
    assert {c["id"] for c in api.board()["cards"]} == set()

    page.get_by_test_id("open-bag").click()
    bag = page.get_by_test_id("bag-panel")
    bag.get_by_test_id("bag-search").fill("unheard-of")
    expect(bag.get_by_test_id("bag-results")).to_contain_text("Nothing in the bag matches")
    bag.get_by_test_id("bag-search").fill("ledger")
    found = bag.get_by_test_id(f"bag-item-{feature['id']}")
    expect(found).to_contain_text("Billing")
    expect(found).to_contain_text("Reconcile the ledger")
    found.get_by_test_id(f"restore-{feature['id']}").click()
    expect(found).to_have_count(0)
    # Escape empties the search box first, then closes the bag.
    page.keyboard.press("Escape")
    expect(bag.get_by_test_id("bag-search")).to_have_value("")
    expect(bag).to_be_visible()
    page.keyboard.press("Escape")
    expect(bag).to_be_hidden()

    expect(page.get_by_test_id("cards-development").get_by_test_id(f"card-{feature['id']}")
           ).to_be_visible()
    expect(page.get_by_test_id(f"cards-{feature['id']}-doing").get_by_test_id(f"card-{task['id']}")
           ).to_be_visible()
    assert {c["id"] for c in api.board()["cards"]} == {feature["id"], task["id"]}
