"""Tests for stud.proxyproto: byte-exact builders and an incremental, fuzz-safe parser."""

import base64
import ctypes
import ctypes.util
import dataclasses
import ipaddress
import textwrap

import pytest
from client_pki import self_signed
from hypothesis import given, settings
from hypothesis import strategies as st

from stud.proxyproto import (
    MAX_V2_LENGTH,
    ClientIdentity,
    Header,
    ProxyError,
    _parse_tlvs,
    parse,
    v1,
    v2,
    write_ip,
)

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


# ----------------------------------------------------------- TLVs for the client's identity

DER = bytes.fromhex("3003020105")  # SEQUENCE { INTEGER 5 }: proxyproto never looks inside
CLIENT = ClientIdentity(
    der=DER,
    cn="Zoë",
    san_uris=("spiffe://ex/a",),
    sha256=bytes(range(32)),
    serial=0xFF01,
    not_after=1767225600,  # 2026-01-01T00:00:00Z
    verify=0,
    in_session=True,
    on_connection=True,
)
TLS = {
    "alpn": b"h2",
    "authority": "example.com",
    "ssl_version": "TLSv1.3",
    "ssl_cipher": "TLS_AES_256_GCM_SHA384",
}
CIPHER_TLV = " 23 0016 544c535f4145535f3235365f47434d5f534841333834"  # SSL_CIPHER (22 bytes)
V2_V4_ALL = (
    "0d0a0d0a000d0a515549540a 21 11 009c"  # 12 + 5 + 14 + 58 + 16 + 35 + 5 + 11 = 156
    " c0000201 c6336407 dc04 01bb"
    " 01 0002 6832"  # ALPN "h2"
    " 02 000b 6578616d706c652e636f6d"  # AUTHORITY "example.com"
    " 20 0037 07 00000000"  # SSL, 55 bytes: SSL | CERT_CONN | CERT_SESS, verify 0: verified
    " 21 0007 544c5376312e33"  # SSL_VERSION "TLSv1.3"
    " 22 0004 5a6fc3ab"  # SSL_CN "Zoë" in UTF-8
    + CIPHER_TLV
    + " 28 0005 3003020105"  # SSL_CLIENT_CERT: the DER
    " e1 000d 7370696666653a2f2f65782f61"  # stud's SAN URI "spiffe://ex/a"
    " e2 0020 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"  # SHA-256
    " e3 0002 ff01"  # serial: unsigned, minimal (no sign byte before 0xff)
    " e4 0008 000000006955b900"  # notAfter
)
# hitch's proxy-client-cert: OpenSSL's PEM_write_bio_X509_AUX output, no NUL
PEM = b"-----BEGIN TRUSTED CERTIFICATE-----\nMAMCAQU=\n-----END TRUSTED CERTIFICATE-----\n"
V2_V4_PEM = (
    bytes.fromhex(
        "0d0a0d0a000d0a515549540a 21 11 0090"  # 12 + 82 + 50 = 144
        " c0000201 c6336407 dc04 01bb"
        " e0 004f"  # hitch's TLV, 79 bytes, before the SSL TLV as hitch writes it
    )
    + PEM
    + bytes.fromhex(
        " 20 002f 05 00000014"  # resumed: SSL | CERT_SESS; verify 20 (unable to get issuer)
        " 21 0007 544c5376312e33 22 0004 5a6fc3ab" + CIPHER_TLV  # no 0x28 when PEM is sent
    )
)


def test_v2_identity_vectors():
    assert v2(*V4, **TLS, client=CLIENT, identity_tlvs=True) == bytes.fromhex(V2_V4_ALL)
    resumed = dataclasses.replace(CLIENT, on_connection=False, verify=20)
    tls = {"ssl_version": "TLSv1.3", "ssl_cipher": "TLS_AES_256_GCM_SHA384"}
    assert v2(*V4, **tls, client=resumed, cert="pem") == V2_V4_PEM


