"""What each worker process serves, parsed from broadcast replies, and promote reports.

A reply to `predq_serving`, `predq_promote` or `predq_reload` is one dict per node:
`{nodename: {"hostname": str, "processes": [{"pid": int, "models": {name: {...}}}]}}`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

NodeState = dict[str, Any]
"""One node's reply body: {"hostname", "processes": [...]} (or {"error": ...})."""


@dataclass(frozen=True)
class ServingRow:
    """One model in one serving process (model None: the process serves nothing yet)."""

    node: str
    pid: int | None
    model: str | None
    version: str | None = None
    generation: int | None = None
    source: str | None = None
    sha256: str | None = None
    loaded_at: str | None = None
    error: str | None = None
    prediction_log: str | None = None
    """The process's prediction log when not plain: spooled rows, dead letters, a stopped
    replay (None when everything is written)."""

    def label(self) -> str:
        """`node pid N`, how reports name a process."""
        return f"{self.node} pid {self.pid}" if self.pid is not None else self.node


@dataclass(frozen=True)
class PromoteReport:
    """The outcome of a promote or rollback: the database move and who confirmed it."""

    model: str
    action: str
    from_version: str | None
    to_version: str
    generation: int
    nodes: list[str] = field(default_factory=list)
    confirmed: list[ServingRow] = field(default_factory=list)
    unconfirmed: list[ServingRow] = field(default_factory=list)
    idle: list[ServingRow] = field(default_factory=list)
    """Processes that never loaded this model: they load production on first use."""
    elapsed_s: float = 0.0
    changed: bool = True
    """False when `to_version` already was production: nothing was written or sent."""
    broadcast_error: str | None = None
    """Why the broadcast could not be sent, after the database moved."""

    @property
    def ok(self) -> bool:
        """True when nothing had to change, or at least one node replied and every
        process of every node switched."""
        if not self.changed:
            return True
        return bool(self.nodes) and not self.unconfirmed and self.broadcast_error is None

    def problem(self) -> str | None:
        """One line naming what did not confirm, or None when everything did."""
        if not self.changed:
            return None
        done = "rolled back" if self.action == "rollback" else "promoted"
        head = (f"model {self.model!r} {done} to {self.to_version!r} "
                f"(generation {self.generation}) in the database, but")
        if self.broadcast_error is not None:
            return (f"{head} the broadcast failed ({self.broadcast_error}); every worker "
                    "that reaches the database switches by itself at its next production "
                    "pointer poll (PREDQ_GENERATION_POLL)")
        if not self.nodes:
            return f"{head} no worker replied to the broadcast"
        if not self.unconfirmed:
            return None
        names = ", ".join(_describe(row) for row in self.unconfirmed)
        return f"{head} {len(self.unconfirmed)} process(es) did not confirm: {names}"


def _describe(row: ServingRow) -> str:
    if row.error:
        return f"{row.label()} ({row.error})"
    return f"{row.label()} (serves {row.version!r}, generation {row.generation})"


def merge_replies(replies: Iterable[Mapping[str, Any]] | None,
                  into: dict[str, NodeState] | None = None) -> dict[str, NodeState]:
    """Fold broadcast replies into {nodename: state}; a later reply replaces an earlier one."""
    nodes = {} if into is None else into
    for reply in replies or []:
        if not isinstance(reply, Mapping):
            continue
        for node, state in reply.items():
            nodes[str(node)] = dict(state) if isinstance(state, Mapping) else {
                "error": f"unexpected reply {state!r:.80}"}
    return nodes


def serving_rows(nodes: Mapping[str, NodeState], model: str | None = None) -> list[ServingRow]:
    """Flatten node states into rows sorted by node, pid and model; `model` filters."""
    rows: list[ServingRow] = []
    for node in sorted(nodes):
        rows.extend(_node_rows(node, nodes[node], model))
    return rows


def _node_rows(node: str, state: NodeState, model: str | None) -> list[ServingRow]:
    if "error" in state and "processes" not in state:
        return [ServingRow(node, None, model, error=str(state["error"]))]
    processes = state.get("processes")
    if not isinstance(processes, list) or not processes:
        return [ServingRow(node, None, model, error="reported no serving process")]
    rows: list[ServingRow] = []
    for proc in sorted(processes, key=lambda p: _pid(p) or 0):
        rows.extend(_process_rows(node, proc, model))
    return rows


def _pid(proc: object) -> int | None:
    pid = proc.get("pid") if isinstance(proc, Mapping) else None
    return pid if isinstance(pid, int) else None


def _process_rows(node: str, proc: object, model: str | None) -> list[ServingRow]:
    pid = _pid(proc)
    models = proc.get("models") if isinstance(proc, Mapping) else None
    if not isinstance(models, Mapping):
        models = {}
    if model is not None and model not in models:  # loads production on its first request
        return [ServingRow(node, pid, None, prediction_log=_log_note(proc))]
    names = [model] if model is not None else sorted(models)
    note = _log_note(proc)
    rows = [dataclasses.replace(_model_row(node, pid, name, models[name]), prediction_log=note)
            for name in names]
    return rows or [ServingRow(node, pid, None, prediction_log=note)]


def _log_note(proc: object) -> str | None:
    """`12 spooled; 3 dead-lettered (<file>); replay stopped: <why>`, or None."""
    if not isinstance(proc, Mapping):
        return None
    parts = []
    if proc.get("spooled_rows"):
        parts.append(f"{proc['spooled_rows']} spooled")
    if proc.get("dead_letter_rows"):
        parts.append(f"{proc['dead_letter_rows']} dead-lettered ({proc.get('dead_letter_file')})")
    if proc.get("replay_error"):
        parts.append(f"replay stopped: {proc['replay_error']}")
    return "; ".join(parts) or None


def _model_row(node: str, pid: int | None, name: str, info: object) -> ServingRow:
    if not isinstance(info, Mapping):
        return ServingRow(node, pid, name)
    generation = info.get("generation")
    return ServingRow(
        node, pid, name, version=_opt_str(info.get("model_version")),
        generation=generation if isinstance(generation, int) else None,
        source=_opt_str(info.get("source")), sha256=_opt_str(info.get("sha256")),
        loaded_at=_opt_str(info.get("loaded_at")), error=_opt_str(info.get("error")))


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def is_confirmed(row: ServingRow, version: str, generation: int) -> bool:
    """A process confirms when it serves `version` at `generation` or later."""
    return (row.version == version and row.generation is not None
            and row.generation >= generation)


def is_idle(row: ServingRow) -> bool:
    """A process that has not loaded the model: it loads production on first use."""
    return row.model is None and row.error is None


def split_confirmed(rows: Iterable[ServingRow], version: str, generation: int
                    ) -> tuple[list[ServingRow], list[ServingRow], list[ServingRow]]:
    """(confirmed, unconfirmed, idle) rows for one model's switch."""
    confirmed: list[ServingRow] = []
    unconfirmed: list[ServingRow] = []
    idle: list[ServingRow] = []
    for row in rows:
        if is_idle(row):
            idle.append(row)
        elif is_confirmed(row, version, generation):
            confirmed.append(row)
        else:
            unconfirmed.append(row)
    return confirmed, unconfirmed, idle
