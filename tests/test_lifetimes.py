"""The paths most likely to hide a lifetime bug in the connection code (a buffer, an SSL* or a
Conn used after it was freed, or freed twice): a peer that resets in the middle of each phase,
a reload over a thousand open connections, SIGTERM over connections in every phase. Each
checks what the client sees, and that the worker lives on and logs no internal error; under
the sanitizer run (tests/sanitize.sh) they are what ASan and UBSan watch."""

from __future__ import annotations

import resource
import signal
import socket
import ssl
import struct
import threading
import time

import pytest
from helpers import (
    client_ctx,
    client_hello,
    command,
    echo,
    peer_closes_within,
    read_to_end,
    recv_exact,
    wait_for,
)

LINGER_0 = struct.pack("ii", 1, 0)  # close() sends an RST


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
    sock.close()


def healthy(s, workers: list[int]) -> None:
    with command(s.port, "ECHO") as c:
        echo(c, b"still serving")
    assert s.proc.poll() is None and sorted(s.workers()) == sorted(workers)
    out = s.output()
    assert "internal error" not in out and "Traceback" not in out and "crashed" not in out


@pytest.fixture
def multi(stud, backend):
    """stud in front of a "multi" backend (one command line chooses each behaviour)."""
    def start(*args: str, workers: int = 1):
        s = stud(*args, backend_port=backend("multi"), workers=workers)
        return s, wait_for(lambda: len(s.workers()) == workers and s.workers())
    return start


@pytest.mark.parametrize("when", ["mid-hello", "after-hello"])
def test_client_reset_during_the_handshake(multi, pem, when):
    """RST with half a ClientHello read, or after the whole one (the server's flight sent)."""
    s, workers = multi(pem, "-L", "debug")
    hello = client_hello()
    for _ in range(40):
        raw = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        raw.sendall(hello[:len(hello) // 2] if when == "mid-hello" else hello)
        if when == "after-hello":
            assert raw.recv(5)[:1] == b"\x16"  # the ServerHello's record
        reset(raw)
    wait_for(lambda: s.output().count('reason="handshake failed: ') == 40, 10)
    healthy(s, workers)


def test_client_reset_during_a_full_write(multi, pem):
    """The backend sends 64 MiB, the client reads none: stud holds what it could not write and
    has stopped reading the backend. Then the client resets."""
    s, workers = multi(pem)
    c = command(s.port, f"BIG {64 << 20}")
    c.settimeout(5)
    assert len(recv_exact(c, 1000)) == 1000
    time.sleep(0.5)  # the client's receive buffer fills; stud's write would block
    reset(c)
    wait_for(lambda: 'reason="client Connection reset by peer"' in s.output(), 10)
    healthy(s, workers)


def test_backend_reset_while_the_client_is_paused(multi, pem):
    """The client uploads more than the backend reads (it reads nothing): stud pauses the
    client, a write pending towards the backend. Then the backend resets."""
    s, workers = multi(pem)
    c = command(s.port, "STALL 1.5")
    c.settimeout(0.2)
    sent = 0
    block = b"u" * 65536
    try:
        while sent < 256 << 20:
            sent += c.send(block)
    except (TimeoutError, ssl.SSLWantWriteError):
        pass  # paused: the pipe to the backend is full
    assert sent < 256 << 20
    assert peer_closes_within(c, 10)
    c.close()
    wait_for(lambda: 'reason="backend Connection reset by peer"' in s.output(), 10)
    healthy(s, workers)


def test_reload_while_a_thousand_connections_are_open(multi, pem):
    """1,000 connections on generation 1, a reload: generation 2 takes new clients, and each
    of the 1,000 still echoes, then closes cleanly; generation 1 then exits 0."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    s, old = multi(pem, "-B", "2048", "--drain-timeout=60")
    held = []
    try:
        for i in range(1000):
            c = command(s.port, "ECHO")
            echo(c, b"%d" % i)
            held.append(c)
        s.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "generation 2 serving; generation 1 draining" in s.output(), 20)
        new = wait_for(lambda: set(s.workers()) - set(old))
        with command(s.port, "ECHO") as c:
            echo(c, b"generation 2")
        for i, c in enumerate(held):
            echo(c, b"still %d" % i)
        for c in held:
            c.unwrap()  # close_notify: the backend sees EOF, echoes it back
            c.close()
        held.clear()
        wait_for(lambda: f"Child {old[0]} (generation 1) exited with status 0" in s.output(), 20)
    finally:
        for c in held:
            c.close()
    healthy(s, list(new))


def blackhole() -> list[socket.socket]:
    """A listener whose accept queue is full (it, then what fills it): connects to it stay
    pending (its SYNs are dropped)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    socks = [lsock]
    for _ in range(2):
        socks.append(socket.socket())
        socks[-1].setblocking(False)
        socks[-1].connect_ex(lsock.getsockname())
    return socks


def test_sigterm_with_connections_in_every_phase(stud, multi, pem):
    """SIGTERM over connections mid-handshake, mid-PROXY header, connecting to the backend,
    relaying idle, relaying with a write pending, half-closed. Those that can finish do
    within the drain bound; each stud exits 0 by it."""
    s, _ = multi(pem, "--drain-timeout=3")
    hole = blackhole()
    p = stud(pem, "--proxy-proxy", "--drain-timeout=3", backend_port=hole[0].getsockname()[1])
    mid_hello = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    mid_hello.sendall(client_hello()[:40])
    mid_proxy = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    mid_proxy.sendall(b"PROXY TCP4 192.0.2.1 ")
    connecting = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    connecting.sendall(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n")
    connecting_tls = client_ctx().wrap_socket(connecting, do_handshake_on_connect=False)
    connecting_tls.do_handshake()  # (stud connects to the backend once the handshake is done)
    idle = command(s.port, "ECHO")
    echo(idle, b"idle")
    pending = command(s.port, f"BIG {32 << 20}")
    pending.settimeout(10)
    assert len(recv_exact(pending, 1000)) == 1000
    half = command(s.port, "ECHO")
    echo(half, b"half")
    socket.socket.shutdown(half, socket.SHUT_WR)  # a FIN: the backend echoes EOF back later
    time.sleep(0.5)
    t0 = time.monotonic()
    for x in (s, p):
        x.proc.send_signal(signal.SIGTERM)
    echo(idle, b"still there while draining")
    got = {}
    reader = threading.Thread(target=lambda: got.update(pending=read_to_end(pending)))
    reader.start()
    codes = [x.proc.wait(15) for x in (s, p)]
    took = time.monotonic() - t0
    reader.join(15)
    assert codes == [0, 0] and took < 3 + 3, (codes, took)
    data, how = got["pending"]
    assert len(data) == (32 << 20) - 1000 and how in ("close_notify", "eof")
    for c in (mid_hello, mid_proxy, connecting_tls, idle, half):
        assert peer_closes_within(c, 1), c
        c.close()
    for x in hole:
        x.close()
    for x in (s, p):
        assert "internal error" not in x.output() and "Traceback" not in x.output()
