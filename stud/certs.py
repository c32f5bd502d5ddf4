"""Certificates and SNI: which certificate each frontend serves for each name.

Every context is built in the master before fork, so all workers share the session-ticket keys
(tickets resume on any worker). The global certificates are the pem-files, in order, then the
files of pem-dir in lexicographic order; the last pem-file (else the first pem-dir file) is the
default. A frontend serves its own certificates first, then the global ones if it matches them
(hitch's match-global-certs: by default only when it has none of its own); its default is its
last own certificate, else the global default. SNI names come from the DNS subjectAltNames,
else the CN; exact names win over a one-label wildcard; no match (or no SNI) gives the default,
or the unrecognized_name alert with sni-nomatch-abort.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from stud import tls
from stud.config import Config, ConfigError, Frontend, Pem
from stud.log import log
from stud.trust import Trust, Trusts

KEY_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----",
                       re.S)
CERT_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)


@dataclass
class Cert:
    pem: Pem
    names: list[str]
    digest: bytes  # of its files: unchanged ones keep their ticket keys across reloads
    context: ssl.SSLContext
    kind: str = ""  # its key's algorithm: "rsa", "ec", ... (one context holds one of each)


def read_pem(pem: Pem) -> tuple[list[str], bytes, str]:
    """Check a certificate file holds a certificate and its matching unencrypted key (or its
    key file does). Returns its SNI names, a digest of the file(s) and the key's algorithm."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"pem-file '{pem.cert}': {why}")

    try:
        with open(pem.cert, "rb") as f:
            data = f.read()
        keydata = data
        if pem.key:
            with open(pem.key, "rb") as f:
                keydata = f.read()
    except OSError as e:
        raise bad(f"{e.filename}: {e.strerror or 'unreadable'}") from None
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        if b"-----BEGIN CERTIFICATE-----" not in data:
            raise bad("no certificate found") from None
        raise bad("malformed PEM: a certificate or the key block cannot be read") from None
    m = KEY_BLOCK.search(keydata)
    if m is None:
        raise bad("no private key found" + (f" in '{pem.key}'" if pem.key else ""))
    if m.group(1) == b"ENCRYPTED ":
        raise bad("the private key is encrypted (stud needs it unencrypted)")
    try:
        key = serialization.load_pem_private_key(m.group(0), password=None)
    except (ValueError, TypeError, NotImplementedError):
        # The reason from the parser may quote key material: keep the message generic.
        raise bad("the private key cannot be parsed") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if key.public_key().public_bytes(enc, pub) != chain[0].public_key().public_bytes(enc, pub):
        raise bad("the private key does not match the (first) certificate")
    digest = hashlib.sha256(data + (keydata if pem.key else b"")).digest()
    return cert_names(chain[0]), digest, key_kind(key)


def split_pem(pem: Pem) -> list[bytes]:
    """One PEM file with two private keys (an RSA and an ECDSA certificate for the same names,
    as HAProxy's bundles): each key with its certificate and the chain that follows it, in file
    order; a file with one key (or a separate key file): [] (it is read as it is)."""
    if pem.key:
        return []
    try:
        with open(pem.cert, "rb") as f:
            data = f.read()
    except OSError:
        return []  # (read_pem() says why)
    keys = [m.group(0) for m in KEY_BLOCK.finditer(data)]
    if len(keys) < 2:
        return []
    certs = CERT_BLOCK.findall(data)
    try:
        spki = [x509.load_pem_x509_certificate(c).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            for c in certs]
        pubs = [serialization.load_pem_private_key(k, password=None).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            for k in keys]
    except (ValueError, TypeError):
        raise ConfigError(f"pem-file '{pem.cert}': a certificate or a key cannot be read "
                          "(a file with several keys needs each unencrypted)") from None
    leaves = [i for i, k in enumerate(spki) if k in pubs]
    if len(leaves) != len(keys):
        raise ConfigError(f"pem-file '{pem.cert}': {len(keys)} private keys, but "
                          f"{len(leaves)} certificates that match one")
    ends = [*leaves[1:], len(certs)]
    return [b"\n".join(certs[i:end]) + b"\n" + keys[pubs.index(spki[i])] + b"\n"
            for i, end in zip(leaves, ends, strict=True)]


