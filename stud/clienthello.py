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


def _vector(data: bytes, pos: int, length_bytes: int) -> tuple[int, int]:
    """The (start, end) of the vector whose length prefix is at pos; ValueError past data."""
    start = pos + length_bytes
    end = start + int.from_bytes(data[pos:start], "big")
    if start > len(data) or end > len(data):
        raise ValueError("short")
    return start, end


def parse(data: bytes) -> Hello | None:
    """The ClientHello at the start of data, or None when data does not hold a whole one in
    its first record (not TLS, cut short, or spread over several records)."""
    # (offsets, not a reader object: the handshake limiter parses every new connection's)
    try:
        if len(data) < RECORD_HEADER or data[0] != RECORD_HANDSHAKE:
            return None
        _, rec_end = _vector(data, 3, 2)
        if rec_end < RECORD_HEADER + 4 or data[RECORD_HEADER] != CLIENT_HELLO:
            return None
        start, end = _vector(data, RECORD_HEADER + 1, 3)
        if end > rec_end:
            return None
        data = data[start:end]
        legacy = int.from_bytes(data[0:2], "big")
        sid_start, pos = _vector(data, 2 + 32, 1)
        session_id = data[sid_start:pos]
        _, pos = _vector(data, pos, 2)  # cipher suites
        _, pos = _vector(data, pos, 1)  # compression methods
        versions, ticket, psk = (legacy,), False, False
        if pos < len(data):
            pos, exts_end = _vector(data, pos, 2)
            while pos < exts_end:
                if pos + 4 > exts_end:
                    return None
                kind = data[pos] << 8 | data[pos + 1]
                value = pos + 4
                pos = value + (data[pos + 2] << 8 | data[pos + 3])
                if pos > exts_end:
                    return None
                if kind == EXT_SUPPORTED_VERSIONS:
                    listed, listed_end = _vector(data, value, 1)
                    if listed_end > pos:
                        return None
                    versions = tuple(int.from_bytes(data[i:i + 2], "big")
                                     for i in range(listed, listed_end - 1, 2))
                elif kind == EXT_SESSION_TICKET:
                    ticket = pos > value
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
