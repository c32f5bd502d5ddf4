"""TLS settings and the SNI table, checked with real clients (Python ssl and openssl s_client)."""

from __future__ import annotations

import re
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    client_ctx,
    peer_cn,
    popen_tool,
    run_tool,
    s_client,
    s_client_args,
    tls_connect,
    wait_for,
)


@pytest.fixture
def sni_stud(stud, backend, pki):
    """Four certificates: exact SANs, a CN-only one, a wildcard, and the default (last)."""
    pems = [
        pki.make(["a.example.com", "Alt.Example.com"], cn="ignored-cn.example.com", name="a"),
        pki.make(None, cn="cn-only.example.com", name="cnonly"),
        pki.make(["*.wild.example.com"], cn=None, name="wild"),
        pki.make(["b.wild.example.com"], cn="b", name="exact-in-wild"),
        pki.make(["default.example.com"], name="default-last"),
    ]
    return lambda *extra: stud(*extra, *pems, backend_port=backend("echo"))


@pytest.mark.parametrize("sni, expect", [
    ("a.example.com", "a.example.com,Alt.Example.com"),
    ("A.EXAMPLE.COM", "a.example.com,Alt.Example.com"),       # case-insensitive
    ("alt.example.com", "a.example.com,Alt.Example.com"),     # every SAN counts
    ("ignored-cn.example.com", "default.example.com"),        # SAN wins over CN
    ("cn-only.example.com", "cn-only.example.com"),           # CN when there is no SAN
    ("x.wild.example.com", "*.wild.example.com"),             # one-label wildcard
    ("b.wild.example.com", "b.wild.example.com"),             # exact beats wildcard
    ("a.b.wild.example.com", "default.example.com"),          # not two labels
    ("wild.example.com", "default.example.com"),
    ("unknown.example.org", "default.example.com"),
    (None, "default.example.com"),                            # no SNI: the last PEM
])
def test_sni_table(sni_stud, sni, expect):
    s = sni_stud()
    with tls_connect(s.port, sni=sni) as c:
        assert peer_cn(c) == expect


def test_sni_nomatch_abort(sni_stud):
    s = sni_stud("--sni-nomatch-abort")
    with tls_connect(s.port, sni="a.example.com") as c:
        assert peer_cn(c).startswith("a.example.com")
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        tls_connect(s.port, sni="unknown.example.org")
    with tls_connect(s.port) as c:  # no SNI at all still gets the default
        assert peer_cn(c) == "default.example.com"


def test_one_certificate_logs_any_sni_and_abort_still_refuses(stud, backend, pki):
    """With one certificate no SNI callback runs (the name is read after the handshake),
    yet the name is logged and --sni-nomatch-abort still refuses other names."""
    pem = pki.make(["only.example.com"], name="only")
    s = stud(pem, backend_port=backend("echo"))
    with tls_connect(s.port, sni="Other.Example.org") as c:
        c.sendall(b"x")
        assert c.recv(1) == b"x"
    wait_for(lambda: "sni=Other.Example.org " in s.output())
    strict = stud("--sni-nomatch-abort", pem, backend_port=backend("echo"))
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        tls_connect(strict.port, sni="other.example.org")
    with tls_connect(strict.port, sni="ONLY.example.com") as c:
        assert peer_cn(c) == "only.example.com"


def test_tls12_session_ids_survive_client_resets(stud, backend, pem):
    """Each client closes with a reset. OpenSSL drops the session of a connection freed
    without close_notify, so stud marks it shut down first: every reconnect still resumes
    by session ID (tickets off)."""
    s = stud(pem, backend_port=backend("echo"))
    ctx = client_ctx(maximum_version=ssl.TLSVersion.TLSv1_2)
    ctx.options |= ssl.OP_NO_TICKET
    session, resumed = None, []
    for n in range(1, 7):
        raw = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        with ctx.wrap_socket(raw, session=session) as c:
            c.sendall(b"ping")
            assert c.recv(10) == b"ping"
            resumed.append(c.session_reused)
            session = c.session
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wait_for(lambda n=n: s.output().count("Connection reset by peer") == n, 5)
    assert resumed == [False] + [True] * 5


