"""Client-certificate trust: each client-verify setting's CA certificates and CRLs, put in the
contexts that use it, and kept current. The master reads a changed CRL file again, checks it
and hands the new CRLs to the running workers (a memfd over their control channel: a CRL can
be megabytes), which swap their contexts' stores without a reload; a CRL past its nextUpdate
stays in place, so the clients it covers are refused ("fail closed").
"""

from __future__ import annotations

import hashlib
import json
import ssl
from base64 import b64decode, b64encode
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from stud import crl, crlfetch
from stud.config import Config, ConfigError, Pem, file_stamp
from stud.fetcher import Fetcher
from stud.log import log
from stud.tls import SSLEXT_MISSING, sslext

MODES = {"optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
# Contexts that verify no client keep CPython's own session ID context.
NO_VERIFY_SID = b"Python"


@dataclass(frozen=True)
class Trust:
    """One client-verify setting, as a frontend or a pem-file block resolves it."""

    mode: str
    ca: str
    depth: int
    crls: tuple[str, ...]
    crl_check: str
    fetch: bool = False                  # --crl-fetch
    fetch_urls: tuple[str, ...] = ()     # crl-fetch-url: besides the distribution points
    interval: float = crl.REFRESH_INTERVAL

    @classmethod
    def of(cls, cfg: Config, pem: Pem | None) -> Trust | None:
        """The setting that applies to pem under cfg (a frontend's): the pem-file block's,
        else the frontend's, else the global one; None when clients are not verified."""
        mode = (pem and pem.client_verify) or cfg.client_verify
        if mode == "none":
            return None
        ca = (pem and pem.client_verify_ca) or cfg.client_verify_ca
        if not ca:
            raise ConfigError(f"client-verify = {mode} needs client-verify-ca (the CA "
                              "certificates client certificates must chain to)")
        return cls(mode, ca, cfg.client_verify_depth, tuple(cfg.client_verify_crl),
                   cfg.client_verify_crl_check, cfg.crl_fetch, tuple(cfg.crl_fetch_url),
                   cfg.crl_refresh_interval)

    def key(self) -> str:
        """How the master and the workers name it in messages."""
        return json.dumps([self.mode, self.ca, self.depth, self.crls, self.crl_check,
                           self.fetch, self.fetch_urls])


@dataclass
class Store:
    """A Trust's CA certificates and current CRLs, and the contexts that verify with them."""

    trust: Trust
    cas: list[x509.Certificate]
    sid: bytes
    crls: list[bytes] = field(default_factory=list)  # DER: in use
    file_crls: list[bytes] = field(default_factory=list)  # the good ones last read
    urls: list[str] = field(default_factory=list)  # --crl-fetch's sources
    stamps: dict[str, tuple] = field(default_factory=dict)
    expired: set[bytes] = field(default_factory=set)  # CRLs said to be expired (once each)
    contexts: list[ssl.SSLContext] = field(default_factory=list)

    @property
    def cas_der(self) -> list[bytes]:
        return [c.public_bytes(Encoding.DER) for c in self.cas]

    def apply(self, ctx: ssl.SSLContext) -> None:
        """Put this trust into ctx: its mode, CA names, depth, CRL checks and store."""
        ctx.verify_mode = MODES[self.trust.mode]
        if self.trust.crls or self.urls:
            ctx.verify_flags |= (ssl.VERIFY_CRL_CHECK_CHAIN if self.trust.crl_check == "chain"
                                 else ssl.VERIFY_CRL_CHECK_LEAF)
        cas = self.cas_der
        sslext.set_client_verify(ctx, cas, self.trust.depth, self.sid)
        sslext.set_verify_store(ctx, cas, self.crls)

    def read_crls(self, strict: bool) -> bool:
        """Read the CRL files again if any changed; True if the CRLs changed. A file that does
        not load or check is an error at start (strict), else logged, its CRLs kept as they
        were."""
        stamps = {p: file_stamp(p) for p in self.trust.crls}
        if stamps == self.stamps:
            return False
        ders: list[bytes] = []
        for path in self.trust.crls:
            try:
                ders += self._checked(path)
            except (OSError, ValueError) as e:
                why = e.strerror if isinstance(e, OSError) else str(e)
                if strict:
                    raise ConfigError(f"client-verify-crl '{path}': {why}") from None
                log.error(f"{{core}} client-verify-crl '{path}': {why}; keeping the CRLs "
                          "last read")
                return False
        self.stamps = stamps
        if ders == self.file_crls:
            return False
        self.file_crls = ders
        return self.refresh()

    def refresh(self) -> bool:
        """The CRLs in use: the files', then the last good download of each source; True if
        they changed."""
        crls = self.file_crls + [d for u in self.urls if (d := crlfetch.source(u).der)]
        changed, self.crls = crls != self.crls, crls
        return changed

    def _checked(self, path: str) -> list[bytes]:
        with open(path, "rb") as f:
            data = f.read()
        out = []
        now = datetime.now(UTC)
        for one in crl.load(data, path):
            problem = crl.check(one, self.cas, now, ca_source=f"'{self.trust.ca}'")
            if problem and not problem.expired:  # (expired: loaded, and it still refuses)
                raise ValueError(str(problem))
            out.append(one.public_bytes(Encoding.DER))
        return out

    def expired_now(self, now: datetime) -> list[str]:
        """The CRLs whose nextUpdate passed (each said once): they still refuse the clients
        they cover, and nothing new can come from their file until it is replaced."""
        out = []
        for der in self.crls:
            one = x509.load_der_x509_crl(der)
            problem = None if der in self.expired else crl.check(one, self.cas, now)
            if problem and problem.expired:
                self.expired.add(der)
                out.append(f"CRL of '{one.issuer.rfc4514_string()}' (in "
                           f"{', '.join(self.trust.crls)}) expired at "
                           f"{one.next_update_utc:%Y-%m-%dT%H:%M:%SZ}: its clients are refused "
                           "until a newer one is read")
        return out


class Trusts:
    """The stores of a generation's contexts, by Trust."""

    def __init__(self) -> None:
        self.stores: dict[Trust, Store] = {}
        self.sids: dict[int, bytes] = {}  # id(context) -> its session ID context

    def attach(self, ctx: ssl.SSLContext, trust: Trust | None) -> None:
        """Make ctx verify clients as trust says (None: not at all)."""
        if trust is None:
            self.sids[id(ctx)] = NO_VERIFY_SID
            return
        if sslext is None:
            raise ConfigError(f"client-verify: not available here ({SSLEXT_MISSING})")
        store = self.stores.get(trust)
        if store is None:
            store = self.stores[trust] = _new_store(trust)
        store.apply(ctx)
        store.contexts.append(ctx)
        self.sids[id(ctx)] = store.sid

    def sid(self, ctx: ssl.SSLContext) -> bytes:
        return self.sids.get(id(ctx), NO_VERIFY_SID)

    @property
    def fetching(self) -> bool:
        return any(s.urls for s in self.stores.values())

    def tick(self, fetcher: Fetcher | None) -> list[tuple[str, list[bytes]]]:
        """The master, once a second: CRL files read again where they changed, downloads that
        are due asked of fetcher, expired CRLs said once. Returns (trust key, CRLs) for the
        running workers (also set on the master's contexts, for workers forked later)."""
        out, now = [], datetime.now(UTC)
        for trust, store in self.stores.items():
            if store.read_crls(strict=False):
                log.info(f"{{core}} client-verify-crl: {len(store.file_crls)} CRL(s) now in "
                         f"use from {', '.join(trust.crls)}")
                out.append(self._push(store))
            for line in store.expired_now(now):
                log.error(f"{{core}} client-verify-crl: {line}")
            for url in store.urls if fetcher else ():
                src = crlfetch.source(url)
                if not src.pending and src.due <= now:
                    src.pending = True
                    fetcher.ask(url, url)
        return out

    def receive(self, answers: list[tuple[str, bytes | None, str]],
                ) -> list[tuple[str, list[bytes]]]:
        """The master: what the CRL fetcher answered; as tick()."""
        out, now = [], datetime.now(UTC)
        for url, body, error in answers:
            src = crlfetch.source(url)
            src.pending = False
            users = [s for s in self.stores.values() if url in s.urls]
            if not users:
                continue  # (a source a reload dropped)
            if body is None:
                src.failed(error, now, users[0].trust.interval)
            elif src.took(body, [c for s in users for c in s.cas], now,
                          users[0].trust.interval):
                out += [self._push(s) for s in users if s.refresh()]
        return out

    @staticmethod
    def _push(store: Store) -> tuple[str, list[bytes]]:
        store.refresh()
        for ctx in store.contexts:
            sslext.set_verify_store(ctx, store.cas_der, store.crls)
        return store.trust.key(), store.crls

    def update(self, key: str, crls: list[bytes]) -> None:
        """A worker: the master's new CRLs for the trust named key."""
        for trust, store in self.stores.items():
            if trust.key() == key:
                store.crls = crls
                for ctx in store.contexts:
                    sslext.set_verify_store(ctx, store.cas_der, crls)

    def crl_gauges(self) -> dict[str, tuple[int, float, float]]:
        """Per CRL in use (by issuer): entries, its age (since thisUpdate) and the seconds
        until its nextUpdate (negative: past; 0: none), in seconds."""
        out, now = {}, datetime.now(UTC)
        for store in self.stores.values():
            for der in store.crls:
                s = crl.summary(x509.load_der_x509_crl(der))
                out[s.issuer] = (s.entries, (now - s.this_update).total_seconds(),
                                 (s.next_update - now).total_seconds() if s.next_update else 0.0)
        return out


def _new_store(trust: Trust) -> Store:
    try:
        with open(trust.ca, "rb") as f:
            cas = x509.load_pem_x509_certificates(f.read())
    except OSError as e:
        raise ConfigError(f"client-verify-ca '{trust.ca}': {e.strerror}") from None
    except ValueError:
        raise ConfigError(f"client-verify-ca '{trust.ca}': no PEM certificate found") from None
    # Sessions resume only under the same setting and CAs (OpenSSL compares this).
    sid = hashlib.sha256(trust.key().encode() + b"".join(c.public_bytes(Encoding.DER)
                                                         for c in cas)).digest()
    store = Store(trust, cas, sid)
    if trust.fetch:
        store.urls = crlfetch.urls_of(cas, trust.fetch_urls)
        if not store.urls:
            raise ConfigError(f"crl-fetch: the certificates of client-verify-ca '{trust.ca}' "
                              "name no http CRL distribution point (give crl-fetch-url)")
        for url in store.urls:
            if crlfetch.source(url).der is None:
                crlfetch.fetch_now(crlfetch.source(url), cas, trust.interval)
    store.read_crls(strict=True)
    store.refresh()
    if store.crls and trust.crl_check == "chain":
        for ca in crl.uncovered([x509.load_der_x509_crl(d) for d in store.crls], cas):
            log.error(f"{{core}} client-verify-crl: no CRL of '{ca.subject.rfc4514_string()}' "
                      "(client-verify-crl-check = chain): the clients it covers are refused")
    for line in store.expired_now(datetime.now(UTC)):
        log.error(f"{{core}} client-verify-crl: {line}")
    return store


def message(key: str, crls: list[bytes]) -> bytes:
    """The bundle the master writes to the workers' memfd: a trust's new CRLs."""
    return json.dumps([key, [b64encode(d).decode() for d in crls]]).encode()


def read_message(data: bytes) -> tuple[str, list[bytes]]:
    key, crls = json.loads(data)
    return key, [b64decode(d) for d in crls]
