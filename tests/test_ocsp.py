"""stud.ocsp and sslext.set_ocsp_staple against real things: the test PKI and the loopback
responder of ocsp_pki.py (`openssl ocsp` answering from an index.txt), responses forged or
expired with cryptography's builder, and `openssl s_client -status` reading what a server
stapled. Every wait is bounded; only loopback is used."""

from __future__ import annotations

import gc
import hashlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from helpers import free_port, run_tool, s_client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ocsp_pki import PKI, REVOKED, UNKNOWN, Responder, T, ec_key, fetched, issue, response, utcnow

from stud import ocsp, sslext
from stud.ocsp import OcspError, Revoked, Staple, Stapler, Step


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PKI, Responder]]:
    responder = Responder()
    pki = PKI(tmp_path_factory.mktemp("ocsp"), f"http://127.0.0.1:{responder.port}/ocsp")
    responder.pki = pki
    yield pki, responder
    responder.close()


@pytest.fixture
def responder(env: tuple[PKI, Responder]) -> Iterator[Responder]:
    """The module's responder, back to plain `openssl ocsp` after the test."""
    r = env[1]
    yield r
    r.extra, r.nmin, r.answer, r.drip = [], 60, None, 0.0


@pytest.fixture(scope="module")
def pki(env: tuple[PKI, Responder]) -> PKI:
    return env[0]


# -- file names -----------------------------------------------------------------------------
@pytest.mark.parametrize(("pem_path", "name"), [  # hitch-and-peers.md 3.2
    ("/etc/hitch/certs/example.com.pem", "4f01315eee1657db1b8c6efb897f4b85"),
    ("/etc/hitch/cert.d/example.com.pem", "3d60248b9a3e92c8b326d9f6ff2070b1"),
])
def test_staple_path_is_hitchs(pem_path, name):
    assert ocsp.staple_path("/var/lib/hitch-ocsp", pem_path) == f"/var/lib/hitch-ocsp/{name}"
    assert ocsp.staple_path("/var/lib/hitch-ocsp/", pem_path) == f"/var/lib/hitch-ocsp/{name}"


def test_staple_path_hashes_the_path_as_configured():
    assert (ocsp.staple_path("d", "certs/example.com.pem")
            != ocsp.staple_path("d", "/etc/hitch/certs/example.com.pem"))
    with pytest.raises(ValueError, match="ocsp-dir is empty"):
        ocsp.staple_path("", "/etc/hitch/certs/example.com.pem")


@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1),
       st.text(st.characters(blacklist_categories=("Cs",)), min_size=1))
def test_staple_path_is_32_lowercase_hex_digits_stable_and_per_path(a, b):
    name = ocsp.staple_path("/ocsp", a)
    assert re.fullmatch(r"/ocsp/[0-9a-f]{32}", name)
    assert name == ocsp.staple_path("/ocsp", a)
    assert name.endswith(hashlib.md5(a.encode()).hexdigest())
    assert (name == ocsp.staple_path("/ocsp", b)) == (a == b)


def test_haproxy_staple_path():
    assert ocsp.haproxy_staple_path("/etc/haproxy/site.pem") == "/etc/haproxy/site.pem.ocsp"


# -- certificates and the request -------------------------------------------------------------
def test_responder_url_and_issuer_from_the_chain(pki):
    assert ocsp.responder_url(pki.leaf) == pki.url
    assert ocsp.responder_url(pki.ca) is None
    other_key = ec_key()
    other_ca = issue("stud test CA", other_key, ca=True)  # same name, another key
    assert ocsp.issuer_of([pki.leaf, other_ca, pki.responder, pki.ca]) == pki.ca
    assert ocsp.issuer_of([pki.leaf, other_ca]) is None
    assert ocsp.issuer_of([pki.ca]) is None
    assert ocsp.issuer_of([]) is None


def test_request_is_sha1_without_nonce_as_openssl_reads_it(pki):
    der = ocsp.request_der(pki.leaf, pki.ca)
    req = x509_ocsp.load_der_ocsp_request(der)
    assert isinstance(req.hash_algorithm, hashes.SHA1)
    assert req.serial_number == pki.leaf.serial_number
    assert len(req.extensions) == 0
    (pki.root / "req.der").write_bytes(der)
    r = run_tool(["openssl", "ocsp", "-reqin", str(pki.root / "req.der"), "-req_text"],
                 timeout=T, capture_output=True, text=True)
    assert "Hash Algorithm: sha1" in r.stdout and "Nonce" not in r.stdout, r.stdout


