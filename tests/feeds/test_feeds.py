"""Change feeds on every storage: every committed transaction delivered once, in commit
order, exactly as committed; resumable from any tid; ResyncRequired once pack removed
transactions after the start; subscribers miss nothing committed after subscribing and
never hold up commits."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest
import transaction

import amphora
from amphora.feeds import Change, ResyncRequired
from amphora.utils import p64, u64

from conformance.models import Item

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def feed_db(make_storage, storage):
    if storage.isReadOnly():
        pytest.skip(f"{make_storage.name} is read-only: nothing is committed to feed")
    db = amphora.DB(storage)
    yield db
    db.close()


def commit(db, name: str, user: str = "", note: str = "", **extension) -> tuple[bytes, set]:
    """Set root[name] to a new Item; returns (tid, oids written)."""
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    txn = manager.begin()
    if user:
        txn.setUser(user)
    if note:
        txn.note(note)
    for key, value in extension.items():
        txn.setExtendedInfo(key, value)
    conn.root()[name] = item = Item(name)
    manager.commit()
    oids = {conn.root()._p_oid, item._p_oid}
    conn.close()
    return db.last_transaction(), oids


def wait_until(condition, seconds: float = 20.0) -> bool:
    """Poll ``condition`` (the subscription thread delivers on its own time); whether it
    held before ``seconds`` passed."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(condition())


def test_every_transaction_is_delivered_in_order_exactly_as_committed(feed_db):
    start = feed_db.last_transaction()
    commits = [commit(feed_db, f"k{n}", user=f"user{n}", note=f"change {n}", number=n)
               for n in range(5)]
    changes = list(feed_db.changes(since=start, timeout=0))
    assert [c.tid for c in changes] == [tid for tid, _ in commits]
    for n, (change, (tid, oids)) in enumerate(zip(changes, commits)):
        assert isinstance(change, Change)
        assert set(change.oids) == oids
        assert change.description == f"change {n}".encode()
        assert change.user.endswith(f"user{n}".encode())
        assert change.extension == {"number": n}
        assert change.time.year >= 2020


def test_since_none_starts_from_now_and_a_feed_resumes_from_any_tid(feed_db):
    first, _ = commit(feed_db, "before")
    feed = feed_db.changes(timeout=0.2)  # from now on
    second, _ = commit(feed_db, "after")
    third, _ = commit(feed_db, "later")
    assert [c.tid for c in feed] == [second, third]
    assert [c.tid for c in feed_db.changes(since=second, timeout=0)] == [third]
    assert [c.tid for c in feed_db.changes(since=first, timeout=0)] == [second, third]
    assert list(feed_db.changes(since=third, timeout=0)) == []


def test_a_waiting_feed_wakes_for_a_commit_made_while_it_waits(feed_db):
    start = feed_db.last_transaction()
    got: list[bytes] = []
    reader = threading.Thread(
        target=lambda: got.append(next(iter(feed_db.changes(since=start))).tid))
    reader.start()
    tid, _ = commit(feed_db, "wakes")
    reader.join(timeout=30)
    assert not reader.is_alive() and got == [tid]


def test_a_start_before_packed_away_transactions_requires_a_resync(make_storage, feed_db):
    if not hasattr(feed_db.storage, "packed_through"):
        pytest.skip(f"{make_storage.name} does not say what pack removed")
    if not feed_db.storage.supports_pack:
        pytest.skip(f"{make_storage.name} cannot pack")
    first, _ = commit(feed_db, "x")
    with feed_db.transaction() as conn:  # replaces the root written by `first`
        conn.root()["x"].value = "changed"
        conn.root()["y"] = 1
    for n in range(3):
        commit(feed_db, f"z{n}")
    feed_db.pack()
    packed = feed_db.storage.packed_through()
    if packed < first:
        pytest.skip(f"{make_storage.name}'s pack kept every transaction")
    with pytest.raises(ResyncRequired) as caught:
        list(feed_db.changes(since=p64(u64(first) - 1), timeout=0))  # just before `first`
    assert caught.value.packed_through == packed
    # from the packed point on, the feed works again
    later, _ = commit(feed_db, "after pack")
    assert later in [c.tid for c in feed_db.changes(since=packed, timeout=0)]


