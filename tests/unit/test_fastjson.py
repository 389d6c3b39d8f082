"""The worker's JSON decoder returns exactly what kombu's returns."""

from __future__ import annotations

import datetime
import uuid

import pytest
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from workers.fastjson import loads


@pytest.mark.parametrize("value", [
    [[], {"rows": [{"year": 2020, "brand": "Škoda", "mileage": 1.5}]}, {"callbacks": None}],
    {"features": {"x": float("nan")}},
    {"features": {"x": float("inf"), "y": -float("inf")}},
    {"big": 10**400},
    {"when": datetime.datetime(2026, 1, 5, 14, 30, 22), "id": uuid.UUID(int=7)},
    "plain string",
    [],
])
def test_same_result_as_kombu(value: object) -> None:
    text = kombu_dumps(value)
    got, want = loads(text), kombu_loads(text)
    assert repr(got) == repr(want)
    assert repr(loads(text.encode())) == repr(want)


def test_malformed_json_still_raises() -> None:
    with pytest.raises(ValueError):
        loads(b"{not json at all\xff")
