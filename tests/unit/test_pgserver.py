"""The tests' private PostgreSQL server (tests/pgserver.py) never outlives its directory:
when ``pg_ctl stop`` fails, the postmaster is sent SIGQUIT before the directory goes."""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pgserver
import pytest


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not reaped) is not a running server
        with open(f"/proc/{pid}/stat") as file:
            return file.read().split(") ", 1)[1][:1] != "Z"
    except FileNotFoundError:
        return False


def test_a_server_whose_pg_ctl_stop_fails_is_stopped_all_the_same():
    bindir = pgserver.find_bindir()
    if bindir is None:
        if pgserver.in_ci():
            pytest.fail("PostgreSQL is required under CI: no server programs", pytrace=False)
        pytest.skip("no PostgreSQL server programs (initdb, pg_ctl)")
    server = pgserver.PostgresServer(bindir)
    server.start()
    pid = int((server.data / "postmaster.pid").read_text().split("\n", 1)[0])
    assert _alive(pid)
    # a pg_ctl that refuses, where the server's user (postgres, under root) can run it
    broken = Path(tempfile.mkdtemp(prefix="amphora-broken-bin-", dir="/tmp"))
    try:
        (broken / "pg_ctl").write_text("#!/bin/sh\necho pg_ctl refused >&2\nexit 1\n")
        for path in (broken, broken / "pg_ctl"):
            os.chmod(path, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH
                     | stat.S_IXOTH)
        server.bindir = broken
        with pytest.raises(pgserver.PostgresUnavailable, match="refused"):
            server.stop()
    finally:
        shutil.rmtree(broken, ignore_errors=True)
    deadline = time.monotonic() + 20
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)
    assert not server.directory.exists()
