"""Fault-suite fixtures and the results-table plugin.

Every fault test runs real worker subprocesses against real Postgres and Redis. Faults are
injected so that only the test's own traffic is affected: Postgres outages go through a TCP
proxy the test cuts, Redis restarts hit a private redis-server the suite owns.

`fault_report(fault, outcome, figure)` records one table row per test; at session end the
rows (with pass/fail) are written to tests/faults/README_TABLE.md, but only when the whole
fault suite ran (a partial run, e.g. `-k`, leaves the file alone).
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.conftest import fresh_database, unavailable
from tests.faults import report
from tests.faults.redisproc import RedisServer

HERE = Path(__file__).resolve().parent

WRITE_TABLE_ENV = "PREDQ_WRITE_FAULT_TABLE"
_rows: list[report.Row] = []
_collected: set[str] = set()
_finished: set[str] = set()
_deselected = {"any": False}
_clock: dict[str, float] = {}
_outcomes: dict[str, str] = {}


def _is_fault(nodeid_or_path: str) -> bool:
    return "tests/faults/" in nodeid_or_path.replace(os.sep, "/")


# -- plugin hooks -----------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: the fault suite (tests/faults)")


def pytest_deselected(items: list[pytest.Item]) -> None:
    if any(_is_fault(i.nodeid) for i in items):
        _deselected["any"] = True


def pytest_collection_finish(session: pytest.Session) -> None:
    _collected.update(i.nodeid for i in session.items if _is_fault(i.nodeid))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _is_fault(item.nodeid):
        _clock.setdefault("start", time.monotonic())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    if _is_fault(item.nodeid):
        status = _status(rep)
        previous = _outcomes.get(item.nodeid)
        if rep.when == "call" or previous is None or status in ("failed", "skipped"):
            _outcomes[item.nodeid] = status if previous != "failed" else previous
        if rep.when == "teardown":
            _finished.add(item.nodeid)
            _clock["end"] = time.monotonic()
    return rep


def _status(rep: pytest.TestReport) -> str:
    if hasattr(rep, "wasxfail"):
        return "xfailed" if rep.skipped else "xpassed"
    return str(rep.outcome)


def _final_rows() -> list[report.Row]:
    """The measured rows with their tests' outcomes, plus a row per failed test that
    failed before it could measure anything."""
    for row in _rows:
        row.status = _outcomes.get(row.nodeid, "failed")
    measured = {r.nodeid for r in _rows}
    silent = [report.Row(n, n.split("::", 1)[-1], "the test failed before it measured "
                         "anything (see the test output)", "-", status=s)
              for n, s in sorted(_outcomes.items()) if n not in measured and s == "failed"]
    return _rows + silent


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Tests never write tracked files: only `make fault-table` (which sets this) does.
    if not _rows or os.environ.get(WRITE_TABLE_ENV) != "1":
        return
    files = {p.name for p in HERE.glob("test_*.py")}
    seen = {nodeid.split("::")[0].rsplit("/", 1)[-1] for nodeid in _collected}
    skipped = any(s == "skipped" for s in _outcomes.values())
    complete = (files <= seen and not _deselected["any"] and _collected <= _finished
                and not skipped)
    if not complete:
        sys.stderr.write("\n[faults] partial fault run (deselected, skipped or unfinished "
                         "tests): tests/faults/README_TABLE.md left unchanged\n")
        return
    seconds = _clock.get("end", 0.0) - _clock.get("start", 0.0)
    command = " ".join(["pytest", *session.config.invocation_params.args]) or "pytest"
    table = report.render(_final_rows(), seconds, command)
    report.TABLE_PATH.write_text(table)
    report.splice_into_readme(table)
    sys.stderr.write(f"\n[faults] results table written to {report.TABLE_PATH} and the "
                     "README's fault section\n")


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def fault_report(request: pytest.FixtureRequest) -> report.ReportFn:
    """`fault_report(fault, outcome, figure, group=None)`: one row of the results table."""

    def add(fault: str, outcome: str, figure: str, group: str | None = None) -> None:
        _rows.append(report.Row(request.node.nodeid, fault, outcome, figure, group))

    return add


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the suite's own on a free port (broker and result backend)."""
    server = RedisServer(tmp_path_factory.mktemp("redis-shared"))
    try:
        server.start()
    except (OSError, RuntimeError, TimeoutError) as exc:
        unavailable("private redis-server", exc)
    try:
        yield server
    finally:
        server.stop()


_db_index = itertools.count(1)


def _fresh_db(server: RedisServer) -> str:
    db = next(_db_index) % 16
    with server.client(db) as client:
        client.flushdb()
    return server.url(db)


@pytest.fixture
def redis_db(private_redis: RedisServer) -> str:
    """A flushed database index of the private Redis, for one test."""
    return _fresh_db(private_redis)


@pytest.fixture(scope="module")
def module_redis_url(private_redis: RedisServer) -> str:
    """A flushed database index of the private Redis, for the tests of one module."""
    return _fresh_db(private_redis)


@pytest.fixture(scope="module")
def module_pg_url(pg_admin: object) -> Iterator[str]:
    """A fresh Postgres database shared by the tests of one module, dropped afterwards."""
    yield from fresh_database(pg_admin)
