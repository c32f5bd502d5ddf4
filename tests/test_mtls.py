"""Client certificates (mTLS): verification in three modes, CRLs read again while serving,
per-frontend and per-certificate settings, the client's identity in the log and the metrics;
checked with openssl s_client, curl and Python clients presenting real certificates."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import sys
import time
from datetime import timedelta
from pathlib import Path

import client_pki
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from helpers import (
    Proc,
    client_ctx,
    close_notify,
    conn_lines,
    free_port,
    read_all,
    recv_exact,
    run_tool,
    s_client,
    scrape,
    tls_connect,
    tool_env,
    wait_for,
)
from ocsp_pki import utcnow

from stud import proxyproto


@pytest.fixture(scope="module")
def cpki(tmp_path_factory: pytest.TempPathFactory) -> client_pki.ClientPKI:
    """One PKI for the tests that only read it, plus "badsig": the good client's certificate
    with one bit of its signature flipped."""
    pki = client_pki.make(tmp_path_factory.mktemp("client-pki"))
    der = bytearray(pki.good.cert.public_bytes(Encoding.DER))
    der[-1] ^= 0x01
    pki.path("badsig", ".crt").write_bytes(
        x509.load_der_x509_certificate(bytes(der)).public_bytes(Encoding.PEM))
    pki.path("badsig", ".key").write_bytes(pki.path("good", ".key").read_bytes())
    return pki


def as_client(pki: client_pki.ClientPKI, name: str | None, **kw: object) -> ssl.SSLContext:
    """A Python client presenting pki's client certificate name (None: none)."""
    ctx = client_ctx(**kw)
    if name:
        ctx.load_cert_chain(pki.path(name, ".crt"), pki.path(name, ".key"))
    return ctx


def round_trip(port: int, ctx: ssl.SSLContext, sni: str | None = None) -> bytes | ssl.SSLError:
    """What an echo backend sends back through stud, or the TLS error the client got (in TLS
    1.3 the server refuses a certificate after the client's side of the handshake is done:
    the alert comes with the first read)."""
    try:
        with tls_connect(port, sni=sni, ctx=ctx) as c:
            c.sendall(b"ping")
            return recv_exact(c, 4)
    except ssl.SSLError as e:
        return e


def verify_args(pki: client_pki.ClientPKI, mode: str = "required", *crls: Path) -> list[str]:
    return [f"--client-verify={mode}", f"--client-verify-ca={pki.ca_bundle}",
            *(f"--client-verify-crl={c}" for c in crls)]


# What OpenSSL tells a client refused on its certificate, and what stud logs (TLS 1.3).
REFUSED = {
    "expired": ("CERTIFICATE_EXPIRED", "certificate has expired"),
    "revoked": ("CERTIFICATE_REVOKED", "certificate revoked"),
    "selfsigned": ("UNKNOWN_CA", "self-signed certificate"),
    "other": ("UNKNOWN_CA", "unable to get local issuer certificate"),
    "badsig": ("DECRYPT_ERROR", "certificate signature failure"),
}


@pytest.mark.parametrize("mode", ["required", "optional"])
@pytest.mark.parametrize("name", ["good", "expired", "revoked", "selfsigned", "other", "badsig",
                                  None])
def test_each_client_certificate_in_each_mode(stud, backend, pem, cpki, mode, name):
    s = stud(*verify_args(cpki, mode, cpki.crls), pem, backend_port=backend("echo"))
    got = round_trip(s.port, as_client(cpki, name))
    if name == "good" or (name is None and mode == "optional"):
        assert got == b"ping"
        line = wait_for(lambda: conn_lines(s.output()))[0]
        if name:
            assert line["client_cert"] == "CN=client.example,O=Example"
            assert line["client_uri"] == client_pki.CLIENT_URI
            assert line["client_serial"] == f"{cpki.good.cert.serial_number:x}"
        else:
            assert line["client_cert"] == "-"
        return
    alert, why = REFUSED.get(name, ("CERTIFICATE_REQUIRED", "no certificate"))
    assert isinstance(got, ssl.SSLError) and alert in str(got), got
    line = wait_for(lambda: conn_lines(s.output()))[0]
    assert line["reason"] == f"client certificate refused: {why}"
    assert line["up"] == "0" and line["tls"] == "-"


