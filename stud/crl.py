"""Certificate revocation lists (RFC 5280 section 5) for client-certificate verification.

Pure logic over bytes, certificates and times (``cryptography`` parses and verifies) plus one
blocking :func:`fetch`, as stud.ocsp: the caller owns the clock, the threads and the log. What
is checked here is what the master can say about a CRL before handing it to the workers (who is
it from, is it current, when to fetch again); the revocation itself is OpenSSL's, per handshake.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from stud import httpfetch

__all__ = [
    "MAX_CRL", "CrlError", "Problem", "Summary", "check", "distribution_points", "fetch",
    "load", "next_fetch", "retry_delay", "signer", "summary", "uncovered",
]

REFRESH_INTERVAL = 1800.0  # as ocsp-refresh-interval: a CRL without nextUpdate, and the cap
CONNECT_TIMEOUT = 4.0      # as ocsp-connect-tmo
RESPONSE_TIMEOUT = 10.0    # as ocsp-resp-tmo
RETRY = 60.0               # the first retry after a failed fetch, doubling ...
RETRY_CAP = 1800.0         # ... up to this
MINIMUM = 60.0             # never fetch a current CRL again sooner than this
# Issuers and relying parties disagree on the time by a few minutes: a thisUpdate that far
# ahead is theirs, not a forgery (stud.ocsp's SKEW).
SKEW = 300.0
# Large CAs publish CRLs of several MiB (a few million bytes for ~100k entries); past this it
# is not one we mean to hold in the master and in every worker.
MAX_CRL = 16 * 1024 * 1024

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)


class CrlError(ValueError):
    """A CRL that cannot be read, or a fetch that failed: a one-line reason naming the source."""


@dataclass(frozen=True)
class Problem:
    """Why a CRL is not to be used. ``expired`` apart: the caller counts and logs those (an
    issuer late to publish), the others are a misconfiguration or a forgery."""

    reason: str
    expired: bool = False

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class Summary:
    """What the metrics and the log say of a CRL."""

    issuer: str  # RFC 4514
    entries: int
    this_update: datetime
    next_update: datetime | None
    number: int | None  # the CRL number extension, if any


def _utc(t: datetime) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S} UTC"


def _name(name: x509.Name) -> str:
    return name.rfc4514_string() or "an empty name"


# ---------------------------------------------------------------------------------- reading


def load(data: bytes, source: str) -> list[x509.CertificateRevocationList]:
    """The CRLs in ``data`` (read from ``source``, a path or URL, for the messages): one DER
    CRL, or PEM with one or several X509 CRL blocks (other blocks, a CA certificate kept in the
    same file, are passed over). Raises CrlError for anything else: a CRL file that cannot be
    read must stop a (re)load, not silently revoke nothing.
    """
    if not data.strip():
        raise CrlError(f"{source}: empty")
    if b"-----BEGIN" not in data:
        try:
            return [x509.load_der_x509_crl(data)]
        except ValueError as e:
            raise CrlError(f"{source}: not a CRL (neither PEM nor DER: {_first_line(e)})") \
                from None
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(data) if m.group(1) == b"X509 CRL"]
    if not blocks:
        raise CrlError(f"{source}: no X509 CRL block in the PEM")
    crls = []
    for i, block in enumerate(blocks, 1):
        try:
            crls.append(x509.load_pem_x509_crl(block))
        except ValueError as e:
            which = f"CRL {i} of {len(blocks)}" if len(blocks) > 1 else "CRL"
            raise CrlError(f"{source}: {which} is not valid: {_first_line(e)}") from None
    return crls


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def distribution_points(cert: x509.Certificate) -> list[str]:
    """The http:// URLs of ``cert``'s CRL distribution points (fullName URIs), in order, once
    each. LDAP, file and the rest are passed over: RFC 5280 4.2.1.13 makes HTTP the way to
    publish CRLs and fetch() speaks nothing else; a relative name needs the issuer's DN."""
    try:
        cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    urls: list[str] = []
    for point in cdp:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and \
                    name.value.lower().startswith("http://") and name.value not in urls:
                urls.append(name.value)
    return urls


# --------------------------------------------------------------------------------- checking


def _may_sign_crls(ca: x509.Certificate) -> bool:
    try:
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True  # (no key usage: any, RFC 5280 4.2.1.3)
    return usage.crl_sign


def signer(crl: x509.CertificateRevocationList,
           issuers: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """The certificate among ``issuers`` that signed ``crl``: its subject is the CRL's issuer,
    its key usage (if any) allows CRL signing and its key verifies the signature."""
    for ca in issuers:
        if ca.subject != crl.issuer or not _may_sign_crls(ca):
            continue
        try:
            if crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
                return ca
        except (TypeError, ValueError, UnsupportedAlgorithm):
            continue
    return None


def check(crl: x509.CertificateRevocationList, issuers: Sequence[x509.Certificate],
          now: datetime, *, ca_source: str = "the CA file", skew: float = SKEW
          ) -> Problem | None:
    """None if ``crl`` may be used at ``now`` (aware UTC), else the Problem.

    Usable: signed by one of ``issuers`` (the CAs clients are verified against, read from
    ``ca_source``), a full CRL (delta CRLs are not handled), thisUpdate no more than ``skew``
    seconds ahead and nextUpdate not reached. A CRL without nextUpdate (RFC 5280 requires one,
    OpenSSL accepts its absence) never expires.
    """
    if signer(crl, issuers) is None:
        return Problem(f"CRL of {_name(crl.issuer)} is not signed by a CA in {ca_source}")
    try:
        crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
        return Problem(f"CRL of {_name(crl.issuer)} is a delta CRL: not supported")
    except x509.ExtensionNotFound:
        pass
    this, nxt = crl.last_update_utc, crl.next_update_utc
    if this > now + timedelta(seconds=skew):
        return Problem(f"CRL of {_name(crl.issuer)} is not valid before {_utc(this)} "
                       "(thisUpdate)")
    if nxt is not None and nxt <= now:
        return Problem(f"CRL of {_name(crl.issuer)} expired since {_utc(nxt)} (nextUpdate)",
                       expired=True)
    return None


def uncovered(crls: Sequence[x509.CertificateRevocationList],
              cas: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """The CAs among ``cas`` that signed none of ``crls``. With every chain checked (OpenSSL's
    X509_V_FLAG_CRL_CHECK_ALL), a client under such a CA is refused ("unable to get certificate
    CRL"): worth saying once at load time rather than per handshake."""
    return [ca for ca in cas if not any(signer(c, [ca]) is not None for c in crls)]


def summary(crl: x509.CertificateRevocationList) -> Summary:
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    return Summary(crl.issuer.rfc4514_string(), len(crl), crl.last_update_utc,
                   crl.next_update_utc, number)


# ---------------------------------------------------------------------------- the schedule


def next_fetch(crl: x509.CertificateRevocationList, now: datetime,
               interval: float = REFRESH_INTERVAL, *, minimum: float = MINIMUM) -> datetime:
    """When to fetch ``crl``'s successor, having just got ``crl`` (checked) at ``now``.

    Halfway to its nextUpdate, as stud.ocsp.refresh_at does for staples: an issuer's server
    down at that moment leaves half the remaining validity for the retries. No later than
    ``interval`` from now (a revocation published early reaches clients within that), no sooner
    than ``minimum`` (an issuer that publishes only at nextUpdate would otherwise be asked
    again and again as it nears), and never after nextUpdate itself. Without nextUpdate: after
    ``interval``. An expired CRL: after ``minimum`` (the caller's retry_delay() applies first
    if it counts that as a failure).
    """
    step = timedelta(seconds=interval)
    nxt = crl.next_update_utc
    if nxt is None:
        return now + step
    left = nxt - now
    if left <= timedelta(0):
        return now + timedelta(seconds=minimum)
    return now + min(step, max(left / 2, timedelta(seconds=minimum)), left)


def retry_delay(failures: int, interval: float = REFRESH_INTERVAL, *, first: float = RETRY,
                cap: float = RETRY_CAP) -> float:
    """Seconds to wait after the ``failures``-th failed fetch in a row (1, 2, ...): ``first``
    (or ``interval`` if shorter: a short refresh interval is asked for), doubling, at most
    ``cap``; stud.ocsp's Stapler backs off the same way."""
    start = min(first, interval)
    return min(start * 2.0 ** min(max(failures, 1) - 1, 64), cap)


# -------------------------------------------------------------------------------- fetching


def fetch(url: str, connect_timeout: float = CONNECT_TIMEOUT,
          response_timeout: float = RESPONSE_TIMEOUT, max_size: int = MAX_CRL) -> bytes:
    """GET the CRL at ``url``: its bytes, unchecked (load() and check() come next).

    Blocking, bounded as stud.ocsp.fetch (httpfetch.exchange): ``connect_timeout``, then one
    ``response_timeout`` deadline for the whole answer, at most ``max_size`` bytes. Plain
    http:// only: CRLs are signed, so TLS adds nothing to their integrity, and RFC 5280
    4.2.1.13 publishes them over HTTP (an https distribution point would need a trust store
    of its own, and a certificate check that may itself need this CRL). Redirects are not
    followed: each hop would reopen what the URL settled (another host, https, more time), and
    the 3xx error names the new location for the operator to configure. Any content type is
    taken: servers label CRLs application/pkix-crl, application/x-pkcs7-crl or octet-stream.
    Raises CrlError naming the URL.
    """
    return httpfetch.exchange(
        url, "GET", None, {"Accept": "application/pkix-crl, */*"},
        connect_timeout=connect_timeout, response_timeout=response_timeout, max_size=max_size,
        error=lambda why: CrlError(f"CRL {url}: {why}"))
