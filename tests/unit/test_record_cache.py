"""The record cache shared by a DB's connections (amphora.cache.RecordCache)."""
from amphora.cache import RecordCache
from amphora.utils import p64

OID = p64(1)


def tid(n: int) -> bytes:
    return p64(n)


def test_a_current_record_serves_every_snapshot_after_it_was_written():
    cache = RecordCache()
    cache.put(OID, b"v5", tid(5), None, cache.generation())
    assert cache.get(OID, tid(6)) == (b"v5", tid(5))
    assert cache.get(OID, tid(100)) == (b"v5", tid(5))


def test_a_snapshot_older_than_the_record_does_not_see_it():
    cache = RecordCache()
    cache.put(OID, b"v5", tid(5), None, cache.generation())
    assert cache.get(OID, tid(5)) is None  # before=5 reads revisions with tid < 5


def test_an_invalidation_closes_the_record_for_later_snapshots():
    cache = RecordCache()
    cache.put(OID, b"v5", tid(5), None, cache.generation())
    cache.invalidate(tid(9), [OID])
    assert cache.get(OID, tid(9)) == (b"v5", tid(5))   # snapshots up to tid 8 still see it
    assert cache.get(OID, tid(10)) is None             # a snapshot that includes tid 9 does not


def test_a_record_read_while_an_invalidation_arrived_is_not_kept_as_current():
    cache = RecordCache()
    generation = cache.generation()          # a reader starts loading oid 1 ...
    cache.invalidate(tid(9), [OID])          # ... someone commits a new revision of it ...
    cache.put(OID, b"v5", tid(5), None, generation)   # ... the old read arrives
    assert cache.get(OID, tid(10)) is None


def test_a_closed_record_is_kept_even_if_invalidations_arrived():
    cache = RecordCache()
    generation = cache.generation()
    cache.invalidate(tid(20), [p64(2)])
    cache.put(OID, b"v5", tid(5), tid(9), generation)
    assert cache.get(OID, tid(7)) == (b"v5", tid(5))
    assert cache.get(OID, tid(10)) is None


def test_a_local_commit_replaces_the_record_and_invalidates_the_others():
    cache = RecordCache()
    cache.put(OID, b"v5", tid(5), None, cache.generation())
    cache.put(p64(2), b"w5", tid(5), None, cache.generation())
    cache.committed(tid(9), {OID: b"v9"}, [p64(2)])
    assert cache.get(OID, tid(10)) == (b"v9", tid(9))
    assert cache.get(p64(2), tid(10)) is None
    assert cache.get(p64(2), tid(8)) == (b"w5", tid(5))


def test_the_cache_stays_within_its_size():
    cache = RecordCache(max_bytes=10_000)
    for n in range(1, 200):
        cache.put(p64(n), b"x" * 200, tid(1), None, cache.generation())
    assert cache.size_bytes <= 10_000
    assert 0 < len(cache) < 199
    assert cache.get(p64(199), tid(2)) == (b"x" * 200, tid(1))  # the newest stay


def test_a_cache_of_size_zero_keeps_nothing():
    cache = RecordCache(max_bytes=0)
    cache.put(OID, b"v5", tid(5), None, cache.generation())
    cache.committed(tid(9), {OID: b"v9"})
    assert len(cache) == 0 and cache.get(OID, tid(10)) is None


def test_put_many_keeps_what_put_keeps_one_by_one():
    """A batch read while an invalidation arrived keeps its closed records only, and a
    closed record does not replace a current one, as with put."""
    records = [(p64(n), b"x" * 200, tid(5), None if n % 2 else tid(9)) for n in range(1, 61)]
    one_by_one, at_once = RecordCache(), RecordCache()
    for cache in (one_by_one, at_once):
        cache.put(p64(2), b"current", tid(7), None, cache.generation())
    generations = one_by_one.generation(), at_once.generation()
    for cache in (one_by_one, at_once):
        cache.invalidate(tid(20), [p64(999)])  # arrives while the batch is read
    for record in records:
        one_by_one.put(*record, generations[0])
    at_once.put_many(records, generations[1])
    assert at_once.items() == one_by_one.items()
    assert at_once.size_bytes == one_by_one.size_bytes
    assert at_once.get(p64(1), tid(6)) is None            # current, read too early
    assert at_once.get(p64(60), tid(6)) == (b"x" * 200, tid(5))  # closed: kept
    assert at_once.get(p64(2), tid(8)) == (b"current", tid(7))   # not replaced


def test_put_many_after_no_invalidation_keeps_every_record_within_the_size():
    cache = RecordCache()
    cache.put_many([(p64(n), b"v", tid(5), None) for n in range(1, 11)], cache.generation())
    assert len(cache) == 10
    assert cache.get(p64(10), tid(6)) == (b"v", tid(5))
    small = RecordCache(max_bytes=10_000)
    small.put_many([(p64(n), b"x" * 200, tid(1), None) for n in range(1, 200)],
                   small.generation())
    assert small.size_bytes <= 10_000
    assert 0 < len(small) < 199
    assert small.get(p64(199), tid(2)) == (b"x" * 200, tid(1))  # the newest stay
