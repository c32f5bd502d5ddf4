"""Start-up: from a configuration to what a generation of workers is forked with.

prepare() resolves the addresses and builds every TLS context (what -t checks);
prepare_generation() adds the listening sockets and the session cache, so that everything a
generation needs exists before any of it is used: commit() puts it in service, release() undoes
it (a reload that fails on any step leaves no port bound and the cache in use unchanged).
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from stud import addr, certs, sesscache, sessionstore, tickets, tls
from stud.config import Config, ConfigError, Frontend
from stud.log import log

Key = tuple[int, tuple]  # (family, sockaddr) of a listening socket


@dataclass
class Setup:
    """Everything -t verifies: the resolved addresses and the TLS contexts."""

    backend: tuple[int, tuple | str]
    frontends: list[tuple[Frontend, int, tuple]]
    served: certs.Served | None      # each frontend's certificates (None with --client)
    client_context: ssl.SSLContext | None
    tickets: tickets.Keyring | None = None  # (None with --client)

    def contexts(self) -> list[ssl.SSLContext]:
        """The server contexts (one per certificate and frontend settings)."""
        return [c.context for c in self.certs()]

    def certs(self) -> list[certs.Cert]:
        """Every certificate served, once per context."""
        return self.served.certs() if self.served else []

    def context_of(self, f: Frontend) -> ssl.SSLContext | None:
        """Where f's handshakes start (its default certificate), None with --client."""
        return self.served.tables[f.addr].default if self.served else None


def prepare(cfg: Config, previous: Setup | None = None) -> Setup:
    """Resolve addresses and build every TLS context; ConfigError names what is wrong.

    On reload, the ticket keys stay when their source does (without stud._ticketkeys:
    certificates whose file is unchanged keep OpenSSL's own keys).
    """
    backend = resolve_backend(cfg)
    frontends = []
    for f in cfg.frontend:
        if isinstance(f.addr, addr.Named):  # (systemd's sockets, found when claimed)
            frontends.append((f, socket.AF_UNSPEC, ()))
            continue
        try:
            frontends.append((f, *addr.resolve(f.addr, passive=True)))
        except addr.AddrError as e:
            raise ConfigError(f"frontend: {e}") from None
    if cfg.client:
        return Setup(backend, frontends, None, tls.client_context(cfg))
    keyring = tickets.Keyring(cfg, previous.tickets if previous else None)
    served = certs.build(cfg)
    if previous is not None and previous.served is not None and not tickets.AVAILABLE:
        certs.carry_ticket_keys(previous.served, served)
    return Setup(backend, frontends, served, None, keyring)


def resolve_backend(cfg: Config) -> tuple[int, tuple | str]:
    """The backend as the workers connect to it: a UNIX socket's path inside --chroot is the
    path seen from inside (as hitch 1.8)."""
    try:
        family, sockaddr = addr.resolve(cfg.backend)
    except addr.AddrError as e:
        raise ConfigError(f"backend: {e}") from None
    if family == socket.AF_UNIX and cfg.chroot:
        root = cfg.chroot.rstrip("/")
        if not sockaddr.startswith(root + "/"):
            raise ConfigError(f"backend: the UNIX socket '{sockaddr}' is outside chroot "
                              f"'{cfg.chroot}', where the workers cannot reach it")
        sockaddr = sockaddr[len(root):]
    return family, sockaddr


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
        buffer_sizes(sock, cfg)  # (before listen(): the window scale is agreed in the SYN)
        if cfg.enable_tcp_fastopen:
            fast_open(sock, front, cfg.backlog)
        sock.listen(cfg.backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise ConfigError(f"frontend {front}: cannot bind: {e.strerror}") from None
    return sock


def buffer_sizes(sock: socket.socket, cfg: Config) -> None:
    """--recv-bufsize / --send-bufsize of the client sockets (accepted ones inherit them)."""
    for size, opt in ((cfg.recv_bufsize, socket.SO_RCVBUF), (cfg.send_bufsize, socket.SO_SNDBUF)):
        if size > 0:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)


