"""The Redis server of the fleet scenario (stud's --session-store): started on loopback
without persistence, asked with inline commands."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from .common import CLIENT_CPUS, HOST
from .context import Bench
from .prepare import which
from .procs import Started
from .proxies import free_port


@dataclass
class Redis:
    port: int
    proc: Started

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def command(self, *args: str) -> bytes:
        """One inline command's reply (b"" if Redis does not answer)."""
        try:
            with socket.create_connection((HOST, self.port), timeout=2) as s:
                s.sendall(" ".join(args).encode() + b"\r\n")
                return s.recv(65536)
        except OSError:
            return b""

    def dbsize(self) -> int | None:
        reply = self.command("DBSIZE")
        return int(reply[1:].strip()) if reply.startswith(b":") else None

    def wait_dbsize(self, at_least: int, timeout: float = 10.0) -> int | None:
        """Waits (bounded) until Redis holds at_least keys; the count it holds then."""
        deadline = time.monotonic() + timeout
        n = self.dbsize()
        while (n is None or n < at_least) and time.monotonic() < deadline:
            time.sleep(0.05)
            n = self.dbsize()
        return n


def start_redis(b: Bench) -> Redis | None:
    """redis-server on loopback next to the backend (CPU 1), no RDB, no AOF; None if it is
    not installed or does not come up."""
    exe = which("redis-server")
    if not exe:
        return None
    port = free_port(b.ports)
    argv = [exe, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
            "--dir", str(b.work)]
    b.commands.setdefault("redis-server", " ".join(a or "''" for a in argv))
    r = Redis(port, b.procs.spawn("redis", argv, cpus=CLIENT_CPUS, log=b.work / "redis.log"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and r.proc.alive():
        if r.command("PING").startswith(b"+PONG"):
            return r
        time.sleep(0.1)
    b.problem("redis", f"redis-server did not come up; log tail:\n{r.proc.log_tail()}")
    b.procs.stop(r.proc)
    return None


def store_args(kind: str, redis: Redis | None) -> tuple[str, ...]:
    """The options that make a stud use the store."""
    return ("--session-store", redis.url) if kind == "stud" and redis else ()
