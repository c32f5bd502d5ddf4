"""A worker process: one event loop accepting on the shared listening sockets.

The master binds and forks; every worker watches the same sockets (the kernel wakes one of them,
and a stalled worker simply stops taking connections). SIGTERM, SIGINT or the master's death
start a drain: stop accepting at once, let open connections finish for at most drain-timeout
seconds, then exit 0.
"""

from __future__ import annotations

import asyncio
import encodings.idna  # noqa: F401 - SNI names may need it after chroot, where imports fail
import errno
import gc
import os
import signal
import socket
import ssl
import time
import traceback

from stud import proxyproto
from stud.config import Config
from stud.log import CONN, DEBUG, log, quoted
from stud.metrics import CONNECT_BUCKETS, HS_BUCKETS, Stats
from stud.ratelimit import EmptyConnLimiter
from stud.relay import Conn, Relay, Sock, fmt_addr, handshake_error, new_watch, reason, short_reason
from stud.tls import sni_hook

try:  # imported by the master: after chroot the worker could not import it any more
    import uvloop
except ImportError:
    uvloop = None

ACCEPT_BATCH = 64          # accepts per wake-up: enough to empty a burst, bounded for fairness
EMFILE_PAUSE = 0.5         # seconds without accepting when out of file descriptors
FD_LOG_INTERVAL = 10.0     # log running out of file descriptors at most this often
FD_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
MAX_PARKED = 8192          # delayed connections held at most (the oldest is closed)
SWEEP = 0.1                # seconds between timeout checks (per-connection timers cost more)


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it loads; asyncio otherwise (the relay only uses fd callbacks and timers)."""
    return uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()


class Worker:
    def __init__(self, cfg: Config, listeners: list[socket.socket], ssl_context: ssl.SSLContext,
                 client_context: ssl.SSLContext | None, backend: tuple[int, tuple],
                 ctl: socket.socket) -> None:
        self.listeners = listeners
        self.families = {lsock: int(lsock.family) for lsock in listeners}
        self.ssl_context = ssl_context
        self.client_context = client_context
        self.client_mode = cfg.client
        self.backend = backend
        self.mode = cfg.client_addr_mode
        # kind -> (seconds, {relay: deadline}): one timeout per kind, so each dict is in
        # deadline order and a sweep only looks at what has expired.
        self.deadlines: dict[str, tuple[float, dict[Relay, float]]] = {
            "handshake": (cfg.ssl_handshake_timeout, {}),
            "backend connect": (cfg.backend_connect_timeout, {})}
        self.drain_timeout = cfg.drain_timeout
        self.idle_timeout = cfg.idle_timeout
        self.max_conns = cfg.max_connections or None
        self.limiter = (EmptyConnLimiter(cfg.empty_conn_limit, cfg.empty_conn_window)
                        if cfg.empty_conn_limit else None)
        self.delay = cfg.empty_conn_delay
        self.parked: dict[Sock, asyncio.TimerHandle] = {}
        self.ctl = ctl  # to the master: b"R" when serving, stats; EOF when the master is gone
        ctl.setblocking(False)
        self.stats = Stats()
        self.conns: set[Relay] = set()
        self.draining = False
        self.accepting = False
        self.fd_pause_until = 0.0
        self.fd_logged = 0.0
        self.loop = new_loop()
        self.watch = new_watch(self.loop, self._on_callback_error)
        # Each connection is a Conn, all in C, where that is built; else a relay.Relay.
        if Conn:
            self.watch.configure(
                *backend, cfg.ssl_handshake_timeout, cfg.backend_connect_timeout,
                self.mode is not None, HS_BUCKETS, CONNECT_BUCKETS, sock_type=Sock,
                proxy=proxyproto.MAX_V2_LENGTH if self.mode == "proxy-proxy" else 0,
                client_wrap=client_context._wrap_socket if client_context else None)
        # Accepted and closed in C too, unless a client may be delayed (the limiter) or the
        # connection log goes to syslog: then _accept() and closed() run for every one.
        self.accept_in_c = bool(Conn) and not self.limiter and not log.use_syslog
        if self.accept_in_c:
            self.watch.serve(self, self.conns, None if cfg.client else ssl_context,
                             self.max_conns or 0, log.stdout, log.level,
                             None if cfg.client else sni_hook(ssl_context))

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
        if Conn:
            self.stats.add_conn_stats(*self.watch.take_stats())
        self.stats.open = len(self.conns)
        return self.stats.snapshot()

    def _from_master(self) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self.ctl, 64, 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        for fd in fds:  # b"L": the log file, reopened by the master (SIGUSR1)
            log.adopt(fd)
        if not data:
            self.loop.remove_reader(self.ctl.fileno())
            log.error(f"{{core}} Process {os.getpid()} detected parent death, closing listener.")
            self.drain("master died")

    def _tick(self) -> None:
        """Once a second: stats to the master, idle connections out, old limiter entries gone."""
        self._to_master(self.stats_snapshot())
        now = time.monotonic()
        if self.idle_timeout:
            limit = now - self.idle_timeout
            for relay in [r for r in self.conns if r.active < limit and r.relaying]:
                self.stats.timeouts["idle"] += 1
                relay.close("idle timeout")
        if self.limiter and int(now) % 60 == 0:
            self.limiter.prune(now)
        self.loop.call_later(1.0, self._tick)

    # -- timeouts: a relay has at most one armed; a sweep every SWEEP seconds fires them ------
    # (Conns keep their deadlines in the Poller.)
    def arm(self, relay: Relay, kind: str) -> None:
        self.disarm(relay)
        seconds, armed = self.deadlines[kind]
        armed[relay] = time.monotonic() + seconds
        relay.armed = armed

    def disarm(self, relay: Relay) -> None:
        if relay.armed is not None:
            del relay.armed[relay]
            relay.armed = None

    def _sweep(self) -> None:
        now = time.monotonic()
        for kind, (_, armed) in self.deadlines.items():
            while armed:
                relay, deadline = next(iter(armed.items()))
                if deadline > now:
                    break
                self.disarm(relay)
                self.timed_out(relay, kind)
        if Conn:
            for conn, kind in self.watch.expired(now):
                self.timed_out(conn, kind)
        self.loop.call_later(SWEEP, self._sweep)

    def timed_out(self, relay: Relay | Conn, kind: str) -> None:
        """The deadline of this kind ("handshake", "backend connect") passed."""
        if kind == "backend connect":
            if relay.closed or not relay.connecting or relay.backend_ready() or relay.closed:
                return  # connected meanwhile, or backend_ready() found the connect failed
            self.stats.backend_connect_failed += 1
        self.stats.timeouts[kind] += 1
        relay.close(f"{kind} timeout", CONN)

    # -- what relays and Conns report ---------------------------------------------------------
    def handshaken(self, relay: Relay, tls: object, name: bytes | None) -> None:
        """A relay's handshake completed on tls (name: the SNI name the client sent, if any).
        (A Conn does the same in C.)"""
        sni = name.decode() if name and name.isascii() else None  # an A-label, as ssl has it
        relay.tls_info = info = (tls.version(), (tls.cipher() or ("",))[0], sni,
                                 tls.selected_alpn_protocol(), tls.session_reused)
        stats = self.stats
        stats.handshakes += 1
        stats.tls_version[info[0]] += 1
        stats.cipher[info[1]] += 1
        stats.resumed += info[4]
        stats.handshake_seconds.observe(time.monotonic() - relay.started)

    def handshake_failed(self, relay: Relay | Conn, err: BaseException | int) -> None:
        """err: what ssl raised, or a failed state of stud._flow's handshake step."""
        if isinstance(err, int):
            err = handshake_error(relay.tls, err)
        # Scanners and broken clients fail here all day: below the default log level.
        self.stats.handshakes_failed[short_reason(err)] += 1
        relay.close(f"handshake failed: {reason(err)}", DEBUG)

    def backend_failed(self, relay: Relay | Conn, why: str) -> None:
        self.stats.backend_connect_failed += 1
        relay.close(f"backend connect failed: {why}", CONN)

    def proxy_header(self, relay: Relay | Conn, peek: bytes) -> tuple[int, bool] | None:
        """--proxy-proxy: how many bytes of peek (what the client sent next, still unread)
        belong to its PROXY header, and whether they complete it; None if it is bad (closed)."""
        have = relay.pbuf
        try:
            h = proxyproto.parse(have + peek)
        except proxyproto.ProxyError as e:
            relay.close(f"bad PROXY header: {e}", CONN)
            return None
        # Consume only header bytes: all of them while incomplete, else exactly up to its end.
        return (len(peek), False) if h is None else (h.length - len(have), True)

    def client_header(self, relay: Relay | Conn) -> bytes:
        """What the backend reads first: the client's address, as the mode has it."""
        mode = self.mode
        if mode is None:
            return b""
        if mode == "proxy-proxy":
            return relay.pbuf  # the client's PROXY header, byte for byte
        peer, local = relay.peer[:2], relay.local[:2]
        if mode == "write-ip":
            return proxyproto.write_ip(peer[0])
        if mode == "write-proxy":
            return proxyproto.v1(peer, local)
        version, cipher, sni, alpn, _ = relay.tls_info or (None, None, None, None, None)
        return proxyproto.v2(peer, local, alpn=alpn.encode() if alpn else None, authority=sni,
                             ssl_version=version, ssl_cipher=cipher)

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
                self.watch.listen(lsock.fileno(), self.families[lsock] if on else 0)
            elif on:
                self.loop.add_reader(lsock.fileno(), self._accept, lsock)
            else:
                self.loop.remove_reader(lsock.fileno())
        if self.accept_in_c:
            self.watch.notify = not on  # closed() resumes accepting, or ends the drain

    def _accept_stop(self, err: int) -> None:
        """The C accept loop stopped: out of file descriptors (errno err), or full (0)."""
        if err:
            self._out_of_fds(OSError(err, os.strerror(err)))
        else:
            self._accepting(False)

    def _accept(self, lsock: socket.socket) -> None:
        limiter = self.limiter
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
            self.stats.accepted += 1
            sock.setblocking(False)  # TCP_NODELAY and keepalive come from the listener
            if limiter and limiter.limited(peer[0], time.monotonic()):
                self._park(sock, peer)
            else:
                self._serve(sock, peer)
            # Parked (delayed) connections count: they are served when their delay ends.
            if self.max_conns and len(self.conns) + len(self.parked) >= self.max_conns:
                self._accepting(False)  # never fail open: the kernel queues the rest
                return

    def _serve(self, sock: Sock, peer: tuple) -> None:
        try:
            local = sock.getsockname() if self.mode else ()
        except OSError:
            sock.close()
            return
        if Conn is None:
            relay = Relay(self, sock, peer, local)
            self.conns.add(relay)
            relay.start()
            return
        conn = Conn(self.watch, self, sock, peer, local)
        self.conns.add(conn)
        if self.client_mode:
            conn.start(None)  # in clear from the client: the backend connect begins
            return
        try:
            tls = self.ssl_context._wrap_socket(sock, True, None, owner=conn)
        except OSError as e:
            conn.close(f"client {reason(e)}", DEBUG)
            return
        conn.start(tls)

    def _park(self, sock: Sock, peer: tuple) -> None:
        """Delay a limited client: its socket waits, un-handshaked, then is served as usual."""
        self.stats.rate_limited += 1
        log.info(f"{{client}} delaying connection from {peer[0]} by {self.delay:g} s "
                 "(empty connections)")
        if len(self.parked) >= MAX_PARKED:
            oldest = next(iter(self.parked))
            self.parked.pop(oldest).cancel()
            oldest.close()
        self.parked[sock] = self.loop.call_later(self.delay, self._unpark, sock, peer)

    def _unpark(self, sock: Sock, peer: tuple) -> None:
        del self.parked[sock]
        self._serve(sock, peer)

    def _out_of_fds(self, e: OSError) -> None:
        # The original busy-looped here: pause instead, and retry by itself.
        now = time.monotonic()
        self.stats.accept_errors += 1
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

    def closed(self, relay: Relay | Conn, why: str, level: int, up: int, down: int) -> None:
        """Called by each relay once, when it is closed, with the bytes delivered each way."""
        self.conns.discard(relay)
        stats = self.stats
        stats.bytes_up += up
        stats.bytes_down += down
        if log.level >= level:
            version, cipher, sni, alpn, resumed = relay.tls_info or ("-", "-", None, None, False)
            # The connection log line, formatted directly (a generic key=value writer cost twice
            # as much): only the SNI name and the reason can hold spaces or client-chosen bytes.
            log.line(level, f"op=\"connection closed\" client={fmt_addr(relay.peer)} "
                     f"sni={quoted(sni) if sni else '-'} tls={version or '-'} "
                     f"cipher={cipher or '-'} alpn={alpn or '-'} resumed={int(resumed)} "
                     f"up={up} down={down} "
                     f"duration={time.monotonic() - relay.started:.3f} reason={quoted(why)}")
        if self.limiter and relay.tls_info:
            self.limiter.record(relay.peer[0], up == 0, time.monotonic())
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
        for sock, timer in self.parked.items():
            timer.cancel()
            sock.close()
        self.parked.clear()
        log.info(f"{{core}} Process {os.getpid()} draining ({why}): "
                 f"{len(self.conns)} connections open")
        if not self.conns:
            self.loop.stop()
        else:
            self.loop.call_later(self.drain_timeout, self._drain_expired)

    def _drain_expired(self) -> None:
        log.info(f"{{core}} Process {os.getpid()} drain timeout: closing "
                 f"{len(self.conns)} connections")
        for relay in list(self.conns):
            self.stats.timeouts["drain"] += 1
            relay.close("drain timeout")
        self.loop.stop()
