"""One connection: client TLS <-> backend TCP, driven by the event loop's fd callbacks.

Each side is a non-blocking socket, with an OpenSSL connection on its fd on the TLS side, so
OpenSSL reads the kernel socket itself and releases its buffers while idle. Data moves through
one buffer shared by the whole process: what cannot be written at once is kept (at most one
read's worth per direction) and reading from the source pauses until it is flushed, so a slow
reader throttles the other side instead of growing memory. Half-close is passed on in both
directions: a client's close_notify or FIN becomes shutdown(SHUT_WR) towards the backend and the
backend's reply still flows back; a backend's FIN becomes a close_notify while the client may go
on sending.

Where stud/_flow.c is built, every connection is a _flow.Conn, the same life in C with the C
path's own optimisations (OpenSSL's read-ahead and the re-reads it needs, accept and close in
C). Relay is the fallback where it is not built (or with STUD_PURE_PYTHON=1): it passes the
same black-box tests but is not a copy of the C path. Where stud.sslext cannot load either (an
OpenSSL or CPython it was not written for), a backend's EOF closes the whole connection after a
close_notify (no half-close towards the client) and the SNI name is not known.

Both call back only the connection policy (:class:`Hooks`) and register their fds and
deadlines with a watch: a :class:`LoopWatch` here, a stud._flow.Poller for Conns.
"""

from __future__ import annotations

import _socket
import _ssl
import asyncio
import errno
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Protocol

from stud import proxyproto
from stud.log import CONN, DEBUG, ERROR

try:
    from stud import sslext
except ImportError:  # (the master logs why, once)
    sslext = None

BUFSIZE = 65536
RECORD = 16384  # the largest TLS record's plaintext
_buf = bytearray(BUFSIZE)  # one per process: data is forwarded before the next read reuses it
_view = memoryview(_buf)
_now = time.monotonic
WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
# With OP_IGNORE_UNEXPECTED_EOF a FIN reads as the end (b""); SSLEOFError is then a socket error
# whose errno CPython drops: on a read, a reset (what stud._flow, which sees errno, logs).
RESET = os.strerror(errno.ECONNRESET)
HS_ERRORS = (ssl.SSLError, OSError)


class Sock(_socket.socket):
    """The C-level socket plus a weakref slot (the ssl module keeps a weak reference to it):
    socket.socket's Python layer costs more per connection than the accept syscall."""

    __slots__ = ("__weakref__",)


class End:
    """One socket of a relay: which flow reads from it, which flow writes into it.

    ``tls`` is the raw ``_ssl._SSLSocket`` that ``SSLContext._wrap_socket`` returns: the
    ``ssl.SSLSocket`` wrapper adds several Python calls to every read and write.
    """

    __slots__ = ("sock", "tls", "ssl", "fd", "name", "inflow", "outflow", "reader", "writer",
                 "read_wants_write", "__weakref__")

    def __init__(self, sock: Sock, name: str) -> None:
        self.sock = sock
        self.tls = None
        self.ssl: int | None = None  # the checked SSL* of tls
        self.fd = sock.fileno()
        self.name = name
        self.inflow: Flow | None = None
        self.outflow: Flow | None = None
        self.reader: Callable[[], None] | None = None  # what the loop calls now, if anything
        self.writer: Callable[[], None] | None = None
        self.read_wants_write = False

    def writable(self) -> None:
        if self.read_wants_write and self.inflow is not None:
            self.read_wants_write = False
            self.inflow.readable()
        if self.outflow is not None and not self.outflow.relay.closed:
            self.outflow.writable()

    @property
    def context(self) -> ssl.SSLContext:
        return self.tls.context

    @context.setter
    def context(self, ctx: ssl.SSLContext) -> None:
        self.tls.context = ctx  # the SNI callback switches certificates through the owner


