"""The wire protocol between ``amphora serve`` and the client storage.

Framing: every message is one *frame*, a 4-byte big-endian length followed by that many
bytes of MessagePack (bytes stay bytes, strings stay strings). A frame longer than the
receiver's limit (:data:`MAX_FRAME`, by default) or one that is not a message below is a
protocol error: the receiver sends an :data:`ERROR` (when it is the server) and closes
that connection.

A connection starts with a handshake. The client's first frame is
``[HELLO, {"protocol": VERSION, "token": str | None, "storage": name}]``; the server
answers ``[WELCOME, {"protocol": VERSION, "name": ..., "read_only": ..., "last_tid": ...,
"supports_history": ..., "supports_pack": ..., "feeds": ..., "mirror": ...,
"pack_reachable": ..., "undo": ..., "blobs": ..., "no_blobs_reason": ...,
"server": ...}]`` (``undo``: the served storage undoes, and the server answers
:data:`UNDO_LOG` and :data:`UNDO_OIDS`; ``blobs``: it keeps blobs, and the server answers
:data:`BLOB_WRITE` and :data:`BLOB_READ`, else ``no_blobs_reason`` says why not; ``feeds``: it answers :data:`TRANSACTION_LOG` and
:data:`PACKED_THROUGH`; ``pack_reachable``: :data:`PACK` takes the objects to keep; ``mirror``: the served storage can keep a JSON mirror and the
server answers :data:`SEARCH_METHODS`; servers without a key do not) or, for another protocol version or a bad token, ``[ERROR, 0, name, message, {}]``,
and closes. Versions are never
negotiated down: a server speaks exactly one version and names it when it refuses.

After the handshake:

``[REQUEST, id, method, args]``   client to server; ``id`` is a positive integer the
                                  client chose, ``method`` one of :data:`METHODS`.
``[REPLY, id, result]``           the answer to request ``id``.
``[ERROR, id, name, message, details]``
                                  request ``id`` failed with the amphora error class
                                  ``name`` (``details``: ``oid``, ``serials`` of conflicts).
``[PUSH, kind, payload]``         server to client, unasked: :data:`PUSH_COMMIT` (one per
                                  transaction, in commit order), :data:`PUSH_RESET`
                                  (changes that cannot be enumerated: flush caches).
``[RESOLVE, id, oid, committed_serial, old_serial, committed_data, old_data]``
                                  server to client, while commit request ``id`` votes
                                  (the storage's commit lock held): a write conflict on
                                  ``oid``; the records are the state committed meanwhile
                                  and the one the client read. ``committed_serial`` None:
                                  asked ahead, while commit ``id`` waits for the one
                                  before it, voted, to finish (``committed_data`` is
                                  that one's record).
``[RESOLVED, id, data]``          client to server, the answer: the merged record, or
                                  None (cannot merge: the commit fails with
                                  ``ConflictError``). No reply; answers come in the
                                  order of the questions.
``[MERGED, id, oid, data]``       server to client, before the reply to commit request
                                  ``id``, voted: the server merged a write conflict on
                                  ``oid`` itself (a class :mod:`amphora.symbolic` knows)
                                  and stores ``data`` instead of the client's record.
``[PROGRESS, id, done, total]``   server to client, before the reply to request ``id``
                                  (:data:`CREATE_MIRROR`, :data:`REBUILD_MIRROR`,
                                  :data:`FOLLOW_MIRROR`): how far it has come.

A client may send any number of requests without waiting; replies carry the request id
and may come in any order, except that replies and pushes that concern a transaction come
in commit order (see ``docs/server.md``).
"""
from __future__ import annotations

import datetime
import decimal
import struct
import uuid
from typing import Any

import msgpack

__all__ = ["VERSION", "MAX_FRAME", "HELLO", "WELCOME", "REQUEST", "REPLY", "ERROR", "PUSH",
           "RESOLVE", "RESOLVED", "MERGED", "PROGRESS",
           "METHODS", "WRITE_METHODS", "SEARCH_METHODS", "MIRROR_WRITE_METHODS", "PUSH_COMMIT", "PUSH_RESET", "ProtocolError",
           "FrameDecoder", "encode", "extended", "HEADER"]

