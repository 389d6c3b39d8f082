"""Promote trials: move the production pointer, broadcast `predq_promote`, then poll
`predq_serving` every 20 ms until every process of every node serves the new version."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from modelstore import ModelEvaluationDB

POLL_EVERY_S = 0.02
GIVE_UP_S = 30.0
MODEL = "default"


@dataclass
class Trial:
    target: str
    generation: int
    seconds: float  # promote call -> last process confirmed
    db_s: float  # the promote transaction
    broadcast_s: float  # predq_promote with replies
    polls: int
    processes: int
    converged: bool
    worker_switch_s: list[float] = field(default_factory=list)  # as each process measured it


def _processes(replies: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for reply in replies or []:
        for node, status in reply.items():
            found[node] = list((status or {}).get("processes") or [])
    return found


def converged(replies: list[dict[str, Any]], nodes: Sequence[str], version: str,
              generation: int) -> tuple[bool, list[dict[str, Any]]]:
    """Every expected node replied, has a process, and every process serves `version` at
    `generation`."""
    by_node = _processes(replies)
    procs = [p for n, ps in by_node.items() if n.startswith(tuple(nodes)) for p in ps]
    seen = {n for n in by_node if n.startswith(tuple(nodes)) and by_node[n]}
    if len(seen) < len(nodes):
        return False, procs
    for proc in procs:
        served = (proc.get("models") or {}).get(MODEL) or {}
        if served.get("model_version") != version or served.get("generation") != generation:
            return False, procs
    return True, procs


def promote_trials(app: Celery, url: str, nodes: Sequence[str], versions: Sequence[str],
                   trials: int, log: Callable[[str], None]) -> list[Trial]:
    """`trials` promotes alternating over `versions` (the first is not yet production)."""
    results: list[Trial] = []
    with ModelEvaluationDB(url) as db:
        db.production_pointer(MODEL)  # connect outside the clock
        for k in range(trials):
            target = versions[k % len(versions)]
            started = time.perf_counter()
            moved = db.set_production_model(target, MODEL, by="serving-bench",
                                            reason=f"bench trial {k + 1}")
            db_done = time.perf_counter()
            app.control.broadcast("predq_promote", reply=True, timeout=1.0, limit=len(nodes),
                                  arguments={"model": MODEL, "generation": moved.generation})
            broadcast_done = time.perf_counter()
            polls, ok = 0, False
            procs: list[dict[str, Any]] = []
            while time.perf_counter() - started < GIVE_UP_S:
                replies = app.control.broadcast("predq_serving", reply=True, timeout=1.0,
                                                limit=len(nodes))
                polls += 1
                ok, procs = converged(replies, nodes, target, moved.generation)
                if ok:
                    break
                time.sleep(POLL_EVERY_S)
            done = time.perf_counter()
            switch = [((p.get("models") or {}).get(MODEL) or {}).get("switch_seconds")
                      for p in procs]
            trial = Trial(target, moved.generation, done - started, db_done - started,
                          broadcast_done - db_done, polls, len(procs), ok,
                          [round(s, 3) for s in switch if isinstance(s, int | float)])
            results.append(trial)
            log(f"    trial {k + 1}: -> {target} (generation {trial.generation}): "
                f"{trial.seconds:.3f} s until {trial.processes} processes confirmed "
                f"{'' if ok else '(NOT CONVERGED) '}[promote tx {trial.db_s * 1000:.0f} ms, "
                f"broadcast {trial.broadcast_s * 1000:.0f} ms, {polls} polls; "
                f"switch as the workers saw it: {trial.worker_switch_s}]")
            time.sleep(1.0)
    return results
