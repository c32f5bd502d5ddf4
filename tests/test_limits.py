"""Limits and abuse protection: --max-connections, the file descriptor limit and running out
of descriptors, the empty-connection limiter (against the real stud and against its
specification), --idle-timeout."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import resource
import socket
import ssl
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import (
    client_ctx,
    client_hello,
    command,
    conn_lines,
    echo,
    echo_once_plain,
    echo_works,
    free_port,
    read_to_end,
    scrape,
    tls_connect,
    wait_for,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from stud import ratelimit


# -- connections and descriptors -----------------------------------------------------------
def test_max_connections_holds_the_next_client_in_the_backlog(stud, backend, pem):
    """-n 1 --max-connections=2: with two connections held, a third connects at TCP level
    (kernel backlog) but gets no handshake until one of the two closes; then it completes."""
    s = stud(pem, "--max-connections=2", backend_port=backend("echo"))
    a, b = tls_connect(s.port), tls_connect(s.port)
    for c in (a, b):
        echo(c, b"held")
    raw = socket.create_connection(("127.0.0.1", s.port), timeout=5)  # the kernel accepts
    third = client_ctx().wrap_socket(raw, do_handshake_on_connect=False)
    done: list[float] = []

    def handshake() -> None:
        third.settimeout(15)
        third.do_handshake()
        done.append(time.monotonic())

    t = threading.Thread(target=handshake)
    t.start()
    time.sleep(2.0)
    assert not done, "a third connection was served above --max-connections=2"
    echo(a, b"still fine")  # the held ones are not affected
    closed = time.monotonic()
    b.close()
    t.join(10)
    assert done, "the third connection was never served"
    print(f"third handshake completed {done[0] - closed:.3f} s after one of two closed")
    assert done[0] - closed < 3
    echo(third, b"third")
    third.close()
    a.close()
    assert s.proc.poll() is None


def test_max_connections_counts_delayed_connections_too(stud, backend, pem):
    """--max-connections=2 with the empty-connection limiter: connections parked by the
    limiter must not let the worker go above the limit once their delay ends (fail open)."""
    s = stud(pem, "--max-connections=2", "--empty-conn-limit=1", "--empty-conn-delay=1",
             backend_port=backend("echo"))
    tls_connect(s.port).close()  # one empty connection: this IP is now delayed
    wait_for(lambda: len(conn_lines(s.output())) == 1)
    done: list[ssl.SSLSocket] = []
    lock = threading.Lock()

    def client() -> None:
        try:
            c = tls_connect(s.port, timeout=8)
            echo(c, b"in")
        except OSError:
            return
        with lock:
            done.append(c)

    threads = [threading.Thread(target=client) for _ in range(5)]
    for t in threads:
        t.start()
    time.sleep(2.5)  # the delay (1 s) is long over
    with lock:
        served = len(done)
    print(f"{served} of 5 delayed clients served at once with --max-connections=2")
    assert served <= 2, f"{served} connections served with --max-connections=2"
    while any(t.is_alive() for t in threads):  # the rest come in as the first ones leave
        with lock:
            for c in done:
                c.close()
        time.sleep(0.2)
    assert len(done) == 5


def test_fd_limit_is_raised_to_the_hard_limit(stud, backend, pem):
    s = stud(pem, backend_port=backend("echo"),
             preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (100, 1000)))
    assert "file descriptor limit: 1000" in s.output()
    w = wait_for(s.workers)[0]
    limits = Path(f"/proc/{w}/limits").read_text()
    assert re.search(r"Max open files\s+1000\s+1000", limits), limits
    echo_once_plain(s.port)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_fd_exhaustion_pauses_accepting_and_recovers(stud, backend, pem):
    """RLIMIT_NOFILE 64: healthy connections fill most descriptors, then a burst of
    ClientHellos takes the rest. accept() fails: logged once, accepting pauses (new clients
    wait in the backlog, nobody is refused), the held connections keep working, and once
    the burst leaves new clients are served again without intervention."""
    mport = free_port()
    s = stud(pem, f"--metrics=127.0.0.1:{mport}", backend_port=backend("echo"),
             preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)))
    assert "file descriptor limit: 64" in s.output()
    w = wait_for(s.workers)[0]
    echo_once_plain(s.port)
    free = 64 - fds(w)
    held = []
    for i in range((free - 6) // 2):
        c = tls_connect(s.port)
        echo(c, f"held {i}".encode())
        held.append(c)
    hello = client_hello()
    burst = [socket.create_connection(("127.0.0.1", s.port), timeout=5) for _ in range(30)]
    for c in burst:
        c.sendall(hello)
    wait_for(lambda: "accept() failed" in s.output(), 5)
    print(f"worker: {len(held)} held connections, {fds(w)} fds open, limit 64")
    line = [x for x in s.output().splitlines() if "accept() failed" in x][0]
    assert "Too many open files; pausing accepts" in line, line
    for i, c in enumerate(held):
        echo(c, f"still {i}".encode() * 10)
    waiting = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    waiting_tls = client_ctx().wrap_socket(waiting, do_handshake_on_connect=False)
    waiting_tls.settimeout(1.5)
    with pytest.raises(TimeoutError):  # waits in the backlog: neither served nor refused
        waiting_tls.do_handshake()
    errors = wait_for(lambda: scrape(mport).get("stud_accept_errors_total", 0) >= 2 and
                      scrape(mport)["stud_accept_errors_total"], 5)
    assert s.output().count("accept() failed") == 1, "not rate-limited: logged every time"
    for c in burst:
        c.close()
    waiting_tls.close()
    t0 = time.monotonic()
    wait_for(lambda: echo_works(s.port, timeout=2), 10)
    print(f"{errors:.0f} accept errors counted, logged once; served again "
          f"{time.monotonic() - t0:.2f} s after the burst left")
    for c in held:
        c.close()
    for _ in range(5):
        echo_once_plain(s.port)
    assert s.workers() == [w] and s.proc.poll() is None


def test_worker_resumes_accepting_even_if_its_pause_timer_fires_early(monkeypatch, pem):
    """White-box: after running out of descriptors the worker pauses accepting for
    EMFILE_PAUSE and must resume by itself. Event loop timers may fire up to a millisecond
    before the deadline computed from time.monotonic() (uvloop keeps millisecond loop time);
    the resume must not depend on the clock having passed fd_pause_until."""
    from stud import config, worker

    real = time.monotonic

    cfg = config.parse_args(["-b", "127.0.0.1,9", pem])
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    lsock.setblocking(False)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    w = worker.Worker(cfg, [(lsock, ssl.create_default_context())], None,
                      (socket.AF_INET, ("127.0.0.1", 9)), a)
    try:
        w._accepting(True)
        assert w.accepting
        w._out_of_fds(OSError(errno.EMFILE, "Too many open files"))
        assert not w.accepting
        # From now on the worker's clock reads 2 ms behind the one that set the pause: as
        # if the loop's timer fired 2 ms early.
        monkeypatch.setattr(worker, "time", SimpleNamespace(monotonic=lambda: real() - 0.002))
        w.loop.run_until_complete(asyncio.sleep(worker.EMFILE_PAUSE + 0.3))
        assert w.accepting, "accepting never resumed after the fd pause"
    finally:
        w.loop.close()
        lsock.close()
        a.close()
        b.close()


# -- abuse protection and timeouts ---------------------------------------------------------
def tls_from(port: int, source: str, timeout: float = 10.0) -> ssl.SSLSocket:
    raw = socket.socket()
    raw.settimeout(timeout)
    raw.bind((source, 0))
    raw.connect(("127.0.0.1", port))
    return client_ctx().wrap_socket(raw)


def test_empty_connections_delay_that_ip(stud, backend, pem):
    """--empty-conn-limit=3 --empty-conn-delay=2: three TLS connections that close without
    a byte, then the fourth from that IP waits ~2 s for its handshake (and is then served
    normally); another IP is not delayed; stud_rate_limited_total counts it."""
    mport = free_port()
    s = stud(pem, "--empty-conn-limit=3", "--empty-conn-delay=2", f"--metrics=127.0.0.1:{mport}",
             backend_port=backend("echo"))
    with tls_from(s.port, "127.0.0.2") as c:  # another IP, one that sends data
        echo(c, b"data")
    for _ in range(3):
        tls_connect(s.port).close()
    for _ in range(3):
        tls_from(s.port, "127.0.0.2").close()
    wait_for(lambda: len(conn_lines(s.output())) == 7)
    t0 = time.monotonic()
    with tls_from(s.port, "127.0.0.2") as c:  # 3 empty but 1 data connection: not limited
        other = time.monotonic() - t0
        echo(c, b"other ip")
    t0 = time.monotonic()
    with tls_connect(s.port) as c:
        delayed = time.monotonic() - t0
        echo(c, b"served after the delay")
    print(f"4th connection's handshake took {delayed:.2f} s; another IP's {other:.3f} s")
    assert delayed >= 1.8 and delayed < 5
    assert other < 1
    assert "delaying connection from 127.0.0.1 by 2 s (empty connections)" in s.output()
    wait_for(lambda: scrape(mport)["stud_rate_limited_total"] == 1, 5)


def test_empty_conn_limit_is_off_by_default(stud, backend, pem):
    s = stud(pem, backend_port=backend("echo"))
    for _ in range(6):
        tls_connect(s.port).close()
    wait_for(lambda: len(conn_lines(s.output())) == 6)
    t0 = time.monotonic()
    with tls_connect(s.port) as c:
        echo(c, b"x")
    assert time.monotonic() - t0 < 1
    assert "delaying" not in s.output()


def test_idle_timeout(stud, backend, pem):
    """--idle-timeout=1: an idle connection is closed within ~1-3 s; one where the client
    sends every 0.3 s, or one where only the backend sends every 0.3 s, is not."""
    s = stud(pem, "--idle-timeout=1", backend_port=backend("multi"))
    results: dict[str, object] = {}

    def idle() -> None:
        with command(s.port, "ECHO") as c:
            echo(c, b"then nothing")
            t0 = time.monotonic()
            c.settimeout(8)
            data, how = read_to_end(c)
            results["idle"] = (time.monotonic() - t0, data)

    def chatty() -> None:
        with command(s.port, "ECHO") as c:
            t0 = time.monotonic()
            n = 0
            while time.monotonic() - t0 < 3.5:
                echo(c, f"tick {n}".encode())
                n += 1
                time.sleep(0.3)
            results["chatty"] = n

    def drip() -> None:
        with command(s.port, "DRIP") as c:
            c.settimeout(8)
            t0 = time.monotonic()
            data, how = read_to_end(c)
            results["drip"] = (time.monotonic() - t0, data)

    threads = [threading.Thread(target=f) for f in (idle, chatty, drip)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    print(f"idle closed after {results['idle'][0]:.2f} s; chatty did {results['chatty']} round "
          f"trips; drip got {results['drip'][1]!r} over {results['drip'][0]:.2f} s")
    took, data = results["idle"]
    assert data == b"" and 0.9 < took < 3.0
    assert results["chatty"] >= 10
    took, data = results["drip"]
    assert data == b"." * 12 and took > 3.0
    wait_for(lambda: len(conn_lines(s.output())) == 3)
    reasons = [x["reason"] for x in conn_lines(s.output())]
    assert sorted(reasons) == ["closed", "closed", "idle timeout"], reasons


# -- the empty-connection limiter fed untrusted input --------------------------------------
LIMIT_OPS = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", "::1", "10.0.0.1"]), st.sampled_from(
        ["empty", "data", "check"]), st.floats(0, 30, allow_nan=False)),
    max_size=60)


@settings(max_examples=400, deadline=None)
@given(LIMIT_OPS, st.integers(1, 6), st.floats(0.5, 60, allow_nan=False))
def test_empty_conn_limiter_against_its_specification(ops, limit, window):
    """Per IP, over a window opened by the first connection seen after the previous one
    ended: limited exactly when at least `limit` connections were empty and no more than
    one in eight carried data; IPs never affect each other; time only moves forward."""
    lim = ratelimit.EmptyConnLimiter(limit, window)
    model: dict[str, list[float]] = {}  # ip -> [window start, empty, data]
    now = 0.0
    for ip, what, dt in ops:
        now += dt
        entry = model.get(ip)
        live = entry is not None and now - entry[0] < window
        if what == "check":
            expected = live and entry[1] >= limit and entry[2] * 8 <= entry[1]
            assert lim.limited(ip, now) == expected, (ip, entry, now)
            continue
        if not live:
            entry = model[ip] = [now, 0, 0]
        entry[1 if what == "empty" else 2] += 1
        lim.record(ip, what == "empty", now)
    for ip in model:  # and once every window has ended, nobody is limited
        assert not lim.limited(ip, now + window * 1.000001)


def test_empty_conn_limiter_memory_is_bounded(monkeypatch):
    """A flood of source addresses cannot grow the table past MAX_TRACKED: expired entries
    are pruned first, then new IPs are simply not tracked."""
    monkeypatch.setattr(ratelimit, "MAX_TRACKED", 50)
    lim = ratelimit.EmptyConnLimiter(3, 10)
    for i in range(1000):
        lim.record(f"10.0.{i // 256}.{i % 256}", True, i * 0.001)
        assert len(lim.seen) <= 50
    for _ in range(3):
        lim.record("10.0.0.0", True, 1.0)  # a tracked IP still counts...
    assert lim.limited("10.0.0.0", 1.0)
    for i in range(100):  # ...and after the window, new IPs take the expired places
        lim.record(f"192.168.0.{i}", True, 20.0 + i * 0.001)
    assert len(lim.seen) <= 50 and "192.168.0.0" in lim.seen
