"""One connection: client TLS <-> backend TCP, driven by the event loop's fd callbacks.

Each side is a non-blocking socket, with an OpenSSL connection on its fd on the TLS side, so
OpenSSL reads the kernel socket itself and releases its buffers while idle (about 16 KiB of RSS
per idle connection, all included, against 24 KiB for uvloop's memory-BIO transport and 279 KiB
for asyncio's). Data moves through one buffer shared by the whole process: what cannot be
written at once is kept (at most one read's worth per direction) and reading from the source
pauses until it is flushed, so a slow reader throttles the other side instead of growing memory.
Where stud/_flow.c is built, every connection is a _flow.Conn: this same life, all in C. Relay
runs them where it is not (or with STUD_PURE_PYTHON=1): the same logic in Python, and the
reference for the C.

Half-close is passed on in both directions: a client's close_notify or FIN becomes
shutdown(SHUT_WR) towards the backend and the backend's reply still flows back; a backend's FIN
becomes a close_notify while the client may go on sending.
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
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING

from stud import proxyproto, sslext
from stud.log import CONN, DEBUG, ERROR

if TYPE_CHECKING:
    from stud.worker import Worker

BUFSIZE = 65536
RECORD = 16384  # the largest TLS record's plaintext
_buf = bytearray(BUFSIZE)  # one per process: data is forwarded before the next read reuses it
_view = memoryview(_buf)
_now = time.monotonic
WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
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
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            # A close_notify after ours (OpenSSL reports it this way), or a ragged EOF.
            self.eof = True
        except HS_ERRORS as e:
            if n:
                self.write(_view[:n])
            relay.end_failed(src, reason(e))
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
    """A relay's fd interest, through the event loop's add_reader()/add_writer() (Conns keep
    theirs in the stud._flow.Poller's epoll set)."""

    __slots__ = ("loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

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


def _compiled() -> ModuleType | None:
    """stud._flow, if it was built and STUD_PURE_PYTHON is not set."""
    if os.environ.get("STUD_PURE_PYTHON"):
        return None
    try:
        from stud import _flow
    except ImportError:
        return None
    _flow.init(sslext.flow_functions(), sslext.flow_layout())
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


def new_watch(loop: asyncio.AbstractEventLoop,
              on_error: Callable[[BaseException], None]) -> LoopWatch | _flow.Poller:
    """Where connections register their fds: a stud._flow.Poller served by the loop, for
    Conns, or a LoopWatch, for relays. on_error gets what a Conn's hook raised."""
    if _flow is None:
        return LoopWatch(loop)
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


class Relay:
    """The life of one client connection, from accept to the close log line."""

    __slots__ = ("worker", "watch", "front", "back", "peer", "local", "armed",
                 "started", "active", "closed", "flows", "tls_info", "pbuf", "hs_end", "hs_next",
                 "connecting")

    def __init__(self, worker: Worker, sock: Sock, peer: tuple, local: tuple) -> None:
        self.worker, self.watch = worker, worker.watch
        self.peer, self.local = peer, local
        self.front = End(sock, "client")
        self.back: End | None = None
        self.closed = False
        self.flows: tuple[Flow, ...] = ()
        self.tls_info: tuple = ()
        self.pbuf = b""  # --proxy-proxy: the header read so far
        self.started = self.active = _now()
        self.connecting = 0.0  # while the backend connect is pending: when it started
        self.armed: dict | None = None  # the worker's deadlines this relay is in, if any
        worker.arm(self, "handshake")
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
        if self.worker.mode == "proxy-proxy":
            self.want_read(self.front, self._proxy_readable)
        elif self.worker.client_mode:
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
        step = self.worker.proxy_header(self, peek)
        if step is None:
            return
        take, complete = step
        self.pbuf += sock.recv(take)
        if complete:
            self._start_tls(self.front, server=True, then=self._connect)

    def _start_tls(self, end: End, *, server: bool, then: Callable[[], None]) -> None:
        ctx = self.worker.ssl_context if server else self.worker.client_context
        try:
            end.tls = ctx._wrap_socket(end.sock, server, None, owner=end)
        except OSError as e:
            self.close(f"{end.name} {reason(e)}", DEBUG)
            return
        end.ssl = sslext.ssl_pointer(end.tls)
        self.hs_end, self.hs_next = end, then
        self._handshake()

    def _handshake(self) -> None:
        end = self.hs_end
        try:
            state = handshake_step(end)
        except HS_ERRORS as e:
            self.worker.handshake_failed(self, e)
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
        self.worker.handshaken(self, end.tls, sslext.servername(end.ssl))
        self.hs_next()
        if not self.flows and not self.closed:
            # Still connecting: not a byte is read until the backend is there. (When the
            # connect completed at once, _relay() already swapped the callback.)
            self.want_read(end, None)

    def _connect(self) -> None:
        """Open the backend only now, so failed handshakes never reach it."""
        self.worker.disarm(self)
        family, sockaddr = self.worker.backend
        try:
            sock = Sock(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as e:
            self.close(f"backend socket: {reason(e)}", ERROR)
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.back = End(sock, "backend")
        self.connecting = _now()
        err = sock.connect_ex(sockaddr)
        if err not in (0, errno.EINPROGRESS):
            self.worker.backend_failed(self, os.strerror(err))
        elif self.worker.client_mode:  # TLS towards the backend: handshake once connected
            self.worker.arm(self, "backend connect")
            self.want_write(self.back, self._connected)
        else:
            # Relay at once: until the connection is up the kernel answers EAGAIN to our
            # writes (so the first bytes wait in the flow, as with a slow backend), and a
            # failed connect shows as an error on the first read or write. This saves a loop
            # round trip and four epoll changes per connection.
            self._relay()
            if not self.closed and self.connecting:
                self.worker.arm(self, "backend connect")

    def established(self) -> None:
        """The backend answered (a write went through, or it sent data or EOF)."""
        self.worker.stats.connect_seconds.observe(_now() - self.connecting)
        self.connecting = 0.0
        self.worker.disarm(self)

    def end_failed(self, end: End, why: str) -> None:
        if end is self.back and self.connecting:
            self.worker.backend_failed(self, why)
        else:
            self.close(f"{end.name} {why}", CONN)

    def backend_ready(self) -> bool:
        """While connecting: is the backend there yet? (A failed connect closes the relay.)"""
        sock = self.back.sock
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.worker.backend_failed(self, os.strerror(err))
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
            self.worker.backend_failed(self, os.strerror(err))
            return
        self.established()
        self.worker.arm(self, "handshake")
        self._start_tls(self.back, server=False, then=self._relay)

    def _relay(self) -> None:
        self.worker.disarm(self)
        front, back = self.front, self.back
        up = Flow(self, front, back)
        self.flows = (up, Flow(self, back, front))
        self.want_read(back, self.flows[1].readable)  # a backend may speak first
        header = self.worker.client_header(self)
        up.nbytes = -len(header)  # the header is ours, not the client's: not counted
        if header and not up.write(memoryview(header)):
            return  # the client is read once the header is out
        self.want_read(front, up.readable)

    # -- the end ----------------------------------------------------------------------------
    def flow_done(self) -> None:
        up, down = self.flows
        if up.done and down.done:
            self.close("closed")

    def close(self, why: str, level: int = CONN) -> None:
        if self.closed:
            return
        for end in (self.front, self.back):
            if end is None:
                continue
            if end.reader is not None or end.writer is not None:
                self.watch.forget(end.fd)
            if end.ssl is not None:
                sslext.keep_session(end.ssl)
            end.sock.close()
            # Relay, ends and flows refer to each other: undo that, so that reference
            # counting frees them now instead of the cycle collector later.
            end.inflow = end.outflow = end.reader = end.writer = None
        self.closed = True
        self.worker.disarm(self)
        up, down = (max(f.nbytes, 0) for f in self.flows) if self.flows else (0, 0)
        self.flows, self.hs_next = (), None
        self.worker.closed(self, why, level, up, down)


def short_reason(e: BaseException) -> str:
    """A metric label for a failed handshake: OpenSSL's reason code, or the error class."""
    if isinstance(e, ssl.SSLError) and e.reason:
        return e.reason.lower()
    return "eof" if isinstance(e, ssl.SSLEOFError | ConnectionError) else e.__class__.__name__


def fmt_addr(sa: tuple) -> str:
    host, port = sa[0], sa[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
