"""TLS contexts: the settings of a server or client context (protocols, ciphers, groups,
ALPN, safety options), and the OpenSSL engine. Which certificate serves where is stud.certs'.
"""

from __future__ import annotations

import ssl

from stud import tickets
from stud.config import Config, ConfigError, Pem
from stud.log import log

try:
    from stud import sslext
except ImportError as e:  # an OpenSSL or CPython build stud's OpenSSL calls were not written for
    sslext = None
    SSLEXT_MISSING = str(e)
else:
    SSLEXT_MISSING = ""

# Mozilla's intermediate groups: P-384 too, or clients that offer only it are shut out.
DEFAULT_GROUPS = "X25519:P-256:P-384"
# Mozilla's "intermediate" TLS 1.2 list: forward secrecy and AEAD only (no CBC, no RSA kx).
DEFAULT_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                   "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                   "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
                   "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:"
                   "DHE-RSA-CHACHA20-POLY1305")
VERSIONS = {"TLSv1.0": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1,
            "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def _protocol_range(cfg: Config) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    versions = sorted(VERSIONS[t] for t in cfg.tls_protos.replace(",", " ").split())
    return versions[0], versions[-1]


def server_context(cfg: Config, pem: Pem | None) -> ssl.SSLContext:
    """One server context with every setting of cfg, loaded from ``pem``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    apply_common(ctx, cfg)
    ctx.options |= ssl.OP_SINGLE_ECDH_USE | ssl.OP_SINGLE_DH_USE
    if cfg.shared_cache_listen:  # as stud: other hosts cannot read this host's tickets
        ctx.options |= ssl.OP_NO_TICKET
    resumption(ctx, cfg)
    if cfg.prefer_server_ciphers:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:  # CPython turns it on by default; stud's default (and -O's meaning) is off
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    set_groups(ctx, cfg.ec_curve)
    if cfg.alpn_protos:
        ctx.set_alpn_protocols([p.strip() for p in cfg.alpn_protos.split(",") if p.strip()])
    if pem:
        try:
            ctx.load_cert_chain(pem.cert, pem.key)
        except ssl.SSLError as e:
            raise ConfigError(f"pem-file '{pem}': {e.reason or e}") from None
        with open(pem.cert, "rb") as f:
            has_dh = b"BEGIN DH PARAMETERS" in f.read()
        if has_dh:
            try:
                ctx.load_dh_params(pem.cert)
            except ssl.SSLError as e:
                raise ConfigError(f"pem-file '{pem}': bad DH parameters: {e.reason}") from None
    return ctx


def resumption(ctx: ssl.SSLContext, cfg: Config) -> None:
    """Session lifetime, session ID context and the ticket keys (stud.tickets' ring)."""
    if sslext is None:
        if cfg.session_id_context:
            raise ConfigError(f"session-id-context: not available here ({SSLEXT_MISSING})")
        return
    sslext.set_session_timeout(ctx, cfg.session_timeout)
    if cfg.session_id_context:
        sslext.set_session_id_context(ctx, cfg.session_id_context.encode())
    tickets.attach(ctx)


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


def load_engine(name: str) -> None:
    """-e/--ssl-engine, for the whole process (OpenSSL's engine choice is global)."""
    if sslext is None:
        raise ConfigError(f"ssl-engine: not available here ({SSLEXT_MISSING})")
    try:
        sslext.load_engine(name)
    except ValueError as e:
        raise ConfigError(f"ssl-engine: {e}") from None
    log.info(f"{{core}} will use OpenSSL engine {name}.")


def client_context(cfg: Config) -> ssl.SSLContext:
    """--client mode: TLS towards the backend. Like stud, the backend is not verified."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    apply_common(ctx, cfg)
    if cfg.pem_file:  # optional here: presented as the client certificate
        try:
            ctx.load_cert_chain(cfg.pem_file[-1].cert, cfg.pem_file[-1].key)
        except ssl.SSLError as e:
            raise ConfigError(f"pem-file '{cfg.pem_file[-1]}': {e.reason or e}") from None
    return ctx
