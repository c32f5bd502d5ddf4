"""The connection policy: what happens at each step of a connection's life that is not moving
bytes. It owns the settings connections read (contexts, backend, header mode) and the
counters, and implements relay.Hooks for Relays and stud._flow.Conns alike: handshake and
close accounting, the client-address header, PROXY header parsing, timeouts, the connection
log line and the empty-connection limiter's record.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable

from stud import proxyproto
from stud.config import Config
from stud.log import CONN, DEBUG, log, quoted
from stud.metrics import Stats
from stud.ratelimit import EmptyConnLimiter
from stud.relay import Conn, Relay, handshake_error, reason, short_reason

Connection = Relay | Conn if Conn else Relay


class ConnPolicy:
    """relay.Hooks, for every connection of a worker."""

    def __init__(self, cfg: Config, client_context: ssl.SSLContext | None,
                 backend: tuple[int, tuple | str], gone: Callable[[Connection], None]) -> None:
        self.client_context = client_context
        self.backend = backend
        self.mode = cfg.client_addr_mode
        self.proxy_tlv, self.proxy_authority = cfg.proxy_tlv, cfg.proxy_authority
        self.client_mode = cfg.client
        self.limiter = (EmptyConnLimiter(cfg.empty_conn_limit, cfg.empty_conn_window)
                        if cfg.empty_conn_limit else None)
        self.stats = Stats()
        self.gone = gone  # the worker's: after a close is accounted for

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
        # Scanners and broken clients fail here all day: below the default log level.
        self.stats.handshakes_failed[short_reason(err)] += 1
        conn.close(f"handshake failed: {reason(err)}", DEBUG)

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
        mode = self.mode
        if mode is None:
            return b""
        if mode == "proxy-proxy":
            return conn.pbuf  # the client's PROXY header, byte for byte
        peer, local = conn.peer[:2], conn.local[:2]
        if mode == "write-ip":
            return proxyproto.write_ip(peer[0])
        if mode == "write-proxy-v1":
            return proxyproto.v1(peer, local)
        version, cipher, sni, alpn, _ = conn.tls_info or (None, None, None, None, None)
        if not self.proxy_tlv:
            version = cipher = None
        return proxyproto.v2(peer, local, alpn=alpn.encode() if alpn else None,
                             authority=sni if self.proxy_authority else None,
                             ssl_version=version, ssl_cipher=cipher)

    def closed(self, conn: Connection, why: str, level: int, up: int, down: int) -> None:
        """Called by each connection once, when it is closed, with the bytes delivered each
        way (a serving Poller does this in C, unless the worker watches closes)."""
        stats = self.stats
        stats.bytes_up += up
        stats.bytes_down += down
        if log.level >= level:
            version, cipher, sni, alpn, resumed = conn.tls_info or ("-", "-", None, None, False)
            # The connection log line, formatted directly (a generic key=value writer cost twice
            # as much): only the SNI name and the reason can hold spaces or client-chosen bytes.
            log.line(level, f"op=\"connection closed\" client={addr_text(conn.peer)} "
                     f"sni={quoted(sni) if sni else '-'} tls={version or '-'} "
                     f"cipher={cipher or '-'} alpn={alpn or '-'} resumed={int(resumed)} "
                     f"up={up} down={down} "
                     f"duration={time.monotonic() - conn.started:.3f} reason={quoted(why)}")
        if self.limiter and conn.tls_info:
            self.limiter.record(conn.peer[0], up == 0, time.monotonic())
        self.gone(conn)


def addr_text(sa: tuple) -> str:
    """host:port, [host]:port for IPv6, as the connection log writes a client."""
    host, port = sa[0], sa[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
