"""The master: bind, load certificates, fork and supervise workers, handle signals.

Shaped like gunicorn's arbiter: signal handlers only queue the signal and wake the main loop
through a self-pipe; the loop dispatches to ``handle_<signal>``, reaps children and respawns
them (with exponential back-off for a worker that keeps dying).

Unlike stud 0.3, the master keeps its privileges and each worker applies chroot, setgroups,
setgid and setuid right after fork, before it touches a client: a later reload must be able to
re-read root-only keys and bind privileged ports (as hitch does).
"""

from __future__ import annotations

import grp
import os
import pwd
import select
import signal
import socket
import ssl
import sys
import time
import traceback
from dataclasses import dataclass

from stud import addr, tls
from stud.config import Config, ConfigError
from stud.log import log
from stud.worker import Worker

STABLE_AFTER = 5.0      # a worker that lived this long is healthy: reset its back-off
MAX_BACKOFF = 30.0
KILL_GRACE = 5.0        # after drain-timeout, wait this long before SIGKILL


@dataclass
class Setup:
    """Everything start-up checks: what -t verifies and what workers are forked with."""

    backend: tuple[int, tuple]
    frontends: list[tuple[addr.Addr, int, tuple]]
    ssl_context: ssl.SSLContext | None
    client_context: ssl.SSLContext | None


def prepare(cfg: Config) -> Setup:
    """Resolve addresses and build every TLS context; ConfigError names what is wrong."""
    try:
        backend = addr.resolve(cfg.backend)
    except addr.AddrError as e:
        raise ConfigError(f"backend: {e}") from None
    frontends = []
    for f in cfg.frontend:
        try:
            frontends.append((f, *addr.resolve(f, passive=True)))
        except addr.AddrError as e:
            raise ConfigError(f"frontend: {e}") from None
    if cfg.client:
        return Setup(backend, frontends, None, tls.client_context(cfg))
    return Setup(backend, frontends, tls.build(cfg).default, None)