#: the protocol version this code speaks (2: conflicts resolved during the vote; 3: a
#: commit may be finished by its vote, :data:`COMMIT` with ``finish`` true; 4: some
#: conflicts merged by the server (:data:`MERGED`), small records pushed with commits)
VERSION = 4
#: the largest frame accepted by default (bytes after the length prefix)
MAX_FRAME = 64 * 1024 * 1024

HEADER = struct.Struct(">I")

# -- message kinds (the first element of every message) ----------------------------------
HELLO = "hello"
WELCOME = "welcome"
REQUEST = "request"
REPLY = "reply"
ERROR = "error"
PUSH = "push"
RESOLVE = "resolve"
RESOLVED = "resolved"
MERGED = "merged"
PROGRESS = "progress"

# -- requests -----------------------------------------------------------------------------
LOAD_BEFORE = "load_before"        # (oid, before) -> [data, start, end] | None
LOAD_MANY = "load_many"            # (oids, before) -> [[oid, data, start, end], ...]
LOAD_SERIAL = "load_serial"        # (oid, serial) -> data
HISTORY = "history"                # (oid, size) -> [entry, ...] (extension keys as given)
ITERATE = "iterate"                # (start, stop, limit) -> [transaction, ...]
CHANGES_SINCE = "changes_since"    # (tid) -> [[tid, oids], ...] | None (cannot be known)
LAST_TRANSACTION = "last_transaction"  # () -> tid
SYNC = "sync"                      # () -> tid, after pushes of everything committed before
SIZE = "size"                      # () -> [object count, bytes]
NEW_OIDS = "new_oids"              # (count) -> [oid, ...]
COMMIT = "commit"                  # (meta, tid, records, serials, checks[, finish[,
                                   #   restored[, more]]]) -> None: voted (RESOLVE messages about
                                   #   it may come first); with finish true: -> tid, voted
                                   #   and finished at once, the reply in commit order (no
                                   #   FINISH follows). ``restored``: the oids of records
                                   #   that are restored (as ``tid`` wrote them, no
                                   #   conflict check), not stored. ``more``: {"undo":
                                   #   [tid, ...] undone first (storage.undo),
                                   #   "undo_merges": [[oid, committed serial, merged
                                   #   record], ...] the client made of UNDO_OIDS' states,
                                   #   "blobs":
                                   #   {oid: [upload, size]}: records stored with the
                                   #   file uploaded (BLOB_WRITE) as their blob}
FINISH = "finish"                  # () -> tid; the reply comes in commit order
ABORT = "abort"                    # () -> None
PACK = "pack"                      # (pack_time, gc[, reachable, through]) -> None;
                                   #   pack_time: seconds or a tid; reachable: the oids
                                   #   to keep, 8 bytes each, joined, as computed through
                                   #   the tid ``through`` (see Storage.pack; answered
                                   #   when the welcome says "pack_reachable": true)
TRANSACTION_LOG = "transaction_log"  # (after, limit) -> [[tid, user, description,
                                     #   extension, [oid, ...]], ...] (change feeds)
PACKED_THROUGH = "packed_through"  # () -> tid: the newest transaction pack removed
UNDO_LOG = "undo_log"              # (offset, limit) -> [entry, ...]: the storage's
                                   #   undoLog(offset, offset + limit), unfiltered,
                                   #   newest first (values MessagePack has no type for
                                   #   left out)
UNDO_OIDS = "undo_oids"            # (tid) -> [[oid, states], ...]: what undoing
                                   #   ``tid`` writes; ``states`` for an object changed
                                   #   since, whose undo is a merge: [committed serial,
                                   #   committed record, tid's record, the one before]
                                   #   (else None); UndoError if ``tid`` is not stored
