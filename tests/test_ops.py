"""Operations: connection limits, fd exhaustion, abuse protection, idle timeout, crash-loop
back-off, Prometheus metrics, the connection log and log files, reload on certificate change,
privileges and key secrecy; plus property-based fuzzing of the address parser and the
empty-connection limiter."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import resource
import shlex
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import STUD, client_ctx, free_port, peer_cn, tls_connect, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from test_faults import client_hello, closed_by_peer, command, echo, read_to_end

from stud import addr, ratelimit

root_only = pytest.mark.skipif(os.getuid() != 0, reason="needs root")


def scrape(port: int) -> dict[str, float]:
    """One scrape, parsed by prometheus_client: 'name{k=v,...}' -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def counters(m: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in m.items()
            if re.match(r"\w+(_total|_count|_sum|_bucket)\b", k) and "_created" not in k}


def kv(line: str) -> dict[str, str]:
    """A key=value connection log line (after the timestamp and PID) as a dict."""
    return dict(p.split("=", 1) for p in shlex.split(line.split("] ", 1)[1]))


def conn_lines(text: str) -> list[dict[str, str]]:
    return [kv(x) for x in text.splitlines() if 'op="connection closed"' in x]


# -- limits ------------------------------------------------------------------------------
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


def echo_once_plain(port: int) -> None:
    with tls_connect(port) as c:
        echo(c, b"plain echo")


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
    wait_for(lambda: try_echo(s.port), 10)
    print(f"{errors:.0f} accept errors counted, logged once; served again "
          f"{time.monotonic() - t0:.2f} s after the burst left")
    for c in held:
        c.close()
    for _ in range(5):
        echo_once_plain(s.port)
    assert s.workers() == [w] and s.proc.poll() is None


def try_echo(port: int) -> bool:
    try:
        with tls_connect(port, timeout=2) as c:
            echo(c, b"are you back?")
        return True
    except OSError:
        return False


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
    w = worker.Worker(cfg, [lsock], ssl.create_default_context(), None,
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


# -- processes ---------------------------------------------------------------------------
def test_crash_looping_worker_backs_off_exponentially(stud, backend, pem):
    """A worker that keeps dying young is replaced ever later ("Replacing in X s", X
    growing) and each exit is logged with its status; one that lived 5 s starts over."""
    s = stud(pem, backend_port=backend("echo"))
    pid = wait_for(s.workers)[0]
    waits = []
    for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL, signal.SIGKILL):
        t0 = time.monotonic()
        os.kill(pid, sig)
        new = wait_for(lambda old=pid: s.workers() and s.workers()[0] != old and s.workers(),
                       10)[0]
        wait_for(lambda new=new: f"Process {new} online" in s.output())
        waits.append(time.monotonic() - t0)
        pid = new
    lines = [x.split("} ", 1)[1] for x in s.output().splitlines() if "Replacing" in x]
    print("\n".join(lines), f"\nreplaced after {', '.join(f'{w:.2f}' for w in waits)} s")
    assert "exited with status 0. Replacing..." in lines[0]
    assert all("was terminated by signal 9. Replacing in" in x for x in lines[1:])
    delays = [float(re.search(r"Replacing in ([\d.]+) s", x).group(1)) for x in lines[1:]]
    assert len(delays) == 3 and delays[0] < delays[1] < delays[2], delays
    assert all(w >= d * 0.9 for w, d in zip(waits[1:], delays, strict=True)), (waits, delays)
    time.sleep(5.2)  # a worker that lived STABLE_AFTER seconds is healthy again
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: s.output().count("Replacing") == 5)
    last = [x for x in s.output().splitlines() if "Replacing" in x][-1]
    assert last.endswith("Replacing..."), last
    wait_for(lambda: s.workers() and s.workers()[0] != pid)
    echo_once_plain(s.port)


