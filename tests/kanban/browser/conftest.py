"""Fixtures of the browser tests: Debian's chromium driven by Playwright against a real
Kanban server process on a SQLite file.

- ``browser``: one headless chromium per test module (``shutil.which("chromium")``; the
  tests fail, never skip, when it is missing);
- ``kanban``: a server started for the test, with an administrator (Ada) and a member
  (Grace) who accepted their invitations, and a board ``team`` with the default states;
- ``open_board(who)``: a new browser context signed in as ``who``, its page on the
  board, and a :class:`BoardApi` acting as that person (to arrange and check state);
- ``screenshots``: the folder the tests write screenshots to (``$KANBAN_SCREENSHOTS``,
  else ``<basetemp>/screenshots``), named at the end of the run.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from browser_support import ADMIN, MEMBER, Account, BoardApi, Kanban, sign_in, start_kanban

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
VIEWPORT = {"width": 1920, "height": 1080}
SCREENSHOTS = pytest.StashKey[Path]()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("the browser tests need Debian's chromium on PATH (apt-get install "
                    "chromium); it was not found", pytrace=False)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def kanban(tmp_path: Path) -> Iterator[Kanban]:
    server = start_kanban(f"sqlite:///{tmp_path}/kanban.db", tmp_path,
                          "--admin-email", ADMIN.email)
    try:
        token = server.invite_link.rpartition("/")[2]
        admin = server.accept(token, ADMIN.password, ADMIN.name)
        admin.post("/api/boards", json={"name": "team", "title": "Team board"}
                   ).raise_for_status()
        invitation = admin.post("/api/invitations", json={"email": MEMBER.email,
                                                          "role": "member"})
        invitation.raise_for_status()
        server.accept(invitation.json()["token"], MEMBER.password, MEMBER.name)
        yield Kanban(server.url, ADMIN, MEMBER)
    finally:
        server.stop()


@pytest.fixture
def new_context(browser: Any, kanban: Kanban) -> Iterator[Callable[[], Any]]:
    """Makes browser contexts on the test's server (closed after the test)."""
    contexts = []

    def make() -> Any:
        context = browser.new_context(base_url=kanban.url, viewport=VIEWPORT)
        context.set_default_timeout(10_000)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def open_board(new_context: Callable[[], Any], kanban: Kanban
               ) -> Callable[..., tuple[Any, BoardApi]]:
    """``open_board(account=ADMIN, query="")``: a page on board ``team`` signed in as
    ``account``, and that person's API."""

    def open(account: Account = ADMIN, query: str = "") -> tuple[Any, BoardApi]:
        context = new_context()
        api = sign_in(context, account)
        page = context.new_page()
        page.goto(f"/boards/team{query}")
        page.get_by_test_id("column-backlog").wait_for()
        return page, api

    return open


@pytest.fixture(scope="session")
def screenshots(request: Any, tmp_path_factory: Any) -> Path:
    folder = Path(os.environ.get("KANBAN_SCREENSHOTS")
                  or tmp_path_factory.getbasetemp() / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    request.config.stash[SCREENSHOTS] = folder
    return folder


def pytest_terminal_summary(terminalreporter: Any, config: Any) -> None:
    folder = config.stash.get(SCREENSHOTS, None)
    if folder is not None:
        shots = sorted(p.name for p in folder.glob("*.png"))
        terminalreporter.write_line(f"Kanban screenshots in {folder}: {', '.join(shots)}")
