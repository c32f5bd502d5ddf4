"""The connection policy: what happens at each step of a connection's life that is not moving
bytes. It owns the settings connections read (contexts, backend, header mode) and the
counters, and implements relay.Hooks for Relays and stud._flow.Conns alike: handshake and
close accounting, the client-address header, PROXY header parsing, timeouts, the connection
log line and the empty-connection limiter's record.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable

from stud import identity, proxyproto
from stud.config import Config
from stud.hslimit import HandshakeLimiter
from stud.identity import Identity
from stud.log import CONN, DEBUG, INFO, log, quoted
from stud.metrics import Stats
from stud.ratelimit import EmptyConnLimiter
from stud.relay import Conn, Relay, handshake_error, reason, short_reason
from stud.tls import sslext

Connection = Relay | Conn if Conn else Relay
# OpenSSL's reasons for a handshake that ended on the client's certificate.
CERT_REFUSED = frozenset({"CERTIFICATE_VERIFY_FAILED", "PEER_DID_NOT_RETURN_A_CERTIFICATE"})
MAX_IDENTITIES = 1000  # distinct client identities counted by name; the rest as "other"
LINGER = 2.0           # seconds a refused client's socket stays open after the alert
MAX_LINGERING = 1024   # refused clients lingering at once; more are closed at once


class ConnPolicy:
    """relay.Hooks, for every connection of a worker."""

    def __init__(self, cfg: Config, client_context: ssl.SSLContext | None,
                 backend: tuple[int, tuple | str], gone: Callable[[Connection], None]) -> None:
        self.client_context = client_context
        self.backend = backend
        self.mode = cfg.client_addr_mode
        self.proxy_tlv, self.proxy_authority = cfg.proxy_tlv, cfg.proxy_authority
        self.rewrite = cfg.proxy_proxy and cfg.write_proxy_v2  # the client's header, as v2
        self.cert_tlv = "pem" if cfg.proxy_client_cert else "der" if cfg.proxy_client_der else None
        self.identity_tlvs = cfg.proxy_identity_tlvs
        self.client_mode = cfg.client
        self.limiter = (EmptyConnLimiter(cfg.empty_conn_limit, cfg.empty_conn_window)
                        if cfg.empty_conn_limit else None)
        # --handshake-rate, shared out among the workers (the kernel spreads the clients)
        n = cfg.worker_count
        self.hs_limiter = (HandshakeLimiter(cfg.handshake_rate / n, cfg.handshake_burst / n,
                                            cfg.handshake_prefix_v4, cfg.handshake_prefix_v6,
                                            cfg.handshake_delay)
                           if cfg.handshake_rate else None)
        self.hs_owed: set[Connection] = set()  # admitted free: they pay if not resumed
        self.stats = Stats()
        self.gone = gone  # the worker's: after a close is accounted for
        # Client certificates: read once a connection is through its handshake (the
        # client_header() step), for the log line at its close.
        self.verifying = cfg.verifies_clients
        self.identities: dict[Connection, Identity | None] = {}
        self.lingering: deque[tuple[float, socket.socket]] = deque()

    def handshaken(self, conn: Relay, tls: object, name: bytes | None) -> None:
        """A relay's handshake completed on tls (name: the SNI name the client sent, if any).
        (A Conn does the same in C.)"""
        sni = name.decode() if name and name.isascii() else None  # an A-label, as ssl has it
        conn.tls_info = info = (tls.version(), (tls.cipher() or ("",))[0], sni,
                                tls.selected_alpn_protocol(), tls.session_reused)
        stats = self.stats
        stats.handshakes += 1
        stats.tls_version[info[0]] += 1
        stats.cipher[info[1]] += 1
        stats.resumed += info[4]
        stats.handshake_seconds.observe(time.monotonic() - conn.started)

    def backend_connected(self, conn: Relay, seconds: float) -> None:
        self.stats.connect_seconds.observe(seconds)

    def handshake_failed(self, conn: Connection, err: BaseException | int) -> None:
        """err: what ssl raised, or a failed state of stud._flow's handshake step."""
        if isinstance(err, int):
            err = handshake_error(conn.tls, err)
        self.stats.handshakes_failed[short_reason(err)] += 1
        if self.verifying and getattr(err, "reason", None) in CERT_REFUSED:
            why = self.refusal(conn, err)
            self.stats.client_certificates[why] += 1
            self.linger(conn)
            # A client refused on its certificate is worth a line at the default level.
            conn.close(f"client certificate refused: {why}", INFO)
            return
        # Scanners and broken clients fail here all day: below the default log level.
        conn.close(f"handshake failed: {reason(err)}", DEBUG)

    def linger(self, conn: Connection) -> None:
        """Keep a refused client's socket open a moment after our alert (with a FIN after it).
        Closed at once, what the client sent after its Finished (a TLS 1.3 client writes at
        once) makes the close a reset, and a reset can discard the alert at the client before
        it reads why it was refused."""
        fd = conn.fd
        if fd < 0 or len(self.lingering) >= MAX_LINGERING:
            return
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            return
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        self.lingering.append((time.monotonic() + LINGER, sock))

    def end_lingering(self, now: float) -> None:
        """Close the refused clients' sockets whose moment is over (the worker, each second)."""
        while self.lingering and self.lingering[0][0] <= now:
            self.lingering.popleft()[1].close()

    def client_text(self, conn: Connection) -> str:
        """Who the client is, for the connection log: with --proxy-proxy, the address its
        PROXY header gives, and the peer that sent it."""
        if self.mode == "proxy-proxy" and conn.pbuf:
            try:
                h = proxyproto.parse(conn.pbuf)
            except proxyproto.ProxyError:
                h = None
            if h is not None and h.src is not None:
                return f"{addr_text(h.src)} via={addr_text(conn.peer)}"
        return addr_text(conn.peer)

    @staticmethod
    def refusal(conn: Connection, err: ssl.SSLError) -> str:
        """Why OpenSSL refused the client's certificate, as its verify result names it."""
        if err.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no certificate"
        if isinstance(err, ssl.SSLCertVerificationError):
            return err.verify_message
        return sslext.verify_result(conn.ssl)[1] if conn.ssl else "certificate verify failed"

    def client_identity(self, conn: Connection) -> Identity | None:
        """The verified certificate of a client past its handshake (or the one its session
        carries), counted; None without one (client-verify optional)."""
        der = sslext.peer_certificate(conn.ssl) if conn.ssl else None
        ident = identity.of(der) if der else None
        stats = self.stats
        stats.client_certificates["ok" if ident else "none"] += 1
        if ident:
            name, seen = ident.name, stats.client_identities
            if name not in seen and len(seen) >= MAX_IDENTITIES:
                name = "other"
            stats.client_identities[name] += 1
        self.identities[conn] = ident
        return ident

    def backend_failed(self, conn: Connection, why: str) -> None:
        self.stats.backend_connect_failed += 1
        conn.close(f"backend connect failed: {why}", CONN)

    def timed_out(self, conn: Connection, kind: str) -> None:
        """The deadline of this kind ("handshake", "backend connect") passed."""
        if kind == "backend connect":
            if conn.closed or not conn.connecting or conn.backend_ready() or conn.closed:
                return  # connected meanwhile, or backend_ready() found the connect failed
            self.stats.backend_connect_failed += 1
        self.stats.timeouts[kind] += 1
        conn.close(f"{kind} timeout", CONN)

    def proxy_header(self, conn: Connection, peek: bytes) -> tuple[int, bool] | None:
        """--proxy-proxy: how many bytes of peek (what the client sent next, still unread)
        belong to its PROXY header, and whether they complete it; None if it is bad (closed)."""
        have = conn.pbuf
        try:
            h = proxyproto.parse(have + peek)
        except proxyproto.ProxyError as e:
            conn.close(f"bad PROXY header: {e}", CONN)
            return None
        # Consume only header bytes: all of them while incomplete, else exactly up to its end.
        return (len(peek), False) if h is None else (h.length - len(have), True)

    def client_header(self, conn: Connection) -> bytes:
        """What the backend reads first: the client's address, as the mode has it."""
        ident = self.client_identity(conn) if self.verifying else None
        mode = self.mode
        if mode is None:
            return b""
        passthrough = None
        if mode == "proxy-proxy":
            if not self.rewrite:
                return conn.pbuf  # the client's PROXY header, byte for byte
            passthrough = proxyproto.parse(conn.pbuf)  # (complete: proxy_header() saw to it)
        peer, local = conn.peer[:2], conn.local[:2]
        if mode == "write-ip":
            return proxyproto.write_ip(peer[0])
        if mode == "write-proxy-v1":
            return proxyproto.v1(peer, local)
        version, cipher, sni, alpn, resumed = conn.tls_info or (None, None, None, None, False)
        if not self.proxy_tlv:
            version = cipher = None
        client = None if ident is None else ident.for_proxy(on_connection=not resumed)
        return proxyproto.v2(peer, local, alpn=alpn.encode() if alpn else None,
                             authority=sni if self.proxy_authority else None,
                             ssl_version=version, ssl_cipher=cipher, client=client,
                             cert=self.cert_tlv, identity_tlvs=self.identity_tlvs,
                             passthrough=passthrough)

    def closed(self, conn: Connection, why: str, level: int, up: int, down: int) -> None:
        """Called by each connection once, when it is closed, with the bytes delivered each
        way (a serving Poller does this in C, unless the worker watches closes)."""
        stats = self.stats
        stats.bytes_up += up
        stats.bytes_down += down
        ident = self.identities.pop(conn, None) if self.verifying else None
        if log.level >= level:
            version, cipher, sni, alpn, resumed = conn.tls_info or ("-", "-", None, None, False)
            # The connection log line, formatted directly (a generic key=value writer cost twice
            # as much): only the SNI name and the reason can hold spaces or client-chosen bytes.
            log.line(level, f"op=\"connection closed\" client={self.client_text(conn)} "
                     f"sni={quoted(sni) if sni else '-'} tls={version or '-'} "
                     f"cipher={cipher or '-'} alpn={alpn or '-'} resumed={int(resumed)} "
                     f"up={up} down={down} "
                     f"duration={time.monotonic() - conn.started:.3f} reason={quoted(why)}"
                     + (identity_fields(ident) if self.verifying else ""))
        if self.limiter and conn.tls_info:
            self.limiter.record(conn.peer[0], up == 0, time.monotonic())
        if self.hs_owed and conn in self.hs_owed:
            self.hs_owed.discard(conn)
            if conn.tls_info and not conn.tls_info[4]:
                self.hs_limiter.charge(conn.peer[0], time.monotonic())
        self.gone(conn)


def _unmapped(host: str) -> str:
    """An IPv4-mapped IPv6 address as the IPv4 address it is."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def identity_fields(ident: Identity | None) -> str:
    """The client certificate's fields of the connection log line."""
    if ident is None:
        return " client_cert=-"
    uri = ",".join(ident.san_uris)
    return (f" client_cert={quoted(ident.subject)} client_uri={quoted(uri) if uri else '-'} "
            f"client_sha256={ident.sha256.hex()} client_serial={ident.serial:x}")


def addr_text(sa: tuple) -> str:
    """host:port, [host]:port for IPv6, as the connection log writes a client."""
    host, port = _unmapped(sa[0]), sa[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
