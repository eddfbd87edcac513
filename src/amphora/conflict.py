"""Conflict resolution: ``_p_resolveConflict`` on three states of one object.

When a transaction writes an object that another transaction changed since it was read,
the storage asks :func:`resolve_record` for a merge before it raises ``ConflictError``.
The object's class decides: ``klass._p_resolveConflict(old, committed, new)`` returns the
merged state or raises. BTrees buckets and ``BTrees.Length`` implement it, and so can
user classes (a counter, a queue).

This is the one place below the Connection that imports application classes. The states
are unpickled with persistent references left as :class:`PersistentReference` objects:
no other object is loaded.
"""
from __future__ import annotations

import io
import logging
from typing import Any, Callable

import zodbpickle.pickle as _zpickle

from amphora.serialize import PROTOCOL, Unpickler, _find_class, _split_meta

__all__ = ["resolve_record", "PersistentReference"]

log = logging.getLogger(__name__)

_unresolvable: set[type] = set()


class PersistentReference:
    """A reference met while resolving a conflict, kept in its stored form.

    Two references are equal when they name the same oid; comparing references to
    different objects, or weak ones, raises ValueError, because their order is unknowable
    without loading the objects.
    """

    __slots__ = ("data", "oid", "weak")

    def __init__(self, data: Any):
        self.data = data
        self.weak = False
        if isinstance(data, tuple):
            self.oid = data[0]
        elif isinstance(data, (bytes, str)):
            self.oid = data
        else:
            self.weak = data[0] == "w" or len(data) == 1
            self.oid = data[1][0] if data[0] == "w" else data[0] if len(data) == 1 else data[1][1]
        if isinstance(self.oid, str):
            self.oid = self.oid.encode("latin-1")

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if isinstance(other, PersistentReference) and self.oid == other.oid \
                and not self.weak and not other.weak:
            return True
        raise ValueError("cannot compare references to different persistent objects")

    def __hash__(self) -> int:
        return hash(self.oid)

    def __repr__(self) -> str:
        return f"PersistentReference({self.data!r})"


def _state(data: bytes, refs: dict) -> tuple[Any, Any]:
    def persistent_load(ref: Any) -> PersistentReference:
        key = repr(ref)
        found = refs.get(key)
        if found is None:
            found = refs[key] = PersistentReference(ref)
        return found

    unpickler = Unpickler(data, persistent_load, _find_class)
    meta = unpickler.load()
    return meta, unpickler.load()


def _persistent_id(obj: Any) -> Any:
    return obj.data if type(obj) is PersistentReference else None


def resolve_record(oid: bytes, committed_serial: bytes, old_serial: bytes, new_data: bytes,
                   load_serial: Callable[[bytes, bytes], bytes]) -> bytes | None:
    """The merged record, or None when the conflict cannot be resolved.

    ``load_serial(oid, tid)`` reads the state the writer started from (``old_serial``) and
    the state committed meanwhile (``committed_serial``). Errors in a class's resolver are
    logged and count as "cannot resolve".
    """
    klass: Any = None
    try:
        refs: dict = {}
        meta, new_state = _state(new_data, refs)
        klass, args = _split_meta(meta, _find_class)
        if klass in _unresolvable:
            return None
        instance = klass.__new__(klass, *args)
        resolve = getattr(instance, "_p_resolveConflict", None)
        if resolve is None:
            _unresolvable.add(klass)
            return None
        _, old_state = _state(load_serial(oid, old_serial), refs)
        _, committed_state = _state(load_serial(oid, committed_serial), refs)
        resolved = resolve(old_state, committed_state, new_state)
        file = io.BytesIO()
        pickler = _zpickle.Pickler(file, PROTOCOL)
        pickler.persistent_id = _persistent_id
        pickler.dump(meta)
        pickler.dump(resolved)
        return file.getvalue()
    except Exception as exc:  # a resolver's failure means "conflict", never a crash
        log.debug("conflict on oid %s of %s not resolved: %r", oid.hex(), klass, exc)
        return None
