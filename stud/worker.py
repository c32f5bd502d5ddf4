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
import os
import signal
import socket
import ssl
import traceback

from stud.config import Config
from stud.log import log
from stud.relay import Relay

try:  # imported by the master: after chroot the worker could not import it any more
    import uvloop
except ImportError:
    uvloop = None

ACCEPT_BATCH = 64          # accepts per wake-up: enough to empty a burst, bounded for fairness
EMFILE_PAUSE = 0.5         # seconds without accepting when out of file descriptors
FD_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it loads; asyncio otherwise (the relay only uses fd callbacks and timers)."""
    return uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()


class Worker:
    def __init__(self, cfg: Config, listeners: list[socket.socket], ssl_context: ssl.SSLContext,
                 client_context: ssl.SSLContext | None, backend: tuple[int, tuple],
                 ctl: socket.socket) -> None:
        self.listeners = listeners
        self.ssl_context = ssl_context
        self.client_context = client_context
        self.client_mode = cfg.client
        self.backend = backend
        self.mode = cfg.client_addr_mode
        self.handshake_timeout = cfg.ssl_handshake_timeout
        self.connect_timeout = cfg.backend_connect_timeout
        self.drain_timeout = cfg.drain_timeout
        self.keepalive = cfg.keepalive
        self.ctl = ctl  # to the master: b"R" when serving; EOF when the master is gone
        ctl.setblocking(False)
        self.conns: set[Relay] = set()
        self.draining = False
        self.accepting = False
        self.loop = new_loop()

    def run(self) -> int:
        loop = self.loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.drain, f"signal {sig.name}")
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the master handles reloads
        loop.set_exception_handler(self._on_loop_error)
        self._accepting(True)
        loop.add_reader(self.ctl.fileno(), self._from_master)
        self.ctl.send(b"R")
        log.info(f"{{core}} Process {os.getpid()} online")
        try:
            loop.run_forever()
        finally:
            loop.close()
        return 0

    def _on_loop_error(self, _loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """A bug in one callback must not pass silently, nor take the worker down."""
        exc = context.get("exception")
        where = "".join(traceback.format_exception(exc)[-3:]) if exc else ""
        log.error(f"{{core}} internal error: {context.get('message')} {where}".replace("\n", " | "))

    def _from_master(self) -> None:
        try:
            data = self.ctl.recv(16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(self.ctl.fileno())
            log.error(f"{{core}} Process {os.getpid()} detected parent death, closing listener.")
            self.drain("master died")

    def _accepting(self, on: bool) -> None:
        if on == self.accepting or (on and self.draining):
            return
        self.accepting = on
        for lsock in self.listeners:
            if on:
                self.loop.add_reader(lsock.fileno(), self._accept, lsock)
            else:
                self.loop.remove_reader(lsock.fileno())

    def _accept(self, lsock: socket.socket) -> None:
        keepalive = self.keepalive
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in FD_ERRORS:
                    # The original busy-looped here: pause instead, and retry by itself.
                    log.error(f"{{client}} accept() failed: {e.strerror}; pausing accepts")
                    self._accepting(False)
                    self.loop.call_later(EMFILE_PAUSE, self._accepting, True)
                # ECONNABORTED and friends concern one client only: go on.
                return
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if keepalive > 0:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, keepalive)
                local = sock.getsockname() if self.mode else ()
            except OSError:
                sock.close()  # the client is already gone
                continue
            relay = Relay(self, sock, peer, local)
            self.conns.add(relay)
            relay.start()

    def closed(self, relay: Relay) -> None:
        self.conns.discard(relay)
        if self.draining and not self.conns:
            self.loop.stop()

    def drain(self, why: str) -> None:
        """Stop accepting; exit once open connections are done, or at the drain timeout."""
        if self.draining:
            return
        self._accepting(False)
        self.draining = True
        for lsock in self.listeners:
            lsock.close()
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
            relay.close("drain timeout")
        self.loop.stop()
