"""The wire of the PostgreSQL storage's commit path (amphora.storage.postgresql.wire):
several statements in one round trip through libpq's pipeline, on a real server.

What the storage relies on: parameters and results keep their values, a batch's results
come back in order, a statement is prepared once per session, an error is raised as
psycopg raises it and leaves the session ready for the next transaction, and a session
lost while results were awaited is reported broken (the storage then replaces it).
"""
from __future__ import annotations

import threading

import pgserver
import pytest

from amphora.storage.postgresql import wire

psycopg = pytest.importorskip("psycopg", reason="PostgreSQL needs psycopg")


@pytest.fixture
def conn():
    server = pgserver.require()
    conn = psycopg.connect(server.dsn(), autocommit=False)
    wire.adopt(conn)
    conn.execute("CREATE TEMPORARY TABLE item (k bigint PRIMARY KEY, v bytea)")
    conn.commit()
    yield conn
    conn.close()


def prepared_names(conn) -> set[str]:
    """The statements prepared in ``conn``'s session, asked on that session."""
    (rows,) = [result.rows for result in wire.run(
        conn, [("SELECT string_agg(name, ',') FROM pg_prepared_statements", ())])]
    return set(rows[0][0].split(",")) if rows[0][0] else set()


def test_placeholders_become_numbered_parameters():
    named = wire._Statement("SELECT %(a)s, %(b)s, %(a)s, 100 %% 7")
    assert named.text == b"SELECT $1, $2, $1, 100 % 7"
    assert named.values({"b": 2, "a": 1, "unused": 3}) == [1, 2]
    positional = wire._Statement("SELECT %s, %s")
    assert positional.text == b"SELECT $1, $2"
    with pytest.raises(TypeError, match="takes 2 parameters, not 1"):
        positional.values((1,))
    with pytest.raises(ValueError, match="not both"):
        wire._Statement("SELECT %s, %(a)s")


def test_parameters_and_results_keep_their_values(conn):
    values = (None, True, False, -2**63, 2**63 - 1, 'it\'s "quoted" \\ é', b"\x00\xff\x00",
              [1, -2, 3], ['a,b', 'q"uote', 'back\\slash', '{brace}'])
    (answer,) = wire.run(conn, [(
        "SELECT %s::bool IS NULL, %s::bool, %s::bool, %s::bigint, %s::bigint, %s::text,"
        " %s::bytea, array_to_string(%s::bigint[], '|'), array_to_string(%s::text[], '|')",
        values)])
    assert answer.rows == [(True, True, False, -2**63, 2**63 - 1, 'it\'s "quoted" \\ é',
                            b"\x00\xff\x00", "1|-2|3", 'a,b|q"uote|back\\slash|{brace}')]


def test_a_batch_answers_each_statement_in_order_and_commits(conn):
    server = pgserver.require()
    conn.execute("DROP TABLE item")  # (a table other sessions see)
    conn.execute("CREATE TABLE IF NOT EXISTS wire_item (k bigint PRIMARY KEY, v bytea)")
    conn.execute("TRUNCATE wire_item")
    conn.commit()
    try:
        inserted, counted, _ = wire.run(conn, [
            ("INSERT INTO wire_item SELECT n, NULL FROM generate_series(1, %(n)s) AS n"
             " RETURNING k", {"n": 3}),
            ("SELECT count(*) FROM wire_item", ()),
            ("COMMIT", ())], begin=True)
        assert inserted.rowcount == 3 and sorted(inserted.rows) == [(1,), (2,), (3,)]
        assert counted.rows == [(3,)]
        assert conn.pgconn.transaction_status == 0  # committed: idle
        with server.connect() as other:
            assert other.execute("SELECT count(*) FROM wire_item").fetchone() == (3,)
    finally:
        conn.execute("DROP TABLE wire_item")
        conn.commit()


def test_a_statement_is_prepared_once_a_session(conn):
    statement = ("SELECT k FROM item WHERE k = %s", (1,))
    wire.run(conn, [statement])
    before = prepared_names(conn)
    for _ in range(3):
        wire.run(conn, [statement])
    assert prepared_names(conn) == before  # (the second run also asked: it is in both)
    assert len([name for name in before if name.startswith("amphora_")]) == 2


def test_an_error_is_psycopgs_and_the_session_goes_on(conn):
    wire.run(conn, [("INSERT INTO item VALUES (%s, %s)", (1, b"one")), ("COMMIT", ())],
             begin=True)
    with pytest.raises(psycopg.errors.UniqueViolation):
        wire.run(conn, [("INSERT INTO item VALUES (%s, %s)", (2, b"two")),
                        ("INSERT INTO item VALUES (%s, %s)", (1, b"again")),
                        ("SELECT no_such_column FROM item", ()),
                        ("COMMIT", ())], begin=True)
    assert conn.pgconn.transaction_status == 3  # in a failed transaction: rolled back next
    conn.rollback()
    # the statement whose Parse was skipped after the error is prepared anew
    with pytest.raises(psycopg.errors.UndefinedColumn):
        wire.run(conn, [("SELECT no_such_column FROM item", ())])
    (rows,) = wire.run(conn, [("SELECT k, v FROM item ORDER BY k", ())])
    assert rows.rows == [(1, b"one")]  # nothing of the failed batch


def test_a_statement_prepared_before_an_error_stays_prepared(conn):
    """A batch that fails keeps the statements it prepared before the failure (a
    prepared statement outlives the transaction): sent again, they are not parsed again,
    as a commit that loses a race at every try would otherwise have them."""
    first = ("SELECT k FROM item WHERE k = %s", (1,))
    failing = ("SELECT 'no number'::text::bigint + %s", (1,))
    before = prepared_names(conn)
    for _ in range(3):
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            wire.run(conn, [first, failing, ("SELECT 3::bigint", ())], begin=True)
        conn.rollback()
    made = prepared_names(conn) - before
    # the first and the failing one (its Parse answered, its execution failed) once
    # each; the one after it never
    assert len(made) == 2
    assert wire.run(conn, [first])[0].rows == []
    assert prepared_names(conn) - before == made


def test_a_result_of_an_unknown_type_is_an_error_that_leaves_the_session_usable(conn):
    with pytest.raises(psycopg.InterfaceError, match="type oid 1184"):
        wire.run(conn, [("SELECT now()", ()), ("SELECT 1", ())])
    assert wire.run(conn, [("SELECT 2::bigint", ())])[0].rows == [(2,)]


def test_a_parameter_of_an_unknown_type_is_refused_before_anything_is_sent(conn):
    with pytest.raises(TypeError, match="float is not supported"):
        wire.run(conn, [("SELECT %s", (1.5,))])
    with pytest.raises(TypeError, match="not integers or strings"):
        wire.run(conn, [("SELECT %s", ([b"x"],))])
    assert wire.run(conn, [("SELECT 3::bigint", ())])[0].rows == [(3,)]
    assert not conn.broken


def test_a_session_lost_while_waiting_is_broken(conn):
    """The server ends the session while a batch waits for its answer: the error is
    psycopg's OperationalError and the connection says it is broken."""
    server = pgserver.require()
    pid = conn.info.backend_pid
    answers = wire.send(conn, [("SELECT pg_sleep(30)", ())])
    killer = threading.Timer(0.3, lambda: server.connect().execute(
        "SELECT pg_terminate_backend(%s)", (pid,)))
    killer.start()
    try:
        with pytest.raises(psycopg.OperationalError):
            answers.receive()
    finally:
        killer.join()
    assert conn.broken
