"""The session-ticket keys in use: read from a file (HAProxy's or nginx's), derived from a
seed, or made here and rotated; put in stud._ticketkeys' ring, which the master and every
worker share, and changed there when a file changes, an epoch begins or a key has served its
time. Key names are logged in hex, key bytes never; made keys never touch the disk.

Without the compiled module, OpenSSL's own keys serve (one per context, made at start and kept
across reloads for unchanged certificates) and key files or a seed are refused.
"""

from __future__ import annotations

import os
import ssl
import time

from stud import ticketkeys
from stud.config import Config, ConfigError
from stud.log import log
from stud.ticketkeys import KeyFileError, Ring

try:
    from stud import _ticketkeys, sslext
except ImportError:  # (no C compiler at install time, or no sslext)
    _ticketkeys = None
else:
    _ticketkeys.init(sslext.addresses())  # in the master, before any worker is forked

AVAILABLE = _ticketkeys is not None


def attach(ctx: ssl.SSLContext) -> None:
    """Seal and open ctx's tickets with the ring's keys."""
    if _ticketkeys is not None and not ctx.options & ssl.OP_NO_TICKET:
        _ticketkeys.attach(sslext.ctx_pointer(ctx))


def stats() -> dict | None:
    """The ring's key names, the encrypting one, and the counters per key name (shared
    memory: the master sees every worker's)."""
    return _ticketkeys.stats() if _ticketkeys is not None else None


def _source(cfg: Config) -> tuple:
    if cfg.tls_ticket_keys:
        return ("haproxy", cfg.tls_ticket_keys, cfg.ticket_key_layout or "haproxy")
    if cfg.ssl_session_ticket_key:
        return ("nginx", tuple(cfg.ssl_session_ticket_key), cfg.ticket_key_layout or "nginx")
    if cfg.ticket_key_seed:
        return ("seed", cfg.ticket_key_seed, cfg.ticket_key_lifetime, cfg.session_timeout)
    return ("rotate", cfg.ticket_key_lifetime, cfg.session_timeout)


def _stamp(paths: list[str]) -> list[tuple]:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return out


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise KeyFileError(f"{path}: {e.strerror}") from None


class Keyring:
    """One configuration's ticket keys: where they come from and when they change."""

    def __init__(self, cfg: Config, previous: Keyring | None) -> None:
        """Read what cfg names (ConfigError says what is wrong); nothing is in use before
        commit(). A reload that keeps the same rotation keeps its keys."""
        self.source = _source(cfg)
        kind = self.source[0]
        if kind != "rotate" and not AVAILABLE:
            raise ConfigError(f"{self.label()}: ticket keys of its own need stud's compiled "
                              "module stud._ticketkeys, which is not built here")
        self.paths = [self.source[1]] if kind in ("haproxy", "seed") else \
            list(self.source[1]) if kind == "nginx" else []
        self.stamps = _stamp(self.paths)
        self.failing = ""  # a changed file that does not read: said once
        self.made: list[float] = []  # rotation: when each key started encrypting
        self.due = 0.0  # when the ring changes next by itself (seed, rotation)
        self.seed = b""
        try:
            if kind == "rotate" and previous is not None and previous.source == self.source:
                self.ring, self.made, self.due = previous.ring, previous.made, previous.due
            else:
                self.ring = self._load(time.time())
        except KeyFileError as e:
            raise ConfigError(str(e)) from None

    def label(self) -> str:
        kind, what = self.source[:2]
        if kind == "haproxy":
            return f"tls-ticket-keys {what}"
        if kind == "nginx":
            return "ssl-session-ticket-key " + " ".join(what)
        if kind == "seed":
            return f"ticket-key-seed {what}"
        return f"made here, a new one every {what} s"

    def _load(self, now: float) -> Ring | None:
        kind = self.source[0]
        if kind == "haproxy":
            return ticketkeys.parse_haproxy(_read(self.paths[0]), self.paths[0], self.source[2])
        if kind == "nginx":
            return ticketkeys.parse_raw([(p, _read(p)) for p in self.paths], self.source[2])
        _, lifetime, ticket_lifetime = self.source[-3:]
        if kind == "seed":
            if not self.seed:
                self.seed = ticketkeys.parse_seed(_read(self.paths[0]), self.paths[0])
            self.due = ticketkeys.seed_next_change(now, lifetime)
            return ticketkeys.seed_ring(self.seed, now, lifetime, ticket_lifetime)
        if not AVAILABLE:
            return None
        ring, self.made = ticketkeys.rotate(None, [], now, lifetime, ticket_lifetime,
                                            ticketkeys.new_key())
        self.due = now + lifetime
        return ring

    def commit(self) -> None:
        """Put the ring in use, for the master and every worker."""
        if self.ring is not None:
            _ticketkeys.set([k.wire() for k in self.ring.keys], self.ring.encrypt)
            log.info(f"{{core}} ticket keys ({self.label()}): {self.ring.names()}")

    def tick(self, now: float) -> None:
        """Once a second in the master: a changed file read again, a new epoch, a rotation."""
        kind = self.source[0]
        if kind in ("haproxy", "nginx"):
            self._reread()
        elif self.ring is not None and now >= self.due:
            if kind == "seed":
                self.ring = self._load(now)
            else:
                self.ring, self.made = ticketkeys.rotate(
                    self.ring, self.made, now, self.source[1], self.source[2],
                    ticketkeys.new_key())
                self.due = now + self.source[1]
            self.commit()

    def _reread(self) -> None:
        stamps = _stamp(self.paths)
        if stamps == self.stamps:
            return
        try:
            ring = self._load(0.0)
        except KeyFileError as e:
            if str(e) != self.failing:
                log.error(f"{{core}} ticket keys: {e}; the keys in use stay")
            self.failing = str(e)
            return  # (stamps kept: read again at the next tick, as it may be half written)
        self.stamps, self.failing = stamps, ""
        if ring != self.ring:
            self.ring = ring
            self.commit()
