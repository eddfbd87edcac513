"""The record format: ZODB's two pickles.

A record is two pickles written back to back by one pickler (so they share a memo):

1. the *class metadata*: the object's class (a GLOBAL), or ``(class, newargs)`` when the
   class defines ``__getnewargs__``; records from older ZODB versions may instead hold
   ``((module, name), args)`` or ``(class, None)``, which are read too;
2. the *state*: ``obj.__getstate__()``.

Persistent objects inside the state are not pickled but referenced, in ZODB's forms:

- ``(oid, class)``: the usual form; lets a reader make a ghost without loading;
- ``oid``: for classes with ``__getnewargs__`` (the class must be loaded from the record);
- ``['w', (oid,)]``: a :class:`persistent.wref.WeakRef`;
- ``['m', (database, oid, class)]``, ``['n', (database, oid)]``: cross-database references
  (read as errors: amphora has no multi-database support);
- ``[oid]``: a legacy weak reference.

Oids are 8-byte big-endian strings. Pickle protocol 3 is written, as ZODB does, so a record
written by amphora reads in ZODB and back.

:func:`resolve_record` merges a write conflict over records (the class's
``_p_resolveConflict`` on the three states), for the storages that resolve conflicts.

:func:`references` and :func:`class_name_of` look at a record *symbolically*: they never
import or call application classes, so storages, servers and tools can use them on any
record.
"""
from __future__ import annotations

import io
import logging
import pickle
import pickletools
from typing import Any, Callable

import zodbpickle.pickle as _zpickle
from persistent import Persistent
from persistent.wref import WeakRef

from amphora import symbolic
from amphora.errors import AmphoraError, CorruptRecordError, StorageError

__all__ = ["ObjectWriter", "ObjectReader", "Broken", "find_global", "references",
           "class_name_of", "resolve_record", "PersistentReference", "PROTOCOL"]

PROTOCOL = 3


class _Sink:
    """A pickler's output file that just collects what each ``dump`` writes."""

    __slots__ = ("write", "chunks")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.write = self.chunks.append

    def take(self) -> bytes:
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        return data


class _Pickler(pickle.Pickler):
    """The C pickler, as a subclass: since Python 3.13 only a subclass's instances take a
    ``persistent_id`` attribute (the base type's own is read-only)."""


_REFERENCE_TYPES = (Persistent, WeakRef)
_BIG_STATE = 2048  # bytes of state after which a fresh pickler is used


class ObjectWriter:
    """Turns persistent objects into records for one connection.

    ``new_oid()`` hands out oids to new persistent objects met while pickling; each such
    object is attached to ``jar`` and passed to ``on_new(obj)`` so that it is stored in
    the same transaction (storing by reachability).
    """

    def __init__(self, jar: Any, new_oid: Callable[[], bytes], on_new: Callable[[Any], None]):
        self._jar = jar
        self._new_oid = new_oid
        self._on_new = on_new
        self._sink = _Sink()
        self._persistent_id = _reference_function(jar, new_oid, on_new)
        self._pickler = self._new_pickler()
        # The class pickle of a record is the same for every instance of a class
        # without __getnewargs__: pickle it once.
        self._class_pickles: dict[type, bytes | None] = {}

    def _new_pickler(self) -> Any:
        pickler = _Pickler(self._sink, PROTOCOL)
        pickler.persistent_id = self._persistent_id
        return pickler

    def serialize(self, obj: Any) -> bytes:
        """The record for ``obj``; :class:`pickle.PicklingError` naming the object's class
        when its state cannot be pickled (a lambda, an open file, a local class...)."""
        try:
            klass = type(obj)
            pickler = self._pickler
            sink = self._sink
            class_pickle = self._class_pickles.get(klass, b"")
            if class_pickle == b"":
                class_pickle = None
                if issubclass(klass, Broken):
                    class_pickle = _global_pickle(klass.__module__, klass.__name__)
                elif hasattr(klass, "_p_record_global"):  # a stand-in for another class
                    # as the pickler writes a class: the global, memoized
                    module, name = klass._p_record_global
                    class_pickle = (b"\x80\x03c" + f"{module}\n{name}\n".encode("utf-8")
                                    + b"q\x00.")
                elif not _has_newargs(klass):
                    pickler.clear_memo()
                    pickler.dump(klass)
                    class_pickle = sink.take()
                self._class_pickles[klass] = class_pickle
            state = obj.__getstate__()
            if class_pickle is not None and type(state) is dict and _plain(state):
                # Nothing in it can be persistent: the pickler needs no persistent_id calls.
                return class_pickle + _dumps(state, PROTOCOL)
            pickler.clear_memo()
            if class_pickle is None:
                pickler.dump((klass, obj.__getnewargs__()))
                pickler.dump(state)
                data = sink.take()
                if len(data) > _BIG_STATE:
                    self._pickler = self._new_pickler()
                return data
            pickler.dump(state)
            data = sink.take()
            if len(data) > _BIG_STATE:
                # The pickler's memo table keeps the size its largest state needed, and
                # clear_memo() wipes all of it: a big state would slow every small one after.
                self._pickler = self._new_pickler()
            return class_pickle + data
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            # Python 3.13 reports a local class or function as an AttributeError ("Can't
            # get local object"); whatever the version, say which object failed. The
            # pickler may hold part of the failed record: start again with a fresh one.
            self._sink.chunks.clear()
            self._pickler = self._new_pickler()
            klass = type(obj)
            raise pickle.PicklingError(
                f"cannot pickle the state of a {klass.__module__}.{klass.__qualname__} "
                f"object: {exc}") from exc


