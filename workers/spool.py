"""A durable local spool for prediction rows the database could not take (invariant 4).

Rows are JSON lines in segment files `seg-<time_ns>-<pid>-<counter>.jsonl` in one directory
that several processes may share. A process appends to its own current segment and holds
an exclusive `flock` on it until it rotates or closes it; a segment is created under a
temporary name and renamed only once locked, so no replayer ever sees it unlocked while
its writer lives. `append` returns after the bytes are fsynced. `replay` takes each
unlocked segment (a SIGKILLed writer's lock is gone with it), oldest first, hands its rows
to `write` and deletes it only afterwards: rows may be written twice (the log dedups by
request_id) but are never dropped. A torn last line (killed mid-write) is skipped.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as dt_time
from pathlib import Path
from typing import Any

import numpy as np

from modelstore.errors import InvalidInput

log = logging.getLogger(__name__)

SEGMENT_PREFIX = "seg-"
SEGMENT_SUFFIX = ".jsonl"
TMP_PREFIX = ".tmp-"
DAMAGED_SUFFIX = ".damaged"
MAX_SEGMENT_BYTES = 16 * 1024 * 1024
"""A segment is read whole on replay; rotating bounds that memory."""
ORPHAN_TMP_AGE_S = 60.0
"""A temporary segment name lives for microseconds; one older than this lost its writer."""


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date | dt_time):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                            default=_json_default)


def encode_rows(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """JSON lines, each ending in a newline. A row without `prediction_time` gets now, in
    UTC with its offset, so a replay hours later does not log the replay's time instead,
    and the store turns it into the server's local time as it does CURRENT_TIMESTAMP."""
    stamp: str | None = None
    lines: list[bytes] = []
    for i, row in enumerate(rows):
        record = dict(row)
        when = record.get("prediction_time")
        if when is None:
            stamp = stamp or datetime.now(UTC).isoformat()
            record["prediction_time"] = stamp
        elif type(when) is datetime:
            record["prediction_time"] = when.isoformat()  # cheaper than the encoder's default
        try:
            # Encoded per row: a lone surrogate fails UTF-8 here, naming its row.
            lines.append(_ENCODER.encode(record).encode())
        except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
            raise InvalidInput(f"spool rows[{i}].{_unencodable_field(record)}: cannot store "
                               f"as JSON: {exc}") from exc
    lines.append(b"")
    return b"\n".join(lines)


def _unencodable_field(record: Mapping[str, Any]) -> str:
    for key, value in record.items():
        try:
            _ENCODER.encode(value).encode()
        except (TypeError, ValueError):
            return str(key)
    return "<row>"


@dataclass
class _Segment:
    """The segment this process appends to; `fd` holds the exclusive flock."""

    fd: int
    path: Path
    size: int
    pid: int


