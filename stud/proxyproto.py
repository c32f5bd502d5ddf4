"""PROXY protocol v1/v2 (HAProxy doc/proxy-protocol.txt), with v2 TLVs for the client's TLS
identity, and stud's --write-ip header.

Sans-IO: pure functions over bytes, so the event loop owns all reading and writing.
"""

import base64
import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "MAX_V2_LENGTH",
    "ClientIdentity",
    "Header",
    "ProxyError",
    "parse",
    "v1",
    "v2",
    "write_ip",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# 16-byte fixed part plus room for addresses and generous TLVs; caps what a client can make us
# buffer before we forward anything. Only parsing: what we build may use the whole 16-bit length,
# since a client certificate alone can outgrow 4096 bytes.
MAX_V2_LENGTH = 16 + 4096
_V2_MAX_BODY = 0xFFFF
V1_MAX_LENGTH = 107  # spec: the longest possible v1 line, CRLF included

# v2 family/protocol byte -> (name, address block size). Both UNIX protocols are just "UNIX".
_V2_FAMILIES = {
    0x00: ("UNSPEC", 0),
    0x11: ("TCP4", 12),
    0x12: ("UDP4", 12),
    0x21: ("TCP6", 36),
    0x22: ("UDP6", 36),
    0x31: ("UNIX", 216),
    0x32: ("UNIX", 216),
}

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_CLIENT_CERT = 0x28
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04

# The spec's custom range 0xE0..0xEF is for applications. 0xE0 is hitch's (proxy-client-cert);
# stud's own follow it. They are top-level TLVs, not SSL sub-TLVs: HAProxy (fc_pp_tlv) and nginx
# ($proxy_protocol_tlv_0xe1) look top-level TLVs up by number but SSL sub-TLVs only by the names
# they know, and a future PP2_SUBTYPE_SSL_* number could collide with a nested one.
PP2_TYPE_HITCH_CLIENT_CERT = 0xE0
PP2_TYPE_STUD_SAN_URI = 0xE1
PP2_TYPE_STUD_SHA256 = 0xE2
PP2_TYPE_STUD_SERIAL = 0xE3
PP2_TYPE_STUD_NOT_AFTER = 0xE4
_STUD_IDENTITY_TYPES = range(PP2_TYPE_STUD_SAN_URI, PP2_TYPE_STUD_NOT_AFTER + 1)

# Every non-empty prefix of a valid octet or port is itself valid, so the same patterns check
# partial input exactly and a bad byte is rejected as soon as it arrives.
_OCTET = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # no leading zeros
_IPV4 = re.compile(rb"(?:" + _OCTET + rb"\.){3}" + _OCTET)
_IPV4_PREFIX = re.compile(rb"(?:" + _OCTET + rb"\.){0,3}(?:" + _OCTET + rb")?")
_IPV6_PREFIX = re.compile(rb"[0-9A-Fa-f:.]{0,45}")  # 45 = longest textual IPv6 address
_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_V1_FIELDS = ("signature", "protocol", "source address", "destination address")
_V1_FIELDS += ("source port", "destination port")


class ProxyError(ValueError):
    """A PROXY header that cannot be produced or parsed; the message is a one-line reason."""


@dataclass(frozen=True)
class Header:
    """A parsed PROXY header; src/dst are None when the header carries no usable address."""

    version: int  # 1 or 2
    length: int  # bytes of data that belong to the header
    command: str  # "PROXY" or "LOCAL"
    family: str  # v1: TCP4/TCP6/UNKNOWN; v2: TCP4/TCP6/UDP4/UDP6/UNIX/UNSPEC
    src: tuple[str, int] | None
    dst: tuple[str, int] | None
    tlvs: tuple[tuple[int, bytes], ...]  # v2 top-level TLVs in wire order


