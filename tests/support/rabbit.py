"""A RabbitMQ virtual host per test (so tests share no queues), and rabbitmqctl helpers."""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass
from urllib.parse import quote

AMQP_SERVER_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")
RABBITMQCTL_TIMEOUT_S = 60


def rabbitmqctl(*args: str) -> str:
    """Run rabbitmqctl; CalledProcessError or FileNotFoundError when it cannot."""
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                          timeout=RABBITMQCTL_TIMEOUT_S, check=True)
    return done.stdout


def add_vhost() -> str:
    vhost = f"predq_test_{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return vhost


def delete_vhost(vhost: str) -> None:
    rabbitmqctl("delete_vhost", vhost)


class VhostReaper:
    """Deletes virtual hosts in the background (each deletion takes seconds: its quorum
    queues are shut down); `wait()` at the end of the session reaps every deletion."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def delete(self, vhost: str) -> None:
        self._procs.append(subprocess.Popen(["rabbitmqctl", "-q", "delete_vhost", vhost],
                                            stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))

    def wait(self) -> None:
        for proc in self._procs:
            try:
                proc.wait(timeout=RABBITMQCTL_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()


def vhost_url(vhost: str) -> str:
    return f"{AMQP_SERVER_URL}/{quote(vhost, safe='')}"


def queue_types(vhost: str) -> dict[str, str]:
    """Queue name -> type ("quorum" / "classic") in a virtual host."""
    out = rabbitmqctl("list_queues", "-p", vhost, "name", "type", "--no-table-headers")
    return dict(line.split("\t", 1) for line in out.strip().splitlines() if "\t" in line)


@dataclass(frozen=True)
class Broker:
    """A broker for one test and the result backend that goes with it."""

    name: str
    url: str
    backend: str
    vhost: str | None = None

    def env(self) -> dict[str, str]:
        return {"PREDQ_BROKER_URL": self.url, "PREDQ_RESULT_BACKEND": self.backend}
