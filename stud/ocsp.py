"""OCSP stapling (RFC 6960) as hitch does it, checked before anything is stapled.

Pure logic over bytes, certificates and times (``cryptography`` parses and verifies) plus one
blocking :func:`fetch`: the caller owns the clock, the threads and the log. hitch's file names
(``ocsp-dir``) and HAProxy's (``<pem>.ocsp``) are both here, so either cache can be read.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    SignatureAlgorithmOID,
)

from stud import httpfetch

__all__ = [
    "MAX_RESPONSE", "OcspError", "Revoked", "Staple", "Stapler", "Step", "check", "fetch",
    "haproxy_staple_path", "issuer_of", "refresh_at", "request_der", "responder_url",
    "staple_path",
]

# hitch's values (src/ocsp.c, configuration.c): what its users are used to.
REFRESH_INTERVAL = 1800.0  # ocsp-refresh-interval, when a response has no nextUpdate
CONNECT_TIMEOUT = 4.0      # ocsp-connect-tmo
RESPONSE_TIMEOUT = 10.0    # ocsp-resp-tmo
# Responders and clients disagree on the time by a few minutes (OpenSSL's -validity_period
# default is 5 min): a thisUpdate that far ahead is theirs, not a forgery.
SKEW = 300.0
# A response is a few hundred bytes to a few KiB (with a responder chain); past this it is not
# one, and reading on would let a responder make us buffer without limit.
MAX_RESPONSE = 64 * 1024

_LONG_AGO = datetime.min.replace(tzinfo=UTC)
_OCSP_REQUEST = "application/ocsp-request"
_OCSP_RESPONSE = "application/ocsp-response"


class OcspError(ValueError):
    """A response that must not be stapled, or a fetch that failed: a one-line reason."""


class Revoked(OcspError):
    """The issuer (or its responder) says the certificate is revoked: a verified answer."""


@dataclass(frozen=True)
class Staple:
    """A checked response: what may be stapled until ``next_update`` (if any)."""

    der: bytes
    status: str  # "good": check() raises for the others
    this_update: datetime
    next_update: datetime | None
    produced_at: datetime


def _utc(t: datetime) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S} UTC"


# ------------------------------------------------------------------------------- file names


def staple_path(ocsp_dir: str, pem_path: str) -> str:
    """hitch's cached staple for ``pem_path``: ``<ocsp_dir>/<md5 hex of the path>``.

    The path is hashed exactly as configured (relative and absolute spellings of one file
    differ), as the bytes hitch read from its configuration.
    """
    if not ocsp_dir:
        raise ValueError("ocsp-dir is empty (hitch: OCSP stapling off)")
    digest = hashlib.md5(os.fsencode(pem_path), usedforsecurity=False).hexdigest()
    return os.path.join(ocsp_dir, digest)


def haproxy_staple_path(pem_path: str) -> str:
    """HAProxy's staple for ``pem_path``: the DER response in ``<pem>.ocsp`` beside it."""
    return pem_path + ".ocsp"


# ---------------------------------------------------------------------------- certificates


def responder_url(cert: x509.Certificate) -> str | None:
    """The OCSP responder of the certificate's Authority Information Access, or None.

    An http:// one is preferred: that is the transport RFC 6960 defines and fetch() speaks.
    """
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    urls = [d.access_location.value for d in aia
            if d.access_method == AuthorityInformationAccessOID.OCSP
            and isinstance(d.access_location, x509.UniformResourceIdentifier)]
    http = [u for u in urls if u.lower().startswith("http://")]
    return (http or urls or [None])[0]


