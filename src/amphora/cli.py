"""The ``amphora`` command: look into, pack, copy and search storages.

A thin consumer of the public API: every command opens storages by URI
(:func:`amphora.open_storage`) and calls the storage contract; copying is
:func:`amphora.copy.copy_transactions`. ZODB ``FileStorage`` files (a path ending in
``.fs``, or ``file://path.fs``) are accepted wherever a storage is, when ZODB is installed.

Errors a user can cause (a bad URI, a missing or foreign file, an unknown oid) print one
line, ``amphora: error: ...``, on stderr and exit with status 2; no command changes data
before it has validated its arguments.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import urllib.parse
from typing import Any, Iterator, Sequence

from amphora.copy import CopyStats, DestinationNotEmptyError, copy_transactions
from amphora.errors import AmphoraError, ObjectNotFoundError
from amphora.serialize import class_name_of, references
from amphora.uri import open_storage, parse_uri
from amphora.utils import maxtid, p64, tid_to_datetime, u64, z64

__all__ = ["main", "build_parser"]

EXIT_ERROR = 2


class CommandError(Exception):
    """A user error found by the command itself (printed as one line, exit 2)."""


# ---------------------------------------------------------------------------------------
# Opening storages

def _filestorage_path(spec: str) -> tuple[str, str | None] | None:
    """The path and blob directory of a ZODB FileStorage spec (``data.fs``,
    ``file://data.fs``, ``file:///abs/data.fs``, with ``?blobstorage_dir=blobs`` for a
    FileStorage with blobs, as zodburi writes it), or None if ``spec`` names something
    else."""
    if spec.startswith("file://"):
        path, _, query = spec[len("file://"):].partition("?")
        options = urllib.parse.parse_qs(query, keep_blank_values=True)
        unknown = sorted(set(options) - {"blobstorage_dir"})
        if unknown:
            raise CommandError(f"{spec}: unknown option {unknown[0]!r} (a FileStorage spec "
                               "takes blobstorage_dir)")
        blob_dir = options.get("blobstorage_dir", [None])[-1]
        return path, blob_dir or None
    if "://" not in spec and spec.endswith(".fs"):
        return spec, None
    return None


def _open_filestorage(path: str, read_only: bool, must_exist: bool,
                      blob_dir: str | None = None) -> Any:
    try:
        from ZODB.FileStorage import FileStorage
    except ImportError:
        raise CommandError(
            f"{path}: reading or writing ZODB FileStorage files needs ZODB "
            "(pip install ZODB)") from None
    if must_exist and not os.path.exists(path):
        raise CommandError(f"{path}: no such file")
    from ZODB.FileStorage.FileStorage import FileStorageFormatError
    try:
        return FileStorage(path, read_only=read_only, blob_dir=blob_dir)
    except FileStorageFormatError:
        raise CommandError(f"{path}: not a ZODB FileStorage file") from None


@contextlib.contextmanager
def opened(spec: str, read_only: bool = False, must_exist: bool = True,
           at: bytes | None = None) -> Iterator[Any]:
    """The storage ``spec`` names, closed afterwards.

    ``must_exist``: a file-backed storage must already exist (nothing is created).
    ``at``: a tid; the storage as it was then (a read-only
    :class:`~amphora.storage.before.BeforeStorage`).
    """
    fs_spec = _filestorage_path(spec)
    if fs_spec is not None:
        storage = _open_filestorage(fs_spec[0], read_only, must_exist, fs_spec[1])
    else:
        if "://" not in spec and os.path.exists(spec):
            how = ("(an absolute path: four slashes)" if os.path.isabs(spec)
                   else "(a relative path: three slashes)")
            raise CommandError(f"{spec!r} is a file name, not a storage URI; for an SQLite "
                               f"file write 'sqlite:///{spec}' {how}")
        scheme, path, _ = parse_uri(spec)
        if must_exist and scheme == "sqlite" and path not in ("", "/"):
            file_path = path[1:] if path.startswith("/") else path
            if not os.path.exists(file_path):
                raise CommandError(f"{spec}: no such file: {file_path}")
        storage = open_storage(spec, read_only=read_only)
    if at is not None:
        from amphora.storage.before import BeforeStorage
        try:
            storage = BeforeStorage(storage, at=at)
        except BaseException:
            storage.close()
            raise
    try:
        yield storage
    finally:
        storage.close()


# ---------------------------------------------------------------------------------------
# Formatting

def _format_tid(tid: bytes) -> str:
    return "0x" + tid.hex()


def _format_time(tid: bytes) -> str:
    return tid_to_datetime(tid).strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def _format_size(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n:,} bytes" if unit == "bytes" else f"{n:,} bytes ({size:.1f} {unit})"
        size /= 1024
    raise AssertionError("unreachable")


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _parse_oid(text: str) -> bytes:
    try:
        number = int(text[2:], 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an oid; write it in decimal (12) or hex (0xc)") from None
    if not 0 <= number < 2 ** 64:
        raise argparse.ArgumentTypeError(f"{text!r} is out of the range of oids")
    return p64(number)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _moment(text: str) -> bytes:
    from amphora.storage.before import moment_tid
    try:
        return moment_tid(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count_transactions(storage: Any) -> int:
    # The storage contract has no count; iterating reads every record once.
    return sum(1 for _ in storage.iterator())


# ---------------------------------------------------------------------------------------
# Commands

def cmd_info(args: argparse.Namespace) -> int:
    with opened(args.uri, read_only=True, at=getattr(args, "at", None)) as storage:
        last = storage.lastTransaction()
        rows = [
            ("storage", f"{args.uri} ({type(storage).__name__})"),
            ("size", _format_size(storage.getSize())),
            ("objects", f"{len(storage):,}"),
            ("transactions", f"{_count_transactions(storage):,}"),
            ("last transaction",
             "none" if last == z64 else f"{_format_tid(last)} {_format_time(last)}"),
        ]
        if getattr(storage, "supports_mirror", False):
            rows.append(("JSON mirror", _mirror_state(storage)))
        blob_table = getattr(storage, "blob_table", None)
        # (a PostgreSQL storage's blob_directory is only a cache of this process)
        blob_directory = None if blob_table else getattr(storage, "blob_directory", None)
        if blob_table:
            rows.append(("blobs", f"in the database, table {blob_table}"))
        elif isinstance(blob_directory, str):
            relative = os.path.relpath(blob_directory)
            rows.append(("blob directory",
                         blob_directory if relative.startswith("..") else relative))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name + ':':<{width + 1}} {value}")
    return 0


def _mirror_state(storage: Any) -> str:
    """What ``amphora info`` says of a storage's JSON mirror."""
    mode = storage.mirror_mode()
    if mode is None:
        return "none (amphora mirror URI makes one)"
    if mode == "sync":
        return "sync (written by every commit)"
    watermark = p64(storage.mirror_watermark())
    behind = "none yet" if watermark == z64 else _format_tid(watermark)
    return f"follow (documents current up to {behind})"


