"""The shared session cache (-C) and its UDP replication (-U/-P): in-process on real TLS
connections and real UDP sockets, then the real stud with 2 workers, and two studs as peers."""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    HERE,
    STUD,
    Proc,
    client_ctx,
    free_port,
    in_netns,
    ready_port,
    run_tool,
    s_client,
    scrape,
    server_ctx,
    tls_connect,
    tls_pair,
    tool_env,
    wait_for,
)

from stud import sesscache, sslext

pytestmark = pytest.mark.skipif(sesscache._sesscache is None, reason="stud._sesscache not built")

T = 10.0  # upper bound for any single wait
KEY = hashlib.sha1(b"test key").digest()


@pytest.fixture
def cache():
    """A fresh 4-slot cache; replication off again afterwards."""
    from stud import _sesscache
    _sesscache.use(_sesscache.Cache(4))
    yield _sesscache
    _sesscache.replicate(-1, b"", [])


def attached(pem: str) -> ssl.SSLContext:
    ctx = server_ctx(pem)
    sesscache._sesscache.attach(sslext.ctx_pointer(ctx))
    return ctx


def only(version: ssl.TLSVersion) -> ssl.SSLContext:
    return client_ctx(minimum_version=version, maximum_version=version)


# A TLS 1.2 client that asks for no ticket: only the session ID can resume it. (A session
# resumes only from the client context that made it.)
IDS_ONLY = only(ssl.TLSVersion.TLSv1_2)
IDS_ONLY.options |= ssl.OP_NO_TICKET


def connect(sctx: ssl.SSLContext, cctx: ssl.SSLContext,
            session: ssl.SSLSession | None = None) -> tuple[ssl.SSLSession, bool]:
    s, c = tls_pair(sctx, cctx, session=session)
    with s, c:
        sslext.keep_session(sslext.ssl_pointer(s._sslobj))  # as stud does before closing
        return c.session, c.session_reused


def test_session_ids_resume_on_another_context_and_the_oldest_go_first(cache, pem):
    a, b = attached(pem), attached(pem)  # two workers' contexts, as after the fork
    cctx = IDS_ONLY
    first, reused = connect(a, cctx)
    assert not reused and not first.has_ticket and len(first.id) == 32
    assert connect(b, cctx, first)[1] is True
    assert connect(server_ctx(pem), cctx, first)[1] is False  # a context without the cache
    later = [connect(a, cctx)[0] for _ in range(4)]  # 4 slots: the first session goes
    st = cache.stats()
    assert (st["size"], st["sessions"], st["stored"], st["evicted"], st["hits"]) == (4, 4, 5, 1, 1)
    assert all(connect(b, cctx, s)[1] for s in later)
    assert connect(b, cctx, first)[1] is False  # (its full handshake evicts one more)
    st = cache.stats()
    assert (st["sessions"], st["evicted"], st["hits"], st["misses"]) == (4, 2, 5, 1)


def test_tls13_tickets_stay_out_of_the_cache(cache, pem):
    """TLS 1.3 tickets carry the session: storing them would only evict TLS 1.2 sessions."""
    a = attached(pem)
    cctx = only(ssl.TLSVersion.TLSv1_3)
    s, c = tls_pair(a, cctx)
    with s, c:
        s.sendall(b"x")  # the tickets come after the handshake
        assert c.recv(1) == b"x"
        sslext.keep_session(sslext.ssl_pointer(s._sslobj))
        session = c.session
    assert connect(a, cctx, session)[1] is True
    assert cache.stats()["stored"] == 0