def bind(front: addr.Addr, family: int, sockaddr: tuple, cfg: Config) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # [::] is dual-stack
        sock.bind(sockaddr)
        if not cfg.client:
            # Wake workers only once the ClientHello is there (idle connects cost nothing).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
        sock.listen(cfg.backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise ConfigError(f"frontend {front}: cannot bind: {e.strerror}") from None
    return sock


def drop_privileges(cfg: Config) -> None:
    """chroot, then setgroups, setgid, setuid: for workers, before any client is served."""
    # Look the names up before chroot: the jail usually has no /etc/passwd.
    pw = pwd.getpwnam(cfg.user) if cfg.user else None
    gid = grp.getgrnam(cfg.group).gr_gid if cfg.group else pw.pw_gid if pw else None
    if cfg.chroot:
        os.chroot(cfg.chroot)
        os.chdir("/")
    if gid is None:
        return
    if os.getuid() == 0:
        os.setgroups([gid])  # the original kept root's supplementary groups
    os.setgid(gid)
    if pw is not None:
        os.setuid(pw.pw_uid)


class Master:
    def __init__(self, cfg: Config, setup: Setup, listeners: list[socket.socket]) -> None:
        self.cfg = cfg
        self.setup = setup
        self.listeners = listeners
        self.pid = os.getpid()
        self.workers: dict[int, tuple[int, float]] = {}   # pid -> (slot, started)
        self.failures: dict[int, int] = {}
        self.respawn_at: dict[int, float] = {}             # slot -> monotonic time
        self.signals: list[int] = []
        self.stopping = False
        self.kill_at = 0.0
        self.pipe_r, self.pipe_w = os.pipe()

    # -- signals: queue and wake; everything else happens in the loop ------------------------
    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)

    def _install_signals(self) -> None:
        for fd in (self.pipe_r, self.pipe_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.pipe_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def run(self) -> int:
        self._install_signals()
        for slot in range(self.cfg.worker_count):
            self.spawn(slot)
        while True:
            while self.signals:
                sig = self.signals.pop(0)
                getattr(self, f"handle_{signal.Signals(sig).name[3:].lower()}")()
            self.reap()
            if self.stopping:
                if not self.workers:
                    break
                if time.monotonic() > self.kill_at:
                    self._kill_all(signal.SIGKILL)
            else:
                self._respawn_due()
            self._sleep()
        log.info("{core} all workers exited; bye.")
        return 0

    def _sleep(self) -> None:
        timeout = 1.0
        if self.respawn_at:
            timeout = max(0.0, min(timeout, min(self.respawn_at.values()) - time.monotonic()))
        try:
            select.select([self.pipe_r], [], [], timeout)
            while os.read(self.pipe_r, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def handle_term(self) -> None:
        if not self.stopping:
            log.info(f"{{core}} Received signal, shutting down (draining for at most "
                     f"{self.cfg.drain_timeout:g} s).")
            self.stopping = True
            self.respawn_at.clear()
            self.kill_at = time.monotonic() + self.cfg.drain_timeout + KILL_GRACE
            for sock in self.listeners:
                sock.close()  # the port is free as soon as the workers let go too
            self._kill_all(signal.SIGTERM)

    handle_int = handle_term

    def handle_hup(self) -> None:
        log.info("{core} SIGHUP received: reload is not available in this version; ignored.")

    def handle_chld(self) -> None:
        pass  # reap() runs on every pass of the loop

    def _kill_all(self, sig: int) -> None:
        for pid in self.workers:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.workers.clear()
                return
            if pid == 0:
                return
            slot, started = self.workers.pop(pid, (None, 0.0))
            if slot is None:
                continue
            how = (f"was terminated by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                   else f"exited with status {os.waitstatus_to_exitcode(status)}")
            if self.stopping:
                log.info(f"{{core}} Child {pid} {how}.")
                continue
            lived = time.monotonic() - started
            fails = 0 if lived >= STABLE_AFTER else self.failures.get(slot, 0) + 1
            self.failures[slot] = fails
            delay = 0.0 if fails <= 1 else min(MAX_BACKOFF, 0.1 * 2 ** fails)
            log.error(f"{{core}} Child {pid} {how}. Replacing"
                      + (f" in {delay:.1f} s..." if delay else "..."))
            self.respawn_at[slot] = time.monotonic() + delay

    def _respawn_due(self) -> None:
        now = time.monotonic()
        for slot, at in list(self.respawn_at.items()):
            if at <= now:
                del self.respawn_at[slot]
                self.spawn(slot)

    def spawn(self, slot: int) -> None:
        pid = os.fork()
        if pid:
            self.workers[pid] = (slot, time.monotonic())
            return
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            os.close(self.pipe_r)
            os.close(self.pipe_w)
            drop_privileges(self.cfg)
            s = self.setup
            code = Worker(self.cfg, self.listeners, s.ssl_context, s.client_context, s.backend,
                          self.pid).run()
        except BaseException:
            log.error(f"{{core}} worker {os.getpid()} crashed: "
                      + traceback.format_exc().strip().replace("\n", " | "))
        finally:
            os._exit(code)


def daemonize() -> None:
    """Fork into the background; /dev/null is opened before any chroot (stud's issue #146)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    pid = os.fork()
    if pid:
        print(f"{{core}} Daemonized as pid {pid}.", flush=True)
        os._exit(0)
    os.setsid()
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    log.info(f"Successfully daemonized as pid {os.getpid()}.")


def run(cfg: Config) -> int:
    """Start the daemon; returns the exit status."""
    setup = prepare(cfg)
    listeners = [bind(f, fam, sa, cfg) for f, fam, sa in setup.frontends]
    for (f, _, _), sock in zip(setup.frontends, listeners, strict=True):
        log.info(f"{{core}} Listening on {f} ({addr_text(sock.getsockname())}) -> backend "
                 f"{cfg.backend}")
    if os.getuid() == 0 and not cfg.user:
        log.error("{core} WARNING: workers will run as root; use --user to drop privileges.")
    pidfile = None
    if cfg.pidfile:
        try:
            pidfile = open(cfg.pidfile, "w")  # noqa: SIM115 - written after daemonizing
        except OSError as e:
            raise ConfigError(f"pidfile: cannot write '{cfg.pidfile}': {e.strerror}") from None
    if cfg.daemon:
        os.chdir("/")
        daemonize()
    if pidfile:
        pidfile.write(f"{os.getpid()}\n")
        pidfile.close()
    try:
        return Master(cfg, setup, listeners).run()
    finally:
        if cfg.pidfile:
            try:
                os.unlink(cfg.pidfile)
            except OSError:
                pass


def addr_text(sa: tuple) -> str:
    return f"[{sa[0]}]:{sa[1]}"


def check(cfg: Config) -> None:
    """-t: everything start-up would check, short of binding."""
    sys.stderr.write("Trying to initialize SSL contexts with your certificates\n")
    prepare(cfg)
