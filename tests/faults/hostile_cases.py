"""The hostile inputs of test_hostile_inputs: each one sent by a plain Celery client that
knows only task names, with what a clear answer must mention and which rows it may log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.support import models

GOOD = models.rows(3, seed=5)
G = GOOD[0]
ROW_CAP = 20
HUGE_TEXT = "x" * (10 * 1024 * 1024)


def _with(**changes: object) -> dict[str, object]:
    return {**G, **changes}


def _without(name: str) -> dict[str, object]:
    return {k: v for k, v in G.items() if k != name}


@dataclass(frozen=True)
class Case:
    """`kwargs` go to `task`; `mentions` must all appear in the error; `logged` are the
    request_ids that must get a row (valid items), nothing else may."""

    name: str
    task: str = "predq.predict"
    kwargs: dict[str, Any] = field(default_factory=dict)
    args: tuple[Any, ...] = ()
    mentions: tuple[str, ...] = ()
    logged: tuple[str, ...] = ()
    item_errors: tuple[int, ...] = ()  # batch positions that must carry an error
    raw: str | None = None  # "pickle" | "not-json" | "unknown-task": published by hand
    bug: str | None = None  # a known product bug: the case is expected to fail (xfail)


def _single(name: str, features: object, *mentions: str, bug: str | None = None,
            **extra: Any) -> Case:
    rid = f"h-{name}"
    return Case(name, kwargs={"features": features, "request_id": rid, **extra},
                mentions=mentions, bug=bug)


def _valid(name: str, features: dict[str, object]) -> Case:
    rid = f"h-{name}"
    return Case(name, kwargs={"features": features, "request_id": rid}, logged=(rid,))


def _batch(name: str, rows: object, ids: object, *mentions: str, logged: tuple[str, ...] = (),
           item_errors: tuple[int, ...] = (), bug: str | None = None, **extra: Any) -> Case:
    return Case(name, "predq.predict_batch", {"rows": rows, "request_ids": ids, **extra},
                mentions=mentions, logged=logged, item_errors=item_errors, bug=bug)


CASES: list[Case] = [
    _single("missing-feature", _without("mileage"), "features.mileage", "missing"),
    _single("extra-feature", _with(colour="red"), "colour", "unexpected"),
    _single("string-for-number", _with(year="2020"), "features.year", "number"),
    _single("nan", _with(engine_size=float("nan")), "features.engine_size", "finite"),
    _single("plus-inf", _with(mileage=float("inf")), "features.mileage", "finite"),
    _single("minus-inf", _with(mileage=float("-inf")), "features.mileage", "finite"),
    _single("nested-object", _with(brand={"$gt": ""}), "features.brand", "object"),
    _single("nested-list", _with(condition=["Good"]), "features.condition", "array"),
    _single("null-value", _with(condition=None), "features.condition", "null"),
    _single("bool-for-number", _with(year=True), "features.year", "boolean"),
    _single("huge-float", _with(mileage=1e308), "features.mileage", "out of range"),
    _single("huge-json-int", _with(year=10**400), "features.year", "out of range"),
    _single("ten-mb-value", _with(brand=HUGE_TEXT), "features.brand", "exceeds"),
    _single("features-a-list", [1, 2, 3], "features", "array"),
    _single("features-missing", None, "features", "null"),
    _single("unknown-model", G, "model", "nope-model", model="nope-model"),
    _single("model-name-injection", G, "model", model="default'; DROP TABLE x;--"),
    _single("unknown-version", G, "version", "nope", version="nope"),
    _single("unexpected-kwarg", G, "unexpected", "colour", colour="red"),
    Case("malformed-request-id", kwargs={"features": G, "request_id": "bad id <script>"},
         mentions=("request_id", "not allowed")),
    Case("request-id-a-number", kwargs={"features": G, "request_id": 12345},
         mentions=("request_id", "string")),
    _valid("unicode-category", _with(brand="Škoda")),
    _valid("unseen-unicode-category", _with(brand="東京🚗", transmission="Ручная")),
    _single("nul-character", _with(brand="Ford\u0000"), "features.brand"),
    _single("lone-surrogate", _with(brand="Ford\ud800"), "features.brand", "surrogate"),
    _batch("nul-character-in-batch", [G, _with(brand="Ford\u0000"), GOOD[1]],
           ["h-nulb-0", "h-nulb-1", "h-nulb-2"], "rows[1].features.brand",
           logged=("h-nulb-0", "h-nulb-2"), item_errors=(1,)),
    _valid("negative-number", _with(mileage=-5000.0)),
    _batch("empty-batch", [], [], "rows", "empty"),
    _batch("batch-over-cap", [G] * (ROW_CAP + 1), [f"h-cap-{i}" for i in range(ROW_CAP + 1)],
           "rows", "cap", str(ROW_CAP)),
    _batch("rows-not-a-list", {"0": G}, None, "rows", "list"),
    _batch("request-ids-length-mismatch", [G, G], ["h-len-0"], "request_ids"),
    _batch("batch-unknown-version", [G], ["h-bver-0"], "version", version="nope"),
    _batch("duplicate-ids-in-batch", GOOD, ["h-dup-a", "h-dup-b", "h-dup-a"],
           "request_ids[2]", "duplicate", logged=("h-dup-a", "h-dup-b"), item_errors=(2,)),
    _batch("mixed-batch", [G, _with(year="x"), _without("brand"), GOOD[1],
                           _with(engine_size=float("nan")), _with(brand=None)],
           [f"h-mix-{i}" for i in range(6)], "rows[1].features.year",
           "rows[2].features.brand", "rows[4].features.engine_size", "rows[5].features.brand",
           logged=("h-mix-0", "h-mix-3"), item_errors=(1, 2, 4, 5)),
    _batch("null-request-id-in-batch", [G, GOOD[1]], ["h-nid-0", None], "request_ids[1]",
           "null", logged=("h-nid-0",), item_errors=(1,)),
    _batch("batch-unexpected-kwarg", [G], ["h-bkw-0"], "unexpected", "priority",
           priority="high"),
    Case("pickle-message", raw="pickle", mentions=("pickle",)),
    Case("non-json-message", raw="not-json", mentions=("decode",)),
    Case("unknown-task-name", raw="unknown-task", mentions=("unregistered",)),
]
