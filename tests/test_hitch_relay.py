"""stud as a drop-in for hitch 1.7 (see test_hitch_compat.py): what the backend is told
(PROXY v1 and v2, write-ip, proxy-proxy, ALPN), a UNIX socket backend, and the handshake and
backend-connect timeouts."""

from __future__ import annotations

import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_hitch_compat as compat
from helpers import client_ctx, client_hello, echo, peer_closes_within, tls_connect
from test_hitch_compat import LOCALHOST, V2_SIG, Daemon, Sent, T, cctx, fe, proxy_v2, send

daemon, certs = compat.daemon, compat.certs  # the fixtures


def proxy_v1(sent: Sent, port: int) -> bytes:
    return f"PROXY TCP4 127.0.0.1 127.0.0.1 {sent.port} {port}\r\n".encode()


# -- what the backend is told ------------------------------------------------------------------
def test_write_proxy_in_a_hitch_config_file_is_v2(daemon, certs):
    """hitch.conf(5)'s write-proxy means PROXY v2, in stud too when it reads hitch's syntax."""
    p = daemon.serve(daemon.config("write-proxy = on\n"), certs["a"], mode="record")
    sent = send(p.port, b"hello")
    assert daemon.received(b"hello") == proxy_v2(sent, p.port) + b"hello"


def test_write_proxy_on_the_command_line(daemon, certs):
    """--write-proxy is PROXY v2 for hitch and v1 for stud (stud 0.3's meaning), which says so
    in a warning: a documented difference, asserted per daemon."""
    p = daemon.serve("--write-proxy", certs["a"], mode="record")
    sent = send(p.port, b"hello")
    if daemon.hitch:
        assert daemon.received(b"hello") == proxy_v2(sent, p.port) + b"hello"
    else:
        assert daemon.received(b"hello") == proxy_v1(sent, p.port) + b"hello"
        assert "write-proxy means PROXY v1 here" in p.output()


def test_write_proxy_v1(daemon, certs):
    p = daemon.serve("--write-proxy-v1", certs["a"], mode="record")
    sent = send(p.port, b"hello")
    assert daemon.received(b"hello") == proxy_v1(sent, p.port) + b"hello"


def test_write_ip(daemon, certs):
    """One octet of address family (AF_INET) and the client's address, network order."""
    p = daemon.serve("--write-ip", certs["a"], mode="record")
    send(p.port, b"hello")
    assert daemon.received(b"hello") == bytes([socket.AF_INET]) + LOCALHOST + b"hello"


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n",
    V2_SIG + bytes.fromhex("21 11 000c c0000201 c6336407 dc04 01bb"),
], ids=["v1", "v2"])
def test_proxy_proxy(daemon, certs, header):
    """A PROXY header the client sends before its ClientHello is passed on as it came."""
    p = daemon.serve("--proxy-proxy", certs["a"], mode="record")
    send(p.port, b"hello", pre=header)
    assert daemon.received(b"hello") == header + b"hello"


# (RFC 7301 wants a no_application_protocol alert instead; neither daemon sends it.)
HITCH_ALPN = ("hitch 1.7 closes a connection whose client offered ALPN protocols, none of them "
              "in alpn-protos, right after the handshake (is_alpn_shutdown_needed); stud "
              "serves it without ALPN")


@pytest.mark.parametrize("offer, chosen", [
    (["http/1.1", "h2"], "h2"), (["http/1.1"], "http/1.1"), (["spdy/3"], None),
], ids=["server-order", "one-shared", "none-shared"])
def test_alpn_protos(daemon, certs, offer, chosen):
    """alpn-protos: the server's order wins; the protocol chosen is in PROXY v2's ALPN TLV
    (the SNI name in its AUTHORITY TLV); a client offering none of them gets none."""
    conf = daemon.config('alpn-protos = "h2,http/1.1"\nwrite-proxy-v2 = on\n')
    p = daemon.serve(conf, certs["a"], mode="record")
    if daemon.hitch and chosen is None:
        with tls_connect(p.port, sni="a.test", ctx=cctx(alpn=offer)) as c:
            assert peer_closes_within(c, T)
        pytest.xfail(HITCH_ALPN)
    sent = send(p.port, b"hello", sni="a.test", ctx=cctx(alpn=offer))
    assert sent.alpn == chosen
    assert daemon.received(b"hello") == proxy_v2(sent, p.port, sni="a.test") + b"hello"


