"""A deployment's commands: up, status, logs, explain, down, destroy, systemd.

``up`` converges the running deployment on the file, Buildout's way. The whole file is
checked first (nothing changes when it is wrong). Then, with supervisord started:

1. each installed part that the file no longer has, or whose effective settings changed,
   or whose created files went missing, is stopped and uninstalled, the last installed
   first (a removed part keeps its data);
2. each part of the file, in dependency order, is installed if it is not, its process
   handed to supervisord and started if it does not run, and waited for until it is ready
   (its ``ready_timeout``). A part that is not ready in time is stopped and ``up`` fails
   with its last log lines; the parts before it keep running, the parts after it are not
   touched.

A part whose settings did not change keeps running (same pid) through ``up``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from amphora.deploy.errors import DeployError, NotReadyError
from amphora.deploy.parts import Recipe, Record, recipe_for
from amphora.deploy.schema import Deployment, Part, load
from amphora.deploy.state import State
from amphora.deploy.supervisor import Supervisor

__all__ = ["Stack", "LOG_LINES"]

#: the log lines a failed ``up`` shows
LOG_LINES = 20


def _normal(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as the state file gives them back."""
    return json.loads(json.dumps(settings))


class Stack:
    """The deployment described by ``file`` (its directory holds ``var/``)."""

    def __init__(self, file: str | Path, say: Callable[[str], None] = print):
        self.file = Path(file).resolve()
        self.directory = self.file.parent
        self.say = say
        self.supervisor = Supervisor(self.directory)

    def load(self) -> Deployment:
        return load(self.file)

    def _installed(self, state: State, name: str) -> tuple[Recipe, Record]:
        entry = state.parts[name]
        part = Part(name, entry["settings"], {}, tuple(entry.get("needs", ())))
        return recipe_for(part, self.directory), Record.from_json(entry["record"])

    # -- up -------------------------------------------------------------------------------
    def up(self) -> None:
        deployment = self.load()
        state = State(self.directory)
        recipes = {name: recipe_for(part, self.directory)
                   for name, part in deployment.parts.items()}
        stale = [name for name in state.parts if self._stale(name, state, deployment,
                                                             recipes)]
        self.supervisor.start()
        for name in reversed(list(state.parts)):
            if name in stale:
                recipe, record = self._installed(state, name)
                self.supervisor.remove(name)
                recipe.uninstall(record)
                state.drop(name)
                self.say(f"{name}: removed (its data is kept)" if name not in recipes
                         else f"{name}: changed, uninstalled")
        for name, recipe in recipes.items():
            self._bring_up(recipe, deployment.parts[name], state)

    def _stale(self, name: str, state: State, deployment: Deployment,
               recipes: dict[str, Recipe]) -> bool:
        if name not in deployment.parts:
            return True
        entry = state.parts[name]
        return (entry["settings"] != _normal(deployment.parts[name].effective())
                or not recipes[name].intact(Record.from_json(entry["record"])))

    def _bring_up(self, recipe: Recipe, part: Part, state: State) -> None:
        name = recipe.name
        fresh = name not in state.parts
        if fresh:
            record = recipe.install()
            state.put(name, {"settings": _normal(part.effective()), "needs": list(part.needs),
                             "record": record.as_json(), "spawns": 0})
        program = recipe.program()
        if program is None:
            self._wait_ready(recipe)
            recipe.setup()
            self.say(f"{name}: {'installed' if fresh else 'unchanged'}, ready "
                     f"({recipe.address()})")
            return
        self.supervisor.put(program)
        info = self.supervisor.info(name) or {}
        if info.get("statename") in ("RUNNING", "STARTING", "BACKOFF"):
            self._wait_ready(recipe)
            self.say(f"{name}: unchanged, running (pid {info['pid']}, {recipe.address()})")
            return
        log = self.supervisor.log_of(name)
        offset = log.stat().st_size if log.exists() else 0
        self.supervisor.start_program(name)
        self._wait_ready(recipe)
        recipe.setup()
        state.parts[name]["spawns"] = self.supervisor.spawns(name)
        state.save()
        pid = (self.supervisor.info(name) or {}).get("pid")
        self.say(f"{name}: {'installed and ' if fresh else ''}started (pid {pid}), ready "
                 f"({recipe.address()})")
        for line in _read_from(log, offset).splitlines():
            if "first administrator" in line:
                self.say(line.strip())

    def _wait_ready(self, recipe: Recipe) -> None:
        name, timeout = recipe.name, recipe.settings["ready_timeout"]
        deadline = time.monotonic() + timeout
        has_process = recipe.program() is not None
        while True:
            why = None
            if has_process:
                status = (self.supervisor.info(name) or {}).get("statename", "UNKNOWN")
                if status == "FATAL":
                    self._fail(recipe, "it exited at every start (supervisord gave up)")
                if status != "RUNNING" and not (status == "STARTING"
                                                and recipe.checks_readiness):
                    why = f"its process is {status}"
            why = why or recipe.ready()
            if why is None:
                return
            if time.monotonic() > deadline:
                self._fail(recipe, f"not ready after {timeout:g} s: {why}")
            time.sleep(0.1)

    def _fail(self, recipe: Recipe, why: str) -> None:
        name = recipe.name
        log = self.supervisor.log_of(name)
        if recipe.program() is not None:
            self.supervisor.stop(name)
        lines = _tail(log, LOG_LINES)
        shown = (f"\nthe last lines of {log}:\n" + "\n".join(f"  {line}" for line in lines)
                 if lines else f"\n{log} is empty")
        raise NotReadyError(f"{name}: {why}; stopped it (the parts before it keep running)"
                            + shown)

    # -- down, destroy -------------------------------------------------------------------
    def down(self) -> None:
        """Stop every part, the last installed first, then supervisord; data stays."""
        state = State(self.directory)
        if self.supervisor.pid() is None:
            self.say("nothing runs")
            return
        for name in reversed(list(state.parts)):
            if (self.supervisor.info(name) or {}).get("statename") not in (None, "STOPPED",
                                                                           "EXITED", "FATAL"):
                self.supervisor.stop(name)
                self.say(f"{name}: stopped")
        self.supervisor.shutdown()
        self.say("supervisord: stopped")

    def destroy(self, name: str) -> None:
        """Stop part ``name`` and delete what it installed, its data included."""
        state = State(self.directory)
        if name not in state.parts:
            raise DeployError(f"{name}: not installed (installed: "
                              f"{', '.join(state.parts) or 'none'})")
        needed_by = [other for other, entry in state.parts.items()
                     if name in entry.get("needs", ())]
        if needed_by:
            raise DeployError(f"{name}: {', '.join(needed_by)} need(s) it; remove "
                              f"{'them' if len(needed_by) > 1 else 'it'} from the file and "
                              "run `amphora deploy up` first")
        recipe, record = self._installed(state, name)
        if self.supervisor.pid() is not None:
            self.supervisor.remove(name)
        recipe.destroy(record)
        state.drop(name)
        self.say(f"{name}: destroyed ({', '.join(record.data) or 'no data'})")

    # -- status, logs, explain ---------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        """One row per installed part: name, state, pid, uptime (s), restarts, address,
        health."""
        state = State(self.directory)
        rows = []
        running = self.supervisor.pid() is not None
        for name, entry in state.parts.items():
            recipe, _ = self._installed(state, name)
            info = self.supervisor.info(name) if running else None
            has_process = recipe.program() is not None
            status = (info or {}).get("statename", "STOPPED") if has_process else "NO PROCESS"
            up = status in ("RUNNING", "STARTING")
            health = recipe.ready() if up or not has_process else "not running"
            rows.append({
                "part": name, "state": status,
                "pid": info["pid"] if up else None,
                "uptime": (info["now"] - info["start"]) if up else None,
                "restarts": max(0, self.supervisor.spawns(name) - entry.get("spawns", 0))
                if has_process else None,
                "address": recipe.address(),
                "health": "ready" if health is None else health,
            })
        return rows

    def logs(self, name: str, lines: int) -> list[str]:
        state = State(self.directory)
        known = set(state.parts)
        try:
            known |= set(self.load().parts)
        except DeployError:
            pass
        if name not in known:
            raise DeployError(f"{name}: no such part (parts: {', '.join(sorted(known))})")
        log = self.supervisor.log_of(name)
        if not log.exists():
            raise DeployError(f"{name}: no log yet ({log})")
        return _tail(log, lines)

    def explain(self) -> list[str]:
        """Every effective setting of every part and where it came from."""
        deployment = self.load()
        out = []
        for part in deployment.parts.values():
            needs = f"  # after {', '.join(part.needs)}" if part.needs else ""
            out.append(f"[{part.name}]{needs}")
            width = max(len(key) for key in part.settings)
            for key, value in part.settings.items():
                out.append(f"{key:<{width}} = {json.dumps(value)}  # {part.sources[key]}")
            out.append("")
        return out[:-1]


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _tail(path: Path, lines: int) -> list[str]:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return []
    text = _read_from(path, max(0, size - 200 * lines))
    return text.splitlines()[-lines:]
