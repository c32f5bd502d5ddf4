"""TLS contexts and the SNI table.

Every context is built in the master before fork, so all workers share the session-ticket keys
(tickets resume on any worker). One context per PEM file; the last PEM listed is the default.
SNI names come from the DNS subjectAltNames, else the CN; exact names win over a one-label
wildcard; no match (or no SNI) gives the default, or the unrecognized_name alert with
--sni-nomatch-abort.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from stud.config import Config, ConfigError
from stud.log import log

try:
    from stud import sslext
except ImportError as e:  # an OpenSSL or CPython build stud's OpenSSL calls were not written for
    sslext = None
    SSLEXT_MISSING = str(e)
else:
    SSLEXT_MISSING = ""

DEFAULT_GROUPS = "X25519:P-256"
# Mozilla's "intermediate" TLS 1.2 list: forward secrecy and AEAD only (no CBC, no RSA kx).
DEFAULT_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                   "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                   "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
                   "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:"
                   "DHE-RSA-CHACHA20-POLY1305")
VERSIONS = {"TLSv1.0": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1,
            "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
KEY_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----",
                       re.S)


@dataclass
class Cert:
    path: str
    names: list[str]
    digest: bytes  # of the PEM file: unchanged files keep their ticket keys across reloads
    context: ssl.SSLContext


def read_pem(path: str) -> tuple[list[str], bytes]:
    """Check a PEM holds a certificate and its matching unencrypted key.

    Returns its SNI names and a digest of the file.
    """
    def bad(why: str) -> ConfigError:
        return ConfigError(f"pem-file '{path}': {why}")

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise bad(e.strerror or "unreadable") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        if b"-----BEGIN CERTIFICATE-----" not in data:
            raise bad("no certificate found") from None
        raise bad("malformed PEM: a certificate or the key block cannot be read") from None
    m = KEY_BLOCK.search(data)
    if m is None:
        raise bad("no private key found")
    if m.group(1) == b"ENCRYPTED ":
        raise bad("the private key is encrypted (stud needs it unencrypted)")
    try:
        key = serialization.load_pem_private_key(m.group(0), password=None)
    except (ValueError, TypeError, NotImplementedError):
        # The reason from the parser may quote key material: keep the message generic.
        raise bad("the private key cannot be parsed") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if key.public_key().public_bytes(enc, pub) != certs[0].public_key().public_bytes(enc, pub):
        raise bad("the private key does not match the (first) certificate")
    return cert_names(certs[0]), hashlib.sha256(data).digest()


def cert_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
        if names:
            return [n.lower() for n in names]
    except x509.ExtensionNotFound:
        pass
    return [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def _protocol_range(cfg: Config) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    versions = sorted(VERSIONS[t] for t in cfg.tls_protos.replace(",", " ").split())
    return versions[0], versions[-1]


def server_context(cfg: Config, pem: str | None) -> ssl.SSLContext:
    """One server context with every setting of cfg, loaded from ``pem``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    apply_common(ctx, cfg)
    ctx.options |= ssl.OP_SINGLE_ECDH_USE | ssl.OP_SINGLE_DH_USE
    if cfg.shared_cache_listen:  # as stud: other hosts cannot read this host's tickets
        ctx.options |= ssl.OP_NO_TICKET
    if cfg.prefer_server_ciphers:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:  # CPython turns it on by default; stud's default (and -O's meaning) is off
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    set_groups(ctx, cfg.ec_curve)
    if cfg.alpn_protos:
        ctx.set_alpn_protocols([p.strip() for p in cfg.alpn_protos.split(",") if p.strip()])
    if pem:
        try:
            ctx.load_cert_chain(pem)
        except ssl.SSLError as e:
            raise ConfigError(f"pem-file '{pem}': {e.reason or e}") from None
        with open(pem, "rb") as f:
            has_dh = b"BEGIN DH PARAMETERS" in f.read()
        if has_dh:
            try:
                ctx.load_dh_params(pem)
            except ssl.SSLError as e:
                raise ConfigError(f"pem-file '{pem}': bad DH parameters: {e.reason}") from None
    return ctx


def apply_common(ctx: ssl.SSLContext, cfg: Config) -> None:
    """Protocol range, ciphers and safety options shared by server and client contexts."""
    ctx.minimum_version, ctx.maximum_version = _protocol_range(cfg)
    # No compression (CRIME), no client-initiated renegotiation (CVE-2009-3555, THC DoS).
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # A FIN without close_notify is a half-close too; without this OpenSSL 3 fails the
    # connection with a decode_error alert and the reply could never be sent.
    ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    if cfg.ciphers or ctx.minimum_version > ssl.TLSVersion.TLSv1_1:
        try:
            ctx.set_ciphers(cfg.ciphers or DEFAULT_CIPHERS)
        except ssl.SSLError:
            raise ConfigError(f"ciphers: invalid cipher string '{cfg.ciphers}'") from None
    if cfg.ciphersuites:
        if sslext is None:
            raise ConfigError(f"ciphersuites: not available here ({SSLEXT_MISSING})")
        try:
            sslext.set_ciphersuites(ctx, cfg.ciphersuites)
        except ValueError as e:
            raise ConfigError(f"ciphersuites: {e}") from None