BLOB_WRITE = "blob_write"          # (upload, offset, data) -> None: ``data`` written at
                                   #   ``offset`` of the session's file ``upload`` (an int
                                   #   the client chose), in the served storage's
                                   #   temporary directory; a COMMIT's "blobs" take them
BLOB_READ = "blob_read"            # (oid, serial, offset, length) -> [size, data]: up
                                   #   to ``length`` bytes of the committed blob file at
                                   #   ``offset``, and the file's whole size
LOAD_AHEAD = "load_ahead"          # (oids, before, limit) -> [[oid, data, start, end,
                                   #   partial], ...]: load_many and what they refer to

# -- the JSON mirror (answered when the welcome says "mirror": true) ------------------------
QUERY_MIRROR = "query_mirror"      # (sql, [param, ...], before | None, timeout | None) ->
                                   #   [[value, ...], ...]: a read-only query's rows, at
                                   #   the snapshot ``before`` (None: the latest)
TEXT_QUERY = "text_query"          # (index, query) -> [sql, [param, ...]]
MIRROR_MODE = "mirror_mode"        # () -> "sync" | "follow" | None
MIRROR_WATERMARK = "mirror_watermark"  # () -> int: the last tid the documents cover
WAIT_FOR_MIRROR = "wait_for_mirror"    # (tid int | None, timeout) -> bool
CREATE_MIRROR = "create_mirror"    # (mode) -> int: documents written
REBUILD_MIRROR = "rebuild_mirror"  # () -> int: documents written
FOLLOW_MIRROR = "follow_mirror"    # () -> int: transactions covered, catching up once
DROP_MIRROR = "drop_mirror"        # () -> None
CREATE_MIRROR_INDEX = "create_mirror_index"  # (name, expression, class_name, unique) -> None
CREATE_TEXT_INDEX = "create_text_index"      # (name, [field, ...], class_name) -> None

#: the mirror's requests
SEARCH_METHODS = frozenset({QUERY_MIRROR, TEXT_QUERY, MIRROR_MODE, MIRROR_WATERMARK,
                            WAIT_FOR_MIRROR, CREATE_MIRROR, REBUILD_MIRROR, FOLLOW_MIRROR,
                            DROP_MIRROR, CREATE_MIRROR_INDEX, CREATE_TEXT_INDEX})
#: the mirror's requests that change the database (a read-only token or server: refused)
MIRROR_WRITE_METHODS = frozenset({CREATE_MIRROR, REBUILD_MIRROR, FOLLOW_MIRROR, DROP_MIRROR,
                                  CREATE_MIRROR_INDEX, CREATE_TEXT_INDEX})
#: every request method a server answers
METHODS = frozenset({LOAD_BEFORE, LOAD_MANY, LOAD_SERIAL, HISTORY, ITERATE, CHANGES_SINCE,
                     LAST_TRANSACTION, SYNC, SIZE, NEW_OIDS, COMMIT, FINISH, ABORT, PACK,
                     TRANSACTION_LOG, PACKED_THROUGH, LOAD_AHEAD, UNDO_LOG, UNDO_OIDS,
                     BLOB_WRITE, BLOB_READ}) | SEARCH_METHODS
#: the methods a read-only server (or a client with a read-only token) is refused
WRITE_METHODS = frozenset({NEW_OIDS, COMMIT, FINISH, PACK, BLOB_WRITE}) | MIRROR_WRITE_METHODS

# -- pushes -------------------------------------------------------------------------------
#: ``{"tid", "oids", "user", "description", "extension", "records"}``: one committed
#: transaction (metadata None when the storage reported the commit without it;
#: ``records``: ``{oid: data}`` for some of its small records, empty for those)
PUSH_COMMIT = "commit"
#: ``{"tid"}``: transactions up to ``tid`` changed things that cannot be enumerated
PUSH_RESET = "reset"


class ProtocolError(Exception):
    """A frame or message that breaks the protocol (the connection is closed)."""


