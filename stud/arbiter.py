"""The arbiter: the master process's loop over its workers, shaped like gunicorn's.

Signal handlers only queue the signal and wake the loop through a self-pipe; the loop
dispatches to ``handle_<signal>``, reaps children and respawns them (with exponential back-off
for a worker that keeps dying), runs reloads (a new generation of workers, then the old one
drains) and serves the metrics. What a generation is made of comes from stud.startup; each
worker drops its privileges (stud.daemon) right after fork, before it touches a client: the
master keeps them, so that a later reload can re-read root-only keys and bind privileged ports
(as hitch does).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import time
import traceback
from dataclasses import dataclass

from stud import balance, certs, crlfetch, metrics, sesscache, stapling, startup, systemd, trust
from stud.config import Config, ConfigError, Exit, file_stamp, parse_args
from stud.daemon import configure_log, drop_privileges
from stud.log import log
from stud.worker import Worker

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1)
READY_WAIT = 10.0       # on reload, wait this long at most for new workers before retiring
STABLE_AFTER = 5.0      # a worker that lived this long is healthy: reset its back-off
MAX_BACKOFF = 30.0
KILL_GRACE = 5.0        # after drain-timeout, wait this long before SIGKILL


@dataclass
class Child:
    pid: int
    slot: int
    gen: int
    started: float
    ctl: socket.socket        # the master's end of the worker's control channel
    ready: bool = False


class Arbiter:
    def __init__(self, argv: list[str], cfg: Config) -> None:
        """Everything the first generation needs, or ConfigError with nothing left bound."""
        self.argv = argv
        self.cwd = os.getcwd()  # relative paths on the command line, for reloads
        self.pid = os.getpid()
        self.gen = 1
        self.listeners = startup.Listeners(systemd.listen_sockets())
        self.metrics_sock = startup.metrics_socket(cfg)
        self.updates = sesscache.open_updates(cfg)  # -U: session cache updates (workers send)
        self.current = startup.prepare_generation(cfg, None, self.listeners, self.updates)
        self.listeners.check_passed(self.current.listeners, cfg)
        startup.commit(self.current, self.listeners)
        self.stapling = stapling.Stapling()
        self.crl_fetcher = None  # --crl-fetch's child process, once a generation asks
        self.stapling.update(cfg, self.current.setup.certs())
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
        self.pem_stamps = pem_stamps(cfg)
        self.refresh_at = time.monotonic() + cfg.backend_refresh  # -R
        self.refresh_failed = False
        self.notify = systemd.Notifier.from_environ()  # systemd (Type=notify), or None
        self.announce = "started"  # READY=1 is due once the current generation serves
        self.last_reload = ""
        self.status_at = 0.0
        self.status_sent = ""

    @property
    def cfg(self) -> Config:
        return self.current.cfg

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
        self.shares = balance.Shares(self.cfg.worker_count)
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
                self._refresh_backend(now)
                self._to_workers(self.stapling.tick())
                self._crl_tick()
                if self.current.setup.tickets is not None:
                    self.current.setup.tickets.tick(time.time())
                self._retire_old()
                self._tell_systemd(now)
            if self.notify:
                self.notify.watchdog(now)
            for gen, at in list(self.retiring.items()):
                if not any(c.gen == gen for c in self.children.values()):
                    del self.retiring[gen]
                    self.listeners.close_unused(self.current.listeners)
                elif now > at:
                    self._kill(signal.SIGKILL, gen)
            self._sleep()
        self.stapling.close()
        if self.crl_fetcher:
            self.crl_fetcher.close()
        log.info("{core} all workers exited; bye.")
        return 0

    def _tell_systemd(self, now: float) -> None:
        """READY=1 once every worker of the current generation accepts (at start, after a
        reload), and a STATUS line when it changes (at most every 5 s)."""
        if not self.notify:
            return
        if self.announce and self.retire is None:
            current = [c for c in self.children.values() if c.gen == self.gen]
            if len(current) >= self.cfg.worker_count and all(c.ready for c in current):
                self.notify.ready(f"{self.announce}: {self._status()}")
                self.announce = ""
        elif now >= self.status_at and (text := self._status()) != self.status_sent:
            self.status_at, self.status_sent = now + 5.0, text
            self.notify.status(text)

    def _status(self) -> str:
        _, open_conns = self.board.totals()
        text = (f"generation {self.gen}, {len(self.children)} workers, {open_conns} "
                "connections open")
        return text + (f"; last reload {self.last_reload}" if self.last_reload else "")

    def _refresh_backend(self, now: float) -> None:
        """-R: resolve the backend's name again; new connections use a new address (also in
        workers forked later); a failure keeps the old one, said once until it resolves."""
        if not self.cfg.backend_refresh or now < self.refresh_at:
            return
        self.refresh_at = now + self.cfg.backend_refresh
        setup = self.current.setup
        try:
            backend = startup.resolve_backend(self.cfg)
        except ConfigError as e:
            if not self.refresh_failed:
                log.error(f"{{core}} backend-refresh: {e}; still connecting to "
                          f"{addr_text(setup.backend)}")
            self.refresh_failed = True
            return
        self.refresh_failed = False
        if backend == setup.backend:
            return
        log.info(f"{{core}} backend {self.cfg.backend} now resolves to {addr_text(backend)}")
        setup.backend = backend
        message = b"B" + json.dumps(backend).encode()
        for c in self.children.values():
            if c.gen == self.gen:
                try:
                    c.ctl.send(message)
                except OSError:
                    pass  # (gone: its replacement is forked with the new address)

    def _to_workers(self, staples: list[tuple[str, bytes | None, bytes]]) -> None:
        """New staples (OCSP) for the running workers; those forked later have them."""
        for path, der, leaf in staples:
            message = stapling.message(path, der, leaf)
            for c in self.children.values():
                try:
                    c.ctl.send(message)
                except OSError:
                    pass  # (gone: reap() sees to it)

    def _crl_tick(self) -> None:
        """CRL files read again, downloads asked (--crl-fetch): new CRLs to the workers."""
        trusts = self._trusts()
        if trusts is None:
            return
        if trusts.fetching and self.crl_fetcher is None:
            self.crl_fetcher = crlfetch.new_fetcher(self.cfg)
        self._crls_to_workers(trusts.tick(self.crl_fetcher))

    def _trusts(self) -> trust.Trusts | None:
        served = self.current.setup.served
        return served.trusts if served else None

    def _crls_to_workers(self, updates: list[tuple[str, list[bytes]]]) -> None:
        """New CRLs (read again, or downloaded), checked, to the current generation's workers:
        in a memfd, each reading it whole at offset 0."""
        for key, crls in updates:
            data = memoryview(trust.message(key, crls))
            fd = os.memfd_create("stud-crls", os.MFD_CLOEXEC)
            try:
                while data:
                    data = data[os.write(fd, data):]
                for c in self.children.values():
                    if c.gen == self.gen:
                        try:
                            socket.send_fds(c.ctl, [b"V"], [fd])
                        except OSError:
                            pass  # (gone, or busy: its replacement is forked with them)
            finally:
                os.close(fd)

    def _sleep(self) -> None:
        timeout = 1.0 if self.retire is None else 0.05
        if self.respawn_at:
            timeout = max(0.0, min(timeout, min(self.respawn_at.values()) - time.monotonic()))
        if (wake := self.stapling.wake()) is not None:
            timeout = min(timeout, wake)
        if self.notify and self.notify.watchdog_every:
            timeout = max(0.0, min(timeout, self.notify.watchdog_at - time.monotonic()))
        ctls = {c.ctl: c for c in self.children.values()}
        crl_fd = self.crl_fetcher.fileno() if self.crl_fetcher else None
        extra = [s for s in (self.metrics_sock, self.updates, self.stapling.fileno(), crl_fd)
                 if s]
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
            elif r == self.stapling.fileno():
                self._to_workers(self.stapling.receive())
            elif r == crl_fd:
                trusts = self._trusts()
                answers = self.crl_fetcher.answers()
                self._crls_to_workers(trusts.receive(answers) if trusts else [])
                if not self.crl_fetcher.alive():
                    log.error("{core} CRL fetcher process gone; starting another")
                    self.crl_fetcher.close()
                    self.crl_fetcher = crlfetch.new_fetcher(self.cfg)
            elif r is self.metrics_sock:
                served = self.current.setup.served
                self.board.gauges.update(workers=len(self.children), generation=self.gen,
                                         certificates_skipped=len(served.skipped) if served else 0)
                self.board.crls = served.trusts.crl_gauges() if served else {}
                self.board.crl_sources = crlfetch.gauges()
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
            if self.notify:
                self.notify.stopping(f"draining: {self._status()}")
            self.respawn_at.clear()
            self.kill_at = time.monotonic() + self.cfg.drain_timeout + KILL_GRACE
            self.listeners.close_all()
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
        """Re-read config and certificates, start a new generation, retire the old one. Every
        step that can fail comes before anything changes: a failed reload changes nothing."""
        self.reload_wanted = False
        log.info(f"{{core}} SIGHUP: reloading (generation {self.gen + 1}).")
        if self.notify:
            self.notify.reloading()
        try:
            cfg = self._read_config()
            gen = startup.prepare_generation(cfg, self.current.setup, self.listeners,
                                             self.updates)
        except (ConfigError, Exit) as e:
            self.board.master_counters["reloads_failed"] += 1
            log.error(f"{{core}} reload failed, still serving the previous configuration: {e}")
            self.last_reload = f"failed: {e}"
            if self.notify:  # (systemd waits for READY=1 after RELOADING=1, failed or not)
                self.notify.ready(f"reload failed, previous configuration serving: {e}")
            return
        for what, new, old in (("shared-cache-listen", cfg.shared_cache_listen,
                                self.cfg.shared_cache_listen),
                               ("ssl-engine", cfg.ssl_engine, self.cfg.ssl_engine),
                               ("metrics", cfg.metrics, self.cfg.metrics)):
            if new != old:
                log.error(f"{{core}} reload: a new {what} needs a restart; it stays {old}")
        startup.commit(gen, self.listeners)
        self.stapling.update(cfg, gen.setup.certs())
        self.board.master_counters["reloads_ok"] += 1
        old, self.gen = self.gen, self.gen + 1
        self.current = gen
        try:
            configure_log(cfg)
        except ConfigError as e:
            log.error(f"{{core}} reload: {e}; logging unchanged")
        self.pem_stamps = pem_stamps(cfg)
        self.failures.clear()
        self.respawn_at.clear()
        self.shares = balance.Shares(cfg.worker_count)  # (the old generation keeps its own)
        for slot in range(cfg.worker_count):
            self.spawn(slot)
        self.retire = (old, time.monotonic() + READY_WAIT)
        self.announce, self.last_reload = "reloaded", "ok"

    def _read_config(self) -> Config:
        """The original command line again, relative paths against the original directory."""
        here = os.getcwd()
        os.chdir(self.cwd)
        try:
            return parse_args(self.argv)
        finally:
            os.chdir(here)

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
        self.shares.reset(slot)
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
            for fetcher in (self.stapling.fetcher, self.crl_fetcher):
                if fetcher:
                    fetcher.sock.close()
            for c in self.children.values():
                c.ctl.close()
            for sock in self.listeners.unused(self.current.listeners):
                sock.close()
            drop_privileges(self.cfg)
            s = self.current.setup
            code = Worker(self.cfg, self.current.served(), s.client_context, s.backend,
                          theirs, stapling.by_file(s.certs()),
                          s.served.trusts if s.served else None, self.shares, slot).run()
        except BaseException:
            log.error(f"{{core}} worker {os.getpid()} crashed: "
                      + traceback.format_exc().strip().replace("\n", " | "))
        finally:
            os._exit(code)


def pem_stamps(cfg: Config) -> list[tuple]:
    """What --reload-on-cert-change watches: each certificate and key file's identity, size and
    mtime (pem-dir's files too, and which there are)."""
    try:
        listed = certs.pem_dir_files(cfg)
    except ConfigError:
        listed = []  # (an unreadable pem-dir: the reload it prompts will say why)
    pems = [*cfg.pem_file, *(p for f in cfg.frontend for p in f.pems), *listed]
    return [(path, file_stamp(path)) for pem in pems for path in (pem.cert, pem.key) if path]


def addr_text(backend: tuple[int, tuple | str]) -> str:
    """A resolved backend as the log shows it: [host]:port, or a UNIX socket's path."""
    _, sa = backend
    return sa if isinstance(sa, str) else f"[{sa[0]}]:{sa[1]}"
