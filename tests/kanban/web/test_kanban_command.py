"""The ``amphora kanban`` command: serve and adduser, their errors, their processes."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

import amphora
from kanbanprocess import (ADMIN_EMAIL, PASSWORD, EventStream, add, kanban_command,
                           kanban_env, move, start_kanban)


def assert_one_line_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("kanban: error: ") and done.stderr.count("\n") == 1, \
        done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr


def test_adduser_makes_an_account_that_signs_in(tmp_path):
    uri = f"sqlite:///{tmp_path}/kanban.db"
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    done = kanban_command("adduser", uri, "boss@example.org", "--admin", "--name", "Boss",
                          "--password-file", str(password_file))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "kanban: added boss@example.org (admin)\n"
    # through the amphora command, the password on standard input
    done = subprocess.run([sys.executable, "-m", "amphora", "kanban", "adduser", uri,
                           "ann@example.org", "--password-file", "-"], input="ann's secret",
                          capture_output=True, text=True, env=kanban_env())
    assert done.returncode == 0 and "(member)" in done.stdout, done.stderr
    server = start_kanban(uri, tmp_path)
    try:
        assert server.invite_link is None  # an administrator can sign in already
        boss = server.sign_in("boss@example.org")
        assert boss.get("/api/me").json()["user"]["display_name"] == "Boss"
        ann = server.sign_in("ann@example.org", "ann's secret")
        assert ann.get("/api/me").json()["user"]["role"] == "member"
    finally:
        assert server.stop() == 0


def test_adduser_errors(tmp_path):
    uri = f"sqlite:///{tmp_path}/kanban.db"
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    assert kanban_command("adduser", uri, "ann@example.org", "--password-file",
                          str(password_file)).returncode == 0
    assert_one_line_error(kanban_command("adduser", uri, "ANN@example.org", "--password-file",
                                         str(password_file)), "already has an account")
    assert_one_line_error(kanban_command("adduser", uri, "not an email", "--password-file",
                                         str(password_file)), "email")
    (tmp_path / "short").write_text("short")
    assert_one_line_error(kanban_command("adduser", uri, "bob@example.org", "--password-file",
                                         str(tmp_path / "short")), "password", "8")
    assert_one_line_error(kanban_command("adduser", uri, "bob@example.org", "--password-file",
                                         str(tmp_path / "missing")), "missing")
    assert_one_line_error(kanban_command("adduser", "nosuch://x", "bob@example.org",
                                         "--password-file", str(password_file)), "nosuch")


def test_serve_errors(tmp_path):
    assert_one_line_error(kanban_command("serve", f"sqlite:///{tmp_path}/k.db",
                                         "--listen", "nowhere"), "--listen")
    assert_one_line_error(kanban_command("serve", f"sqlite:///{tmp_path}/no/such/dir/k.db",
                                         "--listen", "127.0.0.1:0"))
    assert_one_line_error(kanban_command("serve", "nosuch://x", "--listen", "127.0.0.1:0"),
                          "nosuch")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert_one_line_error(kanban_command("serve", f"sqlite:///{tmp_path}/k.db",
                                             "--listen", f"127.0.0.1:{port}"), "--listen")


def test_sigterm_ends_open_streams_and_stops_cleanly(kanban_server, admin):
    admin.post("/api/boards", json={"name": "team", "title": "Team"})
    stream = EventStream(kanban_server.url, admin, "/api/boards/team/events")
    assert stream.next()["data"]["full"] is True
    assert kanban_server.stop() == 0
    assert stream.ended.wait(30)
    stream.close()
    assert not any("graceful shutdown exceeded" in line for line in kanban_server.stderr_lines)


def test_the_first_administrator_is_invited_until_signed_in(tmp_path):
    uri = f"sqlite:///{tmp_path}/kanban.db"
    first = start_kanban(uri, tmp_path, "--admin-email", "Chief@Example.org")
    first.stop()
    assert first.invite_link.startswith(f"{first.url}/invite/")
    second = start_kanban(uri, tmp_path, "--admin-email", "Chief@Example.org")
    try:  # not signed in yet: a new link
        assert second.invite_link and second.invite_link != first.invite_link
        chief = second.admin_client()
        assert chief.get("/api/me").json()["user"] == {
            **chief.get("/api/me").json()["user"], "email": "chief@example.org",
            "role": "admin"}
    finally:
        second.stop()
    third = start_kanban(uri, tmp_path)
    third.stop()
    assert third.invite_link is None


def test_processes_on_one_database_share_sessions_and_live_updates(tmp_path):
    uri = f"sqlite:///{tmp_path}/kanban.db"
    one = start_kanban(uri, tmp_path)
    two = start_kanban(uri, tmp_path)
    try:
        admin = one.admin_client()
        admin.post("/api/boards", json={"name": "team", "title": "Team"})
        card = add(admin, "team", title="Shared")
        on_two = two.client(cookies=admin.cookies, headers=dict(admin.headers))
        assert on_two.get("/api/me").json()["user"]["email"] == ADMIN_EMAIL
        generation = on_two.get("/api/boards/team").json()["generation"]
        stream = EventStream(two.url, on_two, f"/api/boards/team/events?generation={generation}")
        assert move(admin, "team", card["id"], state="ready").status_code == 200  # on one
        assert [(c["id"], c["state"]) for c in stream.next()["data"]["cards"]] == [
            (card["id"], "ready")]
        stream.close()
        assert on_two.post("/api/logout").status_code == 200
        assert admin.get("/api/me").status_code == 401  # the session was the same
    finally:
        one.stop()
        two.stop()


@pytest.mark.parametrize("mirror", [True, False], ids=["mirror", "no-mirror"])
def test_the_bag_is_searched_with_or_without_a_mirror(tmp_path, mirror):
    uri = f"sqlite:///{tmp_path}/kanban.db"
    server = start_kanban(uri, tmp_path, *([] if mirror else ["--no-mirror"]))
    try:
        admin = server.admin_client()
        admin.post("/api/boards", json={"name": "team", "title": "Team"})
        feature = add(admin, "team", title="Reports")
        task = add(admin, "team", title="Export spreadsheets", parent=feature["id"])
        admin.post(f"/api/boards/team/cards/{feature['id']}/archive")
        found = admin.get("/api/boards/team/archive", params={"text": "spreadsheets"}).json()
        assert [(f["feature"]["id"], f["matched"]) for f in found] == [
            (feature["id"], [task["id"]])]
        # a word's beginning is found by both; another form of it only by the index
        for text, with_mirror_only in (("spreadsheet", False), ("exported", True)):
            found = admin.get("/api/boards/team/archive", params={"text": text}).json()
            assert len(found) == (1 if mirror or not with_mirror_only else 0), text
    finally:
        server.stop()
    with amphora.open(uri) as db:
        assert db.has_mirror() is mirror


def test_a_storage_without_history_cannot_travel_in_time(tmp_path):
    server = start_kanban(f"sqlite:///{tmp_path}/kanban.db?keep_history=false", tmp_path)
    try:
        admin = server.admin_client()
        admin.post("/api/boards", json={"name": "team", "title": "Team"})
        reply = admin.get("/api/boards/team", params={"at": "2026-01-01T00:00:00Z"})
        assert reply.status_code == 400 and reply.json()["field"] == "at"
        assert "history" in reply.json()["error"]
    finally:
        server.stop()


def test_missing_web_dependencies_are_named_with_the_extra_to_install(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.mkdir()  # a starlette that cannot be imported, first on the path
    (blocked / "starlette.py").write_text("raise ImportError('no starlette here')\n")
    env = kanban_env()
    env["PYTHONPATH"] = f"{blocked}:{env['PYTHONPATH']}"
    done = subprocess.run([sys.executable, "-m", "amphora", "kanban", "serve", "memory://",
                           "--listen", "127.0.0.1:0"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert_one_line_error(done, "starlette", "pip install amphora[kanban]")


def test_the_database_holds_no_usable_session_token_or_password(tmp_path):
    """What docs/kanban.md promises: sessions and invitations are kept as hashes, and
    passwords as Argon2id hashes; a copy of the database gives no way in."""
    server = start_kanban(f"sqlite:///{tmp_path}/kanban.db", tmp_path)
    try:
        admin = server.admin_client()
        session_id = admin.cookies["kanban_session"].rpartition(".")[0]
        invited = admin.post("/api/invitations", json={"email": "new@example.org",
                                                         "role": "member"})
        token = invited.json()["token"]
    finally:
        server.stop()
    raw = b"".join(path.read_bytes() for path in tmp_path.glob("kanban.db*")
                   if path.is_file())  # (kanban.db.blobs/ is a directory, empty here)
    assert session_id and session_id.encode() not in raw
    assert token.encode() not in raw and PASSWORD.encode() not in raw
    with amphora.open(f"sqlite:///{tmp_path}/kanban.db") as db, db.transaction() as conn:
        user = conn.root()["kanban"].user_by_email(ADMIN_EMAIL)
        assert user.password_hash.startswith("$argon2id$")


def test_a_mirror_made_before_the_app_gets_the_text_index(tmp_path):
    from amphora_kanban.web.archive import TEXT_INDEX, setup_search

    uri = f"sqlite:///{tmp_path}/kanban.db"
    with amphora.open(uri) as db:
        db.create_mirror()  # as `amphora mirror URI` or a deployment's follower makes it
        assert setup_search(db) is True  # no mirror to make, but the index
        assert setup_search(db) is False  # both there: nothing made, no error
        with db.transaction() as conn:
            assert list(conn.search_text(TEXT_INDEX, '"anything"')) == []
