"""The resuming client (Python `ssl`): one connection that offers a session, a client that
reconnects over one or more instances with its last session (resume, fleet), and a paced
series of connections (fleet's CPU per resumption)."""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field

from .common import HOST, RESUME_MODES

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
# mode -> (TLS version, no tickets: the session has an ID only)
MODES = {
    "tls13_ticket": (ssl.TLSVersion.TLSv1_3, False),
    "tls12_ticket": (ssl.TLSVersion.TLSv1_2, False),
    "tls12_session_id": (ssl.TLSVersion.TLSv1_2, True),
}


def client_ctx(mode: str) -> ssl.SSLContext:
    version, no_ticket = MODES[mode]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    if no_ticket:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def connect(ctx: ssl.SSLContext, port: int, session: ssl.SSLSession | None
            ) -> tuple[ssl.SSLSession | None, bool]:
    """One connection offering `session`, one request read to EOF (TLS 1.3 tickets come
    after the handshake): (the session to offer next, whether this one resumed). Raises
    OSError or ValueError."""
    with socket.create_connection((HOST, port), timeout=5) as raw:
        # (else a resumed handshake's last flight and the request wait for a delayed ACK)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            s.sendall(REQUEST)
            while s.recv(4096):
                pass
            return s.session, s.session_reused


def resume_test(ports: list[int], reconnects: int) -> dict[str, dict]:
    """Fraction of reconnects resumed: TLS 1.3 tickets, TLS 1.2 tickets, TLS 1.2 session IDs.

    Each reconnect offers the session of the previous connection and goes to the next of
    `ports` in turn (one port: the same instance; with 2 workers the kernel spreads the
    connections over both).
    """
    out = {}
    for name in RESUME_MODES:
        resumed, errors = _reconnect(client_ctx(name), ports, reconnects)
        out[name] = {
            "reconnects": reconnects,
            "resumed": resumed,
            "errors": errors,
            "fraction": resumed / reconnects if reconnects else None,
        }
    return out


def _reconnect(ctx: ssl.SSLContext, ports: list[int], reconnects: int) -> tuple[int, int]:
    """(resumed, errors) of one connection and `reconnects` more, each offering the
    previous one's session."""
    session = None
    resumed = errors = 0
    for i in range(reconnects + 1):
        try:
            session, reused = connect(ctx, ports[i % len(ports)], session)
            resumed += int(reused and i > 0)
        except (OSError, ValueError):
            errors += 1
    return resumed, errors


@dataclass
class Paced:
    """A series of connections at a steady rate: what came of them."""

    events: int = 0  # connections that completed
    resumed: int = 0
    errors: int = 0
    duration: float = 0.0
    sessions: list[ssl.SSLSession] = field(default_factory=list)  # the sessions they got

    def result(self) -> dict:
        """For measure(): events, value (connections/s), ..."""
        return {"tool": "python ssl (paced)", "events": self.events, "resumed": self.resumed,
                "errors": self.errors, "duration": self.duration,
                "value": self.events / self.duration if self.duration else 0.0}


def paced(ctx: ssl.SSLContext, port: int, offers: list[ssl.SSLSession | None],
          rate: float | None) -> Paced:
    """One connection per entry of `offers` (None: a new session), started `rate` per second
    (None: one after the other, as fast as they go)."""
    out = Paced()
    t0 = time.monotonic()
    for i, offer in enumerate(offers):
        if rate:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        try:
            session, reused = connect(ctx, port, offer)
        except (OSError, ValueError):
            out.errors += 1
            continue
        out.events += 1
        out.resumed += int(reused)
        if session is not None:
            out.sessions.append(session)
    out.duration = time.monotonic() - t0
    return out
