"""The client-certificate (mTLS) tests' PKI, made with cryptography: a root CA, an intermediate
signed by it, an unrelated "other" root, client leaves (good, expired, revoked, self-signed,
other-CA'd) and CRLs, written as PEM/DER files in a directory. `make(dir)` is the entry point;
`crl()` issues more CRLs (expired, empty, rewritten) from the objects it returns.

Files in dir: root.pem, inter.pem, other-ca.pem; ca-bundle.pem (root + intermediate) and
ca-inter.pem (intermediate only); per client NAME: NAME.pem (cert + key), NAME.crt, NAME.key;
inter.crl (the intermediate's CRL, listing `revoked`), root.crl (the root's, empty: it covers
the intermediate), crls.pem (both)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID
from ocsp_pki import Key, ec_key, pem, utcnow

CLIENT_CN = "client.example"
CLIENT_ORG = "Example"
CLIENT_URI = "spiffe://example.org/ns/default/sa/client"
CLIENT_DNS = "client.example"
CLIENTS = ("good", "expired", "revoked", "selfsigned", "other")


@dataclass(frozen=True)
class Party:
    """A certificate and its private key (an issuer, or a client)."""

    cert: x509.Certificate
    key: Key


def cert(subject: x509.Name | str, key: Key, issuer: Party | None = None, *, ca: bool = False,
         start: datetime | None = None, end: datetime | None = None,
         cdp: Iterable[str] = (), client: bool = False) -> x509.Certificate:
    """A certificate for subject (a CN, or a whole name) and key's public key, signed by issuer
    (else self-signed), valid from start (5 min ago) to end (30 days on). cdp: the URIs of its
    CRL distribution point (any scheme, for the parsing tests). client: clientAuth EKU and the
    client SANs (URI + DNS)."""
    name = subject if isinstance(subject, x509.Name) else \
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    signer_key = issuer.key if issuer else key
    now = utcnow()
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer.cert.subject if issuer else name).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(start or now - timedelta(minutes=5))
         .not_valid_after(end or now + timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
             signer_key.public_key()), False))
    if ca:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    if client:
        b = (b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
             .add_extension(x509.SubjectAlternativeName([
                 x509.UniformResourceIdentifier(CLIENT_URI), x509.DNSName(CLIENT_DNS)]), False))
    uris = list(cdp)
    if uris:
        b = b.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(u) for u in uris], relative_name=None,
            reasons=None, crl_issuer=None)]), False)
    return b.sign(signer_key, hashes.SHA256())


def client_name(cn: str = CLIENT_CN) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, CLIENT_ORG),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def write_client(party: Party, stem: Path, *chain: x509.Certificate) -> Path:
    """stem.pem (cert, key, chain: one file), stem.crt (cert, chain) and stem.key; stem.pem."""
    stem.with_suffix(".crt").write_bytes(pem(party.cert, *chain))
    stem.with_suffix(".key").write_bytes(pem(party.key))
    stem.with_suffix(".pem").write_bytes(pem(party.cert, party.key, *chain))
    return stem.with_suffix(".pem")


def crl(issuer: Party, revoked_serials: Iterable[int] = (), this_update: datetime | None = None,
        next_update: datetime | None = None, path: Path | None = None, fmt: str = "pem", *,
        number: int = 1) -> x509.CertificateRevocationList:
    """A CRL signed by issuer listing these serials (revoked an hour before this_update),
    thisUpdate (default 5 min ago) to nextUpdate (default a day on; in the past: an expired
    CRL), CRL number `number`; written to path (replaced whole) as PEM or DER if given."""
    this_update = this_update or utcnow() - timedelta(minutes=5)
    b = (x509.CertificateRevocationListBuilder().issuer_name(issuer.cert.subject)
         .last_update(this_update).next_update(next_update or this_update + timedelta(days=1))
         .add_extension(x509.CRLNumber(number), False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
             issuer.key.public_key()), False))
    for serial in revoked_serials:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                      .revocation_date(this_update - timedelta(hours=1)).build())
    out = b.sign(issuer.key, hashes.SHA256())
    if path is not None:
        enc = {"pem": serialization.Encoding.PEM, "der": serialization.Encoding.DER}[fmt]
        tmp = path.with_name(path.name + ".new")
        tmp.write_bytes(out.public_bytes(enc))
        tmp.replace(path)
    return out


@dataclass
class ClientPKI:
    """What make() wrote: the parties (for more CRLs and certificates) and the file paths."""

    dir: Path
    cdp: str | None
    root: Party
    inter: Party
    other_ca: Party
    clients: dict[str, Party]  # CLIENTS -> the leaf and its key

    def path(self, name: str, suffix: str = ".pem") -> Path:
        return self.dir / f"{name}{suffix}"

    @property
    def ca_bundle(self) -> Path:  # root + intermediate
        return self.path("ca-bundle")

    @property
    def ca_inter(self) -> Path:  # the intermediate alone
        return self.path("ca-inter")

    @property
    def inter_crl(self) -> Path:
        return self.path("inter", ".crl")

    @property
    def root_crl(self) -> Path:
        return self.path("root", ".crl")

    @property
    def crls(self) -> Path:  # both CRLs in one PEM
        return self.path("crls")

    def client(self, name: str) -> Path:
        """NAME.pem: the client's certificate and key (NAME.crt and NAME.key beside it)."""
        return self.path(name)

    def __getattr__(self, name: str) -> Party:  # pki.good, pki.revoked, ...
        if name in CLIENTS:
            return self.clients[name]
        raise AttributeError(name)

    def write_crls(self, inter_revoked: Iterable[int] | None = None,
                   root_revoked: Iterable[int] = (), **kw) -> None:
        """(Re)write inter.crl, root.crl and crls.pem (default: `revoked` listed by the
        intermediate, nothing by the root); kw: crl()'s this_update, next_update, number."""
        revoked = [self.clients["revoked"].cert.serial_number] if inter_revoked is None \
            else list(inter_revoked)
        a = crl(self.inter, revoked, path=self.inter_crl, **kw)
        b = crl(self.root, root_revoked, path=self.root_crl, **kw)
        tmp = self.crls.with_name("crls.pem.new")
        tmp.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (a, b)))
        tmp.replace(self.crls)


