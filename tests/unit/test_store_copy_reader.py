"""blobs.CopyChunkReader parses COPY BINARY rows of (int4 k, bytea chunk) however the
stream is split into writes, hashing as it goes."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest

from modelstore.blobs import CopyChunkReader
from modelstore.errors import StoreError

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
TRAILER = struct.pack("!h", -1)


def _row(k: int, chunk: bytes | None) -> bytes:
    field = struct.pack("!i", -1) if chunk is None else struct.pack("!i", len(chunk)) + chunk
    return struct.pack("!hii", 2, 4, k) + field


def _stream(chunks: list[tuple[int, bytes | None]], header: bytes = HEADER) -> bytes:
    return header + b"".join(_row(k, c) for k, c in chunks) + TRAILER


def _feed(payload: bytes, step: int) -> CopyChunkReader:
    reader = CopyChunkReader(7)
    for start in range(0, len(payload), step):
        assert reader.write(payload[start:start + step]) == len(payload[start:start + step])
    return reader


BLOB = os.urandom(1000)
PIECES = [(k, BLOB[k * 300:(k + 1) * 300]) for k in range(4)]  # 300, 300, 300, 100 bytes


@pytest.mark.parametrize("step", [1, 2, 5, 13, 299, 301, 10_000])
def test_any_split_of_the_stream_gives_the_blob_and_its_digest(step: int) -> None:
    data, digest = _feed(_stream(PIECES), step).result()
    assert data == BLOB
    assert digest == hashlib.sha256(BLOB).hexdigest()


def test_rows_out_of_order_are_put_back_in_order() -> None:
    shuffled = [PIECES[0], PIECES[2], PIECES[1], PIECES[3]]
    data, digest = _feed(_stream(shuffled), 64).result()
    assert data == BLOB and digest == hashlib.sha256(BLOB).hexdigest()


def test_empty_chunks_and_a_header_extension() -> None:
    header = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 3) + b"ext"
    data, _ = _feed(_stream([(0, b""), (1, b"abc")], header), 4).result()
    assert data == b"abc"


@pytest.mark.parametrize(("payload", "problem"), [
    (b"NOTCOPY\n\xff\r\n\x00" + bytes(8) + TRAILER, "unexpected COPY BINARY header"),
    (_stream([(0, None)]), "model_binary is NULL"),
    (HEADER + struct.pack("!h", 3), "row of 3 fields"),
    (HEADER + struct.pack("!hii", 2, 8, 0), "chunk index of 8 bytes"),
    (_stream(PIECES) + b"x", "data after the COPY trailer"),
])
def test_malformed_streams_are_errors_naming_the_artifact(payload: bytes, problem: str) -> None:
    with pytest.raises(StoreError, match=f"artifact id 7: {problem}"):
        _feed(payload, 5)


def test_a_truncated_stream_is_an_error() -> None:
    reader = _feed(_stream(PIECES)[:-2], 50)
    with pytest.raises(StoreError, match="stream ended before the COPY trailer"):
        reader.result()
