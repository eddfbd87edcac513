"""The fixture of the server tests: ``servers(uri, ...)`` starts a real server process,
stopped after the test."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serverprocess import ServerProcess  # noqa: E402


@pytest.fixture
def servers():
    started: list[ServerProcess] = []

    def start(uri: str = "memory://", *args: str, **kwargs) -> ServerProcess:
        server = ServerProcess(uri, *args, **kwargs)
        started.append(server)
        return server
    yield start
    for server in started:
        server.stop()
