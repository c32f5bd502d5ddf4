"""Session-ticket keys: the file formats of HAProxy and nginx, stud's seed, and which keys
encrypt and decrypt at a given time. Pure functions, no I/O; stud.tickets keeps them in use.

A key is a 16-byte name (written into every ticket, so a server finds the key a ticket needs),
an AES-CBC key and an HMAC-SHA256 key, 16 bytes each (a 48-byte key) or 32 (an 80-byte key),
as OpenSSL's ticket callback takes them. The formats store those three parts in different
orders (``LAYOUTS``): the same 80 random bytes are different keys to HAProxy and to nginx.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NAME_LEN = 16
SIZES = (48, 80)        # name + AES + HMAC, 16-byte or 32-byte keys
MAX_KEYS = 16           # a ring: what stud._ticketkeys holds at once
HAPROXY_RING = 3        # HAProxy keeps the last 3 lines of a file (TLS_TICKETS_NO)
SEED_LEN = 32
SEED_SALT = b"stud ticket-key seed v1"

# byte order of a key file's fields after the name, per format and key size
LAYOUTS = {
    "haproxy": {48: ("aes", "hmac"), 80: ("aes", "hmac")},   # struct tls_sess_key_128/256
    "nginx": {48: ("aes", "hmac"), 80: ("hmac", "aes")},     # ngx_ssl_session_ticket_keys
    "apache": {48: ("hmac", "aes"), 80: ("hmac", "aes")},    # SSLSessionTicketKeyFile, OpenSSL
}


class KeyFileError(ValueError):
    """A key or seed file that cannot be used; the message names the file (and line)."""


@dataclass(frozen=True)
class Key:
    name: bytes
    aes: bytes
    hmac: bytes

    def __post_init__(self) -> None:
        if len(self.name) != NAME_LEN or len(self.aes) not in (16, 32) or \
                len(self.hmac) != len(self.aes):
            raise ValueError("a ticket key is a 16-byte name and two 16- or 32-byte keys")

    @property
    def hex(self) -> str:
        """The name as logged and labelled: never the key bytes."""
        return self.name.hex()

    @property
    def size(self) -> int:
        return NAME_LEN + 2 * len(self.aes)

    def wire(self) -> bytes:
        """name ‖ AES ‖ HMAC: what stud._ticketkeys takes."""
        return self.name + self.aes + self.hmac

    def __repr__(self) -> str:  # no key bytes in tracebacks or logs
        return f"Key({self.hex})"


@dataclass(frozen=True)
class Ring:
    """The keys in use, newest first; ``keys[encrypt]`` issues tickets, every key decrypts."""

    keys: tuple[Key, ...]
    encrypt: int = 0

    def __post_init__(self) -> None:
        if not 1 <= len(self.keys) <= MAX_KEYS or not 0 <= self.encrypt < len(self.keys):
            raise ValueError(f"a ring holds 1 to {MAX_KEYS} keys, one of them encrypting")
        if len({k.name for k in self.keys}) != len(self.keys):
            raise ValueError("two ticket keys have the same name")

    @property
    def encrypting(self) -> Key:
        return self.keys[self.encrypt]

    def names(self) -> str:
        """For the log: each name in hex, the encrypting one marked."""
        return " ".join(("*" if i == self.encrypt else "") + k.hex
                        for i, k in enumerate(self.keys))


def from_bytes(data: bytes, layout: str) -> Key:
    """One 48- or 80-byte key in ``layout``'s field order."""
    if len(data) not in SIZES:
        raise ValueError(f"a key is 48 or 80 bytes, not {len(data)}")
    half = (len(data) - NAME_LEN) // 2
    fields = dict(zip(LAYOUTS[layout][len(data)],
                      (data[NAME_LEN:NAME_LEN + half], data[NAME_LEN + half:]), strict=True))
    return Key(data[:NAME_LEN], fields["aes"], fields["hmac"])


def to_bytes(key: Key, layout: str) -> bytes:
    """The inverse of from_bytes()."""
    order = LAYOUTS[layout][key.size]
    return key.name + b"".join(getattr(key, f) for f in order)


def parse_haproxy(text: bytes, path: str, layout: str = "haproxy") -> Ring:
    """A ``tls-ticket-keys`` file: one base64 key per line, all of one size. As HAProxy, only
    the last 3 count and the one before the last encrypts (so a key appended now is accepted
    everywhere before any node encrypts with it); with fewer lines the first encrypts."""
    keys, size = [], None
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        try:
            raw = base64.b64decode(line.strip(), validate=True)
        except binascii.Error:
            raise KeyFileError(f"{path}:{n}: not a base64 key") from None
        if len(raw) not in SIZES:
            raise KeyFileError(f"{path}:{n}: a key is 48 or 80 bytes, this one is {len(raw)}")
        if size is not None and len(raw) != size:
            raise KeyFileError(f"{path}:{n}: {len(raw)}-byte key after {size}-byte ones")
        size = len(raw)
        keys.append(from_bytes(raw, layout))
    if not keys:
        raise KeyFileError(f"{path}: no key")
    last = keys[-HAPROXY_RING:]
    encrypt = last[-2] if len(last) > 1 else last[0]
    newest_first = tuple(reversed(last))
    return _ring(newest_first, newest_first.index(encrypt), path)


