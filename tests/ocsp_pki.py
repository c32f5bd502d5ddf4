"""The OCSP tests' PKI and responder (tests/test_ocsp.py, tests/test_stapling.py): a CA, a
delegated responder and leaves made with cryptography, responses built with its builder, and
`openssl ocsp` answering from an index.txt behind an HTTP server on 127.0.0.1."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID
from helpers import run_tool

from stud import ocsp

T = 10.0  # upper bound for any single wait
GOOD, REVOKED, UNKNOWN = (x509_ocsp.OCSPCertStatus.GOOD, x509_ocsp.OCSPCertStatus.REVOKED,
                          x509_ocsp.OCSPCertStatus.UNKNOWN)
Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def utcnow() -> datetime:
    return datetime.now(UTC)


# -- the test PKI ---------------------------------------------------------------------------
def issue(cn: str, key: Key, issuer: tuple[x509.Certificate, Key] | None = None, *,
          ca: bool = False, url: str | None = None, eku: list | None = None,
          days: float = 30, serial: int | None = None) -> x509.Certificate:
    """A certificate for cn and key's public key, signed by issuer (else self-signed)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signer_cert, signer_key = issuer if issuer else (None, key)
    now = utcnow()
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(signer_cert.subject if signer_cert else name)
         .public_key(key.public_key()).serial_number(serial or x509.random_serial_number())
         .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
    if url:
        b = b.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(url))]), False)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return b.sign(signer_key, hashes.SHA256())


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem(*items: x509.Certificate | Key) -> bytes:
    return b"".join(
        i.public_bytes(serialization.Encoding.PEM) if isinstance(i, x509.Certificate) else
        i.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption()) for i in items)


def index_line(cert: x509.Certificate, revoked: str | None = None) -> str:
    """A line of `openssl ca`'s index.txt: status, expiry, revocation[,reason], serial, file,
    subject."""
    exp = f"{cert.not_valid_after_utc:%y%m%d%H%M%S}Z"
    dn = "/" + "/".join(f"{a.oid._name}={a.value}" for a in cert.subject)
    return "\t".join(["R" if revoked else "V", exp, revoked or "",
                      f"{cert.serial_number:X}", "unknown", dn]) + "\n"


class PKI:
    """A CA (ECDSA), its OCSP responder (RSA, OCSP-signing EKU), a good leaf and a revoked one
    whose AIA names the responder at url; files for openssl and for a TLS server."""

    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url
        self.ca_key = ec_key()
        self.ca = issue("stud test CA", self.ca_key, ca=True, days=60)
        self.resp_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.responder = issue("stud test OCSP responder", self.resp_key, (self.ca, self.ca_key),
                               eku=[ExtendedKeyUsageOID.OCSP_SIGNING])
        self.leaf_key, self.bad_key = ec_key(), ec_key()
        self.leaf = issue("localhost", self.leaf_key, (self.ca, self.ca_key), url=url)
        self.revoked = issue("revoked.test", self.bad_key, (self.ca, self.ca_key), url=url)
        self.revoked_at = f"{utcnow() - timedelta(hours=1):%y%m%d%H%M%S}Z,keyCompromise"
        self.index({self.revoked.serial_number})
        (root / "ca.pem").write_bytes(pem(self.ca))
        (root / "responder.pem").write_bytes(pem(self.responder))
        (root / "responder.key").write_bytes(pem(self.resp_key))
        self.leaf_pem = root / "leaf.pem"  # as stud and hitch read a pem-file: cert, key, chain
        self.leaf_pem.write_bytes(pem(self.leaf, self.leaf_key, self.ca))
        self.revoked_pem = root / "revoked.pem"
        self.revoked_pem.write_bytes(pem(self.revoked, self.bad_key, self.ca))

    def index(self, revoked: set[int]) -> None:
        """The responder's index.txt, with these serials revoked. Replaced whole: the
        responder reads it per request, maybe while it is written."""
        tmp = self.root / "index.txt.new"
        tmp.write_text("".join(index_line(c, self.revoked_at if c.serial_number in revoked
                                          else None) for c in (self.leaf, self.revoked)))
        os.replace(tmp, self.root / "index.txt")

    def openssl_args(self) -> list[str]:
        return ["openssl", "ocsp", "-index", str(self.root / "index.txt"),
                "-CA", str(self.root / "ca.pem"), "-rsigner", str(self.root / "responder.pem"),
                "-rkey", str(self.root / "responder.key")]