def test_refusals_are_logged_at_the_default_level(stud, backend, pem, cpki):
    s = stud(*verify_args(cpki), "-L", "info", pem, backend_port=backend("echo"))
    assert round_trip(s.port, as_client(cpki, "good")) == b"ping"
    assert isinstance(round_trip(s.port, as_client(cpki, "other")), ssl.SSLError)
    wait_for(lambda: "refused" in s.output())
    lines = conn_lines(s.output())
    assert [ln["reason"] for ln in lines] == [
        "client certificate refused: unable to get local issuer certificate"]


def test_none_asks_for_no_certificate(stud, backend, pem, cpki):
    s = stud("--client-verify=none", f"--client-verify-ca={cpki.ca_bundle}", pem,
             backend_port=backend("echo"))
    assert "No client certificate CA names sent" in s_client(s.port, "-tls1_2").output
    assert round_trip(s.port, as_client(cpki, "selfsigned")) == b"ping"  # (never asked for)
    assert "client_cert" not in s.output()


def test_the_certificate_request_names_the_accepted_cas(stud, backend, pem, cpki):
    s = stud(*verify_args(cpki, "optional"), pem, backend_port=backend("echo"))
    out = s_client(s.port, "-tls1_2").output
    names = out.split("Acceptable client certificate CA names", 1)[1].splitlines()[1:3]
    assert names == ["CN = stud test client root CA", "CN = stud test client intermediate CA"]


def test_openssl_s_client_and_curl(stud, backend, pem, cpki):
    s = stud(*verify_args(cpki, "required", cpki.crls), pem, backend_port=backend("echo"))
    good = run_tool(["curl", "-sk", "--http0.9", "--max-time", "3",  # (echo: no end)
                     "--cert", str(cpki.path("good", ".crt")), "--key",
                     str(cpki.path("good", ".key")), f"https://127.0.0.1:{s.port}/x"],
                    capture_output=True, text=True, timeout=20)
    assert good.stdout.startswith("GET /x HTTP/1.1"), good
    revoked = run_tool(["curl", "-sSk", "--max-time", "10", "--cert", str(cpki.client("revoked")),
                        f"https://127.0.0.1:{s.port}/"], capture_output=True, text=True,
                       timeout=20)
    assert revoked.returncode != 0 and "certificate revoked" in revoked.stderr, revoked
    out = s_client(s.port, "-cert", str(cpki.path("good", ".crt")), "-key",
                   str(cpki.path("good", ".key")), "-tls1_2").output
    assert "Cipher is ECDHE" in out, out
    lines = wait_for(lambda: len(conn_lines(s.output())) == 3 and conn_lines(s.output()))
    assert [ln["client_cert"] for ln in lines] == ["CN=client.example,O=Example", "-",
                                                   "CN=client.example,O=Example"]


@pytest.mark.parametrize("name", ["good", "expired", "revoked", "selfsigned", None])
def test_curl_and_s_client_with_each_certificate(stud, backend, pem, cpki, name):
    """The same verdicts with the two command-line clients operators test with: curl (TLS 1.3)
    and openssl s_client (TLS 1.2, where the refusal ends the handshake itself)."""
    s = stud(*verify_args(cpki, "required", cpki.crls), pem, backend_port=backend("echo"))
    cert = ["--cert", str(cpki.path(name, ".crt")), "--key", str(cpki.path(name, ".key"))] \
        if name else []
    curl = run_tool(["curl", "-sSk", "--http0.9", "--max-time", "3", *cert,
                     f"https://127.0.0.1:{s.port}/"], capture_output=True, text=True, timeout=20)
    args = ["-cert", str(cpki.path(name, ".crt")), "-key", str(cpki.path(name, ".key"))] \
        if name else []
    out = s_client(s.port, *args, "-tls1_2").output
    if name == "good":
        assert curl.stdout.startswith("GET / HTTP/1.1"), curl
        assert "Cipher is ECDHE" in out and " alert " not in out, out
        return
    alert = {"expired": "certificate expired", "revoked": "certificate revoked",
             "selfsigned": "unknown ca", None: "handshake failure"}[name]
    assert curl.returncode not in (0, 28) and curl.stdout == "", curl
    assert f"alert {alert}" in out, out