_PLAIN_TYPES = frozenset((str, bytes, int, float, bool, type(None)))
_dumps = pickle.dumps


def _plain(state: dict) -> bool:
    """True if every value of ``state`` is a str, bytes, number, bool or None."""
    plain = _PLAIN_TYPES
    for value in state.values():
        if type(value) not in plain:
            return False
    return True


def _reference_function(jar: Any, new_oid: Callable[[], bytes],
                        on_new: Callable[[Any], None]) -> Callable[[Any], Any]:
    """The ``persistent_id`` of a writer for ``jar``: None for an ordinary object, the
    reference for a persistent one (giving new objects an oid and the jar, and passing
    them to ``on_new``). A closure, because the pickler calls it for every object in a
    state and local names are the fastest to reach."""
    reference_types = _REFERENCE_TYPES
    newargs_of = _newargs.get

    def persistent_id(obj: Any) -> Any:
        if not isinstance(obj, reference_types) or isinstance(obj, type):
            return None
        if type(obj) is WeakRef:
            target = obj._v_ob
            oid = obj.oid if target is None else persistent_id(target)
            return ["w", (oid[0] if isinstance(oid, tuple) else oid,)]
        oid = obj._p_oid
        owner = obj._p_jar
        if owner is not jar:
            if owner is not None:
                raise AmphoraError(
                    f"{type(obj).__name__} object (oid {oid!r}) belongs to another connection "
                    "or database; a reference cannot cross connections")
            if oid is None:
                oid = obj._p_oid = new_oid()
            obj._p_jar = jar
            on_new(obj)
        elif oid is None:
            oid = obj._p_oid = new_oid()
            on_new(obj)
        klass = type(obj)
        newargs = newargs_of(klass)
        if newargs is None:
            newargs = _has_newargs(klass)
        return oid if newargs else (oid, klass)

    return persistent_id


_newargs: dict[type, bool] = {}


def _has_newargs(klass: type) -> bool:
    found = _newargs.get(klass)
    if found is None:
        # A stand-in's class (``_p_record_global``) cannot be named in a reference: the
        # references to its objects name no class, as to those with __getnewargs__
        found = _newargs[klass] = (hasattr(klass, "__getnewargs__")
                                   or hasattr(klass, "_p_record_global"))
    return found


