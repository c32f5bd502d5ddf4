"""A TLS session as the session store keeps it: sealed with AES-256-GCM under a key derived
(HKDF-SHA256) from a ticket key, so that a read of the store alone exposes no master secret,
and a record opens only where that ticket key is in use. Pure functions, no I/O.

A record is the ticket key's name (16 bytes), a 12-byte nonce, then the DER session sealed
with the session ID as associated data (a record copied under another ID does not open).
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from stud.ticketkeys import NAME_LEN, Key

NONCE_LEN = 12
SALT = b"stud session store v1"
PREFIX = b"stud:session:"


def sealing_key(key: Key) -> bytes:
    """The record key of a ticket key (the ticket key itself is never used twice over)."""
    return HKDF(hashes.SHA256(), 32, SALT, key.name).derive(key.aes + key.hmac)


def store_key(session_id: bytes) -> bytes:
    """Where a session lives in the store."""
    return PREFIX + session_id.hex().encode()


def seal(key: Key, sealing: bytes, session_id: bytes, der: bytes,
         nonce: bytes | None = None) -> bytes:
    """``sealing``: sealing_key(key), which callers keep."""
    nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
    return key.name + nonce + AESGCM(sealing).encrypt(nonce, der, session_id)


def name_of(record: bytes) -> bytes:
    """The name of the ticket key a record was sealed under."""
    return record[:NAME_LEN]


def open_record(sealing: bytes, session_id: bytes, record: bytes) -> bytes | None:
    """The DER session, or None when the record is not one sealed under this key for this
    session ID (or was altered)."""
    if len(record) < NAME_LEN + NONCE_LEN + 16:
        return None
    nonce = record[NAME_LEN:NAME_LEN + NONCE_LEN]
    try:
        return AESGCM(sealing).decrypt(nonce, record[NAME_LEN + NONCE_LEN:], session_id)
    except InvalidTag:
        return None
