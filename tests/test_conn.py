"""stud._flow.Conn in this process, on real sockets and real TLS: what it reports to its policy,
and that it leaves no references behind (a C object's refcount errors only show up here, or
as a crash thousands of connections later)."""

from __future__ import annotations

import gc
import hashlib
import select
import socket
import ssl
import sys
import threading
import time
import weakref

import pytest
from helpers import client_ctx

from stud import proxyproto, relay
from stud.metrics import CONNECT_BUCKETS, HS_BUCKETS
from stud.policy import ConnPolicy

if relay.Conn is None:
    pytest.skip("stud._flow is not built", allow_module_level=True)


class Hooks:
    """A Conn's policy (relay.Hooks), recording what it is told."""

    def __init__(self, header: bytes = b"") -> None:
        self.header = header
        self.events: list[tuple] = []
        self.tls_info: list[tuple | None] = []
        self.open: set = set()

    def client_header(self, conn) -> bytes:
        self.events.append(("client_header", conn.tls_info))
        return self.header if self.header is not None else conn.pbuf

    proxy_header = ConnPolicy.proxy_header

    def handshake_failed(self, conn, state) -> None:
        err = relay.handshake_error(conn.tls, state)
        self.events.append(("handshake_failed", type(err).__name__))
        conn.close(f"handshake failed: {relay.reason(err)}", 2)

    def backend_failed(self, conn, why) -> None:
        self.events.append(("backend_failed", why))
        conn.close(f"backend connect failed: {why}")

    def closed(self, conn, why, level, up, down) -> None:
        self.open.discard(conn)
        self.events.append(("closed", why, up, down))
        self.tls_info.append(conn.tls_info)


class Hold:
    """A pause of the Rig's loop, for a client to fill its socket first."""

    def __init__(self) -> None:
        self.wanted, self.holding = threading.Event(), threading.Event()

    def __enter__(self) -> None:
        self.wanted.set()
        assert self.holding.wait(5)

    def __exit__(self, *exc: object) -> None:
        self.holding.clear()
        self.wanted.clear()


class Rig:
    """A listener whose connections become Conns, served by a Poller on this thread."""

    def __init__(self, pem: str, backend_port: int, hooks: Hooks, *, header: bool = False,
                 handshake_timeout: float = 30.0, proxy: bool = False,
                 client: ssl.SSLContext | None = None) -> None:
        self.errors: list[BaseException] = []
        self.poller = relay._flow.Poller(self.errors.append)
        self.poller.configure(socket.AF_INET, ("127.0.0.1", backend_port), handshake_timeout,
                              10.0, header, HS_BUCKETS, CONNECT_BUCKETS, sock_type=relay.Sock,
                              proxy=proxyproto.MAX_V2_LENGTH if proxy else 0,
                              client_wrap=client._wrap_socket if client else None)
        self.client = client
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pem)
        self.ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF  # as stud's: a FIN ends the stream
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.lsock.setblocking(False)
        self.port = self.lsock.getsockname()[1]
        self.hooks = hooks
        self.conns: list[weakref.ref] = []

    def serve_until(self, done: threading.Event, timeout: float = 20.0,
                    hold: Hold | None = None) -> None:
        """Serve until done; not while hold is set."""
        end = time.monotonic() + timeout
        while not done.is_set() and time.monotonic() < end:
            if hold and hold.wanted.is_set():
                hold.holding.set()
                time.sleep(0.01)
                continue
            ready, _, _ = select.select([self.lsock, self.poller.fileno()], [], [], 0.05)
            if self.lsock in ready:
                sock, peer = self.lsock.accept()
                sock = relay.Sock(socket.AF_INET, socket.SOCK_STREAM, 0, sock.detach())
                sock.setblocking(False)
                conn = relay.Conn(self.poller, self.hooks, sock, peer, ())
                self.hooks.open.add(conn)
                self.conns.append(weakref.ref(conn))
                conn.start(None if self.client else
                           self.ctx._wrap_socket(sock, True, None, owner=conn))
            self.poller.dispatch()
        assert done.is_set(), "the client did not finish in time"

    def close(self) -> None:
        self.lsock.close()
        self.poller.close()


def echo_backend(tls: ssl.SSLContext | None = None) -> tuple[socket.socket, threading.Thread]:
    """A backend that echoes each connection until EOF, then closes it (in TLS if given)."""
    lsock = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        while True:
            try:
                sock, _ = lsock.accept()
            except OSError:
                return
            try:
                with tls.wrap_socket(sock, server_side=True) if tls else sock as s:
                    while data := s.recv(65536):
                        s.sendall(data)
            except OSError:
                sock.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return lsock, t