def test_tls12_resumption_keeps_the_identity(stud, backend, pem, cpki):
    """A resumed session carries the client certificate it was made with."""
    s = stud(*verify_args(cpki), pem, backend_port=backend("echo"))
    ctx = as_client(cpki, "good", maximum_version=ssl.TLSVersion.TLSv1_2)
    with tls_connect(s.port, ctx=ctx) as c:
        c.sendall(b"ping")
        recv_exact(c, 4)
        session = c.session
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", s.port), timeout=10),
                         session=session) as c:
        c.sendall(b"ping")
        assert recv_exact(c, 4) == b"ping"
        assert c.session_reused
    lines = wait_for(lambda: len(conn_lines(s.output())) == 2 and conn_lines(s.output()))
    assert [ln["resumed"] for ln in lines] == ["0", "1"]
    assert lines[1]["client_sha256"] == lines[0]["client_sha256"] != "-"


def test_a_changed_crl_file_applies_without_a_reload(stud, backend, pem, tmp_path):
    pki = client_pki.make(tmp_path / "pki")
    pki.write_crls(inter_revoked=[])  # nobody revoked yet
    s = stud(*verify_args(pki, "required", pki.crls), pem, backend_port=backend("echo"))
    workers = s.workers()
    assert round_trip(s.port, as_client(pki, "revoked")) == b"ping"
    time.sleep(1.1)  # (a file's mtime is all that changes: let the clock move on)
    pki.write_crls(inter_revoked=[pki.revoked.cert.serial_number], number=2)
    wait_for(lambda: isinstance(round_trip(s.port, as_client(pki, "revoked")), ssl.SSLError),
             timeout=10, step=0.2)
    assert "CERTIFICATE_REVOKED" in str(round_trip(s.port, as_client(pki, "revoked")))
    assert round_trip(s.port, as_client(pki, "good")) == b"ping"
    assert s.workers() == workers  # no reload, no new worker
    assert "2 CRL(s) now in use" in s.output()


def test_a_bad_crl_file_keeps_the_last_good_one(stud, backend, pem, tmp_path):
    pki = client_pki.make(tmp_path / "pki")
    s = stud(*verify_args(pki, "required", pki.crls), pem, backend_port=backend("echo"))
    time.sleep(1.1)
    pki.crls.write_bytes(b"-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n")
    wait_for(lambda: "keeping the CRLs last read" in s.output(), timeout=10)
    assert "CERTIFICATE_REVOKED" in str(round_trip(s.port, as_client(pki, "revoked")))
    assert round_trip(s.port, as_client(pki, "good")) == b"ping"
    assert s.proc.poll() is None


def test_an_expired_crl_refuses_the_clients_it_covers(stud, backend, pem, tmp_path):
    """Fail closed: past its nextUpdate a CRL says nothing, and the clients it covers are
    refused until a newer one is read (logged once, at start)."""
    pki = client_pki.make(tmp_path / "pki")
    past = utcnow() - timedelta(days=1)
    pki.write_crls(this_update=past - timedelta(days=1), next_update=past)
    s = stud(*verify_args(pki, "required", pki.crls), pem, backend_port=backend("echo"))
    assert "expired at" in s.output() and "its clients are refused" in s.output()
    got = round_trip(s.port, as_client(pki, "good"))
    assert isinstance(got, ssl.SSLError)
    wait_for(lambda: conn_lines(s.output()))
    assert conn_lines(s.output())[0]["reason"] == "client certificate refused: CRL has expired"


def test_crl_check_leaf_or_chain(stud, backend, pem, cpki):
    """chain (the default) needs a CRL from every CA of the chain; leaf only the client's."""
    chain = stud(*verify_args(cpki, "required", cpki.inter_crl), pem,
                 backend_port=backend("echo"))
    assert "no CRL of 'CN=stud test client root CA'" in chain.output()  # (said at start)
    assert isinstance(round_trip(chain.port, as_client(cpki, "good")), ssl.SSLError)
    wait_for(lambda: conn_lines(chain.output()))
    assert conn_lines(chain.output())[0]["reason"] == \
        "client certificate refused: unable to get certificate CRL"
    leaf = stud(*verify_args(cpki, "required", cpki.inter_crl),
                "--client-verify-crl-check=leaf", pem, backend_port=backend("echo"))
    assert round_trip(leaf.port, as_client(cpki, "good")) == b"ping"
    assert "CERTIFICATE_REVOKED" in str(round_trip(leaf.port, as_client(cpki, "revoked")))


