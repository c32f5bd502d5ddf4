"""Reloads: SIGHUP starts a new generation, nothing dropped, broken reloads change nothing;
--reload-on-cert-change does it when a PEM changes."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import time
from pathlib import Path

from helpers import (
    Load,
    client_ctx,
    echo,
    free_port,
    peer_cn,
    read_all,
    tls_connect,
    wait_for,
)


def generations(s) -> int:
    return s.output().count("serving; generation")


def test_ten_sighups_under_load_lose_nothing(stud, backend, pem):
    s = stud(pem, backend_port=backend("echo"), workers=2)
    first = set(wait_for(lambda: len(s.workers()) == 2 and s.workers()))
    with Load(s.port) as load:
        time.sleep(0.5)
        for i in range(10):
            os.kill(s.pid, signal.SIGHUP)
            wait_for(lambda i=i: generations(s) >= i + 1, 15)
            time.sleep(0.3)
        time.sleep(0.5)
    assert load.errors == []
    assert load.ok > 50
    assert s.proc.poll() is None  # the master PID did not change
    assert not first & set(s.workers())


def test_broken_certificate_reload_changes_nothing(stud, backend, pki, tmp_path):
    pem = Path(pki.make(["localhost"], name="reloadme"))
    good = pem.read_bytes()
    s = stud(str(pem), backend_port=backend("echo"))
    workers = s.workers()
    with Load(s.port, threads=4) as load:
        time.sleep(0.3)
        pem.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
        os.kill(s.pid, signal.SIGHUP)
        wait_for(lambda: "reload failed" in s.output())
        time.sleep(0.5)
    assert load.errors == [] and load.ok > 5
    assert f"'{pem}'" in s.output().split("reload failed", 1)[1].splitlines()[0]
    assert s.workers() == workers
    pem.write_bytes(good)  # a later good reload works
    os.kill(s.pid, signal.SIGHUP)
    wait_for(lambda: generations(s) == 1)
    with tls_connect(s.port) as c:
        c.sendall(b"after")
        assert c.recv(10) == b"after"


def test_reload_applies_a_new_backend_and_frontend(stud, backend, pem, tmp_path):
    b1, b2 = backend("echo"), backend("greet")
    p1, p2 = free_port(), free_port()
    conf = tmp_path / "stud.conf"
    conf.write_text(f'backend = "[127.0.0.1]:{b1}"\nfrontend = "[127.0.0.1]:{p1}"\n')
    s = stud(f"--config={conf}", pem, frontend=f"127.0.0.1,{p1}", wait=True)
    s.port = p1
    # The -f given by the fixture comes before --config, so the file's frontend wins.
    with tls_connect(p1) as c:
        c.sendall(b"one")
        assert c.recv(10) == b"one"
    held = tls_connect(p1)  # a connection open across the reload keeps working
    held.sendall(b"held")
    assert held.recv(10) == b"held"
    conf.write_text(f'backend = "[127.0.0.1]:{b2}"\nfrontend = "[127.0.0.1]:{p2}"\n')
    os.kill(s.pid, signal.SIGHUP)
    wait_for(lambda: generations(s) == 1)
    with tls_connect(p2) as c:
        assert c.recv(20) == b"220 hello\r\n"  # the new backend
    held.sendall(b"still")
    assert held.recv(10) == b"still"
    sslsock_close(held)
    wait_for(lambda: "No longer listening" in s.output())
    try:
        tls_connect(p1, timeout=3)
        raise AssertionError("the old frontend still accepts")
    except OSError:
        pass


def sslsock_close(c: ssl.SSLSocket) -> None:
    socket.socket.shutdown(c, socket.SHUT_WR)
    read_all(c)
    c.close()


def test_sessions_resume_across_reload(stud, backend, pem):
    s = stud(pem, backend_port=backend("echo"))
    ctx = client_ctx()
    with tls_connect(s.port, ctx=ctx) as c:
        c.sendall(b"x")
        assert c.recv(10) == b"x"
        session = c.session
    os.kill(s.pid, signal.SIGHUP)
    wait_for(lambda: generations(s) == 1)
    raw = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    with ctx.wrap_socket(raw, session=session) as c:
        assert c.session_reused


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
