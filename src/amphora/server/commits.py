"""The server's side of commits: a client's transaction on the served storage
(:class:`Commit`), its vote, the conflicts the client is asked to merge
(:data:`~amphora.server.protocol.RESOLVE`) or that are merged here
(:mod:`amphora.symbolic`, :data:`~amphora.server.protocol.MERGED`), its finish and abort,
and packs.

A commit is made one of two ways (see :mod:`amphora.server.server`): on a storage in this
process, in the event loop, queued for its turn as the storage's one writer
(:meth:`CommitRequests.serialize`, :meth:`amphora.server.served.Served.next_writer`), a
vote that waits for a merge returning to the loop (:meth:`CommitRequests.continue_vote`,
:meth:`CommitRequests.resolved`); on a remote storage, whole in the client's own commit
thread (:meth:`CommitRequests.do_commit`, which waits for the merge there).

Private: mixed into the server's session class.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
from typing import Any, Callable

from amphora import errors, symbolic
from amphora.serialize import references
from amphora.server import protocol as p
from amphora.server.blobs import remove_files
from amphora.server.reads import check_oid
from amphora.storage.base import TransactionMetaData
from amphora.storage.sql.keys import _split

__all__ = ["CommitRequests", "Commit", "MergeWanted", "PENDING", "REPLIED"]

log = logging.getLogger("amphora.server")

_MAX_MERGES = 1000                 # conflicts merged in one vote before giving up
_PUSH_RECORD = 512                 # records up to this size are pushed with their commit,
_PUSH_RECORDS = 32                 # up to this many per commit


def _now(func: Callable, *args: Any) -> None:
    func(*args)


PENDING = object()  # a merge asked for, not answered yet
REPLIED = object()  # a commit finished by its vote: replied in commit order already


class MergeWanted(Exception):
    """Raised through a vote: the client must merge ``oid`` (``states``: the committed
    and the read record) before the vote can succeed."""

    def __init__(self, oid: bytes, committed: bytes, old: bytes, states: list[bytes]):
        super().__init__(oid, committed, old)
        self.oid, self.committed, self.old, self.states = oid, committed, old, states


class Commit(TransactionMetaData):
    """A client's transaction on the served storage; the storage asks it to resolve its
    write conflicts (see :meth:`amphora.storage.base.StorageBase._check_conflicts`).

    A conflict it has no merge for yet fails the vote with :class:`MergeWanted`, and the
    server votes again once the client answered: nothing waits for the network inside
    the storage's vote (which may hold locks its readers need)."""

    def __init__(self, user: Any, description: Any, extension: Any, records: dict,
                 ahead: dict[bytes, list] | None = None, finish: bool = False):
        super().__init__(user, description, extension)
        self.records = records
        #: finished as soon as voted (COMMIT with ``finish``): no FINISH request follows
        self.finish = finish
        self.merges: dict[tuple[bytes, bytes], bytes | None] = {}  # (oid, committed) ->
        self.merged: dict[bytes, bytes] = {}  # oid -> the merged record stored
        #: oid -> the record merged here (a class of :mod:`amphora.symbolic`), which the
        #: client is told of before the commit's reply (MERGED)
        self.told: dict[bytes, bytes] = {}
        #: oid -> [committed record, merge or PENDING]: merges asked ahead, while the
        #: commit before this one was finishing (see Served.ask_ahead)
        self.ahead = ahead if ahead is not None else {}
        #: the oids the undos of this commit write (their records are the storage's)
        self.undone: list[bytes] = []
        #: an undo is computing its records: a later change it meets is merged by the
        #: client beforehand (``undo_merges``, by (oid, committed serial)) or here
        #: (:mod:`amphora.symbolic`), or not at all
        self.undoing = False
        self.undo_merges: dict[tuple[bytes, bytes], bytes] = {}

    def final(self, oid: bytes) -> bytes | None:
        """The record of ``oid`` this commit stores (once voted; None for an undo's)."""
        return self.merged.get(oid) or self.records.get(oid)

    def undo_merge(self, key: tuple[bytes, bytes], old: bytes, data: bytes,
                   load_serial: Callable[[bytes, bytes], bytes]) -> bytes | None:
        """An undo's merge with the later change to ``key[0]``: the client's, made when
        it asked what the undo writes (UNDO_OIDS), or the server's own."""
        merged = self.undo_merges.get(key)
        if merged is None:
            try:
                merged = symbolic.merge(load_serial(key[0], old), load_serial(*key), data)
            except Exception:
                merged = None
        if merged is not None:
            self.merged[key[0]] = merged
        return merged

    def resolve_conflict(self, oid: bytes, committed: bytes, old: bytes, data: bytes,
                         load_serial: Callable[[bytes, bytes], bytes]) -> bytes | None:
        key = (oid, committed)
        if self.undoing:
            return self.undo_merge(key, old, data, load_serial)
        if key in self.merges:
            merged = self.merges[key]
        else:
            try:
                states = [load_serial(oid, committed), load_serial(oid, old)]
            except Exception as exc:  # the state read is gone (packed): a plain conflict
                log.debug("no states to resolve oid %s: %s", oid.hex(), exc)
                return None
            merged = symbolic.merge(states[1], states[0], data)
            if merged is not None:  # a class whose merge is known: no round trip
                self.merges[key] = self.told[oid] = merged
            elif self.undoing:
                return None
            else:
                guess = self.ahead.get(oid)
                # A merge asked ahead is the client's answer for these very three records
                # only if the committed one is the record it was asked with.
                if guess is None or guess[1] is PENDING or guess[0] != states[0]:
                    raise MergeWanted(oid, committed, old, states)
                merged = guess[1]
        if merged is not None:
            self.merged[oid] = merged
        return merged


