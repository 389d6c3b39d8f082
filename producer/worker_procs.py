"""Starting and stopping real `celery -A workers worker` subprocesses (the demo, tests).

Workers run in their own process group; stopping sends SIGTERM, waits, then SIGKILLs
the group so no thread-pool child outlives its caller. Nothing here imports `workers`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from modelstore import defaults
from modelstore.errors import PredqError

log = logging.getLogger(__name__)


class WorkerStartError(PredqError):
    """Raised when a worker subprocess exits or does not answer ping in time."""


def worker_command(concurrency: int, extra: Sequence[str] = (), pool: str | None = "threads",
                   loglevel: str = "INFO") -> list[str]:
    """The argv of one predq worker: `python -m celery -A workers worker ...`. With
    pool=None it is the conventional command, no pool or concurrency flag: the app's own
    config chooses them (threads, PREDQ_WORKER_THREADS)."""
    pool_args = [] if pool is None else ["--pool", pool, "--concurrency", str(concurrency)]
    return [sys.executable, "-m", "celery", "-A", "workers", "worker", *pool_args,
            "-Q", defaults.DEFAULT_QUEUE, "--loglevel", loglevel, *extra]


class WorkerGroup:
    """`with WorkerGroup(env, ["demo1", "demo2"], log_dir) as group: group.wait_ready(app)`."""

    def __init__(self, env: Mapping[str, str], names: Sequence[str], log_dir: Path,
                 concurrency: int = 8, extra: Sequence[str] = ()) -> None:
        self.env = dict(env)
        self.names = list(names)
        self.log_dir = log_dir
        self.concurrency = concurrency
        self.extra = list(extra)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def __enter__(self) -> WorkerGroup:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in self.names:
            argv = worker_command(self.concurrency, ["-n", f"{name}@%h", "--without-mingle",
                                                     "--without-gossip", *self.extra])
            logfile = self.log_path(name).open("ab")
            self._logs.append(logfile)
            self.procs[name] = subprocess.Popen(argv, env=self.env, stdout=logfile,
                                                stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def wait_ready(self, app: Any, timeout: float = 90.0) -> list[str]:
        """Block until every worker answers `app.control.ping`; returns their node names."""
        deadline = time.monotonic() + timeout
        answered: dict[str, str] = {}
        while time.monotonic() < deadline:
            self._check_alive()
            for reply in app.control.ping(timeout=0.5) or []:
                for node in reply:
                    answered[str(node).split("@", 1)[0]] = str(node)
            if all(name in answered for name in self.names):
                return [answered[name] for name in self.names]
        missing = [n for n in self.names if n not in answered]
        raise WorkerStartError(f"worker(s) {', '.join(missing)} did not answer ping within "
                               f"{timeout:g} s; see {self.log_path(missing[0])}")

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            code = proc.poll()
            if code is not None:
                raise WorkerStartError(f"worker {name} exited with code {code} while starting:"
                                       f" {self.tail(name)}")

    def tail(self, name: str, lines: int = 5) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every worker, wait up to `grace_s`, then SIGKILL their process groups."""
        try:
            for proc in self.procs.values():
                _signal_group(proc, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for proc in self.procs.values():
                try:
                    proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    log.warning("worker pid %d ignored SIGTERM for %.0f s; killing it",
                                proc.pid, grace_s)
        finally:
            for proc in self.procs.values():
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            for fh in self._logs:
                fh.close()
            self.procs.clear()
            self._logs.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group already exited
        os.killpg(proc.pid, sig)
