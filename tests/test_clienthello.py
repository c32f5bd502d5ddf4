"""stud.clienthello: the session ID, versions and ticket of a ClientHello, from hand-built
records (RFC 8446 §4.1.2 layout) and from real ones (Python's ssl, OpenSSL underneath); and
stud.sessionrecord: what the session store holds opens only under its key and its ID."""

from __future__ import annotations

import ssl
import struct

import pytest
from helpers import client_ctx, client_hello, server_ctx, tls_pair
from hypothesis import given
from hypothesis import strategies as st

from stud import clienthello, sessionrecord, ticketkeys
from stud.clienthello import Hello


def ext(kind: int, body: bytes) -> bytes:
    return struct.pack(">HH", kind, len(body)) + body


def hello_record(sid: bytes, exts: bytes | None = b"", legacy: int = 0x0303) -> bytes:
    body = struct.pack(">H", legacy) + bytes(32) + bytes([len(sid)]) + sid
    body += b"\x00\x02\x13\x01" + b"\x01\x00"
    if exts is not None:
        body += struct.pack(">H", len(exts)) + exts
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs


SID = bytes(range(32))
VERSIONS = ext(0x002B, b"\x04\x03\x04\x03\x03")  # TLS 1.3, TLS 1.2


@pytest.mark.parametrize("record, expected", [
    (hello_record(SID), Hello(SID, (0x0303,), False)),
    (hello_record(SID, None), Hello(SID, (0x0303,), False)),  # no extensions at all
    (hello_record(b"", VERSIONS), Hello(b"", (0x0304, 0x0303), False)),
    (hello_record(SID, ext(0x0023, b"")), Hello(SID, (0x0303,), False)),  # asks for one
    (hello_record(SID, ext(0x0023, b"T" * 100) + VERSIONS), Hello(SID, (0x0304, 0x0303), True)),
])
def test_parse_vectors(record, expected):
    assert clienthello.parse(record) == expected


@pytest.mark.parametrize("record", [
    b"", b"GET / HTTP/1.1\r\n", hello_record(SID)[:-1], hello_record(SID)[:40],
    b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
    hello_record(bytes(33)),  # an ID longer than TLS allows
])
def test_not_a_whole_client_hello_is_none(record):
    assert clienthello.parse(record) is None


@pytest.mark.parametrize("data, need", [
    (b"", 0),                                   # nothing yet: no record to wait for
    (b"\x16", 5),                               # a record header begun
    (b"\x16\x03\x01\x02", 5),
    (b"\x16\x03\x01\x02\x00", 517),             # a 512-byte record announced
    (b"\x16\x03\x01\x02\x00" + b"x" * 511, 517),
    (b"\x16\x03\x01\x02\x00" + b"x" * 512, 0),  # all there
    (b"\x16\x03\x01\x40\x01", 0),               # over 16384: not a ClientHello, no wait
    (b"\x17\x03\x03\x00\x10", 0),               # not a handshake record
    (b"GET / HTTP/1.1\r\n", 0),
])
def test_record_short(data, need):
    assert clienthello.record_short(data) == need


@given(st.binary(max_size=300))
def test_record_short_of_a_real_hello_only_before_its_end(data):
    hello = client_hello()
    for cut in (1, 4, 5, 40, len(hello) - 1):
        assert clienthello.record_short(hello[:cut]) > cut
    assert clienthello.record_short(hello) == 0
    assert clienthello.record_short(data) == 0 or clienthello.record_short(data) > len(data)


@given(st.binary(max_size=300))
def test_parse_never_raises(data):
    clienthello.parse(data)


@given(st.binary(min_size=1, max_size=32), st.booleans(), st.booleans(), st.booleans())
def test_resumes_by_id_only_where_the_id_is_how_it_resumes(sid, tls13, ticket, server13):
    exts = (VERSIONS if tls13 else b"") + (ext(0x0023, b"t") if ticket else b"")
    got = clienthello.resumes_by_id(clienthello.parse(hello_record(sid, exts)), server13)
    assert got == (None if ticket or (tls13 and server13) else sid)


def real_hello(ctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> bytes:
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost", session=session)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_real_hellos(pem):
    """OpenSSL's own: a TLS 1.2 client without tickets offers its session's ID; a TLS 1.3
    client's 32 random bytes are not one; a TLS 1.2 client with a ticket resumes by it."""
    sctx = server_ctx(pem)
    sctx.maximum_version = ssl.TLSVersion.TLSv1_2
    for tickets in (False, True):
        cctx = client_ctx(maximum_version=ssl.TLSVersion.TLSv1_2)
        if not tickets:
            cctx.options |= ssl.OP_NO_TICKET
        s, c = tls_pair(sctx, cctx)
        with s, c:
            session = c.session
        hello = clienthello.parse(real_hello(cctx, session))
        assert hello.ticket == tickets
        if not tickets:  # (with one, the ID is random: RFC 5077 §3.4)
            assert hello.session_id == session.id
        assert clienthello.resumes_by_id(hello, True) == (None if tickets else session.id)
    fresh13 = clienthello.parse(real_hello(client_ctx()))
    assert len(fresh13.session_id) == 32 and clienthello.TLS13 in fresh13.versions
    assert clienthello.resumes_by_id(fresh13, True) is None
    assert clienthello.resumes_by_id(fresh13, False) == fresh13.session_id


# -- records -------------------------------------------------------------------------------
def test_record_opens_only_under_its_key_and_id():
    key, other = ticketkeys.new_key(), ticketkeys.new_key()
    sealing = sessionrecord.sealing_key(key)
    der = b"0\x82 a DER session with a master secret"
    record = sessionrecord.seal(key, sealing, SID, der)
    assert der not in record and sessionrecord.name_of(record) == key.name
    assert sessionrecord.open_record(sealing, SID, record) == der
    assert sessionrecord.open_record(sessionrecord.sealing_key(other), SID, record) is None
    assert sessionrecord.open_record(sealing, SID[::-1], record) is None  # copied under another ID
    flipped = record[:-1] + bytes([record[-1] ^ 1])
    assert sessionrecord.open_record(sealing, SID, flipped) is None
    assert sessionrecord.open_record(sealing, SID, record[:30]) is None


def test_sealing_key_is_not_the_ticket_key_and_depends_on_all_of_it():
    key = ticketkeys.new_key(80, bytes(range(80)))
    sealing = sessionrecord.sealing_key(key)
    assert sealing not in (key.aes, key.hmac) and len(sealing) == 32
    other = ticketkeys.new_key(80, bytes(range(79)) + b"\xff")
    assert sessionrecord.sealing_key(other) != sealing
    assert sessionrecord.store_key(b"\x01\xff") == b"stud:session:01ff"