class CommitRequests:
    """The handlers of COMMIT, FINISH, ABORT and PACK and of the client's merges; needs
    the session's ``served``, ``server``, ``loop``, ``closed``, ``peer``, ``send``,
    ``answer`` and ``fail``, and keeps its commit state (``txn``, ``voted``,
    ``merging``, ``questions``, ``ahead``, ``resolving``, ``commit_jobs``: see
    :class:`amphora.server.session.Session`)."""

    served: Any
    server: Any
    loop: asyncio.AbstractEventLoop
    closed: bool
    peer: str
    txn: TransactionMetaData | None
    voted: bool
    merging: tuple[int, Commit, MergeWanted, int, asyncio.TimerHandle] | None
    questions: collections.deque[tuple]
    ahead: dict[bytes, list]
    resolving: tuple[int, concurrent.futures.Future] | None
    commit_jobs: int
    send: Callable[[list], None]
    answer: Callable[..., None]
    fail: Callable[[str], None]

    def serialize(self, request_id: int, method: str, args: list) -> None:
        """COMMIT and PACK on a storage in this process: queued for their turn as the
        storage's one writer (see :meth:`amphora.server.served.Served.next_writer`)."""
        if self.server.stopping and method == p.COMMIT:
            self.send([p.ERROR, request_id, "StorageError", "the server is stopping", {}])
            return
        served = self.served
        if method == p.PACK and served.writer is self and served.pack_hold is not None \
                and served.pack_hold[0] is self:  # its refused pack kept the storage
            served.pack(self, request_id, args)
            return
        if method == p.COMMIT:
            self.commit_jobs += 1
            self.ahead = {}
        served.waiting.append((self, request_id, method, args))
        writer = served.writer
        if len(served.waiting) == 1 and writer is not None and writer.voted:
            served.ask_ahead(writer, writer.txn)  # the next one: asked while it finishes
        served.next_writer()

    def replied(self, request_id: int, method: str, result: Any = None,
                error: BaseException | None = None) -> None:
        """Answer a queued COMMIT or PACK."""
        done = self.loop.create_future()
        if error is None:
            done.set_result(result)
        else:
            done.set_exception(error)
        self.answer(request_id, method, done)

    def start_commit(self, request_id: int, args: list) -> None:
        """This session's turn as the writer: begin and vote (in the event loop)."""
        try:
            txn = self.begin_commit(*args)
        except Exception as exc:
            self.replied(request_id, p.COMMIT, error=exc)
            return
        self.continue_vote(request_id, txn, 0)

    def continue_vote(self, request_id: int, txn: Commit, merges: int) -> None:
        """Vote; on a conflict the client must merge, ask it and return (its answer, in
        :meth:`resolved`, comes back here); reply once voted or failed."""
        while True:
            try:
                wanted = self.vote(txn)
            except Exception as exc:  # aborted: the next writer has begun
                self.replied(request_id, p.COMMIT, error=exc)
                return
            if wanted is None:
                self.tell_merged(request_id, txn)
                if txn.finish:  # the lock released now, not a round trip later
                    try:
                        result = self.finish_voted(request_id)
                    except Exception as exc:
                        self.replied(request_id, p.COMMIT, error=exc)
                        return
                    self.replied(request_id, p.COMMIT, result)
                    return
                self.replied(request_id, p.COMMIT)
                self.served.ask_ahead(self, txn)
                return
            merges += 1
            if merges > _MAX_MERGES:
                self.abort_commit()
                self.replied(request_id, p.COMMIT, error=errors.ConflictError(
                    "conflicts kept coming while resolving them"))
                return
            if self.closed:
                txn.merges[wanted.oid, wanted.committed] = None  # fails, aborts
                continue
            timer = self.loop.call_later(self.server.resolve_timeout, self.fail,
                                         "no answer to a conflict in time")
            self.merging = (request_id, txn, wanted, merges, timer)
            guess = txn.ahead.get(wanted.oid)
            if guess is not None and guess[1] is PENDING and guess[0] == wanted.states[0]:
                return  # asked ahead with these records: its answer goes on (resolved)
            self.questions.append(("vote",))
            self.send([p.RESOLVE, request_id, wanted.oid, wanted.committed, wanted.old,
                       *wanted.states])
            return

    def ask_merge(self, request_id: int, wanted: MergeWanted) -> bytes | None:
        """Ask the client to merge a write conflict and wait for its answer (in the
        commit thread, the storage's commit lock held); None: not merged."""
        answer: concurrent.futures.Future = concurrent.futures.Future()
        self.resolving = (request_id, answer)
        if self.closed:
            return None
        self.loop.call_soon_threadsafe(self.send, [
            p.RESOLVE, request_id, wanted.oid, wanted.committed, wanted.old, *wanted.states])
        try:
            merged = answer.result(self.server.resolve_timeout)
        except concurrent.futures.TimeoutError:
            log.warning("%s did not answer a conflict in time", self.peer)
            merged = None
        finally:
            self.resolving = None
        return merged if type(merged) is bytes else None

    def resolved(self, request_id: int | None, data: Any) -> None:
        """The client's merge (None for every request: the connection is gone or the
        answer is late): the vote goes on, in this thread or in the commit thread."""
        if request_id is None:
            self.questions.clear()
        elif self.questions:
            question = self.questions.popleft()
            if question[0] == "ahead":
                guess = question[1]
                guess[1] = data if type(data) is bytes else None
                merging = self.merging
                if merging is not None \
                        and merging[1].ahead.get(merging[2].oid) is guess:  # awaited
                    self.merging = None
                    merging[4].cancel()
                    self.continue_vote(merging[0], merging[1], merging[3])
                return
        merging = self.merging
        if merging is not None and request_id in (None, merging[0]):
            self.merging = None
            request_id, txn, wanted, merges, timer = merging
            timer.cancel()
            if data is None and not self.closed:
                log.debug("%s did not merge oid %s", self.peer, wanted.oid.hex())
            txn.merges[wanted.oid, wanted.committed] = data if type(data) is bytes else None
            self.continue_vote(request_id, txn, merges)
            return
        waiting = self.resolving
        if waiting is not None and request_id in (None, waiting[0]) \
                and not waiting[1].done():
            waiting[1].set_result(data)

    def do_commit(self, request_id: int, *args: Any) -> Any:
        """A whole commit up to its vote (and its finish, when asked), in the client's
        commit thread."""
        txn = self.begin_commit(*args)
        for _ in range(_MAX_MERGES):
            wanted = self.vote(txn)
            if wanted is None:
                self.tell_merged(request_id, txn)
                return self.finish_voted(request_id) if txn.finish else None
            txn.merges[wanted.oid, wanted.committed] = self.ask_merge(request_id, wanted)
        self.abort_commit()
        raise errors.ConflictError("conflicts kept coming while resolving them")

    def begin_commit(self, meta: list, tid: bytes | None, records: dict, serials: dict,
                     checks: dict, finish: bool = False, restored: list = (),
                     more: dict | None = None) -> Commit:
        storage = self.served.storage
        if self.txn is not None:  # a commit the client gave up on
            storage.tpc_abort(self.txn)
            self.txn = None
        self.voted = False
        user, description, extension = meta
        txn = Commit(user, description, extension, records, self.ahead, finish is True)
        self.ahead = {}
        if tid is None:
            storage.tpc_begin(txn)
        else:
            storage.tpc_begin(txn, check_oid(tid, "a tid"))
        self.txn = txn
        more = more if isinstance(more, dict) else {}
        blobs: dict[bytes, str] = {}
        try:
            for oid, committed, merged in more.get("undo_merges") or ():
                txn.undo_merges[check_oid(oid), check_oid(committed, "a tid")] = merged
            for undone in more.get("undo") or ():
                txn.undoing = True
                try:
                    txn.undone.extend(storage.undo(check_oid(undone, "a tid"), txn)[1])
                finally:
                    txn.undoing = False
            blobs = self.take_uploads(more.get("blobs") or {})
            missing = blobs.keys() - records.keys()
            if missing:
                raise errors.StorageError(
                    f"the blob of oid {min(missing).hex()} has no record in the commit")
            stored, serials = self.restore_records(txn, tid, records, serials, restored,
                                                   blobs)
            storage.store_many({oid: data for oid, data in stored.items()
                                if oid not in blobs},
                               {oid: serial for oid, serial in serials.items()
                                if oid not in blobs}, txn)
            for oid in blobs.keys() & stored.keys():
                storage.storeBlob(oid, serials.get(oid), stored[oid], blobs[oid], "", txn)
            for oid, serial in checks.items():
                storage.checkCurrentSerialInTransaction(oid, serial, txn)
        except BaseException:
            remove_files(blobs.values())  # those not taken by the storage
            self.abort_commit()
            raise
        txn.set_data(self, (user, description, extension,
                            list(dict.fromkeys([*txn.undone, *records]))))
        return txn

    def restore_records(self, txn: Commit, tid: bytes | None, records: dict, serials: dict,
                        restored: list, blobs: dict[bytes, str]) -> tuple[dict, dict]:
        """Restore the records of ``restored`` oids (a copy's, as transaction ``tid`` wrote
        them; with their file in ``blobs``, if any); the records and serials left to
        store."""
        if not restored:
            return records, serials
        restored = {check_oid(oid) for oid in restored}
        missing = restored - records.keys()
        if missing:
            raise errors.StorageError(
                f"restored oid {min(missing).hex()} has no record in the commit")
        storage = self.served.storage
        for oid in restored:
            if oid in blobs:
                storage.restoreBlob(oid, tid, records[oid], blobs[oid], None, txn)
            else:
                storage.restore(oid, tid, records[oid], "", None, txn)
        stored = {oid: data for oid, data in records.items() if oid not in restored}
        return stored, {oid: serials[oid] for oid in stored}

    def vote(self, txn: Commit) -> MergeWanted | None:
        """Vote; the conflict the client must merge first, if any (the vote undid what
        it did and is made again with the merge). Other failures abort."""
        try:
            self.served.storage.tpc_vote(txn)
        except MergeWanted as wanted:
            return wanted
        except BaseException:
            self.abort_commit()
            raise
        self.voted = True
        return None

    def tell_merged(self, request_id: int, txn: Commit) -> None:
        """Tell the client of commit ``request_id``, voted, which of its records were
        merged here and what is stored instead (before the commit's reply)."""
        if not txn.told:
            return
        send = self.send if self.served.inline else \
            lambda message: self.loop.call_soon_threadsafe(self.send, message)
        for oid, data in txn.told.items():
            send([p.MERGED, request_id, oid, data])

    def abort_commit(self) -> None:
        txn, self.txn = self.txn, None
        self.voted = False
        try:
            if txn is not None:
                self.served.storage.tpc_abort(txn)
        finally:
            self.unlock()

    def unlock(self) -> None:
        """Let the next writer in, when commits are made in the event loop."""
        served = self.served
        if served is not None and served.writer is self:
            served.end_pack_hold(self)
            served.writer = None
            served.next_writer()

    def do_finish(self, request_id: int) -> bytes:
        txn = self.txn
        if txn is None or not self.voted:
            raise errors.StorageTransactionError("no voted transaction to finish")
        self.voted = False
        served = self.served
        user, description, extension, oids = txn.data(self)
        # in the event loop (commits made there): pushed and answered before the next
        # writer begins
        call = self.loop.call_soon_threadsafe if not served.inline else _now

        small = {}  # pushed with the commit: a client's next load of them is local
        for oid in oids if len(served.sessions) > 1 else ():
            data = txn.final(oid)
            if data is not None and len(data) <= _PUSH_RECORD:
                small[oid] = data
                if len(small) == _PUSH_RECORDS:
                    break

        def finished(tid: bytes) -> None:  # under the storage's commit lock
            payload = {"tid": tid, "oids": oids, "user": user, "description": description,
                       "extension": extension, "records": small}
            call(served.committed, self, request_id, payload)
        try:
            return served.storage.tpc_finish(txn, finished)
        finally:
            self.txn = None
            self.unlock()

    def finish_voted(self, request_id: int) -> object:
        """Finish the commit just voted, for a COMMIT with ``finish`` (the client's only
        data manager: a successful vote is always followed by its finish): the same
        finish as FINISH's, whose reply, the tid, is the commit request's."""
        self.do_finish(request_id)
        return REPLIED

    def do_abort(self, request_id: int) -> None:
        merging, self.merging = self.merging, None
        self.abort_commit()
        if merging is not None:  # the commit asked about is over
            merging[4].cancel()
            self.replied(merging[0], p.COMMIT, error=errors.StorageTransactionError(
                "the commit was aborted while its conflict was being merged"))

    def do_pack(self, request_id: int, pack_time: float | bytes, gc: bool,
                reachable: bytes | None = None, through: bytes | None = None) -> None:
        """Pack the served storage; given ``reachable`` (the oids to keep, joined), with
        no reading of references here (see :meth:`amphora.storage.base.Storage.pack`)."""
        from amphora.storage.base import pack_tid
        storage = self.served.storage
        if type(pack_time) is bytes:
            check_oid(pack_time, "a pack time given as a tid")
        elif type(pack_time) not in (int, float):
            raise errors.StorageError(f"a pack time is seconds or a tid, not {pack_time!r:.40}")
        if reachable is None:
            storage.pack(pack_time, references, gc=bool(gc))
        else:
            if type(reachable) is not bytes or len(reachable) % 8:
                raise errors.StorageError("pack's objects to keep are 8-byte oids joined, "
                                          f"not {type(reachable).__name__} of "
                                          f"{len(reachable) if type(reachable) is bytes else '?'}"
                                          " bytes")
            storage.pack(pack_time, None, gc=bool(gc), reachable=_split(reachable),
                         through=check_oid(through, "the tid the objects to keep were "
                                                    "computed through"))
        self.served.packed_to = max(self.served.packed_to, pack_tid(pack_time))
