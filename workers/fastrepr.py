"""A faster `saferepr` for the small flat dicts predq's tasks return.

Celery reprs every task's return value (`celery.app.trace`: `saferepr(R,
resultrepr_maxsize)`) for the success log line and the task-succeeded event, in pure
Python: about 40 us for a `predq.predict` result, a tenth of what the task itself costs at
one row per batch. A flat dict of plain scalars gets the builtin `repr()` instead (the
same text, except that strings are escaped the way `repr()` escapes them); anything else,
or a text longer than the limit, goes to Celery's own `saferepr`.
"""

from __future__ import annotations

from typing import Any

import celery.app.trace
from celery.utils.saferepr import saferepr

_SCALARS = frozenset({str, int, float, bool, type(None)})
_MAX_KEYS = 16


def fast_saferepr(o: Any, maxlen: int | None = None, maxlevels: int = 3,
                  seen: Any = None) -> str:
    if type(o) is dict and len(o) <= _MAX_KEYS and all(
            type(k) is str and type(v) in _SCALARS for k, v in o.items()):
        text = repr(o)
        if maxlen is None or len(text) <= maxlen:
            return text
    return str(saferepr(o, maxlen, maxlevels, seen))


def install() -> None:
    """Use fast_saferepr for task results in this process (workers only)."""
    celery.app.trace.saferepr = fast_saferepr