def test_v2_without_a_client_certificate_is_unchanged():
    """No client, or one and no option asking for more: the bytes hitch sends."""
    assert v2(*V4, **TLS) == bytes.fromhex(V2_V4_TLVS)
    assert v2(*V4, **TLS, client=None, cert="pem", identity_tlvs=True) == bytes.fromhex(V2_V4_TLVS)


def test_v2_identity_parts():
    wire = v2(*V4, **TLS, client=CLIENT, identity_tlvs=True)
    header = parse(wire)
    assert header.src == V4[0] and header.dst == V4[1]
    assert [t for t, _ in header.tlvs] == [0x01, 0x02, 0x20, 0xE1, 0xE2, 0xE3, 0xE4]
    flags, verify, subs = ssl_parts(dict(header.tlvs)[0x20])
    assert (flags, verify) == (0x07, 0)
    assert subs == [(0x21, b"TLSv1.3"), (0x22, "Zoë".encode()), (0x23, b"TLS_AES_256_GCM_SHA384"),
                    (0x28, DER)]
    # no CN and no certificate bytes (cert=None): the flags and verify result still go
    anonymous = dataclasses.replace(CLIENT, cn=None, verify=18, on_connection=False)
    header = parse(v2(*V4, ssl_version="TLSv1.3", client=anonymous, cert=None))
    assert header.tlvs == ((0x20, bytes.fromhex("05 00000012 21 0007") + b"TLSv1.3"),)
    # without the SSL TLV (--proxy-tlv off) the DER has nowhere to go; PEM and ours still do
    assert v2(*V4, client=CLIENT) == bytes.fromhex(V2_V4_PLAIN)
    assert parse(v2(*V4, client=CLIENT, cert="pem")).tlvs == ((0xE0, PEM),)
    # several URIs: one TLV each, in the certificate's order; odd serials and dates
    odd = dataclasses.replace(CLIENT, san_uris=("urn:a", "spiffe://b/ü"), serial=0, not_after=0)
    tlvs = parse(v2(*V4, client=odd, identity_tlvs=True)).tlvs
    assert tlvs == ((0xE1, b"urn:a"), (0xE1, "spiffe://b/ü".encode()), (0xE2, bytes(range(32))),
                    (0xE3, b"\0"), (0xE4, bytes(8)))
    big = dataclasses.replace(CLIENT, serial=2**159 + 1, not_after=2**64 - 1)
    tlvs = dict(parse(v2(*V4, client=big, identity_tlvs=True)).tlvs)
    assert tlvs[0xE3] == (2**159 + 1).to_bytes(20, "big") and tlvs[0xE4] == b"\xff" * 8
    # no unsigned encoding: left out, the rest goes
    bad = dataclasses.replace(CLIENT, serial=-1, not_after=-1)
    assert [t for t, _ in parse(v2(*V4, client=bad, identity_tlvs=True)).tlvs] == [0xE1, 0xE2]


def test_v2_rejects_bad_identity_values():
    for bad in ({"verify": -1}, {"verify": 1 << 32}):
        with pytest.raises(ProxyError):
            v2(*V4, ssl_version="TLSv1.3", client=dataclasses.replace(CLIENT, **bad))
    with pytest.raises(ProxyError, match="32 bytes"):
        v2(*V4, client=dataclasses.replace(CLIENT, sha256=b"x"), identity_tlvs=True)
    with pytest.raises(ProxyError, match="encoding"):
        v2(*V4, client=CLIENT, cert="PEM")


def ssl_parts(value: bytes) -> tuple[int, int, list[tuple[int, bytes]]]:
    """An SSL TLV's client flags, verify result and sub-TLVs."""
    return value[0], int.from_bytes(value[1:5], "big"), list(_parse_tlvs(value[5:], len(value) - 5))


