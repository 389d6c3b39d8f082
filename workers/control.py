"""Remote-control commands: predq_promote, predq_reload, predq_serving.

They run in the node's main process and must stay fast (a slow command blocks the node's
consumer), so they only wake the background refresher and reply with what the node
serves right now; callers poll predq_serving for the confirmation. With the threads pool
(predq's default) the main process is the serving process; under prefork it answers
with its children's posts on the status board (workers.board).
"""

from __future__ import annotations

import socket
import time
from typing import Any

from celery.worker.control import control_command

from modelstore.brokers import signal_url
from workers import board
from workers.signal import GenerationSignal
from workers.state import current_state

_POOL = {"kind": "unknown"}
_MAIN: dict[str, GenerationSignal] = {}


def set_pool_kind(kind: str) -> None:
    _POOL["kind"] = kind


def node_status(panel: Any = None) -> dict[str, Any]:
    state = current_state()
    if state is not None:
        processes = [state.status()]
    elif _POOL["kind"] == "prefork" and panel is not None:
        processes = board.read(_child_pids(panel))
    else:
        processes = []
    return {"hostname": socket.gethostname(), "pool": _POOL["kind"], "processes": processes}


def _child_pids(panel: Any) -> list[int]:
    """The prefork pool's live children (celery's TaskPool.info)."""
    try:
        pids = panel.consumer.pool.info.get("processes") or []
    except AttributeError:
        return []
    return [pid for pid in pids if isinstance(pid, int)]


@control_command(
    args=[("model", str), ("generation", int)],
    signature="[model [generation]]",
)
def predq_promote(panel: Any, model: str | None = None, generation: int | None = None,
                  promoted_at: float | None = None, **_: Any) -> dict[str, Any]:
    """Start converging to the new production generation; reply without waiting."""
    state = current_state()
    if state is not None:
        state.request_refresh(model, promoted_at or time.time())
    if model and generation:
        # Reaches this node's other processes (prefork children) and missed nodes.
        signal = state.signal if state is not None else _main_signal(panel)
        signal.raise_to(model, int(generation))
    return node_status(panel)


def _main_signal(panel: Any) -> GenerationSignal:
    """The signal client of a main process that serves nothing itself (prefork)."""
    if "signal" not in _MAIN:
        conf = panel.consumer.app.conf
        _MAIN["signal"] = GenerationSignal(signal_url(str(conf.broker_url),
                                                      str(conf.result_backend)))
    return _MAIN["signal"]


@control_command(args=[("model", str)], signature="[model]")
def predq_reload(panel: Any, model: str | None = None, **_: Any) -> dict[str, Any]:
    """Drop cached models and load production again (in the background)."""
    state = current_state()
    if state is not None:
        state.reload(model)
    return node_status(panel)


@control_command()
def predq_serving(panel: Any, **_: Any) -> dict[str, Any]:
    """What every serving process of this node serves now."""
    return node_status(panel)