def cdp_url(cdp: str | None, issuer: str) -> list[str]:
    """The distribution point of the CRL issuer `issuer` ("root", "inter") under base URL cdp."""
    return [f"{cdp.rstrip('/')}/{issuer}.crl"] if cdp else []


def make(dir: Path, cdp: str | None = None, *, expired_days: float = 1) -> ClientPKI:
    """The whole PKI in dir. cdp: a base URL (http://127.0.0.1:PORT): then the intermediate
    names {cdp}/root.crl as its CRL distribution point and the leaves {cdp}/inter.crl (a root
    has none: nothing above it revokes it)."""
    dir.mkdir(parents=True, exist_ok=True)
    now = utcnow()
    root_key = ec_key()
    root = Party(cert("stud test client root CA", root_key, ca=True,
                      end=now + timedelta(days=60)), root_key)
    inter_key = ec_key()
    inter = Party(cert("stud test client intermediate CA", inter_key, root, ca=True,
                       end=now + timedelta(days=45), cdp=cdp_url(cdp, "root")), inter_key)
    other_key = ec_key()
    other_ca = Party(cert("stud test other CA", other_key, ca=True), other_key)

    def leaf(issuer: Party | None, **kw) -> Party:
        key = ec_key()
        return Party(cert(client_name(), key, issuer, client=True,
                          cdp=cdp_url(cdp, "inter") if issuer is inter else (), **kw), key)

    clients = {
        "good": leaf(inter),
        "expired": leaf(inter, start=now - timedelta(days=30),
                        end=now - timedelta(days=expired_days)),
        "revoked": leaf(inter),
        "selfsigned": leaf(None),
        "other": leaf(other_ca),
    }
    pki = ClientPKI(dir, cdp, root, inter, other_ca, clients)
    for name, party in (("root", root), ("inter", inter), ("other-ca", other_ca)):
        pki.path(name).write_bytes(pem(party.cert))
    pki.ca_bundle.write_bytes(pem(root.cert, inter.cert))
    pki.ca_inter.write_bytes(pem(inter.cert))
    for name, party in clients.items():
        write_client(party, dir / name)
    pki.write_crls()
    return pki


def self_signed(uris: int = 1, rsa_key: bool = True, cn: str = "client Zoë") -> bytes:
    """A self-signed client certificate's DER, for the PROXY TLV tests: uris SAN URIs; with
    rsa_key, an RSA key and what a CA adds (an RSA certificate from one is well over 1 KiB,
    past what some PROXY consumers take in one TLV), else ECDSA and no more."""
    key = rsa.generate_private_key(65537, 2048) if rsa_key else ec_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(datetime(2025, 1, 1)).not_valid_after(datetime(2030, 1, 1)))
    if uris:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(f"spiffe://example.org/ns/prod/sa/service-{i:04}")
             for i in range(uris)]), critical=False)
    if rsa_key:
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        uri = x509.UniformResourceIdentifier
        b = (b.add_extension(ski, critical=False)
             .add_extension(x509.AuthorityKeyIdentifier(ski.digest, None, None), critical=False)
             .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False,
                                          False), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                            critical=False)
             .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                 [uri("http://crl.example.org/issuing-ca-2025.crl")], None, None, None)]),
                 critical=False)
             .add_extension(x509.AuthorityInformationAccess([
                 x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                        uri("http://ocsp.example.org")),
                 x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                        uri("http://ca.example.org/issuing-ca-2025.der"))]),
                 critical=False))
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