def _libcrypto():
    name = ctypes.util.find_library("crypto")
    if name is None:
        pytest.skip("no libcrypto to compare with")
    lib = ctypes.CDLL(name)
    lib.d2i_X509.restype = ctypes.c_void_p
    lib.d2i_X509.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long]
    lib.BIO_s_mem.restype = ctypes.c_void_p
    lib.BIO_new.restype = ctypes.c_void_p
    lib.BIO_new.argtypes = [ctypes.c_void_p]
    lib.PEM_write_bio_X509_AUX.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.BIO_ctrl.restype = ctypes.c_long
    lib.BIO_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    lib.BIO_free.argtypes = [ctypes.c_void_p]
    lib.X509_free.argtypes = [ctypes.c_void_p]
    return lib


def hitch_pem(der: bytes) -> bytes:
    """What hitch's proxy_tlv_cert() writes for a peer certificate: PEM_write_bio_X509_AUX of
    the X509 that d2i_X509 makes of the DER the client sent."""
    lib = _libcrypto()
    ptr = ctypes.c_char_p(der)
    cert = lib.d2i_X509(None, ctypes.byref(ptr), len(der))
    bio = lib.BIO_new(lib.BIO_s_mem())
    try:
        assert cert and bio and lib.PEM_write_bio_X509_AUX(bio, cert) == 1
        data = ctypes.c_char_p()
        n = lib.BIO_ctrl(bio, 3, 0, ctypes.byref(data))  # BIO_CTRL_INFO: BIO_get_mem_data
        return ctypes.string_at(data, n)
    finally:
        lib.BIO_free(bio)
        lib.X509_free(cert)


def test_pem_is_what_hitch_writes():
    der = self_signed(uris=0, cn="client")
    pem = dict(parse(v2(*V4, client=dataclasses.replace(CLIENT, der=der), cert="pem")).tlvs)[0xE0]
    assert pem == hitch_pem(der)
    assert pem.startswith(b"-----BEGIN TRUSTED CERTIFICATE-----\n") and pem.endswith(b"-----\n")
    assert base64.b64decode(b"".join(pem.splitlines()[1:-1])) == der


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


# ------------------------------------------------------------------------- pass-through

CONN = (("127.0.0.1", 50000), ("127.0.0.1", 8443))  # the connection stud accepted
V1_IN = b"PROXY TCP4 203.0.113.9 198.51.100.7 40000 443\r\n"
V2_V1_OUT = (
    "0d0a0d0a000d0a515549540a 21 11 001e"  # 12 + 18
    " cb007109 c6336407 9c40 01bb"  # the client's header's addresses, not the connection's
    " 20 000f 01 00000001 21 0007 544c5376312e33"  # SSL, VERSION
)
TLVS_IN = (
    " 03 0004 12345678"  # CRC32C of the old header
    " 02 0005 6c622e6578"  # AUTHORITY "lb.ex"
    " ea 0009 767063652d30313233"  # AWS NLB VPC endpoint "vpce-0123"
    " 04 0002 0000"  # NOOP
    " 05 0003 616263"  # UNIQUE_ID "abc"
    " 20 0005 07 00000000"  # the upstream's SSL
    " e1 0004 66616b65"  # an upstream's 0xE1 "fake"
    " e0 0002 6964"  # an upstream's 0xE0 (as Google's Private Service Connect uses it)
)
V2_IN = _v2_raw(0x21, 0x21, bytes.fromhex("20010db8000000000000000000000009"
                                          " 20010db8000000000000000000000002 9c40 01bb" + TLVS_IN))
V2_V2_OUT = (
    "0d0a0d0a000d0a515549540a 21 21 00c6"  # 36 + 14 + 58 + 16 + 35 + 5 + 11 + 12 + 6 + 5 = 198
    " 20010db8000000000000000000000009 20010db8000000000000000000000002 9c40 01bb"
    " 02 000b 6578616d706c652e636f6d"  # stud's AUTHORITY: the upstream's is dropped
    " 20 0037 07 00000000 21 0007 544c5376312e33 22 0004 5a6fc3ab"
    + CIPHER_TLV
    + " 28 0005 3003020105"  # stud's SSL TLV, not the upstream's
    " e1 000d 7370696666653a2f2f65782f61"  # stud's 0xE1 only
    " e2 0020 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    " e3 0002 ff01 e4 0008 000000006955b900"
    " ea 0009 767063652d30313233 05 0003 616263 e0 0002 6964"  # kept, in their order
)