# -- metrics -----------------------------------------------------------------------------
def test_metrics_aggregate_all_workers(stud, backend, pki, procs, tmp_path):
    """-n 2 --metrics: good connections (one resumed), plain HTTP on the TLS port, a client
    that never finishes its handshake, one with the backend down; every count checked in
    the master's scrape (parsed by prometheus_client); then a reload, a broken reload and a
    killed worker: the reload and restart counters move and no counter ever goes down."""
    pem = pki.make(["localhost"], name="metrics")
    mport = free_port()
    s = stud(pem, f"--metrics=127.0.0.1:{mport}", "--ssl-handshake-timeout=1",
             backend_port=backend("echo"), workers=2)
    history = [scrape(mport)]
    m = history[0]
    seen: list[dict[str, float]] = []  # scraped every 50 ms from a thread, to the end
    stop = threading.Event()

    def scraper() -> None:
        while not stop.wait(0.05):
            seen.append(scrape(mport))

    watcher = threading.Thread(target=scraper)
    watcher.start()
    assert m["stud_workers"] == 2 and m["stud_accepted_total"] == 0
    assert m["stud_reloads_total{result=ok}"] == 0 and m["stud_worker_restarts_total"] == 0

    ctx = client_ctx()
    session = None
    for i in range(5):  # 4 full handshakes, then one resumed
        raw = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        with ctx.wrap_socket(raw, session=session if i == 4 else None) as c:
            echo(c, os.urandom(1000))
            session = c.session
            assert c.session_reused == (i == 4)
    held = tls_connect(s.port)
    echo(held, os.urandom(1000))
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
        c.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        assert closed_by_peer(c, 3)
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
        c.sendall(b"\x16")  # a handshake that never completes
        assert closed_by_peer(c, 4)
    m = wait_for(lambda: (x := scrape(mport))["stud_accepted_total"] == 8 and
                 x["stud_connections_open"] == 1 and x, 5)
    history.append(m)
    bend = next(p for p in procs if "backend" in p.out.name)
    bend.proc.kill()
    bend.proc.wait(5)
    with tls_connect(s.port) as c:
        c.sendall(b"nobody there")
        assert read_to_end(c)[0] == b""
    held.close()
    m = wait_for(lambda: (x := scrape(mport))["stud_accepted_total"] == 9 and
                 x["stud_connections_open"] == 0 and x, 5)
    history.append(m)
    print("\n".join(f"{k} {v:g}" for k, v in sorted(m.items()) if "bucket" not in k))
    assert m["stud_handshakes_total"] == 7
    failed = {k: v for k, v in m.items() if k.startswith("stud_handshakes_failed_total")}
    assert failed == {"stud_handshakes_failed_total{reason=http_request}": 1}, failed
    assert m["stud_handshake_seconds_count"] == 7
    assert m["stud_handshake_seconds_bucket{le=+Inf}"] == 7
    assert 0 < m["stud_handshake_seconds_sum"] < 7
    assert m["stud_resumed_total"] == 1
    assert m["stud_tls_version_total{version=TLSv1.3}"] == 7
    assert sum(v for k, v in m.items() if k.startswith("stud_cipher_total")) == 7
    # Counted once delivered: "nobody there", read before the connect failed, is not.
    assert m["stud_bytes_up_total"] == 6 * 1000
    assert m["stud_bytes_down_total"] == 6 * 1000
    assert m["stud_backend_connect_failed_total"] == 1
    assert m["stud_connect_seconds_count"] == 6
    assert m["stud_timeouts_total{kind=handshake}"] == 1
    assert m["stud_rate_limited_total"] == 0
    assert m["stud_workers"] == 2 and m["stud_generation"] == 1

    os.kill(s.pid, signal.SIGHUP)
    m = wait_for(lambda: (x := scrape(mport))["stud_reloads_total{result=ok}"] == 1 and
                 x["stud_workers"] == 2 and x, 10)
    history.append(m)
    assert m["stud_generation"] == 2
    good = Path(pem).read_bytes()
    Path(pem).write_bytes(b"-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    os.kill(s.pid, signal.SIGHUP)
    m = wait_for(lambda: (x := scrape(mport))["stud_reloads_total{result=failed}"] == 1 and x, 10)
    history.append(m)
    assert m["stud_reloads_total{result=ok}"] == 1 and m["stud_generation"] == 2
    Path(pem).write_bytes(good)
    history.append(scrape(mport))

    victim = s.workers()[0]
    os.kill(victim, signal.SIGKILL)
    m = wait_for(lambda: (x := scrape(mport))["stud_worker_restarts_total"] == 1 and
                 x["stud_workers"] == 2 and x, 10)
    history.append(m)
    history.append(wait_for(lambda: scrape(mport), 5))
    stop.set()
    watcher.join(10)
    print(f"{len(seen)} scrapes checked for counters going down")
    assert len(seen) > 20
    for series in (history, seen):  # each in time order
        for before, after in zip(series, series[1:], strict=False):
            for k, v in counters(before).items():
                assert after.get(k, 0) >= v, f"{k} went down: {v} -> {after.get(k)}"
    for k in ("stud_accepted_total", "stud_handshakes_total", "stud_bytes_up_total",
              "stud_resumed_total", "stud_backend_connect_failed_total"):
        assert history[-1][k] == history[2][k], k  # nothing lost across reload and restart


def test_metrics_endpoint_is_plain_http(stud, backend, pem):
    mport = free_port()
    s = stud(pem, f"--metrics=127.0.0.1:{mport}", backend_port=backend("echo"))
    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        body = r.read().decode()
    assert "# TYPE stud_accepted_total counter" in body
    assert "# TYPE stud_handshake_seconds histogram" in body
    req = urllib.request.Request(f"http://127.0.0.1:{mport}/metrics", method="POST", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 405
    assert s.proc.poll() is None


# -- logging -----------------------------------------------------------------------------
def test_connection_log_line_fields(stud, backend, pem):
    """One key=value line per connection: TLS version, cipher, SNI, resumed, byte counts,
    close reason (here for TLS 1.3, a resumed TLS 1.2 session and a dead backend)."""
    bport = backend("echo")
    s = stud(pem, backend_port=bport)
    with tls_connect(s.port, sni="stud.test") as c:
        echo(c, b"x" * 123)
    ctx = client_ctx(maximum_version=ssl.TLSVersion.TLSv1_2)
    session = None
    for _ in range(2):
        raw = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as c:
            echo(c, b"y" * 7)
            session = c.session
    lines = wait_for(lambda: len(x := conn_lines(s.output())) == 3 and x)
    one, two, three = lines
    assert one["client"].startswith("127.0.0.1:") and one["sni"] == "stud.test"
    assert one["tls"] == "TLSv1.3" and one["cipher"].startswith("TLS_")
    assert (one["resumed"], one["up"], one["down"], one["reason"]) == ("0", "123", "123",
                                                                       "closed")
    assert float(one["duration"]) < 5
    assert two["tls"] == "TLSv1.2" and two["cipher"].startswith("ECDHE-")
    assert (two["resumed"], three["resumed"]) == ("0", "1")
    assert three["sni"] == "localhost" and three["up"] == "7"


def test_log_levels(stud, backend, pem):
    """debug shows failed handshakes; conn hides them; info (the default, as stud: no access
    log) hides connection lines but keeps start-up lines; error hides those too but keeps
    errors, such as the root warning."""
    bport = backend("echo")
    runs = {}
    for level in ("debug", "conn", "info", "error"):
        s = stud(pem, f"--log-level={level}", backend_port=bport, wait=level != "error")
        wait_for(lambda s=s: try_echo(s.port))
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert closed_by_peer(c, 3)
        echo_once_plain(s.port)
        if level in ("debug", "conn"):
            wait_for(lambda s=s, level=level: s.output().count("connection closed") ==
                     (3 if level == "debug" else 2), 5)
        time.sleep(0.3)  # (for what must not appear)
        runs[level] = s.output()
    for level, out in runs.items():
        print(f"--- {level}\n{out}")
    assert "handshake failed: TLS error: HTTP_REQUEST" in runs["debug"]
    assert runs["debug"].count("connection closed") == 3
    assert "handshake failed" not in runs["conn"]
    assert runs["conn"].count("connection closed") == 2
    assert "connection closed" not in runs["info"] and "online" in runs["info"]
    assert "connection closed" not in runs["error"] and "online" not in runs["error"]
    if os.getuid() == 0:
        assert "WARNING: workers will run as root" in runs["error"]


def test_log_file_is_reopened_on_sigusr1(stud, backend, pem, tmp_path):
    """--log-file with -n 2: logrotate renames the file, SIGUSR1 makes the master reopen
    it and hand it to the workers: new lines, including the workers' connection lines, go
    to the new file and none to the old one."""
    log_file = tmp_path / "stud.log"
    s = stud(pem, f"--log-file={log_file}", backend_port=backend("echo"), workers=2,
             wait=False)
    wait_for(lambda: log_file.exists() and log_file.read_text().count("online") == 2)
    workers = wait_for(lambda: len(s.workers()) == 2 and s.workers())
    echo_once_plain(s.port)
    wait_for(lambda: "connection closed" in log_file.read_text())
    rotated = tmp_path / "stud.log.1"
    log_file.rename(rotated)
    os.kill(s.pid, signal.SIGUSR1)
    wait_for(lambda: log_file.exists() and "log file reopened" in log_file.read_text())
    old = rotated.read_text()
    time.sleep(0.3)  # the workers adopt the new file from their control channel
    for _ in range(6):
        echo_once_plain(s.port)
    wait_for(lambda: log_file.read_text().count("connection closed") == 6)
    assert rotated.read_text() == old, "lines still went to the rotated file"
    assert old.count("connection closed") == 1
    s.stop()
    new = log_file.read_text()
    for w in workers:  # every worker writes to the new file
        assert f"[{w}] {{core}} Process {w} draining" in new, new
    assert "all workers exited" in new
    assert s.output() == ""  # nothing went to stdout/stderr


# -- certificates, privileges, key secrecy --------------------------------------------------
def cn_of(port: int) -> str:
    with tls_connect(port, timeout=5) as c:
        return peer_cn(c)


def test_reload_on_cert_change(stud, backend, pki):
    """--reload-on-cert-change: rewriting the PEM in place (a new certificate) makes stud
    reload by itself within ~2-3 s, and so does replacing it by rename; a new connection
    sees the new certificate, a held one keeps working; without the option nothing changes."""
    pem = Path(pki.make(["old.test"], name="watched"))
    bport = backend("echo")
    s = stud(str(pem), "--reload-on-cert-change", backend_port=bport)
    plain = stud(str(pem), backend_port=bport)
    assert cn_of(s.port) == "old.test" == cn_of(plain.port)
    held = tls_connect(s.port)
    echo(held, b"before")
    pem.write_bytes(Path(pki.make(["new.test"], name="new")).read_bytes())
    t0 = time.monotonic()
    wait_for(lambda: cn_of(s.port) == "new.test", 6, 0.1)
    took = time.monotonic() - t0
    echo(held, b"after")  # a connection held across the reload keeps working
    held.close()  # (and lets the old generation go: reloads wait for it)
    tmp = pem.with_suffix(".tmp")
    tmp.write_bytes(Path(pki.make(["third.test"], name="third")).read_bytes())
    os.replace(tmp, pem)  # as certbot & co. do
    t1 = time.monotonic()
    wait_for(lambda: cn_of(s.port) == "third.test", 6, 0.1)
    took2 = time.monotonic() - t1
    print(f"new certificate served {took:.2f} s after the rewrite, {took2:.2f} s after the "
          "rename")
    assert took < 3.5 and took2 < 3.5
    assert s.output().count("a pem-file changed: reloading.") >= 2
    assert cn_of(plain.port) == "old.test"
    assert "reloading" not in plain.output()


@root_only
def test_root_warning_only_without_user(stud, backend, pem):
    s = stud(pem, backend_port=backend("echo"))
    line = [x for x in s.output().splitlines() if "WARNING" in x]
    assert line and "workers will run as root; use --user to drop privileges." in line[0]
    assert all(uid_of(w) == 0 for w in s.workers())


@root_only
def test_root_only_key_is_read_before_dropping_privileges_and_on_reload(stud, backend, pki):
    """--user=nobody with a 0600 root key: the master reads it, workers run as nobody and
    cannot read it, and a reload (read again by the master) works too; no root warning."""
    import pwd

    key = pki.make(["localhost"], name="rootonly2")
    os.chmod(key, 0o600)
    os.chown(key, 0, 0)
    nobody = pwd.getpwnam("nobody").pw_uid
    s = stud("--user=nobody", key, backend_port=backend("echo"), workers=2)
    assert "WARNING" not in s.output()
    first = wait_for(lambda: len(s.workers()) == 2 and s.workers())
    assert all(uid_of(w) == nobody for w in first)
    echo_once_plain(s.port)
    os.kill(s.pid, signal.SIGHUP)
    wait_for(lambda: "serving; generation 1 draining" in s.output())
    second = wait_for(lambda: len(s.workers()) == 2 and not set(first) & set(s.workers())
                      and s.workers())
    assert all(uid_of(w) == nobody for w in second)
    echo_once_plain(s.port)
    assert "reload failed" not in s.output()


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def key_lines(pem_text: str) -> list[str]:
    m = re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----\n(.*?)-----END", pem_text, re.S)
    return [x for x in m.group(1).splitlines() if x] if m else []


def leaks(output: str, lines: list[str]) -> list[str]:
    """Key material in output: any key line, or any 12-character piece of one."""
    found = [x for x in lines if x in output]
    for x in lines:
        for i in range(0, max(1, len(x) - 12), 4):
            if len(x[i:i + 12]) == 12 and x[i:i + 12] in output:
                found.append(x[i:i + 12])
    return found


def corrupt_variants(good: str, other: str) -> dict[str, str]:
    lines = key_lines(good)
    body = "\n".join(lines)
    swap = str.maketrans("ABCDEFGHabcdefgh0123", "BCDEFGHAbcdefgha1230")
    flipped = "\n".join(x[:10] + x[10:30].translate(swap) + x[30:] for x in lines)
    return {
        "flipped": good.replace(body, flipped),
        "truncated": good.replace(body, "\n".join(lines[: len(lines) // 2])),
        "bad base64": good.replace(body, "\n".join(x[:20] + "!*%" + x[23:] for x in lines)),
        "mismatched": good.replace(body, "\n".join(key_lines(other))),
        "no end line": good.split("-----END", 1)[0] if "PRIVATE KEY" in good.split(
            "-----END CERTIFICATE-----", 1)[1] else good,
    }


def test_private_key_never_appears_in_error_messages(stud, backend, pki, tmp_path):
    """PEMs whose key is corrupted (flipped characters, truncated, bad base64, another
    key, no END line) fail -t, start-up and reload with a message naming the file that
    quotes no line of the key's base64 (nor any 12-character piece of one)."""
    good = Path(pki.make(["localhost"], name="secretkey")).read_text()
    other = Path(pki.make(["localhost"], name="otherkey")).read_text()
    secret = key_lines(good) + key_lines(other)
    assert len(key_lines(good)) >= 3
    bport = backend("echo")
    pem = tmp_path / "broken.pem"
    pem.write_text(good)
    s = stud(str(pem), backend_port=bport)
    for name, text in corrupt_variants(good, other).items():
        assert text != good, name
        secret_here = secret + key_lines(text)
        pem.write_text(text)
        for mode in (["-t"], ["-f", f"127.0.0.1,{free_port()}", "-b", f"127.0.0.1,{bport}"]):
            out = subprocess.run(STUD + mode + [str(pem)], capture_output=True, text=True,
                                 timeout=30)
            assert out.returncode == 1, (name, mode, out.stdout, out.stderr)
            msg = out.stderr.strip()
            assert str(pem) in msg and "\n" not in msg, (name, msg)
            assert not leaks(out.stdout + out.stderr, secret_here), (name, msg)
            print(f"{name:12} {mode[0]}: {msg}")
        n = s.output().count("reload failed")
        os.kill(s.pid, signal.SIGHUP)
        wait_for(lambda n=n: s.output().count("reload failed") == n + 1)
    assert not leaks(s.output(), secret)
    echo_once_plain(s.port)  # still serving the good key


def test_connection_log_cannot_be_forged_through_sni(stud, backend, pem):
    """The SNI name is the client's (any latin-1 but NUL): a newline or quotes in it must
    not start a new log line nor add fields to the connection line."""
    s = stud(pem, backend_port=backend("echo"))
    forged = '2026-01-01T00:00:00.000Z [1] op="connection closed" client=6.6.6.6:1 reason=x'
    names = [f"a\n{forged}", 'b" reason="forged', "c\\", "d\r\x7f"]
    for name in names:
        with tls_connect(s.port, sni=name) as c:
            echo(c, b"z")
    wait_for(lambda: len(conn_lines(s.output())) == len(names))
    out = s.output()
    assert "6.6.6.6" not in "".join(x.split("sni=")[0] for x in out.splitlines())
    assert not any(x.startswith("2026-01-01") for x in out.splitlines())
    for line, name in zip([x for x in out.splitlines() if "connection closed" in x], names,
                          strict=True):
        pairs = shlex.split(line.split("] ", 1)[1])
        keys = [p.split("=", 1)[0] for p in pairs]
        assert keys.count("reason") == 1 and keys.count("client") == 1, line
        raw = re.search(r' sni="((?:[^"\\]|\\.)*)" ', line).group(1)
        assert unescape(raw) == name, (line, raw)


def test_connection_lines_are_the_same_from_c_and_from_python(stud, backend, pem):
    """The default path accepts and logs closes in C (stud._flow); with the empty-connection
    limiter on, the worker's Python does both. The same connections give the same lines."""
    bport = backend("echo")
    names = [None, "plain.test", 'q"uo te\\', "ctl\x01\x7f"]
    runs = []
    for extra in ([], ["--empty-conn-limit=1000"]):
        mport = free_port()
        s = stud(pem, "--log-level=debug", "--alpn-protos=h2,http/1.1",
                 f"--metrics=127.0.0.1:{mport}", *extra, backend_port=bport)
        def logged(n: int, s=s) -> None:  # one at a time: lines in connection order
            wait_for(lambda: len(conn_lines(s.output())) == n, 10)

        for i, name in enumerate(names):
            with tls_connect(s.port, sni=name, ctx=client_ctx()) as c:
                echo(c, b"abc")
            logged(i + 1)
        ctx = client_ctx(maximum_version=ssl.TLSVersion.TLSv1_2)
        ctx.set_alpn_protocols(["http/1.1"])
        with tls_connect(s.port, ctx=ctx) as c:
            echo(c, b"hello")
        logged(len(names) + 1)
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")  # a failed handshake (debug)
            assert closed_by_peer(c, 3)
        n = len(names) + 2
        logged(n)
        lines = conn_lines(s.output())
        for line in lines:  # (the client port and the duration differ)
            assert re.fullmatch(r"127\.0\.0\.1:\d+", line.pop("client")), line
            assert re.fullmatch(r"\d+\.\d{3}", line.pop("duration")), line
        runs.append(lines)
        m = wait_for(lambda mport=mport, n=n: (x := scrape(mport))["stud_accepted_total"] == n
                     and x["stud_connections_open"] == 0 and x, 5)
        runs[-1].append({k: v for k, v in m.items() if k.startswith("stud_bytes")})
    print(*runs, sep="\n")
    assert runs[0] == runs[1]
    assert runs[0][-1] and all(runs[0][-1].values())
    assert [line["sni"] for line in runs[0][:len(names)]] == \
        ["-", "plain.test", 'q"uo te\\', "ctl\\x01\\x7f"]  # (as shlex unquotes them)


def unescape(v: str) -> str:
    """Undo the log's escaping: \\xNN, \\uNNNN, \\UNNNNNNNN, \\" and \\\\."""
    return re.sub(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|.)",
                  lambda m: chr(int(m.group(1)[1:], 16)) if len(m.group(1)) > 1 else m.group(1),
                  v)


# -- property-based: parsers and the limiter fed untrusted input ---------------------------
@settings(max_examples=300, deadline=None)
@given(st.ip_addresses(), st.integers(1, 65535), st.sampled_from(["[{}]:{}", "{},{}"]))
def test_addr_ip_literals_resolve_to_themselves_without_dns(ip, port, form):
    """Any IP literal, in either syntax, parses and resolves to exactly that address (no
    DNS: getaddrinfo answers numeric hosts itself)."""
    import ipaddress

    if ip.version == 6 and not addr.has_ipv6():
        return
    a = addr.parse(form.format(ip, port))
    assert a == addr.Addr(str(ip), port)
    family, sockaddr = addr.resolve(a)
    assert family == (socket.AF_INET6 if ip.version == 6 else socket.AF_INET)
    assert ipaddress.ip_address(sockaddr[0].split("%")[0]) == ip and sockaddr[1] == port


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80) | st.binary(max_size=60).map(lambda b: b.decode("latin-1")))
def test_addr_parse_errors_are_addr_errors_that_log_safely(text):
    """Whatever the text: an Addr, or an AddrError (never another exception); the CLI's
    one-line form of the error has no line break, and a hostile string quoted in it stays
    in one key=value field of the log."""
    from stud.cli import one_line
    from stud.log import quoted

    try:
        a = addr.parse(text, wildcard=True)
    except addr.AddrError as e:
        assert "\n" not in one_line(e) and "\r" not in one_line(e)
        q = quoted(str(e))  # as a field of the connection log line
        assert q.isprintable() and re.fullmatch(r'"(?:[^"\\]|\\.)*"', q), q
        assert unescape(q[1:-1]) == str(e)
        return
    assert 1 <= a.port <= 65535
    assert a.host is None or (0 < len(a.host) <= addr.MAX_HOST and a.host.isprintable())


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