# -- fetching and checking against openssl's responder ------------------------------------------
def test_good_response_fetched_checked_and_refresh_scheduled(pki, responder):
    der = fetched(pki, pki.leaf)
    assert responder.seen[-1]["host"] == f"127.0.0.1:{responder.port}"
    assert responder.seen[-1]["content-type"] == "application/ocsp-request"
    now = utcnow()
    staple = ocsp.check(der, pki.leaf, pki.ca, now)
    assert staple.der == der and staple.status == "good"
    assert staple.next_update is not None
    assert abs(staple.next_update - staple.this_update - timedelta(minutes=60)) < timedelta(
        seconds=2)
    halfway = staple.this_update + timedelta(minutes=30)
    assert abs(ocsp.refresh_at(staple, now) - halfway) < timedelta(seconds=2)


@pytest.mark.parametrize("extra", [["-resp_key_id"], []], ids=["by-key-hash", "by-name"])
def test_delegated_responder_named_either_way(pki, responder, extra):
    responder.extra = extra
    assert ocsp.check(fetched(pki, pki.leaf), pki.leaf, pki.ca, utcnow()).status == "good"


def test_revoked(pki):
    with pytest.raises(Revoked, match=r"^certificate revoked at \d{4}-.* UTC, reason "
                                      r"key_compromise$"):
        ocsp.check(fetched(pki, pki.revoked), pki.revoked, pki.ca, utcnow())


def test_response_for_another_certificate(pki):
    with pytest.raises(OcspError, match="response is for another certificate"):
        ocsp.check(fetched(pki, pki.revoked), pki.leaf, pki.ca, utcnow())


def test_responder_without_its_certificate_is_unknown(pki, responder):
    responder.extra = ["-resp_no_certs"]
    with pytest.raises(OcspError, match="signed by an unknown responder"):
        ocsp.check(fetched(pki, pki.leaf), pki.leaf, pki.ca, utcnow())


# -- fetch's failures -------------------------------------------------------------------------
def test_responder_down_is_named():
    url = f"http://127.0.0.1:{free_port()}/"
    with pytest.raises(OcspError, match=rf"^OCSP responder {re.escape(url)}: cannot connect: "
                                        "Connection refused$"):
        ocsp.fetch(url, b"req", 2.0, 2.0)


@pytest.mark.parametrize(("answer", "why"), [
    ((500, "text/plain", b"oops"), "HTTP 500 Internal Server Error"),
    ((200, "text/html", b"<html>"), "content type 'text/html', not application/ocsp-response"),
    ((200, "application/ocsp-response", b""), "empty response"),
    ((200, "application/ocsp-response", b"x" * (ocsp.MAX_RESPONSE + 1)),
     f"response larger than {ocsp.MAX_RESPONSE} bytes"),
])
def test_http_failures_are_named(pki, responder, answer, why):
    responder.answer = lambda req: answer
    with pytest.raises(OcspError, match=rf"^OCSP responder {re.escape(pki.url)}: "
                                        rf"{re.escape(why)}$"):
        fetched(pki, pki.leaf)


def test_a_trickling_responder_runs_into_the_response_deadline(pki, responder):
    responder.answer = lambda req: (200, "application/ocsp-response", b"y" * 100)
    responder.drip = 0.05  # each byte well within the timeout, all of them far beyond it
    t0 = time.monotonic()
    with pytest.raises(OcspError, match="no complete response within 1 s"):
        ocsp.fetch(pki.url, b"req", 2.0, 1.0)
    assert time.monotonic() - t0 < 2.0


def test_connect_timeout():
    # A listener whose accept queue is full: the kernel drops further SYNs.
    with socket.create_server(("127.0.0.1", 0), backlog=0) as ls:
        port = ls.getsockname()[1]
        held = []
        try:
            for _ in range(8):
                c = socket.socket()
                c.setblocking(False)
                c.connect_ex(("127.0.0.1", port))
                held.append(c)
            time.sleep(0.2)
            t0 = time.monotonic()
            with pytest.raises(OcspError, match=r"^OCSP responder http://127\.0\.0\.1:\d+/: "
                                                r"connect timed out after 0\.5 s$"):
                ocsp.fetch(f"http://127.0.0.1:{port}/", b"req", 0.5, 5.0)
            assert time.monotonic() - t0 < 2.0
        finally:
            for c in held:
                c.close()


