"""Real worker subprocesses for end-to-end tests: started with `python -m celery -A workers
worker`, awaited by ping, stopped with SIGTERM, their process group killed in `finally`."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

from celery import Celery

from modelstore.settings import Settings
from producer.worker_procs import worker_command

ROOT = Path(__file__).resolve().parents[2]


def worker_env(database_url: str, redis_url: str, tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREDQ_")}
    env.update({
        "DATABASE_URL": database_url,
        "PREDQ_BROKER_URL": redis_url,
        "PREDQ_RESULT_BACKEND": redis_url,
        "PREDQ_MODEL_DIR": str(tmp / "models"),
        "PREDQ_SPOOL_DIR": str(tmp / "spool"),
        "PREDQ_GENERATION_POLL": "0.5",
        "PREDQ_METRICS_PORT": "0",  # several workers per host; metrics tests pick a port
        "PYTHONPATH": str(ROOT),
    })
    env.update(extra)
    return env


def client_app(env: Mapping[str, str]) -> Celery:
    """A producer-side Celery app with the same settings as the workers."""
    app = Celery("predq-test-client")
    app.conf.update(Settings.from_env(env).celery_config())
    return app


class WorkerProcess:
    def __init__(self, env: Mapping[str, str], name: str, log_path: Path,
                 concurrency: int = 16, pool: str | None = "threads",
                 extra_args: tuple[str, ...] = ()):
        self.env = dict(env)
        self.name = name
        self.log_path = log_path
        self.args = worker_command(concurrency, ["-n", f"{name}@%h", "--without-gossip",
                                                 "--without-mingle", *extra_args], pool=pool)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def nodename(self) -> str:
        import socket

        return f"{self.name}@{socket.gethostname()}"

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, app: Celery, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited {self.proc.returncode}; "
                                   f"log:\n{self.log_tail()}")
            replies = app.control.ping(destination=[self.nodename], timeout=0.5)
            if replies:
                return
        raise TimeoutError(f"worker {self.name} not ready in {timeout}s; log:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole process group: the crash case."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                with suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=timeout)
        finally:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@contextmanager
def running_workers(env: Mapping[str, str], tmp: Path, names: tuple[str, ...] = ("w1",),
                    app: Celery | None = None, **kwargs: object) -> Iterator[list[WorkerProcess]]:
    app = app or client_app(env)
    workers = [WorkerProcess(env, n, tmp / f"{n}.log", **kwargs) for n in names]  # type: ignore[arg-type]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready(app)
        yield workers
    finally:
        for w in workers:
            w.stop()