def cmd_history(args: argparse.Namespace) -> int:
    if args.oid is None:
        return _undo_log(args)
    with opened(args.uri, read_only=True) as storage:
        entries = storage.history(args.oid, args.size)
        total = len(entries)
        if args.size is not None and total >= args.size:  # there may be more than shown
            total = len(storage.history(args.oid, None))
        current = storage.loadBefore(args.oid, maxtid)
        class_name = _class_name(current[0]) if current else "?"
    shown = "newest first" if total == len(entries) else f"the newest {len(entries):,} shown"
    print(f"oid 0x{u64(args.oid):x} ({u64(args.oid)}), {class_name}: "
          f"{_plural(total, 'revision')}, {shown}")
    rows = [("tid", "time", "size", "user", "description")]
    for entry in entries:
        tid = entry.get("tid") or entry.get("serial")
        rows.append((_format_tid(tid), _format_time(tid), f"{entry.get('size', 0):,}",
                     _text(entry.get("user_name")), _text(entry.get("description"))))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2]),
                 row[3].ljust(widths[3]), row[4]]
        print("  ".join(cells).rstrip())
    return 0


def _undo_log(args: argparse.Namespace) -> int:
    """``amphora history URI``: the transactions ``amphora undo`` can undo."""
    from amphora.storage.undo import undo_tid
    with opened(args.uri, read_only=True) as storage:
        if not getattr(storage, "supports_undo", False):
            print(f"{args.uri} keeps no history: no transaction can be undone")
            return 1
        entries = storage.undoLog(0, args.size)
    print(f"{_plural(len(entries), 'undoable transaction')}, newest first")
    for entry in entries:
        tid = undo_tid(entry["id"])
        print("  ".join([_format_tid(tid), _format_time(tid), _text(entry.get("user_name")),
                         _text(entry.get("description"))]).rstrip())
    return 0


def cmd_undo(args: argparse.Namespace) -> int:
    import transaction

    from amphora.db import DB
    with opened(args.uri) as storage:
        db = DB(storage)
        manager = transaction.TransactionManager()
        txn = manager.begin()
        txn.note(f"undo {_format_tid(args.tid)}")
        db.undo(args.tid, txn)
        manager.commit()
        print(f"undid {_format_tid(args.tid)} as {_format_tid(storage.lastTransaction())}")
    return 0


def _class_name(data: bytes | None) -> str:
    if not data:
        return "deleted"
    try:
        return class_name_of(data)
    except AmphoraError:
        return "?"


def _is_encrypted(storage: Any) -> bool:
    """Whether ``storage``'s root record is sealed (by an EncryptedStorage)."""
    from amphora.storage.encrypted import is_sealed
    try:
        found = storage.loadBefore(z64, maxtid)
    except ObjectNotFoundError:
        return False
    return found is not None and is_sealed(found[0])


def cmd_pack(args: argparse.Namespace) -> int:
    with opened(args.uri) as storage:
        packer = storage
        if args.keyring is not None:  # an encrypted database: its references are sealed
            from amphora.storage.encrypted import EncryptedStorage
            packer = EncryptedStorage(storage, _unlocked(args))
        elif not args.no_gc and _is_encrypted(storage):
            raise CommandError(f"{args.uri} is encrypted: its records are sealed, so finding "
                               "the unreachable objects needs the keys (--keyring FILE); "
                               "--no-gc packs without them")
        # An SQLite file is measured with its write-ahead log copied in (checkpoint), so
        # that the log a pack writes is not counted as the database growing.
        checkpoint = getattr(storage, "checkpoint", None)
        if args.vacuum and not hasattr(storage, "vacuum"):
            raise CommandError(f"--vacuum: {type(storage).__name__} has no file to shrink "
                               "(it is for SQLite files)")
        if checkpoint is not None:
            checkpoint()
        size, objects = storage.getSize(), len(storage)
        started = time.monotonic()
        packer.pack(time.time() - args.days * 86400, references, gc=not args.no_gc)
        if args.vacuum:
            storage.vacuum()
        elif checkpoint is not None:
            checkpoint()
        elapsed = time.monotonic() - started
        new_size, new_objects = storage.getSize(), len(storage)
        free = storage.free_bytes() if hasattr(storage, "free_bytes") else 0
        if packer is not storage:
            packer.close()  # (it remembers the newest transaction seen, beside the keyring)
    since = "now" if not args.days else f"{args.days:g} days ago"
    gc = "; no garbage collection" if args.no_gc else ""
    print(f"packed {args.uri} (history kept since {since}{gc}) in {elapsed:.2f} s: "
          f"size {size:,} -> {new_size:,} bytes, objects {objects:,} -> {new_objects:,}")
    if free:
        print(f"{free:,} bytes of the file are free for new data; "
              f"amphora pack --vacuum gives them back to the file system")
    return 0