def test_der_crls_and_several_files(stud, backend, pem, tmp_path):
    pki = client_pki.make(tmp_path / "pki")
    inter = tmp_path / "inter.der"
    client_pki.crl(pki.inter, [pki.revoked.cert.serial_number], path=inter, fmt="der")
    s = stud(*verify_args(pki, "required", inter, pki.root_crl), pem,
             backend_port=backend("echo"))
    assert round_trip(s.port, as_client(pki, "good")) == b"ping"
    assert "CERTIFICATE_REVOKED" in str(round_trip(s.port, as_client(pki, "revoked")))


def frontend_block(port: int, pem: str, **settings: str) -> str:
    inner = "".join(f'  {k} = "{v}"\n' for k, v in settings.items())
    return (f'frontend = {{\n  host = "127.0.0.1"\n  port = "{port}"\n'
            f'  pem-file = "{pem}"\n{inner}}}\n')


def test_per_frontend_client_verify_in_hitch_syntax(stud, backend, pem, cpki, tmp_path):
    strict, open_ = free_port(), free_port()
    conf = tmp_path / "hitch.conf"
    conf.write_text(frontend_block(strict, pem, **{"client-verify": "required",
                                                    "client-verify-ca": str(cpki.ca_bundle)})
                    + frontend_block(open_, pem))
    stud(f"--config={conf}", pem, backend_port=backend("echo"))
    assert "CERTIFICATE_REQUIRED" in str(round_trip(strict, as_client(cpki, None)))
    assert round_trip(strict, as_client(cpki, "good")) == b"ping"
    assert round_trip(open_, as_client(cpki, None)) == b"ping"


def test_per_certificate_client_verify_follows_the_sni_name(stud, backend, pki, cpki,
                                                            tmp_path):
    """hitch 1.8's client-verify in a pem-file block: per SNI name. A session made for the
    name that asks for nothing must not resume into the one that requires a certificate."""
    secure = pki.make(["secure.example"], name="secure")
    public = pki.make(["public.example"], name="public")
    conf = tmp_path / "hitch.conf"
    conf.write_text(f'pem-file = {{\n  cert = "{secure}"\n  client-verify = required\n'
                    f'  client-verify-ca = "{cpki.ca_bundle}"\n}}\npem-file = "{public}"\n')
    s = stud(f"--config={conf}", backend_port=backend("echo"))
    assert round_trip(s.port, as_client(cpki, None), "public.example") == b"ping"
    assert "CERTIFICATE_REQUIRED" in str(round_trip(s.port, as_client(cpki, None),
                                                    "secure.example"))
    assert round_trip(s.port, as_client(cpki, "good"), "secure.example") == b"ping"
    # The default certificate (public, the last) asks for nothing either.
    assert round_trip(s.port, as_client(cpki, None)) == b"ping"
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = as_client(cpki, None, maximum_version=version, minimum_version=version)
        with tls_connect(s.port, sni="public.example", ctx=ctx) as c:
            c.sendall(b"ping")
            recv_exact(c, 4)
            session = c.session
        raw = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        if version == ssl.TLSVersion.TLSv1_3:  # the new name holds: refused
            with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
                ctx.wrap_socket(raw, server_hostname="secure.example", session=session)
            raw.close()
            continue
        # TLS 1.2: a resumed session keeps the name it was made for (OpenSSL's rule), and so
        # does stud: the connection is public.example's, as the log and the backend see it.
        with ctx.wrap_socket(raw, server_hostname="secure.example", session=session) as c:
            c.sendall(b"ping")
            assert recv_exact(c, 4) == b"ping" and c.session_reused
        line = wait_for(lambda: [ln for ln in conn_lines(s.output()) if ln["resumed"] == "1"])
        assert line[0]["sni"] == "public.example" and line[0]["client_cert"] == "-"


