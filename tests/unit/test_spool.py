"""Invariant 4 at the spool level: spooled rows survive failures, crashes and other processes."""

from __future__ import annotations

import errno
import math
import multiprocessing
import os
import random
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from modelstore.errors import InvalidInput
from workers.spool import Spool

WHEN = datetime(2024, 5, 17, 13, 45, 12, 123456)


def rows(prefix: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"request_id": f"{prefix}-{i}", "model_name": "cars", "model_version": "v1",
             "model_sha256": None, "input_features": {"year": 2018, "brand": "Škoda"},
             "predicted_value": 1000.0 + i, "confidence_score": None,
             "prediction_time": WHEN} for i in range(start, start + n)]


class Recorder:
    """A `write` callback that keeps what it got and can fail on chosen calls."""

    def __init__(self, fail_calls: set[int] | None = None) -> None:
        self.calls: list[list[dict[str, Any]]] = []
        self.fail_calls = fail_calls or set()
        self.attempts = 0

    def __call__(self, batch: list[dict[str, Any]]) -> None:
        self.attempts += 1
        if self.attempts in self.fail_calls:
            raise ConnectionError("database is down")
        self.calls.append(batch)

    @property
    def ids(self) -> list[str]:
        return [r["request_id"] for batch in self.calls for r in batch]


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.jsonl"))


