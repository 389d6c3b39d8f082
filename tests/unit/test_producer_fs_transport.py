"""The race-safe filesystem transport: a reader never consumes a half-written message."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from kombu.transport import filesystem

from producer.fs_transport import Transport


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[Any]:
    queue = tmp_path / "queue"
    queue.mkdir()
    options = {"data_folder_in": str(queue), "data_folder_out": str(queue),
               "control_folder": str(tmp_path / "control"), "store_processed": True,
               "processed_folder": str(tmp_path / "processed")}
    (tmp_path / "processed").mkdir()
    with Connection("filesystem://localhost/", transport=Transport,
                    transport_options=options) as conn:
        yield conn.default_channel


def test_put_publishes_by_rename_and_get_reads_it_back(channel: Any, tmp_path: Path) -> None:
    channel._put("jobs", {"body": "hello"})
    names = os.listdir(tmp_path / "queue")
    assert len(names) == 1 and names[0].endswith(".jobs.msg")
    assert channel._get("jobs") == {"body": "hello"}
    with pytest.raises(filesystem.Empty):
        channel._get("jobs")


def test_get_waits_for_a_writer_that_has_not_written_yet(channel: Any, tmp_path: Path) -> None:
    # What stock kombu does: create the file, then write it. A reader in between used to
    # read b"" and kill the consumer with a JSONDecodeError.
    path = tmp_path / "queue" / "1_abc.jobs.msg"
    handle = path.open("wb", buffering=0)

    def finish_writing() -> None:
        time.sleep(0.05)
        handle.write(json.dumps({"body": "late"}).encode())
        handle.close()

    writer = threading.Thread(target=finish_writing)
    writer.start()
    try:
        assert channel._get("jobs") == {"body": "late"}
    finally:
        writer.join()


def test_a_file_that_never_becomes_json_is_dropped_and_the_next_one_read(
        channel: Any, tmp_path: Path) -> None:
    (tmp_path / "queue" / "0_bad.jobs.msg").write_bytes(b"{not json")
    channel._put("jobs", {"body": "good"})
    assert channel._get("jobs") == {"body": "good"}


def test_temporary_files_are_invisible_to_readers(channel: Any, tmp_path: Path) -> None:
    (tmp_path / "queue" / ".tmp-123").write_bytes(b"")
    with pytest.raises(filesystem.Empty):
        channel._get("jobs")
