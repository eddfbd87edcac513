"""What a storage object copied into a forked child must not reuse, and how it lets go.

``os.fork`` (``gunicorn --preload``, ``multiprocessing``'s ``fork`` start method, celery's
prefork pool) copies a process with only the thread that forked: the child gets the
parent's storage objects with their sockets and database sessions (shared with the
parent: one byte written by the child is one byte of the parent's conversation), locks
that threads of the parent may have been holding, and none of the parent's other threads.

An object that keeps such things calls :func:`track` when it is made. From before a fork
until the child is running, what its ``_kept_open()`` returns (its connections) is held,
so that nothing of it is collected (and closed, which may talk to a server) in the child
before its ``_forked(kept)`` runs; the child then keeps these objects for good, never
closed by the collector. ``_forked(kept)`` runs in the child, at the fork, while no other
thread runs: it lets go of the parent's connections without any I/O
(:func:`drop_descriptor`) and resets the locks and commit state
(``StorageBase._forget_commit_after_fork``); what the child then uses is opened there.
:data:`forks` counts the forks this process is a child of, so that an object can tell,
with one integer compare, that it must open what a hook could not (a thread, say).

amphora's own background threads (the change feed's, the SQLite storage's sweeper) do
their database work inside :func:`quiet`: a fork waits until none of them is in the
middle of a call. SQLite takes a process-wide mutex to allocate memory; a fork made while
another thread holds it gives a child whose first SQLite call waits for it forever (the
thread that would release it is not there).
"""
from __future__ import annotations

import contextlib
import os
import threading
import weakref
from typing import Any, Iterator

__all__ = ["forks", "track", "drop_descriptor", "quiet"]

#: a fork waits this long at most for a background thread's database call to end
QUIET_TIMEOUT = 10.0

#: how many forks this process is the child of (0 in a process that was started afresh)
forks = 0
_tracked: weakref.WeakSet = weakref.WeakSet()
# while a fork is under way: each tracked object and what it keeps open
_held: list[tuple[Any, list[Any]]] = []
_inherited: list[Any] = []  # in a child: the parent's connections, kept for good
_gate = threading.Lock()  # held by a background thread's database call, and by a fork
_gated = False  # whether the fork under way holds _gate


def track(obj: Any) -> None:
    """Call ``obj._forked(kept)`` in every forked child (see the module docstring), with
    ``kept`` what ``obj._kept_open()`` (if it has that method) returned before the fork."""
    _tracked.add(obj)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The database work of a background thread: no fork happens while it runs."""
    with _gate:
        yield


def _before() -> None:
    global _gated
    # (a thread stuck in a call longer than QUIET_TIMEOUT, a busy database, does not stop
    # the fork: the child may then be one that hangs, as it would have been without this)
    _gated = _gate.acquire(timeout=QUIET_TIMEOUT)
    _held[:] = [(obj, [kept for kept in getattr(obj, "_kept_open", list)() if kept is not None])
                for obj in list(_tracked)]


def _after_in_parent() -> None:
    global _gated
    _held.clear()
    if _gated:
        _gated = False
        _gate.release()


def _after_in_child() -> None:
    global forks, _gate, _gated
    forks += 1
    _gate, _gated = threading.Lock(), False  # (the parent's is held by the fork)
    held, _held[:] = list(_held), []
    for obj, kept in held:
        _inherited.extend(kept)
        obj._forked(kept)


os.register_at_fork(before=_before, after_in_parent=_after_in_parent,
                    after_in_child=_after_in_child)


def drop_descriptor(fd: int) -> None:
    """Make ``fd`` (this process's copy of a socket shared with the parent) refer to
    ``/dev/null``: the connection is released here without a byte sent or a shutdown,
    the parent's copy works on, and whatever object still owns ``fd`` closes or writes
    to ``/dev/null`` later. Never raises."""
    if fd is None or fd < 0:
        return
    try:
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return
    try:
        os.dup2(null, fd)
    except OSError:
        pass
    finally:
        os.close(null)