class ObjectReader:
    """Turns records back into objects for one connection.

    ``ghost(oid, klass)`` returns the connection's object for a reference (a ghost if it
    is not loaded yet); ``get(oid)`` does the same when the reference names no class.
    """

    def __init__(self, ghost: Callable[[bytes, Any], Any], get: Callable[[bytes], Any]):
        self._ghost = ghost
        self._get = get

    def _persistent_load(self, ref: Any) -> Any:
        if type(ref) is tuple:
            oid, klass = ref
            if isinstance(oid, str):
                oid = oid.encode("latin-1")
            if isinstance(klass, tuple):
                klass = find_global(*klass)
            return self._ghost(oid, klass)
        if isinstance(ref, (bytes, str)):
            return self._get(ref.encode("latin-1") if isinstance(ref, str) else ref)
        if isinstance(ref, list):
            if len(ref) == 1:
                return _weakref(self._get(ref[0]))
            kind, args = ref
            if kind == "w":
                return _weakref(self._get(args[0]))
            raise CorruptRecordError(
                f"cross-database reference {ref!r}: amphora does not support multiple databases")
        raise CorruptRecordError(f"unknown persistent reference {ref!r}")

    def class_of(self, data: bytes) -> tuple[type, tuple]:
        """The class of the record and the arguments to its ``__new__``; a :class:`Broken`
        class named after it when it cannot be imported."""
        unpickler = _TolerantUnpickler(io.BytesIO(data), encoding="ASCII", errors="bytes")
        unpickler.persistent_load = self._persistent_load
        try:
            meta = unpickler.load()
        except Exception as exc:
            raise CorruptRecordError(f"cannot read the class of a record: {exc}") from exc
        return _split_meta(meta, find_global)

    def new_ghost(self, data: bytes) -> Any:
        """A new instance of the record's class, not yet given its state."""
        klass, args = self.class_of(data)
        return klass.__new__(klass, *args)

    def get_state(self, data: bytes) -> Any:
        """The state (second pickle) of a record, with references resolved."""
        unpickler = _TolerantUnpickler(io.BytesIO(data), encoding="ASCII", errors="bytes")
        unpickler.persistent_load = self._persistent_load
        try:
            # The class pickle is loaded, not skipped: ZODB writes both pickles with one
            # memo, so a state may refer to the class through it (a reference to another
            # object of the same class does).
            unpickler.load()
            return unpickler.load()
        except (EOFError, _zpickle.UnpicklingError, ValueError, IndexError, TypeError) as exc:
            raise CorruptRecordError(f"cannot read a record: {exc}") from exc

    def set_state(self, obj: Any, data: bytes) -> None:
        """Give ``obj`` the state of its record ``data``."""
        klass = type(obj)
        prefix = _class_pickles.get(klass, b"")
        if prefix == b"":
            prefix = _class_pickles[klass] = _class_pickle(klass)
        if prefix is not None and data.startswith(prefix):
            # The usual record: the class pickle amphora writes, then a state pickle of its
            # own. A state without references needs no persistent_load, and pickle.loads
            # reads it several times faster than a new Unpickler would.
            try:
                state = _loads(memoryview(data)[len(prefix):])
            except Exception as exc:
                if isinstance(exc, pickle.UnpicklingError) and "persistent" in str(exc):
                    _class_pickles[klass] = None  # its states hold references: no shortcut
                state = self.get_state(data)  # the general way, and its errors
        else:
            state = self.get_state(data)
        obj.__setstate__(state)


# The first pickle of a record of each class, as ObjectWriter writes it; None when a
# class's records are read the general way only (classes with __getnewargs__, classes
# whose states hold references, classes pickle cannot name).
_class_pickles: dict[type, bytes | None] = {}
_loads = pickle.loads


def _class_pickle(klass: type) -> bytes | None:
    if _has_newargs(klass):
        return None
    try:
        return pickle.dumps(klass, PROTOCOL)
    except Exception:
        return None


class Unpickler(_zpickle.Unpickler):
    """Reads records with references going to ``persistent_load`` and classes coming from
    ``find_class``; ZODB 3 (Python 2) strings read as ASCII or else bytes."""

    def __init__(self, data: bytes, persistent_load: Callable[[Any], Any],
                 find_class: Callable[[str, str], Any]):
        super().__init__(io.BytesIO(data), encoding="ASCII", errors="bytes")
        self.persistent_load = persistent_load
        self._find = find_class

    def find_class(self, module: str, name: str) -> Any:
        return self._find(module, name)


def _weakref(obj: Any) -> WeakRef:
    return WeakRef(obj)


def _split_meta(meta: Any, find_class: Callable[[str, str], Any]) -> tuple[type, tuple]:
    if isinstance(meta, type):
        return meta, ()
    if isinstance(meta, tuple) and len(meta) == 2:
        klass, args = meta
        if isinstance(klass, tuple):
            klass = find_class(*klass)
        if isinstance(klass, type):
            return klass, tuple(args or ())
    raise CorruptRecordError(f"unrecognized class metadata {meta!r}")


_classes: dict[tuple[str, str], Any] = {}
#: classes of optional packages that amphora reads as its own stand-ins when the package
#: is not installed (the stand-in's records name the original: ``_p_record_global``)
_STAND_INS = {("ZODB.blob", "Blob"): ("amphora.blob", "StandaloneBlob")}


def _find_class(module: str, name: str) -> Any:
    """The global ``module.name``, imported once and remembered."""
    key = (module, name)
    found = _classes.get(key)
    if found is None:
        try:
            try:
                mod = __import__(module, fromlist=[name])
            except ImportError:
                if key not in _STAND_INS:
                    raise
                module, name = _STAND_INS[key]
                mod = __import__(module, fromlist=[name])
            found = _classes[key] = getattr(mod, name)
        except (ImportError, AttributeError) as exc:
            raise StorageError(
                f"the class {module}.{name} of a stored object cannot be imported: {exc}") from exc
    return found


def find_global(module: str, name: str) -> Any:
    """The global ``module.name`` a record names (imported once and remembered); when it
    can no longer be imported, a :class:`Broken` class of that name (as ZODB does), so
    that the rest of the database stays readable."""
    try:
        return _find_class(module, name)
    except StorageError:
        return _broken_class(module, name)


def _broken_class(module: str, name: str) -> type:
    key = (module, name)
    found = _broken.get(key)
    if found is None:
        found = _broken[key] = type(name, (Broken,), {"__module__": module,
                                                      "__qualname__": name})
    return found


_broken: dict[tuple[str, str], type] = {}


class _TolerantUnpickler(_zpickle.Unpickler):
    """Reads a record's pickles, globals as the unpickler finds them (Python 2 names
    mapped), and a :class:`Broken` class for a global that cannot be imported."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return find_global(module, name)  # a stand-in (see _STAND_INS), else Broken


class Broken(Persistent):
    """An object whose class can no longer be imported (its module was removed or
    renamed), read as ZODB reads it: an instance of a class named after the missing one,
    whose state is kept as it was stored (``__Broken_state__``) and written back
    unchanged. Its attributes cannot be changed; the rest of the database is unaffected.
    When the class can be imported again, the object loads as before.
    """

    def __new__(cls, *args: Any) -> "Broken":
        return super().__new__(cls)

    def __init__(self, *args: Any) -> None:
        self.__dict__["__Broken_initargs__"] = args

    def __setstate__(self, state: Any) -> None:
        self.__dict__["__Broken_state__"] = state

    def __getstate__(self) -> Any:
        return self.__dict__.get("__Broken_state__")

    def __getnewargs__(self) -> tuple:
        # Makes references to it name no class (the class cannot be pickled by name).
        return ()

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith(("_p_", "_v_")):
            super().__setattr__(name, value)
            return
        raise AmphoraError(f"cannot change a broken object: its class "
                           f"{type(self).__module__}.{type(self).__name__} cannot be imported")

    def __repr__(self) -> str:
        klass = type(self)
        return f"<broken {klass.__module__}.{klass.__name__} object, oid {self._p_oid!r}>"


def _global_pickle(module: str, name: str) -> bytes:
    """A pickle of the global ``module.name`` that does not import it."""
    return b"\x80\x03c" + f"{module}\n{name}\n".encode("utf-8") + b"."


# ---------------------------------------------------------------------------------------
# Symbolic reading: no class is imported

def references(data: bytes, oids: list[bytes] | None = None) -> list[bytes]:
    """The oids a record refers to strongly (weak and cross-database references left out).

    Reads the record with ``noload``: no class is imported or called.
    """
    refs: list[Any] = []
    unpickler = _zpickle.Unpickler(io.BytesIO(data))
    unpickler.persistent_load = refs.append
    try:
        unpickler.noload()
        unpickler.noload()
    except Exception as exc:
        raise CorruptRecordError(f"cannot scan a record for references: {exc}") from exc
    found = [] if oids is None else oids
    for ref in refs:
        if isinstance(ref, tuple):
            oid = ref[0]
        elif isinstance(ref, (bytes, str)):
            oid = ref
        else:
            continue  # weak or cross-database
        if isinstance(oid, str):
            oid = oid.encode("latin-1")
        found.append(oid)
    return found


def class_name_of(data: bytes) -> str:
    """``module.Class`` of a record, read from its class metadata without importing it."""
    strings: list[str] = []
    try:
        for opcode, arg, _pos in pickletools.genops(data):
            name = opcode.name
            if name == "GLOBAL":
                return arg.replace(" ", ".", 1)
            if name == "STACK_GLOBAL" and len(strings) >= 2:
                return f"{strings[-2]}.{strings[-1]}"
            if isinstance(arg, str):
                strings.append(arg)
    except Exception as exc:
        raise CorruptRecordError(f"cannot read the class of a record: {exc}") from exc
    if len(strings) >= 2:
        return f"{strings[0]}.{strings[1]}"  # ((module, name), args)
    raise CorruptRecordError("a record names no class")


# ---------------------------------------------------------------------------------------
# Conflict resolution over records: ``_p_resolveConflict`` on three states of one object.
#
# When a transaction writes an object that another transaction changed since it was read,
# the storage asks :func:`resolve_record` for a merge before it raises ``ConflictError``.
# The object's class decides: ``klass._p_resolveConflict(old, committed, new)`` returns the
# merged state or raises. BTrees buckets and ``BTrees.Length`` implement it, and so can
# user classes (a counter, a queue).
#
# The one place below the Connection that imports application classes: the states
# are unpickled with persistent references left as :class:`PersistentReference` objects:
# no other object is loaded.

log = logging.getLogger("amphora.conflict")

_unresolvable: set[type] = set()


class PersistentReference:
    """A reference met while resolving a conflict, kept in its stored form.

    Two references are equal when they name the same oid (and then neither is less than
    the other: BTrees' merges test values with ``<`` as well as ``==``); comparing
    references to different objects, or weak ones, raises ValueError, because their order
    is unknowable without loading the objects.
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

    def __lt__(self, other: object) -> bool:
        return not self == other  # False, or ValueError

    __gt__ = __lt__

    def __le__(self, other: object) -> bool:
        return self == other  # True, or ValueError

    __ge__ = __le__

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


# The classes of records, by the start of their class pickle when it opens with the
# class's GLOBAL (protocol 3: PROTO, then "c" module newline name newline): looked up
# once per class, not once per record (a commit's merge hints ask for every record)
_CLASS_PICKLE = b"\x80\x03c"
_classes: dict[bytes, Any] = {}
_CLASSES_MAX = 256


def resolvable(data: bytes) -> bool:
    """Whether :func:`resolve_record` may merge a conflict on ``data``: its class, read
    from the record's class pickle alone (the state is not read), has a
    ``_p_resolveConflict``. False when the class cannot be found or the record is not
    a pickle."""
    key = None
    if data.startswith(_CLASS_PICKLE):
        end = data.find(b"\n", data.find(b"\n", 3) + 1)
        key = data[:end] if end > 0 else None
    klass = _classes.get(key) if key is not None else None
    if klass is None:
        try:
            meta = Unpickler(data, _no_reference, _find_class).load()
            klass, _ = _split_meta(meta, _find_class)
        except Exception:  # noqa: BLE001 - whatever it is, resolve_record would not merge it
            return False
        if key is not None:
            if len(_classes) >= _CLASSES_MAX:
                _classes.clear()
            _classes[key] = klass
    return klass not in _unresolvable and \
        getattr(klass, "_p_resolveConflict", None) is not None


def _no_reference(ref: Any) -> Any:
    raise CorruptRecordError("a class pickle holds a persistent reference")


def resolve_record(oid: bytes, committed_serial: bytes, old_serial: bytes, new_data: bytes,
                   load_serial: Callable[[bytes, bytes], bytes]) -> bytes | None:
    """The merged record, or None when the conflict cannot be resolved.

    ``load_serial(oid, tid)`` reads the state the writer started from (``old_serial``) and
    the state committed meanwhile (``committed_serial``). Errors in a class's resolver are
    logged and count as "cannot resolve".

    A class whose merge :mod:`amphora.symbolic` knows (``BTrees.Length``) is merged from
    the records' opcodes, with the same result and without unpickling: a hot spot's
    counter merges while its commit holds the commit lock.
    """
    klass: Any = None
    old = committed = None  # the two records, read once
    try:
        if symbolic.mergeable(new_data):
            old, committed = load_serial(oid, old_serial), load_serial(oid, committed_serial)
            merged = symbolic.merge(old, committed, new_data)
            if merged is not None:
                return merged
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
        if old is None:
            old, committed = load_serial(oid, old_serial), load_serial(oid, committed_serial)
        _, old_state = _state(old, refs)
        _, committed_state = _state(committed, refs)
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
