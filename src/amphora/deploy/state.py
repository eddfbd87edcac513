"""What a deployment installed: ``var/deploy/installed.json``.

One entry per installed part, in the order they were installed (dependency order)::

    {"parts": {"storage": {"settings": {...}, "record": {"created": [...], "data": [...]},
                           "spawns": 1},
               ...}}

``settings`` are the part's effective settings when it was installed (``up`` reinstalls a
part whose settings differ now), ``record`` what it created (see
:class:`amphora.deploy.parts.Record`), ``spawns`` how many times supervisord had started it
when ``up`` last did (``status`` counts restarts from there). The file is replaced
atomically after each part, so an interrupted ``up`` leaves a true account of the parts
done so far.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from amphora.deploy.errors import DeployError

__all__ = ["State"]


class State:
    """The installed parts of the deployment in ``directory``."""

    def __init__(self, directory: Path):
        self.file = directory / "var" / "deploy" / "installed.json"
        try:
            data = json.loads(self.file.read_text())
        except FileNotFoundError:
            data = {"parts": {}}
        except (OSError, ValueError) as exc:
            raise DeployError(f"{self.file}: cannot be read ({exc}); remove it to start "
                              "over (the data under var/ stays)") from exc
        self.parts: dict[str, dict[str, Any]] = dict(data.get("parts", {}))

    def save(self) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.file.with_suffix(".tmp")
        temporary.write_text(json.dumps({"parts": self.parts}, indent=2, sort_keys=False))
        os.replace(temporary, self.file)

    def put(self, name: str, entry: dict[str, Any]) -> None:
        """Record part ``name`` as installed (after the parts installed before it)."""
        self.parts.pop(name, None)
        self.parts[name] = entry
        self.save()

    def drop(self, name: str) -> None:
        if self.parts.pop(name, None) is not None:
            self.save()