def packet_for(cache, pem) -> tuple[bytes, ssl.SSLSession, ssl.SSLContext]:
    """A real update packet: replication to a local socket during one full handshake."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(T)
        cache.replicate(rx.fileno(), KEY, [rx.getsockname()])
        a = attached(pem)
        session, _ = connect(a, IDS_ONLY)
        pkt = rx.recv(4096)
    cache.replicate(-1, b"", [])
    return pkt, session, a


def signed(body: bytes, key: bytes = KEY) -> bytes:
    return body + hmac.new(key, body, "sha1").digest()


def test_update_packets_are_studs_format(cache, pem):
    pkt, session, _ = packet_for(cache, pem)
    body, mac = pkt[:-20], pkt[-20:]
    assert hmac.new(KEY, body, "sha1").digest() == mac
    assert body[:32] == session.id.ljust(32, b"\0")
    assert body[32] == 0x30  # the DER SEQUENCE of the session
    (created,) = struct.unpack("!I", body[-4:])
    assert abs(created - time.time()) < 60 and created == session.time


def test_peer_updates_are_checked_then_resume(cache, pem):
    pkt, session, _ = packet_for(cache, pem)
    cache.use(cache.Cache(4))  # this host has never seen the session
    body = pkt[:-20]
    der, created = body[32:-4], struct.unpack("!I", body[-4:])[0]
    bad = [
        b"short",
        pkt[:-1] + bytes([pkt[-1] ^ 1]),                              # HMAC
        signed(body, hashlib.sha1(b"other key").digest()),           # another fleet's key
        signed(body[:32] + der[:-1] + body[-4:]),                    # truncated DER
        signed(body[:-4] + struct.pack("!I", created - 3 * 86400)),  # stale
        signed(b"\x01" * 32 + der + body[-4:]),                      # ID is not the session's
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        cache.replicate(rx.fileno(), KEY, [])
        b = attached(pem)
        cctx = IDS_ONLY
        for p in bad:
            tx.sendto(p, rx.getsockname())
        got = [0, 0]
        deadline = time.monotonic() + T
        while got[1] < len(bad) and time.monotonic() < deadline:
            taken, rejected = cache.receive()
            got = [got[0] + taken, got[1] + rejected]
            time.sleep(0.01)
        assert got == [0, len(bad)]
        assert connect(b, cctx, session)[1] is False
        tx.sendto(pkt, rx.getsockname())
        wait_for(lambda: cache.receive()[0] == 1, T)
        assert connect(b, cctx, session)[1] is True
    st = cache.stats()
    assert (st["received"], st["rejected"]) == (1, len(bad))


# -- the real stud ----------------------------------------------------------------------------

LINE = re.compile(r"\[(\d+)\] op=\"connection closed\".* resumed=(\d)")


def closed_lines(s) -> list[tuple[int, int]]:
    return [(int(pid), int(r)) for pid, r in LINE.findall(s.output())]


@pytest.mark.parametrize("mode", ["default", "-C 100", "-C 100, pure Python relay", "-C 0"])
def test_session_ids_resume_on_every_worker(stud, backend, pem, mode):
    """Reconnect with one TLS 1.2 session ID on each worker in turn (the other one stopped,
    so that this one accepts): with the shared cache (on by default, 20,000 sessions) every
    reconnect resumes; with -C 0, the worker that did not issue the ID makes a full handshake."""
    shared = mode != "-C 0"
    size = 100 if "100" in mode else 20000
    mport = free_port()
    env = dict(os.environ, STUD_PURE_PYTHON="1") if "pure" in mode else None
    args = [] if mode == "default" else mode.split(",")[0].split()
    s = stud(*args, "--metrics", f"127.0.0.1,{mport}", pem, backend_port=backend("echo"),
             workers=2, env=env)
    ctx = client_ctx(maximum_version=ssl.TLSVersion.TLSv1_2)
    ctx.options |= ssl.OP_NO_TICKET
    workers = wait_for(lambda: len(s.workers()) == 2 and s.workers(), T)
    session = None
    for i, (serving, stopped) in enumerate([workers, workers, workers[::-1]] * 2):
        os.kill(stopped, signal.SIGSTOP)
        try:
            raw = socket.create_connection(("127.0.0.1", s.port), timeout=T)
            with ctx.wrap_socket(raw, session=session) as c:
                c.sendall(b"ping")
                assert c.recv(4) == b"ping"
                session = session or c.session
            wait_for(lambda i=i: len(closed_lines(s)) == i + 1, T)
        finally:
            os.kill(stopped, signal.SIGCONT)
        assert closed_lines(s)[-1][0] == serving
    again = closed_lines(s)[1:]  # (after the first: the issuer's, then the other's, ...)
    resumed = [r for _, r in again]
    m = scrape(mport)
    if shared:
        assert resumed == [1] * len(again)
        assert m["stud_session_cache_sessions"] == 1 and m["stud_session_cache_size"] == size
        events = {e: m[f"stud_session_cache_events_total{{event={e}}}"]
                  for e in ("stored", "hits", "misses")}
        assert events == {"stored": 1, "hits": len(again), "misses": 0}
    else:  # only the issuer (workers[0]) knows the ID
        assert resumed == [1, 0, 1, 1, 0]
        assert "stud_session_cache_sessions" not in m


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_sessions_resume_on_a_peer_stud(stud, backend, pem, version):
    """Two studs with -U/-P pointing at each other (tickets off, as stud: the peer has other
    ticket keys): a session made on A resumes on B, in TLS 1.2 and in TLS 1.3."""
    ua, ub = free_port(kind=socket.SOCK_DGRAM), free_port(kind=socket.SOCK_DGRAM)
    port = backend("echo")
    a = stud("-C", "100", "-U", f"127.0.0.1,{ua}", "-P", f"127.0.0.1,{ub}", pem,
             backend_port=port)
    b = stud("-C", "100", "-U", f"127.0.0.1,{ub}", "-P", f"127.0.0.1,{ua}", pem,
             backend_port=port)
    ctx = only(version)
    with tls_connect(a.port, ctx=ctx) as c:
        c.sendall(b"ping")
        assert c.recv(4) == b"ping"  # (TLS 1.3: the ticket has arrived)
        session = c.session

    def resumes_on_b() -> bool:
        raw = socket.create_connection(("127.0.0.1", b.port), timeout=T)
        with ctx.wrap_socket(raw, session=session) as c:
            c.sendall(b"ping")
            assert c.recv(4) == b"ping"
            return c.session_reused

    assert wait_for(resumes_on_b, T, 0.2)
    assert "Session cache updates on udp" in b.output()


@pytest.fixture
def two_hosts() -> Iterator[list[tuple[str, str, str]]]:
    """Two network namespaces joined by a veth pair: [(netns, interface, address)] x 2."""
    if os.getuid() != 0:
        pytest.skip("needs root for network namespaces")
    tag = f"st{os.getpid() % 100000}"
    hosts = [(f"{tag}a", f"{tag}va", "10.213.7.1"), (f"{tag}b", f"{tag}vb", "10.213.7.2")]

    def ip(*args: str) -> None:
        run_tool(["ip", *args], check=True, capture_output=True, timeout=T)

    try:
        for ns, _, _ in hosts:
            ip("netns", "add", ns)
        (na, va, _), (nb, vb, _) = hosts
        ip("link", "add", va, "netns", na, "type", "veth", "peer", "name", vb, "netns", nb)
        for ns, dev, address in hosts:
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
    except (OSError, subprocess.SubprocessError) as e:
        for ns, _, _ in hosts:
            run_tool(["ip", "netns", "del", ns], capture_output=True, timeout=T)
        pytest.skip(f"cannot make network namespaces: {e}")
    yield hosts
    for ns, _, _ in hosts:
        run_tool(["ip", "netns", "del", ns], capture_output=True, timeout=T)


def new_or_reused(ns: str, address: str, port: int, session: Path, first: bool) -> str:
    """openssl s_client in netns ns: TLS 1.2 without tickets, the session saved or offered."""
    out = s_client(port, "-tls1_2", "-no_ticket", "-sess_out" if first else "-sess_in",
                   str(session), host=address, netns=ns, timeout=T).stdout
    return "Reused" if "\nReused," in out else "New" if "\nNew," in out else out


def test_sessions_replicate_over_multicast_between_hosts(two_hosts, procs, pem, tmp_path):
    """-U on a multicast group, joined on -M's interface, as peer too: a session made on one
    host resumes on the other (a host does not hear its own updates: loop is off, as stud)."""
    group, port = "239.213.7.7", 7707
    for ns, dev, address in two_hosts:
        back = Proc(in_netns(ns, [STUD[0], str(HERE / "backend.py"), "echo", "0",
                                  str(tmp_path / f"rec-{ns}")], keep_preload=True),
                    tmp_path / f"backend-{ns}.out", env=tool_env())
        procs.append(back)
        bport = ready_port(back, T)
        s = Proc(in_netns(ns, [*STUD, "-n", "1", "-f", f"{address},8443",
                               "-b", f"127.0.0.1,{bport}", "-C", "100", "-U", f"{group},{port}",
                               "-M", f"{dev},1", "-P", f"{group},{port}", pem], keep_preload=True),
                 tmp_path / f"stud-{ns}.out", env=tool_env())
        procs.append(s)
        wait_for(lambda s=s: "online" in s.output() or s.proc.poll() is not None, T)
        assert s.proc.poll() is None, s.output()
    (na, _, a), (nb, _, b) = two_hosts
    session = tmp_path / "session.pem"
    assert new_or_reused(na, a, 8443, session, first=True) == "New"
    assert wait_for(lambda: new_or_reused(nb, b, 8443, session, first=False) == "Reused",
                    T, 0.2)


def test_a_process_dying_with_the_lock_held_does_not_block_the_others(cache, pem):
    """stud's futex deadlocked every worker; here the next locker empties the cache instead.
    (The lock is the mapping's first field; a forked child takes it and exits.)"""
    def shared_maps() -> set[str]:
        maps = Path("/proc/self/maps").read_text().splitlines()
        return {ln for ln in maps if ln.rstrip().endswith("/dev/zero (deleted)")}

    before = shared_maps()
    cache.use(cache.Cache(4))
    new = shared_maps() - before
    assert len(new) == 1, "the cache's MAP_SHARED mapping is not in /proc/self/maps"
    start = int(new.pop().split("-")[0], 16)
    a = attached(pem)
    first, _ = connect(a, IDS_ONLY)
    assert cache.stats()["sessions"] == 1
    pid = os.fork()
    if pid == 0:
        ctypes.CDLL(None).pthread_mutex_lock(ctypes.c_void_p(start))
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    st = cache.stats()  # would hang forever with a plain process-shared mutex
    assert (st["resets"], st["sessions"]) == (1, 0)
    assert connect(a, IDS_ONLY, first)[1] is False  # emptied, and working
    assert connect(a, IDS_ONLY, connect(a, IDS_ONLY)[0])[1] is True
