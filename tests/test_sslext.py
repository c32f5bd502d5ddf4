"""Real-TLS tests for stud.sslext (no mocks): local servers on 127.0.0.1, Python and
``openssl s_client`` clients, every wait bounded."""

from __future__ import annotations

import fcntl
import ipaddress
import os
import select
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import termios
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import ToolRun, s_client, server_ctx, tls_pair

from stud import sslext

T = 10.0  # upper bound for any single wait
ROOT = Path(__file__).resolve().parents[1]
VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Self-signed ECDSA P-256 cert for localhost/127.0.0.1: (cert.pem, key.pem)."""
    d = tmp_path_factory.mktemp("certs")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return d / "cert.pem", d / "key.pem"


def client_ctx(certs: tuple[Path, Path], version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(certs[0])
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def against_s_client(sctx: ssl.SSLContext, certs: tuple[Path, Path],
                     *args: str) -> tuple[ToolRun, object]:
    """Run `openssl s_client` against a one-connection server thread.
    Returns (process, server outcome: (version, cipher) or the server-side exception)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    ls = socket.create_server(("127.0.0.1", 0))
    ls.settimeout(T)
    box: dict[str, object] = {}

    def serve() -> None:
        try:
            conn, _ = ls.accept()
            conn.settimeout(T)
            with sctx.wrap_socket(conn, server_side=True) as s:
                box["r"] = (s.version(), s.cipher()[0])
                while s.recv(1024):  # until s_client goes away
                    pass
        except OSError as e:  # includes ssl.SSLError
            box.setdefault("r", e)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        proc = s_client(ls.getsockname()[1], "-servername", "localhost", "-CAfile",
                        str(certs[0]), "-brief", *args, timeout=T)
    finally:
        t.join(T)
        ls.close()
    assert not t.is_alive()
    return proc, box.get("r")


def queue_is_clean() -> bool:
    return sslext._F["ERR_get_error"]() == 0


def test_import_checks() -> None:
    assert sslext.openssl_version() == ssl.OPENSSL_VERSION
    sslext._selfcheck()


# (1) groups
def test_set_groups(certs: tuple[Path, Path]) -> None:
    sctx = server_ctx(*certs)
    sslext.set_groups(sctx, "P-256")
    proc, res = against_s_client(sctx, certs, "-groups", "X25519")
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "handshake failure" in proc.stderr
    assert isinstance(res, ssl.SSLError), res
    proc, res = against_s_client(sctx, certs, "-groups", "P-256")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Server Temp Key: ECDH, prime256v1" in proc.stdout + proc.stderr
    assert res == ("TLSv1.3", "TLS_AES_256_GCM_SHA384")
    # Without the restriction X25519 works, so the failure above is set_groups' doing.
    proc, _ = against_s_client(server_ctx(*certs), certs, "-groups", "X25519")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_set_groups_invalid(certs: tuple[Path, Path]) -> None:
    ctx = server_ctx(*certs)
    for bad in ("foo", "X25519:foo", ""):
        with pytest.raises(ValueError, match="invalid groups list"):
            sslext.set_groups(ctx, bad)
        assert queue_is_clean()
    with pytest.raises(ValueError, match="embedded NUL"):
        sslext.set_groups(ctx, "P-256\0junk")
    with pytest.raises(ValueError, match="passed invalid argument"):
        sslext.set_groups(ctx, "foo")
    s, c = tls_pair(ctx, client_ctx(certs))  # context still fully usable
    s.close()
    c.close()


# (2) TLS 1.3 ciphersuites
def test_set_ciphersuites(certs: tuple[Path, Path]) -> None:
    sctx = server_ctx(*certs)
    sslext.set_ciphersuites(sctx, "TLS_CHACHA20_POLY1305_SHA256")
    s, c = tls_pair(sctx, client_ctx(certs, ssl.TLSVersion.TLSv1_3))
    with s, c:
        assert c.version() == "TLSv1.3"
        assert c.cipher()[0] == s.cipher()[0] == "TLS_CHACHA20_POLY1305_SHA256"
    proc, res = against_s_client(sctx, certs, "-ciphersuites", "TLS_AES_128_GCM_SHA256")
    assert proc.returncode != 0 and isinstance(res, ssl.SSLError)