def fast_open(sock: socket.socket, front: addr.Addr, backlog: int) -> None:
    """--enable-tcp-fastopen: where the kernel refuses it, a warning, not a failure."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, max(backlog, 1))
    except OSError as e:
        log.error(f"{{core}} frontend {front}: TCP Fast Open refused ({e.strerror}); "
                  "serving without it")


def accepted_options(sock: socket.socket, cfg: Config) -> None:
    """TCP_NODELAY and keepalive for the connections sock accepts. Linux copies them from the
    listening socket to each accepted one, which saves three system calls per connection;
    set again on every reload, so a changed keepalive applies to new connections."""
    keepalive = cfg.keepalive
    buffer_sizes(sock, cfg)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(keepalive > 0))
    if keepalive > 0:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, keepalive)


class Listeners:
    """The master's listening sockets by address, kept across reloads where it stays. With
    socket activation (``passed``: systemd's sockets by address, with their names) those are
    the only ones: stud binds nothing itself."""

    def __init__(self, passed: dict[Key, tuple[str, socket.socket]] | None = None) -> None:
        self.passed = passed
        self.by_key: dict[Key, socket.socket] = {k: s for k, (_, s) in (passed or {}).items()}

    def claim(self, cfg: Config, setup: Setup) -> tuple[list[tuple[socket.socket, Frontend]],
                                                         dict[Key, socket.socket]]:
        """The sockets for setup's frontends, in order, each with its frontend, and those of
        them bound anew (not yet ours: adopt() or release() them); raises ConfigError with
        nothing left bound."""
        fresh: dict[Key, socket.socket] = {}
        out: list[tuple[socket.socket, Frontend]] = []
        try:
            for front, family, sockaddr in setup.frontends:
                for sock in self._sockets_for(front, (family, sockaddr), fresh, cfg):
                    taken = [f for s, f in out if s is sock]
                    if taken:
                        raise ConfigError(f"frontend {front.addr}: the same socket as frontend "
                                          f"{taken[0].addr}")
                    out.append((sock, front))
        except ConfigError:
            release(fresh)
            raise
        return out, fresh

    def _sockets_for(self, front: Frontend, key: Key, fresh: dict[Key, socket.socket],
                     cfg: Config) -> list[socket.socket]:
        """A frontend's sockets: systemd's of that name, the one already listening on its
        address, systemd's on it, or a new one (added to fresh)."""
        if isinstance(front.addr, addr.Named):
            socks = self._named(front.addr)
        elif (sock := self.by_key.get(key) or fresh.get(key)) is not None:
            socks = [sock]
        elif self.passed is not None:
            socks = [self._passed_for(front.addr, key)]
        else:
            fresh[key] = bind(front.addr, key[0], key[1], cfg)
            return [fresh[key]]
        if self.passed is not None and not cfg.client:  # (bind() sets it on stud's own)
            for sock in socks:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
        return socks

    def _named(self, front: addr.Named) -> list[socket.socket]:
        """Every socket systemd passed under the frontend's name."""
        if self.passed is None:
            raise ConfigError(f"frontend {front}: systemd passed no sockets (no LISTEN_FDS: "
                              "start stud from a .socket unit)")
        socks = [sock for name, sock in self.passed.values() if name == front.name]
        if not socks:
            raise ConfigError(f"frontend {front}: systemd passed no socket of that name "
                              f"({self._given()})")
        return socks

    def _given(self) -> str:
        return ", ".join(f"{name} {addr_text(k[1])}" for k, (name, _) in
                         (self.passed or {}).items())

    def _passed_for(self, front: addr.Addr, key: Key) -> socket.socket:
        """systemd's socket for a frontend: the same address, or for ``*`` the IPv4
        wildcard on its port."""
        alternatives = [key]
        if front.host is None:
            alternatives.append((int(socket.AF_INET), ("0.0.0.0", front.port)))
        for k in alternatives:
            if k in self.passed:
                return self.passed[k][1]
        raise ConfigError(f"frontend {front}: none of the sockets systemd passed is for it "
                          f"({self._given()}); socket-activated, stud binds nothing itself")

    def check_passed(self, live: list[socket.socket], cfg: Config) -> None:
        """At start: every socket systemd passed serves a frontend (ConfigError if not)."""
        for key, (name, sock) in (self.passed or {}).items():
            if all(sock is not s for s in live):
                raise ConfigError(f"LISTEN_FDS: systemd's socket {name} {addr_text(key[1])} "
                                  "is for no frontend")
            log.info(f"{{core}} Listening on {addr_text(key[1])} (systemd's {name}) -> "
                     f"backend {cfg.backend}")

    def adopt(self, fresh: dict[Key, socket.socket], cfg: Config) -> None:
        for sock in fresh.values():
            log.info(f"{{core}} Listening on {addr_text(sock.getsockname())} -> backend "
                     f"{cfg.backend}")
        self.by_key.update(fresh)

    def unused(self, live: list[socket.socket]) -> list[socket.socket]:
        """The sockets that are not in live (another generation's)."""
        return [s for s in self.by_key.values() if all(s is not x for x in live)]

    def close_unused(self, live: list[socket.socket]) -> None:
        """Close the sockets no generation serves any more."""
        for key, sock in list(self.by_key.items()):
            if all(sock is not x for x in live):
                log.info(f"{{core}} No longer listening on {addr_text(sock.getsockname())}")
                sock.close()
                del self.by_key[key]

    def close_all(self) -> None:
        for sock in self.by_key.values():
            sock.close()  # the port is free as soon as the workers let go too
        self.by_key.clear()


def release(fresh: dict[Key, socket.socket]) -> None:
    for sock in fresh.values():
        sock.close()


@dataclass
class Generation:
    """Everything one generation of workers is forked with, all prepared before any is used."""

    cfg: Config
    setup: Setup
    claimed: list[tuple[socket.socket, Frontend]]  # each listening socket, with its frontend
    fresh: dict[Key, socket.socket]  # bound for it and not yet adopted
    cache: sesscache.Plan

    @property
    def listeners(self) -> list[socket.socket]:
        return [sock for sock, _ in self.claimed]

    def served(self) -> list[tuple[socket.socket, ssl.SSLContext | None]]:
        """Each listening socket with where its handshakes start (what workers serve)."""
        return [(sock, self.setup.context_of(f)) for sock, f in self.claimed]


def prepare_generation(cfg: Config, previous: Setup | None, listeners: Listeners,
                       updates: socket.socket | None) -> Generation:
    """Each step that can fail, in order: contexts, listening sockets, the session cache and
    its replication. Raises ConfigError with nothing of it left behind."""
    setup = prepare(cfg, previous)
    if cfg.session_store:
        sessionstore.preload()
    claimed, fresh = listeners.claim(cfg, setup)
    try:
        cache = sesscache.plan(cfg, setup.contexts(), updates)
    except ConfigError:
        release(fresh)
        raise
    return Generation(cfg, setup, claimed, fresh, cache)


def commit(gen: Generation, listeners: Listeners) -> None:
    """Put a prepared generation in service (nothing here fails on a valid configuration)."""
    listeners.adopt(gen.fresh, gen.cfg)
    gen.fresh = {}
    for sock in gen.listeners:
        accepted_options(sock, gen.cfg)
    sesscache.commit(gen.cache)
    if gen.setup.tickets is not None:
        gen.setup.tickets.commit()


def metrics_socket(cfg: Config) -> socket.socket | None:
    """--metrics: the master's listening socket (kept as it is across reloads)."""
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


def addr_text(sa: tuple) -> str:
    return f"[{sa[0]}]:{sa[1]}"
