"""OCSP stapling, run by the master: which staple each certificate gets, and from where.

Per certificate file, in this order: the staple file named for it (hitch's ocsp-resp-file, or
HAProxy's <pem>.ocsp next to it), read again when it changes; else, when ocsp-dir is not "",
the responder named in the certificate, asked by a child process (the master's loop never waits
on a responder; workers are unprivileged and chrooted), with hitch's ocsp-dir as a cache. Only
checked responses are stapled (stud.ocsp). A staple is set on the master's contexts, so workers
forked later have it, and sent to the running workers over their control channel.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from stud import ocsp
from stud.certs import Cert
from stud.config import Config, Pem, file_stamp
from stud.fetcher import Fetcher
from stud.log import log

try:
    from stud import sslext
except ImportError:  # (stapling needs it: without, none)
    sslext = None

MAX_MESSAGE = 1 << 18  # a control message from the master to a worker (a staple), with room


@dataclass
class Entry:
    """One certificate file's staple."""

    stapler: ocsp.Stapler
    leaf: bytes               # the certificate (DER): which one of a context's it staples
    file: str | None          # a staple file kept up to date by someone else, if any
    cache: str | None         # where fetched staples are cached (ocsp-dir), if anywhere
    stamp: tuple | None = None  # the staple file's identity last read
    contexts: list[ssl.SSLContext] = field(default_factory=list)