def in_thread(fn) -> threading.Event:
    done = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - re-raised by the test below
            failures.append(e)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    done.failures = failures
    return done


def run_one(rig: Rig, client, hold: Hold | None = None) -> None:
    done = in_thread(client)
    rig.serve_until(done, hold=hold)
    assert not done.failures, done.failures
    # The clients close their TLS side last; let the Conns see those ends.
    end = time.monotonic() + 5
    while rig.hooks.open and time.monotonic() < end:
        select.select([rig.poller.fileno()], [], [], 0.05)
        rig.poller.dispatch()


def refs() -> tuple[int, int, int]:
    return sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False)


class Counted:
    """A run of count connections, after a warm-up (first-use caches), then the rig and the
    backend closed: what the hooks saw (the events; tls_info as strings: kept tuples would
    hold None and False) and the Poller's counts, checked for leaked references (the
    refcounts of None, True and False) and Conns."""

    def __init__(self, rig: Rig, backend: socket.socket, clients, count: int) -> None:
        hooks = rig.hooks
        try:
            run_one(rig, lambda: clients(4))
            hooks.events.clear()
            hooks.tls_info.clear()
            rig.conns.clear()
            rig.poller.take_stats()
            gc.collect()
            before = refs()
            run_one(rig, lambda: clients(count))
            assert not hooks.open
            self.taken = rig.poller.take_stats()
            self.closed = [e for e in hooks.events if e[0] == "closed"]
            self.infos = [(v, c, str(sni), str(alpn), str(resumed))
                          for v, c, sni, alpn, resumed in hooks.tls_info]
            hooks.events.clear()
            hooks.tls_info.clear()
            gc.collect()
            after = refs()
        finally:
            rig.close()
            backend.close()
        assert not rig.errors
        # A refcount error costs one reference (or more) per connection; allow a little slack
        # for objects the interpreter caches meanwhile.
        assert [abs(a - b) < count // 2 for a, b in zip(before, after, strict=True)] == [True] * 3
        assert [r() for r in rig.conns] == [None] * count  # every Conn freed


def test_connections_relay_and_leave_no_references_behind(pem):
    backend, _ = echo_backend()
    hooks = Hooks()
    rig = Rig(pem, backend.getsockname()[1], hooks)
    payload = bytes(range(256)) * 400  # 100 KiB: more than one read, both ways
    count = 60

    def clients(n: int = count) -> None:
        for i in range(n):
            ctx = client_ctx(maximum_version=ssl.TLSVersion.TLSv1_2 if i % 2 else
                             ssl.TLSVersion.TLSv1_3)
            with socket.create_connection(("127.0.0.1", rig.port), timeout=10) as raw, \
                    ctx.wrap_socket(raw, server_hostname="stud.test") as s:
                s.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    got += s.recv(65536)
                assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()

    run = Counted(rig, backend, clients, count)
    closed, infos = run.closed, run.infos
    assert len(closed) == count
    assert {(why, up, down) for _, why, up, down in closed} == {
        ("closed", len(payload), len(payload))}
    assert [(v, sni, alpn, resumed) for v, _, sni, alpn, resumed in infos] == \
        [("TLSv1.3", "stud.test", "None", "False"),
         ("TLSv1.2", "stud.test", "None", "False")] * (count // 2)
    assert {c for _, c, _, _, _ in infos} == {"TLS_AES_256_GCM_SHA384",
                                              "ECDHE-ECDSA-AES256-GCM-SHA384"}
    handshakes, resumed, versions, ciphers, (buckets, seconds), (cbuckets, cseconds), \
        counts = run.taken
    assert counts == (0, 0, 0)  # Conns started by hand, closed by the policy's closed()
    assert (handshakes, resumed, versions) == (count, 0, {"TLSv1.3": count // 2,
                                                          "TLSv1.2": count // 2})
    assert sum(ciphers.values()) == sum(buckets) == sum(cbuckets) == count
    assert 0 < cseconds and 0 < seconds < count
    assert (len(buckets), len(cbuckets)) == (len(HS_BUCKETS) + 1, len(CONNECT_BUCKETS) + 1)



def test_records_read_ahead_are_relayed_at_once(pem):
    """OpenSSL reads ahead: a read() can bring more records than one pass of the relay takes
    (up to 64 KiB), and those wait in OpenSSL's buffer where epoll cannot see them. Each burst
    (full records, then small ones; all in the socket before the Conn reads) must come back
    whole without the client sending more: after 1 pass, or after the 4 passes in a row that
    one event may take."""
    backend, _ = echo_backend()
    rig = Rig(pem, backend.getsockname()[1], Hooks())
    hold = Hold()
    bursts = [(groups, size, n) for groups in (1, 2, 4) for size in (10, 100, 400)
              for n in (1, 3, 7, 15)]

    def client() -> None:
        with socket.create_connection(("127.0.0.1", rig.port), timeout=3) as raw, \
                client_ctx().wrap_socket(raw) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # (no record waits)
            for i, (groups, size, n) in enumerate(bursts):
                # Groups of three full records and a small one: a pass's worth each.
                small = [bytes([i % 256, k % 256]) * (size // 2) for k in range(n + 4 * groups)]
                records = [r for g in range(groups)
                           for r in [bytes([i % 256, g]) * 8192] * 3 + [small.pop()]] + small
                with hold:
                    for record in records:
                        s.sendall(record)  # one TLS record each
                    time.sleep(0.02)  # (loopback: in the Conn's socket by then)
                want, got = b"".join(records), b""
                while len(got) < len(want):
                    got += s.recv(65536)  # (a record left unread: the timeout fails the test)
                assert got == want, (groups, size, n)

    try:
        run_one(rig, client, hold)
    finally:
        rig.close()
        backend.close()
    assert not rig.errors


def test_records_read_ahead_are_relayed_once_the_backend_connects(pem):
    """A full pass whose records cannot be written yet (the backend connect is still
    pending: its SYN was dropped, the backend's accept queue being full) pauses reading;
    once connected, what read-ahead left in OpenSSL's buffer must go on without more input."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    filler = socket.create_connection(lsock.getsockname())  # the queue is full after this one
    go = threading.Event()

    def backend() -> None:
        go.wait(10)
        lsock.accept()[0].close()  # the filler's: the SYN retried next gets in
        sock, _ = lsock.accept()
        with sock:
            while data := sock.recv(65536):
                sock.sendall(data)

    threading.Thread(target=backend, daemon=True).start()
    rig = Rig(pem, lsock.getsockname()[1], Hooks())
    hold = Hold()

    def client() -> None:
        with socket.create_connection(("127.0.0.1", rig.port), timeout=8) as raw, \
                client_ctx().wrap_socket(raw) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # The small ones fit in what OpenSSL's last read brings beyond the third full record
            # (its buffer holds a record and its overhead: 239 bytes more, with OpenSSL 3.0).
            records = [bytes([k]) * 16384 for k in range(3)] + [bytes([k]) * 10 for k in range(4)]
            with hold:
                for record in records:
                    s.sendall(record)
                time.sleep(0.02)
            time.sleep(0.2)  # (the Conn's pass, to a backend still connecting)
            go.set()
            want, got = b"".join(records), b""
            while len(got) < len(want):
                got += s.recv(65536)
            assert got == want

    try:
        run_one(rig, client, hold)
    finally:
        rig.close()
        lsock.close()
        filler.close()
    assert not rig.errors


@pytest.mark.parametrize("mode", ["proxy", "client"])
def test_proxy_and_client_conns_relay_and_leave_no_references_behind(pem, mode):
    """--proxy-proxy: a PROXY header in clear, then TLS; the header goes on to the backend
    (which echoes it). --client: the client in clear, TLS towards the backend."""
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pem)
    backend, _ = echo_backend(tls if mode == "client" else None)
    hooks = Hooks(header=None if mode == "proxy" else b"")
    rig = Rig(pem, backend.getsockname()[1], hooks, header=mode == "proxy",
              proxy=mode == "proxy", client=client_ctx(options=ssl.OP_IGNORE_UNEXPECTED_EOF)
              if mode == "client" else None)  # (as stud's client context)
    payload = bytes(range(256)) * 100
    proxy = b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n"
    count = 40

    def clients(n: int = count) -> None:
        expect = payload if mode == "client" else proxy + payload
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", rig.port), timeout=10)
            if mode == "proxy":
                # The header in two parts on odd connections: it is reassembled.
                s.sendall(proxy[:7])
                if i % 2:
                    time.sleep(0.01)
                s.sendall(proxy[7:])
                s = client_ctx().wrap_socket(s)
            with s:
                s.sendall(payload)
                got = b""
                while len(got) < len(expect):
                    got += s.recv(65536)
                assert got == expect
                if mode == "client":
                    s.shutdown(socket.SHUT_WR)
                    assert s.recv(10) == b""

    run = Counted(rig, backend, clients, count)
    down = len(payload) + (len(proxy) if mode == "proxy" else 0)  # (the header is echoed)
    assert run.closed == [("closed", "closed", len(payload), down)] * count


def test_header_goes_first_and_is_not_counted(pem):
    lsock = socket.create_server(("127.0.0.1", 0))
    hooks = Hooks(header=b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
    rig = Rig(pem, lsock.getsockname()[1], hooks, header=True)
    seen = []

    def backend() -> None:
        sock, _ = lsock.accept()
        with sock:
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            seen.append(data)

    threading.Thread(target=backend, daemon=True).start()

    def client() -> None:
        with socket.create_connection(("127.0.0.1", rig.port), timeout=10) as raw, \
                client_ctx().wrap_socket(raw) as s:
            s.sendall(b"hello")
            s.unwrap()  # close_notify: the backend gets a FIN after the bytes

    try:
        run_one(rig, client)
        end = time.monotonic() + 5
        while not seen and time.monotonic() < end:
            time.sleep(0.01)
    finally:
        rig.close()
        lsock.close()
    assert seen == [hooks.header + b"hello"]
    assert [e for e in hooks.events if e[0] == "closed"] == [("closed", "closed", 5, 0)]


def test_a_raising_hook_closes_its_conn_only_and_is_reported(pem):
    """A bug in a policy hook (here client_header, on the first connection) goes to the
    Poller's on_error; that connection closes as an internal error, the next ones relay."""
    backend, _ = echo_backend()

    class Raising(Hooks):
        def client_header(self, conn) -> bytes:
            if not self.events:
                raise ZeroDivisionError("a bug")
            return super().client_header(conn)

    hooks = Raising()
    rig = Rig(pem, backend.getsockname()[1], hooks, header=True)

    def clients() -> None:
        for i in range(3):
            with socket.create_connection(("127.0.0.1", rig.port), timeout=10) as raw, \
                    client_ctx().wrap_socket(raw) as s:
                s.sendall(b"ping")
                if i == 0:  # closed: a FIN, or an RST when the ping was still unread
                    try:
                        assert s.recv(10) == b""
                    except ConnectionResetError:
                        pass
                else:
                    assert s.recv(10) == b"ping"

    try:
        run_one(rig, clients)
    finally:
        rig.close()
        backend.close()
    assert [type(e) for e in rig.errors] == [ZeroDivisionError]
    closed = [e for e in hooks.events if e[0] == "closed"]
    assert closed == [("closed", "internal error", 0, 0)] + [("closed", "closed", 4, 4)] * 2


def test_a_down_backend_is_reported_once(pem):
    with socket.create_server(("127.0.0.1", 0)) as gone:
        port = gone.getsockname()[1]  # closed at once: connections are refused
    hooks = Hooks()
    rig = Rig(pem, port, hooks)

    def client() -> None:
        with socket.create_connection(("127.0.0.1", rig.port), timeout=10) as raw, \
                client_ctx().wrap_socket(raw) as s:
            s.sendall(b"x")
            assert s.recv(10) == b""

    try:
        run_one(rig, client)
    finally:
        rig.close()
    assert [e for e in hooks.events if e[0] != "handshaken"] == [
        ("backend_failed", "Connection refused"),
        ("closed", "backend connect failed: Connection refused", 0, 0)]


def test_garbage_fails_the_handshake_and_never_reaches_the_backend(pem):
    with socket.create_server(("127.0.0.1", 0)) as gone:
        port = gone.getsockname()[1]
    hooks = Hooks()
    rig = Rig(pem, port, hooks)

    def client() -> None:
        with socket.create_connection(("127.0.0.1", rig.port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:
                s.recv(100)  # an alert, or a reset: the request was not read
            except ConnectionResetError:
                pass

    try:
        run_one(rig, client)
    finally:
        rig.close()
    assert hooks.events[0] == ("handshake_failed", "SSLError")
    assert hooks.events[1][:2] == ("closed", "handshake failed: TLS error: HTTP_REQUEST")
    assert len(hooks.events) == 2


def test_a_silent_client_expires_with_its_handshake_deadline(pem):
    hooks = Hooks()
    rig = Rig(pem, 9, hooks, handshake_timeout=0.2)
    try:
        with socket.create_connection(("127.0.0.1", rig.port), timeout=10):
            end = time.monotonic() + 5
            while not rig.conns and time.monotonic() < end:
                rig.serve_until(in_thread(lambda: time.sleep(0.01)))
            conn = rig.conns[0]()
            assert rig.poller.expired(time.monotonic()) == []
            time.sleep(0.25)
            assert rig.poller.expired(time.monotonic()) == [(conn, "handshake")]
            assert rig.poller.expired(time.monotonic() + 60) == []  # disarmed once reported
            conn.close("handshake timeout")
    finally:
        rig.close()
    assert hooks.events == [("closed", "handshake timeout", 0, 0)]
