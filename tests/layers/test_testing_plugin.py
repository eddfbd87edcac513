"""The pytest plugin ``amphora.testing``: one base per session, one layer per test.

Each test here runs a small test suite in its own pytest (``pytester``), as a project
that has amphora installed would: the plugin comes from the package's ``pytest11`` entry
point, not from this repository's conftest.
"""
from __future__ import annotations

from importlib.metadata import entry_points

pytest_plugins = ["pytester"]

POPULATE = """
import pytest

@pytest.fixture(scope="session")
def amphora_populate():
    def populate(db):
        with db.transaction() as conn:
            conn.root.accounts = {"ann": 10}
            root = conn.root()
            root["populated"] = root.get("populated", 0) + 1
    return populate
"""


def test_the_plugin_is_installed_as_a_pytest11_entry_point():
    [plugin] = [ep for ep in entry_points(group="pytest11") if ep.name == "amphora"]
    assert plugin.value == "amphora.testing"


def test_each_test_gets_a_layer_and_its_writes_are_gone_for_the_next(pytester):
    pytester.makeconftest(POPULATE)
    pytester.makepyfile(test_accounts="""
        def test_writes(amphora_db):
            with amphora_db.transaction() as conn:
                assert conn.root.accounts == {"ann": 10}
                conn.root.accounts = {"ann": 0, "bob": 10}
                conn.root.mine = "first test"
            with amphora_db.transaction() as conn:
                assert conn.root.accounts == {"ann": 0, "bob": 10}

        def test_sees_only_the_base(amphora_db):
            with amphora_db.transaction() as conn:
                assert conn.root.accounts == {"ann": 10}
                assert "mine" not in conn.root()
                conn.root.mine = "second test"

        def test_the_base_was_filled_once_and_never_written(amphora_db, amphora_base_db):
            with amphora_db.transaction() as conn:
                assert conn.root.populated == 1
                assert "mine" not in conn.root()
            with amphora_base_db.transaction() as conn:
                assert conn.root.accounts == {"ann": 10}
                assert "mine" not in conn.root()
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_an_sqlite_base_is_filled_once_per_session_and_left_as_filled(pytester):
    base = pytester.path / "base.db"
    pytester.makeconftest(POPULATE + f"""
@pytest.fixture(scope="session")
def amphora_base_uri():
    return "sqlite:///{base}"
""")
    pytester.makepyfile(test_one="""
        import pytest

        @pytest.mark.parametrize("n", range(3))
        def test_write(amphora_db, n):
            with amphora_db.transaction() as conn:
                assert conn.root.populated == 1
                assert "written" not in conn.root()
                conn.root.written = n
    """)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)
    import amphora
    with amphora.open(f"sqlite:///{base}") as db:
        with db.transaction() as conn:
            assert conn.root.populated == 1
            assert "written" not in conn.root()


def test_without_a_populate_function_each_test_starts_empty(pytester):
    pytester.makepyfile(test_empty="""
        def test_first(amphora_db):
            with amphora_db.transaction() as conn:
                assert dict(conn.root()) == {}
                conn.root.x = 1

        def test_second(amphora_db):
            with amphora_db.transaction() as conn:
                assert dict(conn.root()) == {}
    """)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_the_plugin_can_be_turned_off(pytester):
    pytester.makepyfile(test_off="""
        def test_needs_it(amphora_db):
            pass
    """)
    result = pytester.runpytest("-p", "no:amphora", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'amphora_db' not found*"])
