"""Generated hostile task messages for bench/fuzz_wire.py: a structured generator (seeded,
so a run is reproducible) of bodies and headers that a client bypassing Celery can send.

Families: deep and wide structures; every JSON type in every field; odd strings (lone
surrogates, NUL, 1 MB); huge, tiny and malformed numbers; wrong-typed and extra kwargs,
positional args; missing, extra and wrong-typed headers; bodies that are not JSON or not a
task body; and whole envelopes written straight into the Redis queue (past kombu's
client-side encoder): truncated JSON, deep headers, bad base64.
"""

from __future__ import annotations

import base64
import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from modelstore.defaults import DEFAULT_QUEUE

TASKS = ("predq.predict", "predq.predict_batch", "predq.backfill_actuals",
         "predq.store_model", "predq.ping")
GOOD_FEATURES = {"year": 2018, "mileage": 42_000.0, "brand": "Ford", "condition": "Good",
                 "engine_size": 1.6, "transmission": "Manual"}
ONE_MB = 1024 * 1024


@dataclass
class Case:
    """One message. `raw_envelope` set: LPUSHed as is; else published through kombu."""

    family: str
    task: str
    task_id: str | None
    body: bytes = b""
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    raw_envelope: bytes | None = None

    def describe(self) -> dict[str, Any]:
        body = self.raw_envelope if self.raw_envelope is not None else self.body
        return {"family": self.family, "task": self.task, "task_id": self.task_id,
                "content_type": self.content_type, "bytes": len(body),
                "head": body[:160].decode("utf-8", "replace"),
                "headers": json.dumps(self.headers, default=repr)[:1000]}


class Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    # --- JSON values (as text, so anything a client could type is possible) ------------

    def deep(self) -> str:
        depth = self.rng.choice([33, 100, 900, 1025, 5000, 100_000])
        opener, closer = self.rng.choice([("[", "]"), ('{"a":', "}")])
        return opener * depth + "1" + closer * depth

    def wide(self) -> str:
        n = self.rng.choice([1_000, 50_000, 300_000])
        if self.rng.random() < 0.5:
            return "[" + ",".join("0" for _ in range(n)) + "]"
        return "{" + ",".join(f'"k{i}":{i}' for i in range(n)) + "}"

    def odd_string(self) -> str:
        return self.rng.choice([
            '"\\ud800"', '"\\udfff\\ud800"', '"a\\u0000b"', '"\\u0000"', '""',
            json.dumps("x" * ONE_MB), json.dumps("é" * 5000), '"\\"\\\\[{"',
            json.dumps("\U0001f697" * 100), '"\\uDBFF\\uDFFF"', json.dumps(" " * 2000)])

    def number(self) -> str:
        return self.rng.choice([
            "1e308", "-1e308", "1e309", "5e-324", "1e-400", "-0", "0.0", "NaN", "Infinity",
            "-Infinity", "1" + "0" * 400, "9" * 5000, "-9223372036854775809",
            "18446744073709551616", "1.7976931348623157e308", "123456789012345678901234.5"])

    def scalar(self) -> str:
        return self.rng.choice(["null", "true", "false", "0", "1.5", '"text"', "[]", "{}",
                                self.odd_string(), self.number()])

    def value(self) -> str:
        roll = self.rng.random()
        if roll < 0.15:
            return self.deep()
        if roll < 0.22:
            return self.wide()
        if roll < 0.45:
            return self.odd_string()
        if roll < 0.7:
            return self.number()
        return self.scalar()

    def features(self) -> str:
        feats = {k: json.dumps(v) for k, v in GOOD_FEATURES.items()}
        for _ in range(self.rng.randint(1, 3)):
            if self.rng.random() < 0.8:
                feats[self.rng.choice(list(feats))] = self.value()
            else:
                feats[self.rng.choice(["extra", "", "\\u0000", "a" * 300])] = self.value()
        if self.rng.random() < 0.1:
            feats.pop(self.rng.choice(list(feats)), None)
        return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in feats.items()) + "}"

    def kwargs(self, task: str) -> str:
        parts: dict[str, str] = {}
        if task == "predq.predict":
            parts["features"] = self.features() if self.rng.random() < 0.8 else self.value()
            parts["request_id"] = self.rng.choice(
                [json.dumps(f"fz-{uuid.uuid4().hex[:8]}"), self.value(), '"' + "r" * 5000 + '"'])
        elif task == "predq.predict_batch":
            n = self.rng.choice([0, 1, 3, 50])
            rows = [self.features() if self.rng.random() < 0.5 else json.dumps(GOOD_FEATURES)
                    for _ in range(n)]
            parts["rows"] = "[" + ",".join(rows) + "]" if self.rng.random() < 0.85 \
                else self.value()
            if self.rng.random() < 0.5:
                parts["request_ids"] = self.value()
        elif task == "predq.backfill_actuals":
            parts["actuals"] = self.rng.choice(
                [self.value(), '[{"request_id": ' + self.value() + ', "actual_value": '
                 + self.value() + "}]"])
        elif task == "predq.store_model":
            parts[self.rng.choice(["artifact_b64", "artifact_path"])] = self.value()
            parts["metrics"] = self.value()
        for _ in range(self.rng.choice([0, 0, 0, 1, 2])):
            key = self.rng.choice(["model", "version", "colour", "features", "x" * 200])
            parts[key] = self.value()
        if self.rng.random() < 0.05:
            return self.value()  # kwargs not an object
        return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in parts.items()) + "}"

    def body(self, task: str) -> bytes:
        roll = self.rng.random()
        embed = '{"callbacks": null, "errbacks": null, "chain": null, "chord": null}'
        if roll < 0.75:
            args = "[]" if self.rng.random() < 0.85 else "[" + self.value() + "]"
            return f"[{args}, {self.kwargs(task)}, {embed}]".encode()
        if roll < 0.85:
            return self.value().encode()  # not a task body at all
        if roll < 0.93:
            text = f"[[], {self.kwargs(task)}, {embed}]"
            return text[: self.rng.randint(1, max(1, len(text) - 1))].encode()  # truncated
        return self.rng.choice([b"\xff\xfe\x00", b"", b"{not json", b"[[], {}, {}] trailing",
                                b'[[], {"features": {"a": 1}}, {"chain": ' + b"[" * 40
                                + b"]" * 40 + b"}]"])

    # --- headers -------------------------------------------------------------------------

    def headers(self, task: str, task_id: str) -> dict[str, Any]:
        headers: dict[str, Any] = {"lang": "py", "task": task, "id": task_id,
                                   "root_id": task_id, "parent_id": None, "group": None,
                                   "retries": 0, "argsrepr": "()", "kwargsrepr": "{}"}
        for _ in range(self.rng.choice([0, 0, 1, 2])):
            key = self.rng.choice(["eta", "expires", "timelimit", "retries", "shadow",
                                   "ignore_result", "x-extra", "stamps", "argsrepr",
                                   "group_index", "origin", "kwargsrepr"])
            headers[key] = self.rng.choice(
                [None, "garbage", -1, 10**30, [1, 2, 3], {"a": {"b": {}}}, "2026-99-99",
                 "x" * 100_000, True, [None, None], 1e308])
        if self.rng.random() < 0.05:
            headers.pop(self.rng.choice(["lang", "root_id", "argsrepr"]), None)
        return headers

    # --- whole messages ------------------------------------------------------------------

    def case(self) -> Case:
        roll = self.rng.random()
        task = self.rng.choice(TASKS)
        task_id = f"fz-{uuid.uuid4().hex}"
        if roll < 0.1:
            return self.envelope_case(task, task_id)
        headers = self.headers(task, task_id)
        family = "body"
        if roll < 0.2:
            family = "headers"
            mutation = self.rng.choice(["no-id", "id-int", "task-list", "deep-header",
                                        "wide-header", "no-task", "unknown-task"])
            if mutation == "no-id":
                headers.pop("id")
                task_id = None  # type: ignore[assignment]
            elif mutation == "id-int":
                headers["id"] = 12345
                task_id = None  # type: ignore[assignment]
            elif mutation == "task-list":
                headers["task"] = [task]
            elif mutation == "deep-header":
                deep: Any = 1
                for _ in range(self.rng.choice([40, 900])):
                    deep = [deep]
                headers["x-deep"] = deep
            elif mutation == "wide-header":
                headers["x-wide"] = {f"k{i}": i for i in range(20_000)}
            elif mutation == "no-task":
                headers.pop("task")
            else:
                headers["task"] = "predq.nope"
        content_type = "application/json"
        if self.rng.random() < 0.04:
            content_type = self.rng.choice(["application/x-python-serialize",
                                            "application/x-yaml", "text/plain"])
        return Case(family, task, task_id, self.body(task), headers, content_type)

    def envelope_case(self, task: str, task_id: str) -> Case:
        """An envelope written into the queue list itself (what kombu's client builds)."""
        body = f'[[], {{"features": {json.dumps(GOOD_FEATURES)}}}, {{}}]'.encode()
        envelope: dict[str, Any] = {
            "body": base64.b64encode(body).decode(), "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id},
            "properties": {"correlation_id": task_id, "reply_to": "x", "priority": 0,
                           "body_encoding": "base64", "delivery_mode": 2,
                           "delivery_info": {"exchange": "", "routing_key": DEFAULT_QUEUE},
                           "delivery_tag": str(uuid.uuid4())}}
        mutation = self.rng.choice(["truncated", "deep-header", "bad-base64", "not-object",
                                    "no-properties", "body-plain", "huge-int-header"])
        if mutation == "bad-base64":
            envelope["body"] = "!!!not base64"
        elif mutation == "no-properties":
            del envelope["properties"]
        elif mutation == "body-plain":
            envelope["properties"]["body_encoding"] = None
            envelope["body"] = body.decode()
        text = json.dumps(envelope)
        if mutation == "truncated":
            text = text[: self.rng.randint(1, len(text) - 1)]
        elif mutation == "deep-header":
            depth = self.rng.choice([40, 900, 100_000])
            text = text.replace('"lang": "py"', '"lang": "py", "x-deep": '
                                + "[" * depth + "]" * depth)
        elif mutation == "not-object":
            text = self.rng.choice(["[]", "null", "1", '"text"'])
        elif mutation == "huge-int-header":
            text = text.replace('"lang": "py"', '"lang": "py", "x-big": ' + "9" * 5000)
        known = task_id if task_id in text else None  # else only the drained queue tells
        return Case(f"envelope:{mutation}", task, known, raw_envelope=text.encode())
