"""stud.identity: a client certificate's fields, as the log, metrics and PROXY TLVs use them."""

from __future__ import annotations

import hashlib

import client_pki
from cryptography.hazmat.primitives.serialization import Encoding

from stud import identity


def test_fields_of_a_client_certificate(tmp_path):
    pki = client_pki.make(tmp_path)
    der = pki.good.cert.public_bytes(Encoding.DER)
    got = identity.of(der)
    assert got.subject == "CN=client.example,O=Example" and got.cn == "client.example"
    assert got.san_uris == (client_pki.CLIENT_URI,) and got.name == client_pki.CLIENT_URI
    assert got.sha256 == hashlib.sha256(der).digest()
    assert got.serial == pki.good.cert.serial_number
    assert got.not_after == int(pki.good.cert.not_valid_after_utc.timestamp())
    assert identity.of(der) is got  # parsed once


def test_what_cryptography_cannot_parse_is_named_by_its_fingerprint():
    der = b"\x30\x03\x02\x01\x01"
    got = identity.of(der)
    assert got.subject == "?" and got.san_uris == () and got.name == "?"
    assert got.sha256 == hashlib.sha256(der).digest()
