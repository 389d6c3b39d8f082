"""The worker's JSON decoder returns exactly what kombu's returns."""

from __future__ import annotations

import datetime
import decimal
import enum
import uuid

import pytest
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from workers.fastjson import dumps, loads


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


class _Kind(enum.Enum):
    A = "a"


class _Text(str):
    pass


@pytest.mark.parametrize("value", [
    {"model_version": "v1", "results": [{"request_id": f"r{i}", "prediction": 1.5 * i,
                                         "confidence": None} for i in range(50)]},
    {"when": datetime.datetime(2026, 1, 5, 14, 30, 22), "id": uuid.UUID(int=7)},
    {"x": float("nan")}, {"x": [1.0, float("-inf")]},
    {"big": 10**40}, {1: "int key"}, {"k": _Kind.A}, {"s": _Text("sub")},
    {"d": decimal.Decimal("1.10")}, ("a", 1, None, True, -0.0, 1e300),
    {"deep": [[[[{"a": 'Škoda "q"\n\\ \u2028'}]]]]},
])
def test_encoding_decodes_to_what_kombu_encoding_decodes_to(value: object) -> None:
    try:
        theirs = kombu_dumps(value)
    except TypeError:
        with pytest.raises(TypeError):
            dumps(value)
        return
    ours = dumps(value)
    assert isinstance(ours, str)
    assert repr(kombu_loads(ours)) == repr(kombu_loads(theirs))


def test_a_cycle_still_fails_like_kombu() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError):
        dumps(loop)
