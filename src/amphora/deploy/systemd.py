"""systemd unit files equivalent to a deployment's supervisord programs.

One ``PREFIX-PART.service`` per part that has a process: the same command, working
directory and user as under supervisord; ``Restart=on-failure`` with a delay growing from
1 s (``RestartSteps``/``RestartMaxDelaySec``, systemd 254 and later; older versions keep
1 s) and at most :data:`START_LIMIT_BURST` starts in :data:`START_LIMIT_SECONDS`;
``After=``/``Requires=`` the units of the parts it needs; SIGINT for PostgreSQL (its
fast shutdown). The output goes to journald, which rotates it. Installing (``initdb``, the token, the mirror) is ``amphora deploy up``'s
work: run it once, ``amphora deploy down``, then hand the processes to systemd.
"""
from __future__ import annotations

from pathlib import Path

from amphora.deploy.parts import recipe_for
from amphora.deploy.schema import Deployment
from amphora.deploy.supervisor import Program

__all__ = ["units", "write_units", "START_LIMIT_BURST", "START_LIMIT_SECONDS"]

START_LIMIT_BURST = 5
START_LIMIT_SECONDS = 120

UNIT = """\
# written by amphora deploy systemd from {file}
[Unit]
Description=amphora deployment {directory}: {name}
After=network.target{after}
{requires}StartLimitIntervalSec={limit_seconds}
StartLimitBurst={limit_burst}

[Service]
Type=simple
WorkingDirectory={workdir}
ExecStart={command}
{user}Environment=PYTHONUNBUFFERED=1
Restart=on-failure
RestartSec=1
RestartSteps=5
RestartMaxDelaySec=30
KillSignal=SIG{stopsignal}
TimeoutStopSec=20

[Install]
WantedBy=multi-user.target
"""


def _quote(word: str) -> str:
    """One word of an ``ExecStart=`` line (systemd's quoting; ``%`` and ``$`` escaped)."""
    escaped = (word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
               .replace("$", "$$"))
    return f'"{escaped}"' if any(c in escaped for c in ' \t"\'\\;') or not escaped else escaped


def _unit_name(prefix: str, part: str) -> str:
    return f"{prefix}{part}.service"


def units(deployment: Deployment, prefix: str = "amphora-") -> dict[str, str]:
    """``unit file name -> text`` for each part of ``deployment`` that has a process."""
    programs: dict[str, Program] = {}
    for name, part in deployment.parts.items():
        program = recipe_for(part, deployment.directory).program()
        if program is not None:
            programs[name] = program
    result = {}
    for name, program in programs.items():
        needed = [_unit_name(prefix, need) for need in deployment.parts[name].needs
                  if need in programs]
        result[_unit_name(prefix, name)] = UNIT.format(
            file=deployment.file, directory=deployment.directory, name=name,
            after="".join(f" {unit}" for unit in needed),
            requires=f"Requires={' '.join(needed)}\n" if needed else "",
            limit_seconds=START_LIMIT_SECONDS, limit_burst=START_LIMIT_BURST,
            workdir=program.directory, command=" ".join(map(_quote, program.command)),
            user=f"User={program.user}\n" if program.user else "",
            stopsignal=program.stopsignal)
    return result


def write_units(deployment: Deployment, output: Path, prefix: str = "amphora-") -> list[Path]:
    """Write the unit files into ``output``; their paths."""
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in units(deployment, prefix).items():
        path = output / name
        path.write_text(text)
        written.append(path)
    return written
