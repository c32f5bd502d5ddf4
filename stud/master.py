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
import resource
import select
import signal
import socket
import ssl
import time
import traceback
from dataclasses import dataclass

from stud import addr, metrics, sesscache, tls
from stud.config import Config, ConfigError, Exit, parse_args
from stud.log import log
from stud.worker import Worker

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1)
READY_WAIT = 10.0       # on reload, wait this long at most for new workers before retiring
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
    sni: tls.SniTable | None


def prepare(cfg: Config, previous: Setup | None = None) -> Setup:
    """Resolve addresses and build every TLS context; ConfigError names what is wrong.

    On reload, certificates whose file is unchanged keep their session-ticket keys.
    """
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
        return Setup(backend, frontends, None, tls.client_context(cfg), None)
    table = tls.build(cfg)
    if previous is not None and previous.sni is not None:
        tls.carry_ticket_keys(previous.sni, table)
    return Setup(backend, frontends, table.default, None, table)


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


def accepted_options(sock: socket.socket, cfg: Config) -> None:
    """TCP_NODELAY and keepalive for the connections sock accepts. Linux copies them from the
    listening socket to each accepted one, which saves three system calls per connection;
    set again on every reload, so a changed keepalive applies to new connections."""
    keepalive = cfg.keepalive
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(keepalive > 0))
    if keepalive > 0:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, keepalive)


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


@dataclass
class Child:
    pid: int
    slot: int
    gen: int
    started: float
    ctl: socket.socket        # the master's end of the worker's control channel
    ready: bool = False