def parse_raw(files: list[tuple[str, bytes]], layout: str = "nginx") -> Ring:
    """``ssl_session_ticket_key`` files, nginx's: each holds one raw 48- or 80-byte key; the
    first file's key encrypts, all decrypt."""
    keys = []
    for path, data in files:
        if len(data) not in SIZES:
            raise KeyFileError(f"{path}: a key file holds 48 or 80 bytes, this one {len(data)}")
        keys.append(from_bytes(data, layout))
    if len(keys) > MAX_KEYS:
        raise KeyFileError(f"{files[-1][0]}: at most {MAX_KEYS} ticket key files")
    return _ring(tuple(keys), 0, files[0][0] if files else "ssl-session-ticket-key")


def _ring(keys: tuple[Key, ...], encrypt: int, path: str) -> Ring:
    try:
        return Ring(keys, encrypt)
    except ValueError as e:
        raise KeyFileError(f"{path}: {e}") from None


def format_haproxy(keys: list[Key]) -> bytes:
    """A tls-ticket-keys file of ``keys``, oldest first."""
    return b"".join(base64.b64encode(to_bytes(k, "haproxy")) + b"\n" for k in keys)


def new_key(size: int = 80, random: bytes | None = None) -> Key:
    """A random key (``random``: its bytes, for tests)."""
    data = os.urandom(size) if random is None else random
    return from_bytes(data, "haproxy")


# -- the seed: every node derives the same key for each epoch ------------------------------
def parse_seed(text: bytes, path: str) -> bytes:
    """A seed file: 32 bytes as 64 hex digits, whitespace anywhere ignored."""
    digits = b"".join(text.split())
    try:
        seed = bytes.fromhex(digits.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise KeyFileError(f"{path}: a seed is 64 hex digits") from None
    if len(seed) != SEED_LEN:
        raise KeyFileError(f"{path}: a seed is {SEED_LEN} bytes (64 hex digits), this one "
                        f"{len(seed)}")
    return seed


def format_seed(seed: bytes) -> bytes:
    return seed.hex().encode() + b"\n"


def epoch_key(seed: bytes, epoch: int, lifetime: int) -> Key:
    """The key of one epoch (``lifetime`` seconds of wall clock, numbered from the Unix
    epoch). The lifetime is part of the derivation: nodes configured differently make keys
    that do not collide, they just do not resume each other's tickets."""
    info = b"ticket key" + struct.pack(">Qq", lifetime, epoch)
    okm = HKDF(hashes.SHA256(), 80, SEED_SALT, info).derive(seed)
    return Key(okm[:16], okm[16:48], okm[48:])


def seed_ring(seed: bytes, now: float, lifetime: int, ticket_lifetime: int) -> Ring:
    """At wall-clock time ``now``: the current epoch's key encrypts; the next one decrypts (a
    node whose clock is ahead by up to half an epoch issues with it), and so do the previous
    ones, as many as tickets live (at least one)."""
    epoch = int(now // lifetime)
    back = min(max(1, -(-ticket_lifetime // lifetime)), MAX_KEYS - 2)
    keys = tuple(epoch_key(seed, e, lifetime) for e in range(epoch + 1, epoch - back - 1, -1))
    return Ring(keys, 1)


def seed_next_change(now: float, lifetime: int) -> float:
    """When the seed's ring changes next (the next epoch begins)."""
    return (int(now // lifetime) + 1) * lifetime


# -- rotation without a file: keys made here, one machine ------------------------------------
def rotate(ring: Ring | None, made: list[float], now: float, lifetime: int,
           ticket_lifetime: int, fresh: Key) -> tuple[Ring, list[float]]:
    """The ring after a rotation at ``now``: ``fresh`` encrypts, and the previous keys decrypt
    as long as a ticket they issued lives (``made``: when each key of ``ring`` started
    encrypting, newest first; a key stops encrypting when the next starts)."""
    keys, times = [fresh], [now]
    if ring is not None:
        for key, started, retired in zip(ring.keys, made, [now, *made], strict=False):
            if retired + ticket_lifetime > now and len(keys) < MAX_KEYS:
                keys.append(key)
                times.append(started)
    return Ring(tuple(keys), 0), times


def rotation_fits(lifetime: int, ticket_lifetime: int) -> str | None:
    """Why a --ticket-key-lifetime cannot be used, or None: the old keys a ticket lifetime
    needs must fit in the ring."""
    needed = -(-ticket_lifetime // lifetime) + 1
    if needed > MAX_KEYS:
        shortest = -(-ticket_lifetime // (MAX_KEYS - 1))
        return (f"keys that live {lifetime} s must stay {needed} at a time for tickets that "
                f"live {ticket_lifetime} s; at most {MAX_KEYS}: use at least {shortest} s")
    return None
