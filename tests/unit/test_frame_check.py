"""Feature tables checked before sending: header problems at once, cells one by one."""

from __future__ import annotations

import pandas as pd
import pytest

from modelstore.errors import InvalidInput
from producer import frame_check as fc

TYPES = {"year": fc.NUMBER, "bp": fc.NUMBER, "brand": fc.STRING}


def test_one_bad_cell_fails_only_its_row() -> None:
    frame = pd.DataFrame({"year": ["2020", "2021", "2022"], "bp": ["0.1", "high", "0.3"],
                          "brand": ["Kia", "Kia", None]})
    checked = fc.check_cells(frame, TYPES, fc.csv_row)
    assert checked.positions == [0]
    assert checked.rows == [{"year": 2020, "bp": 0.1, "brand": "Kia"}]
    assert checked.errors == {1: "row 2 (line 3): bp: expected a number, got 'high'",
                              2: "row 3 (line 4): brand: empty cell"}


def test_every_header_problem_in_one_message() -> None:
    with pytest.raises(InvalidInput) as caught:
        fc.check_header(["year", "brand", "price"], TYPES, where="--input x.csv",
                        expects="model 'default' version 'v1'", missing_id="nosuch")
    assert str(caught.value) == (
        "--input x.csv: no column 'nosuch' for --id-column; missing column(s) bp; "
        "unexpected column(s) price (leave them out with --exclude price); "
        "model 'default' version 'v1' expects year, bp, brand; nothing was sent")


def test_without_a_schema_a_mostly_numeric_column_is_numeric() -> None:
    frame = pd.DataFrame({"bp": ["0.1", "0.2", "high"], "brand": ["a", "b", "3"]})
    assert fc.infer_types(frame) == {"bp": fc.NUMBER, "brand": fc.STRING}


def test_worker_errors_are_renumbered_to_table_rows() -> None:
    assert fc.renumber("rows[50].features.mileage: out of range", 1050, fc.csv_row) == \
        "row 1051 (line 1052): features.mileage: out of range"


def test_a_dataframe_is_checked_against_a_recorded_schema() -> None:
    schema = {"columns": [{"name": "year", "dtype": "number"},
                          {"name": "brand", "dtype": "string"}]}
    frame = pd.DataFrame({"year": [2020, "soon"], "brand": ["Kia", 3]})
    checked = fc.check_frame(frame, schema)
    assert checked.rows == [{"year": 2020, "brand": "Kia"}]
    assert checked.errors == {1: "row 2: year: expected a number, got 'soon'"}
    with pytest.raises(InvalidInput, match="missing column"):
        fc.check_frame(frame[["year"]], schema)
