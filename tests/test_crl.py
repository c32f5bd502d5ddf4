"""Tests for stud.crl: CRLs read, checked and scheduled over the PKI of client_pki.py, and
fetched from an HTTP server on 127.0.0.1 in a thread."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import client_pki
import pytest
from client_pki import ClientPKI, Party, crl
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from helpers import free_port
from hypothesis import given
from hypothesis import strategies as st
from ocsp_pki import ec_key, pem, utcnow

from stud import crl as crls
from stud.crl import CrlError, Problem

T = 5.0  # upper bound for any single wait
H = timedelta(hours=1)


class Server:
    """HTTP on 127.0.0.1: ``routes`` maps a path to (status, headers, body); the rest is 404.
    ``seen``: the requests' method, path and headers."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                owner.seen.append(("GET", self.path, {k.lower(): v for k, v in
                                                      self.headers.items()}))
                code, headers, body = owner.routes.get(self.path, (404, {}, b"not here"))
                self.send_response(code)
                for k, v in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (the size limit)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(T)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory, server: Server) -> ClientPKI:
    return client_pki.make(tmp_path_factory.mktemp("client-pki"), cdp=server.url)


def cas(pki: ClientPKI) -> list[x509.Certificate]:
    return [pki.root.cert, pki.inter.cert]


# -- load ---------------------------------------------------------------------------------
def test_one_pem_crl(pki):
    [one] = crls.load(pki.inter_crl.read_bytes(), str(pki.inter_crl))
    assert one.issuer == pki.inter.cert.subject
    assert one.get_revoked_certificate_by_serial_number(pki.revoked.cert.serial_number)


def test_several_crls_in_one_pem_and_other_blocks_passed_over(pki):
    data = pem(pki.root.cert) + pki.crls.read_bytes() + pem(pki.inter.cert)
    got = crls.load(data, "bundle.pem")
    assert [c.issuer for c in got] == [pki.inter.cert.subject, pki.root.cert.subject]


def test_der(pki, tmp_path):
    crl(pki.inter, [7], path=tmp_path / "x.crl", fmt="der")
    [one] = crls.load((tmp_path / "x.crl").read_bytes(), "x.crl")
    assert [r.serial_number for r in one] == [7]


def broken_block(pki: ClientPKI) -> bytes:
    lines = pki.inter_crl.read_bytes().splitlines(keepends=True)
    return b"".join(lines[:3] + lines[-1:])  # header, two base64 lines, footer


@pytest.mark.parametrize(("data", "why"), [
    (b"", "empty"),
    (b" \n", "empty"),
    (b"hello, world", r"not a CRL \(neither PEM nor DER: .+\)"),
    (b"\x30\x82\x01", r"not a CRL \(neither PEM nor DER: .+\)"),  # cut-off DER
    ("cert", "no X509 CRL block in the PEM"),
    ("broken", "CRL is not valid: .+"),
    ("broken2", "CRL 2 of 2 is not valid: .+"),
])
def test_garbage_is_one_line_naming_the_source(pki, data, why):
    data = {"cert": lambda: pem(pki.root.cert), "broken": lambda: broken_block(pki),
            "broken2": lambda: pki.inter_crl.read_bytes() + broken_block(pki)
            }.get(data, lambda: data)()
    with pytest.raises(CrlError, match=rf"^/etc/stud/crl\.pem: {why}$") as e:
        crls.load(data, "/etc/stud/crl.pem")
    assert "\n" not in str(e.value)


# -- check ---------------------------------------------------------------------------------
def test_current_crls_signed_by_a_ca_pass(pki):
    now = utcnow()
    for c in crls.load(pki.crls.read_bytes(), "crls.pem"):
        assert crls.check(c, cas(pki), now) is None
        assert crls.signer(c, cas(pki)).subject == c.issuer
    assert crls.check(crl(pki.inter), [pki.inter.cert], now) is None  # the intermediate alone