def test_set_ciphersuites_invalid(certs: tuple[Path, Path]) -> None:
    ctx = server_ctx(*certs)
    sslext.set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256")
    before = [c["name"] for c in ctx.get_ciphers()]
    # OpenSSL itself would accept the second one, silently dropping "bogus".
    for bad in ("foo", "TLS_AES_256_GCM_SHA384:bogus", "AES128-SHA"):
        with pytest.raises(ValueError, match="invalid TLS 1.3 ciphersuites"):
            sslext.set_ciphersuites(ctx, bad)
        assert queue_is_clean()
        assert [c["name"] for c in ctx.get_ciphers()] == before  # unchanged
    ctx.set_ciphers("ECDHE+AESGCM")  # following stdlib calls are not confused
    s, c = tls_pair(ctx, client_ctx(certs))
    with s, c:
        assert c.cipher()[0] == "TLS_AES_128_GCM_SHA256"


# (3) half-close: shutdown_once() sends our close_notify and reads nothing
def half_close(sock: ssl.SSLSocket | ssl.SSLObject) -> None:
    sslext.shutdown_once(sslext.ssl_pointer(sock._sslobj))


@pytest.mark.parametrize("version", VERSIONS)
def test_shutdown_once_half_closes(certs: tuple[Path, Path], version: ssl.TLSVersion) -> None:
    s, c = tls_pair(server_ctx(*certs), client_ctx(certs, version))
    with s, c:
        s.sendall(b"hello")
        s.setblocking(False)  # as the relay uses it: non-blocking, after the handshake
        half_close(s)
        s.settimeout(T)
        assert c.recv(100) == b"hello"
        assert c.recv(100) == b""  # the peer sees a clean TLS EOF
        c.sendall(b"late data")  # ... and may keep talking
        c.sendall(b" and more")
        c.unwrap()  # client's close_notify (ours already arrived: no read needed)
        got, buf = b"", bytearray(64)
        with pytest.raises(ssl.SSLZeroReturnError):  # (the end, as the relay sees it)
            while n := s.recv_into(buf):
                got += buf[:n]
                assert len(got) <= 18
        assert got == b"late data and more"


def test_shutdown_once_before_handshake(certs: tuple[Path, Path]) -> None:
    obj = server_ctx(*certs).wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    with pytest.raises(ssl.SSLError, match="shutdown while in init") as info:
        half_close(obj)
    assert (info.value.library, info.value.reason) == ("SSL", "SHUTDOWN_WHILE_IN_INIT")
    assert queue_is_clean()


def _outq(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


@pytest.mark.skipif(sys.platform != "linux", reason="AF_UNIX SIOCOUTQ accounting is Linux's")
def test_shutdown_once_want_write(certs: tuple[Path, Path]) -> None:
    """Full send buffer: SSLWantWriteError, then a retry when writable completes the close."""
    a, b = socket.socketpair()
    a.settimeout(T)
    b.settimeout(T)
    go, got = threading.Event(), []

    def client() -> None:
        with client_ctx(certs).wrap_socket(b, server_hostname="localhost") as c:
            go.wait(T)
            data = b""
            while chunk := c.recv(65536):
                data += chunk
            got.append(data)
            c.sendall(b"bye")
            c.unwrap()

    t = threading.Thread(target=client, daemon=True)
    t.start()
    try:
        with server_ctx(*certs).wrap_socket(a, server_side=True) as s:
            s.setblocking(False)
            # AF_UNIX: SIOCOUTQ is sk_wmem_alloc, and small writes are all-or-nothing, so we
            # stop right after a *complete* record fills the buffer (no partial SSL_write).
            sndbuf, sent = s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF), 0
            while _outq(s) < sndbuf and sent < 1 << 24:
                sent += s.send(b"x" * 100)
            with pytest.raises(ssl.SSLWantWriteError) as info:
                half_close(s)
            assert info.value.reason is None  # attributes exist, as on stdlib errors
            go.set()
            deadline = time.monotonic() + T
            while True:
                assert time.monotonic() < deadline
                select.select([], [s], [], 1.0)
                try:
                    half_close(s)  # again: it goes on sending the alert
                    break
                except ssl.SSLWantWriteError:
                    continue
            s.settimeout(T)
            assert s.recv(10) == b"bye"
            with pytest.raises(ssl.SSLZeroReturnError):
                s.recv(10)
    finally:
        go.set()
        t.join(T)
    assert not t.is_alive()
    assert got == [b"x" * sent]


