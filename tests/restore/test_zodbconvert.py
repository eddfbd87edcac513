"""The migration tools, run as commands: a FileStorage written by ZODB copied into SQLite,
PostgreSQL and a real ``amphora serve`` process and back, with ``amphora copy`` and with
RelStorage's ``zodbconvert`` (whole, then ``--incremental`` after more commits to the
source). Every transaction's tid, user, description and extension and every record's oid
and data must come back identical."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pgserver
import pytest
import serverprocess

from restore_support import (blob_count, dump_file, dump_file_with_blobs, dump_uri,
                             dump_uri_with_blobs, write_blob_filestorage, write_filestorage)

pytestmark = pytest.mark.timeout(300)

TARGETS = ["sqlite", "postgresql", "client->sqlite"]


def _target_uri(kind: str, path: Path) -> str:
    """The URI of a new, empty amphora storage of ``kind`` for ``path``."""
    if kind == "sqlite":
        return f"sqlite:///{path}"
    if kind == "postgresql":
        return pgserver.schema_uri(str(path))
    server = serverprocess.shared_server("sqlite")  # a real `amphora serve` process
    return f"amphora://{server.address}/{serverprocess.storage_name(path)}"


def _script(name: str) -> str:
    script = Path(sys.executable).with_name(name)
    assert script.exists(), f"{name} is not installed beside {sys.executable}"
    return str(script)


def _run(*command: str, cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout + done.stderr


def zodbconvert(tmp_path: Path, source: str, destination: str, *options: str) -> str:
    """Run ``zodbconvert`` with a configuration naming the two sections."""
    config = tmp_path / "convert.conf"
    config.write_text(f"%import amphora\n{source}\n{destination}\n")
    return _run(_script("zodbconvert"), *options, str(config), cwd=tmp_path)


def _filestorage(name: str, path: Path) -> str:
    return f"<filestorage {name}>\n  path {path}\n</filestorage>"


def _amphora(name: str, uri: str) -> str:
    return f"<amphora {name}>\n  uri {uri}\n</amphora>"


@pytest.mark.parametrize("kind", TARGETS)
def test_zodbconvert_into_amphora_and_back_whole_and_incremental(kind, tmp_path):
    original, back = tmp_path / "Data.fs", tmp_path / "Back.fs"
    write_filestorage(original)
    uri = _target_uri(kind, tmp_path / "converted")
    source, into = _filestorage("source", original), _amphora("destination", uri)
    out_of, into_back = _amphora("source", uri), _filestorage("destination", back)
    zodbconvert(tmp_path, source, into)
    assert dump_uri(uri) == dump_file(original)
    zodbconvert(tmp_path, out_of, into_back)
    assert dump_file(back) == dump_file(original)
    # More commits to the source: incremental conversions copy only those, both ways
    write_filestorage(original, commits=2, start=3)
    assert "Resuming ZODB copy" in zodbconvert(tmp_path, source, into, "--incremental")
    assert dump_uri(uri) == dump_file(original)
    assert "Resuming ZODB copy" in zodbconvert(tmp_path, out_of, into_back, "--incremental")
    assert dump_file(back) == dump_file(original)
    assert len(dump_file(back)) == 6


@pytest.mark.parametrize("kind", TARGETS)
def test_amphora_copy_into_amphora_and_back_whole_and_incremental(kind, tmp_path):
    original = tmp_path / "Data.fs"
    write_filestorage(original)
    uri = _target_uri(kind, tmp_path / "copied")
    amphora_cli = _script("amphora")
    _run(amphora_cli, "copy", str(original), uri, cwd=tmp_path)
    assert dump_uri(uri) == dump_file(original)
    write_filestorage(original, commits=2, start=3)
    _run(amphora_cli, "copy", "--incremental", str(original), uri, cwd=tmp_path)
    assert dump_uri(uri) == dump_file(original)
    back = tmp_path / "Back.fs"
    _run(amphora_cli, "copy", uri, str(back), cwd=tmp_path)
    assert dump_file(back) == dump_file(original)


def _filestorage_with_blobs(name: str, path: Path, blob_dir: Path) -> str:
    return f"<filestorage {name}>\n  path {path}\n  blob-dir {blob_dir}\n</filestorage>"


def test_zodbconvert_with_blobs_into_sqlite_and_back_whole_and_incremental(tmp_path):
    original, blobs = tmp_path / "Data.fs", tmp_path / "blobs"
    back, back_blobs = tmp_path / "Back.fs", tmp_path / "back-blobs"
    write_blob_filestorage(original, blobs)
    uri = f"sqlite:///{tmp_path / 'converted.db'}"
    source = _filestorage_with_blobs("source", original, blobs)
    into, out_of = _amphora("destination", uri), _amphora("source", uri)
    into_back = _filestorage_with_blobs("destination", back, back_blobs)
    zodbconvert(tmp_path, source, into)
    expected = dump_file_with_blobs(original, blobs)
    assert blob_count(expected) == 7
    assert dump_uri_with_blobs(uri) == expected
    zodbconvert(tmp_path, out_of, into_back)
    assert dump_file_with_blobs(back, back_blobs) == expected
    # More blobs in the source: incremental conversions copy those, files included
    write_blob_filestorage(original, blobs, commits=2, start=2)
    assert "Resuming ZODB copy" in zodbconvert(tmp_path, source, into, "--incremental")
    expected = dump_file_with_blobs(original, blobs)
    assert blob_count(expected) == 15
    assert dump_uri_with_blobs(uri) == expected
    assert "Resuming ZODB copy" in zodbconvert(tmp_path, out_of, into_back, "--incremental")
    assert dump_file_with_blobs(back, back_blobs) == expected


def test_amphora_copy_with_blobs_into_sqlite_and_back_whole_and_incremental(tmp_path):
    original, blobs = tmp_path / "Data.fs", tmp_path / "blobs"
    write_blob_filestorage(original, blobs)
    source = f"file://{original}?blobstorage_dir={blobs}"
    uri = f"sqlite:///{tmp_path / 'copied.db'}"
    amphora_cli = _script("amphora")
    _run(amphora_cli, "copy", source, uri, cwd=tmp_path)
    assert dump_uri_with_blobs(uri) == dump_file_with_blobs(original, blobs)
    write_blob_filestorage(original, blobs, commits=2, start=2)
    _run(amphora_cli, "copy", "--incremental", source, uri, cwd=tmp_path)
    expected = dump_file_with_blobs(original, blobs)
    assert blob_count(expected) == 15
    assert dump_uri_with_blobs(uri) == expected
    back = tmp_path / "Back.fs"
    _run(amphora_cli, "copy", uri, f"file://{back}?blobstorage_dir={tmp_path / 'back-blobs'}",
         cwd=tmp_path)
    assert dump_file_with_blobs(back, tmp_path / "back-blobs") == expected
