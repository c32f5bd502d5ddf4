"""Self-signed certificates for the demo and the tests: one PEM with certificate and key."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def make_pem(path: Path, names: list[str] | None = None, cn: str | None = "localhost",
             key: str = "ec", days: int = 30, extra: bytes = b"") -> None:
    """Write a certificate (SANs: DNS names, or IP addresses) and its key, as stud reads them.

    ``key`` is "ec" (P-256) or "rsa" (2048 bits); ``extra`` is appended (e.g. DH parameters).
    """
    priv = (ec.generate_private_key(ec.SECP256R1()) if key == "ec"
            else rsa.generate_private_key(public_exponent=65537, key_size=2048))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
               .public_key(priv.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days)))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(n)
                                                                      for n in names]),
                                        critical=False)
    cert = builder.sign(priv, hashes.SHA256())
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + priv.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()) + extra)
    path.chmod(0o600)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)