def test_metrics_count_results_and_identities(stud, backend, pem, cpki):
    mport = free_port()
    s = stud(*verify_args(cpki, "optional", cpki.crls), f"--metrics=127.0.0.1,{mport}", pem,
             backend_port=backend("echo"))
    for name in ("good", "good", None, "revoked"):
        round_trip(s.port, as_client(cpki, name))

    def counted() -> dict[str, float] | None:
        m = scrape(mport)
        return m if m.get("stud_client_certificates_total{result=ok}") == 2 else None
    m = wait_for(counted, timeout=10, step=0.3)
    assert m["stud_client_certificates_total{result=none}"] == 1
    assert m["stud_client_certificates_total{result=certificate revoked}"] == 1
    assert m[f"stud_client_identities_total{{identity={client_pki.CLIENT_URI}}}"] == 2


@pytest.mark.parametrize("args, why", [
    (["--client-verify=required"], "client-verify = required needs client-verify-ca"),
    (["--client-verify=maybe"], "client-verify: 'maybe': must be one of none, optional, "
                                "required"),
])
def test_bad_settings_are_one_line_errors(stud, pem, args, why, tmp_path):
    s = stud(*args, pem, wait=False)
    s.proc.wait(timeout=20)
    assert s.proc.returncode != 0 and why in s.output()


def test_a_crl_from_another_ca_is_refused_at_start(stud, pem, cpki, tmp_path):
    other = tmp_path / "other.crl"
    client_pki.crl(cpki.other_ca, [], path=other)
    s = stud(*verify_args(cpki, "required", other), pem, wait=False)
    s.proc.wait(timeout=20)
    out = s.output()
    assert s.proc.returncode != 0 and f"client-verify-crl '{other}'" in out
    assert "not signed" in out
    assert os.path.exists(other)


# -- identity to the backend: PROXY v2 -------------------------------------------------------
def ssl_tlv(header: proxyproto.Header) -> tuple[int, int, dict[int, bytes]]:
    """The SSL TLV of a parsed header: (client flags, verify, its sub-TLVs by type)."""
    value = dict(header.tlvs)[proxyproto.PP2_TYPE_SSL]
    subs, pos = {}, 5
    while pos < len(value):
        kind, size = value[pos], int.from_bytes(value[pos + 1:pos + 3], "big")
        subs[kind] = value[pos + 3:pos + 3 + size]
        pos += 3 + size
    return value[0], int.from_bytes(value[1:5], "big"), subs


def recorded_header(tmp_path: Path, n: int = 1) -> proxyproto.Header:
    path = tmp_path / f"rec.{n}"
    wait_for(lambda: path.exists() and path.stat().st_size, 10)
    data = path.read_bytes()
    header = proxyproto.parse(data)
    assert header is not None and data[header.length:] == b"ping", data
    return header


