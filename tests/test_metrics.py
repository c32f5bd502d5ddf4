"""Prometheus metrics (--metrics): the master's scrape adds up every worker's counts, and
the endpoint is plain HTTP."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import (
    client_ctx,
    echo,
    free_port,
    peer_closes_within,
    read_to_end,
    scrape,
    tls_connect,
    wait_for,
)


def counters(m: dict[str, float]) -> dict[str, float]:
    """The samples that may never go down: counters and histogram parts (not _created)."""
    return {k: v for k, v in m.items()
            if re.match(r"\w+(_total|_count|_sum|_bucket)\b", k) and "_created" not in k}


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
        assert peer_closes_within(c, 3)
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
        c.sendall(b"\x16")  # a handshake that never completes
        assert peer_closes_within(c, 4)
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
