"""A worker process: one event loop accepting on the shared listening sockets.

The master binds and forks; every worker watches the same sockets (the kernel wakes one of them,
and a stalled worker simply stops taking connections). SIGTERM, SIGINT or the master's death
start a drain: stop accepting at once, let open connections finish for at most drain-timeout
seconds, then exit 0. What each connection does is the data path's (relay, stud._flow) and the
connection policy's (policy); the worker runs the process around them.
"""

from __future__ import annotations

import asyncio
import encodings.idna  # noqa: F401 - SNI names may need it after chroot, where imports fail
import errno
import functools
import gc
import itertools
import json
import os
import signal
import socket
import ssl
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable

from stud import balance, clienthello, proxyproto, stapling, trust
from stud.balance import Shares
from stud.certs import sni_hook
from stud.config import Config
from stud.log import DEBUG, log
from stud.metrics import CONNECT_BUCKETS, HS_BUCKETS
from stud.policy import Connection, ConnPolicy
from stud.relay import Conn, Relay, Sock, new_watch, reason
from stud.sessionstore import PEEK, SessionStore
from stud.trust import Trusts

try:  # imported by the master: after chroot the worker could not import it any more
    import uvloop
except ImportError:
    uvloop = None

ACCEPT_BATCH = 64          # accepts per wake-up: enough to empty a burst, bounded for fairness
EMFILE_PAUSE = 0.5         # seconds without accepting when out of file descriptors
FD_LOG_INTERVAL = 10.0     # log running out of file descriptors at most this often
FD_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_AHEAD = -1          # the C accept loop's accept_stop() argument: over its share
MAX_PARKED = 8192          # delayed connections held at most (the oldest is closed)
MAX_AWAITING = 8192        # connections whose ClientHello is not all there, held at most
# A refused connection is held open, unread, before it is closed: a flooding client's
# connection then stays busy instead of coming straight back through the accept queue.
REFUSED_HOLD = 5.0         # seconds
MAX_REFUSED_HELD = 4096    # refused connections held at once; then the oldest is closed
SWEEP = 0.1                # seconds between deadline checks (per-connection timers cost more)
CLOSES_PER_SWEEP = 256     # held (refused, awaiting) connections closed per sweep at most
LIMIT_LOG_EVERY = 10.0     # seconds between the handshake limiter's log lines
TCP_ESTABLISHED = 1        # tcp_info's state (linux/tcp_states.h); after a FIN or a reset: not


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it loads; asyncio otherwise (the relay only uses fd callbacks and timers)."""
    return uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()


class Worker:
    def __init__(self, cfg: Config, listeners: list[tuple[socket.socket, ssl.SSLContext | None]],
                 client_context: ssl.SSLContext | None, backend: tuple[int, tuple | str],
                 ctl: socket.socket, stapled: dict | None = None,
                 trusts: Trusts | None = None, shares: Shares | None = None,
                 slot: int = 0) -> None:
        """listeners: each listening socket with where its handshakes start (its frontend's
        default context; None with --client); stapled: the contexts of each certificate file
        (Pem), for the OCSP staples the master sends; trusts: the client-verify stores, for
        the CRLs it sends; shares: the generation's connection counts, this worker's at
        slot."""
        self.share = (functools.partial(shares.ahead, slot)
                      if shares is not None and shares.workers > 1 else None)
        self.paused_ahead = False  # the last accept wake found it over its share
        self.stapled = {pem.cert: ctxs for pem, ctxs in (stapled or {}).items()}
        self.trusts = trusts
        self.listeners = [lsock for lsock, _ in listeners]
        self.contexts = dict(listeners)
        self.families = {lsock: int(lsock.family) for lsock in self.listeners}
        self.tls13 = {lsock: ctx is not None and ctx.maximum_version in (
            ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.MAXIMUM_SUPPORTED)
            for lsock, ctx in listeners}
        self.ctx_tls13 = {id(self.contexts[lsock]): tls13 for lsock, tls13 in self.tls13.items()}
        self.policy = policy = ConnPolicy(cfg, client_context, backend, self._gone)
        self.drain_timeout = cfg.drain_timeout
        self.idle_timeout = cfg.idle_timeout
        self.max_conns = cfg.max_connections or None
        self.delay = cfg.empty_conn_delay
        # Connections held before their handshake: sockets (accepted in Python) or Conns (in C).
        self.parked: dict[Sock | Connection, asyncio.TimerHandle] = {}
        self.refused: deque[tuple[float, Sock | Connection]] = deque()  # (when to close, it)
        # With the handshake limiter: connections whose ClientHello is not all there yet
        # (until their handshake deadline), judged once it is.
        self.awaiting: dict[Sock, float] = {}
        self.handshake_timeout = cfg.ssl_handshake_timeout
        self.ctl = ctl  # to the master: b"R" when serving, stats; EOF when the master is gone
        ctl.setblocking(False)
        self.conns: set[Connection] = set()
        self.draining = False
        self.accepting = False
        self.fd_pause_until = 0.0
        self.fd_logged = 0.0
        self.loop = new_loop()
        self.watch = new_watch(self.loop, cfg.ssl_handshake_timeout, cfg.backend_connect_timeout,
                               self._on_callback_error)
        # Each connection is a Conn, all in C, where that is built; else a relay.Relay.
        if Conn:
            self.watch.configure(
                *backend, cfg.ssl_handshake_timeout, cfg.backend_connect_timeout,
                policy.mode is not None or policy.verifying, HS_BUCKETS, CONNECT_BUCKETS,
                sock_type=Sock,
                proxy=proxyproto.MAX_V2_LENGTH if policy.mode == "proxy-proxy" else 0,
                client_wrap=client_context._wrap_socket if client_context else None)
        # Accepted and closed in C too, unless a client may be delayed (the empty-connection
        # limiter; the handshake limiter with --client), the connection log goes to syslog
        # or names client certificates or a PROXY header's client, or connections may wait
        # for a session store: then _accept() and the policy's closed() run for every one.
        # --session-store: a connection may wait for the store before its handshake.
        self.store = (SessionStore(cfg.session_store, cfg.session_store_timeout, self.loop,
                                   policy.stats.session_store)
                      if cfg.session_store and not cfg.client else None)
        self.hs_limited: Counter = Counter()  # (prefix, action) since it was last said
        self.hs_said_at = 0.0
        # (--client: the client's bytes are no ClientHello, so no gate; the handshake limiter
        # counts connections there, each a full handshake towards the backend, in _admit())
        self.accept_in_c = (bool(Conn) and not policy.limiter and not log.use_syslog
                            and not (policy.hs_limiter and policy.client_mode)
                            and not policy.verifying and policy.mode != "proxy-proxy"
                            and not self.store)
        if self.accept_in_c:
            self.watch.serve(policy, self.conns, self.max_conns or 0, log.stdout, log.level,
                             self._accept_stop, self.share and self._ahead,
                             self._gate if policy.hs_limiter else None)

    def run(self) -> int:
        # What the master built is never garbage: keep the cycle collector off it (shorter
        # pauses, and no copy-on-write of the master's pages in every worker).
        gc.freeze()
        loop = self.loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.drain, f"signal {sig.name}")
        for sig in (signal.SIGHUP, signal.SIGUSR1):
            loop.add_signal_handler(sig, lambda: None)  # the master handles these
        loop.set_exception_handler(self._on_loop_error)
        self._accepting(True)
        if self.store:
            self.store.start()
        loop.add_reader(self.ctl.fileno(), self._from_master)
        self._to_master(b"R")
        self._tick()
        self._sweep()
        log.info(f"{{core}} Process {os.getpid()} online")
        try:
            loop.run_forever()
        finally:
            self._to_master(self.stats_snapshot())
            loop.close()
        return 0

    def _on_loop_error(self, _loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """A bug in one callback must not pass silently, nor take the worker down."""
        exc = context.get("exception")
        where = "".join(traceback.format_exception(exc)[-3:]) if exc else ""
        log.error(f"{{core}} internal error: {context.get('message')} {where}".replace("\n", " | "))

    def _on_callback_error(self, exc: BaseException) -> None:
        self._on_loop_error(self.loop, {"message": "exception in a connection callback",
                                        "exception": exc})

    # -- the master ------------------------------------------------------------------------
    def _to_master(self, message: bytes) -> None:
        try:
            self.ctl.send(message)
        except OSError:
            pass  # the master is gone or busy; EOF handling drains us

    def stats_snapshot(self) -> bytes:
        stats = self.policy.stats
        if Conn:
            stats.add_conn_stats(*self.watch.take_stats())
        stats.open = len(self.conns)
        return stats.snapshot()

    def _from_master(self) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self.ctl, stapling.MAX_MESSAGE, 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        for fd in fds:
            if data.startswith(b"V") and self.trusts:  # new CRLs, in a memfd
                try:
                    self.trusts.update(*trust.read_message(os.pread(fd, os.fstat(fd).st_size, 0)))
                finally:
                    os.close(fd)
            else:  # b"L": the log file, reopened by the master (SIGUSR1)
                log.adopt(fd)
        if data.startswith(b"B"):  # -R: the backend's name resolved to another address
            family, sockaddr = json.loads(data[1:])
            backend = (family, tuple(sockaddr) if isinstance(sockaddr, list) else sockaddr)
            self.policy.backend = backend
            if Conn:
                self.watch.set_backend(*backend)
        if data.startswith(b"O") and stapling.sslext:  # a certificate's new OCSP staple
            path, der, leaf = stapling.read_message(data)
            for ctx in self.stapled.get(path, ()):
                stapling.sslext.set_ocsp_staple(ctx, der, leaf)
        if not data:
            self.loop.remove_reader(self.ctl.fileno())
            log.error(f"{{core}} Process {os.getpid()} detected parent death, closing listener.")
            self.drain("master died")

    def _tick(self) -> None:
        """Once a second: stats to the master, idle connections out, old limiter entries gone."""
        self._to_master(self.stats_snapshot())
        if self.share:  # (the count the others see, also while no connection comes)
            self.share(len(self.conns))
        now = time.monotonic()
        if self.idle_timeout:
            limit = now - self.idle_timeout
            for conn in [c for c in self.conns if c.active < limit and c.relaying]:
                self.policy.stats.timeouts["idle"] += 1
                conn.close("idle timeout")
        self.policy.end_lingering(now)
        if self.policy.limiter and int(now) % 60 == 0:
            self.policy.limiter.prune(now)
        if self.policy.hs_limiter and now >= self.hs_said_at + LIMIT_LOG_EVERY:
            self.hs_said_at = now
            self._say_limited()
            self.policy.hs_limiter.prune(now)
        self.loop.call_later(1.0, self._tick)

    def _sweep(self) -> None:
        """Every SWEEP seconds: the connections whose handshake or connect deadline passed."""
        now = time.monotonic()
        for conn, kind in self.watch.expired(now):
            self.policy.timed_out(conn, kind)
        self._end_held(now)
        self.loop.call_later(SWEEP, self._sweep)

    # -- accepting ---------------------------------------------------------------------------
    def _accepting(self, on: bool) -> None:
        if on and (self.draining or time.monotonic() < self.fd_pause_until or
                   self.max_conns and len(self.conns) + len(self.parked) >= self.max_conns):
            return
        if on == self.accepting:
            return
        self.accepting = on
        for lsock in self.listeners:
            if self.accept_in_c:
                ctx = self.contexts[lsock]
                self.watch.listen(lsock.fileno(), ctx, ctx and sni_hook(ctx), on)
            elif on:
                self.loop.add_reader(lsock.fileno(), self._accept, lsock)
            else:
                self.loop.remove_reader(lsock.fileno())
        if self.accept_in_c:
            self.watch.notify = not on  # _gone() resumes accepting, or ends the drain

    def _accept_stop(self, err: int) -> None:
        """The C accept loop stopped (Poller.serve()'s callback): out of file descriptors
        (errno err), full (0), or over its share (ACCEPT_AHEAD)."""
        if err == ACCEPT_AHEAD:
            self._leave_to_others()
        elif err:
            self._out_of_fds(OSError(err, os.strerror(err)))
        else:
            self._accepting(False)

    def _ahead(self, count: int) -> bool:
        """Whether to leave new connections to the other workers (publishing count). Not
        twice in a row: where the others cannot take them (busy, stopped), it still serves
        them after the pause."""
        assert self.share
        ahead = self.share(count) and not self.paused_ahead
        self.paused_ahead = ahead
        return ahead

    def _leave_to_others(self) -> None:
        """Over its share of connections: no accepting for a moment (a close ends it too)."""
        self._accepting(False)
        self.loop.call_later(balance.PAUSE, self._accepting, True)

    def _accept(self, lsock: socket.socket) -> None:
        if self.share and self._ahead(len(self.conns)):
            self._leave_to_others()
            return
        limiter = self.policy.limiter
        family = self.families[lsock]
        for _ in range(ACCEPT_BATCH):
            try:
                fd, peer = lsock._accept()
                sock = Sock(family, socket.SOCK_STREAM, 0, fd)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in FD_ERRORS:
                    self._out_of_fds(e)
                # ECONNABORTED and friends concern one client only: go on.
                return
            self.policy.stats.accepted += 1
            sock.setblocking(False)  # TCP_NODELAY and keepalive come from the listener
            if limiter and limiter.limited(peer[0], time.monotonic()):
                self._park(sock, peer, lsock)
            else:
                self._admit(sock, peer, lsock)
            # Parked (delayed) connections count: they are served when their delay ends.
            if self.max_conns and len(self.conns) + len(self.parked) >= self.max_conns:
                self._accepting(False)  # never fail open: the kernel queues the rest
                return

    def _admit(self, sock: Sock, peer: tuple, lsock: socket.socket, waited: int = 0,
               deadline: float = 0.0) -> None:
        """Through the handshake limiter (now, later or never) and the session store.
        waited: the bytes of the ClientHello's first record it last waited for, until
        deadline (its handshake's)."""
        paid = True
        if self.policy.hs_limiter:
            # (--client: not a ClientHello, and the client may wait for the server to speak)
            first = (b"" if self.policy.client_mode
                     else self._first_record(sock, peer, lsock, waited, deadline))
            if first is None:
                return
            hello = clienthello.parse(first)
            paid = not clienthello.offers_resumption(hello, self.tls13[lsock])
            wait = self.policy.hs_limiter.admit(peer[0], time.monotonic(), paid)
            if wait is None or wait > 0:
                self._limited(sock, peer, wait,
                              functools.partial(self._unpark, sock, peer, lsock))
                return
        serve = functools.partial(self._serve, sock, peer, lsock, paid)
        if not (self.store and self.store.hold(sock, self.tls13[lsock], serve)):
            serve()

    def _first_record(self, sock: Sock, peer: tuple, lsock: socket.socket, waited: int,
                      deadline: float) -> bytes | None:
        """The client's first bytes for the limiter to judge: its first record once whole (or
        what there is when it cannot wait). None: taken care of here, either waiting for
        more, or gone (closed or reset before its ClientHello was whole: served at no token,
        for OpenSSL to see that at once)."""
        try:
            first = sock.recv(PEEK, socket.MSG_PEEK)
            need = clienthello.record_short(first) if first else -1
        except (BlockingIOError, InterruptedError):
            # accepted before its first byte (past TCP_DEFER_ACCEPT, a SYN flood's cookies)
            first, need = b"", 1
        except OSError:
            first, need = b"", -1
        if need > waited and self._await_hello(sock, peer, lsock, need, deadline):
            return None
        if need < 0 or (need and need <= waited and _peer_closed(sock)):
            self._serve(sock, peer, lsock)
            return None
        return first

    def _await_hello(self, sock: Sock, peer: tuple, lsock: socket.socket, need: int,
                     deadline: float) -> bool:
        """Judge the connection once `need` bytes are there: until then it costs its socket
        alone, and a client that sends part of a ClientHello and stops is no work for the
        limiter (woken short of the mark, the client closed: judged then). False when it
        cannot wait (too many wait, or the mark cannot be set)."""
        if len(self.awaiting) >= MAX_AWAITING and sock not in self.awaiting:
            return False
        try:  # (level-triggered: without the mark, what is there would wake it again and again)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, need)
        except OSError:
            return False
        self.awaiting[sock] = deadline or time.monotonic() + self.handshake_timeout
        self.loop.add_reader(sock.fileno(), self._hello_ready, sock, peer, lsock, need)
        return True

    def _hello_ready(self, sock: Sock, peer: tuple, lsock: socket.socket, need: int) -> None:
        self.loop.remove_reader(sock.fileno())
        deadline = self.awaiting[sock]
        self.awaiting[sock] = 0.0  # its place kept, should it wait again: deadline order
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        except OSError:
            pass
        self._admit(sock, peer, lsock, need, deadline)  # (a header, then the record: one deadline)
        if self.awaiting.get(sock) == 0.0:
            del self.awaiting[sock]

    def _end_held(self, now: float, everything: bool = False) -> None:
        """Close the refused connections held long enough, and those whose ClientHello did not
        come in time (or all of them). At most CLOSES_PER_SWEEP a time: a flood's connections
        come in bursts, and closing a burst at once would stall every other connection."""
        budget = len(self.refused) + len(self.awaiting) if everything else CLOSES_PER_SWEEP
        while self.refused and budget and (everything or self.refused[0][0] <= now):
            _let_go(self.refused.popleft()[1])
            budget -= 1
        for sock, deadline in list(itertools.islice(self.awaiting.items(), budget)):
            if not everything and deadline > now:
                break
            del self.awaiting[sock]
            self.loop.remove_reader(sock.fileno())
            sock.close()
            if not everything:
                self.policy.stats.timeouts["handshake"] += 1

    def _gate(self, conn: Connection, first: bytes) -> bool:
        """The handshake limiter, for a Conn accepted in C once its ClientHello's first record
        is whole (as _admit()): True, its handshake starts now; False, it is held (delayed:
        resumed later; refused: closed later)."""
        hello = clienthello.parse(first)
        paid = not clienthello.offers_resumption(hello, self.ctx_tls13.get(id(conn.context)))
        wait = self.policy.hs_limiter.admit(conn.peer[0], time.monotonic(), paid)
        if not paid:
            self.policy.hs_owed.add(conn)
            conn.watched = True  # (the policy's closed() charges it if it did not resume)
        if wait is None or wait > 0:
            self._limited(conn, conn.peer, wait, functools.partial(self._resume, conn))
            return False
        return True

    def _limited(self, held: Sock | Connection, peer: tuple, wait: float | None,
                 resume: Callable[[], None]) -> None:
        """A full handshake over its prefix's rate: delayed by wait seconds (then resume()), or
        refused."""
        action = "refused" if wait is None or len(self.parked) >= MAX_PARKED else "delayed"
        self.policy.stats.handshakes_limited[action] += 1
        self.hs_limited[self.policy.hs_limiter.prefix(peer[0]), action] += 1
        if action == "refused":
            if len(self.refused) >= MAX_REFUSED_HELD:  # (the oldest: its client may be gone)
                _let_go(self.refused.popleft()[1])
            self.refused.append((time.monotonic() + REFUSED_HOLD, held))
        else:
            self.parked[held] = self.loop.call_later(wait, resume)

    def _resume(self, conn: Connection) -> None:
        del self.parked[conn]
        conn.resume()

    def _say_limited(self) -> None:
        """The handshake limiter's work, said at most once per LIMIT_LOG_EVERY seconds."""
        if not self.hs_limited:
            return
        counts = self.hs_limited
        delayed = sum(n for (_, a), n in counts.items() if a == "delayed")
        refused = sum(n for (_, a), n in counts.items() if a == "refused")
        (busiest, _), n = counts.most_common(1)[0]
        log.info(f"{{client}} handshake limit: {delayed} delayed, {refused} refused in the "
                 f"last {LIMIT_LOG_EVERY:g} s; most from {busiest} ({n})")
        self.hs_limited = Counter()

    def _serve(self, sock: Sock, peer: tuple, lsock: socket.socket, paid: bool = True) -> None:
        """paid: False when the handshake limiter let it through free (it offered to resume):
        it pays at its close if it did not."""
        policy = self.policy
        try:
            local = sock.getsockname() if policy.mode else ()
        except OSError:
            sock.close()
            return
        if Conn is None:
            relay = Relay(self.watch, policy, sock, peer, local, self.contexts[lsock])
            self.conns.add(relay)
            if not paid:
                policy.hs_owed.add(relay)
            relay.start()
            return
        conn = Conn(self.watch, policy, sock, peer, local)
        self.conns.add(conn)
        if not paid:
            policy.hs_owed.add(conn)
        if policy.client_mode:
            conn.start(None)  # in clear from the client: the backend connect begins
            return
        try:
            tls = self.contexts[lsock]._wrap_socket(sock, True, None, owner=conn)
        except OSError as e:
            conn.close(f"client {reason(e)}", DEBUG)
            return
        conn.start(tls)

    def _park(self, sock: Sock, peer: tuple, lsock: socket.socket) -> None:
        """Delay a limited client: its socket waits, un-handshaked, then is served as usual."""
        self.policy.stats.rate_limited += 1
        log.info(f"{{client}} delaying connection from {peer[0]} by {self.delay:g} s "
                 "(empty connections)")
        if len(self.parked) >= MAX_PARKED:
            oldest = next(iter(self.parked))
            self.parked.pop(oldest).cancel()
            _let_go(oldest)
        self.parked[sock] = self.loop.call_later(self.delay, self._unpark, sock, peer, lsock)

    def _unpark(self, sock: Sock, peer: tuple, lsock: socket.socket) -> None:
        del self.parked[sock]
        self._serve(sock, peer, lsock)

    def _out_of_fds(self, e: OSError) -> None:
        # The original busy-looped here: pause instead, and retry by itself.
        now = time.monotonic()
        self.policy.stats.accept_errors += 1
        if now - self.fd_logged >= FD_LOG_INTERVAL:
            self.fd_logged = now
            log.error(f"{{client}} accept() failed: {e.strerror}; pausing accepts "
                      f"({len(self.conns)} connections open)")
        self._accepting(False)
        self.fd_pause_until = now + EMFILE_PAUSE
        self.loop.call_later(EMFILE_PAUSE, self._fd_pause_over, self.fd_pause_until)

    def _fd_pause_over(self, until: float) -> None:
        # Loop timers can fire up to a millisecond before time.monotonic() reaches `until`
        # (uvloop keeps millisecond loop time): end the pause here instead of comparing
        # clocks, or _accepting(True) would refuse and accepting would never resume.
        if self.fd_pause_until == until:
            self.fd_pause_until = 0.0
        self._accepting(True)

    def _gone(self, conn: Connection) -> None:
        """A connection closed (the policy accounted for it): end the drain once none is left,
        or accept again below max-connections."""
        self.conns.discard(conn)
        if self.draining:
            if not self.conns:
                self.loop.stop()
        elif not self.accepting:
            self._accepting(True)

    def drain(self, why: str) -> None:
        """Stop accepting; exit once open connections are done, or at the drain timeout."""
        if self.draining:
            return
        self._accepting(False)
        self.draining = True
        for lsock in self.listeners:
            lsock.close()
        for held, timer in self.parked.items():
            timer.cancel()
            _let_go(held)
        self.parked.clear()
        self._end_held(time.monotonic(), everything=True)
        log.info(f"{{core}} Process {os.getpid()} draining ({why}): "
                 f"{len(self.conns)} connections open")
        if not self.conns:
            self.loop.stop()
        else:
            self.loop.call_later(self.drain_timeout, self._drain_expired)

    def _drain_expired(self) -> None:
        log.info(f"{{core}} Process {os.getpid()} drain timeout: closing "
                 f"{len(self.conns)} connections")
        for conn in list(self.conns):
            self.policy.stats.timeouts["drain"] += 1
            conn.close("drain timeout")
        self.loop.stop()


def _let_go(held: Sock | Connection) -> None:
    """Close a connection held before its handshake: a socket, or a Conn accepted in C (its
    close is accounted for, as any Conn's)."""
    if isinstance(held, Sock):
        held.close()
    else:
        held.close("closed before its handshake (handshake limit, or draining)", DEBUG)


def _peer_closed(sock: Sock) -> bool:
    """Whether the client has closed its side or reset (woken short of the receive low-water
    mark for that, not for memory pressure)."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != TCP_ESTABLISHED
    except OSError:
        return True
