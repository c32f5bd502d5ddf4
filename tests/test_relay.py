"""The data path, end to end: real TLS clients -> the real stud -> real backends."""

from __future__ import annotations

import hashlib
import os
import select
import socket
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    client_ctx,
    client_hello,
    close_notify,
    free_port,
    read_all,
    tls_connect,
    wait_for,
)

PATTERN = bytes(range(256)) * 4096  # what backend.py's "reply" mode sends: 1 MiB


@pytest.fixture(autouse=True, params=["compiled", "pure"])
def data_path(request, monkeypatch) -> str:
    """Every test here runs on both data paths: stud/_flow.c's Conn, and relay.Relay, the
    pure-Python fallback that runs where the extension is not built (whatever the suite's
    own STUD_PURE_PYTHON)."""
    if request.param == "pure":
        monkeypatch.setenv("STUD_PURE_PYTHON", "1")
    else:
        monkeypatch.delenv("STUD_PURE_PYTHON", raising=False)
    return request.param


def test_data_path_is_the_one_asked_for(data_path):
    """The extension is built by the normal install, and used unless STUD_PURE_PYTHON=1."""
    code = "from stud import relay; print(relay.Conn)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == {"compiled": "<class 'stud._flow.Conn'>", "pure": "None"}[data_path]


def records(tmp_path: Path, n: int = 1) -> bytes:
    path = tmp_path / f"rec.{n}"
    wait_for(path.exists, 10)
    return path.read_bytes()


