"""Many threads, one database: each thread uses its own connection and transaction
manager; conflicting transactions are retried, and no update is lost."""
from __future__ import annotations

import threading
import time

import pytest
import transaction

from amphora import ConflictError

from conformance.models import Item


@pytest.mark.timeout(60)
def test_threads_incrementing_one_plain_object_with_retries_count_exactly(db):
    """4 threads x 50 transactions, each retried on ConflictError: no update is lost."""
    with db.transaction() as conn:
        conn.root.item = Item(0)
    threads_count, per_thread = 4, 50
    errors: list[BaseException] = []
    retries = []

    def work() -> None:
        manager = transaction.TransactionManager()
        conn = db.open(manager)
        try:
            for _ in range(per_thread):
                while True:
                    try:
                        manager.begin()
                        conn.root.item.value += 1
                        time.sleep(0.0002)  # let other threads in between read and commit
                        manager.commit()
                        break
                    except ConflictError:
                        manager.abort()
                        retries.append(1)
        except BaseException as exc:  # reported below
            errors.append(exc)
            manager.abort()
        finally:
            conn.close()

    threads = [threading.Thread(target=work) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(50)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert errors == []
    with db.transaction() as conn:
        assert conn.root.item.value == threads_count * per_thread
    assert retries, "the threads never conflicted: the test did not exercise retries"
