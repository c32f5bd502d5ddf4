"""--crl-fetch, the master's side: each CRL distribution point it downloads from, when, and
what it keeps when a download fails (the last good CRL, which refuses its clients once past
its nextUpdate: fail closed). Sources outlive a generation, so a reload starts with what the
last one fetched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from stud import crl
from stud.config import Config
from stud.fetcher import Fetcher
from stud.log import log


@dataclass
class Source:
    """One distribution point's URL and what came from it."""

    url: str
    der: bytes | None = None          # the last good CRL
    due: datetime = field(default_factory=lambda: datetime.now(UTC))
    failures: int = 0                 # in a row
    said: str = ""                    # the last failure logged (each is said once)
    pending: bool = False             # asked, no answer yet
    last_ok: bool | None = None       # the last download's result (metrics)

    def took(self, body: bytes, issuers: list[x509.Certificate], now: datetime,
             interval: float) -> bool:
        """A downloaded body: kept if it is a CRL signed by one of issuers, newer than the
        last; True if the CRL in use changed."""
        try:
            one = _newest(crl.load(body, self.url))
            problem = crl.check(one, issuers, now)
            if problem and not problem.expired:
                raise crl.CrlError(f"CRL {self.url}: {problem}")
        except crl.CrlError as e:
            self.failed(str(e), now, interval)
            return False
        if self.said:
            log.info(f"{{core}} crl-fetch: {self.url} answers again")
        self.failures, self.said, self.last_ok = 0, "", True
        self.due = crl.next_fetch(one, now, interval)
        der = one.public_bytes(Encoding.DER)
        if der == self.der:
            return False
        if self.der is not None and _age(one) < _age(x509.load_der_x509_crl(self.der)):
            return False  # (a stale mirror: keep the newer one)
        self.der = der
        log.info(f"{{core}} crl-fetch: {self.url}: {len(one)} revoked, next update "
                 f"{one.next_update_utc:%Y-%m-%dT%H:%M:%SZ}" if one.next_update_utc else
                 f"{{core}} crl-fetch: {self.url}: {len(one)} revoked")
        return True

    def failed(self, why: str, now: datetime, interval: float) -> None:
        self.failures += 1
        self.last_ok = False
        self.due = now + timedelta(seconds=crl.retry_delay(self.failures, interval))
        if why != self.said:
            self.said = why
            keep = "keeping the last good CRL" if self.der else "no CRL from it yet"
            log.error(f"{{core}} crl-fetch: {why}; {keep}, trying again in "
                      f"{(self.due - now).total_seconds():.0f} s")


_sources: dict[str, Source] = {}


def source(url: str) -> Source:
    if url not in _sources:
        _sources[url] = Source(url)
    return _sources[url]


def urls_of(cas: list[x509.Certificate], extra: tuple[str, ...]) -> list[str]:
    """What --crl-fetch downloads for a CA file: the http distribution points its certificates
    name, then the crl-fetch-url ones, without repeats."""
    out: list[str] = []
    for u in [p for c in cas for p in crl.distribution_points(c)] + list(extra):
        if u not in out:
            out.append(u)
    return out


def fetch_now(src: Source, issuers: list[x509.Certificate], interval: float) -> None:
    """A first download, in the master before the workers start (bounded by crl.fetch's
    timeouts): clients are not refused for want of a CRL that a moment would have brought."""
    now = datetime.now(UTC)
    try:
        body = crl.fetch(src.url)
    except crl.CrlError as e:
        src.failed(str(e), now, interval)
        return
    src.took(body, issuers, now, interval)


def new_fetcher(cfg: Config) -> Fetcher:
    """The child process that downloads CRLs."""
    return Fetcher(cfg, "CRL", lambda url, _request: crl.fetch(url), crl.CrlError)


def gauges() -> list[tuple[str, bool | None, datetime]]:
    """Per source: URL, the last download's result (None: not tried yet), when it is due."""
    return [(s.url, s.last_ok, s.due) for s in _sources.values()]


def _newest(crls: list[x509.CertificateRevocationList]) -> x509.CertificateRevocationList:
    return max(crls, key=_age)


def _age(one: x509.CertificateRevocationList) -> tuple[datetime, int]:
    """What orders two CRLs of one issuer: thisUpdate, then the CRL number."""
    s = crl.summary(one)
    return s.this_update, -1 if s.number is None else s.number