def set_groups(ctx: ssl.SSLContext, groups: str) -> None:
    """ec-curve: the ECDHE groups, a name or a ':' list (a list needs sslext; without it the
    default list is OpenSSL's own, which holds X25519 and P-256 too)."""
    if sslext is not None:
        try:
            sslext.set_groups(ctx, groups or DEFAULT_GROUPS)
        except ValueError as e:
            raise ConfigError(f"ec-curve: {e}") from None
    elif ":" in groups:
        raise ConfigError(f"ec-curve: a list of groups is not available here ({SSLEXT_MISSING})")
    elif groups:
        try:
            ctx.set_ecdh_curve(groups)
        except ValueError as e:
            raise ConfigError(f"ec-curve: {e}") from None


@dataclass
class SniTable:
    """Certificates by name: exact names, then ``*.suffix`` wildcards covering one label."""

    certs: list[Cert]
    exact: dict[str, ssl.SSLContext] = field(default_factory=dict)
    wild: dict[str, ssl.SSLContext] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for cert in self.certs:  # listing order: the first PEM with a name keeps it, as in stud
            for name in cert.names:
                table, key = (self.wild, name[2:]) if name.startswith("*.") else (self.exact, name)
                if key in table:
                    log.info(f"{{core}} SNI name '{name}' of '{cert.path}' already served by an "
                             "earlier pem-file; ignored")
                else:
                    table[key] = cert.context

    @property
    def default(self) -> ssl.SSLContext:
        return self.certs[-1].context

    def lookup(self, name: str) -> ssl.SSLContext | None:
        name = name.lower().rstrip(".")
        ctx = self.exact.get(name)
        if ctx is None:
            _, dot, parent = name.partition(".")
            ctx = self.wild.get(parent) if dot else None
        return ctx


def _accept_name(_sslsock: ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext) -> None:
    return None


def sni_hook(ctx: ssl.SSLContext) -> Callable | None:
    """What a connection's SNI name must be given to: ctx's callback, unless it only accepts
    the name (one certificate), which stud._flow does by itself."""
    cb = ctx.sni_callback
    return None if cb is _accept_name else cb


def build(cfg: Config) -> SniTable:
    """Load every PEM and build the contexts, nothing else; raises ConfigError naming the
    failing file."""
    certs = [Cert(pem, *read_pem(pem), server_context(cfg, pem)) for pem in cfg.pem_file]
    table = SniTable(certs)
    abort = cfg.sni_nomatch_abort

    def on_sni(sslsock: ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext) -> int | None:
        if name is None:
            return None
        ctx = table.lookup(name)
        if ctx is not None:
            if ctx is not table.default:
                sslsock.context = ctx
        elif abort:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        return None

    # With one certificate there is nothing to choose: a callback that only accepts the name
    # (so that OpenSSL keeps it in TLS 1.2 sessions; the relay reads it after the handshake).
    table.default.sni_callback = on_sni if len(certs) > 1 or abort else _accept_name
    return table


def load_engine(name: str) -> None:
    """-e/--ssl-engine, for the whole process (OpenSSL's engine choice is global)."""
    if sslext is None:
        raise ConfigError(f"ssl-engine: not available here ({SSLEXT_MISSING})")
    try:
        sslext.load_engine(name)
    except ValueError as e:
        raise ConfigError(f"ssl-engine: {e}") from None
    log.info(f"{{core}} will use OpenSSL engine {name}.")


def carry_ticket_keys(old: SniTable, new: SniTable) -> None:
    """Give each unchanged certificate its previous session-ticket keys (reload)."""
    if sslext is None:
        return  # (new keys: clients make a full handshake once after a reload)
    before = {(c.path, c.digest): c.context for c in old.certs}
    for cert in new.certs:
        ctx = before.get((cert.path, cert.digest))
        if ctx is not None:
            sslext.set_ticket_keys(cert.context, sslext.get_ticket_keys(ctx))


def client_context(cfg: Config) -> ssl.SSLContext:
    """--client mode: TLS towards the backend. Like stud, the backend is not verified."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    apply_common(ctx, cfg)
    if cfg.pem_file:  # optional here: presented as the client certificate
        try:
            ctx.load_cert_chain(cfg.pem_file[-1])
        except ssl.SSLError as e:
            raise ConfigError(f"pem-file '{cfg.pem_file[-1]}': {e.reason or e}") from None
    return ctx
