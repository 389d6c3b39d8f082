"""Live quality gate: roll back a newly promoted version whose live error is worse.

Off by default. With PREDQ_QUALITY_GATE_MARGIN=0.1 every worker node runs one background
thread (in its main process) that, every PREDQ_QUALITY_GATE_INTERVAL seconds and for each
model in PREDQ_QUALITY_GATE_MODELS (empty: every model with a production version):

1. reads the production pointer and the history row that made it (a promote, not a
   rollback: a rollback target is never judged);
2. compares the live MAE of the production version with that of the version it replaced,
   each over its labelled rows (`actual_value` backfilled) in `model_predictions`;
3. when both have at least PREDQ_QUALITY_GATE_MIN_ROWS labelled rows (default 200) and the
   new MAE exceeds the previous one by more than the margin, rolls back to the previous
   version, recording "quality gate: MAE x vs y over n rows" as the history reason.

Several nodes may judge the same promotion; the rollback happens once. It runs in one
transaction under the store's per-model lock (the one every pointer move takes), and only
if the pointer still holds the judged generation: a node that lost the race, or a human
who promoted meanwhile, makes the gate stand down.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, func, select

from modelstore import promotion, schema
from modelstore.db import ModelEvaluationDB
from modelstore.engine import translate_errors
from modelstore.promotion import PromotionResult
from modelstore.settings import Settings
from workers import metrics

log = logging.getLogger(__name__)

KEEP = "keep"
WAIT = "wait"
ROLLBACK = "rollback"

R = schema.model_prediction_rollups
H = schema.promotion_history


@dataclass(frozen=True)
class GateConfig:
    margin: float
    min_rows: int
    interval_s: float
    models: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> GateConfig | None:
        """None when the gate is off (PREDQ_QUALITY_GATE_MARGIN unset)."""
        if settings.quality_gate_margin is None:
            return None
        return cls(settings.quality_gate_margin, settings.quality_gate_min_rows,
                   settings.quality_gate_interval_s, settings.quality_gate_models)


@dataclass(frozen=True)
class LiveError:
    version: str
    rows: int
    mae: float | None


@dataclass(frozen=True)
class Judgement:
    model: str
    generation: int
    current: LiveError
    previous: LiveError
    margin: float
    verdict: str

    @property
    def reason(self) -> str:
        cur, prev = self.current, self.previous
        return (f"quality gate: MAE {cur.mae:.6g} vs {prev.mae:.6g} over {cur.rows} rows "
                f"({cur.version} vs {prev.version}, {prev.rows} rows; margin "
                f"{self.margin:.0%})")


def verdict(current: LiveError, previous: LiveError, margin: float, min_rows: int) -> str:
    if (current.mae is None or previous.mae is None or current.rows < min_rows
            or previous.rows < min_rows):
        return WAIT
    return ROLLBACK if current.mae > previous.mae * (1.0 + margin) else KEEP


def live_errors(conn: Connection, model: str, versions: Sequence[str]) -> dict[str, LiveError]:
    """Labelled rows and MAE per version (only the given versions of one model), from the
    rollups: versions x hours, not a scan of the log every few seconds."""
    labelled = func.sum(R.c.labelled)
    stmt = (select(R.c.model_version, labelled, func.sum(R.c.sum_abs_error))
            .where(and_(R.c.model_name == model, R.c.model_version.in_(list(versions))))
            .group_by(R.c.model_version))
    found = {v: LiveError(v, int(n or 0), float(err) / int(n) if n else None)
             for v, n, err in conn.execute(stmt)}
    return {v: found.get(v, LiveError(v, 0, None)) for v in versions}


class QualityGate:
    """Judges production versions and rolls back the bad ones; `check_once` is one round."""

    def __init__(self, db: Callable[[], ModelEvaluationDB], config: GateConfig, *,
                 by: str | None = None,
                 on_rollback: Callable[[PromotionResult], None] | None = None) -> None:
        self._db_factory = db
        self._db: ModelEvaluationDB | None = None
        self.config = config
        self.by = by or f"quality-gate@{socket.gethostname()}"
        self._on_rollback = on_rollback

    @property
    def db(self) -> ModelEvaluationDB:
        if self._db is None:
            self._db = self._db_factory()
        return self._db

    def _models(self) -> list[str]:
        if self.config.models:
            return list(self.config.models)
        with translate_errors("quality gate: listing models"), self.db.engine.connect() as conn:
            return list(conn.execute(select(schema.production_pointer.c.model_name)).scalars())

    def judge(self, model: str) -> Judgement | None:
        """The verdict on the production version of `model`, or None if nothing to judge."""
        with translate_errors("quality gate: judging", model_name=model), \
                self.db.engine.connect() as conn:
            pointer = promotion.read_pointer(conn, model)
            if pointer is None:
                return None
            move = conn.execute(select(H).where(and_(
                H.c.model_name == model, H.c.generation == pointer.generation))
                .order_by(H.c.id.desc()).limit(1)).mappings().first()
            previous = _judged_previous(move, pointer.model_version)
            if previous is None:
                return None
            errors = live_errors(conn, model, [pointer.model_version, previous])
        current, before = errors[pointer.model_version], errors[previous]
        return Judgement(model, pointer.generation, current, before, self.config.margin,
                         verdict(current, before, self.config.margin, self.config.min_rows))

    def rollback(self, judgement: Judgement) -> PromotionResult | None:
        """Roll back iff production still holds the judged generation (else None)."""
        db = self.db
        with translate_errors("quality gate: rolling back", model_name=judgement.model), \
                db.engine.begin() as conn:
            promotion.lock_model(conn, judgement.model)
            now = promotion.read_pointer(conn, judgement.model)
            if now is None or now.generation != judgement.generation:
                return None
            moved = promotion.promote(conn, judgement.model, judgement.previous.version,
                                      action="rollback", by=self.by, reason=judgement.reason,
                                      signing_key=db.signing_key)
        log.warning("model %r rolled back %s -> %s (generation %d): %s", judgement.model,
                    moved.from_version, moved.to_version, moved.generation, judgement.reason)
        metrics.observe_gate_rollback(judgement.model)
        return moved

    def check_once(self) -> list[Judgement]:
        """Judge every watched model; roll back where the verdict says so."""
        judgements: list[Judgement] = []
        for model in self._models():
            judgement = self.judge(model)
            if judgement is None:
                continue
            judgements.append(judgement)
            for live in (judgement.current, judgement.previous):
                metrics.observe_gate(model, live.version, live.mae)
            if judgement.verdict == ROLLBACK:
                moved = self.rollback(judgement)
                if moved is not None and self._on_rollback is not None:
                    self._on_rollback(moved)
        return judgements


def _judged_previous(move: Any, current: str) -> str | None:
    """The version a promotion replaced, or None when there is nothing to compare with."""
    if move is None or move["action"] == ROLLBACK or move["to_version"] != current:
        return None
    previous = move["from_version"]
    return previous if previous and previous != current else None


class GateThread:
    """Runs `gate.check_once()` every `interval_s` seconds until stopped."""

    def __init__(self, gate: QualityGate, interval_s: float) -> None:
        self.gate = gate
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="predq-quality-gate",
                                        daemon=True)

    def start(self) -> GateThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.gate.check_once()
            except Exception:
                log.exception("quality gate check failed; retrying in %.1f s", self.interval_s)


_running: dict[int, GateThread] = {}


def start_gate(settings: Settings, announce: Callable[[PromotionResult], None] | None = None
               ) -> GateThread | None:
    """Start this process's gate thread (once) when PREDQ_QUALITY_GATE_MARGIN is set."""
    config = GateConfig.from_settings(settings)
    if config is None:
        return None
    if os.getpid() in _running:
        return _running[os.getpid()]

    def new_db() -> ModelEvaluationDB:
        return ModelEvaluationDB(settings.database_url, signing_key=settings.signing_key,
                                 connect_timeout_s=settings.connect_timeout_s)

    gate = QualityGate(new_db, config, on_rollback=announce)
    log.info("quality gate on: margin %.0f%%, %d labelled rows, every %.1f s, models %s",
             config.margin * 100, config.min_rows, config.interval_s,
             ", ".join(config.models) or "all")
    thread = _running[os.getpid()] = GateThread(gate, config.interval_s).start()
    return thread


def stop_gate() -> None:
    thread = _running.pop(os.getpid(), None)
    if thread is not None:
        thread.stop()


def broadcast_rollback(app: Any) -> Callable[[PromotionResult], None]:
    """Tell every node to converge now (the promote fast path); pollers converge anyway."""

    def announce(moved: PromotionResult) -> None:
        app.control.broadcast("predq_promote", arguments={
            "model": moved.model_name, "generation": moved.generation,
            "promoted_at": time.time()}, reply=False)

    return announce