def test_round_trip_keeps_every_field_with_times_as_iso_strings(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    sent = rows("a", 3)
    spool.append(sent)
    assert spool.pending_rows() == 3
    got = Recorder()
    assert spool.replay(got) == 3
    expected = [dict(r, prediction_time=WHEN.isoformat()) for r in sent]
    assert got.calls == [expected]
    assert spool.pending_rows() == 0
    assert segment_files(tmp_path / "spool") == []


def test_a_row_without_a_time_is_stamped_when_spooled(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    before = datetime.now(UTC).replace(microsecond=0)
    spool.append([dict(rows("a", 1)[0], prediction_time=None)])
    got = Recorder()
    spool.replay(got)
    stamped = datetime.fromisoformat(got.calls[0][0]["prediction_time"])
    # Aware (UTC with its offset): the store converts it to the server's local time, as
    # it does CURRENT_TIMESTAMP (tests/integration/test_prediction_times.py).
    assert stamped.utcoffset() is not None
    assert before <= stamped <= datetime.now(UTC)


def test_unstorable_rows_are_refused_at_append_naming_the_field(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(InvalidInput, match=r"rows\[1\]\.predicted_value"):
        spool.append([rows("a", 1)[0], dict(rows("b", 1)[0], predicted_value=math.nan)])
    with pytest.raises(InvalidInput, match=r"rows\[0\]\.input_features"):
        spool.append([dict(rows("c", 1)[0], input_features={"x": object()})])
    # A lone surrogate cannot be UTF-8 encoded: refused with its row, not a bare
    # UnicodeEncodeError that would fail every row of the micro-batch.
    with pytest.raises(InvalidInput, match=r"rows\[1\]\.input_features"):
        spool.append([rows("d", 1)[0], dict(rows("e", 1)[0], input_features={"x": "\ud800"})])
    assert spool.pending_rows() == 0


def test_a_failed_write_keeps_the_rows_for_a_later_replay(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(rows("a", 12))
    failing = Recorder(fail_calls={2})
    with pytest.raises(ConnectionError):
        spool.replay(failing, max_rows_per_call=5)
    assert failing.ids == [f"a-{i}" for i in range(5)]
    assert spool.pending_rows() == 12  # the segment stays whole until all of it is written
    spool.append(rows("b", 1))
    retry = Recorder()
    assert spool.replay(retry, max_rows_per_call=5) == 13
    assert [len(c) for c in retry.calls] == [5, 5, 2, 1]
    assert retry.ids == [f"a-{i}" for i in range(12)] + ["b-0"]
    assert spool.pending_rows() == 0


def test_a_torn_last_line_is_skipped_and_the_lines_before_it_replayed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(rows("a", 3))
    spool.close()
    [segment] = segment_files(tmp_path)
    with segment.open("ab") as fh:
        fh.write(b'{"request_id": "a-3", "model_ver')  # killed mid-append
    got = Recorder()
    assert Spool(tmp_path).replay(got) == 3
    assert got.ids == ["a-0", "a-1", "a-2"]
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_middle_line_keeps_the_file_for_inspection(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(rows("a", 1))
    spool.close()
    [segment] = segment_files(tmp_path)
    with segment.open("ab") as fh:
        fh.write(b"\x00\x00garbage\n")
    spool.append(rows("a", 1, start=1))
    spool.close()
    got = Recorder()
    assert spool.replay(got) == 2
    assert got.ids == ["a-0", "a-1"]
    assert [p.name for p in tmp_path.iterdir()] == [segment.name + ".damaged"]


def test_a_failed_append_is_cut_off_and_later_appends_still_replay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)
    spool.append(rows("a", 2))
    real_write = os.write

    def half_then_full_disk(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full_disk)
    with pytest.raises(OSError, match="No space"):
        spool.append(rows("b", 2))
    monkeypatch.undo()
    spool.append(rows("c", 1))
    got = Recorder()
    assert spool.replay(got) == 3
    assert got.ids == ["a-0", "a-1", "c-0"]
    assert not any(p.name.endswith(".damaged") for p in tmp_path.iterdir())


def test_a_segment_held_by_a_live_writer_is_skipped_until_released(tmp_path: Path) -> None:
    writer, replayer = Spool(tmp_path), Spool(tmp_path)
    writer.append(rows("w", 4))
    got = Recorder()
    assert replayer.replay(got) == 0
    assert replayer.pending_rows() == 4
    writer.append(rows("w", 3, start=4))  # grows the same segment: counted incrementally
    assert replayer.pending_rows() == 7
    writer.close()
    assert replayer.replay(got) == 7
    assert writer.pending_rows() == 0


def test_replay_goes_oldest_segment_first(tmp_path: Path) -> None:
    first, second = Spool(tmp_path), Spool(tmp_path)
    first.append(rows("a", 2))
    first.close()
    second.append(rows("b", 2))
    second.close()
    first.append(rows("c", 1))
    got = Recorder()
    assert first.replay(got, max_rows_per_call=1) == 5
    assert got.ids == ["a-0", "a-1", "b-0", "b-1", "c-0"]


def test_nothing_is_lost_across_random_appends_and_failing_replays(tmp_path: Path) -> None:
    rng = random.Random(11)
    spool = Spool(tmp_path)
    appended: list[str] = []
    written: list[str] = []
    for step in range(50):
        if rng.random() < 0.6:
            batch = rows(f"s{step}", rng.randint(1, 30))
            spool.append(batch)
            appended += [r["request_id"] for r in batch]
            continue
        flaky = Recorder(fail_calls={k for k in range(1, 20) if rng.random() < 0.3})
        try:
            spool.replay(flaky, max_rows_per_call=rng.randint(1, 25))
        except ConnectionError:
            assert spool.pending_rows() > 0
        else:
            assert spool.pending_rows() == 0
        written += flaky.ids
    final = Recorder()
    spool.replay(final)
    written += final.ids
    assert set(written) == set(appended)
    assert spool.pending_rows() == 0 and segment_files(tmp_path) == []


def _append_until_killed(directory: str, acked: Any, ready: Any) -> None:
    """Child process: append batches forever, counting the appends that returned."""
    spool = Spool(Path(directory))
    batch = 0
    while True:
        spool.append(rows(f"child{batch}", 50))
        batch += 1
        acked.value = batch
        if batch == 3:
            ready.set()


def test_rows_of_a_sigkilled_process_are_replayed_by_another(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    acked, ready = ctx.Value("i", 0), ctx.Event()
    child = ctx.Process(target=_append_until_killed, args=(str(tmp_path), acked, ready))
    child.start()
    try:
        assert ready.wait(60), "the child never appended"
        spool = Spool(tmp_path)
        skipped = Recorder()
        spool.replay(skipped)
        assert skipped.ids == []  # the live child holds its segment
        time.sleep(0.05)
    finally:
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join(10)
    assert child.exitcode == -signal.SIGKILL
    got = Recorder()
    replayed = spool.replay(got)
    acknowledged = {f"child{b}-{i}" for b in range(acked.value) for i in range(50)}
    assert acknowledged <= set(got.ids)
    assert replayed == len(got.ids) == len(set(got.ids))
    assert spool.pending_rows() == 0 and segment_files(tmp_path) == []


def test_a_forked_child_appends_to_its_own_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(rows("parent", 2))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            spool.append(rows("child", 2))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(segment_files(tmp_path)) == 2  # not the parent's, whose size it cannot know
    spool.append(rows("parent", 1, start=2))
    got = Recorder()
    assert spool.replay(got) == 5
    assert sorted(got.ids) == ["child-0", "child-1", "parent-0", "parent-1", "parent-2"]
    assert len(segment_files(tmp_path)) == 0