def test_crl_of_another_ca_is_not_signed_by_ours(pki):
    p = crls.check(crl(pki.other_ca), cas(pki), utcnow(), ca_source="/etc/ca.pem")
    assert p == Problem("CRL of CN=stud test other CA is not signed by a CA in /etc/ca.pem")
    assert not p.expired
    assert crls.check(crl(pki.inter), [pki.other_ca.cert], utcnow()) is not None


def test_forged_crl_with_our_issuer_name_is_refused(pki):
    forged = crl(Party(pki.inter.cert, pki.other_ca.key))  # the intermediate's name, not key
    assert forged.issuer == pki.inter.cert.subject
    p = crls.check(forged, cas(pki), utcnow())
    assert p is not None and "is not signed by a CA in the CA file" in p.reason
    assert crls.uncovered([forged], cas(pki)) == cas(pki)


def test_expired_is_told_apart(pki):
    now = utcnow()
    gone = crl(pki.inter, this_update=now - 2 * H, next_update=now - H)
    p = crls.check(gone, cas(pki), now)
    assert p is not None and p.expired
    assert re.fullmatch(r"CRL of CN=stud test client intermediate CA expired since "
                        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(nextUpdate\)", str(p)), p
    assert crls.check(gone, cas(pki), now - 2 * H + timedelta(minutes=1)) is None


def test_not_yet_valid_beyond_the_skew(pki):
    now = utcnow()
    ahead = crl(pki.inter, this_update=now + H, next_update=now + 3 * H)
    p = crls.check(ahead, cas(pki), now)
    assert p is not None and not p.expired
    assert re.fullmatch(r"CRL of .* is not valid before \d{4}-.* UTC \(thisUpdate\)", str(p))
    assert crls.check(crl(pki.inter, this_update=now + timedelta(minutes=4)), cas(pki),
                      now) is None  # a clock a few minutes off
    assert crls.check(ahead, cas(pki), now, skew=2 * 3600) is None


def test_expired_and_forged_says_forged(pki):
    now = utcnow()
    p = crls.check(crl(pki.other_ca, next_update=now - H, this_update=now - 2 * H), cas(pki),
                   now)
    assert p is not None and not p.expired and "not signed" in p.reason


def test_delta_crl_refused(pki):
    now = utcnow()
    delta = (x509.CertificateRevocationListBuilder().issuer_name(pki.inter.cert.subject)
             .last_update(now).next_update(now + H)
             .add_extension(x509.DeltaCRLIndicator(1), critical=True)
             .sign(pki.inter.key, hashes.SHA256()))
    assert "delta CRL" in crls.check(delta, cas(pki), now).reason


def test_uncovered_cas(pki):
    inter_crl, root_crl = crls.load(pki.crls.read_bytes(), "crls.pem")
    assert crls.uncovered([inter_crl, root_crl], cas(pki)) == []
    assert crls.uncovered([inter_crl], cas(pki)) == [pki.root.cert]
    assert crls.uncovered([], [pki.inter.cert]) == [pki.inter.cert]


def test_summary(pki):
    c = crl(pki.inter, [1, 2, 3], number=42)
    s = crls.summary(c)
    assert (s.issuer, s.entries, s.number) == ("CN=stud test client intermediate CA", 3, 42)
    assert s.next_update - s.this_update == timedelta(days=1)
    assert s.this_update.tzinfo is not None


# -- distribution points --------------------------------------------------------------------
def test_distribution_points_http_only_in_order_once(pki):
    uris = ["ldap://ldap.example/cn=CA?certificateRevocationList", "http://a.example/x.crl",
            "https://b.example/y.crl", "HTTP://c.example/z.crl", "http://a.example/x.crl",
            "file:///etc/x.crl"]
    cert = client_pki.cert("cdp.test", ec_key(), pki.inter, cdp=uris)
    assert crls.distribution_points(cert) == ["http://a.example/x.crl", "HTTP://c.example/z.crl"]
    assert crls.distribution_points(pki.root.cert) == []  # no extension


def test_distribution_points_of_the_pki(pki, server):
    assert crls.distribution_points(pki.good.cert) == [f"{server.url}/inter.crl"]
    assert crls.distribution_points(pki.inter.cert) == [f"{server.url}/root.crl"]


# -- the schedule ----------------------------------------------------------------------------
def at(next_update: datetime | None) -> SimpleNamespace:
    return SimpleNamespace(next_update_utc=next_update)  # what next_fetch reads of a CRL


def test_next_fetch_vectors():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    s = timedelta(seconds=1)
    assert crls.next_fetch(at(now + 7 * 24 * H), now) == now + 1800 * s  # the interval
    assert crls.next_fetch(at(now + 7 * 24 * H), now, 86400 * 30) == now + 84 * H  # half
    assert crls.next_fetch(at(now + H / 2), now, 86400) == now + H / 4
    assert crls.next_fetch(at(now + 100 * s), now) == now + 60 * s  # the minimum
    assert crls.next_fetch(at(now + 30 * s), now) == now + 30 * s  # but not past nextUpdate
    assert crls.next_fetch(at(now - H), now) == now + 60 * s  # expired
    assert crls.next_fetch(at(None), now, 600) == now + 600 * s


def test_next_fetch_of_a_real_crl(pki):
    now = utcnow().replace(microsecond=0)  # (a CRL's times are whole seconds)
    assert crls.next_fetch(crl(pki.inter, this_update=now, next_update=now + H), now,
                           7200) == now + H / 2


@given(st.integers(-10**7, 10**7) | st.none(), st.integers(1, 10**6), st.integers(0, 3600))
def test_next_fetch_is_ahead_and_before_next_update(left_s, interval, minimum):
    now = datetime(2026, 1, 1, tzinfo=UTC)
    nxt = None if left_s is None else now + timedelta(seconds=left_s)
    t = crls.next_fetch(at(nxt), now, interval, minimum=minimum or 1)
    assert t > now
    assert t - now <= timedelta(seconds=max(interval, minimum or 1))
    if nxt is not None and nxt > now:
        assert t <= nxt
        assert t - now >= min(timedelta(seconds=min(interval, minimum or 1)), nxt - now)


def test_retry_delay_vectors():
    assert [crls.retry_delay(n) for n in range(1, 9)] == [60, 120, 240, 480, 960, 1800, 1800,
                                                         1800]
    assert [crls.retry_delay(n, 10) for n in (1, 2, 3)] == [10, 20, 40]  # a short interval
    assert crls.retry_delay(10**6) == 1800


@given(st.integers(1, 10**5), st.floats(1, 10**6), st.floats(1, 10**5))
def test_retry_delay_is_monotonic_and_capped(n, interval, cap):
    d, d1 = crls.retry_delay(n, interval, cap=cap), crls.retry_delay(n + 1, interval, cap=cap)
    assert 0 < d <= d1 <= cap
    assert d1 == min(2 * d, cap)
    assert crls.retry_delay(1, interval, cap=cap) == min(60.0, interval, cap)


# -- fetch -----------------------------------------------------------------------------------
def test_fetch_from_the_distribution_point_load_and_check(pki, server):
    server.routes["/inter.crl"] = (200, {"Content-Type": "application/pkix-crl"},
                                   pki.inter_crl.read_bytes())
    [url] = crls.distribution_points(pki.good.cert)
    data = crls.fetch(url, 2.0, T)
    assert data == pki.inter_crl.read_bytes()
    method, path, headers = server.seen[-1]
    assert (method, path) == ("GET", "/inter.crl")
    assert headers["host"] == url.split("/")[2] and headers["connection"] == "close"
    assert "application/pkix-crl" in headers["accept"]
    [got] = crls.load(data, url)
    assert crls.check(got, cas(pki), utcnow()) is None


def test_fetch_der_with_any_content_type(pki, server, tmp_path):
    crl(pki.root, path=tmp_path / "root.der", fmt="der")
    server.routes["/root.der"] = (200, {"Content-Type": "application/octet-stream"},
                                  (tmp_path / "root.der").read_bytes())
    data = crls.fetch(f"{server.url}/root.der", 2.0, T)
    assert crls.load(data, "root.der")[0].issuer == pki.root.cert.subject


def fails(url: str, why: str, *args: float | int) -> None:
    with pytest.raises(CrlError, match=rf"^CRL {re.escape(url)}: {why}$"):
        crls.fetch(url, *args)


def test_fetch_404(server):
    fails(f"{server.url}/nothing.crl", "HTTP 404 Not Found", 2.0, T)


def test_fetch_redirect_is_not_followed(server):
    server.routes["/moved.crl"] = (302, {"Location": "http://127.0.0.1:1/x.crl"}, b"")
    fails(f"{server.url}/moved.crl", r"HTTP 302 Found to http://127\.0\.0\.1:1/x\.crl "
          r"\(redirects are not followed: configure that URL\)", 2.0, T)


@pytest.mark.parametrize("size", [1001, 100_000])  # just over; over the limit + headers too
def test_fetch_over_the_size_limit(server, size):
    server.routes["/big.crl"] = (200, {}, b"x" * size)
    fails(f"{server.url}/big.crl", "response larger than 1000 bytes", 2.0, T, 1000)


def test_fetch_empty(server):
    server.routes["/empty.crl"] = (200, {}, b"")
    fails(f"{server.url}/empty.crl", "empty response", 2.0, T)


def test_fetch_from_a_server_that_never_answers_is_bounded():
    with socket.create_server(("127.0.0.1", 0)) as ls:  # never accepts: the kernel connects
        url = f"http://127.0.0.1:{ls.getsockname()[1]}/x.crl"
        t0 = time.monotonic()
        fails(url, r"no complete response within 0\.5 s", 2.0, 0.5)
        assert time.monotonic() - t0 < 2.0


def test_fetch_refused():
    fails(f"http://127.0.0.1:{free_port()}/x.crl", "cannot connect: Connection refused",
          1.0, 1.0)


@pytest.mark.parametrize("url", ["https://127.0.0.1/x.crl", "ldap://127.0.0.1/x",
                                 "http:///x.crl"])
def test_fetch_speaks_plain_http_only(url):
    fails(url, r"not an http:// URL", 1.0, 1.0)


def test_client_pki_files(pki: ClientPKI):
    """What the mTLS tests take from client_pki: the files it promises, and their contents."""
    for name in client_pki.CLIENTS:
        assert pki.client(name).read_bytes() == (pki.dir / f"{name}.crt").read_bytes() + \
            (pki.dir / f"{name}.key").read_bytes()
    assert x509.load_pem_x509_certificates(pki.ca_bundle.read_bytes()) == cas(pki)
    assert x509.load_pem_x509_certificates(pki.ca_inter.read_bytes()) == [pki.inter.cert]
    good = pki.good.cert
    assert good.subject.rfc4514_string() == "CN=client.example,O=Example"
    san = good.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [client_pki.CLIENT_URI]
    assert pki.expired.cert.not_valid_after_utc < utcnow()
    assert good.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo) == \
        pki.good.key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)


def test_crl_rewritten_in_place(tmp_path: Path):
    d = client_pki.make(tmp_path)
    d.write_crls(inter_revoked=[], next_update=utcnow() - H, this_update=utcnow() - 2 * H,
                 number=2)
    [inter] = crls.load(d.inter_crl.read_bytes(), "inter.crl")
    assert len(inter) == 0 and crls.summary(inter).number == 2
    assert crls.check(inter, [d.root.cert, d.inter.cert], utcnow()).expired