def test_passthrough_vectors():
    tls = {"ssl_version": "TLSv1.3"}
    assert v2(*CONN, **tls, passthrough=parse(V1_IN)) == bytes.fromhex(V2_V1_OUT)
    out = v2(*CONN, authority="example.com", ssl_version="TLSv1.3",
             ssl_cipher="TLS_AES_256_GCM_SHA384", client=CLIENT, identity_tlvs=True,
             passthrough=parse(V2_IN))
    assert out == bytes.fromhex(V2_V2_OUT)


def test_passthrough_drops_only_what_stud_writes():
    incoming = parse(V2_IN)
    # stud writes no AUTHORITY (no SNI) nor SSL TLV here: the upstream's stay; PEM owns 0xE0
    tlvs = parse(v2(*CONN, client=CLIENT, cert="pem", passthrough=incoming)).tlvs
    assert [t for t, _ in tlvs] == [0xE0, 0x02, 0xEA, 0x05, 0x20, 0xE1]
    assert tlvs[0] == (0xE0, PEM)
    # identity TLVs on, no client certificate: 0xE1..0xE4 are still stud's, so still dropped
    tlvs = parse(v2(*CONN, identity_tlvs=True, passthrough=incoming)).tlvs
    assert [t for t, _ in tlvs] == [0x02, 0xEA, 0x05, 0x20, 0xE0]
    # the same TLVs stud parsed, byte for byte
    assert dict(tlvs)[0xEA] == b"vpce-0123" and dict(tlvs)[0x20] == bytes.fromhex("07 00000000")


@pytest.mark.parametrize(
    ("incoming", "tlvs"),
    [
        (V2_LOCAL, ()),
        (_v2_raw(0x20, 0x11, bytes(12) + bytes.fromhex("ea 0001 78")), ()),  # LOCAL: all ignored
        (b"PROXY UNKNOWN\r\n", ()),
        (b"PROXY UNKNOWN ffff:f...f:ffff 0 0 ignored\r\n", ()),
        (_v2_raw(0x21, 0x31, UNIX_BLOCK), ()),
        (_v2_raw(0x21, 0x00, bytes.fromhex("ea 0001 78")), ((0xEA, b"x"),)),
    ],
    ids=["v2 LOCAL", "v2 LOCAL TCP4", "v1 UNKNOWN", "v1 UNKNOWN long", "v2 UNIX", "v2 UNSPEC"],
)
def test_passthrough_without_addresses_uses_the_connection(incoming, tlvs):
    header = parse(v2(*CONN, passthrough=parse(incoming)))
    assert (header.src, header.dst, header.tlvs) == (*CONN, tlvs)


def test_passthrough_families():
    # v1 TCP6 with mapped addresses: both mapped, so TCP4 out, as v2() does with any address
    mapped = parse(b"PROXY TCP6 ::ffff:192.0.2.1 ::ffff:198.51.100.7 1 2\r\n")
    header = parse(v2(*CONN, passthrough=mapped))
    assert header.family == "TCP4"
    assert (header.src, header.dst) == (("192.0.2.1", 1), ("198.51.100.7", 2))
    # UDP in: its addresses, TCP out (stud relays a TCP stream)
    udp = parse(SAMPLES[9][0])
    header = parse(v2(*CONN, passthrough=udp))
    assert (header.family, header.src, header.dst) == ("TCP4", udp.src, udp.dst)
    assert header.tlvs == ()  # its NOOP is dropped


# --------------------------------------------------------------------------------- length