def send_ping(port: int, ctx: ssl.SSLContext, before: bytes = b"") -> ssl.SSLSession:
    """One connection that sends before (a PROXY header, in clear), then TLS and b"ping";
    its session."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.sendall(before)
    with ctx.wrap_socket(raw) as c:
        c.sendall(b"ping")
        close_notify(c)
        assert read_all(c) == b"OK\n"  # (the record backend's answer to the half-close)
        return c.session


def test_the_backend_gets_the_client_certificate_in_the_ssl_tlv(stud, backend, pem, cpki,
                                                                tmp_path):
    s = stud(*verify_args(cpki, "optional"), "--write-proxy-v2", pem,
             backend_port=backend("record"))
    send_ping(s.port, as_client(cpki, "good"))
    flags, verify, subs = ssl_tlv(recorded_header(tmp_path, 1))
    assert flags == 0x07 and verify == 0  # SSL, CERT_CONN, CERT_SESS; verified
    assert subs[0x22] == b"client.example" and subs[0x21] == b"TLSv1.3"
    assert subs[0x28] == cpki.good.cert.public_bytes(Encoding.DER)
    send_ping(s.port, as_client(cpki, None))  # optional: none presented
    flags, verify, subs = ssl_tlv(recorded_header(tmp_path, 2))
    assert flags == 0x01 and verify != 0 and 0x22 not in subs and 0x28 not in subs


def test_a_resumed_session_says_the_certificate_is_the_sessions(stud, backend, pem, cpki,
                                                                tmp_path):
    s = stud(*verify_args(cpki), "--write-proxy-v2", pem, backend_port=backend("record"))
    ctx = as_client(cpki, "good", maximum_version=ssl.TLSVersion.TLSv1_2)
    session = send_ping(s.port, ctx)
    raw = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    with ctx.wrap_socket(raw, session=session) as c:
        assert c.session_reused
        c.sendall(b"ping")
        close_notify(c)
        assert read_all(c) == b"OK\n"
    flags, verify, subs = ssl_tlv(recorded_header(tmp_path, 2))
    assert flags == 0x05 and verify == 0  # CERT_SESS without CERT_CONN
    assert subs[0x28] == cpki.good.cert.public_bytes(Encoding.DER)


def test_hitch_pem_and_stud_identity_tlvs(stud, backend, pem, cpki, tmp_path):
    s = stud(*verify_args(cpki), "--write-proxy-v2", "--proxy-client-cert",
             "--proxy-identity-tlvs", pem, backend_port=backend("record"))
    send_ping(s.port, as_client(cpki, "good"))
    header = recorded_header(tmp_path)
    tlvs = dict(header.tlvs)
    leaf = cpki.good.cert
    assert b"-----BEGIN TRUSTED CERTIFICATE-----\n" in tlvs[0xE0]  # hitch's PEM, as it writes
    assert 0x28 not in ssl_tlv(header)[2]
    assert tlvs[0xE1] == client_pki.CLIENT_URI.encode()
    assert tlvs[0xE2] == leaf.fingerprint(hashes.SHA256())
    assert int.from_bytes(tlvs[0xE3], "big") == leaf.serial_number
    assert int.from_bytes(tlvs[0xE4], "big") == int(leaf.not_valid_after_utc.timestamp())


def test_no_der_for_backends_that_refuse_big_tlvs(stud, backend, pem, cpki, tmp_path):
    s = stud(*verify_args(cpki), "--write-proxy-v2", "--proxy-client-der=off", pem,
             backend_port=backend("record"))
    send_ping(s.port, as_client(cpki, "good"))
    flags, verify, subs = ssl_tlv(recorded_header(tmp_path))
    assert flags == 0x07 and subs[0x22] == b"client.example" and 0x28 not in subs


def test_proxy_proxy_with_write_proxy_v2_keeps_the_load_balancers_header(stud, backend, pem,
                                                                         cpki, tmp_path):
    """An L4 load balancer's PROXY header in (v1, or v2 with a TLV of its own), v2 out with
    its addresses and TLVs, and stud's TLS TLVs added; the log names the client it gives."""
    s = stud(*verify_args(cpki), "--proxy-proxy", "--write-proxy-v2", pem,
             backend_port=backend("record"))
    send_ping(s.port, as_client(cpki, "good"), b"PROXY TCP4 203.0.113.7 198.51.100.1 5555 443\r\n")
    header = recorded_header(tmp_path, 1)
    assert header.version == 2 and header.src == ("203.0.113.7", 5555)
    assert header.dst == ("198.51.100.1", 443)
    assert ssl_tlv(header)[2][0x22] == b"client.example"
    vpce = (0xEA, b"\x01vpce-0123456789abcdef")
    lb = proxyproto.v2(("2001:db8::7", 6666), ("2001:db8::1", 443), passthrough=proxyproto.Header(
        2, 0, "PROXY", "TCP6", None, None, (vpce,)))
    send_ping(s.port, as_client(cpki, "good"), lb)
    header = recorded_header(tmp_path, 2)
    assert header.src == ("2001:db8::7", 6666) and vpce in header.tlvs
    assert [t for t, _ in header.tlvs].count(proxyproto.PP2_TYPE_SSL) == 1
    lines = wait_for(lambda: len(conn_lines(s.output())) == 2 and conn_lines(s.output()))
    assert lines[0]["client"] == "203.0.113.7:5555" and lines[0]["via"].startswith("127.0.0.1:")
    assert lines[1]["client"] == "[2001:db8::7]:6666"