@dataclass(frozen=True, kw_only=True)
class ClientIdentity:
    """The client's certificate and what the handshake said of it, ready to encode.

    Extracted from the DER elsewhere (stud.identity): this module encodes it, never parses X.509.
    """

    der: bytes  # the leaf certificate
    cn: str | None  # the subject's Common Name
    san_uris: tuple[str, ...]  # URI subjectAltNames (e.g. a SPIFFE ID), in certificate order
    sha256: bytes  # SHA-256 of der (32 bytes)
    serial: int
    not_after: int  # Unix seconds
    verify: int  # 0: presented and verified; else the X.509 verify result (1 if there is none)
    in_session: bool  # the TLS session carries a client certificate, also when resumed
    on_connection: bool  # the client presented it in this connection's handshake


# ---------------------------------------------------------------------------------- building


def _ip(host: str) -> IPAddress:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ProxyError(f"bad address {host!r}") from None
    # Rebuild from the packed form to drop any "%scope" suffix: it has no place on the wire.
    return ipaddress.ip_address(addr.packed)


def _fmt(addr: IPAddress) -> str:
    # str() renders mapped addresses as ::ffff:c000:201 before Python 3.13; v1 peers and logs
    # expect the dotted form on every version.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return f"::ffff:{addr.ipv4_mapped}"
    return str(addr)


def _unmap(addr: IPAddress) -> IPAddress:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _to_v6(addr: IPAddress) -> ipaddress.IPv6Address:
    if isinstance(addr, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + addr.packed)
    return addr


def _pair(src: str, dst: str) -> tuple[IPAddress, IPAddress]:
    """Both as IPv4 when possible (a dual-stack listener reports ::ffff:a.b.c.d), else both IPv6."""
    a, b = _unmap(_ip(src)), _unmap(_ip(dst))
    if a.version == b.version:
        return a, b
    return _to_v6(a), _to_v6(b)


def _port(port: int) -> int:
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ProxyError(f"bad port {port!r}")
    return port


def write_ip(ip: str) -> bytes:
    """stud --write-ip: Linux address family byte then the packed address.

    Always 2/10 (not socket.AF_*) so backends see the same bytes whatever OS stud runs on.
    Mapped IPv6 addresses stay IPv6, as the original stud sent them.
    """
    addr = _ip(ip)
    return bytes([2 if addr.version == 4 else 10]) + addr.packed