def test_shutdown_once_sslobject(certs: tuple[Path, Path]) -> None:
    """Same half-close over memory BIOs (what asyncio-style transports use)."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server_ctx(*certs).wrap_bio(s_in, s_out, server_side=True)
    cli = client_ctx(certs).wrap_bio(c_in, c_out, server_hostname="localhost")

    def pump() -> None:
        c_in.write(s_out.read())
        s_in.write(c_out.read())

    for _ in range(10):
        pending = False
        for obj in (cli, srv):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pending = True
        pump()
        if not pending:
            break
    srv.write(b"hello")
    half_close(srv)
    assert s_out.pending == 27 + 24  # TLS 1.3 records: "hello" (5+5+1+16) + alert (5+2+1+16)
    pump()
    assert cli.read(100) == b"hello"
    assert cli.read(100) == b""
    cli.write(b"late")
    cli.unwrap()
    pump()
    assert srv.read(100) == b"late"
    with pytest.raises(ssl.SSLZeroReturnError):
        srv.read(100)


# (4) session ticket keys
def _connect(sctx: ssl.SSLContext, cctx: ssl.SSLContext,
             session: ssl.SSLSession | None = None) -> tuple[ssl.SSLSession, bool]:
    s, c = tls_pair(sctx, cctx, session=session)
    with s, c:
        s.sendall(b"x")  # TLS 1.3 tickets arrive after the handshake: read to process them
        assert c.recv(1) == b"x"
        return c.session, c.session_reused


def _resumed(cctx: ssl.SSLContext, a: ssl.SSLContext, b: ssl.SSLContext) -> bool:
    """Full handshake on server A, then try to resume that session on server B."""
    session, reused = _connect(a, cctx)
    assert not reused and session.has_ticket
    return _connect(b, cctx, session)[1]


@pytest.mark.parametrize("version", VERSIONS)
def test_ticket_keys_shared(certs: tuple[Path, Path], version: ssl.TLSVersion) -> None:
    keys = os.urandom(80)
    a, b, other = server_ctx(*certs), server_ctx(*certs), server_ctx(*certs)
    sslext.set_ticket_keys(a, keys)
    assert sslext.get_ticket_keys(a) == keys
    assert sslext.get_ticket_keys(b) != keys  # fresh contexts get random keys
    sslext.set_ticket_keys(b, sslext.get_ticket_keys(a))  # what a reload does
    cctx = client_ctx(certs, version)
    assert _resumed(cctx, a, b) is True
    assert _resumed(cctx, a, other) is False  # different keys: full handshake, still works


def test_ticket_keys_length(certs: tuple[Path, Path]) -> None:
    ctx = server_ctx(*certs)
    for bad in (b"", os.urandom(48), os.urandom(81)):
        with pytest.raises(ValueError, match="exactly 80 bytes"):
            sslext.set_ticket_keys(ctx, bad)


# (5) engines
def test_load_engine_missing() -> None:
    with pytest.raises(ValueError, match="OpenSSL engine 'nonexistent' not available: "):
        sslext.load_engine("nonexistent")
    assert queue_is_clean()


def test_load_engine_auto() -> None:
    # In a subprocess: registering engines changes process-wide OpenSSL defaults.
    code = "from stud import sslext; sslext.load_engine('auto'); print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=T)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# (6) pointer/type checks
def test_wrong_types(certs: tuple[Path, Path]) -> None:
    with socket.socket() as plain:
        for fn, arg in ((sslext.set_groups, "P-256"), (sslext.set_ciphersuites, "x"),
                        (sslext.set_ticket_keys, bytes(80))):
            for wrong in (object(), plain, None):
                with pytest.raises(TypeError):
                    fn(wrong, arg)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            sslext.get_ticket_keys(plain)  # type: ignore[arg-type]
        for wrong in (object(), plain, server_ctx(*certs)):
            with pytest.raises(TypeError):
                sslext.ssl_pointer(wrong)  # type: ignore[arg-type]