@pytest.mark.parametrize("url", ["https://127.0.0.1/", "ldap://127.0.0.1/", "http:///x",
                                 "http://127.0.0.1:99999/"])
def test_urls_fetch_does_not_speak_are_refused(url):
    with pytest.raises(OcspError, match=rf"^OCSP responder {re.escape(url)}: "):
        ocsp.fetch(url, b"req", 1.0, 1.0)


# -- check's refusals on forged, odd or stale responses ---------------------------------------
def test_issuer_signed_responses_are_good(pki):
    for by_name in (False, True):
        der = response(pki, pki.leaf, by_name=by_name)
        assert ocsp.check(der, pki.leaf, pki.ca, utcnow()).der == der


@pytest.mark.parametrize("forgery", ["rogue-ca-responder", "rogue-key-ca-name", "no-eku",
                                     "issuer-key-hash-of-another-ca"])
def test_untrusted_signers_are_refused(pki, forgery):
    rogue_key = ec_key()
    rogue_ca = issue("stud test CA", rogue_key, ca=True)  # the CA's name, another key
    now = utcnow()
    if forgery == "rogue-ca-responder":  # a proper responder certificate, of another CA
        cert = issue("rogue responder", rogue_key, (rogue_ca, rogue_key),
                     eku=[ExtendedKeyUsageOID.OCSP_SIGNING])
        der, why = (response(pki, pki.leaf, signer=(cert, rogue_key), certs=[cert]),
                    "is not issued by the certificate's issuer")
    elif forgery == "rogue-key-ca-name":  # names the CA, signed by another key
        der, why = (response(pki, pki.leaf, signer=(rogue_ca, rogue_key), by_name=True),
                    "bad signature by CN=stud test CA")
    elif forgery == "no-eku":  # issued by the CA, but not for OCSP signing
        cert = issue("not a responder", rogue_key, (pki.ca, pki.ca_key))
        der, why = (response(pki, pki.leaf, signer=(cert, rogue_key), certs=[cert]),
                    "lacks the OCSP-signing extended key usage")
    else:  # the CertID of the same serial under another CA's key
        der, why = (response(pki, pki.leaf, issuer=rogue_ca, signer=(rogue_ca, rogue_key)),
                    "response is for another certificate")
    with pytest.raises(OcspError, match=re.escape(why)):
        ocsp.check(der, pki.leaf, pki.ca, now)


@pytest.mark.parametrize(("kw", "why"), [
    ({"this": utcnow() - timedelta(hours=2), "nxt": utcnow() - timedelta(hours=1)},
     "response expired: nextUpdate"),
    ({"this": utcnow() + timedelta(hours=1)}, "response from the future"),
    ({"status": UNKNOWN}, "does not know the certificate (status unknown)"),
    ({"status": REVOKED}, "certificate revoked at"),
])
def test_stale_future_unknown_and_revoked_responses_are_refused(pki, kw, why):
    with pytest.raises(OcspError, match=re.escape(why)):
        ocsp.check(response(pki, pki.leaf, **kw), pki.leaf, pki.ca, utcnow())


def test_skew_and_max_age(pki):
    now = utcnow()
    der = response(pki, pki.leaf, this=now + timedelta(minutes=3))
    assert ocsp.check(der, pki.leaf, pki.ca, now).this_update > now  # a clock a bit ahead
    old = response(pki, pki.leaf, this=now - timedelta(days=2), nxt=None)
    assert ocsp.check(old, pki.leaf, pki.ca, now).next_update is None
    with pytest.raises(OcspError, match="without nextUpdate older than 86400 s"):
        ocsp.check(old, pki.leaf, pki.ca, now, max_age=86400)


def test_not_a_response_and_unsuccessful_ones(pki):
    with pytest.raises(OcspError, match="not a DER OCSP response"):
        ocsp.check(b"\x30\x03junk", pki.leaf, pki.ca, utcnow())
    der = x509_ocsp.OCSPResponseBuilder.build_unsuccessful(
        x509_ocsp.OCSPResponseStatus.UNAUTHORIZED).public_bytes(serialization.Encoding.DER)
    with pytest.raises(OcspError, match="responder answered unauthorized"):
        ocsp.check(der, pki.leaf, pki.ca, utcnow())


# -- refresh_at -------------------------------------------------------------------------------
def staple_at(this: datetime, nxt: datetime | None) -> Staple:
    return Staple(b"x", "good", this, nxt, this)