def test_rsa_key_tls12_with_dh_params_and_ecdhe(stud, backend, pki):
    pem = pki.make(["localhost"], key="rsa", dh=True)
    s = stud(pem, "-c", "DHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384",
             backend_port=backend("echo"))
    out = s_client(s.port, "-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256").output
    assert "Cipher is DHE-RSA-AES128-GCM-SHA256" in out
    out = s_client(s.port, "-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384").output
    assert "Cipher is ECDHE-RSA-AES256-GCM-SHA384" in out


def test_default_protocols_are_tls12_and_tls13(stud, backend, pem):
    s = stud(pem, backend_port=backend("echo"))
    assert "Protocol  : TLSv1.2" in s_client(s.port, "-tls1_2").output
    assert "New, TLSv1.3" in s_client(s.port, "-tls1_3").output
    ctx = client_ctx(minimum_version=ssl.TLSVersion.TLSv1_1,
                     maximum_version=ssl.TLSVersion.TLSv1_1)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        tls_connect(s.port, ctx=ctx)


def test_tls_protos_tls12_only(stud, backend, pem):
    s = stud(pem, "--tls-protos=TLSv1.2", backend_port=backend("echo"))
    with tls_connect(s.port) as c:
        assert c.version() == "TLSv1.2"
    with pytest.raises(ssl.SSLError):
        tls_connect(s.port, ctx=client_ctx(minimum_version=ssl.TLSVersion.TLSv1_3))


def test_ciphersuites_and_ec_curve(stud, backend, pem):
    s = stud(pem, "--ciphersuites=TLS_CHACHA20_POLY1305_SHA256", backend_port=backend("echo"))
    with tls_connect(s.port) as c:
        assert c.cipher()[0] == "TLS_CHACHA20_POLY1305_SHA256"
    # The default groups are Mozilla's intermediate ones: X25519, P-256 and P-384.
    assert "Server Temp Key: ECDH, secp384r1" in s_client(s.port, "-groups", "P-384").output
    assert "X25519" in s_client(s.port, "-groups", "X25519:P-256").output
    s = stud(pem, "--ec-curve=X25519:P-256", backend_port=backend("echo"))
    out = s_client(s.port, "-groups", "P-384").output
    assert "Cipher is (NONE)" in out or "handshake failure" in out


def test_ec_curve_config_key(stud, backend, pem, tmp_path):
    conf = tmp_path / "stud.conf"
    conf.write_text('ec-curve = "secp384r1"\n')
    s = stud(f"--config={conf}", pem, backend_port=backend("echo"))
    assert "Server Temp Key: ECDH, secp384r1" in s_client(s.port, "-groups", "P-384:X25519").output


def test_prefer_server_ciphers(stud, backend, pem):
    order = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256"
    client_order = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"
    s = stud(pem, "-O", "-c", order, backend_port=backend("echo"))
    out = s_client(s.port, "-tls1_2", "-cipher", client_order).output
    assert "Cipher is ECDHE-ECDSA-AES256-GCM-SHA384" in out
    s2 = stud(pem, "-c", order, backend_port=backend("echo"))
    out = s_client(s2.port, "-tls1_2", "-cipher", client_order).output
    assert "Cipher is ECDHE-ECDSA-AES128-GCM-SHA256" in out