class Flow:
    """Bytes one way, src -> dst, with back-pressure and EOF propagation (stud/_flow.c's Conn
    runs the same state machine for both directions)."""

    __slots__ = ("relay", "src", "dst", "pending", "eof", "done", "nbytes")

    def __init__(self, relay: Relay, src: End, dst: End) -> None:
        self.relay, self.src, self.dst = relay, src, dst
        src.inflow, dst.outflow = self, self
        self.pending: memoryview | None = None
        self.eof = self.done = False
        self.nbytes = 0

    def readable(self) -> None:
        src, relay = self.src, self.relay
        tls = src.tls
        n = 0
        try:
            if tls is None:
                n = src.sock.recv_into(_view)
                self.eof = not n
            else:
                # One record per SSL_read. Go on only after a full record (bulk data): a short
                # one was all there was, and trying again would only raise SSLWantReadError.
                # Each read asks for at least a full record, so OpenSSL never keeps decrypted
                # bytes back that no fd event would announce.
                while n <= BUFSIZE - RECORD:
                    k = tls.read(BUFSIZE - n, _view[n:])
                    if not k:
                        self.eof = True
                        break
                    n += k
                    if k < RECORD:
                        break
        except WOULD_BLOCK as e:
            if isinstance(e, ssl.SSLWantWriteError):
                src.read_wants_write = True
                relay.want_write(src, src.writable)
        except ssl.SSLZeroReturnError:
            self.eof = True  # a close_notify after ours (OpenSSL reports it this way)
        except HS_ERRORS as e:
            if n:
                self.write(_view[:n])
            relay.end_failed(src, RESET if isinstance(e, ssl.SSLEOFError) else reason(e))
            return
        if relay.connecting and src is relay.back:
            relay.established()
        if n:
            relay.active = _now()
            if not self.write(_view[:n]):
                return  # dst is full: reading resumes in writable()
        if self.eof:
            relay.want_read(src, None)
            self.finish()

    def _send(self, data: memoryview) -> int | None:
        """Bytes of data written to dst (0: would block); None if dst failed (relay closed)."""
        dst, relay = self.dst, self.relay
        try:
            sent = dst.sock.send(data) if dst.tls is None else dst.tls.write(data)
        except WOULD_BLOCK:
            return 0
        except HS_ERRORS as e:
            relay.end_failed(dst, reason(e))
            return None
        if relay.connecting and dst is relay.back:
            relay.established()
        self.nbytes += sent  # delivered, not merely read: a failed backend gets none
        return sent

    def write(self, data: memoryview) -> bool:
        """Write data to dst; keep what did not fit and pause src. True if all was written."""
        sent = self._send(data)
        if sent == len(data):
            return True
        if sent is not None:
            # Copy: the shared buffer is reused by the next read, anywhere in this process.
            self.pending = memoryview(bytes(data[sent:]))
            self.relay.want_read(self.src, None)
            self.relay.want_write(self.dst, self.dst.writable)
        return False

    def writable(self) -> None:
        pending = self.pending
        if pending is not None:
            sent = self._send(pending)
            if sent is None:
                return
            if sent < len(pending):
                self.pending = pending[sent:]
                return
            self.pending = None
        if self.eof:
            self.finish()
        elif not self.relay.closed:
            self.relay.want_write(self.dst, None)
            self.relay.want_read(self.src, self.readable)

    def finish(self) -> None:
        """Pass EOF on once everything before it was written."""
        if self.pending is not None or self.done:
            return
        dst, relay = self.dst, self.relay
        if relay.connecting and dst is relay.back and not relay.backend_ready():
            # A FIN now would abort the connect: pass it on once the backend is there.
            if not relay.closed:
                relay.want_write(dst, dst.writable)
            return
        if dst.tls is not None and sslext is None:
            self.relay.end_without_half_close(dst)
            return
        try:
            if dst.tls is not None:
                sslext.shutdown_once(dst.ssl)
            else:
                dst.sock.shutdown(socket.SHUT_WR)
        except WOULD_BLOCK:
            self.relay.want_write(dst, dst.writable)
            return
        except HS_ERRORS as e:
            self.relay.end_failed(dst, reason(e))
            return
        self.done = True
        self.relay.want_write(dst, None)
        self.relay.flow_done()


class LoopWatch:
    """Where relays register their fds (the event loop's add_reader()/add_writer()) and their
    deadlines: what a stud._flow.Poller is for Conns."""

    __slots__ = ("loop", "deadlines")

    def __init__(self, loop: asyncio.AbstractEventLoop, handshake_timeout: float,
                 connect_timeout: float) -> None:
        self.loop = loop
        # kind -> (seconds, {relay: deadline}): one timeout per kind, so each dict is in
        # deadline order and expired() only looks at what has passed.
        self.deadlines: dict[str, tuple[float, dict[Relay, float]]] = {
            "handshake": (handshake_timeout, {}), "backend connect": (connect_timeout, {})}

    def set_reader(self, fd: int, cb: Callable[[], None] | None) -> None:
        if cb is None:
            self.loop.remove_reader(fd)
        else:
            self.loop.add_reader(fd, cb)  # replaces the previous callback, if any

    def set_writer(self, fd: int, cb: Callable[[], None] | None) -> None:
        if cb is None:
            self.loop.remove_writer(fd)
        else:
            self.loop.add_writer(fd, cb)

    def forget(self, fd: int) -> None:
        self.loop.remove_reader(fd)
        self.loop.remove_writer(fd)

    # A relay has at most one deadline armed.
    def arm(self, relay: Relay, kind: str) -> None:
        self.disarm(relay)
        seconds, armed = self.deadlines[kind]
        armed[relay] = time.monotonic() + seconds
        relay.armed = armed

    def disarm(self, relay: Relay) -> None:
        if relay.armed is not None:
            del relay.armed[relay]
            relay.armed = None

    def expired(self, now: float) -> Iterator[tuple[Relay, str]]:
        """(relay, kind) for each deadline that passed, disarmed (as Poller.expired())."""
        for kind, (_, armed) in self.deadlines.items():
            while armed:
                relay, deadline = next(iter(armed.items()))
                if deadline > now:
                    break
                self.disarm(relay)
                yield relay, kind