def test_refresh_at():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    h = timedelta(hours=1)
    assert ocsp.refresh_at(staple_at(now, now + 24 * h), now) == now + 12 * h
    assert ocsp.refresh_at(staple_at(now - 2 * h, now + 6 * h), now) == now + 2 * h
    # past halfway (a cache served an old one): again within the interval, or halfway to the end
    assert ocsp.refresh_at(staple_at(now - 20 * h, now + 4 * h), now) == now + h / 2
    assert ocsp.refresh_at(staple_at(now - 20 * h, now + h / 6), now) == now + h / 12
    assert ocsp.refresh_at(staple_at(now - 20 * h, now + h / 60), now) == now + h / 60
    assert ocsp.refresh_at(staple_at(now - 20 * h, now - h), now) == now + h / 60  # the minimum
    assert ocsp.refresh_at(staple_at(now, None), now) == now + timedelta(seconds=1800)
    assert ocsp.refresh_at(staple_at(now, None), now, 60) == now + timedelta(seconds=60)


@given(st.integers(-10**6, 10**6), st.one_of(st.none(), st.integers(0, 10**7)),
       st.integers(0, 10**7))
def test_refresh_at_is_halfway_or_later_in_time_and_never_too_soon(this_s, valid_s, now_s):
    base = datetime(2026, 1, 1, tzinfo=UTC)
    this, now = base + timedelta(seconds=this_s), base + timedelta(seconds=now_s)
    nxt = None if valid_s is None else this + timedelta(seconds=valid_s)
    at = ocsp.refresh_at(staple_at(this, nxt), now)
    minute, interval = timedelta(seconds=60), timedelta(seconds=1800)
    assert at >= now + minute
    if nxt is None:
        assert at == now + interval
        return
    halfway = this + (nxt - this) / 2
    assert halfway <= at <= max(halfway, now + interval, now + minute)
    if nxt > now + minute:
        assert at <= nxt


# -- the Stapler ------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self, seconds: float = 0) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def test_stapler_without_a_responder_is_silent(pki):
    s = Stapler("ca.pem", [pki.ca])
    assert not s.enabled and s.wake() is None
    assert s.tick(utcnow()) == Step(False, None, False, None)


def test_stapler_without_the_issuer_says_so_once(pki):
    s = Stapler("leaf.pem", [pki.leaf])
    step = s.tick(utcnow())
    assert not step.fetch and "no issuer certificate in its PEM" in step.log
    assert s.tick(utcnow()).log is None


def test_stapler_life(pki, responder):
    responder.nmin = 24 * 60
    clock = Clock()
    s = Stapler(str(pki.leaf_pem), [pki.leaf, pki.ca], log_every=1800)
    assert s.url == pki.url and s.wake() <= clock()
    step = s.tick(clock())
    assert step.fetch and not s.tick(clock()).fetch  # one fetch at a time
    step = s.fetched(ocsp.fetch(s.url, s.request), clock())
    assert step.changed and step.staple and not step.error
    assert step.log.startswith(f"OCSP staple for {pki.leaf_pem} loaded (good until ")
    good = s.staple
    assert abs(s.wake() - good.this_update - timedelta(hours=12)) < timedelta(seconds=2)
    assert s.tick(clock(60)) == Step(False, good.der, False, None)

    def until_woken() -> datetime:
        return clock(max(0.0, (s.wake() - clock()).total_seconds()))

    # The responder goes away: the staple stays, failures back off, logged when they change
    # or once per log_every.
    delays, logs = [], []
    for _ in range(7):
        assert s.tick(until_woken()).fetch
        step = s.failed(OcspError("OCSP responder x: cannot connect: Connection refused"),
                        clock())
        assert step.staple == good.der and not step.changed
        delays.append((s.wake() - clock()).total_seconds())
        logs.append(step.log)
    assert delays == [60, 120, 240, 480, 960, 1800, 1800]
    assert logs[0].endswith("Connection refused; keeping the staple good until "
                            f"{good.next_update:%Y-%m-%d %H:%M:%S} UTC, next attempt in 60 s")
    # logged at 0 s, then at each failure 1800 s or more after the last line: at 1860 s (4 not
    # logged in between) and 3660 s
    assert [bool(x) for x in logs] == [True, False, False, False, False, True, True]
    assert logs[5].endswith("; 4 more failures not logged") and "more" not in logs[6]

    # At nextUpdate it is withdrawn, whatever the responder does.
    step = s.tick(clock((good.next_update - clock()).total_seconds()))
    assert step.staple is None and step.changed and step.error and step.fetch
    assert step.log.startswith(f"OCSP staple for {pki.leaf_pem} expired at ")

    # Back: a fresh response is stapled, and the recovery said once.
    now = utcnow()  # the responder's clock: the simulated one ran ahead of it
    step = s.fetched(response(pki, pki.leaf, this=now - timedelta(minutes=1)), now)
    assert step.changed and step.staple and "loaded after 7 failed attempts" in step.log


