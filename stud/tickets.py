"""The session-ticket keys in use: read from a file (HAProxy's or nginx's), derived from a
seed, or made here and rotated; put in stud._ticketkeys' ring, which the master and every
worker share, and changed there when a file changes, an epoch begins or a key has served its
time. Key names are logged in hex, key bytes never; made keys never touch the disk.

Without the compiled module, OpenSSL's own keys serve (one per context, made at start and kept
across reloads for unchanged certificates) and key files or a seed are refused.
"""

from __future__ import annotations

import ssl
import time
from typing import NamedTuple

from stud import ticketkeys
from stud.config import Config, ConfigError, file_stamp
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


class Source(NamedTuple):
    """Where a configuration's ticket keys come from (equal sources: the same keys)."""

    kind: str                # haproxy, nginx (key files), seed, rotate (made here)
    paths: tuple[str, ...]
    layout: str
    lifetime: int            # seed epochs, and rotation
    ticket_lifetime: int     # how long old keys must keep decrypting

    @classmethod
    def of(cls, cfg: Config) -> Source:
        times = (cfg.ticket_key_lifetime, cfg.session_timeout)
        if cfg.tls_ticket_keys:
            return cls("haproxy", (cfg.tls_ticket_keys,), cfg.ticket_key_layout or "haproxy",
                       *times)
        if cfg.ssl_session_ticket_key:
            return cls("nginx", tuple(cfg.ssl_session_ticket_key),
                       cfg.ticket_key_layout or "nginx", *times)
        if cfg.ticket_key_seed:
            return cls("seed", (cfg.ticket_key_seed,), "", *times)
        return cls("rotate", (), "", *times)

    def label(self) -> str:
        option = {"haproxy": "tls-ticket-keys", "nginx": "ssl-session-ticket-key",
                  "seed": "ticket-key-seed"}.get(self.kind)
        if option is None:
            return f"made here, a new one every {self.lifetime} s"
        return f"{option} {' '.join(self.paths)}"


def read_key_file(path: str) -> bytes:
    """A key or seed file's bytes; KeyFileError names it when it cannot be read."""
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
        self.source = Source.of(cfg)
        if self.source.kind != "rotate" and not AVAILABLE:
            raise ConfigError(f"{self.source.label()}: ticket keys of its own need stud's "
                              "compiled module stud._ticketkeys, which is not built here")
        self.stamps = [file_stamp(p) for p in self.source.paths]
        self.failing = ""  # a changed file that does not read: said once
        self.made: list[float] = []  # rotation: when each key started encrypting
        self.due = 0.0  # when the ring changes next by itself (seed, rotation)
        self.seed = b""
        try:
            if self.source.kind == "rotate" and previous and previous.source == self.source:
                self.ring, self.made, self.due = previous.ring, previous.made, previous.due
            else:
                self.ring = self._load(time.time())
        except KeyFileError as e:
            raise ConfigError(str(e)) from None

    def _load(self, now: float) -> Ring | None:
        src = self.source
        if src.kind == "haproxy":
            return ticketkeys.parse_haproxy(read_key_file(src.paths[0]), src.paths[0], src.layout)
        if src.kind == "nginx":
            return ticketkeys.parse_raw([(p, read_key_file(p)) for p in src.paths], src.layout)
        if src.kind == "seed":
            if not self.seed:
                self.seed = ticketkeys.parse_seed(read_key_file(src.paths[0]), src.paths[0])
            self.due = ticketkeys.seed_next_change(now, src.lifetime)
            return ticketkeys.seed_ring(self.seed, now, src.lifetime, src.ticket_lifetime)
        return self._rotate(None, now) if AVAILABLE else None

    def _rotate(self, ring: Ring | None, now: float) -> Ring:
        ring, self.made = ticketkeys.rotate(ring, self.made, now, self.source.lifetime,
                                            self.source.ticket_lifetime, ticketkeys.new_key())
        self.due = now + self.source.lifetime
        return ring

    def commit(self) -> None:
        """Put the ring in use, for the master and every worker."""
        if self.ring is not None:
            _ticketkeys.set([k.wire() for k in self.ring.keys], self.ring.encrypt)
            log.info(f"{{core}} ticket keys ({self.source.label()}): {self.ring.names()}")

    def tick(self, now: float) -> None:
        """Once a second in the master: a changed file read again, a new epoch, a rotation."""
        if self.source.kind in ("haproxy", "nginx"):
            self._reread()
        elif self.ring is not None and now >= self.due:
            self.ring = self._load(now) if self.source.kind == "seed" else \
                self._rotate(self.ring, now)
            self.commit()

    def _reread(self) -> None:
        stamps = [file_stamp(p) for p in self.source.paths]
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