def closed_at_next_read(sock: socket.socket) -> bool:
    """True when the next read finds the peer closed: EOF, or a reset because unread input
    was discarded. Data there is False (peer_closes_within() would read past it)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def backend_connections(tmp_path: Path) -> int:
    path = tmp_path / "rec.count"
    return int(path.read_text()) if path.exists() else 0


def test_echo_and_connection_log(stud, backend, pem):
    s = stud(pem, backend_port=backend("echo"))
    with tls_connect(s.port, sni="localhost") as c:
        c.sendall(b"ping")
        assert c.recv(100) == b"ping"
    line = wait_for(lambda: [x for x in s.output().splitlines() if "connection closed" in x])
    assert "client=127.0.0.1:" in line[0] and "tls=TLSv1.3" in line[0]
    assert "up=4 down=4" in line[0] and "sni=localhost" in line[0]


def test_one_mib_each_way_with_checksum(stud, backend, pem):
    s = stud(pem, backend_port=backend("echo"))
    data = os.urandom(1 << 20)
    got = bytearray()
    with tls_connect(s.port) as c:
        # One thread: an SSL object must not be read and written from two threads at once.
        c.setblocking(False)
        sent, deadline = 0, time.monotonic() + 30
        while len(got) < len(data):
            assert time.monotonic() < deadline, f"stalled at {sent} sent, {len(got)} received"
            want_write = [c] if sent < len(data) else []
            readable, writable, _ = select.select([c], want_write, [], 1.0)
            if writable:
                try:
                    sent += c.send(data[sent:sent + 65536])
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    pass
            if readable or c.pending():
                try:
                    chunk = c.recv(65536)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    continue
                assert chunk, "stud closed early"
                got += chunk
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("how", ["fin", "close_notify"])
def test_half_close_reply_is_delivered(stud, backend, pem, how):
    """The client sends its request and closes its sending side; the reply still arrives."""
    s = stud(pem, backend_port=backend("reply"))
    with tls_connect(s.port) as c:
        c.sendall(b"request")
        if how == "fin":
            socket.socket.shutdown(c, socket.SHUT_WR)  # TCP FIN without close_notify
        else:
            close_notify(c)
        got = read_all(c)
    assert got == PATTERN


def test_backend_eof_becomes_close_notify_and_client_may_still_send(stud, backend, pem, tmp_path):
    s = stud(pem, backend_port=backend("greet"))
    with tls_connect(s.port) as c:
        assert c.recv(100) == b"220 hello\r\n"  # the backend speaks first
        c.sendall(b"abc")
        assert c.recv(100) == b"abc"


def test_server_speaks_first(stud, backend, pem):
    s = stud(pem, backend_port=backend("greet"))
    with tls_connect(s.port) as c:
        assert c.recv(100) == b"220 hello\r\n"


def test_backend_down_then_up(stud, backend, pem, tmp_path):
    port = free_port()
    s = stud(pem, backend_port=port)
    with tls_connect(s.port) as c:  # the handshake succeeds...
        assert c.version() == "TLSv1.3"
        assert read_all(c) == b""  # ...then the client is closed
    wait_for(lambda: "backend connect failed: Connection refused" in s.output())
    # the daemon goes on serving
    with socket.create_server(("127.0.0.1", port)) as srv:
        with tls_connect(s.port) as c:
            conn, _ = srv.accept()
            c.sendall(b"x")
            assert conn.recv(10) == b"x"
            conn.close()


def test_handshake_timeout(stud, backend, pem):
    s = stud(pem, "--ssl-handshake-timeout=1", backend_port=backend("echo"))
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        t0 = time.monotonic()
        assert closed_at_next_read(c)
        assert time.monotonic() - t0 < 5
    wait_for(lambda: "handshake timeout" in s.output())
    with tls_connect(s.port) as c:  # still serving
        c.sendall(b"ok")
        assert c.recv(10) == b"ok"


def test_backend_connect_timeout(stud, pem):
    # A listener that never accepts, with its queue full: further SYNs go unanswered.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    fillers = []
    for _ in range(4):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(srv.getsockname())
        fillers.append(f)
    time.sleep(0.2)
    s = stud(pem, "--backend-connect-timeout=1", backend_port=srv.getsockname()[1])
    try:
        with tls_connect(s.port) as c:
            t0 = time.monotonic()
            assert read_all(c) == b""
            assert 0.5 < time.monotonic() - t0 < 6
        wait_for(lambda: "backend connect timeout" in s.output())
    finally:
        for f in fillers:
            f.close()
        srv.close()


def _send_and_record(s, tmp_path, host="127.0.0.1", sni=None) -> bytes:
    with tls_connect(s.port, host=host, sni=sni) as c:
        c.sendall(b"hello")
        close_notify(c)
        assert read_all(c) == b"OK\n"
    return records(tmp_path)


def test_write_ip_ipv4(stud, backend, pem, tmp_path):
    s = stud(pem, "--write-ip", backend_port=backend("record"))
    assert _send_and_record(s, tmp_path) == b"\x02\x7f\x00\x00\x01hello"
    # The log counts the client's bytes: the header stud wrote is not among them.
    wait_for(lambda: "up=5 down=3 " in s.output())


def test_write_ip_ipv6(stud, backend, pem, tmp_path):
    port = free_port(socket.AF_INET6)
    s = stud(pem, "--write-ip", backend_port=backend("record"), frontend=f"[::1]:{port}")
    s.port = port
    got = _send_and_record(s, tmp_path, host="::1")
    assert got == b"\x0a" + b"\x00" * 15 + b"\x01" + b"hello"


def test_write_proxy_v1_ipv4(stud, backend, pem, tmp_path):
    s = stud(pem, "--write-proxy", backend_port=backend("record"))
    got = _send_and_record(s, tmp_path)
    line, rest = got.split(b"\r\n", 1)
    parts = line.split(b" ")
    assert parts[:4] == [b"PROXY", b"TCP4", b"127.0.0.1", b"127.0.0.1"]
    assert int(parts[5]) == s.port and 1024 <= int(parts[4]) <= 65535
    assert rest == b"hello"


def test_write_proxy_v1_ipv6(stud, backend, pem, tmp_path):
    port = free_port(socket.AF_INET6)
    s = stud(pem, "--write-proxy-v1", backend_port=backend("record"), frontend=f"[::1]:{port}")
    s.port = port
    got = _send_and_record(s, tmp_path, host="::1")
    assert got.startswith(b"PROXY TCP6 ::1 ::1 ") and got.endswith(f" {port}\r\nhello".encode())


def _parse_v2(got: bytes) -> tuple[int, int, bytes, dict]:
    assert got[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
    ver_cmd, fam, length = got[12], got[13], struct.unpack("!H", got[14:16])[0]
    assert ver_cmd == 0x21
    body, rest = got[16:16 + length], got[16 + length:]
    alen = {0x11: 12, 0x21: 36}[fam]
    tlvs, i = {}, alen
    while i < len(body):
        t, n = body[i], struct.unpack("!H", body[i + 1:i + 3])[0]
        tlvs[t] = body[i + 3:i + 3 + n]
        i += 3 + n
    return fam, alen, body[:alen] + b"|" + rest, tlvs


def test_write_proxy_v2_ipv4_with_tlvs(stud, backend, pem, tmp_path):
    s = stud("--write-proxy-v2", "--alpn-protos=h2,http/1.1", pem,
             backend_port=backend("record"))
    ctx = client_ctx()
    ctx.set_alpn_protocols(["http/1.1", "h2"])
    with tls_connect(s.port, sni="stud.test", ctx=ctx) as c:
        assert c.selected_alpn_protocol() == "h2"  # server order wins
        cipher = c.cipher()[0]
        c.sendall(b"hello")
        close_notify(c)
        assert read_all(c) == b"OK\n"
    fam, alen, addrs, tlvs = _parse_v2(records(tmp_path))
    assert fam == 0x11
    assert addrs[:8] == socket.inet_aton("127.0.0.1") * 2
    assert struct.unpack("!H", addrs[10:12])[0] == s.port
    assert addrs.endswith(b"|hello")
    assert tlvs[0x01] == b"h2" and tlvs[0x02] == b"stud.test"
    ssl_tlv = tlvs[0x20]
    assert ssl_tlv[0] == 0x01
    assert b"\x21\x00\x07TLSv1.3" in ssl_tlv and cipher.encode() in ssl_tlv


def test_write_proxy_v2_ipv6(stud, backend, pem, tmp_path):
    port = free_port(socket.AF_INET6)
    s = stud(pem, "--write-proxy-v2", backend_port=backend("record"), frontend=f"[::1]:{port}")
    s.port = port
    fam, alen, addrs, tlvs = _parse_v2(_send_and_record(s, tmp_path, host="::1"))
    loop6 = socket.inet_pton(socket.AF_INET6, "::1")
    assert fam == 0x21 and addrs[:32] == loop6 * 2
    assert struct.unpack("!H", addrs[34:36])[0] == port
    assert 0x02 not in tlvs  # no SNI sent, no AUTHORITY


def _proxy_client(port: int, header_parts: list[bytes], delay: float = 0.3) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    for i, part in enumerate(header_parts):
        if i:
            time.sleep(delay)
        raw.sendall(part)
    return client_ctx().wrap_socket(raw)


@pytest.mark.parametrize("parts", [
    [b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 443\r\n"],
    [b"PROXY TCP4 203.0.113.7 19", b"2.0.2.1 40000 443\r\n"],  # split across segments
    [b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([203, 0, 113, 7, 192, 0, 2, 1])
     + b"\x9c\x40\x01\xbb"],
    [b"\r\n\r\n\x00\r\nQUIT\n\x21\x11", b"\x00\x0c" + bytes([203, 0, 113, 7, 192, 0, 2, 1])
     + b"\x9c\x40\x01\xbb"],
], ids=["v1", "v1-split", "v2", "v2-split"])
def test_proxy_proxy_passes_header_byte_for_byte(stud, backend, pem, tmp_path, parts):
    s = stud(pem, "--proxy-proxy", backend_port=backend("record"))
    with _proxy_client(s.port, parts) as c:
        c.sendall(b"hello")
        close_notify(c)
        assert read_all(c) == b"OK\n"
    assert records(tmp_path) == b"".join(parts) + b"hello"


@pytest.mark.parametrize("garbage", [
    b"garbage!\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", b"PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n",
], ids=["garbage", "bare-lf", "bad-address"])
def test_proxy_proxy_rejects_bad_headers(stud, backend, pem, tmp_path, garbage):
    s = stud(pem, "--proxy-proxy", backend_port=backend("record"))
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw:
        raw.sendall(garbage)
        assert closed_at_next_read(raw)
    wait_for(lambda: "bad PROXY header" in s.output())
    # no header at all: the ClientHello is not a PROXY header either
    with pytest.raises((ssl.SSLError, OSError)):
        tls_connect(s.port).recv(1)
    time.sleep(0.3)
    assert backend_connections(tmp_path) == 0
    with _proxy_client(s.port, [b"PROXY UNKNOWN\r\n"]) as c:  # still serving
        c.sendall(b"x")
        close_notify(c)
        assert read_all(c) == b"OK\n"


def test_failed_handshakes_are_named_alike_on_both_paths(stud, backend, pem):
    """The compiled handshake step raises no exception per would-block; its failures must
    still read as the stdlib names them (log reason and metric label)."""
    s = stud(pem, "--log-level=debug", backend_port=backend("echo"))
    hello = client_hello(sni=None)

    def failures() -> list[str]:
        return [ln.split("reason=")[1] for ln in s.output().splitlines()
                if "handshake failed" in ln]

    for n, (data, reset) in enumerate([(b"GET / HTTP/1.0\r\n\r\n", False),
                                       (b"\x16\x03\x01\x00\x05hello", False),
                                       (hello[:50], False), (hello[:50], True)], 1):
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            c.sendall(data)
            if reset:  # close with an RST instead of a FIN
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            time.sleep(0.2)  # the partial ClientHello is read before the close
        wait_for(lambda n=n: len(failures()) == n, 5)
    assert failures() == ['"handshake failed: TLS error: HTTP_REQUEST"',
                          '"handshake failed: TLS error: UNEXPECTED_MESSAGE"',
                          '"handshake failed: closed the connection"',
                          '"handshake failed: Connection reset by peer"']


def test_client_mode(stud, backend, pem):
    """Plain client -> stud --client -> stud (TLS) -> echo backend."""
    server = stud(pem, backend_port=backend("echo"))
    client = stud("--client", backend_port=server.port)
    with socket.create_connection(("127.0.0.1", client.port), timeout=10) as c:
        c.sendall(b"through two studs")
        assert c.recv(100) == b"through two studs"
        c.shutdown(socket.SHUT_WR)
        assert read_all(c) == b""
    wait_for(lambda: "connection closed" in server.output())
