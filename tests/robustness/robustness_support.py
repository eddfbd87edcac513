"""Shared pieces of the robustness tests: persistent classes that both the tests and the
helper processes import (so records written in one process load in the other), and
helpers to run the helper scripts as real subprocesses.

Not a test module (pytest collects only ``test_*.py``).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from persistent import Persistent

import amphora

HERE = Path(__file__).resolve().parent
# helper processes import the same amphora as the tests (the checkout's src/ when run
# from it, or wherever PYTHONPATH or the installed package points)
SRC = Path(amphora.__file__).resolve().parent.parent


class Counter(Persistent):
    """A plain counter: no conflict resolution, so concurrent increments conflict."""

    def __init__(self, value: int = 0):
        self.value = value


class Record(Persistent):
    """An object written by the crash writer in transaction ``txn``."""

    def __init__(self, txn: int, payload: bytes, digest: str, parts: list):
        self.txn = txn
        self.payload = payload
        self.digest = digest
        self.parts = parts


class Part(Persistent):
    """A sub-object of a :class:`Record`, written in the same transaction."""

    def __init__(self, txn: int, index: int):
        self.txn = txn
        self.index = index


class Stats(Persistent):
    """A long-lived object the crash writer changes in every transaction."""

    def __init__(self):
        self.last_txn = -1
        self.total = 0


class Item(Persistent):
    def __init__(self, value):
        self.value = value


def sqlite_uri(path: os.PathLike | str) -> str:
    """``sqlite:////absolute/path`` for ``path``."""
    return "sqlite:///" + str(Path(path).resolve())


def child_env() -> dict:
    """The environment of a helper process: this directory and this amphora importable."""
    env = dict(os.environ)
    parts = [str(HERE), str(SRC)]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn(script: str, *args: str, **popen_kwargs) -> subprocess.Popen:
    """Start ``python tests/robustness/<script> args...`` with piped text stdout/stderr."""
    popen_kwargs.setdefault("stdout", subprocess.PIPE)
    popen_kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, str(HERE / script), *map(str, args)],
                            env=child_env(), text=True, **popen_kwargs)


def run(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a helper script to completion; fail with its output if it fails."""
    proc = subprocess.run([sys.executable, str(HERE / script), *map(str, args)],
                          env=child_env(), text=True, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} exited with "
                             f"{proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc
