"""Statements of the commit path on the wire: several in one round trip, straight through
libpq's pipeline mode on a psycopg connection's ``pgconn``.

A commit sends a few statements, the same ones every time. Through psycopg's cursors and
``Connection.pipeline()`` each costs tens of microseconds of Python, and the pipeline
adds round trips of its own: one after the ``BEGIN`` it starts a transaction with, one
for the ``Sync`` that ends it. Under contention, where every process's CPU is shared by
all, that work is what a hot spot waits for. :func:`send` sends its statements with one
write to the socket and :meth:`Answers.receive` reads their results after one wait:

- a statement is prepared the first time a session sends it (the ``Parse`` message goes
  in the same round trip as its first execution) and executed by name after that;
- parameters are those psycopg takes (``%s`` or ``%(name)s``): ``None``, ``bool``,
  ``int`` (``bigint``), ``str`` (typed by the server from the statement), ``bytes``
  (``bytea``, sent as it is) and lists of ``int`` or ``str`` (arrays);
- results come back in binary and are decoded for the types the storage's statements
  return (integers, ``bool``, ``bytea``, text); another type is an error;
- an error answers as psycopg raises it (``psycopg.errors``, ``UniqueViolation`` …),
  after every result up to the ``Sync`` was read, so the session is ready for the
  ``ROLLBACK`` that follows; a failure while results are still coming (the server gone,
  an interrupt) ends the session, which the storage then replaces.

psycopg must not prepare statements of its own on a connection used here: its
``rollback()`` would then send ``DEALLOCATE ALL``, which removes these too
(:func:`adopt` sets ``prepare_threshold = None``).
"""
from __future__ import annotations

import itertools
import re
import select
import weakref
from typing import Any, Iterable, Sequence

__all__ = ["Answers", "Result", "adopt", "in_transaction", "run", "send"]

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s|%%")
# libpq's ExecStatusType and PGTransactionStatusType values (psycopg is imported by the
# storage when opened, not with this module)
_OK = {1, 2}  # COMMAND_OK, TUPLES_OK
_FATAL = 7
_SYNC = 10  # PIPELINE_SYNC
_ABORTED = 11  # PIPELINE_ABORTED
_IDLE = 0


def _signed(value: bytes) -> int:
    return int.from_bytes(value, "big", signed=True)


# Binary results by type oid: int8, int4, int2, oid, bool, bytea, text, varchar, name, void
_DECODE: dict[int, Any] = {
    20: _signed, 23: _signed, 21: _signed, 26: lambda v: int.from_bytes(v, "big"),
    16: lambda v: v == b"\x01", 17: bytes, 25: bytes.decode, 1043: bytes.decode,
    19: bytes.decode, 2278: lambda v: None,
}


class _Statement:
    """An SQL text with psycopg's placeholders, as libpq takes it (``$1``, ``$2`` …), and
    the names of its parameters in that order (none: positional)."""

    __slots__ = ("text", "names", "count")

    def __init__(self, sql: str):
        names: list[str] = []
        count = 0

        def number(match: re.Match) -> str:
            nonlocal count
            if match.group(0) == "%%":
                return "%"
            name = match.group(1)
            if name is None:
                count += 1
                return f"${count}"
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"
        self.text = _PLACEHOLDER.sub(number, sql).encode()
        if names and count:
            raise ValueError("a statement takes %s or %(name)s parameters, not both")
        self.names = names
        self.count = len(names) or count

    def values(self, params: Any) -> list[Any]:
        if self.names:
            return [params[name] for name in self.names]
        if len(params) != self.count:
            raise TypeError(f"the statement takes {self.count} parameters, "
                            f"not {len(params)}")
        return list(params)


_statements: dict[str, _Statement] = {}
_UNNAMED = {b"BEGIN", b"COMMIT", b"ROLLBACK"}


def _statement(sql: str) -> _Statement:
    found = _statements.get(sql)
    if found is None:
        found = _statements[sql] = _Statement(sql)
    return found


def _array_item(value: Any) -> str:
    if type(value) is int:
        return str(value)
    if type(value) is str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"an array parameter holds {type(value).__name__} items, "
                    "not integers or strings")


def _encode(value: Any) -> tuple[bytes | None, int, int]:
    """(value, type oid, format) of a parameter: text but for bytea."""
    kind = type(value)
    if value is None:
        return None, 0, 0
    if kind is int:
        return str(value).encode(), 20, 0
    if kind is str:
        return value.encode(), 0, 0  # (unknown: typed by the statement)
    if kind is bytes:
        return value, 17, 1
    if kind is bool:
        return (b"t" if value else b"f"), 16, 0
    if kind in (bytearray, memoryview):
        return bytes(value), 17, 1
    if kind in (list, tuple):
        oid = 1016 if all(type(item) is int for item in value) else 1009
        return ("{" + ",".join(map(_array_item, value)) + "}").encode(), oid, 0
    raise TypeError(f"a statement parameter of type {kind.__name__} is not supported")


def in_transaction(conn: Any) -> bool:
    """Whether ``conn``'s session is in a transaction (a failed one too), or not known to
    be idle."""
    return conn.pgconn.transaction_status != _IDLE


def _wait(pgconn: Any, event: int) -> None:
    """Until the session's socket is ready for ``event`` (``select.POLLIN``, ``POLLOUT``)."""
    poller = select.poll()
    poller.register(pgconn.socket, event)
    poller.poll()


class Result:
    """One statement's answer: its rows (tuples of decoded values) and its row count."""

    __slots__ = ("rows", "rowcount")

    def __init__(self, rows: list[tuple], rowcount: int):
        self.rows = rows
        self.rowcount = rowcount


def _rows(result: Any) -> list[tuple]:
    fields = result.nfields
    if not fields:
        return []
    decoders = []
    for col in range(fields):
        decode = _DECODE.get(result.ftype(col))
        if decode is None:
            from psycopg import errors
            raise errors.InterfaceError(f"a statement returned a column of type oid "
                                        f"{result.ftype(col)}, which the wire does not read")
        decoders.append(decode)
    value = result.get_value
    rows = []
    for row in range(result.ntuples):
        rows.append(tuple([None if (v := value(row, col)) is None else decoders[col](v)
                           for col in range(fields)]))
    return rows


# The statements prepared in each session, by text and parameter types: their names
_prepared: "weakref.WeakKeyDictionary[Any, dict[tuple[bytes, tuple[int, ...]], bytes]]" = \
    weakref.WeakKeyDictionary()


_names = itertools.count()  # (a name is never used twice: one whose Parse failed is not)


def adopt(conn: Any) -> Any:
    """Make a psycopg connection fit for :func:`send` (see the module docstring)."""
    conn.prepare_threshold = None
    _prepared[conn] = {}
    return conn


class Answers:
    """The results of statements sent by :func:`send`, read by :meth:`receive`."""

    __slots__ = ("_conn", "_kept")

    def __init__(self, conn: Any, kept: list[Any]):
        self._conn = conn
        # per message answered: True for a statement's, else False (BEGIN) or the key of
        # the statement it prepares
        self._kept = kept

    def receive(self) -> list[Result]:
        """Each statement's :class:`Result`, in order (a ``BEGIN`` sent with them not
        counted); raises the first statement's error, if one failed."""
        results, error = self.receive_all()
        if error is not None:
            raise error
        return results  # type: ignore[return-value]

    def receive_all(self) -> tuple[list[Result | None], Exception | None]:
        """Each statement's :class:`Result`, in order, None for one that failed or was
        skipped after a failure, and the first statement's error (None if none failed).
        A failure of the session itself (no answer) is raised."""
        conn = self._conn
        pgconn = conn.pgconn
        kept = iter(self._kept)
        unmade = []  # statements whose preparation failed or was skipped after a failure
        results: list[Result | None] = []
        error: Exception | None = None
        ended = False  # (a result of None ends a statement's results; two, the answers)
        try:
            while True:
                while pgconn.is_busy():
                    _wait(pgconn, select.POLLIN)
                    pgconn.consume_input()
                result = pgconn.get_result()
                if result is None:
                    if ended:
                        from psycopg import errors
                        raise errors.OperationalError("the session ended before the "
                                                      "answers to a batch came")
                    ended = True
                    continue
                ended = False
                status = result.status
                if status == _SYNC:
                    break
                answer: Result | None = None
                if status in _OK:
                    try:
                        answer = Result(_rows(result), result.command_tuples or 0)
                    except Exception as exc:  # noqa: BLE001  (raised once all is read)
                        error = error or exc
                elif status != _ABORTED and error is None:
                    from psycopg import errors
                    error = (errors.error_from_result(result, conn.info.encoding)
                             if status == _FATAL else errors.InterfaceError(
                                 f"unexpected result status {status!r}"))
                message = next(kept)
                if message is True:
                    results.append(answer)
                elif message is not False and status not in _OK:
                    unmade.append(message)
            pgconn.exit_pipeline_mode()
        except BaseException:
            _abandon(conn)
            raise
        prepared = _prepared.get(conn, {})
        for key in unmade:  # (prepared again, by a new name, the next time it is sent)
            prepared.pop(key, None)
        return results, error


def _abandon(conn: Any) -> None:
    """A session left between a statement and its result: ended (``conn.broken``)."""
    _prepared.pop(conn, None)
    try:
        conn.pgconn.finish()
    except Exception:  # noqa: BLE001  (ending it is all that is asked)
        pass


def send(conn: Any, statements: Iterable[tuple[str, Any]], begin: bool = False) -> Answers:
    """Send ``(sql, params)`` statements in one write, preceded by ``BEGIN`` if
    ``begin`` and the session is in no transaction; their results come with
    :meth:`Answers.receive`. ``conn`` is :func:`adopt`-ed if it was not (before it
    prepared statements of its own, for one that rolls back)."""
    pgconn = conn.pgconn
    prepared = _prepared.get(conn)
    if prepared is None:
        adopt(conn)
        prepared = _prepared[conn]
    encoded = []
    for sql, params in statements:
        statement = _statement(sql)
        values, types, formats = [], [], []
        for value in statement.values(params):
            data, oid, fmt = _encode(value)
            values.append(data)
            types.append(oid)
            formats.append(fmt)
        encoded.append((statement.text, values, tuple(types), formats))
    kept: list[Any] = []  # (see Answers)
    try:
        pgconn.enter_pipeline_mode()
        if begin and pgconn.transaction_status == _IDLE:
            pgconn.send_query_params(b"BEGIN", None)
            kept.append(False)
        for text, values, types, formats in encoded:
            if text in _UNNAMED:  # (transaction control: nothing to plan)
                pgconn.send_query_params(text, None)
                kept.append(True)
                continue
            key = (text, types)
            name = prepared.get(key)
            if name is None:
                name = prepared[key] = b"amphora_%d" % next(_names)
                pgconn.send_prepare(name, text, types or None)
                kept.append(key)
            pgconn.send_query_prepared(name, values, formats or None, result_format=1)
            kept.append(True)
        pgconn.pipeline_sync()
        while pgconn.flush():
            _wait(pgconn, select.POLLOUT)
    except BaseException:
        _abandon(conn)
        raise
    return Answers(conn, kept)


def run(conn: Any, statements: Sequence[tuple[str, Any]], begin: bool = False
        ) -> list[Result]:
    """:func:`send` and :meth:`Answers.receive` in one call."""
    return send(conn, statements, begin).receive()