def data_path() -> str:
    """Which path connections take here, and why (stud --version)."""
    if _flow is not None:
        return "compiled (stud._flow)"
    if sslext is None:
        return "pure Python (stud.sslext refused this OpenSSL)"
    if os.environ.get("STUD_PURE_PYTHON"):
        return "pure Python (STUD_PURE_PYTHON is set)"
    return "pure Python (stud._flow is not built)"


def _compiled() -> ModuleType | None:
    """stud._flow, if it was built and STUD_PURE_PYTHON is not set."""
    if os.environ.get("STUD_PURE_PYTHON") or sslext is None:
        return None
    try:
        from stud import _flow
    except ImportError:
        return None
    _flow.init(sslext.addresses(), sslext.flow_layout())
    return _flow


def handshake_step(end: End) -> int:
    """One handshake step: 1 done, 2 wants to read, 3 wants to write; failures raise."""
    try:
        end.tls.do_handshake()
    except ssl.SSLWantReadError:
        return WANT_READ
    except ssl.SSLWantWriteError:
        return WANT_WRITE
    return 1


def handshake_error(tls: _ssl._SSLSocket | None, state: int) -> Exception:
    """What ssl would raise for a Conn's failed handshake step (-errno: a socket error,
    4: EOF, 5: closed (close_notify, or a FIN), 0: a TLS error still queued, which
    do_handshake() raises as ssl names it; tls None: a Conn's own SSL*, whose queued error
    sslext reads)."""
    if state < 0:
        return OSError(-state, os.strerror(-state))
    if state in (4, 5):  # (with the attributes that ssl's own errors have)
        e = (ssl.SSLEOFError(ssl.SSL_ERROR_EOF, "EOF occurred in violation of protocol")
             if state == 4 else ssl.SSLZeroReturnError(ssl.SSL_ERROR_ZERO_RETURN,
                                                       "TLS/SSL connection has been closed (EOF)"))
        e.library = e.reason = None
        return e
    if tls is None:
        return sslext.queued_error("handshake failed")
    try:
        tls.do_handshake()
    except HS_ERRORS as e:
        return e
    return ssl.SSLError("handshake failed")


WANT_READ, WANT_WRITE = 2, 3  # SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE
_flow = _compiled()
# A whole connection in C (stud/_flow.c), where built.
Conn = _flow.Conn if _flow else None


def new_watch(loop: asyncio.AbstractEventLoop, handshake_timeout: float, connect_timeout: float,
              on_error: Callable[[BaseException], None]) -> LoopWatch | _flow.Poller:
    """Where connections register their fds and deadlines: a stud._flow.Poller served by the
    loop, for Conns (configure() gives it the timeouts), or a LoopWatch, for relays. on_error
    gets what a Conn's hook raised."""
    if _flow is None:
        return LoopWatch(loop, handshake_timeout, connect_timeout)
    poller = _flow.Poller(on_error)
    loop.add_reader(poller.fileno(), poller.dispatch)
    return poller


def reason(e: BaseException) -> str:
    """A short, one-line cause for the connection log."""
    if isinstance(e, ssl.SSLZeroReturnError | ssl.SSLEOFError):
        return "closed the connection"  # e.g. a write after the peer's close_notify and FIN
    if isinstance(e, ssl.SSLError):
        return f"TLS error: {e.reason or e.__class__.__name__}"
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno)
    return str(e) or e.__class__.__name__


