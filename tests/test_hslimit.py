"""The handshake limiter (--handshake-rate): the token bucket per prefix (sans I/O), then the
real stud: a prefix over its budget is delayed, then refused; another prefix and resumed
handshakes are not. Functional, not timed: the checks are on what happened, with margins."""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time

import pytest
from helpers import (
    client_ctx,
    client_hello,
    free_port,
    handshake_in_pieces,
    peer_closes_within,
    scrape,
    wait_for,
)
from hypothesis import given
from hypothesis import strategies as st

from stud.hslimit import HandshakeLimiter
from stud.worker import REFUSED_HOLD

T = 10.0


def limiter(rate: float = 1.0, burst: float = 2.0, delay: float = 1.0) -> HandshakeLimiter:
    return HandshakeLimiter(rate, burst, 24, 56, delay)


def test_burst_then_rate_then_refusal():
    lim = limiter(rate=2, burst=2, delay=1.0)
    assert [lim.admit("192.0.2.9", 0.0, True) for _ in range(2)] == [0.0, 0.0]
    assert lim.admit("192.0.2.10", 0.0, True) == pytest.approx(0.5)  # same /24: waits
    assert lim.admit("192.0.2.11", 0.0, True) == pytest.approx(1.0)
    assert lim.admit("192.0.2.12", 0.0, True) is None  # would wait over 1 s: refused
    assert lim.admit("192.0.3.1", 0.0, True) == 0.0  # another /24
    assert lim.admit("192.0.2.9", 0.0, False) == 0.0  # offers resumption: free
    assert lim.admit("192.0.2.9", 10.0, True) == 0.0  # refilled


@pytest.mark.parametrize("a, b, same", [
    ("2001:db8:1:100::1", "2001:db8:1:1ff::2", True),   # one /56
    ("2001:db8:1:100::1", "2001:db8:1:200::1", False),
    ("::ffff:192.0.2.1", "192.0.2.200", True),          # IPv4-mapped counts as IPv4
    ("fe80::1%lo", "fe80::2", True),
])
def test_prefixes(a, b, same):
    lim = limiter()
    assert (lim.prefix(a) == lim.prefix(b)) is same


def test_a_made_up_ticket_pays_when_it_closes():
    lim = limiter(rate=1, burst=1, delay=5.0)
    assert lim.admit("192.0.2.1", 0.0, False) == 0.0
    lim.charge("192.0.2.1", 0.0)  # it was a full handshake after all
    assert lim.admit("192.0.2.1", 0.0, True) == pytest.approx(1.0)


@given(st.floats(0.1, 100), st.floats(1, 50), st.lists(st.floats(0, 0.5), max_size=200))
def test_admitted_handshakes_never_exceed_burst_plus_rate(rate, burst, gaps):
    lim = limiter(rate=rate, burst=burst, delay=2.0)
    now, started = 0.0, []
    for gap in gaps:
        now += gap
        wait = lim.admit("198.51.100.1", now, True)
        if wait is not None:
            started.append(now + wait)
    for t in started:  # by any time t, at most burst + rate * t have started
        assert sum(1 for s in started if s <= t) <= burst + rate * t + 1e-6


def test_prune_forgets_refilled_prefixes():
    lim = limiter(rate=1, burst=2)
    lim.admit("192.0.2.1", 0.0, True)
    lim.prune(0.5)
    assert len(lim.buckets) == 1
    lim.prune(10.0)
    assert not lim.buckets


# -- the real stud ---------------------------------------------------------------------------
def handshake(port: int, source: str, session: ssl.SSLSession | None = None,
              ctx: ssl.SSLContext | None = None) -> tuple[str, ssl.SSLSession | None]:
    """'ok', 'resumed' or 'refused' (closed before the handshake), and the session."""
    ctx = ctx or client_ctx(maximum_version=ssl.TLSVersion.TLSv1_2)
    raw = socket.create_connection(("127.0.0.1", port), timeout=T, source_address=(source, 0))
    try:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as c:
            c.sendall(b"ping")
            assert c.recv(4) == b"ping"
            return ("resumed" if c.session_reused else "ok"), c.session
    except (ssl.SSLError, ConnectionError, OSError):
        return "refused", None


def test_a_prefix_over_its_budget_is_delayed_then_refused(stud, backend, pem):
    mport = free_port()
    s = stud("--handshake-rate", "1", "--handshake-burst", "2", "--handshake-delay", "1.5",
             "--metrics", f"127.0.0.1,{mport}", pem, backend_port=backend("echo"))
    ctx = client_ctx(maximum_version=ssl.TLSVersion.TLSv1_2)
    first, session = handshake(s.port, "127.0.0.1", ctx=ctx)
    assert first == "ok"
    results: list[str] = []
    refused_after: list[float] = []

    def one() -> None:
        t0 = time.monotonic()
        results.append(handshake(s.port, "127.0.0.1")[0])
        if results[-1] == "refused":
            refused_after.append(time.monotonic() - t0)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T)
    assert results.count("refused") >= 4 and results.count("ok") >= 2, results
    # a refused connection is held (unread) before it is closed, not bounced back at once
    assert min(refused_after) > REFUSED_HOLD - 1.5, refused_after
    # meanwhile: another prefix, and a resumption from the limited one, go through at once
    assert handshake(s.port, "127.0.1.1")[0] == "ok"
    assert handshake(s.port, "127.0.0.1", session, ctx)[0] == "resumed"
    m = wait_for(lambda: (x := scrape(mport)).get(
        "stud_handshakes_limited_total{action=refused}") and x, T)
    assert m["stud_handshakes_limited_total{action=refused}"] == results.count("refused")
    assert m.get("stud_handshakes_limited_total{action=delayed}", 0) >= 1
    wait_for(lambda: "handshake limit:" in s.output(), 15.0)
    line = [ln for ln in s.output().splitlines() if "handshake limit:" in ln][0]
    assert "most from 127.0.0.0/24" in line