def v1(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """PROXY v1 line for a TCP connection from src to dst."""
    a, b = _pair(src[0], dst[0])
    proto = "TCP4" if a.version == 4 else "TCP6"
    line = f"PROXY {proto} {_fmt(a)} {_fmt(b)} {_port(src[1])} {_port(dst[1])}\r\n"
    return line.encode("ascii")


def _tlv(kind: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ProxyError(f"PROXY v2: TLV 0x{kind:02x} too long")
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


def _host_bytes(host: str) -> bytes:
    if host.isascii():
        return host.encode("ascii")
    try:
        return host.encode("idna")  # spec wants US-ASCII: send the A-label form
    except UnicodeError:
        return host.encode("utf-8", "replace")


def _pem(der: bytes) -> bytes:
    # hitch sends PEM_write_bio_X509_AUX's output: OpenSSL's "TRUSTED CERTIFICATE" armour, 64
    # columns, a final LF and no NUL. A peer certificate has no trust settings, so the base64 is
    # the plain DER. Same bytes, so that hitch's consumers read ours.
    b64 = base64.b64encode(der)
    lines = b"".join(b64[i : i + 64] + b"\n" for i in range(0, len(b64), 64))
    return b"-----BEGIN TRUSTED CERTIFICATE-----\n" + lines + b"-----END TRUSTED CERTIFICATE-----\n"


def _ssl_value(version: str, cipher: str | None, client: ClientIdentity | None) -> bytes:
    """The SSL TLV's value, but for the certificate (0x28) which, being last, the caller adds."""
    # Without a client certificate, verify = 1: non-zero means "no verified client certificate",
    # as hitch sends it.
    flags, verify = PP2_CLIENT_SSL, 1
    if client is not None:
        flags |= PP2_CLIENT_CERT_CONN if client.on_connection else 0
        flags |= PP2_CLIENT_CERT_SESS if client.in_session else 0
        verify = client.verify
        if not 0 <= verify <= 0xFFFFFFFF:
            raise ProxyError(f"PROXY v2: bad verify result {verify!r}")
    ssl = bytes([flags]) + verify.to_bytes(4, "big")
    # The spec's order, which is also today's VERSION then CIPHER when there is no CN.
    ssl += _tlv(PP2_SUBTYPE_SSL_VERSION, version.encode())
    if client is not None and client.cn:
        ssl += _tlv(PP2_SUBTYPE_SSL_CN, client.cn.encode("utf-8", "replace"))
    if cipher:
        ssl += _tlv(PP2_SUBTYPE_SSL_CIPHER, cipher.encode())
    return ssl


def _identity_tlvs(client: ClientIdentity) -> bytes:
    out = b"".join(_tlv(PP2_TYPE_STUD_SAN_URI, uri.encode("utf-8", "replace"))
                   for uri in client.san_uris)
    if len(client.sha256) != 32:
        raise ProxyError("PROXY v2: the SHA-256 fingerprint must be 32 bytes")
    out += _tlv(PP2_TYPE_STUD_SHA256, client.sha256)
    # A negative serial or a notAfter before 1970 has no unsigned encoding (RFC 5280 forbids the
    # first; the second is long expired): left out rather than refusing the connection.
    if client.serial >= 0:
        size = max(1, (client.serial.bit_length() + 7) // 8)
        out += _tlv(PP2_TYPE_STUD_SERIAL, client.serial.to_bytes(size, "big"))
    if 0 <= client.not_after < 1 << 64:
        out += _tlv(PP2_TYPE_STUD_NOT_AFTER, client.not_after.to_bytes(8, "big"))
    return out


def v2(
    src: tuple[str, int],
    dst: tuple[str, int],
    *,
    alpn: bytes | None = None,
    authority: str | None = None,
    ssl_version: str | None = None,
    ssl_cipher: str | None = None,
    client: ClientIdentity | None = None,
    cert: Literal["der", "pem"] | None = "der",
    identity_tlvs: bool = False,
    passthrough: Header | None = None,
) -> bytes:
    """Binary PROXY v2 header (command PROXY, TCP) from src to dst.

    TLVs, in this order (hitch's, then ours): ALPN, AUTHORITY, hitch's 0xE0 (cert="pem"), SSL
    (when ssl_version is given), stud's identity TLVs 0xE1..0xE4 (identity_tlvs), then those
    kept from passthrough. With a client certificate the SSL TLV carries its flags, verify result
    and CN, plus its DER (sub-TLV 0x28) when cert="der"; cert=None sends no certificate bytes.

    passthrough: the client's own PROXY header (--proxy-proxy). Its addresses replace src and
    dst when it has them; a LOCAL, UNKNOWN, UNSPEC or UNIX header has none, and src/dst (the
    connection's own) stand. Its TLVs follow ours in their order, except CRC32C and NOOP (the
    header they checked or padded is gone) and every type stud writes here: ALPN, AUTHORITY and
    SSL when given, 0xE0 with cert="pem" and 0xE1..0xE4 with identity_tlvs, whether or not this
    client has a value for them, so that a backend never takes an upstream's value for stud's.

    The body may use the whole 16-bit length: if it would not fit, the certificate (0x28 or
    0xE0) is left out; if it still does not fit, ProxyError.
    """
    if cert not in ("der", "pem", None):
        raise ProxyError(f"PROXY v2: bad certificate encoding {cert!r}")
    if passthrough is not None and passthrough.src is not None and passthrough.dst is not None:
        src, dst = passthrough.src, passthrough.dst
    a, b = _pair(src[0], dst[0])
    body = a.packed + b.packed + _port(src[1]).to_bytes(2, "big") + _port(dst[1]).to_bytes(2, "big")
    if alpn:
        body += _tlv(PP2_TYPE_ALPN, bytes(alpn))
    if authority:
        body += _tlv(PP2_TYPE_AUTHORITY, _host_bytes(authority))
    ssl = None if ssl_version is None else _ssl_value(ssl_version, ssl_cipher, client)
    tail = _identity_tlvs(client) if client is not None and identity_tlvs else b""
    if passthrough is not None:
        own = {PP2_TYPE_CRC32C, PP2_TYPE_NOOP}
        own |= {PP2_TYPE_ALPN} if alpn else set()
        own |= {PP2_TYPE_AUTHORITY} if authority else set()
        own |= {PP2_TYPE_SSL} if ssl is not None else set()
        own |= {PP2_TYPE_HITCH_CLIENT_CERT} if cert == "pem" else set()
        own |= set(_STUD_IDENTITY_TYPES) if identity_tlvs else set()
        tail += b"".join(_tlv(t, v) for t, v in passthrough.tlvs if t not in own)
    crt = b""
    if client is not None and client.der and (cert == "pem" or cert == "der" and ssl is not None):
        crt = _pem(client.der) if cert == "pem" else client.der
    size = len(body) + (0 if ssl is None else 3 + len(ssl)) + len(tail)
    # The certificate is the only part both optional and large: the first to go.
    if crt and size + 3 + len(crt) <= _V2_MAX_BODY:
        size += 3 + len(crt)
    else:
        crt = b""
    if size > _V2_MAX_BODY:
        raise ProxyError(f"PROXY v2: header too long ({16 + size} bytes)")
    if crt and cert == "pem":
        body += _tlv(PP2_TYPE_HITCH_CLIENT_CERT, crt)
    if ssl is not None:
        if crt and cert == "der":
            ssl += _tlv(PP2_SUBTYPE_SSL_CLIENT_CERT, crt)
        body += _tlv(PP2_TYPE_SSL, ssl)
    body += tail
    family = 0x11 if a.version == 4 else 0x21
    return V2_SIGNATURE + bytes([0x21, family]) + len(body).to_bytes(2, "big") + body


# ----------------------------------------------------------------------------------- parsing


def parse(data: bytes | bytearray | memoryview) -> Header | None:
    """Parse a PROXY header at the start of data.

    None: a valid but incomplete prefix, read more and retry. Header: complete; only the first
    header.length bytes belong to it. ProxyError: as soon as data cannot start a valid header.
    """
    head = bytes(data[:16])
    n = min(len(head), 12)
    if head[:n] == V2_SIGNATURE[:n]:  # also true for empty data
        return _parse_v2(data, head)
    n = min(len(head), 6)
    if head[:n] == b"PROXY "[:n]:
        return _parse_v1(bytes(data[:V1_MAX_LENGTH]))
    if head[:1] == b"\x16":
        raise ProxyError("expected a PROXY header, got what looks like a TLS handshake")
    raise ProxyError(f"expected a PROXY header, got {head[:8]!r}")


def _parse_v2(data: bytes | bytearray | memoryview, head: bytes) -> Header | None:
    if len(head) < 13:
        return None
    version, command = head[12] >> 4, head[12] & 0x0F
    if version != 2:
        raise ProxyError(f"PROXY v2: bad version {version}")
    if command > 1:
        raise ProxyError(f"PROXY v2: bad command {command}")
    if len(head) < 14:
        return None
    if head[13] not in _V2_FAMILIES:
        raise ProxyError(f"PROXY v2: bad family/protocol 0x{head[13]:02x}")
    family, addr_len = _V2_FAMILIES[head[13]]
    if len(head) < 16:
        return None
    length = int.from_bytes(head[14:16], "big")
    total = 16 + length
    if total > MAX_V2_LENGTH:
        raise ProxyError(f"PROXY v2: header too long ({total} bytes)")
    if command == 0:
        # LOCAL: the spec says to discard the whole block, family included.
        return None if len(data) < total else Header(2, total, "LOCAL", family, None, None, ())
    if length < addr_len:
        raise ProxyError(f"PROXY v2: length {length} too short for {family}")
    body = bytes(data[16:total])
    tlvs = _parse_tlvs(body[addr_len:], length - addr_len)
    if len(body) < length:
        return None
    src = dst = None
    if addr_len in (12, 36):
        size = (addr_len - 4) // 2
        src_ip = ipaddress.ip_address(body[:size])
        dst_ip = ipaddress.ip_address(body[size : 2 * size])
        src = (_fmt(src_ip), int.from_bytes(body[2 * size : 2 * size + 2], "big"))
        dst = (_fmt(dst_ip), int.from_bytes(body[2 * size + 2 : addr_len], "big"))
    return Header(2, total, "PROXY", family, src, dst, tlvs)


def _parse_tlvs(buf: bytes, size: int) -> tuple[tuple[int, bytes], ...]:
    """TLVs filling exactly size bytes, of which buf holds those received so far.

    Checks each TLV against size as soon as its 3-byte header is in, so an overrun is reported
    without waiting for bytes that could not fix it.
    """
    tlvs = []
    pos = 0
    while pos < size:
        if size - pos < 3:
            raise ProxyError("PROXY v2: truncated TLV header")
        if pos + 3 > len(buf):
            break
        end = pos + 3 + int.from_bytes(buf[pos + 1 : pos + 3], "big")
        if end > size:
            raise ProxyError(f"PROXY v2: TLV 0x{buf[pos]:02x} overruns the header")
        # The value may still be cut short here; the caller only uses tlvs once all arrived.
        tlvs.append((buf[pos], buf[pos + 3 : end]))
        pos = end
    return tuple(tlvs)


def _parse_v1(head: bytes) -> Header | None:
    lf = head.find(b"\n")
    if lf < 0:
        if len(head) >= V1_MAX_LENGTH:
            raise ProxyError(f"PROXY v1: no CRLF within {V1_MAX_LENGTH} bytes")
        # A trailing CR can only be followed by LF, so the line before it must already be whole.
        cr = head.endswith(b"\r")
        _check_v1(head[:-1] if cr else head, complete=cr)
        return None
    if lf == 0 or head[lf - 1] != 0x0D:
        raise ProxyError("PROXY v1: line ends in a bare LF, not CRLF")
    fields = _check_v1(head[: lf - 1], complete=True)
    if fields is None:
        return Header(1, lf + 1, "PROXY", "UNKNOWN", None, None, ())
    family, src, dst, sport, dport = (f.decode("ascii") for f in fields[1:])
    if family == "TCP6":  # canonical text, so equal addresses compare equal
        src, dst = _fmt(ipaddress.IPv6Address(src)), _fmt(ipaddress.IPv6Address(dst))
    return Header(1, lf + 1, "PROXY", family, (src, int(sport)), (dst, int(dport)), ())


def _check_v1(line: bytes, complete: bool) -> list[bytes] | None:
    """Validate a v1 line without its CRLF; unless complete, the last field may be cut short.

    Returns the 6 fields of a TCP4/TCP6 line, None for UNKNOWN (whose rest is ignored).
    """
    if line.startswith(b"PROXY UNKNOWN"):
        return None
    fields = line.split(b" ")
    for i, field in enumerate(fields[:6]):
        whole = complete or i < len(fields) - 1
        if i == 0:
            ok = field == b"PROXY" if whole else b"PROXY".startswith(field)
        elif i == 1:
            choices = (b"TCP4", b"TCP6", b"UNKNOWN")
            ok = field in choices if whole else any(c.startswith(field) for c in choices)
        elif i in (2, 3) and fields[1] == b"TCP4":
            ok = bool((_IPV4 if whole else _IPV4_PREFIX).fullmatch(field))
        elif i in (2, 3):
            ok = bool(_IPV6_PREFIX.fullmatch(field)) and (not whole or _is_ipv6(field))
        else:
            ok = (not whole and field == b"") or (
                _PORT.fullmatch(field) is not None and int(field) <= 65535
            )
        if not ok:
            text = field.decode("latin-1")
            raise ProxyError(f"PROXY v1: bad {_V1_FIELDS[i]} {text!r}")
    if len(fields) > 6:
        raise ProxyError("PROXY v1: too many fields")
    if complete and len(fields) < 6:
        raise ProxyError("PROXY v1: missing fields")
    return fields


def _is_ipv6(field: bytes) -> bool:
    try:
        ipaddress.IPv6Address(field.decode("ascii"))
    except ValueError:
        return False
    return True
