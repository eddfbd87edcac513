"""``amphora.blob.StandaloneBlob``: ``amphora.Blob`` when ZODB is not installed. It writes
the records ZODB's ``Blob`` writes, byte for byte, so either reads what the other wrote;
shown here in this process (ZODB installed) and in a process that cannot import ZODB."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap

import pytest
import ZODB
from ZODB.blob import Blob as ZODBBlob

import amphora
from amphora.blob import BlobError, StandaloneBlob
from amphora.serialize import ObjectWriter

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


def read(blob) -> bytes:
    with blob.open("r") as file:
        return file.read()


def test_its_records_are_zodb_blob_records():
    writer = ObjectWriter(None, lambda: None, lambda obj: None)
    assert writer.serialize(StandaloneBlob()) == writer.serialize(ZODBBlob())


def test_it_behaves_as_a_blob(tmp_path):
    db = amphora.open(f"sqlite:///{tmp_path / 'app.db'}")
    with db.transaction() as conn:
        conn.root.blob = StandaloneBlob(b"first")
        with pytest.raises(BlobError):
            conn.root.blob.committed()  # not committed yet
    with db.transaction() as conn:
        blob = conn.root.blob  # (the same object, still in this connection's cache)
        assert read(blob) == b"first"
        with open(blob.committed(), "rb") as file:
            assert file.read() == b"first"
        with blob.open("a") as file:
            file.write(b", appended")
        with blob.open("r+") as file:
            file.write(b"F")
    with db.transaction() as conn:
        assert read(conn.root.blob) == b"First, appended"
        source = tmp_path / "consumed"
        source.write_bytes(b"consumed")
        conn.root.blob.consumeFile(str(source))
        assert not source.exists()
    with db.transaction() as conn:
        assert read(conn.root.blob) == b"consumed"
        with conn.root.blob.open("c") as file:
            assert file.read() == b"consumed"
    db.close()
    other = amphora.open(f"sqlite:///{tmp_path / 'app.db'}")  # a fresh cache: ZODB's class
    with other.transaction() as conn:
        assert type(conn.root.blob) is ZODBBlob
        assert read(conn.root.blob) == b"consumed"
    other.close()


WITHOUT_ZODB = """
    import sys
    try:
        import ZODB
    except ImportError:
        pass
    else:
        raise SystemExit("ZODB is importable")
    import amphora
    assert amphora.Blob.__name__ == "StandaloneBlob", amphora.Blob
    db = amphora.open("sqlite:///app.db")
    with db.transaction() as conn:
        print(type(conn.root.from_zodb).__name__, conn.root.from_zodb.open().read().decode())
        conn.root.from_amphora = amphora.Blob(b"written without ZODB")
    db.close()
"""


def site_packages_without_zodb(directory) -> str:
    """A directory of links to every installed package but ZODB's."""
    site = sysconfig.get_paths()["purelib"]
    for name in os.listdir(site):
        if not name.startswith(("ZODB", "zodb-", "ZODB-")):
            os.symlink(os.path.join(site, name), os.path.join(directory, name))
    return str(directory)


def test_without_zodb_amphora_blob_reads_and_writes_the_same_records(tmp_path):
    zodb = ZODB.DB(amphora.open_storage(f"sqlite:///{tmp_path / 'app.db'}"))
    with zodb.transaction() as conn:
        conn.root.from_zodb = ZODBBlob(b"written by ZODB")
    zodb.close()
    packages = tmp_path / "packages"
    packages.mkdir()
    path = os.pathsep.join([os.path.abspath(SRC), site_packages_without_zodb(packages)])
    done = subprocess.run([sys.executable, "-S", "-c", textwrap.dedent(WITHOUT_ZODB)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "StandaloneBlob written by ZODB"
    zodb = ZODB.DB(amphora.open_storage(f"sqlite:///{tmp_path / 'app.db'}"))
    with zodb.transaction() as conn:
        assert read(conn.root.from_amphora) == b"written without ZODB"
    zodb.close()
