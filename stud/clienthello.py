"""What a TLS ClientHello offers for resumption, read from its first bytes (a peek at the
socket, before OpenSSL sees them): the session ID, the versions, and whether a ticket comes
with it. Pure functions, no I/O; RFC 8446 §4.1.2 and RFC 5246 §7.4.1.2 give the layout.
"""

from __future__ import annotations

from dataclasses import dataclass

RECORD_HANDSHAKE = 0x16
CLIENT_HELLO = 1
EXT_SESSION_TICKET = 0x0023
EXT_SUPPORTED_VERSIONS = 0x002B
EXT_PRE_SHARED_KEY = 0x0029
TLS13 = 0x0304
MAX_SESSION_ID = 32
RECORD_HEADER = 5
MAX_PLAINTEXT = 16384  # a ClientHello's record is plaintext


@dataclass(frozen=True)
class Hello:
    session_id: bytes
    versions: tuple[int, ...]  # supported_versions, else the legacy client_version alone
    ticket: bool               # a non-empty session_ticket extension: resumes by ticket
    psk: bool = False          # a pre_shared_key extension: TLS 1.3 resumption


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("short")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def num(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.num(length_bytes))


def record_short(data: bytes) -> int:
    """The bytes the first record needs in all when data begins a TLS handshake record that
    is not all there yet; 0 when it is whole, or is not a handshake record (nothing to wait
    for: OpenSSL refuses it at once)."""
    if not data or data[0] != RECORD_HANDSHAKE:
        return 0
    if len(data) < RECORD_HEADER:
        return RECORD_HEADER
    need = RECORD_HEADER + int.from_bytes(data[3:5], "big")
    return need if len(data) < need <= RECORD_HEADER + MAX_PLAINTEXT else 0


def parse(data: bytes) -> Hello | None:
    """The ClientHello at the start of data, or None when data does not hold a whole one in
    its first record (not TLS, cut short, or spread over several records)."""
    try:
        rec = _Reader(data)
        if rec.num(1) != RECORD_HANDSHAKE:
            return None
        rec.take(2)
        body = _Reader(rec.vector(2))
        if body.num(1) != CLIENT_HELLO:
            return None
        hello = _Reader(body.take(body.num(3)))
        legacy = hello.num(2)
        hello.take(32)
        session_id = hello.vector(1)
        hello.vector(2)
        hello.vector(1)
        exts = _Reader(hello.vector(2)) if hello.pos < len(hello.data) else _Reader(b"")
        versions, ticket, psk = (legacy,), False, False
        while exts.pos < len(exts.data):
            kind, value = exts.num(2), exts.vector(2)
            if kind == EXT_SUPPORTED_VERSIONS:
                listed = _Reader(value).vector(1)
                versions = tuple(int.from_bytes(listed[i:i + 2], "big")
                                 for i in range(0, len(listed) - 1, 2))
            elif kind == EXT_SESSION_TICKET:
                ticket = bool(value)
            elif kind == EXT_PRE_SHARED_KEY:
                psk = True
    except ValueError:
        return None
    if len(session_id) > MAX_SESSION_ID:
        return None
    return Hello(session_id, versions, ticket, psk)


def resumes_by_id(hello: Hello | None, server_tls13: bool) -> bytes | None:
    """The session ID this hello asks to resume, when that is how it will resume: not by a
    ticket, and not in TLS 1.3 (where the ID is a random legacy field)."""
    if hello is None or not hello.session_id or hello.ticket:
        return None
    if server_tls13 and TLS13 in hello.versions:
        return None
    return hello.session_id


def offers_resumption(hello: Hello | None, server_tls13: bool) -> bool:
    """Whether this hello may resume (a ticket, a TLS 1.3 PSK, or a TLS 1.2 session ID):
    if so its handshake may cost little; if not, it is a full one for sure."""
    if hello is None:
        return False
    return hello.ticket or (hello.psk and server_tls13) or \
        resumes_by_id(hello, server_tls13) is not None
