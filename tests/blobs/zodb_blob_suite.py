"""ZODB's reusable blob suite (``ZODB.tests.testblob.storage_reusable_suite``: doctests of
blobs through ``ZODB.DB``, and test cases) as pytest tests, one per doctest or test.

The suite is a zope.testrunner suite: its layer fakes a clock that moves forward by a
second at each reading (so that pack times fall between commits without sleeping), set
up here around each test as zope.testrunner would.

amphora's errors derive from ZODB's (``ObjectNotFoundError`` is a ``POSKeyError``,
``ConflictError`` ZODB's ``ConflictError``) but have their own names and messages, which
the doctests print: their output checker is given the translation (as ZODB's own suite
normalizes file names). As root, a read-only file can be opened for writing, which one
doctest expects to fail: that example is left out there (tests/blobs checks the files'
modes instead).
"""
from __future__ import annotations

import os
import re
import unittest
from typing import Any, Callable, Iterator

import pytest


def _flatten(suite: unittest.TestSuite) -> Iterator[unittest.TestCase]:
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            yield from _flatten(test)
        else:
            yield test


def blob_suite_tests(prefix: str, factory: Callable[[str, str], Any],
                     skip: dict[str, str] | None = None, any_oids: bool = False,
                     **options: Any) -> list[Any]:
    """pytest params, one per test of ZODB's blob suite over ``factory(name, blob_dir)``;
    ``skip`` maps names of tests the storage cannot pass to the reason. ``any_oids``: the
    storage hands out oids of its own choosing (a DemoStorage's start at a random point),
    so the doctests' messages are compared without them."""
    from ZODB.tests.testblob import storage_reusable_suite
    suite = storage_reusable_suite(prefix, factory, **options)
    layer = suite.layer
    skip = {**SKIPPED, **(skip or {})}
    params = []
    for test in _flatten(suite):
        name = _name(test)
        reason = skip.get(name.rsplit(".", 1)[-1])
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(layer, _adapt(test, any_oids), id=name, marks=marks))
    return params


def _amphora_errors_as_zodb_errors(any_oids: bool) -> Any:
    from zope.testing.renormalizing import RENormalizing
    oids = [(re.compile(r"\boid 0x[0-9a-f]+"), "oid (an oid)")] if any_oids else []
    return RENormalizing([
        (re.compile(r"amphora\.errors\.ObjectNotFoundError: no object with oid (0x\w+)"),
         r"ZODB.POSException.POSKeyError: \1"),
        (re.compile(r"amphora\.errors\.ConflictError"), "ZODB.POSException.ConflictError"),
        (re.compile(r"\boid 0x0*([0-9a-f]+)"), r"oid 0x\1"),  # ZODB pads to whole bytes
    ] + oids)


_WRITES_READ_ONLY_FILE = "open(blob.committed(), 'w')"


def _adapt(test: unittest.TestCase, any_oids: bool) -> unittest.TestCase:
    doctest_ = getattr(test, "_dt_test", None)
    if doctest_ is not None:
        checker = test._dt_checker
        extra = _amphora_errors_as_zodb_errors(any_oids)
        test._dt_checker = extra if checker is None else checker + extra
        if os.geteuid() == 0:
            doctest_.examples = [example for example in doctest_.examples
                                 if _WRITES_READ_ONLY_FILE not in example.source]
    return test


def _name(test: unittest.TestCase) -> str:
    name = test.id()
    return name.rsplit("/", 1)[-1].replace("ZODB.tests.testblob.", "")


#: tests of the suite that check something of ZODB's own making, and why
SKIPPED = {
    "commit_from_wrong_partition":
        "counts the messages of ZODB's own logger ('ZODB.blob.copied') while os.rename is "
        "broken; amphora moves files with os.replace and copies them across file "
        "systems without that logger (tests/blobs/test_blob_files.py copies across)",
}


def run_blob_suite_test(layer: Any, test: unittest.TestCase) -> None:
    """Run one test of the suite inside its layer; fail with the suite's own report."""
    result = unittest.TestResult()
    layer.setUp()
    try:
        layer.testSetUp()
        try:
            test.run(result)
        finally:
            layer.testTearDown()
    finally:
        layer.tearDown()
    for reason in [reason for _, reason in result.skipped]:
        pytest.skip(reason)
    problems = result.errors + result.failures
    if problems:
        pytest.fail("\n".join(text for _, text in problems), pytrace=False)
    assert result.testsRun == 1
