"""Tests for stud.proxyproto: byte-exact builders and an incremental, fuzz-safe parser."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stud.proxyproto import MAX_V2_LENGTH, Header, ProxyError, parse, v1, v2, write_ip

SIG = bytes.fromhex("0d0a0d0a000d0a515549540a")
V2_LOCAL = SIG + bytes.fromhex("20 00 0000")  # (health checks: stud reads them, never sends)
V4 = (("192.0.2.1", 56324), ("198.51.100.7", 443))
V6 = (("2001:db8::1", 1234), ("2001:db8::2", 443))

# --------------------------------------------------------------------------- byte vectors


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("127.0.0.1", "02 7f000001"),
        ("192.0.2.255", "02 c00002ff"),
        ("::1", "0a 00000000000000000000000000000001"),
        ("2001:db8::42", "0a 20010db8000000000000000000000042"),
        ("::ffff:127.0.0.1", "0a 00000000000000000000ffff7f000001"),  # mapped stays family 10
        ("fe80::1%eth0", "0a fe800000000000000000000000000001"),  # scope id dropped
    ],
)
def test_write_ip(ip, expected):
    assert write_ip(ip) == bytes.fromhex(expected)


def test_write_ip_rejects_non_addresses():
    for bad in ("", "localhost", "1.2.3", "::g"):
        with pytest.raises(ProxyError):
            write_ip(bad)


@pytest.mark.parametrize(
    ("src", "dst", "expected"),
    [
        (*V4, b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n"),
        (*V6, b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 443\r\n"),
        # non-canonical input comes out canonical
        (("2001:0DB8:0:0:0:0:0:1", 0), ("::0:1", 65535), b"PROXY TCP6 2001:db8::1 ::1 0 65535\r\n"),
        # dual-stack listener: both mapped -> plain TCP4
        (
            ("::ffff:192.0.2.1", 1),
            ("::ffff:198.51.100.7", 2),
            b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\r\n",
        ),
        # mixed families -> TCP6 with the IPv4 side mapped, in dotted form
        (("192.0.2.1", 1), ("2001:db8::2", 2), b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 1 2\r\n"),
        (
            ("2001:db8::1", 1),
            ("::ffff:198.51.100.7", 2),
            b"PROXY TCP6 2001:db8::1 ::ffff:198.51.100.7 1 2\r\n",
        ),
    ],
)
def test_v1_vectors(src, dst, expected):
    assert v1(src, dst) == expected


def test_scope_id_never_reaches_the_wire():
    assert v1(("fe80::1%eth0", 1), ("fe80::2%2", 2)) == b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n"
    assert v2(("fe80::1%eth0", 1), ("fe80::2", 2)) == v2(("fe80::1", 1), ("fe80::2", 2))


def test_builders_reject_bad_ports_and_addresses():
    for src in (("192.0.2.1", -1), ("192.0.2.1", 65536), ("192.0.2.1", "80"), ("nope", 1)):
        with pytest.raises(ProxyError):
            v1(src, V4[1])
        with pytest.raises(ProxyError):
            v2(src, V4[1])


V2_V4_PLAIN = (
    "0d0a0d0a000d0a515549540a 21 11 000c"  # signature, v2|PROXY, TCP over IPv4, length 12
    " c0000201 c6336407 dc04 01bb"  # 192.0.2.1, 198.51.100.7, 56324, 443
)
V2_V6_PLAIN = (
    "0d0a0d0a000d0a515549540a 21 21 0024"  # TCP over IPv6, length 36
    " 20010db8000000000000000000000001 20010db8000000000000000000000002 04d2 01bb"
)
V2_V4_TLVS = (
    "0d0a0d0a000d0a515549540a 21 11 004a"  # length 12 + 5 + 14 + 43 = 74
    " c0000201 c6336407 dc04 01bb"
    " 01 0002 6832"  # ALPN "h2"
    " 02 000b 6578616d706c652e636f6d"  # AUTHORITY "example.com"
    " 20 0028 01 00000001"  # SSL, 40 bytes: client=PP2_CLIENT_SSL, verify=1
    " 21 0007 544c5376312e33"  # SSL_VERSION "TLSv1.3"
    " 23 0016 544c535f4145535f3235365f47434d5f534841333834"  # SSL_CIPHER (22 bytes)
)
V2_V6_SSL = (
    "0d0a0d0a000d0a515549540a 21 21 0036"  # length 36 + 18 = 54
    " 20010db8000000000000000000000001 20010db8000000000000000000000002 04d2 01bb"
    " 20 000f 01 00000001 21 0007 544c5376312e33"  # SSL with only SSL_VERSION "TLSv1.3"
)


def test_v2_vectors():
    assert v2(*V4) == bytes.fromhex(V2_V4_PLAIN)
    assert v2(*V6) == bytes.fromhex(V2_V6_PLAIN)
    full = v2(
        *V4,
        alpn=b"h2",
        authority="example.com",
        ssl_version="TLSv1.3",
        ssl_cipher="TLS_AES_256_GCM_SHA384",
    )
    assert full == bytes.fromhex(V2_V4_TLVS)
    assert v2(*V6, ssl_version="TLSv1.3") == bytes.fromhex(V2_V6_SSL)


def test_v2_families_and_authority():
    mapped = v2(("::ffff:192.0.2.1", 56324), ("::ffff:198.51.100.7", 443))
    assert mapped == bytes.fromhex(V2_V4_PLAIN)
    mixed = v2(("192.0.2.1", 1), ("2001:db8::2", 2))
    assert mixed[13] == 0x21
    assert mixed[16:32] == ipaddress.IPv6Address("::ffff:192.0.2.1").packed
    # a non-ASCII name goes out in its IDNA A-label form
    idn = v2(*V4, authority="bücher.example")
    assert idn[28:] == b"\x02\x00\x15xn--bcher-kva.example"
    # empty optional values add nothing
    assert v2(*V4, alpn=b"", authority="") == bytes.fromhex(V2_V4_PLAIN)


def test_v2_local():
    assert parse(V2_LOCAL) == Header(2, 16, "LOCAL", "UNSPEC", None, None, ())


def test_v2_too_long_to_build():
    with pytest.raises(ProxyError):
        v2(*V4, authority="a" * MAX_V2_LENGTH)


# ------------------------------------------------------------------------ parsing samples


def _v2_raw(cmd: int, fam: int, block: bytes) -> bytes:
    return SIG + bytes([cmd, fam]) + len(block).to_bytes(2, "big") + block


UNIX_BLOCK = b"/run/a.sock".ljust(108, b"\0") + b"/run/b.sock".ljust(108, b"\0")

# (wire bytes, expected Header)
SAMPLES = [
    (
        b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n",
        Header(1, 45, "PROXY", "TCP4", ("192.0.2.1", 56324), ("198.51.100.7", 443), ()),
    ),
    (
        b"PROXY TCP6 2001:DB8:0::1 ::ffff:192.0.2.1 0 65535\r\n",
        Header(1, 51, "PROXY", "TCP6", ("2001:db8::1", 0), ("::ffff:192.0.2.1", 65535), ()),
    ),
    (b"PROXY UNKNOWN\r\n", Header(1, 15, "PROXY", "UNKNOWN", None, None, ())),
    (
        b"PROXY UNKNOWN ffff:f...f:ffff 0 0 ignored\r\n",
        Header(1, 43, "PROXY", "UNKNOWN", None, None, ()),
    ),
    (
        bytes.fromhex(V2_V4_PLAIN),
        Header(2, 28, "PROXY", "TCP4", ("192.0.2.1", 56324), ("198.51.100.7", 443), ()),
    ),
    (
        bytes.fromhex(V2_V4_TLVS),
        Header(
            2,
            90,
            "PROXY",
            "TCP4",
            ("192.0.2.1", 56324),
            ("198.51.100.7", 443),
            (
                (0x01, b"h2"),
                (0x02, b"example.com"),
                (0x20, bytes.fromhex(V2_V4_TLVS.split(" 20 0028 ")[1])),
            ),
        ),
    ),
    (
        bytes.fromhex(V2_V6_SSL),
        Header(
            2,
            70,
            "PROXY",
            "TCP6",
            ("2001:db8::1", 1234),
            ("2001:db8::2", 443),
            ((0x20, bytes.fromhex("01 00000001 21 0007 544c5376312e33")),),
        ),
    ),
    (V2_LOCAL, Header(2, 16, "LOCAL", "UNSPEC", None, None, ())),
    # LOCAL ignores the block, even one too short for its family
    (_v2_raw(0x20, 0x11, b"\x01\x02"), Header(2, 18, "LOCAL", "TCP4", None, None, ())),
    (
        _v2_raw(0x21, 0x12, bytes(range(12)) + b"\x04\x00\x00"),
        Header(2, 31, "PROXY", "UDP4", ("0.1.2.3", 0x0809), ("4.5.6.7", 0x0A0B), ((4, b""),)),
    ),
    (
        _v2_raw(
            0x21,
            0x22,
            bytes.fromhex("00000000000000000000ffff7f000001" + "00" * 15 + "01 0001 0002"),
        ),
        Header(2, 52, "PROXY", "UDP6", ("::ffff:127.0.0.1", 1), ("::1", 2), ()),
    ),
    (_v2_raw(0x21, 0x31, UNIX_BLOCK), Header(2, 232, "PROXY", "UNIX", None, None, ())),
    (
        _v2_raw(0x21, 0x00, b"\xe0\x00\x01x"),
        Header(2, 20, "PROXY", "UNSPEC", None, None, ((0xE0, b"x"),)),
    ),
]


@pytest.mark.parametrize(("wire", "expected"), SAMPLES)
def test_parse_samples_and_every_prefix(wire, expected):
    for i in range(len(wire)):
        assert parse(wire[:i]) is None, i
    assert parse(wire) == expected
    # bytes after the header belong to the stream, not to the header
    for tail in (b"\x16\x03\x01\x02\x00", b"GET / HTTP/1.1\r\n", wire):
        assert parse(wire + tail) == expected
        assert parse(bytearray(wire + tail)) == expected
        assert parse(memoryview(wire + tail)) == expected


def test_parse_largest_v2_header():
    block = bytes(12) + b"\xee" + (MAX_V2_LENGTH - 16 - 15).to_bytes(2, "big")
    block += b"x" * (MAX_V2_LENGTH - 16 - 15)
    wire = _v2_raw(0x21, 0x11, block)
    assert len(wire) == MAX_V2_LENGTH
    assert parse(wire + bytes(10_000_000)).length == MAX_V2_LENGTH


# one TLV filling the block so that the header is exactly one byte over the limit
TOO_LONG_BLOCK = bytes(12) + b"\xee" + (MAX_V2_LENGTH - 30).to_bytes(2, "big")
TOO_LONG_BLOCK += bytes(MAX_V2_LENGTH - 30)

# name -> (wire bytes, fragment of the error message proving it failed for that reason)
INVALID = {
    "garbage": (b"hello world\r\n", "expected a PROXY header"),
    "tls clienthello": (bytes.fromhex("160301020001000200"), "TLS handshake"),
    "http": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "expected a PROXY header"),
    "lowercase": (b"proxy TCP4 192.0.2.1 198.51.100.7 1 2\r\n", "expected a PROXY header"),
    "bare lf": (b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\n", "bare LF"),
    "cr not followed by lf": (
        b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\r\r\n",
        "bad destination port",
    ),
    "unknown family": (b"PROXY TCP5 192.0.2.1 198.51.100.7 1 2\r\n", "bad protocol"),
    "double space": (b"PROXY TCP4  192.0.2.1 198.51.100.7 1 2\r\n", "bad source address ''"),
    "trailing space": (b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 \r\n", "too many fields"),
    "tab": (b"PROXY\tTCP4 192.0.2.1 198.51.100.7 1 2\r\n", "expected a PROXY header"),
    "leading zero address": (
        b"PROXY TCP4 192.0.2.010 198.51.100.7 1 2\r\n",
        "bad source address '192.0.2.010'",
    ),
    "octet 256": (b"PROXY TCP4 192.0.2.256 198.51.100.7 1 2\r\n", "bad source address"),
    "short address": (b"PROXY TCP4 1.2.3 198.51.100.7 1 2\r\n", "bad source address '1.2.3'"),
    "ipv6 in tcp4": (b"PROXY TCP4 ::1 198.51.100.7 1 2\r\n", "bad source address"),
    "ipv4 in tcp6": (b"PROXY TCP6 192.0.2.1 ::1 1 2\r\n", "bad source address"),
    "bad ipv6": (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "bad source address"),
    "ipv6 scope": (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "bad source address"),
    "leading zero port": (b"PROXY TCP4 192.0.2.1 198.51.100.7 01 2\r\n", "bad source port '01'"),
    "port 65536": (
        b"PROXY TCP4 192.0.2.1 198.51.100.7 1 65536\r\n",
        "bad destination port '65536'",
    ),
    "signed port": (b"PROXY TCP4 192.0.2.1 198.51.100.7 +1 2\r\n", "bad source port"),
    "empty port": (b"PROXY TCP4 192.0.2.1 198.51.100.7  2\r\n", "bad source port ''"),
    "empty last port": (b"PROXY TCP4 192.0.2.1 198.51.100.7 1 \r\n", "bad destination port ''"),
    "missing port": (b"PROXY TCP4 192.0.2.1 198.51.100.7 1\r\n", "missing fields"),
    "extra field": (b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 3\r\n", "too many fields"),
    "no crlf in 107": (b"PROXY UNKNOWN " + b"x" * 93, "no CRLF"),
    "108 byte line": (b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n", "no CRLF"),
    "v2 version 1": (SIG + bytes.fromhex("11 11 000c") + bytes(12), "bad version 1"),
    "v2 version 3": (SIG + bytes.fromhex("31 11 000c") + bytes(12), "bad version 3"),
    "v2 command 2": (SIG + bytes.fromhex("22 11 000c") + bytes(12), "bad command 2"),
    "v2 family 0x13": (SIG + bytes.fromhex("21 13 000c") + bytes(12), "bad family"),
    "v2 family 0x41": (SIG + bytes.fromhex("21 41 000c") + bytes(12), "bad family"),
    "v2 family 0x01": (SIG + bytes.fromhex("21 01 000c") + bytes(12), "bad family"),
    "v2 short inet": (SIG + bytes.fromhex("21 11 000b") + bytes(11), "too short for TCP4"),
    "v2 short inet6": (SIG + bytes.fromhex("21 21 0023") + bytes(35), "too short for TCP6"),
    "v2 short unix": (SIG + bytes.fromhex("21 31 00d7") + bytes(215), "too short for UNIX"),
    "v2 truncated tlv header": (
        SIG + bytes.fromhex("21 11 000e") + bytes(12) + b"\x01\x00",
        "truncated TLV",
    ),
    "v2 truncated tlv value": (
        SIG + bytes.fromhex("21 11 0011") + bytes(12) + b"\x01\x00\x05ab",
        "overruns",
    ),
    "v2 tlv after full tlv": (
        SIG + bytes.fromhex("21 11 0010") + bytes(12) + b"\x04\x00\x00\x04",
        "truncated TLV",
    ),
    "v2 too long": (SIG + bytes.fromhex("21 11 ffff") + bytes(0xFFFF), "too long"),
    "v2 one byte too long": (_v2_raw(0x21, 0x11, TOO_LONG_BLOCK), "header too long (4113 bytes)"),
    "bad signature": (
        SIG[:11] + b"\x0b" + bytes.fromhex("21 11 000c") + bytes(12),
        "expected a PROXY header",
    ),
}


@pytest.mark.parametrize(("wire", "reason"), INVALID.values(), ids=INVALID.keys())
def test_parse_invalid(wire, reason):
    with pytest.raises(ProxyError) as info:
        parse(wire)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


EARLY = {
    "tls": b"\x16",
    "http": b"G",
    "v1 family": b"PROXY TCP5",
    "v1 family prefix": b"PROXY TX",
    "v1 octet": b"PROXY TCP4 192.0.2.256",
    "v1 leading zero": b"PROXY TCP4 192.0.2.01",
    "v1 address char": b"PROXY TCP4 192.0.2.1x",
    "v1 port": b"PROXY TCP4 192.0.2.1 198.51.100.7 65536",
    "v1 cr too soon": b"PROXY TCP4 192.0.2.1\r",
    "v2 signature": SIG[:5] + b"X",
    "v2 version": SIG + b"\x11",
    "v2 command": SIG + b"\x2f",
    "v2 family": SIG + b"\x21\x23",
    "v2 short length": SIG + b"\x21\x11\x00\x0b",
    "v2 too long": SIG + b"\x21\x11\xff\xff",
    "v2 one byte too long": SIG + b"\x21\x11" + (MAX_V2_LENGTH - 15).to_bytes(2, "big"),
    "v2 tlv overrun": SIG + b"\x21\x11\x00\x12" + bytes(12) + b"\x01\x00\x05",
    "v2 tlv leaves 2 bytes": SIG + b"\x21\x11\x00\x16" + bytes(12) + b"\x01\x00\x05ab",
    "v2 tlv header cut": SIG + b"\x21\x11\x00\x10" + bytes(12) + b"\x01\x00\x00",
}


@pytest.mark.parametrize("wire", EARLY.values(), ids=EARLY.keys())
def test_parse_rejects_without_waiting(wire):
    with pytest.raises(ProxyError):
        parse(wire)


# ---------------------------------------------------------------------------- round trips

ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
ports = st.integers(0, 65535)
endpoints = st.tuples(ips, ports)


def _expected_pair(src: str, dst: str):
    """What the header should carry: unmapped IPv4 if both sides are IPv4, else both IPv6."""
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    a = a.ipv4_mapped or a if a.version == 6 else a
    b = b.ipv4_mapped or b if b.version == 6 else b
    if a.version != b.version:
        a, b = (ipaddress.IPv6Address(f"::ffff:{x}") if x.version == 4 else x for x in (a, b))
    return a, b


@given(endpoints, endpoints)
def test_v1_round_trip(src, dst):
    wire = v1(src, dst)
    header = parse(wire + b"\x16\x03\x01")
    a, b = _expected_pair(src[0], dst[0])
    assert header.version == 1 and header.length == len(wire) and header.command == "PROXY"
    assert header.family == ("TCP4" if a.version == 4 else "TCP6")
    assert ipaddress.ip_address(header.src[0]) == a and header.src[1] == src[1]
    assert ipaddress.ip_address(header.dst[0]) == b and header.dst[1] == dst[1]
    assert header.tlvs == ()
    assert len(wire) <= 107


ascii_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60)


@given(
    endpoints,
    endpoints,
    st.one_of(st.none(), st.binary(min_size=1, max_size=300)),
    st.one_of(st.none(), ascii_text.filter(bool)),
    st.one_of(st.none(), ascii_text),
    st.one_of(st.none(), ascii_text.filter(bool)),
)
def test_v2_round_trip(src, dst, alpn, authority, ssl_version, ssl_cipher):
    wire = v2(
        src, dst, alpn=alpn, authority=authority, ssl_version=ssl_version, ssl_cipher=ssl_cipher
    )
    header = parse(wire + b"PROXY ")
    a, b = _expected_pair(src[0], dst[0])
    assert header.version == 2 and header.length == len(wire) and header.command == "PROXY"
    assert header.family == ("TCP4" if a.version == 4 else "TCP6")
    assert ipaddress.ip_address(header.src[0]) == a and header.src[1] == src[1]
    assert ipaddress.ip_address(header.dst[0]) == b and header.dst[1] == dst[1]
    expected = []
    if alpn:
        expected.append((0x01, alpn))
    if authority:
        expected.append((0x02, authority.encode()))
    if ssl_version is not None:
        ssl = b"\x01\x00\x00\x00\x01\x21" + len(ssl_version).to_bytes(2, "big")
        ssl += ssl_version.encode()
        if ssl_cipher:
            ssl += b"\x23" + len(ssl_cipher).to_bytes(2, "big") + ssl_cipher.encode()
        expected.append((0x20, ssl))
    assert header.tlvs == tuple(expected)


# ---------------------------------------------------------------------------------- fuzzing


def _outcome(data: bytes):
    try:
        return parse(data)
    except ProxyError:
        return "error"


@st.composite
def mutated(draw):
    wire = bytearray(draw(st.sampled_from([s[0] for s in SAMPLES])))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(wire) - 1))
        op = draw(st.sampled_from(["set", "insert", "delete"]))
        if op == "set":
            wire[i] = draw(st.integers(0, 255))
        elif op == "insert":
            wire.insert(i, draw(st.sampled_from([0, 0x20, 0x0D, 0x0A, 0x30, 0x3A, 0x2E])))
        else:
            del wire[i]
    return bytes(wire)


fuzz_inputs = st.one_of(
    st.binary(max_size=300),
    st.builds(
        bytes.__add__,
        st.sampled_from([SIG, SIG + b"\x21\x11", SIG + b"\x20", b"PROXY ", b"PROXY TCP4 "]),
        st.binary(max_size=300),
    ),
    st.builds(
        bytes.__add__,
        st.builds(bytes.__add__, st.just(b"PROXY TCP"), st.sampled_from([b"4 ", b"6 "])),
        st.text("0123456789abcdef:. \r\n", max_size=110).map(str.encode),
    ),
    st.builds(
        _v2_raw, st.just(0x21), st.sampled_from([0x00, 0x11, 0x21, 0x31]), st.binary(max_size=300)
    ),
    st.builds(bytes.__add__, mutated(), st.binary(max_size=20)),
)


@settings(max_examples=1500, deadline=None)
@given(fuzz_inputs, st.data())
def test_fuzz_parse(wire, data):
    result = _outcome(wire)
    assert result is None or result == "error" or isinstance(result, Header)
    if isinstance(result, Header):
        assert 0 < result.length <= len(wire)
        assert _outcome(wire[: result.length]) == result
        assert _outcome(wire[: result.length - 1]) is None
    # Deciding early must never be revised: a prefix is either undecided or already agrees.
    cut = data.draw(st.integers(0, len(wire)))
    assert _outcome(wire[:cut]) in (None, result)