# -- the backend on a UNIX socket --------------------------------------------------------------
@pytest.fixture
def unix_echo() -> Iterator[Path]:
    """An echo server on a UNIX socket the workers can reach as nobody (so not under tmp_path,
    whose parents are root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="hitch-compat-", dir="/tmp"))
    d.chmod(0o755)
    path = d / "echo.sock"
    ls = socket.socket(socket.AF_UNIX)
    ls.bind(str(path))
    path.chmod(0o777)
    ls.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = ls.accept()
            except OSError:
                return  # shut down at the end of the test
            with conn:
                conn.settimeout(T)
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    yield path
    ls.shutdown(socket.SHUT_RDWR)
    ls.close()
    shutil.rmtree(d, ignore_errors=True)


def test_unix_socket_backend(daemon, certs, unix_echo):
    """-b /path/to.sock."""
    with tls_connect(daemon.serve(certs["a"], to=str(unix_echo)).port) as c:
        echo(c, b"over a UNIX socket")


# -- timeouts ----------------------------------------------------------------------------------
def hitch_has_no_timeouts(daemon: Daemon, args: tuple[str, ...]) -> None:
    """hitch 1.7's lexer knows the timeout keys but its grammar has no rule for them (added
    in 1.8.0), nor has its command line an option: both timeouts stay at 30 s."""
    if daemon.hitch:
        r = daemon.run("-t", *args)
        assert r.returncode == 1 and "syntax error" in r.stdout, r.stdout
        pytest.xfail("hitch 1.7 cannot set backend-connect-timeout nor ssl-handshake-timeout "
                     "(a syntax error in its configuration file, no option; 1.8.0 added "
                     "them): its timeouts are 30 s")


def closed_after(sock: socket.socket, limit: float) -> float:
    """Seconds until the daemon closes sock (at most limit)."""
    t0 = time.monotonic()
    assert peer_closes_within(sock, limit), f"still open after {limit} s"
    return time.monotonic() - t0


def test_ssl_handshake_timeout(daemon, certs):
    """A client that starts a ClientHello and never finishes it is closed within
    ssl-handshake-timeout."""
    args = (daemon.config("ssl-handshake-timeout = 1\n"), certs["a"])
    hitch_has_no_timeouts(daemon, args)
    with socket.create_connection(("127.0.0.1", daemon.serve(*args).port), timeout=T) as raw:
        raw.sendall(client_hello()[:20])
        assert 0.8 < closed_after(raw, 5) < 2.5


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A loopback port that never answers a connect: its listening socket's queue is full
    and never accepted from, so the kernel drops SYNs (as a dead host would)."""
    ls = socket.create_server(("127.0.0.1", 0), backlog=0)
    held: list[socket.socket] = []
    while len(held) < 4:
        s = socket.socket()
        s.settimeout(0.3)
        if s.connect_ex(ls.getsockname()) != 0:  # (timed out: the queue is full)
            s.close()
            break
        held.append(s)
    else:
        pytest.skip("the kernel accepts every connect on a full queue")
    yield ls.getsockname()[1]
    for s in [*held, ls]:
        s.close()


def test_backend_connect_timeout(daemon, certs, unanswered_port):
    """A backend that does not answer: the client is closed within backend-connect-timeout
    of connecting (hitch connects before the handshake, stud after it)."""
    args = (daemon.config("backend-connect-timeout = 1\n"), certs["a"])
    hitch_has_no_timeouts(daemon, args)
    p = daemon.serve(*args, to=fe(unanswered_port))
    raw = socket.create_connection(("127.0.0.1", p.port), timeout=T)
    t0 = time.monotonic()
    try:
        with client_ctx().wrap_socket(raw) as c:
            c.sendall(b"hello")
            closed_after(c, 5)
    except (ssl.SSLError, ConnectionError):
        pass  # (closed during the handshake)
    finally:
        raw.close()
    assert 0.8 < time.monotonic() - t0 < 2.5