class Master:
    def __init__(self, argv: list[str], cfg: Config, setup: Setup) -> None:
        self.argv = argv
        self.cwd = os.getcwd()  # relative paths on the command line, for reloads
        self.cfg, self.setup = cfg, setup
        self.pid = os.getpid()
        self.gen = 1
        self.sockets: dict[tuple, socket.socket] = {}     # (family, sockaddr) -> listener
        self.listeners = self._listeners(cfg, setup)
        self.children: dict[int, Child] = {}
        self.failures: dict[int, int] = {}
        self.respawn_at: dict[int, float] = {}             # slot -> monotonic time
        self.retire: tuple[int, float] | None = None        # (old gen, when to stop waiting)
        self.retiring: dict[int, float] = {}                # old gen -> when to SIGKILL it
        self.signals: list[int] = []
        self.stopping = False
        self.reload_wanted = False
        self.kill_at = 0.0
        self.pipe_r, self.pipe_w = os.pipe()
        self.board = metrics.Board()
        self.metrics_sock = self._metrics_socket(cfg)
        self.updates = sesscache.open_updates(cfg)  # -U: session cache updates (workers send)
        self.pem_stamps = pem_stamps(cfg)

    def _metrics_socket(self, cfg: Config) -> socket.socket | None:
        if cfg.metrics is None:
            return None
        try:
            family, sockaddr = addr.resolve(cfg.metrics, passive=True)
        except addr.AddrError as e:
            raise ConfigError(f"metrics: {e}") from None
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(16)
        except OSError as e:
            sock.close()
            raise ConfigError(f"metrics {cfg.metrics}: cannot bind: {e.strerror}") from None
        sock.setblocking(False)
        log.info(f"{{core}} Metrics on http://{addr_text(sock.getsockname())}/metrics")
        return sock

    def _listeners(self, cfg: Config, setup: Setup) -> list[socket.socket]:
        """Listening sockets for cfg: kept from before where the address is unchanged."""
        fresh: list[socket.socket] = []
        out = []
        try:
            for front, family, sockaddr in setup.frontends:
                sock = self.sockets.get((family, sockaddr))
                if sock is None:
                    sock = bind(front, family, sockaddr, cfg)
                    fresh.append(sock)
                    log.info(f"{{core}} Listening on {front} ({addr_text(sock.getsockname())})"
                             f" -> backend {cfg.backend}")
                accepted_options(sock, cfg)
                out.append(((family, sockaddr), sock))
        except ConfigError:
            for sock in fresh:
                sock.close()
            raise
        self.sockets.update(out)
        return [sock for _, sock in out]

    # -- signals: queue and wake; everything else happens in the loop ------------------------
    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)

    def _install_signals(self) -> None:
        for fd in (self.pipe_r, self.pipe_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.pipe_w)
        for sig in HANDLED:
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
            now = time.monotonic()
            if self.stopping:
                if not self.children:
                    break
                if now > self.kill_at:
                    self._kill(signal.SIGKILL)
            else:
                if self.cfg.reload_on_cert_change and pem_stamps(self.cfg) != self.pem_stamps:
                    log.info("{core} a pem-file changed: reloading.")
                    self.pem_stamps = pem_stamps(self.cfg)
                    self.reload_wanted = True
                if self.reload_wanted and self.retire is None and not self.retiring:
                    self.reload()  # waits while an old generation drains: two at most
                self._respawn_due()
                self._retire_old()
            for gen, at in list(self.retiring.items()):
                if not any(c.gen == gen for c in self.children.values()):
                    del self.retiring[gen]
                    self._close_unused()
                elif now > at:
                    self._kill(signal.SIGKILL, gen)
            self._sleep()
        log.info("{core} all workers exited; bye.")
        return 0

    def _sleep(self) -> None:
        timeout = 1.0 if self.retire is None else 0.05
        if self.respawn_at:
            timeout = max(0.0, min(timeout, min(self.respawn_at.values()) - time.monotonic()))
        ctls = {c.ctl: c for c in self.children.values()}
        extra = [s for s in (self.metrics_sock, self.updates) if s]
        try:
            readable, _, _ = select.select([self.pipe_r, *ctls, *extra], [], [], timeout)
        except InterruptedError:
            return
        for r in readable:
            if r == self.pipe_r:
                while True:
                    try:
                        if not os.read(self.pipe_r, 512):
                            break
                    except BlockingIOError:
                        break
            elif r is self.updates:
                sesscache.receive()
            elif r is self.metrics_sock:
                self.board.gauges.update(workers=len(self.children), generation=self.gen)
                metrics.serve_one(r, self.board)
            else:
                self._from_worker(ctls[r])

    def _from_worker(self, child: Child) -> bool:
        """Read one message from a worker; False when there was none (or it is gone)."""
        try:
            message = child.ctl.recv(1 << 16)
        except OSError:
            return False
        if message == b"R":  # its loop runs
            child.ready = True
        elif message.startswith(b"S"):
            self.board.update(child.pid, message)
        return bool(message)  # b"": the worker is gone; reap() takes care of it

    def handle_term(self) -> None:
        if not self.stopping:
            log.info(f"{{core}} Received signal, shutting down (draining for at most "
                     f"{self.cfg.drain_timeout:g} s).")
            self.stopping = True
            self.respawn_at.clear()
            self.kill_at = time.monotonic() + self.cfg.drain_timeout + KILL_GRACE
            for sock in self.sockets.values():
                sock.close()  # the port is free as soon as the workers let go too
            self.sockets.clear()
            self._kill(signal.SIGTERM)

    handle_int = handle_term

    def handle_hup(self) -> None:
        self.reload_wanted = True  # several HUPs before the loop gets to it make one reload

    def handle_usr1(self) -> None:
        """Reopen the log file (logrotate) and hand the new file to every worker."""
        if not log.path:
            return
        try:
            log.open_file()
        except OSError as e:
            log.error(f"{{core}} cannot reopen log file '{log.path}': {e.strerror}")
            return
        for c in self.children.values():
            try:
                socket.send_fds(c.ctl, [b"L"], [log.stdout])
            except OSError:
                pass
        log.info("{core} log file reopened.")

    def handle_chld(self) -> None:
        pass  # reap() runs on every pass of the loop

    def reload(self) -> None:
        """Re-read config and certificates, start a new generation, retire the old one."""
        self.reload_wanted = False
        log.info(f"{{core}} SIGHUP: reloading (generation {self.gen + 1}).")
        try:
            here = os.getcwd()
            os.chdir(self.cwd)
            try:
                cfg = parse_args(self.argv)
            finally:
                os.chdir(here)
            setup = prepare(cfg, self.setup)
            listeners = self._listeners(cfg, setup)
            if cfg.shared_cache_listen != self.cfg.shared_cache_listen:
                log.error("{core} reload: a new shared-cache-listen needs a restart; "
                          "session cache updates are unchanged")
            elif self.updates:
                sesscache.configure_updates(cfg, self.updates)
        except (ConfigError, Exit) as e:
            self.board.master_counters["reloads_failed"] += 1
            log.error(f"{{core}} reload failed, still serving the previous configuration: {e}")
            return
        self.board.master_counters["reloads_ok"] += 1
        old, self.gen = self.gen, self.gen + 1
        self.cfg, self.setup, self.listeners = cfg, setup, listeners
        try:
            configure_log(cfg)
        except ConfigError as e:
            log.error(f"{{core}} reload: {e}; logging unchanged")
        self.pem_stamps = pem_stamps(cfg)
        self.failures.clear()
        self.respawn_at.clear()
        for slot in range(cfg.worker_count):
            self.spawn(slot)
        self.retire = (old, time.monotonic() + READY_WAIT)

    def _retire_old(self) -> None:
        """Once the new generation accepts, the old one stops accepting and drains."""
        if self.retire is None:
            return
        old, deadline = self.retire
        new = [c for c in self.children.values() if c.gen == self.gen]
        if new and not all(c.ready for c in new) and time.monotonic() < deadline:
            return
        self.retire = None
        self.retiring[old] = time.monotonic() + self.cfg.drain_timeout + KILL_GRACE
        self._kill(signal.SIGTERM, old)
        log.info(f"{{core}} generation {self.gen} serving; generation {old} draining.")

    def _close_unused(self) -> None:
        live = {id(s) for s in self.listeners}
        for key, sock in list(self.sockets.items()):
            if id(sock) not in live:
                log.info(f"{{core}} No longer listening on {addr_text(sock.getsockname())}")
                sock.close()
                del self.sockets[key]

    def _kill(self, sig: int, gen: int | None = None) -> None:
        for c in self.children.values():
            if gen is None or c.gen == gen:
                try:
                    os.kill(c.pid, sig)
                except ProcessLookupError:
                    pass

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            while self._from_worker(child):  # its last stats, if still unread
                pass
            child.ctl.close()
            self.board.exited(pid)
            how = (f"was terminated by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                   else f"exited with status {os.waitstatus_to_exitcode(status)}")
            if self.stopping or child.gen != self.gen:
                log.info(f"{{core}} Child {pid} (generation {child.gen}) {how}.")
                continue
            lived = time.monotonic() - child.started
            fails = 0 if lived >= STABLE_AFTER else self.failures.get(child.slot, 0) + 1
            self.failures[child.slot] = fails
            delay = 0.0 if fails <= 1 else min(MAX_BACKOFF, 0.1 * 2 ** fails)
            log.error(f"{{core}} Child {pid} {how}. Replacing"
                      + (f" in {delay:.1f} s..." if delay else "..."))
            self.respawn_at[child.slot] = time.monotonic() + delay
            self.board.master_counters["worker_restarts"] += 1

    def _respawn_due(self) -> None:
        now = time.monotonic()
        for slot, at in list(self.respawn_at.items()):
            if at <= now:
                del self.respawn_at[slot]
                self.spawn(slot)

    def spawn(self, slot: int) -> None:
        # SEQPACKET: each stats snapshot arrives as one message
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid:
            theirs.close()
            mine.setblocking(False)
            self.children[pid] = Child(pid, slot, self.gen, time.monotonic(), mine)
            return
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in HANDLED:
                signal.signal(sig, signal.SIG_DFL)
            # Hold nothing of the master's: other workers' channels (so that each sees EOF
            # when the master dies) and listeners this generation does not serve.
            os.close(self.pipe_r)
            os.close(self.pipe_w)
            mine.close()
            if self.metrics_sock:
                self.metrics_sock.close()
            for c in self.children.values():
                c.ctl.close()
            live = {id(s) for s in self.listeners}
            for sock in self.sockets.values():
                if id(sock) not in live:
                    sock.close()
            drop_privileges(self.cfg)
            s = self.setup
            code = Worker(self.cfg, self.listeners, s.ssl_context, s.client_context, s.backend,
                          theirs).run()
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


def configure_log(cfg: Config) -> None:
    """Apply the logging options; raises ConfigError if the log file cannot be opened."""
    try:
        # --daemon has no terminal to talk to: like stud, it implies syslog (or a log file).
        log.configure(level="error" if cfg.quiet else cfg.log_level,
                      use_syslog=cfg.syslog or (cfg.daemon and not cfg.log_file),
                      facility=cfg.syslog_facility, path=cfg.log_file)
    except OSError as e:
        raise ConfigError(f"log-file: cannot open '{cfg.log_file}': {e.strerror}") from None


def run(argv: list[str], cfg: Config) -> int:
    """Start the daemon; returns the exit status. argv is kept for reloads."""
    raise_fd_limit()
    master = Master(argv, cfg, prepare(cfg))
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
        return master.run()
    finally:
        if cfg.pidfile:
            try:
                os.unlink(cfg.pidfile)
            except OSError:
                pass


def raise_fd_limit() -> None:
    """Every connection costs two descriptors: take all the kernel allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    log.info(f"{{core}} file descriptor limit: {soft}")


def pem_stamps(cfg: Config) -> list[tuple]:
    """What --reload-on-cert-change watches: each pem-file's identity, size and mtime."""
    out = []
    for path in cfg.pem_file:
        try:
            st = os.stat(path)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return out


def addr_text(sa: tuple) -> str:
    return f"[{sa[0]}]:{sa[1]}"
