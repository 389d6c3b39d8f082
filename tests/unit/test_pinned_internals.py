"""predq leans on three private internals (issue 12, item 9); these tests fail loudly, with
what to re-check, when an upgrade changes them:

- workers/transport.py overrides kombu 5.7's Redis `Channel._brpop_start/_brpop_read`,
  writes `_in_poll`/`_brpop_sent_at` that kombu's poller reads, and writes `unacked`
  records in kombu's format (`[message, exchange, routing_key]`);
- workers/fastrepr.py swaps `celery.app.trace.saferepr` (tests/unit/test_fastrepr.py runs
  Celery's tracer to show the swap takes effect);
- workers/fastpath.py reads scikit-learn's private `OneHotEncoder._infrequent_enabled`.

The record format and an orphan recovery are checked on a real Redis in
tests/integration/test_transport_internals.py.
"""

from __future__ import annotations

import hashlib
import inspect
import re
import tomllib
from pathlib import Path
from typing import Any

import celery
import kombu
import numpy as np
import pytest
import sklearn
from kombu.transport import redis as kredis
from sklearn.preprocessing import OneHotEncoder

from workers import fastpath

ROOT = Path(__file__).resolve().parents[2]

# sha256[:16] of the source of every kombu 5.7.0 method that transport.py overrides or
# whose state it writes (`_in_poll`, `_brpop_sent_at`) or whose record format it copies.
KOMBU_5_7_0 = {
    "Channel._brpop_read": "c42518699709f2df",
    "Channel._brpop_start": "06723d707ddf2240",
    "Channel._do_restore_message": "8b430df94e45b5b0",
    "Channel._flush_brpop_reauth": "bb4930b4fd3cf8f3",
    "Channel._on_connection_disconnect": "9eab3394f78b076c",
    "Channel.close": "101e9b9cdad44b88",
    "Channel.conn_or_acquire": "25883caca6c4121e",
    "MultiChannelPoller._pause_brpop": "58133695f1a9f4fb",
    "MultiChannelPoller._register_BRPOP": "85724582464a615f",
    "MultiChannelPoller._update_brpop_polling": "de7b4600acf540fb",
    "MultiChannelPoller.maybe_check_brpop_health": "0dc592e46353a0fc",
    "MultiChannelPoller.on_readable": "c0d99f241607f845",
    "QoS.append": "35c655f6ecc62fe6",
    "QoS.restore_by_tag": "58e161d81b6fe18d",
    "QoS.restore_visible": "d4a4a40a3eaf9f23",
}
_OVERRIDDEN = {"_brpop_start", "_brpop_read", "append", "restore_by_tag",
               "_do_restore_message", "conn_or_acquire", "restore_visible"}


def kombu_fingerprints() -> dict[str, str]:
    out = {}
    for cls in (kredis.Channel, kredis.QoS, kredis.MultiChannelPoller):
        for name, fn in vars(cls).items():
            if not inspect.isfunction(fn):
                continue
            src = inspect.getsource(fn)
            if name in _OVERRIDDEN or "_in_poll" in src or "_brpop_sent_at" in src:
                out[f"{cls.__name__}.{name}"] = hashlib.sha256(src.encode()).hexdigest()[:16]
    return out


def test_kombu_methods_transport_py_copies_are_unchanged() -> None:
    changed = sorted(k for k in KOMBU_5_7_0.keys() | kombu_fingerprints().keys()
                     if KOMBU_5_7_0.get(k) != kombu_fingerprints().get(k))
    assert not changed, (
        f"kombu {kombu.__version__} changed {changed}: workers/transport.py copies kombu "
        "5.7.0's BRPOP fetch (_brpop_start/_brpop_read, _in_poll, _brpop_sent_at) and its "
        "unacked record format. Re-read those methods, adapt ReliableChannel/ReliableQoS, "
        "then update KOMBU_5_7_0 here.")


def test_the_fingerprint_check_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    def _brpop_start(self: Any, timeout: Any = None) -> None:
        self._in_poll = None

    monkeypatch.setattr(kredis.Channel, "_brpop_start", _brpop_start)
    assert kombu_fingerprints()["Channel._brpop_start"] != KOMBU_5_7_0["Channel._brpop_start"]


def test_kombu_state_transport_py_writes_still_exists() -> None:
    assert kredis.Channel._in_poll is False
    assert kredis.Channel._brpop_sent_at is None
    assert callable(kredis.Channel._flush_brpop_reauth)
    # The record kombu writes and reads back: dumps([message._raw, EX, RK]).
    assert "dumps([message._raw, EX, RK])" in inspect.getsource(kredis.QoS.append)
    assert "M, EX, RK = loads(bytes_to_str(p))" in inspect.getsource(kredis.QoS.restore_by_tag)


def test_installed_versions_are_inside_the_pinned_ranges() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = {re.split(r"[\[<>=!~ ]", d, maxsplit=1)[0]: d for d in deps}
    assert ">=5.7,<5.8" in spec["celery"] and ">=5.7,<5.8" in spec["kombu"], spec
    assert "<" in spec["scikit-learn"], "scikit-learn needs an upper bound (fastpath)"
    assert celery.__version__.startswith("5.7.") and kombu.__version__.startswith("5.7."), (
        celery.__version__, kombu.__version__)
    lower, upper = re.findall(r"[\d.]+", spec["scikit-learn"])[:2]
    installed = tuple(int(x) for x in sklearn.__version__.split(".")[:2])
    assert tuple(int(x) for x in lower.split(".")[:2]) <= installed
    assert installed < tuple(int(x) for x in upper.split(".")[:2])


def test_the_constraints_file_pins_what_was_tested() -> None:
    pins = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().split()
                if "==" in line)
    assert pins["celery"] == celery.__version__
    assert pins["kombu"] == kombu.__version__
    assert pins["scikit-learn"] == sklearn.__version__
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


# -- scikit-learn's OneHotEncoder._infrequent_enabled -------------------------------------

def test_onehot_infrequent_flag_still_means_what_fastpath_reads() -> None:
    x = np.array([["a"]] * 20 + [["b"]] * 20 + [["rare"]])
    plain = OneHotEncoder(handle_unknown="ignore").fit(x)
    grouped = OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5).fit(x)
    assert plain._infrequent_enabled is False
    assert grouped._infrequent_enabled is True, (
        f"scikit-learn {sklearn.__version__}: OneHotEncoder._infrequent_enabled changed; "
        "workers/fastpath.py would treat infrequent-category encoders as plain ones")
    assert fastpath._plain_onehot(plain)
    assert not fastpath._plain_onehot(
        OneHotEncoder(handle_unknown="ignore", min_frequency=5).fit(x))