class Hooks(Protocol):
    """What a connection calls back: the connection policy, which owns the settings below and
    the counters. A Relay calls every hook; a stud._flow.Conn counts its handshakes and
    connects itself and calls the last five (by these names)."""

    client_context: ssl.SSLContext | None   # --client: towards the backend
    backend: tuple[int, tuple | str]        # (family, sockaddr, or a UNIX socket's path)
    mode: str | None                        # the client-address header: config's mode
    client_mode: bool

    def handshaken(self, conn: Relay, tls: _ssl._SSLSocket, name: bytes | None) -> None: ...
    def backend_connected(self, conn: Relay, seconds: float) -> None: ...
    def handshake_failed(self, conn: Relay, err: BaseException | int) -> None: ...
    def backend_failed(self, conn: Relay, why: str) -> None: ...
    def proxy_header(self, conn: Relay, peek: bytes) -> tuple[int, bool] | None: ...
    def client_header(self, conn: Relay) -> bytes: ...
    def closed(self, conn: Relay, why: str, level: int, up: int, down: int) -> None: ...


class Relay:
    """The life of one client connection, from accept to the close log line."""

    __slots__ = ("policy", "watch", "context", "front", "back", "peer", "local", "armed",
                 "started", "active", "closed", "flows", "tls_info", "pbuf", "hs_end", "hs_next",
                 "connecting")

    def __init__(self, watch: LoopWatch, policy: Hooks, sock: Sock, peer: tuple,
                 local: tuple, context: ssl.SSLContext | None) -> None:
        """context: where the client's handshake starts (its frontend's), None with --client."""
        self.watch, self.policy, self.context = watch, policy, context
        self.peer, self.local = peer, local
        self.front = End(sock, "client")
        self.back: End | None = None
        self.closed = False
        self.flows: tuple[Flow, ...] = ()
        self.tls_info: tuple = ()
        self.pbuf = b""  # --proxy-proxy: the header read so far
        self.started = self.active = _now()
        self.connecting = 0.0  # while the backend connect is pending: when it started
        self.armed: dict | None = None  # the watch's deadlines this relay is in, if any
        watch.arm(self, "handshake")
        self.hs_end: End | None = None
        self.hs_next: Callable[[], None] | None = None

    # -- fd interest: what the loop calls for each fd, changed only when it differs ---------
    def want_read(self, end: End, cb: Callable[[], None] | None) -> None:
        if end.reader != cb and not self.closed:
            end.reader = cb
            self.watch.set_reader(end.fd, cb)

    def want_write(self, end: End, cb: Callable[[], None] | None) -> None:
        if end.writer != cb and not self.closed:
            end.writer = cb
            self.watch.set_writer(end.fd, cb)

    # -- phases ---------------------------------------------------------------------------
    def start(self) -> None:
        if self.policy.mode == "proxy-proxy":
            self.want_read(self.front, self._proxy_readable)
        elif self.policy.client_mode:
            self._connect()
        else:
            self._start_tls(self.front, server=True, then=self._connect)

    def _proxy_readable(self) -> None:
        """--proxy-proxy: read a PROXY header in clear, never a byte of the TLS that follows."""
        sock = self.front.sock
        try:
            peek = sock.recv(proxyproto.MAX_V2_LENGTH, socket.MSG_PEEK)
        except WOULD_BLOCK:
            return
        except OSError as e:
            self.close(f"client {reason(e)} before PROXY header", CONN)
            return
        if not peek:
            self.close("client closed before sending a PROXY header", CONN)
            return
        step = self.policy.proxy_header(self, peek)
        if step is None:
            return
        take, complete = step
        self.pbuf += sock.recv(take)
        if complete:
            self._start_tls(self.front, server=True, then=self._connect)

    def _start_tls(self, end: End, *, server: bool, then: Callable[[], None]) -> None:
        ctx = self.context if server else self.policy.client_context
        try:
            end.tls = ctx._wrap_socket(end.sock, server, None, owner=end)
        except OSError as e:
            self.close(f"{end.name} {reason(e)}", DEBUG)
            return
        end.ssl = sslext.ssl_pointer(end.tls) if sslext else None
        self.hs_end, self.hs_next = end, then
        self._handshake()

    def _handshake(self) -> None:
        end = self.hs_end
        try:
            state = handshake_step(end)
        except HS_ERRORS as e:
            self.policy.handshake_failed(self, e)
            return
        if state == WANT_READ:
            self.want_write(end, None)
            self.want_read(end, self._handshake)
            return
        if state == WANT_WRITE:
            self.want_read(end, None)
            self.want_write(end, self._handshake)
            return
        self.want_write(end, None)
        self.hs_end = None
        self.policy.handshaken(self, end.tls, sslext.servername(end.ssl) if sslext else None)
        self.hs_next()
        if not self.flows and not self.closed:
            # Still connecting: not a byte is read until the backend is there. (When the
            # connect completed at once, _relay() already swapped the callback.)
            self.want_read(end, None)

    def _connect(self) -> None:
        """Open the backend only now, so failed handshakes never reach it."""
        self.watch.disarm(self)
        family, sockaddr = self.policy.backend
        try:
            sock = Sock(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as e:
            self.close(f"backend socket: {reason(e)}", ERROR)
            return
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.back = End(sock, "backend")
        self.connecting = _now()
        err = sock.connect_ex(sockaddr)
        if err not in (0, errno.EINPROGRESS):
            self.policy.backend_failed(self, os.strerror(err))
        elif self.policy.client_mode:  # TLS towards the backend: handshake once connected
            self.watch.arm(self, "backend connect")
            self.want_write(self.back, self._connected)
        else:
            # Relay at once: until the connection is up the kernel answers EAGAIN to our
            # writes (so the first bytes wait in the flow, as with a slow backend), and a
            # failed connect shows as an error on the first read or write. This saves a loop
            # round trip and four epoll changes per connection.
            self._relay()
            if not self.closed and self.connecting:
                self.watch.arm(self, "backend connect")

    def established(self) -> None:
        """The backend answered (a write went through, or it sent data or EOF)."""
        self.policy.backend_connected(self, _now() - self.connecting)
        self.connecting = 0.0
        self.watch.disarm(self)

    def end_failed(self, end: End, why: str) -> None:
        if end is self.back and self.connecting:
            self.policy.backend_failed(self, why)
        else:
            self.close(f"{end.name} {why}", CONN)

    def backend_ready(self) -> bool:
        """While connecting: is the backend there yet? (A failed connect closes the relay.)"""
        sock = self.back.sock
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.policy.backend_failed(self, os.strerror(err))
            return False
        try:
            sock.getpeername()
        except OSError:
            return False
        self.established()
        return True

    @property
    def relaying(self) -> bool:
        return bool(self.flows)

    def _connected(self) -> None:
        """--client: the backend connect completed (or failed)."""
        self.want_write(self.back, None)
        err = self.back.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.policy.backend_failed(self, os.strerror(err))
            return
        self.established()
        self.watch.arm(self, "handshake")
        self._start_tls(self.back, server=False, then=self._relay)

    def _relay(self) -> None:
        self.watch.disarm(self)
        front, back = self.front, self.back
        up = Flow(self, front, back)
        self.flows = (up, Flow(self, back, front))
        self.want_read(back, self.flows[1].readable)  # a backend may speak first
        header = self.policy.client_header(self)
        up.nbytes = -len(header)  # the header is ours, not the client's: not counted
        if header and not up.write(memoryview(header)):
            return  # the client is read once the header is out
        self.want_read(front, up.readable)

    # -- the end ----------------------------------------------------------------------------
    def end_without_half_close(self, end: End) -> None:
        """No sslext: the stdlib cannot send a close_notify alone (its shutdown() then reads
        and drops what the peer sends), so the close_notify ends the whole connection."""
        try:
            end.tls.shutdown()
        except HS_ERRORS:
            pass  # (it raises once the alert is out, wanting the peer's)
        self.close("closed")

    def flow_done(self) -> None:
        up, down = self.flows
        if up.done and down.done:
            self.close("closed")

    @property
    def ssl(self) -> int | None:
        """The client side's SSL* (as a Conn's), None before its handshake or without sslext."""
        return self.front.ssl

    @property
    def fd(self) -> int:
        """The client's socket, as a Conn's (-1 once closed)."""
        return -1 if self.closed else self.front.fd

    def close(self, why: str, level: int = CONN) -> None:
        if self.closed:
            return
        for end in (self.front, self.back):
            if end is None:
                continue
            if end.reader is not None or end.writer is not None:
                self.watch.forget(end.fd)
            if end.ssl is not None:  # (None without sslext: the session may be dropped)
                sslext.keep_session(end.ssl)
            end.sock.close()
            # Relay, ends and flows refer to each other: undo that, so that reference
            # counting frees them now instead of the cycle collector later.
            end.inflow = end.outflow = end.reader = end.writer = None
        self.closed = True
        self.watch.disarm(self)
        up, down = (max(f.nbytes, 0) for f in self.flows) if self.flows else (0, 0)
        self.flows, self.hs_next = (), None
        self.policy.closed(self, why, level, up, down)


def short_reason(e: BaseException) -> str:
    """A metric label for a failed handshake: OpenSSL's reason code, or the error class."""
    if isinstance(e, ssl.SSLError) and e.reason:
        return e.reason.lower()
    return "eof" if isinstance(e, ssl.SSLEOFError | ConnectionError) else e.__class__.__name__
