"""``amphora deploy`` on SQLite: the shortest file, the file's errors, explain, a part that
is not ready, destroy and the systemd units."""
from __future__ import annotations

import json
import os
import urllib.request

import pytest
from deploy_helpers import alive, deploy, free_ports, pids, status

import amphora
from amphora.deploy import ConfigError, Stack


def test_kanban_alone_is_a_working_embedded_deployment_on_sqlite(deployment_dir):
    (port,) = free_ports(1)
    (deployment_dir / "amphora.toml").write_text(f'[kanban]\nlisten = "127.0.0.1:{port}"\n')
    done = deploy(deployment_dir, "up")
    assert f"kanban: installed and started" in done.stdout
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as response:
        assert json.load(response)["ok"] is True
    rows = status(deployment_dir)
    assert rows["storage"]["state"] == "NO PROCESS"
    assert rows["storage"]["address"] == str(deployment_dir / "var" / "app.db")
    assert rows["kanban"]["state"] in ("STARTING", "RUNNING")
    assert rows["kanban"]["health"] == "ready"
    db = amphora.open(f"sqlite:///{deployment_dir / 'var' / 'app.db'}")
    try:
        with db.transaction() as conn:
            assert len(conn.root()) > 0  # the app's site
    finally:
        db.close()
    deploy(deployment_dir, "down")
    assert not alive(rows["kanban"]["pid"])


BAD_FILES = {
    "unknown key": ('[kanban]\nlisten = "127.0.0.1:8000"\nport = 8001\n',
                    "amphora.toml:3: [kanban] has no setting 'port'; its settings are listen, "),
    "unknown part": ("[kanban]\n\n[web]\n", "amphora.toml:3: unknown part [web]"),
    "missing part": ('[kanban]\nstorage = "${server:uri}"\n',
                     "amphora.toml:2: [kanban] storage refers to ${server:uri}, but the file "
                     "has no [server] part"),
    "missing key": ('[kanban]\nstorage = "${storage:url}"\n',
                    "amphora.toml:2: [kanban] storage refers to ${storage:url}, but [storage] "
                    "has no 'url'"),
    "cycle": ('[follower]\nstorage = "${kanban:storage}"\n\n'
              '[kanban]\nstorage = "${follower:storage}"\n',
              "amphora.toml:2: references go round in a cycle: ${follower:storage} -> "
              "${kanban:storage} -> ${follower:storage}"),
    "bad uri": ('[storage]\nuri = "mysql://app@localhost/app"\n\n[kanban]\n',
                "amphora.toml:2: [storage] uri 'mysql://app@localhost/app' is not a URI of "
                "sqlite://, postgresql://"),
    "uri without file": ('[storage]\nuri = "sqlite://"\n[kanban]\n',
                         "amphora.toml:2: [storage] uri 'sqlite://' names no file"),
    "bad port": ('[kanban]\nlisten = "127.0.0.1:80000"\n',
                 "amphora.toml:2: [kanban] listen must be HOST:PORT with a port from 1 to 65535"),
    "bad type": ("[follower]\nenabled = \"yes\"\n",
                 "amphora.toml:2: [follower] enabled must be true or false, not 'yes'"),
    "local sqlite": ("[storage]\nlocal = true\n[kanban]\n",
                     "amphora.toml:2: [storage] local = true runs a PostgreSQL cluster: it "
                     "needs a postgresql:// URI"),
    "not toml": ("[kanban\n", "amphora.toml: not valid TOML"),
    "no parts": ("# nothing yet\n", "amphora.toml: no parts"),
}


