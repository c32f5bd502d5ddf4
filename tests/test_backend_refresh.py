"""-R / --backend-refresh: the backend's name is resolved again while the daemon runs. Each
daemon runs in a mount namespace of its own whose /etc/hosts is a file of the test's, so the name
can move between two loopback addresses without touching the machine's resolver; hitch, which
has -R too, is run the same way as the oracle."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Proc, client_ctx, free_port, tls_connect, tool_env, wait_for, worker_pids

HITCH = "/usr/sbin/hitch"
NAME = "backend.stud.test"

pytestmark = pytest.mark.skipif(os.getuid() != 0 or not shutil.which("unshare"),
                                reason="needs root and unshare (a mount namespace)")


class Tagged:
    """An echo server on host:port that puts its tag before each reply."""

    def __init__(self, host: str, port: int, tag: bytes) -> None:
        self.sock = socket.create_server((host, port))
        self.tag = tag
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(self.tag + data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def backends() -> Iterator[int]:
    """The same port on 127.0.0.1 (tag A) and 127.0.0.2 (tag B)."""
    port = free_port()
    a, b = Tagged("127.0.0.1", port, b"A:"), Tagged("127.0.0.2", port, b"B:")
    yield port
    a.close()
    b.close()


def in_namespace(hosts: Path, argv: list[str]) -> list[str]:
    """argv in a mount namespace whose /etc/hosts is the file hosts (rewritten in place by the
    test, the same inode: the bind mount shows each version). unshare, sh and mount run
    without the sanitizer's LD_PRELOAD; the daemon gets it back."""
    preload = os.environ.get("LD_PRELOAD")
    env = ["env", f"LD_PRELOAD={preload}"] if preload else []
    script = f'mount --bind "{hosts}" /etc/hosts && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, "sh", *env, *argv]


def tag_of(port: int) -> bytes:
    with tls_connect(port, ctx=client_ctx()) as c:
        c.sendall(b"ping")
        return c.recv(16)


@pytest.mark.parametrize("daemon", ["stud", "hitch"])
def test_new_connections_follow_the_name(daemon, procs, pem, tmp_path, backends):
    if daemon == "hitch" and not os.path.exists(HITCH):
        pytest.skip("hitch is not installed")
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 {NAME}\n")
    port = free_port()
    args = ["-f", f"[127.0.0.1]:{port}", "-b", f"[{NAME}]:{backends}", "-R", "1",
            "--user=nobody", pem]
    cmd = [sys.executable, "-m", "stud", "-L", "info", *args] if daemon == "stud" else \
        [HITCH, *args]
    p = Proc(in_namespace(hosts, cmd), tmp_path / f"{daemon}.out", env=tool_env())
    procs.append(p)
    wait_for(lambda: "online" in p.output() or p.proc.poll() is not None)
    assert p.proc.poll() is None, p.output()
    assert tag_of(port) == b"A:ping"
    held = tls_connect(port, ctx=client_ctx())
    held.sendall(b"1")
    assert held.recv(8) == b"A:1"
    with open(hosts, "r+") as f:  # (in place: a new file would not show through the mount)
        f.write(f"127.0.0.2 {NAME}\n")
        f.truncate()
    wait_for(lambda: tag_of(port) == b"B:ping", 10)
    held.sendall(b"2")  # an open connection stays where it is
    assert held.recv(8) == b"A:2"
    held.close()
    if daemon == "stud":
        # A name that stops resolving keeps the last address, and is said once.
        with open(hosts, "r+") as f:
            f.write("# nothing\n")
            f.truncate()
        wait_for(lambda: "backend-refresh:" in p.output(), 10)
        time.sleep(2.5)  # two more refreshes that fail
        for _ in range(3):
            assert tag_of(port) == b"B:ping"
        assert p.output().count("backend-refresh:") == 1
        assert f"now resolves to [127.0.0.2]:{backends}" in p.output()
        # (unshare and sh exec'd: p.pid is the master, and it kept its worker)
        assert p.proc.poll() is None and worker_pids(p.pid)