def issuer_of(chain: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """The certificate among ``chain[1:]`` that signed ``chain[0]``, or None."""
    if not chain:
        return None
    leaf = chain[0]
    for cand in chain[1:]:
        try:
            leaf.verify_directly_issued_by(cand)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        return cand
    return None


def request_der(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """The DER OCSP request for ``cert``: a SHA-1 CertID (what every responder answers) and no
    nonce, like hitch and ``openssl ocsp -no_nonce`` (a nonce defeats responders' caches and
    a staple is served to many clients anyway)."""
    req = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    return req.public_bytes(serialization.Encoding.DER)


# ------------------------------------------------------------------------------- checking


def _cert_id(cert: x509.Certificate, issuer: x509.Certificate,
             algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes, int]:
    # The request builder computes a CertID with any hash a response may use.
    req = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm).build()
    return req.issuer_name_hash, req.issuer_key_hash, req.serial_number


def _single_for(resp: ocsp.OCSPResponse, cert: x509.Certificate,
                issuer: x509.Certificate) -> ocsp.OCSPSingleResponse:
    seen = []
    for single in resp.responses:
        try:
            want = _cert_id(cert, issuer, single.hash_algorithm)
        except (ValueError, UnsupportedAlgorithm):
            continue  # a hash the builder refuses cannot be ours
        if (single.issuer_name_hash, single.issuer_key_hash, single.serial_number) == want:
            return single
        seen.append(f"{single.serial_number:x}")
    raise OcspError(f"response is for another certificate (serial {', '.join(seen) or 'none'}, "
                    f"not {cert.serial_number:x} of {issuer.subject.rfc4514_string()})")


def _names_responder(resp: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if resp.responder_name is not None:
        return cert.subject == resp.responder_name
    return (resp.responder_key_hash ==
            x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest)


def _verify_signature(resp: ocsp.OCSPResponse, signer: x509.Certificate) -> None:
    key, data, sig = signer.public_key(), resp.tbs_response_bytes, resp.signature
    try:
        algo = resp.signature_hash_algorithm
        if isinstance(key, rsa.RSAPublicKey):
            pad = (padding.PSS(padding.MGF1(algo), padding.PSS.AUTO)
                   if resp.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS
                   else padding.PKCS1v15())
            key.verify(sig, data, pad, algo)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig, data, ec.ECDSA(algo))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(sig, data)
        elif isinstance(key, dsa.DSAPublicKey):
            key.verify(sig, data, algo)
        else:
            raise OcspError(f"responder key type {type(key).__name__} is not supported")
    except InvalidSignature:
        raise OcspError(f"bad signature by {signer.subject.rfc4514_string()}") from None
    except (UnsupportedAlgorithm, TypeError, ValueError) as e:
        raise OcspError(f"cannot verify the signature ({resp.signature_algorithm_oid.dotted_string}"
                        f"): {e}") from None


def _check_delegate(cert: x509.Certificate, issuer: x509.Certificate, now: datetime,
                    skew: timedelta) -> None:
    """RFC 6960 4.2.2.2: a responder certificate issued by the CA itself, for OCSP signing."""
    who = f"responder certificate {cert.subject.rfc4514_string()}"
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise OcspError(f"{who} is not issued by the certificate's issuer") from None
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = []
    if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        raise OcspError(f"{who} lacks the OCSP-signing extended key usage")
    if not cert.not_valid_before_utc - skew <= now <= cert.not_valid_after_utc:
        raise OcspError(f"{who} is not valid now (valid {_utc(cert.not_valid_before_utc)} to "
                        f"{_utc(cert.not_valid_after_utc)})")


def _verify_signer(resp: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime,
                   skew: timedelta) -> None:
    if _names_responder(resp, issuer):
        _verify_signature(resp, issuer)
        return
    for cand in resp.certificates:
        if _names_responder(resp, cand):
            _check_delegate(cand, issuer, now, skew)
            _verify_signature(resp, cand)
            return
    raise OcspError("signed by an unknown responder (neither the issuer nor a responder "
                    "certificate in the response)")


def check(der: bytes, cert: x509.Certificate, issuer: x509.Certificate, now: datetime, *,
          skew: float = SKEW, max_age: float | None = None) -> Staple:
    """The Staple ``der`` makes for ``cert``, issued by ``issuer``, at ``now`` (aware UTC).

    Raises OcspError (Revoked for a verified revocation) unless the response is successful,
    answers for this very certificate, is signed by the issuer or by a responder certificate the
    issuer gave the OCSP-signing usage, says "good", and is current: thisUpdate no more than
    ``skew`` seconds ahead, nextUpdate not reached; ``max_age`` (seconds since thisUpdate)
    bounds a response without nextUpdate, which RFC 6960 lets live for ever.
    """
    try:
        resp = ocsp.load_der_ocsp_response(der)
    except ValueError as e:
        raise OcspError(f"not a DER OCSP response: {e}") from None
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspError(f"responder answered {resp.response_status.name.lower()}")
    single = _single_for(resp, cert, issuer)
    ahead = timedelta(seconds=skew)
    _verify_signer(resp, issuer, now, ahead)
    this, nxt, produced = single.this_update_utc, single.next_update_utc, resp.produced_at_utc
    if this > now + ahead or produced > now + ahead:
        raise OcspError(f"response from the future (thisUpdate {_utc(this)}, producedAt "
                        f"{_utc(produced)})")
    if nxt is not None and nxt < this:
        raise OcspError(f"nextUpdate {_utc(nxt)} before thisUpdate {_utc(this)}")
    if nxt is not None and nxt <= now:
        raise OcspError(f"response expired: nextUpdate {_utc(nxt)} has passed")
    if nxt is None and max_age is not None and now - this > timedelta(seconds=max_age):
        raise OcspError(f"response without nextUpdate older than {max_age:g} s "
                        f"(thisUpdate {_utc(this)})")
    status = single.certificate_status
    if status == ocsp.OCSPCertStatus.REVOKED:
        reason = single.revocation_reason.name if single.revocation_reason else "unspecified"
        raise Revoked(f"certificate revoked at {_utc(single.revocation_time_utc)}, "
                      f"reason {reason}")
    if status != ocsp.OCSPCertStatus.GOOD:
        raise OcspError("responder does not know the certificate (status unknown)")
    return Staple(der, "good", this, nxt, produced)


def refresh_at(staple: Staple, now: datetime, interval: float = REFRESH_INTERVAL, *,
               minimum: float = 60.0) -> datetime:
    """When to fetch a fresh response for ``staple``.

    Halfway through its validity, where hitch waits until 600 s before nextUpdate: a
    responder down at that moment for longer than the retries' few minutes would let the
    staple lapse, where half the validity (3.5 days of a 7-day response) leaves room for
    every retry. A response already past its halfway point (a cache on the way served an old
    one) is fetched again within ``interval``, halfway to nextUpdate if that is sooner; never
    sooner than ``minimum`` from now. Without nextUpdate: after ``interval``, as hitch does.
    """
    if staple.next_update is None:
        return now + timedelta(seconds=interval)
    halfway = staple.this_update + (staple.next_update - staple.this_update) / 2
    soon = min(timedelta(seconds=interval), (staple.next_update - now) / 2)
    return max(halfway, now + soon, now + timedelta(seconds=minimum))


# -------------------------------------------------------------------------------- fetching


def fetch(url: str, request: bytes, connect_timeout: float = CONNECT_TIMEOUT,
          response_timeout: float = RESPONSE_TIMEOUT, max_size: int = MAX_RESPONSE) -> bytes:
    """POST ``request`` to the responder at ``url``; its DER response (unchecked).

    Blocking, bounded: ``connect_timeout`` for the TCP connection, then ``response_timeout``
    for all of the rest (the whole response is read against one deadline, so a responder
    that trickles bytes cannot hold the caller longer), at most ``max_size`` bytes of body
    (httpfetch.exchange). The host name is resolved first, which no timeout covers.
    Raises OcspError naming the responder: refused, timed out, not HTTP 200,
    not application/ocsp-response, too big or cut short.
    """
    return httpfetch.exchange(
        url, "POST", request, {"Content-Type": _OCSP_REQUEST, "Accept": _OCSP_RESPONSE},
        connect_timeout=connect_timeout, response_timeout=response_timeout, max_size=max_size,
        error=lambda why: OcspError(f"OCSP responder {url}: {why}"), content_type=_OCSP_RESPONSE)


# ---------------------------------------------------------------------------- the schedule


@dataclass(frozen=True)
class Step:
    """What the caller does after a Stapler call."""

    fetch: bool           # start fetch(stapler.url, stapler.request), report back
    staple: bytes | None  # what to staple from now on (None: nothing)
    changed: bool         # staple differs from the one before: hand it to the workers
    log: str | None       # a line to log, already rate-limited (None: nothing to say)
    error: bool = False   # log is an error, else information


class Stapler:
    """One certificate's staple over time, driven by the caller's clock and fetches.

    The caller calls ``tick(now)`` at ``wake()`` (and whenever it likes), starts a fetch when
    the Step says so, and reports it with ``fetched()`` or ``failed()``; a cached staple (hitch's
    ocsp-dir, HAProxy's .ocsp) is offered with ``fetched(der, now, cached=True)``. Only checked
    responses are handed out, each until its nextUpdate (one without: ``max_age`` after its
    thisUpdate); refreshes come at refresh_at(); a failed one keeps the last good response
    meanwhile and retries after ``retry`` seconds, doubling up to ``retry_cap``. A verified
    revocation withdraws the staple at once. Failures are logged when their reason changes,
    else once per ``log_every`` seconds. Without a responder URL nothing is ever fetched, and
    nothing said; ``fetch=False`` is the same for a certificate whose staples come from a file.
    """

    def __init__(self, name: str, chain: Sequence[x509.Certificate], *,
                 interval: float = REFRESH_INTERVAL, minimum: float = 60.0,
                 retry: float = 60.0, retry_cap: float = 1800.0,
                 log_every: float = REFRESH_INTERVAL, skew: float = SKEW,
                 max_age: float | None = 7 * 86400.0, fetch: bool = True) -> None:
        self.name = name
        self.cert = chain[0]
        self.issuer = issuer_of(chain)
        self.url = responder_url(self.cert) if fetch else None  # (no fetch: staple files only)
        self.request = request_der(self.cert, self.issuer) if self.issuer else None
        self.staple: Staple | None = None
        self._interval, self._minimum = interval, minimum
        self._retry, self._retry_cap, self._log_every = retry, retry_cap, log_every
        self._skew, self._max_age = skew, max_age
        self._next_fetch = _LONG_AGO  # at the first tick
        self._fetching = False
        self._failures = 0
        self._noted = False
        self._last_log: tuple[str, datetime] | None = None
        self._unlogged = 0

    @property
    def enabled(self) -> bool:
        """Whether this certificate is ever fetched for: a responder URL and its issuer."""
        return self.url is not None and self.issuer is not None

    def _step(self, before: bytes | None, fetch: bool = False, log: str | None = None,
              error: bool = False) -> Step:
        current = self.staple.der if self.staple else None
        return Step(fetch, current, current != before, log, error)

    def _expires(self) -> datetime | None:
        if self.staple is None:
            return None
        if self.staple.next_update is not None:
            return self.staple.next_update
        if self._max_age is not None:
            return self.staple.this_update + timedelta(seconds=self._max_age)
        return None

    def wake(self) -> datetime | None:
        """When tick() has something to do next (None: only when a fetch reports back)."""
        times = [t for t in (self._expires(),) if t is not None]
        if self.enabled and not self._fetching:
            times.append(self._next_fetch)
        return min(times, default=None)

    def tick(self, now: datetime) -> Step:
        """Drop an expired staple; say whether to fetch now."""
        before = self.staple.der if self.staple else None
        if self.url is not None and self.issuer is None and not self._noted:
            self._noted = True  # (without an issuer nothing is ever stapled: nothing expires)
            return self._step(before, log=f"OCSP for {self.name}: no issuer certificate in its "
                                          "PEM to ask about or verify with: not stapled")
        log = None
        expires = self._expires()
        if expires is not None and expires <= now:
            self.staple = None
            log = f"OCSP staple for {self.name} expired at {_utc(expires)}: no longer stapled"
        due = self.enabled and not self._fetching and self._next_fetch <= now
        self._fetching = self._fetching or due
        return self._step(before, fetch=due, log=log, error=log is not None)

    def fetched(self, der: bytes, now: datetime, cached: bool = False) -> Step:
        """A response arrived (``cached``: read from a staple file, not fetched)."""
        before = self.staple.der if self.staple else None
        if not cached:
            self._fetching = False
        if self.issuer is None:
            return self._failure(before, "no issuer certificate in its PEM to verify it with",
                                 now, cached)
        try:
            new = check(der, self.cert, self.issuer, now, skew=self._skew, max_age=self._max_age)
        except Revoked as e:
            self.staple = None
            return self._failure(before, str(e), now, cached)
        except OcspError as e:
            return self._failure(before, str(e), now, cached)
        if self.staple is None or new.this_update >= self.staple.this_update:
            self.staple = new  # else: a stale copy (a cache on the way): keep the newer one
        recovered, self._failures = self._failures, 0
        self._last_log, self._unlogged = None, 0
        self._next_fetch = refresh_at(self.staple, now, self._interval, minimum=self._minimum)
        if recovered or before is None:
            until = (f"good until {_utc(self.staple.next_update)}" if self.staple.next_update
                     else "no nextUpdate")
            again = f" after {recovered} failed attempts" if recovered else ""
            return self._step(before, log=f"OCSP staple for {self.name} loaded{again} "
                                          f"({until})")
        return self._step(before)

    def failed(self, error: OcspError | str, now: datetime) -> Step:
        """The fetch failed (fetch()'s OcspError, or the caller's reason)."""
        self._fetching = False
        before = self.staple.der if self.staple else None
        return self._failure(before, str(error), now, cached=False)

    def _failure(self, before: bytes | None, why: str, now: datetime, cached: bool) -> Step:
        if cached:  # a bad cache file says nothing of the responder: fetch at once
            return self._step(before, log=f"OCSP staple file for {self.name} not used: {why}")
        self._failures += 1
        delay = min(self._retry * 2.0 ** min(self._failures - 1, 64), self._retry_cap)
        self._next_fetch = now + timedelta(seconds=delay)
        last = self._last_log
        if last is not None and last[0] == why and now - last[1] < timedelta(
                seconds=self._log_every):
            self._unlogged += 1
            return self._step(before)
        kept = (f"keeping the staple good until {_utc(self.staple.next_update)}"
                if self.staple and self.staple.next_update else
                "keeping the last staple" if self.staple else "not stapled")
        more = f"; {self._unlogged} more failures not logged" if self._unlogged else ""
        self._last_log, self._unlogged = (why, now), 0
        return self._step(before, log=f"OCSP for {self.name}: {why}; {kept}, next attempt in "
                                      f"{delay:g} s{more}", error=True)