# -- values beyond MessagePack's own (a search's rows: PostgreSQL's numeric, dates, ...) ---
# Each is a MessagePack extension whose data is the value's text form.
_EXTENSIONS: dict[type, tuple[int, Any]] = {
    decimal.Decimal: (1, str),
    datetime.datetime: (2, datetime.datetime.isoformat),
    datetime.date: (3, datetime.date.isoformat),
    datetime.time: (4, datetime.time.isoformat),
    uuid.UUID: (5, str),
}
_DECODERS = {1: decimal.Decimal, 2: datetime.datetime.fromisoformat,
             3: datetime.date.fromisoformat, 4: datetime.time.fromisoformat, 5: uuid.UUID}


def extended(value: Any) -> Any:
    """How a value MessagePack has no type for travels (``default`` of ``packb``): the
    extensions above, tuples as lists; anything else as its ``str()``."""
    found = _EXTENSIONS.get(type(value))
    if found is not None:
        code, text = found
        return msgpack.ExtType(code, text(value).encode("ascii"))
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    return str(value)


def _ext_hook(code: int, data: bytes) -> Any:
    decode = _DECODERS.get(code)
    if decode is None:
        raise ProtocolError(f"an unknown MessagePack extension {code}")
    return decode(data.decode("ascii"))


_LARGE = 64 * 1024  # bytes that end a message and are copied once, not packed


def encode(message: list) -> bytes:
    """One frame: the length prefix and the MessagePack of ``message``.

    A message whose last element is a list ending with large bytes (a blob chunk's
    request or reply) is the same MessagePack, made around the bytes: they are copied
    once, into the frame, instead of through the packer's buffer."""
    tail = message[-1]
    if type(tail) is list and tail and type(tail[-1]) is bytes \
            and _LARGE <= len(tail[-1]) and len(message) < 16 and len(tail) < 16:
        return _encode_around(message[:-1], tail[:-1], tail[-1])
    body = msgpack.packb(message, use_bin_type=True, default=extended)
    return HEADER.pack(len(body)) + body


def _encode_around(outer: list, inner: list, data: bytes) -> bytes:
    """The frame of ``[*outer, [*inner, data]]`` (fewer than 16 elements each)."""
    def pack(value: Any) -> bytes:
        return msgpack.packb(value, use_bin_type=True, default=extended)
    size = len(data)
    bin_header = (b"\xc4" + size.to_bytes(1, "big") if size < 1 << 8 else
                  b"\xc5" + size.to_bytes(2, "big") if size < 1 << 16 else
                  b"\xc6" + size.to_bytes(4, "big"))
    head = b"".join([bytes([0x90 | (len(outer) + 1)]), *map(pack, outer),
                     bytes([0x90 | (len(inner) + 1)]), *map(pack, inner), bin_header])
    return b"".join([HEADER.pack(len(head) + size), head, data])


class FrameDecoder:
    """Splits a byte stream into messages; raises :class:`ProtocolError` on a frame over
    ``max_frame`` bytes or one that is not a MessagePack list."""

    def __init__(self, max_frame: int = MAX_FRAME):
        self.max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[list[Any]]:
        buffer = self._buffer
        buffer += data
        messages = []
        start = 0
        size = HEADER.size
        while len(buffer) - start >= size:
            (length,) = HEADER.unpack_from(buffer, start)
            if length > self.max_frame:
                raise ProtocolError(f"a frame of {length} bytes is over the limit of "
                                    f"{self.max_frame} bytes")
            end = start + size + length
            if len(buffer) < end:
                break
            try:  # read in place: a blob chunk's frame is not copied twice first
                with memoryview(buffer) as view, view[start + size:end] as frame:
                    message = msgpack.unpackb(frame, raw=False, use_list=True,
                                              strict_map_key=False, ext_hook=_ext_hook)
            except Exception as exc:
                raise ProtocolError(f"a frame that is not MessagePack ({exc})") from None
            if not isinstance(message, list) or not message or not isinstance(message[0], str):
                raise ProtocolError("a frame that is not a protocol message")
            messages.append(message)
            start = end
        if start:
            del buffer[:start]
        return messages
