"""The certificates: the proxies' self-signed server certificates (ECDSA P-256 or RSA-2048,
certificate + key in one PEM), and for hs_mtls a client PKI: root -> intermediate -> client,
all ECDSA P-256."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import HOST


@dataclass(frozen=True)
class ClientAuth:
    """The proxy verifies client certificates against ca_bundle; the client presents
    client_pem (its certificate, the intermediate, its key)."""

    ca_bundle: Path
    client_pem: Path


def make_pem(path: Path, kind: str) -> None:
    """Self-signed certificate + key in one PEM file; kind is 'ecdsa' (P-256) or 'rsa'."""
    try:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
    except ImportError:
        _make_pem_openssl(path, kind)
        return
    key: Any = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ecdsa"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    cert = _certificate("localhost", key, None, kind="server")
    path.write_bytes(_pem(cert, key))


def make_client_pki(work: Path) -> ClientAuth | None:
    """ca-bundle.pem (root + intermediate, what the proxies trust) and client.pem (leaf +
    intermediate + key, what tlsload presents); None without the cryptography package."""
    try:
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError:
        return None
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]
    root = _certificate("bench root CA", keys[0], None, kind="ca")
    inter = _certificate("bench intermediate CA", keys[1], (root, keys[0]), kind="ca")
    leaf = _certificate("bench client", keys[2], (inter, keys[1]), kind="client")
    auth = ClientAuth(work / "ca-bundle.pem", work / "client.pem")
    auth.ca_bundle.write_bytes(_pem(root, inter))
    auth.client_pem.write_bytes(_pem(leaf, inter, keys[2]))
    for p in (auth.ca_bundle, auth.client_pem):
        p.chmod(0o644)  # hitch reads as nobody
    return auth


def _certificate(cn: str, key: Any, issuer: tuple[Any, Any] | None, kind: str) -> Any:
    """kind: 'server' (SANs localhost and HOST), 'ca' or 'client' (clientAuth, a SPIFFE
    URI, as a service's certificate has); self-signed without an issuer (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signer = issuer[1] if issuer else key
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
    )
    if kind == "server":
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    else:
        b = b.add_extension(x509.BasicConstraints(ca=kind == "ca", path_length=None), True)
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False)
    if kind == "ca":
        b = b.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    if kind == "client":
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        uri = x509.UniformResourceIdentifier("spiffe://bench.example/client")
        b = b.add_extension(x509.SubjectAlternativeName([uri]), critical=False)
    return b.sign(signer, hashes.SHA256())


def _pem(*items: Any) -> bytes:
    """Certificates and keys (PKCS#8, unencrypted) as one PEM file, in this order."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    enc = serialization.Encoding.PEM
    return b"".join(
        i.public_bytes(enc) if isinstance(i, x509.Certificate) else
        i.private_bytes(enc, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        for i in items
    )


def _make_pem_openssl(path: Path, kind: str) -> None:
    key_opt = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    if kind == "rsa":
        key_opt = ["-newkey", "rsa:2048"]
    k, c = path.with_suffix(".key"), path.with_suffix(".crt")
    argv = ["openssl", "req", "-x509", *key_opt, "-nodes", "-keyout", str(k), "-out", str(c)]
    argv += "-subj /CN=localhost -days 30".split()
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    path.write_bytes(c.read_bytes() + k.read_bytes())