def test_a_resumption_that_fails_pays_at_its_close(stud, backend, pem):
    """A ClientHello that offers a ticket goes through free; when the ticket opens nothing
    (another server's), the full handshake it became is charged at its close."""
    port = backend("echo")
    other = stud(pem, backend_port=port)  # its own ticket keys
    s = stud("--handshake-rate", "0.01", "--handshake-burst", "1", pem, backend_port=port)
    ctx = client_ctx(maximum_version=ssl.TLSVersion.TLSv1_2)
    _, foreign = handshake(other.port, "127.0.0.1", ctx=ctx)
    assert handshake(s.port, "127.0.0.1", foreign, ctx)[0] == "ok"  # free, and not resumed
    time.sleep(0.3)  # (its close reaches the worker)
    assert handshake(s.port, "127.0.0.1")[0] == "refused"  # its token was taken at the close


def test_garbage_pays_as_a_full_handshake(stud, backend, pem):
    """Bytes that are no ClientHello cost an accept and a failed handshake: charged as a full
    one (a garbage flood is held back like a handshake flood)."""
    s = stud("--handshake-rate", "0.01", "--handshake-burst", "1", pem,
             backend_port=backend("echo"))
    junk = {"127.0.0.1": b"GET / HTTP/1.0\r\n\r\n",
            "127.0.1.1": b"\x16\x03\x01\xff\xffNOT TLS AT ALL\r\n"}  # (a record too long)
    for source, data in junk.items():
        with socket.create_connection(("127.0.0.1", s.port), timeout=T,
                                      source_address=(source, 0)) as c:
            c.sendall(data)
            assert peer_closes_within(c, T)
    results: dict[str, str] = {}
    threads = [threading.Thread(target=lambda a=a: results.update({a: handshake(s.port, a)[0]}))
               for a in junk]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T)
    # each prefix's one token went to its garbage: its next full handshake is refused
    assert results == {a: "refused" for a in junk}


def test_a_begun_client_hello_takes_no_token_and_times_out(stud, backend, pem):
    """With the limiter on, connections that send the start of a ClientHello and stop cost
    their prefix nothing (judged only once the record is there) and are closed at the
    handshake timeout; a ClientHello sent in pieces is judged, and served, once whole."""
    s = stud("--handshake-rate", "0.01", "--handshake-burst", "1", "--ssl-handshake-timeout",
             "2", pem, backend_port=backend("echo"))
    hello = client_hello()
    t0 = time.monotonic()
    begun = [socket.create_connection(("127.0.0.1", s.port), timeout=T) for _ in range(5)]
    time.sleep(2.5)  # past TCP_DEFER_ACCEPT: accepted before their first byte, judged later
    for c in begun:
        c.sendall(hello[:40])
    t1 = time.monotonic()
    # the prefix's one token is still there: the next full handshake goes through at once
    assert handshake(s.port, "127.0.0.1")[0] == "ok"
    assert time.monotonic() - t1 < 1.0
    for c in begun:
        assert peer_closes_within(c, T), "a begun ClientHello outlived the handshake timeout"
        c.close()
    assert time.monotonic() - t0 > 1.5
    # in pieces, from another prefix (its own token): served once whole
    with socket.create_connection(("127.0.0.1", s.port), timeout=T,
                                  source_address=("127.0.1.1", 0)) as c:
        handshake_in_pieces(c)


def test_a_client_gone_before_its_hello_is_whole_takes_no_token(stud, backend, pem):
    """Clients that close (or reset) before their ClientHello is whole, having sent part of
    it or nothing, cost their prefix nothing: the one token is still there afterwards."""
    s = stud("--handshake-rate", "0.01", "--handshake-burst", "1", pem,
             backend_port=backend("echo"))
    hello = client_hello()
    for sent in (hello[:40], hello[:3], b""):
        c = socket.create_connection(("127.0.0.1", s.port), timeout=T)
        c.sendall(sent)
        time.sleep(0.2)
        c.shutdown(socket.SHUT_WR)
        assert peer_closes_within(c, T)
        c.close()
    c = socket.create_connection(("127.0.0.1", s.port), timeout=T)
    c.sendall(hello[:40])
    time.sleep(0.2)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # a reset
    time.sleep(0.2)
    assert handshake(s.port, "127.0.0.1")[0] == "ok"


def test_client_mode_counts_connections_and_lets_the_server_speak_first(stud, backend, pem):
    """With --client the client's bytes are no ClientHello: each connection is charged (it is
    a full handshake towards the backend), and one that waits for the server to speak is
    served without sending a byte."""
    server = stud(pem, backend_port=backend("greet"))
    client = stud("--client", "--handshake-rate", "0.01", "--handshake-burst", "1",
                  backend_port=server.port)
    with socket.create_connection(("127.0.0.1", client.port), timeout=T) as c:
        assert c.recv(100) == b"220 hello\r\n"
    with socket.create_connection(("127.0.0.1", client.port), timeout=T) as c:
        c.settimeout(REFUSED_HOLD + 3)
        t0 = time.monotonic()
        assert c.recv(100) == b"", "a second connection over the budget was served"
        assert time.monotonic() - t0 > REFUSED_HOLD - 1.5


def test_off_by_default(stud, backend, pem):
    s = stud(pem, backend_port=backend("echo"))
    results = [handshake(s.port, "127.0.0.1")[0] for _ in range(12)]
    assert results == ["ok"] * 12
