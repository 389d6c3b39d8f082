"""A second "host" for partition tests: a network namespace joined to this one by a veth
link that a test can cut and heal. Needs root (`ip netns`); CI runs as root.

Only the addresses given to the two veth ends carry traffic; the namespace, the link and
the addresses are removed in `finally`.
"""

from __future__ import annotations

import random
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.faults.redisproc import RedisServer

SUBNET = "10.231.{}.0/30"


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True,
                          timeout=30).stdout


@dataclass(frozen=True)
class VethNamespace:
    name: str
    host_dev: str
    ns_dev: str
    host_ip: str
    ns_ip: str

    def exec_prefix(self) -> list[str]:
        """Prepend to an argv to run it inside the namespace (same pid: `ip` execs it)."""
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        """Take the link down: packets are dropped, no reset is sent (a real partition)."""
        ip("link", "set", self.host_dev, "down")

    def heal(self) -> None:
        ip("link", "set", self.host_dev, "up")


def _free_octet() -> int:
    used = ip("-o", "-4", "addr", "show")
    for octet in random.sample(range(256), 256):
        if f"10.231.{octet}." not in used:
            return octet
    raise RuntimeError("no free 10.231.x.0/30 subnet for the test link")


@contextmanager
def veth_namespace() -> Iterator[VethNamespace]:
    tag = uuid.uuid4().hex[:6]
    octet = _free_octet()
    ns = VethNamespace(name=f"predq-{tag}", host_dev=f"pqh{tag}", ns_dev=f"pqn{tag}",
                       host_ip=f"10.231.{octet}.1", ns_ip=f"10.231.{octet}.2")
    try:
        ip("netns", "add", ns.name)
        ip("link", "add", ns.host_dev, "type", "veth", "peer", "name", ns.ns_dev)
        ip("link", "set", ns.ns_dev, "netns", ns.name)
        ip("addr", "add", f"{ns.host_ip}/30", "dev", ns.host_dev)
        ip("link", "set", ns.host_dev, "up")
        inside = ["netns", "exec", ns.name, "ip"]
        ip(*inside, "addr", "add", f"{ns.ns_ip}/30", "dev", ns.ns_dev)
        ip(*inside, "link", "set", ns.ns_dev, "up")
        ip(*inside, "link", "set", "lo", "up")
        yield ns
    finally:
        # Deleting one veth end deletes its peer (and the addresses); then the namespace.
        with suppress(subprocess.CalledProcessError):
            ip("link", "del", ns.host_dev)
        with suppress(subprocess.CalledProcessError):
            ip("netns", "del", ns.name)


class VethRedis(RedisServer):
    """A private redis-server listening on 127.0.0.1 and on this end of the veth link."""

    def __init__(self, workdir: Path, also_bind: str) -> None:
        super().__init__(workdir)
        self.also_bind = also_bind

    def _args(self) -> list[str]:
        args = super()._args()
        at = args.index("--bind") + 2
        return [*args[:at], self.also_bind, "--protected-mode", "no", *args[at:]]

    def link_url(self, db: int = 0) -> str:
        """The URL a host in the namespace uses, over the link."""
        return f"redis://{self.also_bind}:{self.port}/{db}"