def test_client_initiated_renegotiation_is_refused(stud, backend, pem):
    s = stud(pem, backend_port=backend("echo"))
    proc = popen_tool(s_client_args(s.port, "-tls1_2"), stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        time.sleep(1)
        proc.stdin.write(b"R\n")
        proc.stdin.flush()
        time.sleep(1)
        try:
            proc.stdin.write(b"after\n")
            proc.stdin.close()
        except BrokenPipeError:
            pass  # s_client already gave up: the renegotiation was refused
        out = proc.stdout.read()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.decode(errors="replace")
    assert "RENEGOTIATING" in text
    assert re.search(r"no renegotiation|alert|errno|error", text, re.I)
    assert "after\n" not in text.split("RENEGOTIATING", 1)[1]


def test_session_resumption_across_workers_tls13_and_tls12(stud, backend, pem):
    s = stud(pem, backend_port=backend("echo"), workers=2)
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx = client_ctx(maximum_version=version)
        with tls_connect(s.port, ctx=ctx) as c:
            c.sendall(b"x")
            assert c.recv(10) == b"x"  # TLS 1.3 tickets arrive after the handshake
            session = c.session
        reused = 0
        for _ in range(6):
            raw = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            with ctx.wrap_socket(raw, session=session) as c:
                reused += c.session_reused
                c.sendall(b"y")
                assert c.recv(10) == b"y"
        assert reused == 6, version


def test_keepalive_idle_is_applied(stud, backend, pem):
    s = stud(pem, "-k", "77", backend_port=backend("echo"))
    def keepalive_timer() -> str:
        return run_tool(["ss", "-tno", "state", "established", f"( sport = :{s.port} )"],
                        capture_output=True, text=True, timeout=10).stdout

    with tls_connect(s.port) as c:
        c.sendall(b"x")
        assert c.recv(10) == b"x"
        # Right after traffic the kernel may show another timer (delayed ACK, retransmit).
        out = ""
        for _ in range(30):
            out = keepalive_timer()
            if "keepalive" in out or "timer" not in out:
                break
            time.sleep(0.1)
    if "timer" not in out:
        pytest.skip("ss shows no timers here")
    m = re.search(r"keepalive,(?:(\d+)min)?(\d+)sec", out)
    assert m, out
    assert 60 < int(m.group(1) or 0) * 60 + int(m.group(2)) <= 77, out  # not the kernel's 2 h


def served_key(c: ssl.SSLSocket) -> str:
    """The algorithm of the certificate's key the server sent: "rsa" or "ec"."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    cert = x509.load_der_x509_certificate(c.getpeercert(binary_form=True))
    return "rsa" if isinstance(cert.public_key(), rsa.RSAPublicKey) else "ec"


@pytest.mark.parametrize("sni", ["dual.test", None], ids=["by-name", "default"])
@pytest.mark.parametrize("one_file", [False, True], ids=["two-files", "one-file"])
def test_an_rsa_and_an_ecdsa_certificate_for_the_same_names_are_both_served(
        stud, backend, pki, sni, one_file):
    """Both in one context: each client gets the one it supports (before, the first PEM won
    and an RSA-only client failed its handshake)."""
    rsa_pem = pki.make(["dual.test"], key="rsa")
    ec_pem = pki.make(["dual.test"], key="ec")
    other = pki.make(["other.test"])
    pems = [other, rsa_pem, ec_pem] if sni else [other, ec_pem, rsa_pem]
    if one_file:  # both certificates and both keys in one PEM
        both = pki.root / f"both-{sni}.pem"
        both.write_bytes(Path(pems[1]).read_bytes() + Path(pems[2]).read_bytes())
        pems = [other, str(both)]
    s = stud(*pems, backend_port=backend("echo"))
    with tls_connect(s.port, sni=sni) as c:
        assert served_key(c) == "ec"  # (an ordinary client offers ECDSA first)
    rsa_only = client_ctx(maximum_version=ssl.TLSVersion.TLSv1_2)
    rsa_only.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    with tls_connect(s.port, sni=sni, ctx=rsa_only) as c:
        assert served_key(c) == "rsa"
        c.sendall(b"ping")
        assert c.recv(4) == b"ping"
    out = s_client(s.port, *(["-servername", sni] if sni else ["-noservername"]),
                   "-sigalgs", "rsa_pss_rsae_sha256:rsa_pss_pss_sha256").output
    assert "Server public key is 2048 bit" in out and "TLSv1.3" in out, out[-800:]


def test_one_pem_with_two_keys_for_different_names_is_refused(stud, pki):
    a, b = pki.make(["a.two"], key="rsa"), pki.make(["b.two"], key="ec")
    both = pki.root / "two-names.pem"
    both.write_bytes(Path(a).read_bytes() + Path(b).read_bytes())
    s = stud(str(both), wait=False)
    s.proc.wait(timeout=20)
    assert s.proc.returncode != 0
    assert f"pem-file '{both}': its certificates are for different names" in s.output()
