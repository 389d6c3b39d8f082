"""workers.parking: the Redis transport's envelope checks (what kombu would have raised
in the consumer's event loop) and the parked entry's format."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from kombu.transport.virtual import Channel

from modelstore.errors import EnvelopeRejected
from workers import parking

BODY = b'[[], {"features": {"x": 1}}, {}]'


def _envelope(**changes: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "body": base64.b64encode(BODY).decode(), "content-type": "application/json",
        "content-encoding": "utf-8", "headers": {"task": "predq.predict", "id": "t1"},
        "properties": {"delivery_tag": "d1", "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": "predq"}}}
    env.update(changes)
    return env


class _Channel:
    """What kombu's Message asks of its channel while it is built."""

    codecs = Channel.codecs

    def decode_body(self, body: str, encoding: str | None = None) -> Any:
        return Channel.decode_body(self, body, encoding)  # type: ignore[arg-type]


def test_a_good_envelope_decodes_and_builds() -> None:
    payload, refused = parking.decode_envelope(json.dumps(_envelope()))
    assert refused is None
    message = parking.GuardedMessage(payload, channel=_Channel())
    assert message.body == BODY and message.headers["id"] == "t1"


@pytest.mark.parametrize("text", [
    json.dumps(_envelope())[:40],
    '{"headers": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}",
    "\udcff not json",
])
def test_undecodable_envelopes_are_refused(text: str) -> None:
    payload, refused = parking.decode_envelope(text)
    assert payload is None and refused is not None
    assert refused.startswith("undecodable envelope: ")


@pytest.mark.parametrize("payload", [
    [], {"body": "x"}, _envelope(body="!!!not base64"), _envelope(headers=[1]),
    _envelope(properties={"delivery_tag": "d1"}),
    _envelope(properties={"body_encoding": "base64"}),
])
def test_envelopes_kombu_cannot_build_are_refused(payload: Any) -> None:
    with pytest.raises(EnvelopeRejected, match="malformed envelope"):
        parking.GuardedMessage(payload, channel=_Channel())


def test_entry_format() -> None:
    entry = json.loads(parking.entry("why", "predq", "predq.predict", "t1", "{}"))
    assert set(entry) == {"reason", "parked_at", "queue", "task", "task_id", "message"}
    assert entry["message"] == "{}" and isinstance(entry["parked_at"], float)