def test_subscribers_miss_nothing_committed_after_subscribing(feed_db):
    stop = threading.Event()
    committed: list[bytes] = []

    def writer() -> None:
        n = 0
        while not stop.is_set():
            committed.append(commit(feed_db, f"w{n}")[0])
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(committed) < 3:
            stop.wait(0.01)
        seen: list[Change] = []
        feed_db.subscribe(seen.append)
        # The subscription starts at the last transaction committed when subscribe
        # returns. (The writer appends a tid after its commit returns, so the length of
        # `committed` here may leave out a commit made before subscribing.)
        start = feed_db.last_transaction()
        subscribed_at = len(committed)
        while len(committed) < subscribed_at + 5:
            stop.wait(0.01)
    finally:
        stop.set()
        thread.join()
    last = committed[-1]
    wait_until(lambda: seen and seen[-1].tid >= last)
    tids = [c.tid for c in seen]
    assert tids == sorted(set(tids)), "in order, once each"
    after = {tid for tid in committed if tid > start}
    assert len(after) >= 4  # those begun after `committed` was read at least
    assert after <= set(tids), "every commit after subscribing was delivered"
    assert set(tids) <= set(committed)
    feed_db.unsubscribe(seen.append)


def test_a_slow_subscriber_never_holds_up_commits(feed_db):
    release = threading.Event()
    entered = threading.Event()
    seen: list[bytes] = []

    def slow(change: Change) -> None:
        entered.set()
        release.wait(30)
        seen.append(change.tid)

    feed_db.subscribe(slow)
    first, _ = commit(feed_db, "first")
    assert entered.wait(10), "the subscriber was called"
    # the subscriber is stuck inside its first call: commits still go through
    later = [commit(feed_db, f"more{n}")[0] for n in range(5)]
    release.set()
    wait_until(lambda: len(seen) == 6)
    assert seen == [first, *later]
    feed_db.unsubscribe(slow)


def test_two_subscribers_at_different_positions_each_get_what_follows_their_own(feed_db):
    """A subscriber that joins while an earlier one is behind gets only the transactions
    after its own start, although the feed reads from the earlier one's position."""
    release = threading.Event()
    entered = threading.Event()
    early: list[bytes] = []
    late: list[bytes] = []

    def slow(change: Change) -> None:
        entered.set()
        release.wait(30)
        early.append(change.tid)

    def joining(change: Change) -> None:
        late.append(change.tid)

    feed_db.subscribe(slow)
    first, _ = commit(feed_db, "first")
    assert entered.wait(10), "the first subscriber was called"
    # the first subscriber is held inside its call for `first`: it is behind
    joined_after, _ = commit(feed_db, "before joining")
    feed_db.subscribe(joining)
    last, _ = commit(feed_db, "after joining")
    release.set()
    assert wait_until(lambda: last in early and last in late), \
        f"the last commit was not delivered to both subscribers: {early=} {late=}"
    assert early == [first, joined_after, last]
    assert late == [last], "only what was committed after subscribing, once"
    feed_db.unsubscribe(slow)
    feed_db.unsubscribe(joining)


def test_async_changes(feed_db):
    start = feed_db.last_transaction()
    tids = [commit(feed_db, f"a{n}")[0] for n in range(3)]

    async def collect() -> list[bytes]:
        return [change.tid async for change in feed_db.achanges(since=start, timeout=0.2)]

    assert asyncio.run(collect()) == tids


def test_commits_of_another_process_are_delivered(make_storage, feed_db):
    if not make_storage.durable or make_storage.uri() is None:
        pytest.skip(f"{make_storage.name} keeps its data in this process")
    start = feed_db.last_transaction()
    script = ("import sys, amphora; db = amphora.open(sys.argv[1])\n"
              "with db.transaction('from afar') as conn: conn.root()['afar'] = 42\n"
              "print(db.last_transaction().hex()); db.close()")
    done = subprocess.run([sys.executable, "-c", script, make_storage.uri()],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    changes = list(feed_db.changes(since=start, timeout=0.5))
    assert [c.tid.hex() for c in changes] == [done.stdout.strip()]
    assert changes[0].description == b"from afar"