def cmd_copy(args: argparse.Namespace) -> int:
    if args.source == args.destination:
        raise CommandError("the source and the destination are the same")
    with opened(args.source, read_only=True, at=getattr(args, "at", None)) as source, \
            opened(args.destination, must_exist=False) as destination:
        source_last = source.lastTransaction()
        started = time.monotonic()
        with _copy_progress(source_last) as progress:
            try:
                stats = copy_transactions(source, destination, progress,
                                          incremental=args.incremental)
            except DestinationNotEmptyError as exc:
                hint = "" if args.incremental else (
                    "; copy into a new file, or give --incremental if it is an earlier "
                    "copy of the source")
                raise CommandError(f"{args.destination}: {exc}{hint}") from None
            except AmphoraError:
                raise
            except BaseException:
                print(f"amphora: copy stopped; {args.destination} holds the transactions "
                      "copied so far (resume with --incremental)", file=sys.stderr)
                raise
        elapsed = time.monotonic() - started
    skipped = (f"; {stats.skipped:,} records without data skipped" if stats.skipped else "")
    print(f"copied {_plural(stats.transactions, 'transaction')} "
          f"({_plural(stats.records, 'record')}, {stats.bytes:,} bytes) "
          f"from {args.source} to {args.destination} "
          f"in {elapsed:.2f} s{skipped}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from amphora.jsonpickle import record_to_json
    with opened(args.uri, read_only=True, at=getattr(args, "at", None)) as storage:
        if args.tid is None:
            record = storage.loadBefore(args.oid, maxtid)
            if record is None:
                raise CommandError(f"oid {u64(args.oid)} has no current revision")
            data, tid = record[0], record[1]
        else:
            try:
                data, tid = storage.loadSerial(args.oid, args.tid), args.tid
            except ObjectNotFoundError:
                storage.loadBefore(args.oid, maxtid)  # no such object at all: say that
                raise CommandError(f"oid {u64(args.oid)} has no revision with tid "
                                   f"{_format_tid(args.tid)} (amphora history lists them)"
                                   ) from None
    class_name, state = record_to_json(data)  # symbolic: no class is imported
    document = {"oid": u64(args.oid), "tid": _format_tid(tid), "class_name": class_name,
                "state": json.loads(state)}
    print(json.dumps(document, indent=2, ensure_ascii=False))
    return 0


def cmd_at_copy(args: argparse.Namespace) -> int:
    args.source = args.uri
    return cmd_copy(args)


def cmd_search(args: argparse.Namespace) -> int:
    with opened(args.uri, read_only=True) as storage:
        if not getattr(storage, "supports_mirror", False):
            raise CommandError(f"{args.uri}: this storage keeps no JSON mirror")
        where = f"({args.condition})"
        params: list[Any] = list(args.param)
        if args.class_name:
            where += " AND class_name = %s"
            params.append(args.class_name)
        # The document as JSON text on every database (PostgreSQL's driver would hand
        # back a jsonb value as a dict, SQLite's a str).
        rows = storage.query_mirror(
            f"SELECT oid, class_name, CAST(state AS TEXT) FROM amphora_objects WHERE {where}"
            f" ORDER BY oid LIMIT {args.limit}", params)
        total = storage.query_mirror(f"SELECT count(*) FROM amphora_objects WHERE {where}",
                                     params)[0][0]
    for oid, class_name, state in rows:
        print(json.dumps({"oid": oid & 0xFFFF_FFFF_FFFF_FFFF, "class_name": class_name,
                          "state": json.loads(state)}, ensure_ascii=False))
    shown = f"{len(rows):,} shown" if len(rows) < total else "all shown"
    print(f"{total:,} {'match' if total == 1 else 'matches'} ({shown})", file=sys.stderr)
    return 0


def cmd_mirror(args: argparse.Namespace) -> int:
    with opened(args.uri) as storage:
        if not getattr(storage, "supports_mirror", False):
            raise CommandError(f"{args.uri}: this storage cannot keep a JSON mirror")
        if args.drop:
            storage.drop_mirror()
            print(f"dropped the JSON mirror of {args.uri}")
            return 0
        started = time.monotonic()
        mode = "follow" if args.follow else "sync"
        with _count_progress("writing documents") as progress:
            written = (storage.rebuild_mirror(progress) if args.rebuild
                       else storage.create_mirror(progress, mode))
            mode = storage.mirror_mode()
        elapsed = time.monotonic() - started
    kept = ("by every commit" if mode == "sync"
            else "by a follower: run `amphora follow URI`")
    print(f"{args.uri}: JSON mirror {'rebuilt' if args.rebuild else 'ready'} (kept current "
          f"{kept}), {_plural(written, 'document')} written in {elapsed:.2f} s")
    return 0


def cmd_follow(args: argparse.Namespace) -> int:
    with opened(args.uri) as storage:
        if not getattr(storage, "supports_mirror", False):
            raise CommandError(f"{args.uri}: this storage cannot keep a JSON mirror")
        if storage.mirror_mode() != "follow":
            raise CommandError(f"{args.uri}: the database has no mirror in follow mode; "
                               "create one with `amphora mirror --follow URI`")
        until = 0.0 if args.once else None
        covered = storage.follow_mirror(until=until, interval=args.interval)
    print(f"{args.uri}: the mirror covers {_plural(covered, 'more transaction')}")
    return 0


@contextlib.contextmanager
def _count_progress(what: str) -> Iterator[Any]:
    """A ``progress(done, total)`` callback showing a bar on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield progress


@contextlib.contextmanager
def _copy_progress(source_last: bytes) -> Iterator[Any]:
    """A progress callback for :func:`copy_transactions`: a bar on stderr when it is a
    terminal, measured in time covered (tids are timestamps), else nothing."""
    if not sys.stderr.isatty() or source_last == z64:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    end = u64(source_last)
    columns = (TextColumn("copying"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TextColumn("{task.fields[transactions]:,} transactions"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("copy", total=1.0, transactions=0)

        def progress(stats: CopyStats) -> None:
            first = u64(stats.first_tid or source_last)
            span = max(end - first, 1)
            done = (u64(stats.last_tid or source_last) - first) / span
            bar.update(task, completed=min(done, 1.0), transactions=stats.transactions)

        yield progress


# ---------------------------------------------------------------------------------------
# Keys: keyrings of encrypted databases and key rotation

#: the environment variables a passphrase is read from when set (and no option names one)
PASSPHRASE_ENV = "AMPHORA_PASSPHRASE"
NEW_PASSPHRASE_ENV = "AMPHORA_NEW_PASSPHRASE"


def _passphrase(args: argparse.Namespace, new: bool = False, confirm: bool = False) -> str:
    """The passphrase, from ``--passphrase-file``, ``--passphrase-env`` (``--new-...``
    with ``new``), the default environment variable, or a prompt (twice with
    ``confirm``). Never from the command line itself."""
    prefix, default_env = ("new_", NEW_PASSPHRASE_ENV) if new else ("", PASSPHRASE_ENV)
    option = "--new-passphrase" if new else "--passphrase"
    path, env = getattr(args, f"{prefix}passphrase_file"), getattr(args, f"{prefix}passphrase_env")
    if path is not None:
        if path == "-":  # a line of standard input (the old passphrase's, then the new's)
            text = sys.stdin.readline()
        else:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        passphrase = text[:-1] if text.endswith("\n") else text
        passphrase = passphrase[:-1] if passphrase.endswith("\r") else passphrase
        if not passphrase:
            raise CommandError(f"{option}-file {path}: no passphrase in it (empty)")
        return passphrase
    if env is not None:
        passphrase = os.environ.get(env, "")
        if not passphrase:
            raise CommandError(f"{option}-env {env}: the environment variable is not set "
                               "or is empty")
        return passphrase
    if os.environ.get(default_env):
        return os.environ[default_env]
    if not sys.stdin.isatty():
        raise CommandError(f"no {'new ' if new else ''}passphrase: give {option}-env NAME "
                           f"or {option}-file FILE, set {default_env}, or run in a terminal "
                           "to be asked")
    import getpass
    what = "new passphrase" if new else "passphrase"
    passphrase = getpass.getpass(f"{what[0].upper()}{what[1:]} for {args.keyring}: ")
    if not passphrase:
        raise CommandError(f"the {what} is empty")
    if confirm and getpass.getpass(f"The {what} again: ") != passphrase:
        raise CommandError(f"the two {what}s differ; nothing was changed")
    return passphrase


def cmd_keys_create(args: argparse.Namespace) -> int:
    from amphora.crypto.keyring import KdfParameters, Keyring
    if os.path.exists(args.keyring):
        raise CommandError(f"{args.keyring} already exists; a keyring is created once")
    cost = KdfParameters(iterations=args.kdf_iterations, lanes=args.kdf_lanes,
                         memory_cost=args.kdf_memory)
    keyring = Keyring.create(args.keyring, _passphrase(args, confirm=True), cost)
    print(f"created the keyring {args.keyring} with key {keyring.current_key_id}; keep the "
          "passphrase and a copy of the file safe: without them the data cannot be read")
    return 0


def cmd_keys_passwd(args: argparse.Namespace) -> int:
    from amphora.crypto.keyring import Keyring
    old = _passphrase(args)
    keyring = Keyring.unlock(args.keyring, old)
    keyring.change_passphrase(old, _passphrase(args, new=True, confirm=True))
    print(f"{args.keyring}: the keys are wrapped under the new passphrase (the keys, and "
          "so the data, did not change)")
    return 0


def cmd_keys_info(args: argparse.Namespace) -> int:
    from amphora.crypto.keyring import Keyring
    summary = Keyring.summary(args.keyring)
    cost = summary.cost
    print(f"keyring:        {args.keyring}")
    passes = f"{cost.iterations} pass{'' if cost.iterations == 1 else 'es'}"
    print(f"key derivation: Argon2id, {passes}, {cost.memory_cost:,} KiB of memory, "
          f"{_plural(cost.lanes, 'lane')}")
    print(f"keys:           {len(summary.created)} (new records are sealed with the current one)")
    for key_id, created in sorted(summary.created.items()):
        mark = "  current" if key_id == summary.current else ""
        print(f"  {key_id:>4}  created {created or 'at an unknown time'}{mark}")
    return 0


def _passphrase_options(sub: argparse.ArgumentParser, new: bool = False) -> None:
    prefix, env = ("new-", NEW_PASSPHRASE_ENV) if new else ("", PASSPHRASE_ENV)
    what = "the new passphrase" if new else "the passphrase"
    source = sub.add_mutually_exclusive_group()
    source.add_argument(f"--{prefix}passphrase-env", metavar="NAME",
                        help=f"read {what} from the environment variable NAME "
                             f"(default: {env} if it is set, else a prompt)")
    source.add_argument(f"--{prefix}passphrase-file", metavar="FILE",
                        help=f"read {what} from FILE (one final newline is ignored;"
                             " -: a line of standard input)")


def _unlocked(args: argparse.Namespace) -> Any:
    """The keyring ``args.keyring``, unlocked with the passphrase the options name."""
    from amphora.crypto.keyring import Keyring
    return Keyring.unlock(args.keyring, _passphrase(args))


@contextlib.contextmanager
def _encrypted(args: argparse.Namespace) -> Iterator[Any]:
    """The storage ``args.uri`` sealed with the keyring ``args.keyring``."""
    from amphora.storage.encrypted import EncryptedStorage
    keyring = _unlocked(args)
    with opened(args.uri) as storage:
        yield EncryptedStorage(storage, keyring)


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from amphora.crypto.rotation import rotate
    started = time.monotonic()
    with _encrypted(args) as storage:
        with _count_progress("sealing again") as progress:
            try:
                stats = rotate(storage, batch=args.batch, progress=progress)
            except BaseException:
                print("amphora: the rotation stopped; what it committed stays sealed with "
                      "the new key, and running it again finishes it", file=sys.stderr)
                raise
    elapsed = time.monotonic() - started
    how = (f"added key {stats.key_id}" if stats.added
           else f"finished the rotation to key {stats.key_id} (already current)")
    print(f"{args.uri}: {how}; {_plural(stats.resealed, 'record')} sealed again in "
          f"{_plural(stats.transactions, 'transaction')}, {stats.already:,} already sealed "
          f"with it, {_plural(stats.conflicts, 'conflict')} with writers retried, "
          f"{stats.objects:,} objects, in {elapsed:.2f} s")
    if stats.remaining:
        print(f"amphora: {_plural(stats.remaining, 'record')} still sealed with an older "
              "key (a writer using another copy of the keyring?): run the rotation again",
              file=sys.stderr)
        return 1
    if len(storage.keyring.key_ids) > 1:
        print(f"older keys can be retired once no old revision needs them: amphora pack "
              f"--no-gc {args.uri}, then amphora keys retire {args.uri} --keyring "
              f"{args.keyring} --key ID")
    return 0


def cmd_keys_retire(args: argparse.Namespace) -> int:
    from amphora.crypto.rotation import retire
    with _encrypted(args) as storage:
        retire(storage, args.key)
    print(f"retired key {args.key} from {args.keyring}: records sealed with it no longer "
          "open (copies of the keyring made before still hold it)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from amphora.server import serve
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise CommandError(f"--listen takes HOST:PORT, not {args.listen!r}")
    if int(port) > 65535:
        raise CommandError(f"--listen: port {port} is out of range (0 to 65535)")
    token, read_only_token = _token(args.token_file), _token(args.read_only_token_file)
    if args.search_timeout is not None and not args.search_timeout > 0:
        raise CommandError(f"--search-timeout takes a positive number of seconds, "
                           f"not {args.search_timeout}")
    context = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise CommandError("TLS needs both --tls-cert and --tls-key")
        import ssl
        for option, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
            if not os.path.isfile(path):
                raise CommandError(f"{option} {path}: no such file")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except ssl.SSLError as exc:
            raise CommandError(f"--tls-cert {args.tls_cert} / --tls-key {args.tls_key}: "
                               f"not a certificate and its key ({exc.reason or exc})") from exc
    if "{name}" not in args.uri:
        parse_uri(args.uri)  # a bad URI is reported before anything listens

    def ready(bound_host: str, bound_port: int) -> None:
        print(f"amphora: serving {args.uri} on {bound_host}:{bound_port}"
              f"{' (TLS)' if context else ''}{' read-only' if args.read_only else ''}",
              flush=True)
    serve(args.uri, host.strip("[]"), int(port), token=token, ssl_context=context,
          read_only=args.read_only, ready=ready, read_only_token=read_only_token,
          search_timeout=args.search_timeout)
    return 0


def _token(path: str | None) -> str | None:
    """The token in the file ``path`` (surrounding whitespace ignored), if given."""
    if not path:
        return None
    with open(path, encoding="utf-8") as file:
        token = file.read().strip()
    if not token:
        raise CommandError(f"{path}: the token file is empty")
    return token


# ---------------------------------------------------------------------------------------
# The parser

STORAGE_FORMS = """\
storages are named by URI: memory://, sqlite:///relative/path.db,
sqlite:////absolute/path.db (options as ?keep_history=false&synchronous=full);
ZODB FileStorage files as path.fs or file://path.fs (needs ZODB installed)"""


def build_parser() -> argparse.ArgumentParser:
    """The ``amphora`` argument parser (one sub-parser per command)."""
    parser = argparse.ArgumentParser(
        prog="amphora", description="Look into, pack, copy and search amphora storages.",
        epilog=STORAGE_FORMS)
    parser.add_argument("--version", action="version", version=f"amphora {_version()}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=description,
                                   epilog=STORAGE_FORMS)

    info = command("info", "size, object and transaction counts, last transaction, mirror",
                   "Show a storage's size, its number of objects and transactions, and its "
                   "last transaction (tid and UTC time). Opens the storage read-only.")
    info.add_argument("uri", metavar="URI", help="the storage")
    info.set_defaults(func=cmd_info)

    history = command("history", "the revisions of one object, or undoable transactions",
                      "List the revisions of an object, newest first: tid, UTC time, record "
                      "size, user and description of the transaction that wrote each. "
                      "Without OID, list the transactions 'amphora undo' can undo. "
                      "Opens the storage read-only.")
    history.add_argument("uri", metavar="URI", help="the storage")
    history.add_argument("oid", metavar="OID", type=_parse_oid, nargs="?", default=None,
                         help="the object id, decimal (12) or hex (0xc); the root is 0")
    history.add_argument("--size", metavar="N", type=_positive_int, default=10,
                         help="show at most N revisions (default: 10)")
    history.set_defaults(func=cmd_history)

    undo = command("undo", "undo one transaction",
                   "Commit a transaction that gives the objects transaction TID wrote their "
                   "revisions from before it ('amphora history URI' lists them). Fails, "
                   "writing nothing, if a later change to one of them cannot be merged.")
    undo.add_argument("uri", metavar="URI", help="the storage")
    undo.add_argument("tid", metavar="TID", type=_parse_oid,
                      help="the transaction id, hex (0x040d4a9bbcdde277) or decimal")
    undo.set_defaults(func=cmd_undo)

    pack = command("pack", "remove old revisions and unreachable objects",
                   "Pack a storage: remove the revisions that were superseded before the "
                   "pack time and, unless --no-gc is given, the objects no longer reachable "
                   "from the root.")
    pack.add_argument("uri", metavar="URI", help="the storage")
    pack.add_argument("--days", metavar="N", type=_non_negative, default=0.0,
                      help="keep the history of the last N days (default: 0, pack to now)")
    pack.add_argument("--no-gc", action="store_true",
                      help="only remove old revisions; keep unreachable objects")
    pack.add_argument("--vacuum", action="store_true",
                      help="SQLite: then rewrite the file without its free pages, giving "
                      "the space back (commits wait meanwhile)")
    pack.add_argument("--keyring", metavar="FILE",
                      help="an encrypted database's keyring: its records are opened to find "
                      "what they refer to (without it, an encrypted database packs with "
                      "--no-gc only)")
    _passphrase_options(pack)
    pack.set_defaults(func=cmd_pack)

    copy = command("copy", "copy every transaction from one storage to another",
                   "Copy every transaction of SRC into DST, keeping tids, users, "
                   "descriptions and extensions. DST must be empty (a new file is "
                   "created) unless --incremental is given. Either may be a ZODB "
                   "FileStorage file, to migrate from ZODB to amphora and back.")
    copy.add_argument("source", metavar="SRC", help="the storage to read (opened read-only)")
    copy.add_argument("destination", metavar="DST", help="the storage to write")
    copy.add_argument("--incremental", action="store_true",
                      help="DST is an earlier copy of SRC: copy only the transactions "
                           "committed after DST's last one (resumes an interrupted copy)")
    copy.set_defaults(func=cmd_copy)

    show = command("show", "one record as JSON (no class is imported)",
                   "Print a record as a JSON document: oid, tid, class name and state, "
                   "transcoded from the pickle without importing or running any class.")
    show.add_argument("uri", metavar="URI", help="the storage")
    show.add_argument("oid", metavar="OID", type=_parse_oid,
                      help="the object id, decimal (12) or hex (0xc); the root is 0")
    show.add_argument("--tid", metavar="TID", type=_parse_oid, default=None,
                      help="the revision written by this transaction (default: current)")
    show.set_defaults(func=cmd_show)

    at = command("at", "info, show or copy a storage as it was at a moment",
                 "Run info, show or copy on the storage as it was at MOMENT: the "
                 "transactions committed up to then, read-only (later ones are not seen).")
    at.add_argument("uri", metavar="URI", help="the storage (opened read-only)")
    at.add_argument("at", metavar="MOMENT", type=_moment,
                    help="an ISO-8601 time, UTC unless it has an offset "
                         "(2026-11-01T12:00), or a tid (0x...)")
    at_commands = at.add_subparsers(title="commands", dest="at_command", metavar="COMMAND")
    at_commands.required = True
    at_info = at_commands.add_parser("info", help="as amphora info",
                                     description="amphora info, as of MOMENT.")
    at_info.set_defaults(func=cmd_info)
    at_show = at_commands.add_parser("show", help="as amphora show",
                                     description="amphora show, as of MOMENT.")
    at_show.add_argument("oid", metavar="OID", type=_parse_oid,
                         help="the object id, decimal (12) or hex (0xc); the root is 0")
    at_show.add_argument("--tid", metavar="TID", type=_parse_oid, default=None,
                         help="the revision written by this transaction (default: the "
                              "one current at MOMENT)")
    at_show.set_defaults(func=cmd_show)
    at_copy = at_commands.add_parser("copy", help="as amphora copy",
                                     description="amphora copy of the transactions up to "
                                                 "MOMENT into DST.")
    at_copy.add_argument("destination", metavar="DST", help="the storage to write")
    at_copy.add_argument("--incremental", action="store_true",
                         help="DST is an earlier copy: copy only the transactions after "
                              "its last one, up to MOMENT")
    at_copy.set_defaults(func=cmd_at_copy)

    search = command("search", "objects whose JSON documents meet an SQL condition",
                     "Print, one JSON line each, the documents of the JSON mirror that meet "
                     "an SQL condition on `state` (the document) and `class_name`, e.g. "
                     "\"lower(state->>'email') = %%s\" --param ann@example.com.")
    search.add_argument("uri", metavar="URI", help="the storage (it must have a mirror)")
    search.add_argument("condition", metavar="CONDITION", help="an SQL condition")
    search.add_argument("--param", metavar="VALUE", action="append", default=[],
                        help="a value for the next %%s in CONDITION (repeatable)")
    search.add_argument("--class", dest="class_name", metavar="CLASS",
                        help="only objects of this class (module.Name)")
    search.add_argument("--limit", metavar="N", type=_positive_int, default=100,
                        help="print at most N documents (default: 100)")
    search.set_defaults(func=cmd_search)

    mirror = command("mirror", "create, rebuild or drop the JSON mirror for SQL search",
                     "Give the storage a JSON mirror: every object also stored as a JSON "
                     "document that SQL can search, kept current by every commit. Writes "
                     "the documents of the objects already stored, with a progress bar.")
    mirror.add_argument("uri", metavar="URI", help="the storage")
    action = mirror.add_mutually_exclusive_group()
    action.add_argument("--rebuild", action="store_true", help="write every document again")
    action.add_argument("--drop", action="store_true",
                        help="remove the mirror and its indexes")
    action.add_argument("--follow", action="store_true",
                        help="commits write no documents; `amphora follow` writes them "
                             "afterwards (commits stay as fast as without a mirror)")
    mirror.set_defaults(func=cmd_mirror)

    follow = command("follow", "keep a follow-mode JSON mirror current",
                     "Write the JSON documents of the transactions committed since the "
                     "follower last ran, then keep following new commits until interrupted "
                     "(or, with --once, stop when caught up). Resumes where it stopped.")
    follow.add_argument("uri", metavar="URI", help="the storage")
    follow.add_argument("--once", action="store_true", help="stop once caught up")
    follow.add_argument("--interval", metavar="S", type=_non_negative, default=0.5,
                        help="seconds between looks for new commits (default: 0.5)")
    follow.set_defaults(func=cmd_follow)

    keys = command("keys", "keyrings of encrypted databases: create, passwd, info, rotate, "
                   "retire",
                   "Manage the keyring of an encrypted database (amphora.Keyring): its data "
                   "keys, wrapped under a passphrase. The passphrase is asked for at a "
                   f"prompt, or read from an environment variable ({PASSPHRASE_ENV} if set, "
                   "or --passphrase-env NAME) or a file (--passphrase-file FILE); never "
                   "from the command line, where other users and the shell's history "
                   "would see it.")
    key_commands = keys.add_subparsers(title="commands", dest="keys_command",
                                       metavar="COMMAND")
    key_commands.required = True

    def key_command(name: str, help: str, description: str, on_storage: bool = False
                    ) -> argparse.ArgumentParser:
        sub = key_commands.add_parser(name, help=help, description=description,
                                      allow_abbrev=False,
                                      epilog=STORAGE_FORMS if on_storage else None)
        if on_storage:
            sub.add_argument("uri", metavar="URI", help="the encrypted storage")
            sub.add_argument("--keyring", metavar="FILE", required=True,
                             help="the keyring its records are sealed with")
        else:
            sub.add_argument("keyring", metavar="FILE", help="the keyring file")
        return sub

    create = key_command("create", "a new keyring file with one random data key",
                         "Create a keyring file holding one new random data key, wrapped "
                         "under a passphrase (asked twice at a prompt). The file is "
                         "readable by its owner only and never holds a key in the clear.")
    _passphrase_options(create)
    create.add_argument("--kdf-memory", metavar="KIB", type=_positive_int, default=64 * 1024,
                        help="Argon2id's memory in KiB (default: 65536, 64 MiB)")
    create.add_argument("--kdf-iterations", metavar="N", type=_positive_int, default=3,
                        help="Argon2id's passes (default: 3)")
    create.add_argument("--kdf-lanes", metavar="N", type=_positive_int, default=4,
                        help="Argon2id's lanes (default: 4)")
    create.set_defaults(func=cmd_keys_create)

    passwd = key_command("passwd", "wrap the keys under a new passphrase",
                         "Change a keyring's passphrase: the data keys are wrapped again "
                         "under the new one (asked twice); they do not change, so nothing "
                         "in the databases is re-encrypted. Processes that unlocked the "
                         "keyring before must unlock it again to learn of later keys.")
    _passphrase_options(passwd)
    _passphrase_options(passwd, new=True)
    passwd.set_defaults(func=cmd_keys_passwd)

    keys_info = key_command("info", "the ids and dates of a keyring's keys (no passphrase)",
                            "List a keyring's data keys: their ids, when each was made, "
                            "which is current, and the cost of its key derivation. Needs "
                            "no passphrase and never shows a key.")
    keys_info.set_defaults(func=cmd_keys_info)

    rotate = key_command("rotate", "seal every object with a new key, online",
                         "Add a new data key to the keyring (the current one: every process "
                         "using the keyring file seals with it from its next commit), then "
                         "seal the current revision of every object again with it, in small "
                         "transactions, while the database is in use; a progress bar on "
                         "stderr when it is a terminal. Interrupted, run it again: it "
                         "finishes the rotation to the current key instead of adding "
                         "another. Old revisions keep their key until the database is "
                         "packed; then 'amphora keys retire' removes the old key.",
                         on_storage=True)
    _passphrase_options(rotate)
    rotate.add_argument("--batch", metavar="N", type=_positive_int, default=100,
                        help="objects sealed again per transaction (default: 100)")
    rotate.set_defaults(func=cmd_keys_rotate)

    retire = key_command("retire", "remove an old key no stored revision needs",
                         "Remove an old data key from the keyring, once no revision and no "
                         "transaction of the database is sealed with it (refused before: "
                         "rotate, then pack to now). Other databases sealed with the same "
                         "keyring are not checked.", on_storage=True)
    _passphrase_options(retire)
    retire.add_argument("--key", metavar="ID", type=_positive_int, required=True,
                        help="the id of the key to remove ('amphora keys info' lists them)")
    retire.set_defaults(func=cmd_keys_retire)

    serve = command("serve", "serve a storage to amphora:// clients over the network",
                    "Serve a storage over TCP (TLS with --tls-cert and --tls-key) to "
                    "amphora://host:port clients, pushing every commit to every client. "
                    "A URI with {name} in it serves one storage per name (amphora://"
                    "host:port/NAME). Stops cleanly on SIGTERM or Ctrl-C.")
    serve.add_argument("uri", metavar="URI", help="the storage to serve")
    serve.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:8100",
                       help="the address to listen on (default: 127.0.0.1:8100; port 0: "
                            "any free port, printed at start)")
    serve.add_argument("--token-file", metavar="FILE",
                       help="clients must present the token in FILE")
    serve.add_argument("--tls-cert", metavar="FILE", help="the server's certificate (PEM)")
    serve.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    serve.add_argument("--read-only-token-file", metavar="FILE",
                       help="clients presenting the token in FILE may read and search, "
                            "not write")
    serve.add_argument("--search-timeout", metavar="SECONDS", type=float, default=30.0,
                       help="the longest a client's query of the JSON mirror may run "
                            "(default: 30)")
    serve.add_argument("--read-only", action="store_true", help="refuse every write")
    serve.set_defaults(func=cmd_serve)

    # (main hands everything after "kanban" to the Kanban's own command; listed here for
    # --help)
    kanban = commands.add_parser("kanban", help="the Kanban web app: serve, adduser",
                                 description="The Kanban web app (amphora kanban --help).",
                                 add_help=False)
    kanban.add_argument("args", nargs=argparse.REMAINDER)
    kanban.set_defaults(func=cmd_kanban)

    from amphora.deploy.cli import add_command as add_deploy_command
    add_deploy_command(commands)
    return parser


