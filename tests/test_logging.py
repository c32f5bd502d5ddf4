"""Logging: the key=value connection line and its fields, log levels, --log-file reopened on
SIGUSR1, and log lines that hostile input (SNI names, addresses) cannot forge."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import ssl
import time

from helpers import (
    client_ctx,
    conn_lines,
    echo,
    echo_once_plain,
    echo_works,
    free_port,
    peer_closes_within,
    scrape,
    tls_connect,
    wait_for,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from stud import addr


def unescape(v: str) -> str:
    """Undo the log's escaping: \\xNN, \\uNNNN, \\UNNNNNNNN, \\" and \\\\."""
    return re.sub(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|.)",
                  lambda m: chr(int(m.group(1)[1:], 16)) if len(m.group(1)) > 1 else m.group(1),
                  v)


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
        wait_for(lambda s=s: echo_works(s.port, timeout=2))
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert peer_closes_within(c, 3)
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
            assert peer_closes_within(c, 3)
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