def response(pki: PKI, cert: x509.Certificate, *, status=GOOD, this: datetime | None = None,
             nxt: datetime | None | str = "1h", signer: tuple[x509.Certificate, Key] | None = None,
             certs: list[x509.Certificate] | None = None, by_name: bool = False,
             issuer: x509.Certificate | None = None) -> bytes:
    """A DER response built with cryptography (signed by the CA itself unless signer)."""
    this = this or utcnow() - timedelta(minutes=1)
    nxt = this + timedelta(hours=1) if nxt == "1h" else nxt
    signer_cert, signer_key = signer or (pki.ca, pki.ca_key)
    rev = (utcnow() - timedelta(hours=2), x509.ReasonFlags.superseded) if status == REVOKED \
        else (None, None)
    b = (x509_ocsp.OCSPResponseBuilder()
         .add_response(cert=cert, issuer=issuer or pki.ca, algorithm=hashes.SHA1(),
                       cert_status=status, this_update=this, next_update=nxt,
                       revocation_time=rev[0], revocation_reason=rev[1])
         .responder_id(x509_ocsp.OCSPResponderEncoding.NAME if by_name else
                       x509_ocsp.OCSPResponderEncoding.HASH, signer_cert))
    if certs:
        b = b.certificates(certs)
    return b.sign(signer_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


# -- the responder --------------------------------------------------------------------------
Answer = Callable[[bytes], tuple[int, str, bytes]]


@dataclass
class Responder:
    """HTTP on 127.0.0.1 in front of `openssl ocsp -index ... -reqin -respout` run per request:
    OpenSSL's responder logic and signature, over a loopback socket (openssl's own -port
    listens on every interface, [::]). ``answer`` replaces it for the fault cases; ``drip``
    sends the answer a byte at a time, that many seconds apart."""

    pki: PKI | None = None
    extra: list[str] = field(default_factory=list)
    nmin: int | None = 60  # nextUpdate this many minutes on; None: none
    answer: Answer | None = None
    drip: float = 0.0
    seen: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(min(int(self.headers.get("Content-Length", 0)), 65536))
                owner.seen.append({k.lower(): v for k, v in self.headers.items()})
                code, ctype, data = (owner.answer or owner.openssl)(body)
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                drip = owner.drip
                try:
                    for chunk in ([data[i:i + 1] for i in range(len(data))] if drip else [data]):
                        self.wfile.write(chunk)
                        self.wfile.flush()
                        time.sleep(drip)
                except OSError:
                    pass  # the client gave up (what the drip is for)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()
        self.n = itertools.count()

    def openssl(self, req: bytes) -> tuple[int, str, bytes]:
        assert self.pki is not None
        n = next(self.n)
        reqf, respf = self.pki.root / f"req{n}.der", self.pki.root / f"resp{n}.der"
        reqf.write_bytes(req)
        r = run_tool([*self.pki.openssl_args(), "-reqin", str(reqf), "-respout", str(respf),
                      *(["-nmin", str(self.nmin)] if self.nmin else []), *self.extra],
                     timeout=T, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return 200, "application/ocsp-response", respf.read_bytes()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(T)


def fetched(pki: PKI, cert: x509.Certificate) -> bytes:
    return ocsp.fetch(pki.url, ocsp.request_der(cert, pki.ca), 2.0, T)
