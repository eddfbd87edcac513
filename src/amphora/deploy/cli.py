"""``amphora deploy``: the command over :class:`amphora.deploy.stack.Stack`.

Errors print ``amphora: error: ...`` (several lines when a part was not ready: its last
log lines) and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from amphora.deploy.errors import DeployError

__all__ = ["add_command"]

EXIT_ERROR = 2
DEPLOY_FILE = "amphora.toml"


def add_command(commands: Any) -> None:
    """Add ``deploy`` to the ``amphora`` parser's sub-commands."""
    deploy = commands.add_parser(
        "deploy", help="run a whole stack from amphora.toml: storage, server, follower, Kanban",
        description="Install and run the parts of amphora.toml (storage, server, follower, "
                    "kanban) under supervisord: up, status, logs, explain, down, destroy, "
                    "systemd. See docs/deploy.md.")
    deploy.add_argument("--file", "-f", metavar="FILE", default=DEPLOY_FILE,
                        help=f"the deployment file (default: {DEPLOY_FILE}; its directory "
                             "holds var/)")
    actions = deploy.add_subparsers(title="actions", dest="deploy_action", metavar="ACTION")
    actions.required = True
    actions.add_parser("up", help="install what changed, start everything, wait until ready")
    status = actions.add_parser("status", help="each part: state, pid, uptime, restarts, "
                                               "address, health")
    status.add_argument("--json", action="store_true", help="one JSON object per part")
    logs = actions.add_parser("logs", help="a part's log")
    logs.add_argument("part", metavar="PART")
    logs.add_argument("--lines", "-n", metavar="N", type=int, default=50,
                      help="the last N lines (default: 50)")
    actions.add_parser("explain", help="every effective setting and where it came from")
    actions.add_parser("down", help="stop everything; data stays")
    destroy = actions.add_parser("destroy", help="stop a part and delete its data")
    destroy.add_argument("part", metavar="PART")
    destroy.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    systemd = actions.add_parser("systemd", help="write equivalent systemd unit files")
    systemd.add_argument("--output", metavar="DIR", default="var/systemd",
                         help="where to write them (default: var/systemd, relative to the "
                              "deployment's directory)")
    systemd.add_argument("--prefix", metavar="PREFIX", default="amphora-",
                         help="unit names are PREFIXPART.service (default: amphora-)")
    deploy.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amphora.deploy.stack import Stack
    stack = Stack(args.file, say=lambda line: print(line, flush=True))
    try:
        return ACTIONS[args.deploy_action](stack, args)
    except DeployError as exc:
        print(f"amphora: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _up(stack: Any, args: argparse.Namespace) -> int:
    started = time.monotonic()
    stack.up()
    print(f"up in {time.monotonic() - started:.1f} s")
    return 0


def _status(stack: Any, args: argparse.Namespace) -> int:
    rows = stack.status()
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    if not rows:
        print("nothing installed: amphora deploy up")
        return 0
    header = ("PART", "STATE", "PID", "UPTIME", "RESTARTS", "ADDRESS", "HEALTH")
    table = [header] + [(
        row["part"], row["state"], str(row["pid"] or "-"),
        _duration(row["uptime"]) if row["uptime"] is not None else "-",
        str(row["restarts"]) if row["restarts"] is not None else "-",
        row["address"], row["health"]) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  "
              + line[-1])
    return 0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _logs(stack: Any, args: argparse.Namespace) -> int:
    for line in stack.logs(args.part, args.lines):
        print(line)
    return 0


def _explain(stack: Any, args: argparse.Namespace) -> int:
    for line in stack.explain():
        print(line)
    return 0


def _down(stack: Any, args: argparse.Namespace) -> int:
    stack.down()
    return 0


def _destroy(stack: Any, args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise DeployError(f"destroy deletes the data of {args.part}: confirm with --yes")
        answer = input(f"Delete {args.part} and its data for good? Type its name: ")
        if answer.strip() != args.part:
            print("not destroyed")
            return EXIT_ERROR
    stack.destroy(args.part)
    return 0


def _systemd(stack: Any, args: argparse.Namespace) -> int:
    from pathlib import Path

    from amphora.deploy.systemd import write_units
    output = Path(args.output)
    output = output if output.is_absolute() else stack.directory / output
    for path in write_units(stack.load(), output, args.prefix):
        print(path)
    return 0


ACTIONS = {"up": _up, "status": _status, "logs": _logs, "explain": _explain, "down": _down,
           "destroy": _destroy, "systemd": _systemd}
