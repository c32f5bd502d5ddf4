"""A client certificate as the connection log, the metrics and the backend's PROXY header name
it: subject, CN, SAN URIs (SPIFFE IDs), SHA-256 fingerprint, serial and notAfter. Pure: DER
in, fields out; parsed once per distinct certificate (clients reconnect with the same one).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from stud.proxyproto import ClientIdentity

CACHE_SIZE = 1024  # distinct client certificates kept parsed


@dataclass(frozen=True)
class Identity:
    der: bytes
    subject: str                  # RFC 4514, as OpenSSL's -nameopt RFC2253 writes it
    cn: str | None
    san_uris: tuple[str, ...]
    sha256: bytes
    serial: int
    not_after: int                # Unix seconds

    @property
    def name(self) -> str:
        """Who the client is, in one label: its first SAN URI (a SPIFFE ID), else the
        subject."""
        return self.san_uris[0] if self.san_uris else self.subject

    def for_proxy(self, *, verify: int = 0, in_session: bool = True,
                  on_connection: bool = True) -> ClientIdentity:
        """What the PROXY v2 header says of it, with what this connection's handshake said."""
        return ClientIdentity(der=self.der, cn=self.cn, san_uris=self.san_uris,
                              sha256=self.sha256, serial=self.serial, not_after=self.not_after,
                              verify=verify, in_session=in_session, on_connection=on_connection)


_cache: OrderedDict[bytes, Identity] = OrderedDict()


def of(der: bytes) -> Identity:
    """The identity in a DER certificate (ValueError if it does not parse)."""
    got = _cache.get(der)
    if got is not None:
        _cache.move_to_end(der)
        return got
    got = _parse(der)
    _cache[der] = got
    if len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return got


def _parse(der: bytes) -> Identity:
    sha256 = hashlib.sha256(der).digest()
    try:
        cert = x509.load_der_x509_certificate(der)
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        except x509.ExtensionNotFound:
            uris = ()
        return Identity(der=der, subject=cert.subject.rfc4514_string(),
                        cn=str(cns[0].value) if cns else None, san_uris=uris, sha256=sha256,
                        serial=cert.serial_number,
                        not_after=int(cert.not_valid_after_utc.timestamp()))
    except ValueError:
        # OpenSSL verified what cryptography will not parse (a malformed extension, say): the
        # connection goes on, named by its fingerprint alone.
        return Identity(der=der, subject="?", cn=None, san_uris=(), sha256=sha256, serial=0,
                        not_after=0)