def test_v2_may_outgrow_what_stud_parses():
    big = dataclasses.replace(CLIENT, der=b"\x30" * 6000)
    wire = v2(*V4, **TLS, client=big, identity_tlvs=True)
    assert MAX_V2_LENGTH < len(wire) < 16 + 0xFFFF
    with pytest.raises(ProxyError, match="too long"):
        parse(wire)  # the cap on what a client can make stud buffer stays


def test_v2_leaves_the_certificate_out_first():
    base = v2(*V4, **TLS, client=CLIENT, cert=None, identity_tlvs=True)
    room = 16 + 0xFFFF - len(base) - 3  # the largest DER that fits
    for cert in ("der", "pem"):
        fits = room if cert == "der" else room // 4 * 3 - 1000  # PEM: base64 + lines + armour
        wire = v2(*V4, **TLS, client=dataclasses.replace(CLIENT, der=b"\x30" * fits),
                  cert=cert, identity_tlvs=True)
        assert len(wire) <= 16 + 0xFFFF and len(wire) > len(base) + fits
        for der in (b"\x30" * (room + 1), b"\x30" * 70000):
            wire = v2(*V4, **TLS, client=dataclasses.replace(CLIENT, der=der), cert=cert,
                      identity_tlvs=True)
            assert wire == base  # flags, verify, CN and identity TLVs stay
    assert len(v2(*V4, **TLS, client=dataclasses.replace(CLIENT, der=b"\x30" * room),
                  identity_tlvs=True)) == 16 + 0xFFFF


def test_v2_too_long_to_build():
    with pytest.raises(ProxyError):
        v2(*V4, authority="a" * 0x10000)  # one TLV over 16 bits of length
    # what is left once the certificate is out is still too long: there is no rule for that
    uris = tuple("u" * 30000 for _ in range(3))
    with pytest.raises(ProxyError, match="too long"):
        v2(*V4, client=dataclasses.replace(CLIENT, san_uris=uris), identity_tlvs=True)
    # an upstream's TLVs count too (stud parses at most 4096 bytes, but v2 does not rely on it)
    many = Header(2, 0, "PROXY", "TCP4", None, None, tuple((0xEA, bytes(30000)) for _ in range(3)))
    with pytest.raises(ProxyError, match="too long"):
        v2(*V4, passthrough=many)


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


identities = st.builds(
    ClientIdentity,
    der=st.binary(max_size=400),
    cn=st.one_of(st.none(), st.text(max_size=40)),
    san_uris=st.lists(st.text(max_size=40), max_size=3).map(tuple),
    sha256=st.binary(min_size=32, max_size=32),
    serial=st.integers(-3, 2**160),
    not_after=st.integers(-3, 2**64 + 3),
    verify=st.integers(0, 2**32 - 1),
    in_session=st.booleans(),
    on_connection=st.booleans(),
)
incoming_headers = st.builds(
    lambda ends, tlvs: Header(2, 0, "PROXY", "TCP4", *ends, tuple(tlvs)),
    st.one_of(st.tuples(endpoints, endpoints), st.just((None, None))),
    st.lists(
        st.tuples(
            # mostly the types v2() has a rule for
            st.one_of(st.sampled_from([1, 2, 3, 4, 5, 0x20, 0xE0, 0xE1, 0xE4, 0xEA]),
                      st.integers(0, 255)),
            st.binary(max_size=60),
        ),
        max_size=6,
    ),
)