def test_stapler_withdraws_the_staple_on_a_verified_revocation(pki):
    now = utcnow()
    s = Stapler("leaf.pem", [pki.leaf, pki.ca])
    assert s.tick(now).fetch
    assert s.fetched(response(pki, pki.leaf), now).staple
    assert s.tick(now).fetch is False
    step = s.fetched(response(pki, pki.leaf, status=REVOKED), now)
    assert step.staple is None and step.changed and step.error
    assert "certificate revoked at" in step.log and "not stapled" in step.log


def test_stapler_keeps_the_newer_response_and_refuses_unverifiable_ones(pki):
    now = utcnow()
    s = Stapler("leaf.pem", [pki.leaf, pki.ca])
    new = response(pki, pki.leaf, this=now - timedelta(minutes=1))
    old = response(pki, pki.leaf, this=now - timedelta(minutes=20))
    assert s.fetched(new, now).staple == new
    assert s.fetched(old, now) == Step(False, new, False, None)
    rogue_key = ec_key()
    rogue = issue("stud test CA", rogue_key, ca=True)
    step = s.fetched(response(pki, pki.leaf, signer=(rogue, rogue_key), by_name=True), now)
    assert step.staple == new and step.error and "bad signature" in step.log


def test_stapler_cached_files(pki):
    now = utcnow()
    s = Stapler("leaf.pem", [pki.leaf, pki.ca])
    step = s.fetched(b"garbage", now, cached=True)
    assert step.staple is None and step.log.startswith("OCSP staple file for leaf.pem not used:")
    assert s.tick(now).fetch  # a bad file is no reason to wait
    s = Stapler("leaf.pem", [pki.leaf, pki.ca])
    assert s.fetched(response(pki, pki.leaf), now, cached=True).staple
    assert not s.tick(now).fetch and s.wake() > now + timedelta(minutes=25)  # halfway


EVENTS = st.lists(st.one_of(
    st.tuples(st.just("wait"), st.integers(0, 20000)),
    st.tuples(st.just("good"), st.one_of(st.none(), st.integers(1, 600)), st.integers(0, 900)),
    st.tuples(st.just("stale"), st.integers(1, 600)),
    st.tuples(st.just("fail")),
), max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EVENTS)
def test_stapler_never_hands_out_an_expired_staple(pki, events):
    """Whatever happens, the staple handed out is current, the caller is woken before it
    expires, and applying only the changed Steps leaves the caller with the Stapler's staple."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    s = Stapler("leaf.pem", [pki.leaf, pki.ca], max_age=3600)
    installed = None
    last_fail_log: datetime | None = None  # of the current run of failures
    for ev in events:
        if ev[0] in ("good", "stale"):
            last_fail_log = None
        if ev[0] == "wait":
            now += timedelta(seconds=ev[1])
            step = s.tick(now)
        elif ev[0] == "good":
            nxt = None if ev[1] is None else now + timedelta(minutes=ev[1])
            step = s.fetched(response(pki, pki.leaf, this=now - timedelta(seconds=ev[2]),
                                      nxt=nxt), now)
        elif ev[0] == "stale":
            this = now - timedelta(minutes=ev[1] + 1)
            step = s.fetched(response(pki, pki.leaf, this=this,
                                      nxt=this + timedelta(minutes=ev[1])), now)
        else:
            step = s.failed("down", now)
            if step.log:
                assert last_fail_log is None or now - last_fail_log >= timedelta(seconds=1800)
                last_fail_log = now
        if step.changed:
            installed = step.staple
        assert installed == step.staple == (s.staple.der if s.staple else None)
        if s.staple:
            expires = s.staple.next_update or s.staple.this_update + timedelta(seconds=3600)
            assert expires > now and s.wake() is not None and s.wake() <= expires


# -- stapling in a TLS server ---------------------------------------------------------------
class Server:
    """A TLS server on 127.0.0.1 in a thread: handshakes and closes each connection."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.ls = socket.create_server(("127.0.0.1", 0))
        self.ls.settimeout(0.1)
        self.port = self.ls.getsockname()[1]
        self.stop = threading.Event()
        self.handshakes = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.ls.accept()
            except TimeoutError:
                continue
            conn.settimeout(T)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    self.handshakes += 1
                    tls.recv(1)
            except OSError:
                conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(T)
        self.ls.close()