def test_haproxy_and_nginx_read_what_stud_writes(stud, pem, cpki, tmp_path, procs):
    """Real consumers behind stud: HAProxy's accept-proxy and nginx's proxy_protocol parse the
    v2 header with the client certificate's TLVs, and name the client."""
    hport, nport = free_port(), free_port()
    (tmp_path / "haproxy.cfg").write_text("\n".join([
        "global", "    log stdout format raw local0 info", "defaults", "    mode http",
        "    log global", "    timeout connect 5s", "    timeout client 5s",
        "    timeout server 5s", "frontend fe", f"    bind 127.0.0.1:{hport} accept-proxy",
        '    http-request return status 200 content-type text/plain lf-string "src=%[src]\\n"',
        ""]))
    (tmp_path / "nginx.conf").write_text(
        "events {}\nhttp {\n access_log off;\n server {\n"
        f"  listen 127.0.0.1:{nport} proxy_protocol;\n"
        "  location / { return 200 \"src=$proxy_protocol_addr\\n\"; }\n }\n}\n")
    started = [
        Proc(["/usr/sbin/haproxy", "-db", "-f", str(tmp_path / "haproxy.cfg")],
             tmp_path / "haproxy.out", env=tool_env()),
        Proc(["/usr/sbin/nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g",
              f"daemon off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/nginx.err;"],
             tmp_path / "nginx.out", env=tool_env())]
    procs.extend(started)
    for port in (hport, nport):
        wait_for(lambda p=port: echo_listening(p), timeout=15)
    for port in (hport, nport):
        s = stud(*verify_args(cpki), "--write-proxy-v2", "--proxy-identity-tlvs", pem,
                 backend_port=port)
        with tls_connect(s.port, ctx=as_client(cpki, "good")) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got = b""
            while b"src=" not in got and (chunk := c.recv(4096)):
                got += chunk
        assert b"200 OK" in got and b"src=127.0.0.1" in got, (port, got)


def echo_listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# -- --crl-fetch ---------------------------------------------------------------------------
@pytest.fixture
def crl_server(procs, tmp_path):
    """A loopback HTTP server for the CRLs of a PKI whose certificates name it."""
    port = free_port()
    pki = client_pki.make(tmp_path / "pki", cdp=f"http://127.0.0.1:{port}")
    server = Proc([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                   "--directory", str(pki.dir)], tmp_path / "http.out", env=tool_env())
    procs.append(server)
    wait_for(lambda: echo_listening(port), timeout=15)
    return pki, port, server


def test_crl_fetch_downloads_refreshes_and_keeps_the_last_good(stud, backend, pem, crl_server):
    pki, port, server = crl_server
    mport = free_port()
    inter = f"http://127.0.0.1:{port}/inter.crl"
    s = stud(f"--client-verify-ca={pki.ca_bundle}", "--client-verify=required", "--crl-fetch",
             f"--crl-fetch-url={inter}", "--crl-refresh-interval=1",
             f"--metrics=127.0.0.1,{mport}", pem, backend_port=backend("echo"))
    workers = s.workers()
    # The root's CRL from the intermediate's distribution point, the intermediate's as given.
    out = s.output()
    assert f"crl-fetch: http://127.0.0.1:{port}/root.crl: 0 revoked" in out
    assert f"crl-fetch: {inter}: 1 revoked" in out
    assert round_trip(s.port, as_client(pki, "good")) == b"ping"
    assert "CERTIFICATE_REVOKED" in str(round_trip(s.port, as_client(pki, "revoked")))
    pki.write_crls(inter_revoked=[], number=2)  # the CA takes the revocation back
    wait_for(lambda: round_trip(s.port, as_client(pki, "revoked")) == b"ping", timeout=15,
             step=0.3)
    assert s.workers() == workers
    m = scrape(mport)
    assert m[f"stud_crl_fetch_ok{{url={inter}}}"] == 1
    assert m["stud_crl_entries{issuer=CN=stud test client intermediate CA}"] == 0
    assert 0 < m["stud_crl_next_update_seconds{issuer=CN=stud test client intermediate CA}"]
    server.stop(signal.SIGTERM)  # the distribution point goes away: the last good CRL stays
    wait_for(lambda: f"crl-fetch: CRL {inter}" in s.output(), timeout=15)
    assert "keeping the last good CRL" in s.output()
    assert round_trip(s.port, as_client(pki, "revoked")) == b"ping"
    assert scrape(mport)[f"stud_crl_fetch_ok{{url={inter}}}"] == 0
    assert s.output().count(f"crl-fetch: CRL {inter}") == 1  # said once, not each retry


def test_crl_fetch_needs_a_distribution_point(stud, pem, cpki):
    s = stud(*verify_args(cpki), "--crl-fetch", pem, wait=False)
    s.proc.wait(timeout=20)
    assert s.proc.returncode != 0 and "name no http CRL distribution point" in s.output()