class Stapling:
    """The master's staples: call tick() when wake() says, receive() when fileno() is
    readable; each returns (certificate path, staple or None, certificate DER) for the
    workers."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.fetcher: Fetcher | None = None
        self.uncached: set[str] = set()  # ocsp-dirs said to be unwritable

    def update(self, cfg: Config, served: list[Cert]) -> None:
        """The certificates of a generation about to serve (start and each reload): staplers
        for new ones (kept for files unchanged), staples known so far on their contexts."""
        if sslext is None:
            return
        entries = {}
        for pem, ctxs in by_file(served).items():
            try:
                with open(pem.cert, "rb") as f:
                    chain = x509.load_pem_x509_certificates(f.read())
            except (OSError, ValueError):
                continue  # (it loaded a moment ago: a file being replaced; next reload)
            old = self.entries.get(pem.cert)
            entry = old if old and old.stapler.cert == chain[0] else self._entry(cfg, pem, chain)
            entry.contexts = ctxs
            entries[pem.cert] = entry
            if entry.stapler.staple:
                for ctx in ctxs:
                    sslext.set_ocsp_staple(ctx, entry.stapler.staple.der, entry.leaf)
        self.entries = entries
        if self.fetcher is not None and _fetcher_settings(self.fetcher.cfg) != \
                _fetcher_settings(cfg):
            self.fetcher.close()  # (a reload changed its timeouts or its user)
            self.fetcher = None
        if any(e.stapler.enabled for e in entries.values()):
            if self.fetcher is None:
                self.fetcher = new_fetcher(cfg)
        elif self.fetcher is not None:
            self.fetcher.close()
            self.fetcher = None

    def _entry(self, cfg: Config, pem: Pem, chain: list[x509.Certificate]) -> Entry:
        file = pem.ocsp_resp_file or _exists(ocsp.haproxy_staple_path(pem.cert))
        fetch = bool(cfg.ocsp_dir) and not file  # (hitch: ocsp-dir = "" turns fetching off)
        # A failed fetch (or a revoked answer) is tried again no later than a good one would
        # be refreshed: else a failure would leave the status unknown longer than the interval.
        soon = min(60.0, cfg.ocsp_refresh_interval)
        stapler = ocsp.Stapler(str(pem), chain, interval=cfg.ocsp_refresh_interval,
                               minimum=soon, retry=soon, fetch=fetch)
        cache = ocsp.staple_path(cfg.ocsp_dir, pem.written or pem.cert) if fetch else None
        entry = Entry(stapler, chain[0].public_bytes(serialization.Encoding.DER), file, cache)
        if cache and (der := _read(cache)):
            _say(stapler.fetched(der, _now(), cached=True))
        return entry

    def fileno(self) -> int | None:
        return self.fetcher.fileno() if self.fetcher else None

    def wake(self) -> float | None:
        """Seconds until tick() has something to do (None: nothing planned)."""
        times = [w for e in self.entries.values() if (w := e.stapler.wake())]
        if any(e.file for e in self.entries.values()):
            return 1.0  # staple files are looked at once a second
        return max(0.0, (min(times) - _now()).total_seconds()) if times else None

    def tick(self) -> list[tuple[str, bytes | None, bytes]]:
        now, out = _now(), []
        for path, e in self.entries.items():
            if e.file:
                stamp = file_stamp(e.file)
                if stamp != e.stamp:
                    e.stamp = stamp
                    der = _read(e.file)
                    if der:
                        self._apply(path, e, e.stapler.fetched(der, now, cached=True), out)
            step = e.stapler.tick(now)
            if step.fetch:
                self.fetcher.ask(path, e.stapler.url, e.stapler.request)
            self._apply(path, e, step, out)
        return out

    def receive(self) -> list[tuple[str, bytes | None, bytes]]:
        """What the fetcher answered."""
        out = []
        for path, der, error in self.fetcher.answers() if self.fetcher else ():
            e = self.entries.get(path)
            if e is None:
                continue  # (a certificate gone with a reload meanwhile)
            now = _now()
            step = e.stapler.failed(error, now) if der is None else e.stapler.fetched(der, now)
            self._apply(path, e, step, out)
            if der is not None and e.cache and e.stapler.staple and step.changed:
                why = _write(e.cache, e.stapler.staple.der)
                if why and os.path.dirname(e.cache) not in self.uncached:
                    self.uncached.add(os.path.dirname(e.cache))
                    log.error(f"{{core}} ocsp-dir '{os.path.dirname(e.cache)}': cannot cache "
                              f"staples ({why}); they stay in memory")
        if self.fetcher and not self.fetcher.alive():
            log.error("{core} OCSP fetcher process gone; starting another")
            self.fetcher = new_fetcher(self.fetcher.cfg)
        return out

    def _apply(self, path: str, e: Entry, step: ocsp.Step, out: list) -> None:
        _say(step)
        if step.changed:
            for ctx in e.contexts:
                sslext.set_ocsp_staple(ctx, step.staple, e.leaf)
            out.append((path, step.staple, e.leaf))

    def close(self) -> None:
        if self.fetcher:
            self.fetcher.close()


def by_file(served: list[Cert]) -> dict[Pem, list[ssl.SSLContext]]:
    """The contexts of each certificate file (several frontends' settings make several)."""
    out: dict[str, tuple[Pem, list[ssl.SSLContext]]] = {}
    for c in served:
        out.setdefault(c.pem.cert, (c.pem, []))[1].append(c.context)
    return dict(out.values())


def message(path: str, der: bytes | None, leaf: bytes) -> bytes:
    """The control message that gives the workers a certificate's new staple (leaf: that
    certificate's DER, as set_ocsp_staple() takes it)."""
    return b"O" + json.dumps([path, base64.b64encode(der).decode() if der else None,
                              base64.b64encode(leaf).decode()]).encode()


def read_message(data: bytes) -> tuple[str, bytes | None, bytes]:
    path, der, leaf = json.loads(data[1:])
    return path, base64.b64decode(der) if der else None, base64.b64decode(leaf)


def new_fetcher(cfg: Config) -> Fetcher:
    """The child process that asks OCSP responders."""
    return Fetcher(cfg, "OCSP", lambda url, request: ocsp.fetch(
        url, request, cfg.ocsp_connect_tmo, cfg.ocsp_resp_tmo), ocsp.OcspError)


def _fetcher_settings(cfg: Config) -> tuple:
    return cfg.ocsp_connect_tmo, cfg.ocsp_resp_tmo, cfg.user, cfg.group


def _say(step: ocsp.Step) -> None:
    if step.log:
        (log.error if step.error else log.info)(f"{{core}} {step.log}")


def _now() -> datetime:
    return datetime.now(UTC)


def _exists(path: str) -> str | None:
    return path if os.path.isfile(path) else None


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(ocsp.MAX_RESPONSE + 1) or None
    except OSError:
        return None


def _write(path: str, der: bytes) -> str | None:
    """Into the cache, whole or not at all (as hitch: a temporary file, then rename); the
    reason it failed, if it did."""
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".stud-ocsp-")
        with os.fdopen(fd, "wb") as f:
            f.write(der)
        os.replace(tmp, path)
    except OSError as e:
        return e.strerror or str(e)
    return None