def cmd_kanban(args: argparse.Namespace) -> int:
    return _kanban(args.args)


def _kanban(argv: Sequence[str]) -> int:
    """``amphora kanban ...``: the Kanban's command, imported only when asked for."""
    try:
        from amphora_kanban.cli import main as kanban_main
    except ImportError as exc:
        print(f"amphora: error: the Kanban app cannot be loaded ({exc}): "
              "pip install amphora[kanban]", file=sys.stderr)
        return EXIT_ERROR
    return kanban_main(list(argv))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("amphora")
    except PackageNotFoundError:
        return "unknown"


def _error_types() -> tuple[type[BaseException], ...]:
    """The errors a user can cause: amphora's, the OS's, and ZODB's when it is loaded."""
    types: list[type[BaseException]] = [AmphoraError, CommandError, OSError]
    zodb_errors = sys.modules.get("ZODB.POSException")
    if zodb_errors is not None:
        types.append(zodb_errors.POSError)
    return tuple(types)


def _describe(exc: BaseException) -> str:
    message = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in message:
        message = f"{exc.filename}: {message}"
    if not isinstance(exc, (AmphoraError, CommandError, OSError)):
        message = f"{type(exc).__name__}: {message}"  # ZODB's errors often say little
    return " ".join(message.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``amphora`` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["kanban"]:
        return _kanban(argv[1:])
    if argv[:1] == ["keys"] and any(arg.split("=")[0] in ("--passphrase", "--password")
                                    for arg in argv):
        print("amphora: error: a passphrase is never taken from the command line (other "
              "users and the shell's history would see it): use the prompt, "
              "--passphrase-env NAME or --passphrase-file FILE", file=sys.stderr)
        return EXIT_ERROR
    args = build_parser().parse_args(argv)
    # Warnings from the storages' loggers (ZODB's FileStorage rebuilding an index, say)
    # are worth seeing, marked as ours.
    logging.basicConfig(level=logging.WARNING, format="amphora: %(levelname)s: %(message)s")
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (`amphora history URI 0 | head -1`): not an error. Later
        # writes, and the flush at exit, go nowhere instead of failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except _error_types() as exc:
        print(f"amphora: error: {_describe(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("amphora: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
