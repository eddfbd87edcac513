"""``amphora deploy`` with every part: a PostgreSQL cluster of its own, the server, the
follower and the Kanban, run by a real supervisord, from an empty directory.

The tests share one deployment and run in order, as a user would go: up, use it, kill a
part, edit the file, remove a part, down, up again.
"""
from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pgserver
import pytest
import transaction
from deploy_helpers import (alive, deploy, free_ports, new_directory, pids, processes_in,
                            status, wait_until)
from persistent.mapping import PersistentMapping

import amphora

FILE = """\
[storage]
uri = "postgresql://amphora@localhost:{pg}/app"
local = true

[server]
listen = "127.0.0.1:{server}"

[follower]
interval = 0.1

[kanban]
listen = "127.0.0.1:{kanban}"
storage = "${{server:uri}}"
"""


class Stack:
    """The shared deployment: its directory, ports, and what the tests saw."""

    def __init__(self, directory: Path, ports: list[int]):
        self.directory = directory
        self.pg, self.server, self.kanban, self.new_kanban = ports
        self.seconds_up = 0.0

    def write(self, text: str) -> None:
        (self.directory / "amphora.toml").write_text(text)

    def file(self, kanban: int | None = None, follower: bool = True) -> str:
        text = FILE.format(pg=self.pg, server=self.server, kanban=kanban or self.kanban)
        return text if follower else text.replace("[follower]\ninterval = 0.1\n\n", "")

    def server_uri(self) -> str:
        token = self.directory / "var" / "secrets" / "token"
        return f"amphora://127.0.0.1:{self.server}?token_file={token}"

    def pids(self) -> dict[str, int | None]:
        return pids(self.directory)


@pytest.fixture(scope="module")
def stack():
    if pgserver.find_bindir() is None:
        if pgserver.in_ci():
            pytest.fail("PostgreSQL is required under CI: no initdb/postgres programs")
        pytest.skip("no PostgreSQL server programs for a local cluster")
    with new_directory() as directory:
        result = Stack(directory, free_ports(4))
        result.write(result.file())
        started = time.monotonic()
        done = deploy(directory, "up")
        result.seconds_up = time.monotonic() - started
        print(f"amphora deploy up from an empty directory: {result.seconds_up:.1f} s")
        result.up_output = done.stdout
        yield result


def test_up_from_an_empty_directory_brings_every_part_up(stack):
    rows = status(stack.directory)
    assert list(rows) == ["storage", "server", "follower", "kanban"]
    for name, row in rows.items():
        # ready; RUNNING once up a few seconds (supervisord's startsecs): STARTING before
        assert row["state"] in ("RUNNING", "STARTING"), row
        assert alive(row["pid"]) and row["health"] == "ready", row
    assert rows["server"]["address"] == f"127.0.0.1:{stack.server}"
    assert rows["kanban"]["address"] == f"http://127.0.0.1:{stack.kanban}"
    secrets = stack.directory / "var" / "secrets"
    for name in ("token", "pg-password", "pgpass"):
        assert (secrets / name).stat().st_mode & 0o777 == 0o600
    assert "first administrator: admin@localhost" in stack.up_output


def test_the_status_table_shows_every_part_running(stack):
    def table():
        lines = deploy(stack.directory, "status").stdout.splitlines()
        return all(" RUNNING " in line for line in lines[1:]) and lines
    lines = wait_until(table, "every part RUNNING")
    assert lines[0].split() == ["PART", "STATE", "PID", "UPTIME", "RESTARTS", "ADDRESS",
                                "HEALTH"]
    assert [line.split()[:2] for line in lines[1:]] == [
        [name, "RUNNING"] for name in ("storage", "server", "follower", "kanban")]


def test_a_client_commits_through_the_server_the_follower_mirrors_it_the_kanban_answers(
        stack):
    db = amphora.open(stack.server_uri())
    try:
        with db.transaction() as conn:
            conn.root()["deployed"] = PersistentMapping(note="through the server")
        tid = db.storage.lastTransaction()
        # the mirror is in follow mode: commits write no documents, the follower does
        assert db.storage.mirror_mode() == "follow"
        assert db.storage.wait_for_mirror(int.from_bytes(tid, "big"), timeout=60)
        rows = db.query_data("SELECT count(*) FROM amphora_objects "
                             "WHERE state::text LIKE %s", "%through the server%")
        assert rows == [(1,)]
    finally:
        db.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.kanban}/healthz") as response:
        health = json.load(response)
    assert health["ok"] is True
    assert int(health["last_transaction"], 16) >= int.from_bytes(tid, "big")


def test_a_killed_part_is_restarted_by_the_supervisor(stack):
    before = status(stack.directory)["kanban"]
    os.kill(before["pid"], signal.SIGKILL)
    from amphora.deploy import Stack

    def restarted():
        row = next(r for r in Stack(stack.directory / "amphora.toml").status()
                   if r["part"] == "kanban")
        return row["pid"] not in (None, before["pid"]) \
            and row["health"] == "ready" and row
    after = wait_until(restarted, "the killed Kanban runs again")
    assert not alive(before["pid"])
    assert after["restarts"] == before["restarts"] + 1


def test_a_bad_file_changes_nothing(stack):
    before = stack.pids()
    installed = (stack.directory / "var" / "deploy" / "installed.json").read_text()
    stack.write(stack.file() + "colour = \"blue\"\n")
    done = deploy(stack.directory, "up", ok=False)
    assert done.stderr.startswith("amphora: error: amphora.toml:14: [kanban] has no "
                                  "setting 'colour'")
    assert stack.pids() == before
    assert (stack.directory / "var" / "deploy" / "installed.json").read_text() == installed
    stack.write(stack.file())


def test_a_changed_port_restarts_that_part_only(stack):
    before = stack.pids()
    stack.write(stack.file(kanban=stack.new_kanban))
    done = deploy(stack.directory, "up")
    assert "kanban: changed, uninstalled" in done.stdout
    after = stack.pids()
    assert {name: after[name] for name in ("storage", "server", "follower")} == {
        name: before[name] for name in ("storage", "server", "follower")}
    assert after["kanban"] != before["kanban"] and not alive(before["kanban"])
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.new_kanban}/healthz") as response:
        assert response.status == 200
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{stack.kanban}/healthz", timeout=5)


def test_a_removed_part_is_stopped_and_uninstalled(stack):
    before = stack.pids()
    stack.write(stack.file(kanban=stack.new_kanban, follower=False))
    done = deploy(stack.directory, "up")
    assert "follower: removed (its data is kept)" in done.stdout
    after = stack.pids()
    assert list(after) == ["storage", "server", "kanban"]
    assert after == {name: pid for name, pid in before.items() if name != "follower"}
    assert not alive(before["follower"])
    storage = amphora.uri.open_storage(stack.server_uri())
    try:  # uninstalled: the commits keep the mirror again
        assert storage.mirror_mode() == "sync"
    finally:
        storage.close()


def test_down_stops_every_process_and_up_brings_back_the_same_data(stack):
    pids = list(stack.pids().values())
    supervisord = int((stack.directory / "var" / "deploy" / "supervisord.pid").read_text())
    assert processes_in(stack.directory)
    deploy(stack.directory, "down")
    assert [pid for pid in [*pids, supervisord] if alive(pid)] == []
    assert processes_in(stack.directory) == []

    deploy(stack.directory, "up")
    assert all(pid is not None and alive(pid) for pid in stack.pids().values())
    db = amphora.open(stack.server_uri())
    try:
        with db.transaction() as conn:
            assert conn.root()["deployed"]["note"] == "through the server"
    finally:
        db.close()