def key_kind(key: object) -> str:
    """What OpenSSL keeps one certificate of per context (it serves each client the one it
    supports): "rsa", "ec", or the key's own type for the others."""
    if isinstance(key, rsa.RSAPrivateKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ec"
    return type(key).__name__


def cert_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
        if names:
            return [n.lower() for n in names]
    except x509.ExtensionNotFound:
        pass
    return [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def pem_dir_files(cfg: Config) -> list[Pem]:
    """pem-dir's files matching pem-dir-glob, in lexicographic order (hidden files too, as
    hitch; directories and other non-files are passed over)."""
    if not cfg.pem_dir:
        return []
    try:
        names = sorted(os.listdir(cfg.pem_dir))
    except OSError as e:
        raise ConfigError(f"pem-dir '{cfg.pem_dir}': {e.strerror}") from None
    return [Pem(os.path.join(cfg.pem_dir, n)) for n in names
            if (not cfg.pem_dir_glob or fnmatch.fnmatchcase(n, cfg.pem_dir_glob))
            and os.path.isfile(os.path.join(cfg.pem_dir, n))]


@dataclass
class SniTable:
    """Certificates by name: exact names, then ``*.suffix`` wildcards covering one label."""

    certs: list[Cert]
    default: ssl.SSLContext
    trusts: Trusts = field(default_factory=Trusts)
    exact: dict[str, ssl.SSLContext] = field(default_factory=dict)
    wild: dict[str, ssl.SSLContext] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for cert in self.certs:  # listing order: the first PEM with a name keeps it, as in stud
            for name in cert.names:
                table, key = (self.wild, name[2:]) if name.startswith("*.") else (self.exact, name)
                if key in table:
                    log.info(f"{{core}} SNI name '{name}' of '{cert.pem}' already served by an "
                             "earlier pem-file; ignored")
                else:
                    table[key] = cert.context

    def lookup(self, name: str) -> ssl.SSLContext | None:
        name = name.lower().rstrip(".")
        ctx = self.exact.get(name)
        if ctx is None:
            _, dot, parent = name.partition(".")
            ctx = self.wild.get(parent) if dot else None
        return ctx

    def install(self, abort: bool) -> None:
        """Make the default context choose by SNI name (it is where every handshake starts)."""
        sid = self.trusts.sid
        # Client verification that differs between names (hitch's per pem-file setting) is
        # taken over by the connection when its name switches the context (OpenSSL copies it
        # from the first context only).
        mixed = len({sid(c.context) for c in self.certs} | {sid(self.default)}) > 1

        def on_sni(conn: object, name: str | None, _ctx: ssl.SSLContext) -> int | None:
            if name is None:
                return None
            ctx = self.lookup(name)
            if ctx is not None:
                if ctx is not self.default:
                    conn.context = ctx
                    if mixed and not tls.sslext.adopt_verify(conn.ssl, ctx, sid(ctx)):
                        return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
            elif abort:
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            return None

        # With one certificate there is nothing to choose: a callback that only accepts the
        # name (so that OpenSSL keeps it in TLS 1.2 sessions; the relay reads it afterwards).
        one = len({id(c.context) for c in self.certs}) == 1
        self.default.sni_callback = _accept_name if one and not abort else on_sni


def _accept_name(_sslsock: ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext) -> None:
    return None


def sni_hook(ctx: ssl.SSLContext) -> Callable | None:
    """What a connection's SNI name must be given to: ctx's callback, unless it only accepts
    the name (one certificate), which stud._flow does by itself."""
    cb = ctx.sni_callback
    return None if cb is _accept_name else cb


@dataclass
class Served:
    """What tls builds for a configuration: each frontend's SNI table (by address)."""

    tables: dict[object, SniTable]  # Frontend.addr -> its table
    skipped: list[str]               # pem-dir files that did not load: "path: reason"
    trusts: Trusts = field(default_factory=Trusts)  # client verification, where asked

    def certs(self) -> list[Cert]:
        seen: dict[int, Cert] = {}
        for table in self.tables.values():
            for c in table.certs:
                seen.setdefault(id(c.context), c)
        return list(seen.values())


class _Builder:
    """One context per certificate and frontend settings; one table per distinct frontend."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.contexts: dict[tuple, Cert] = {}
        self.skipped: list[str] = []
        self.trusts = Trusts()
        self.global_pems = list(cfg.pem_file)
        self.dir_pems = pem_dir_files(cfg)

    def cert(self, pem: Pem, fcfg: Config, key: tuple, skip: bool = False) -> Cert | None:
        """pem's certificate under a frontend's settings (key); skip: log and count a bad one
        instead of failing (pem-dir)."""
        k = (key, pem)
        if k not in self.contexts:
            trust = Trust.of(fcfg, pem)  # (a setting's error is not the file's: never skipped)
            try:
                names, digest, kind, ctx = self.load(pem, fcfg)
            except ConfigError as e:
                if not skip:
                    raise
                if str(e) not in self.skipped:
                    log.error(f"{{core}} skipped: {e}")
                    self.skipped.append(str(e))
                self.contexts[k] = None
            else:
                self.trusts.attach(ctx, trust)
                self.contexts[k] = Cert(pem, names, digest, ctx, kind)
        return self.contexts[k]

    @staticmethod
    def load(pem: Pem, fcfg: Config) -> tuple[list[str], bytes, str, ssl.SSLContext]:
        """pem's names, digest, key algorithm(s) and context; a file with two keys gives one
        context serving both certificates (through private copies of each part, removed at
        once: OpenSSL reads a chain file as one certificate, its chain and one key)."""
        parts = split_pem(pem)
        if not parts:
            names, digest, kind = read_pem(pem)
            return names, digest, kind, tls.server_context(fcfg, pem)
        with tempfile.TemporaryDirectory(prefix="stud-pem-") as tmp:
            got = []
            for n, part in enumerate(parts):
                path = os.path.join(tmp, f"part{n}.pem")
                with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                    f.write(part)
                got.append((Pem(path), read_pem(Pem(path))))
            if len({frozenset(names) for _, (names, _, _) in got}) > 1:
                raise ConfigError(f"pem-file '{pem.cert}': its certificates are for different "
                                  "names (two keys in one file are for one name set)")
            ctx = tls.server_context(fcfg, got[0][0])
            for part, _ in got[1:]:
                try:
                    ctx.load_cert_chain(part.cert)
                except ssl.SSLError as e:
                    raise ConfigError(f"pem-file '{pem.cert}': {e.reason or e}") from None
        digest = hashlib.sha256(b"".join(d for _, (_, d, _) in got)).digest()
        return got[0][1][0], digest, "+".join(k for _, (_, _, k) in got), ctx

    def table(self, f: Frontend, key: tuple) -> SniTable:
        """f's table; key: what makes tables alike (their contexts are shared)."""
        fcfg = self.cfg.for_frontend(f)
        own = [self.cert(p, fcfg, key) for p in f.pems]
        glob = []
        if f.global_certs:
            glob = [self.cert(p, fcfg, key) for p in self.global_pems]
            glob += [c for p in self.dir_pems if (c := self.cert(p, fcfg, key, skip=True))]
            if not glob and not own:
                raise ConfigError(f"frontend {f.addr}: no certificate loaded "
                                  f"(pem-dir '{self.cfg.pem_dir}': none valid)")
        if own:
            default = own[-1]
        else:
            default = glob[len(self.global_pems) - 1] if self.global_pems else glob[0]
        pair_twins(own + glob)
        return SniTable(own + glob, default.context, self.trusts)


def pair_twins(certs: list[Cert]) -> None:
    """Certificates for the same names with keys of different algorithms (an RSA and an ECDSA
    one, say) share one context: OpenSSL then serves each client the one it supports (before,
    the first listed won and the other was never served)."""
    by_names: dict[frozenset, list[Cert]] = {}
    for c in certs:
        group = by_names.setdefault(frozenset(c.names), [])
        first = next((g for g in group if g.context is not c.context), None)
        if first is not None and c.kind not in {g.kind for g in group}:
            try:
                first.context.load_cert_chain(c.pem.cert, c.pem.key)
            except ssl.SSLError as e:
                raise ConfigError(f"pem-file '{c.pem}': {e.reason or e}") from None
            log.info(f"{{core}} '{c.pem}' ({c.kind}) served with '{first.pem}' "
                     f"({first.kind}) for the same names")
            c.context = first.context
        group.append(c)


def build(cfg: Config) -> Served:
    """Load every certificate and build each frontend's contexts, nothing else; raises
    ConfigError naming the failing file (a pem-dir file that fails is skipped instead)."""
    b = _Builder(cfg)
    tables: dict[object, SniTable] = {}
    by_key: dict[tuple, SniTable] = {}
    for f in cfg.frontend:
        fcfg = cfg.for_frontend(f)
        key = (f.pems, f.global_certs, fcfg.tls_settings(), fcfg.sni_nomatch_abort)
        if key not in by_key:  # frontends alike share a table, and its contexts
            by_key[key] = b.table(f, key)
            by_key[key].install(fcfg.sni_nomatch_abort)
        tables[f.addr] = by_key[key]
    return Served(tables, b.skipped, b.trusts)


def carry_ticket_keys(old: Served, new: Served) -> None:
    """Give each unchanged certificate its previous session-ticket keys (reload)."""
    if tls.sslext is None:
        return  # (new keys: clients make a full handshake once after a reload)
    before = {(c.pem, c.digest): c.context for c in old.certs()}
    for cert in new.certs():
        ctx = before.get((cert.pem, cert.digest))
        if ctx is not None:
            tls.sslext.set_ticket_keys(cert.context, tls.sslext.get_ticket_keys(ctx))
