"""The worker's JSON decoder returns exactly what kombu's returns."""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import random
import uuid

import pytest
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from modelstore.errors import PayloadRejected
from workers.fastjson import ShapeLimits, check_shape, dumps, loads, measure


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


# --- the bound (issue 19) ---------------------------------------------------------------

def _deep_body(depth: int, extra: str = "") -> str:
    value = "[" * depth + "]" * depth
    return f'[[], {{"features": {{"mileage": {value}{extra}}}, "request_id": "r"}}, {{}}]'


@pytest.mark.parametrize("depth", [900, 100_000])
def test_deep_values_are_refused_with_the_field_named(depth: int) -> None:
    with pytest.raises(PayloadRejected) as caught:
        loads(_deep_body(depth))
    assert caught.value.path[:4] == (1, "features", "mileage", 0)
    assert "nested more than 32 levels deep" in str(caught.value)


def test_the_kombu_fallback_is_bounded_too() -> None:
    # NaN sends the body to kombu's decoder, which would raise RecursionError (or accept
    # 900 levels): the bound applies first.
    for depth in (40, 100_000):
        text = _deep_body(depth).replace('"r"', "NaN")
        with pytest.raises(PayloadRejected):
            loads(text)
    with pytest.raises(PayloadRejected):
        loads('{"__type__": "x", "v": ' + "[" * 50 + "]" * 50 + "}")


def test_depth_at_the_bound_is_accepted() -> None:
    limits = ShapeLimits(max_depth=32)
    check_shape(("[" * 32 + "]" * 32).encode(), limits)
    with pytest.raises(PayloadRejected):
        check_shape(("[" * 33 + "]" * 33).encode(), limits)


def test_brackets_and_escapes_inside_strings_do_not_count() -> None:
    inner = '"[[[[{{{{\\\\\\"]]]]\\\\"'  # brackets, an escaped quote and escaped backslashes
    text = "[" + ", ".join([inner] * 100) + ', ["a\\"[", {"k]": "}"}]]'
    assert measure(text.encode())[0] == 3
    assert loads(text)[-1] == ["a\"[", {"k]": "}"}]


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _items(value: object) -> int:
    if isinstance(value, dict):
        return len(value) + sum(map(_items, value.values()))
    if isinstance(value, list):
        return len(value) + sum(map(_items, value))
    return 0


def test_measured_depth_matches_the_decoded_value() -> None:
    rng = random.Random(19)
    pieces = ["[", "{", "\\", '"', "]", "}", ",", ":", "x", "é", "\x00"]

    def value(level: int) -> object:
        kind = rng.random()
        if level > 12 or kind < 0.3:
            return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        if kind < 0.65:
            return [value(level + 1) for _ in range(rng.randint(0, 3))]
        return {"".join(rng.choice(pieces) for _ in range(3)): value(level + 1)
                for _ in range(rng.randint(0, 3))}

    for _ in range(300):
        doc = value(0)
        text = json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode()
        depth, items = measure(text)
        assert depth == _depth(doc), text
        assert items >= _items(doc), text  # an upper bound of items plus entries


def test_too_many_items_are_refused() -> None:
    check_shape(b"[" + b"1," * 99 + b"1]", ShapeLimits(max_items=101))
    with pytest.raises(PayloadRejected, match="PREDQ_MAX_JSON_ITEMS"):
        check_shape(b"[" + b"1," * 199 + b"1]", ShapeLimits(max_items=101))