class Spool:
    """Thread-safe; one per process. Several processes may share `directory`."""

    def __init__(self, directory: Path, *, fsync: bool = True,
                 max_segment_bytes: int = MAX_SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._max_segment_bytes = max_segment_bytes
        self._lock = threading.Lock()
        self._current: _Segment | None = None
        self._counter = 0
        self._last_ns = 0
        self._line_counts: dict[str, tuple[int, int, int]] = {}  # name -> (inode, offset, lines)

    # --- writing ---------------------------------------------------------------------------

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Store rows durably: when this returns they are written and fsynced."""
        if not rows:
            return
        data = encode_rows(rows)
        with self._lock:
            segment = self._writable_segment()
            written = False
            try:
                self._write(segment, data)
                written = True
            finally:
                # After a failed write never append again behind a possibly torn line.
                if not written or segment.size >= self._max_segment_bytes:
                    self._release(segment)

    def _write(self, segment: _Segment, data: bytes) -> None:
        done = False
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(segment.fd, view):]
            if self._fsync:
                os.fdatasync(segment.fd)
            done = True
        finally:
            if not done:
                self._truncate(segment)
        segment.size += len(data)

    @staticmethod
    def _truncate(segment: _Segment) -> None:
        try:
            os.ftruncate(segment.fd, segment.size)
        except OSError as exc:
            log.warning("spool segment %s: could not cut a failed append (%s); its torn "
                        "last line will be skipped on replay", segment.path, exc)

    def _writable_segment(self) -> _Segment:
        segment = self._current
        if segment is not None and segment.pid != os.getpid():
            # Inherited through fork: the parent owns that file and goes on appending to it.
            self._release(segment)
            segment = None
        if segment is None:
            segment = self._current = self._open_segment()
        return segment

    def _open_segment(self) -> _Segment:
        name = self._next_name()
        tmp = self.directory / f"{TMP_PREFIX}{name}"
        final = self.directory / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                     0o600)  # rows hold callers' input features
        named = ready = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, final)
            named = True
            if self._fsync:
                _fsync_directory(self.directory)
            ready = True
        finally:
            if not ready:
                os.close(fd)  # an empty named segment is harmless: replay deletes it
            if not named:
                tmp.unlink(missing_ok=True)
        return _Segment(fd, final, 0, os.getpid())

    def _next_name(self) -> str:
        # Names sort oldest first across processes; the counter breaks ties within one.
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        self._counter += 1
        stem = f"{self._last_ns:020d}-{os.getpid()}-{self._counter:08d}"
        return f"{SEGMENT_PREFIX}{stem}{SEGMENT_SUFFIX}"

    def _release(self, segment: _Segment) -> None:
        """Close (and so unlock) a segment: from now on any replay may take it."""
        if self._current is segment:
            self._current = None
        # In a forked child this closes only the inherited copy: the parent keeps its lock.
        os.close(segment.fd)

    def close(self) -> None:
        """Release the current segment. A later append opens a new one."""
        with self._lock:
            if self._current is not None:
                self._release(self._current)

    # --- reading ---------------------------------------------------------------------------

    def pending_rows(self) -> int:
        """Complete rows in all segments not yet replayed (of every process sharing it)."""
        with self._lock:
            counts: dict[str, tuple[int, int, int]] = {}
            for path in self._segment_paths():
                entry = self._count_lines(path, self._line_counts.get(path.name))
                if entry is not None:
                    counts[path.name] = entry
            self._line_counts = counts
            return sum(lines for _, _, lines in counts.values())

    @staticmethod
    def _count_lines(path: Path, cached: tuple[int, int, int] | None
                     ) -> tuple[int, int, int] | None:
        """Segments only grow until deleted, so only bytes past the cached offset are read."""
        try:
            with path.open("rb") as fh:
                inode = os.fstat(fh.fileno()).st_ino
                if cached is not None and cached[0] == inode:
                    _, offset, lines = cached
                else:
                    offset, lines = 0, 0
                fh.seek(offset)
                while chunk := fh.read(1 << 20):
                    lines += chunk.count(b"\n")
                    offset += len(chunk)
        except FileNotFoundError:
            return None
        return inode, offset, lines

    def replay(self, write: Callable[[list[dict[str, Any]]], object], *,
               max_rows_per_call: int = 5000) -> int:
        """Hand spooled rows to `write`, oldest segment first; returns rows replayed.

        Segments a live process holds are skipped. If `write` raises, this stops and
        re-raises; the segment being replayed stays, whole, for the next attempt.
        """
        if max_rows_per_call < 1:
            raise ValueError(f"max_rows_per_call: must be at least 1, got {max_rows_per_call}")
        self.close()  # our own rows become replayable
        self._sweep_orphans()
        replayed = 0
        for path in self._segment_paths():
            replayed += self._replay_segment(path, write, max_rows_per_call)
        return replayed

    def _replay_segment(self, path: Path, write: Callable[[list[dict[str, Any]]], object],
                        max_rows: int) -> int:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0  # another replayer finished it
        try:
            if not _try_lock(fd) or not _still_named(fd, path):
                return 0
            with open(fd, "rb", closefd=False) as fh:
                rows, damaged = _parse_segment(fh.read(), path)
            for start in range(0, len(rows), max_rows):
                write(rows[start:start + max_rows])
            if damaged:
                kept = path.with_name(path.name + DAMAGED_SUFFIX)
                os.rename(path, kept)
                log.error("spool segment %s had unreadable lines; its readable rows were "
                          "replayed and the file is kept as %s", path, kept)
            else:
                os.unlink(path)
            return len(rows)
        finally:
            os.close(fd)  # releases the lock, after the unlink

    def _segment_paths(self) -> list[Path]:
        return sorted(self.directory / name for name in _names(self.directory)
                      if name.startswith(SEGMENT_PREFIX) and name.endswith(SEGMENT_SUFFIX))

    def _sweep_orphans(self) -> None:
        """Delete temporary segments whose writer died before naming them (they are empty)."""
        now = time.time()
        for name in _names(self.directory):
            if not name.startswith(TMP_PREFIX):
                continue
            path = self.directory / name
            try:
                if now - path.stat().st_mtime < ORPHAN_TMP_AGE_S:
                    continue
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                if _try_lock(fd):
                    path.unlink(missing_ok=True)
            finally:
                os.close(fd)


def _names(directory: Path) -> Iterator[str]:
    with os.scandir(directory) as entries:
        yield from (entry.name for entry in entries)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _still_named(fd: int, path: Path) -> bool:
    """False when the file was replayed and unlinked between our open and our lock."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _parse_segment(data: bytes, path: Path) -> tuple[list[dict[str, Any]], bool]:
    """(rows, damaged). A last line without its newline is a torn append: skipped."""
    lines = data.split(b"\n")
    tail = lines.pop()
    if tail:
        log.warning("spool segment %s: skipping a torn last line of %d bytes (a writer died "
                    "mid-append; that append was never acknowledged)", path, len(tail))
    rows: list[dict[str, Any]] = []
    damaged = False
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            log.error("spool segment %s line %d: not a JSON object, skipped: %.80r",
                      path, number, line)
            damaged = True
            continue
        rows.append(row)
    return rows, damaged


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
