"""A private redis-server the fault tests own: started on a free port, restartable, stopped
at the end. The machine's shared Redis is never touched."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import quote

import redis

from tests.faults.tcpproxy import free_port


class RedisServer:
    """`redis-server` as a child process; `persist` turns on an fsync-always append-only file."""

    def __init__(self, workdir: Path, *, password: str | None = None,
                 persist: bool = False, port: int | None = None, tls: bool = False) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.persist = persist
        self.ca_file = make_tls_files(workdir) if tls else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "redis.log"

    def url(self, db: int = 0, query: str = "") -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        scheme = "rediss" if self.ca_file else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/{db}{query}"

    def _args(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not on PATH")
        args = [binary, "--bind", "127.0.0.1", "--save", "", "--dir", str(self.workdir),
                "--logfile", str(self.log_path), "--daemonize", "no"]
        if self.ca_file:
            tls = self.ca_file.parent
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file",
                     str(tls / "server.crt"), "--tls-key-file", str(tls / "server.key"),
                     "--tls-ca-cert-file", str(self.ca_file), "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        if self.persist:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        return args

    def client(self, db: int = 0) -> redis.Redis:
        tls: dict[str, object] = ({"ssl": True, "ssl_ca_certs": str(self.ca_file)}
                                  if self.ca_file else {})
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, db=db,
                           socket_connect_timeout=2, socket_timeout=5, **tls)  # type: ignore[arg-type]

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.proc = subprocess.Popen(self._args(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            with suppress(redis.RedisError), self.client() as probe:
                if probe.ping():
                    return self
            time.sleep(0.05)
        raise TimeoutError(f"redis-server on port {self.port} not ready in {timeout}s")

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM: the append-only file is flushed), then make sure."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                with suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None


def make_tls_files(workdir: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl); returns the CA."""
    tls = workdir / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    (tls / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
         "ca.crt", "-days", "2", "-subj", "/CN=predq fault-suite CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
         "server.csr", "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.cnf"],
    ]
    binary = shutil.which("openssl")
    if binary is None:
        raise FileNotFoundError("openssl is not on PATH")
    for step in steps:
        subprocess.run([binary, *step], cwd=tls, check=True, capture_output=True, timeout=60)
    return tls / "ca.crt"


@contextmanager
def redis_server(workdir: Path, **kwargs: object) -> Iterator[RedisServer]:
    server = RedisServer(workdir, **kwargs)  # type: ignore[arg-type]
    try:
        yield server.start()
    finally:
        server.stop()
