"""Invariant 5 at the row level: each bad item gets one clear message naming the field."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelstore.artifacts import describe_features
from producer.sample import FEATURES, make_cars, train_pipeline
from workers.validation import (
    FeatureSpec,
    Limits,
    check_request_id,
    to_frame,
    validate_features,
    validate_rows,
)

CARS_SCHEMA: dict[str, Any] = {
    "columns": [
        {"name": "year", "dtype": "number"},
        {"name": "mileage", "dtype": "number"},
        {"name": "brand", "dtype": "string"},
        {"name": "condition", "dtype": "string"},
        {"name": "engine_size", "dtype": "number"},
        {"name": "transmission", "dtype": "string"},
    ],
    "source": "feature_names_in_",
}
SPEC = FeatureSpec.from_schema(CARS_SCHEMA)
EXPECTED = "year, mileage, brand, condition, engine_size, transmission"


def car(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {"year": 2018, "mileage": 42_000.0, "brand": "Toyota",
                              "condition": "Good", "engine_size": 1.6,
                              "transmission": "Manual"}
    row.update(changes)
    return row


def without(name: str, row: dict[str, object] | None = None) -> dict[str, object]:
    row = dict(row or car())
    del row[name]
    return row


@pytest.mark.parametrize(("features", "message"), [
    ([1, 2], "features: expected an object mapping feature names to values, got array"),
    (None, "features: expected an object mapping feature names to values, got null"),
    ("year=2018", "features: expected an object mapping feature names to values, "
                  "got string 'year=2018'"),
    (without("mileage"), "features.mileage: missing"),
    ({}, f"features: missing 6 features: {EXPECTED}"),
    (car(colour="red"), f"features.colour: unexpected feature (expected one of {EXPECTED})"),
    (car(year="2020"), "features.year: expected a number, got string '2020'"),
    (car(year=True), "features.year: expected a number, got boolean true"),
    (car(year=None), "features.year: must not be null"),
    (car(year=[2018]), "features.year: expected a number, got array"),
    (car(mileage=math.nan), "features.mileage: must be a finite number, got nan"),
    (car(mileage=math.inf), "features.mileage: must be a finite number, got inf"),
    (car(mileage=-math.inf), "features.mileage: must be a finite number, got -inf"),
    (car(mileage=1e16), "features.mileage: out of range: magnitude must be at most 1e+15, "
                        "got 1e+16"),
    (car(mileage=-(10**16)), "features.mileage: out of range: magnitude must be at most "
                             "1e+15, got -10000000000000000"),
    (car(brand=None), "features.brand: must not be null"),
    (car(brand={"name": "Toyota"}), "features.brand: expected a string, got object"),
    (car(brand=["Toyota"]), "features.brand: expected a string, got array"),
    (car(brand=7), "features.brand: expected a string, got number 7"),
    (car(brand=False), "features.brand: expected a string, got boolean false"),
])
def test_each_problem_gets_a_message_naming_the_field(features: object, message: str) -> None:
    assert validate_features(features, SPEC) == (None, message)


def test_a_valid_row_passes_with_its_values() -> None:
    row = car(brand="Škoda 🚗", year=2001)
    clean, error = validate_features(row, SPEC)
    assert error is None
    assert clean == row


def test_the_first_problem_wins_in_a_fixed_order() -> None:
    missing_and_extra = car(colour="red")
    del missing_and_extra["year"]
    assert validate_features(missing_and_extra, SPEC)[1] == "features.year: missing"
    extra_and_bad_type = car(colour="red", mileage="far")
    assert validate_features(extra_and_bad_type, SPEC)[1] == (
        f"features.colour: unexpected feature (expected one of {EXPECTED})")
    two_bad_values = car(transmission=None, year="old")
    assert validate_features(two_bad_values, SPEC)[1] == (
        "features.year: expected a number, got string 'old'")


def test_huge_integers_are_rejected_without_crashing() -> None:
    clean, error = validate_features(car(year=10**400), SPEC)
    assert clean is None
    assert error == ("features.year: out of range: magnitude must be at most 1e+15, "
                     "got an integer of about 401 digits")


def test_long_values_are_never_echoed_whole() -> None:
    huge = "x" * 100_000
    error = validate_features(car(brand=huge), SPEC)[1]
    assert error == "features.brand: string of 100000 characters exceeds the limit of 1024"
    error = validate_features(car(year=huge), SPEC)[1]
    assert error is not None and error.startswith("features.year: expected a number, got string")
    assert len(error) < 120
    error = validate_features(car(**{huge: 1}), SPEC)[1]
    assert error is not None and error.startswith("features['xxx") and len(error) < 200


def test_limits_are_configurable() -> None:
    limits = Limits(max_string_chars=6, max_abs_number=1e6)
    assert validate_features(car(brand="Toyota"), SPEC, limits) == (car(brand="Toyota"), None)
    assert validate_features(car(brand="Toyota!"), SPEC, limits)[1] == (
        "features.brand: string of 7 characters exceeds the limit of 6")
    assert validate_features(car(year=1_000_001), SPEC, limits)[1] == (
        "features.year: out of range: magnitude must be at most 1e+06, got 1000001")
    with pytest.raises(ValueError, match="max_abs_number"):
        Limits(max_abs_number=math.inf)


def test_numpy_numbers_are_accepted_as_plain_python_numbers() -> None:
    clean, error = validate_features(car(year=np.int64(2018), mileage=np.float32(5.5)), SPEC)
    assert error is None and clean is not None
    assert type(clean["year"]) is int and type(clean["mileage"]) is float
    assert validate_features(car(year=np.bool_(True)), SPEC)[1] == (
        "features.year: expected a number, got boolean true")


def test_the_field_name_is_configurable() -> None:
    assert validate_features(without("year"), SPEC, field="rows[3]")[1] == "rows[3].year: missing"


def test_without_a_schema_any_flat_object_of_numbers_and_strings_passes() -> None:
    row = {"a": 1, "b": 2.5, "c": "x"}
    assert validate_features(row, None) == (row, None)
    assert validate_features({}, None)[1] == (
        "features: must name at least one feature, got an empty object")
    assert validate_features({"a": None}, None)[1] == "features.a: must not be null"
    assert validate_features({"a": {"b": 1}}, None)[1] == (
        "features.a: expected a number or string, got object")
    assert validate_features({"a": math.nan}, None)[1] == (
        "features.a: must be a finite number, got nan")
    assert validate_features({"a": "x" * 2000}, None)[1] == (
        "features.a: string of 2000 characters exceeds the limit of 1024")


def test_a_batch_keeps_its_good_rows_and_reports_the_bad_ones_by_index() -> None:
    rows: list[object] = [car(), car(year="2020"), "not a row", car(mileage=1.0),
                          without("brand")]
    ok, clean, errors = validate_rows(rows, SPEC)
    assert ok == [0, 3]
    assert clean == [rows[0], rows[3]]
    assert errors == {
        1: "rows[1].features.year: expected a number, got string '2020'",
        2: "rows[2].features: expected an object mapping feature names to values, "
           "got string 'not a row'",
        4: "rows[4].features.brand: missing",
    }


def test_without_a_schema_the_first_valid_row_fixes_the_batch_columns() -> None:
    rows: list[object] = [None, {"a": 1, "b": "x"}, {"a": "y", "b": "x"}, {"a": 2},
                          {"b": "z", "a": 2.5}]
    ok, clean, errors = validate_rows(rows, None)
    assert ok == [1, 4]
    assert set(errors) == {0, 2, 3}
    assert errors[2] == "rows[2].features.a: expected a number, got string 'y'"
    assert errors[3] == "rows[3].features.b: missing"
    frame = to_frame(clean, None)
    assert list(frame.columns) == ["a", "b"]
    assert frame["a"].tolist() == [1.0, 2.5]


def test_random_garbage_never_raises_and_every_bad_row_gets_one_message() -> None:
    rng = random.Random(5)
    junk: list[object] = [None, True, "7", "", math.nan, -math.inf, 10**30, [], {}, {"x": 1},
                          "x" * 3000, 3, 2.5, "Ford", np.float64(1.0), object()]
    rows: list[object] = []
    for _ in range(300):
        row = car()
        for _ in range(rng.randint(0, 2)):
            choice = rng.random()
            name = rng.choice(FEATURES)
            if choice < 0.2:
                row.pop(name, None)
            elif choice < 0.3:
                row[f"extra{rng.randint(0, 9)}"] = 1
            else:
                row[name] = rng.choice(junk)
        rows.append(row if rng.random() > 0.05 else rng.choice(junk))
    ok, clean, errors = validate_rows(rows, SPEC)
    assert sorted(ok + list(errors)) == list(range(len(rows)))
    for i, message in errors.items():
        assert message.startswith(f"rows[{i}].features"), message
        assert len(message) < 250, message
    frame = to_frame(clean, SPEC)
    assert len(frame) == len(ok)
    assert np.isfinite(frame[["year", "mileage", "engine_size"]].to_numpy()).all()


@pytest.mark.parametrize(("value", "message"), [
    ("550e8400-e29b-41d4-a716-446655440000", None),
    ("order:17/line+2=a.b_c@x-y", None),
    (None, "request_id: must not be null"),
    ("", "request_id: must not be empty"),
    (17, "request_id: expected a string, got number 17"),
    ("r" * 129, "request_id: 129 characters exceeds the limit of 128"),
    ("a b", "request_id: character ' ' is not allowed (use letters, digits and "
            ". _ : @ / + = -), got 'a b'"),
    ("id\n", "request_id: character '\\n' is not allowed (use letters, digits and "
             ". _ : @ / + = -), got 'id\\n'"),
])
def test_request_ids(value: object, message: str | None) -> None:
    assert check_request_id(value) == message


def test_request_id_messages_name_the_given_field() -> None:
    assert check_request_id("", "request_ids[4]") == "request_ids[4]: must not be empty"


def test_frame_columns_follow_the_schema_with_model_dtypes() -> None:
    shuffled = {k: car()[k] for k in reversed(FEATURES)}
    frame = to_frame([shuffled, car(year=2020)], SPEC)
    assert list(frame.columns) == list(FEATURES)
    assert frame["year"].dtype == np.float64 and frame["year"].tolist() == [2018.0, 2020.0]
    assert frame["brand"].dtype == object
    assert frame["brand"].tolist() == ["Toyota", "Toyota"]
    empty = to_frame([], SPEC)
    assert list(empty.columns) == list(FEATURES) and len(empty) == 0
    assert empty["mileage"].dtype == np.float64 and empty["brand"].dtype == object


def test_schema_parsing() -> None:
    assert FeatureSpec.from_schema(None) is None
    assert SPEC is not None
    assert SPEC.columns == tuple(FEATURES)
    assert SPEC.dtypes == ("number", "number", "string", "string", "number", "string")
    with pytest.raises(ValueError, match=r"columns\[1\]\.name"):
        FeatureSpec.from_schema({"columns": [{"name": "a", "dtype": "number"}, {"dtype": "x"}]})
    with pytest.raises(ValueError, match=r"dtypes\['a'\]: unknown dtype 'date'"):
        FeatureSpec.from_schema({"columns": [{"name": "a", "dtype": "date"}]})
    with pytest.raises(ValueError, match="duplicate"):
        FeatureSpec(("a", "a"), ("number", "number"))


def test_a_real_models_schema_validates_and_frames_rows_it_can_predict() -> None:
    cars = make_cars(80, seed=3)
    model = train_pipeline(cars, n_estimators=3, max_depth=4)
    spec = FeatureSpec.from_schema(describe_features(model))
    assert spec is not None and spec.columns == tuple(FEATURES)
    rows = [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
            for r in cars[list(FEATURES)].head(5).to_dict("records")]
    ok, clean, errors = validate_rows(rows, spec)
    assert errors == {} and ok == [0, 1, 2, 3, 4]
    frame = to_frame(clean, spec)
    expected = model.predict(cars[list(FEATURES)].head(5))
    assert np.allclose(model.predict(frame), expected)
    assert isinstance(frame, pd.DataFrame)


def test_nul_character_is_refused_for_that_row_only() -> None:
    spec = FeatureSpec(("brand", "year"), ("string", "number"))
    rows = [{"brand": "Toy\x00ota", "year": 2020}, {"brand": "Toyota", "year": 2020}]
    ok, clean, errors = validate_rows(rows, spec)
    assert ok == [1] and clean == [rows[1]]
    assert errors == {0: "rows[0].features.brand: contains a NUL character (U+0000), "
                         "which cannot be stored"}
    _, error = validate_features({"a\x00b": 1.0}, None)
    assert error is not None and "NUL" in error


def test_every_missing_feature_of_a_row_is_named() -> None:
    row = {"year": 2015}
    missing = [c for c in SPEC.columns if c != "year"]
    error = validate_features(row, SPEC)[1]
    assert error == f"features: missing {len(missing)} features: {', '.join(missing)}"