def leaf_ctx(pki: PKI) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.leaf_pem)
    return ctx


def status(port: int, *args: str) -> str:
    r = s_client(port, "-servername", "localhost", *args)
    assert "Verify return code" in r.output or "CONNECTED" in r.output, r.output
    return r.output


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_staple_served_replaced_removed(pki, version):
    ctx = leaf_ctx(pki)
    good = fetched(pki, pki.leaf)
    sslext.set_ocsp_staple(ctx, good)
    srv = Server(ctx)
    try:
        out = status(srv.port, version, "-status")
        assert "OCSP Response Status: successful (0x0)" in out and "Cert Status: good" in out
        assert re.search(rf"Serial Number: 0?{pki.leaf.serial_number:X}\n", out)  # ours

        sslext.set_ocsp_staple(ctx, response(pki, pki.leaf, status=REVOKED))
        out = status(srv.port, version, "-status")
        assert "Cert Status: revoked" in out and "Revocation Reason: superseded" in out

        sslext.set_ocsp_staple(ctx, None)
        out = status(srv.port, version, "-status")
        assert "OCSP response: no response sent" in out

        sslext.set_ocsp_staple(ctx, good)  # and back, on a context that had one
        assert "Cert Status: good" in status(srv.port, version, "-status")
        assert srv.handshakes == 4
    finally:
        srv.close()


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_no_staple_for_a_client_that_does_not_ask(pki, version):
    ctx = leaf_ctx(pki)
    sslext.set_ocsp_staple(ctx, fetched(pki, pki.leaf))
    srv = Server(ctx)
    try:
        asked = status(srv.port, version, "-tlsextdebug", "-status")
        assert 'TLS server extension "status request" (id=5)' in asked
        out = status(srv.port, version, "-tlsextdebug")
        assert "status request" not in out and "OCSP" not in out
    finally:
        srv.close()


def test_the_staple_of_the_context_sni_chose(pki):
    default, named = leaf_ctx(pki), leaf_ctx(pki)
    sslext.set_ocsp_staple(named, fetched(pki, pki.leaf))

    def sni(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name == "named.test":
            sock.context = named

    default.sni_callback = sni
    srv = Server(default)
    try:
        assert "Cert Status: good" in status(srv.port, "-status", "-servername", "named.test")
        assert "no response sent" in status(srv.port, "-status")
    finally:
        srv.close()


def test_the_callback_never_raises_into_openssl(pki, monkeypatch):
    class Broken(dict):
        def get(self, *args):
            raise RuntimeError("broken")

    ctx = leaf_ctx(pki)
    sslext.set_ocsp_staple(ctx, fetched(pki, pki.leaf))
    monkeypatch.setattr(sslext, "_staples", Broken(sslext._staples))
    srv = Server(ctx)
    try:
        out = status(srv.port, "-status")
        assert "no response sent" in out and "Traceback" not in out
        assert srv.handshakes == 1
    finally:
        srv.close()


def test_staples_go_with_their_context(pki):
    ctx = leaf_ctx(pki)
    with pytest.raises(ValueError, match="empty OCSP response"):
        sslext.set_ocsp_staple(ctx, b"")
    sslext.set_ocsp_staple(ctx, None)  # nothing to remove, nothing installed
    p = sslext.ctx_pointer(ctx)
    assert p not in sslext._staples
    sslext.set_ocsp_staple(ctx, b"\x30\x03abc")
    assert sslext._staples[p] == {None: b"\x30\x03abc"}
    del ctx
    gc.collect()
    assert p not in sslext._staples


def test_the_c_connection_path_staples_too(pki):
    from stud import relay

    if relay.Conn is None:
        pytest.skip("stud._flow is not built")
    from test_conn import Hooks, Rig, echo_backend, run_one

    backend, _ = echo_backend()
    rig = Rig(str(pki.leaf_pem), backend.getsockname()[1], Hooks())
    sslext.set_ocsp_staple(rig.ctx, fetched(pki, pki.leaf))
    box = {}

    def client() -> None:
        box["out"] = status(rig.port, "-status")

    try:
        run_one(rig, client)
    finally:
        rig.close()
        backend.close()
    assert "Cert Status: good" in box["out"]