@pytest.mark.parametrize("text, error", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_file_is_one_clear_error_and_changes_nothing(deployment_dir, text, error):
    (deployment_dir / "amphora.toml").write_text(text)
    with pytest.raises(ConfigError) as raised:
        Stack(deployment_dir / "amphora.toml", say=pytest.fail).up()
    assert str(raised.value).startswith(error)
    assert "\n" not in str(raised.value)
    assert sorted(os.listdir(deployment_dir)) == ["amphora.toml"]


def test_the_command_prints_a_bad_files_error_on_one_line(deployment_dir):
    text, error = BAD_FILES["cycle"]
    (deployment_dir / "amphora.toml").write_text(text)
    done = deploy(deployment_dir, "up", ok=False)
    assert done.stderr == f"amphora: error: {error}\n"
    assert done.stdout == ""
    assert sorted(os.listdir(deployment_dir)) == ["amphora.toml"]


def test_a_missing_file_says_how_to_start(deployment_dir):
    done = deploy(deployment_dir, "up", ok=False)
    assert "amphora.toml: no such file" in done.stderr


def test_explain_gives_every_effective_setting_and_where_it_came_from(deployment_dir):
    (deployment_dir / "amphora.toml").write_text(
        '[server]\nlisten = "127.0.0.1:9100"\n\n[kanban]\nstorage = "${server:uri}"\n')
    lines = deploy(deployment_dir, "explain").stdout.splitlines()
    token = deployment_dir / "var" / "secrets" / "token"
    db = deployment_dir / "var" / "app.db"
    assert lines[:4] == [
        "[storage]",
        f'uri           = "sqlite:///{db}"  # default, effective value computed from '
        "'sqlite:///var/app.db'",
        "local         = false  # default",
        "ready_timeout = 60.0  # default",
    ]
    assert "[server]  # after storage" in lines
    assert 'listen        = "127.0.0.1:9100"  # amphora.toml:2' in lines
    assert f'storage       = "sqlite:///{db}"  # default (${{storage:uri}})' in lines
    assert "[kanban]  # after server" in lines
    assert (f'storage       = "amphora://127.0.0.1:9100?token_file={token}"  '
            "# amphora.toml:5 (${server:uri})") in lines
    assert sorted(os.listdir(deployment_dir)) == ["amphora.toml"]  # explain installs nothing


def test_a_part_not_ready_in_time_fails_up_with_its_log_and_leaves_the_others(deployment_dir):
    server, kanban, closed = free_ports(3)
    (deployment_dir / "amphora.toml").write_text(
        f'[server]\nlisten = "127.0.0.1:{server}"\n\n'
        f'[kanban]\nlisten = "127.0.0.1:{kanban}"\n'
        f'storage = "postgresql://nobody@127.0.0.1:{closed}/none"\nready_timeout = 3\n')
    done = deploy(deployment_dir, "up", ok=False)
    assert "server: installed and started" in done.stdout
    first, *rest = done.stderr.splitlines()
    assert first.startswith("amphora: error: kanban: ")
    assert "stopped it (the parts before it keep running)" in first
    assert rest[0] == f"the last lines of {deployment_dir / 'var' / 'log' / 'kanban.log'}:"
    assert any("kanban: error" in line and str(closed) in line for line in rest), rest
    running = pids(deployment_dir)
    assert running["kanban"] is None and alive(running["server"])
    logs = deploy(deployment_dir, "logs", "kanban", "--lines", "2").stdout.splitlines()
    assert 1 <= len(logs) <= 2 and all(line.startswith("kanban: error") for line in logs), logs
    assert "no such part" in deploy(deployment_dir, "logs", "web", ok=False).stderr


def test_destroy_asks_for_confirmation_and_refuses_a_part_others_need(deployment_dir):
    (port,) = free_ports(1)
    file = deployment_dir / "amphora.toml"
    file.write_text(f'[kanban]\nlisten = "127.0.0.1:{port}"\n')
    deploy(deployment_dir, "up")
    database = deployment_dir / "var" / "app.db"
    assert database.exists()
    done = deploy(deployment_dir, "destroy", "storage", ok=False)
    assert "confirm with --yes" in done.stderr
    done = deploy(deployment_dir, "destroy", "storage", "--yes", ok=False)
    assert "storage: kanban need(s) it" in done.stderr
    assert database.exists()

    file.write_text("[storage]\n")
    done = deploy(deployment_dir, "up")
    assert "kanban: removed (its data is kept)" in done.stdout
    assert database.exists()
    done = deploy(deployment_dir, "destroy", "storage", "--yes")
    assert f"storage: destroyed ({database}" in done.stdout
    assert not database.exists()
    assert status(deployment_dir) == {}


def test_systemd_units_run_the_same_commands(deployment_dir):
    (deployment_dir / "amphora.toml").write_text(
        '[server]\nlisten = "127.0.0.1:9100"\n\n[follower]\n\n[kanban]\n')
    done = deploy(deployment_dir, "systemd")
    output = deployment_dir / "var" / "systemd"
    assert done.stdout.split() == [str(output / f"amphora-{name}.service")
                                   for name in ("server", "follower", "kanban")]
    server = (output / "amphora-server.service").read_text()
    kanban = (output / "amphora-kanban.service").read_text()
    assert "-m amphora serve sqlite:///" in server and "--listen 127.0.0.1:9100" in server
    assert "Restart=on-failure" in server and "Requires" not in server
    assert f"WorkingDirectory={deployment_dir}\n" in kanban
    assert "Requires=amphora-server.service\n" in kanban
    assert "After=network.target amphora-server.service\n" in kanban
    assert "-m amphora kanban serve amphora://127.0.0.1:9100?token_file=" in kanban


def test_restarts_are_counted_across_rotated_supervisor_logs(tmp_path):
    from amphora.deploy.supervisor import Supervisor

    supervisor = Supervisor(tmp_path)
    supervisor.logs.mkdir(parents=True)
    line = "2026-12-06 10:00:00,000 INFO spawned: '{}' with pid {}\n"
    supervisor.log.write_text(line.format("kanban", 3) + line.format("server", 4))
    (supervisor.logs / "supervisord.log.1").write_text(line.format("kanban", 2))
    (supervisor.logs / "supervisord.log.2").write_text(line.format("kanban", 1))
    (supervisor.logs / "kanban.log.1").write_text(line.format("kanban", 9))  # not its log
    assert supervisor.spawns("kanban") == 3
    assert supervisor.spawns("server") == 1
    assert supervisor.spawns("follower") == 0