def _enc(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


def _model_pem(der: bytes) -> bytes:
    lines = "".join(line + "\n" for line in textwrap.wrap(base64.b64encode(der).decode(), 64))
    armour = "-----{} TRUSTED CERTIFICATE-----\n"
    return (armour.format("BEGIN") + lines + armour.format("END")).encode()


def _model_tlvs(alpn, authority, version, cipher, client, cert, identity, incoming):
    """The TLVs v2() should write, from the README's table."""
    out = []
    if alpn:
        out.append((0x01, alpn))
    if authority:
        out.append((0x02, authority.encode()))
    if client and client.der and cert == "pem":
        out.append((0xE0, _model_pem(client.der)))
    if version is not None:
        flags, verify = 1, 1
        if client:
            flags |= 2 * client.on_connection | 4 * client.in_session
            verify = client.verify
        ssl = bytes([flags]) + verify.to_bytes(4, "big") + _enc(0x21, version.encode())
        ssl += _enc(0x22, client.cn.encode()) if client and client.cn else b""
        ssl += _enc(0x23, cipher.encode()) if cipher else b""
        ssl += _enc(0x28, client.der) if client and client.der and cert == "der" else b""
        out.append((0x20, ssl))
    if client and identity:
        out += [(0xE1, uri.encode()) for uri in client.san_uris]
        out.append((0xE2, client.sha256))
        if client.serial >= 0:
            out.append((0xE3, client.serial.to_bytes(max(1, -(-client.serial.bit_length() // 8)),
                                                     "big")))
        if 0 <= client.not_after < 2**64:
            out.append((0xE4, client.not_after.to_bytes(8, "big")))
    if incoming:
        own = {0x03, 0x04} | {t for t, _ in out if t < 0xE0}
        own |= {0xE0} if cert == "pem" else set()
        own |= {0xE1, 0xE2, 0xE3, 0xE4} if identity else set()
        out += [(t, v) for t, v in incoming.tlvs if t not in own]
    return tuple(out)


@settings(max_examples=300)
@given(
    endpoints,
    endpoints,
    st.one_of(st.none(), st.binary(min_size=1, max_size=300)),
    st.one_of(st.none(), ascii_text),
    st.one_of(st.none(), ascii_text),
    st.one_of(st.none(), ascii_text),
    st.one_of(st.none(), identities),
    st.sampled_from(["der", "pem", None]),
    st.booleans(),
    st.one_of(st.none(), incoming_headers),
)
def test_v2_identity_round_trip(src, dst, alpn, authority, version, cipher, client, cert,
                                identity, incoming):
    wire = v2(src, dst, alpn=alpn, authority=authority, ssl_version=version, ssl_cipher=cipher,
              client=client, cert=cert, identity_tlvs=identity, passthrough=incoming)
    header = parse(wire + b"\x16\x03\x01")
    if incoming and incoming.src:
        src, dst = incoming.src, incoming.dst
    a, b = _expected_pair(src[0], dst[0])
    assert header.length == len(wire) and header.command == "PROXY"
    assert ipaddress.ip_address(header.src[0]) == a and header.src[1] == src[1]
    assert ipaddress.ip_address(header.dst[0]) == b and header.dst[1] == dst[1]
    expected = _model_tlvs(alpn, authority, version, cipher, client, cert, identity, incoming)
    assert header.tlvs == expected
    if version is not None:  # the SSL TLV's own structure holds
        flags, verify, subs = ssl_parts(dict(header.tlvs)[0x20])
        assert [t for t, _ in subs] == sorted(t for t, _ in subs)
        assert (verify == 1) if client is None else (verify == client.verify)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 70_000), st.integers(0, 70_000), st.sampled_from(["der", "pem"]))
def test_v2_length_rule(der_size, foreign_size, cert):
    """The certificate goes in if and only if it fits; then the rest fits, or ProxyError."""
    client = dataclasses.replace(CLIENT, der=b"\x30" * der_size)
    foreign = Header(2, 0, "PROXY", "UNSPEC", None, None, ((0xEA, bytes(foreign_size)),))
    kw = {**TLS, "client": client, "identity_tlvs": True, "passthrough": foreign}
    try:
        without = v2(*V4, **kw, cert=None)
    except ProxyError:
        with pytest.raises(ProxyError):
            v2(*V4, **kw, cert=cert)
        return
    wire = v2(*V4, **kw, cert=cert)
    cost = 3 + (der_size if cert == "der" else len(_model_pem(client.der)))
    if der_size and len(without) + cost <= 16 + 0xFFFF:
        assert len(wire) == len(without) + cost
    else:
        assert wire == without
    assert len(wire) <= 16 + 0xFFFF


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
