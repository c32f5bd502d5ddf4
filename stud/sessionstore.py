"""--session-store: TLS 1.2 session IDs shared by every stud of a fleet through Redis (or
Valkey), in a worker.

New sessions come from stud._sesscache's outbox (an eventfd wakes the loop) and are written
sealed (stud.sessionrecord) with a TTL to their end. A connection whose ClientHello asks to
resume an ID this machine does not hold waits, un-handshaked, while the store is asked; for
at most --session-store-timeout, then it goes on with whatever came (a full handshake if
nothing did). Other connections are served meanwhile. A store that fails or does not answer
in time is left alone for a second (full handshakes, counted) and said once a minute: no
connection fails and no worker waits because of it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from urllib.parse import urlsplit

from stud import clienthello, sessionrecord
from stud.config import ConfigError
from stud.log import log
from stud.ticketkeys import Key, from_bytes

try:
    from stud import _sesscache, _ticketkeys
except ImportError:  # (preload() refuses --session-store then)
    _sesscache = _ticketkeys = None

PEEK = 16384           # a whole first record
BACKOFF = 1.0          # after a failure, the store is left alone this long
SAY_EVERY = 60.0       # a failing store is logged at most this often (per worker)
WRITE_TIMEOUT = 2.0
MAX_WRITES = 64        # batches on their way; more sessions are dropped (counted)
# Connections waiting at once; more go on without asking: a flood of made-up IDs must not
# become a flood of lookups.
MAX_LOOKUPS = 256
WARM = 2               # connections opened at start: a lookup and a write at once


def preload() -> None:
    """In the master: the Redis client library, for workers that may not import any more
    (after chroot); ConfigError where the store cannot work."""
    if _sesscache is None or _ticketkeys is None:
        raise ConfigError("session-store: needs stud's compiled modules (stud._sesscache, "
                          "stud._ticketkeys), which are not built here")
    import redis.asyncio  # noqa: F401


def shown(url: str) -> str:
    """The URL without its password, for the log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


class SessionStore:
    def __init__(self, url: str, timeout: float, loop: asyncio.AbstractEventLoop,
                 events: Counter) -> None:
        """events: where to count (the worker's stats)."""
        import redis.asyncio  # (loaded by the master: preload())

        self.client = redis.asyncio.from_url(url, socket_connect_timeout=WRITE_TIMEOUT,
                                             socket_timeout=WRITE_TIMEOUT)
        self.errors = (redis.RedisError, OSError)
        self.name = shown(url)
        self.timeout = timeout
        self.loop = loop
        self.events = events
        self.down_until = 0.0
        self.said = -SAY_EVERY
        self.failing = False
        self.pending: set[asyncio.Task] = set()
        self.writes = 0
        self.lookups = 0
        self.sealing: dict[bytes, bytes] = {}  # ticket key name -> its record key
        self.outbox = -1

    def start(self) -> None:
        self.outbox = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        _sesscache.export(self.outbox)
        self.loop.add_reader(self.outbox, self._export)
        self._spawn(self._connect())

    def _spawn(self, coro: Coroutine) -> None:
        task = self.loop.create_task(coro)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _connect(self) -> None:
        """Connections made before they are needed: a lookup has milliseconds, not the
        round trips of a connect and the client's hello to the server."""
        try:
            await asyncio.wait_for(asyncio.gather(*(self.client.ping()
                                                    for _ in range(WARM))), WRITE_TIMEOUT)
        except (TimeoutError, *self.errors) as e:
            self._failed(str(e) or type(e).__name__)

    # -- keys --------------------------------------------------------------------------
    def _keys(self) -> tuple[dict[bytes, Key], Key | None]:
        wires, encrypt = _ticketkeys.keys()
        keys = {w[:16]: from_bytes(w, "haproxy") for w in wires}  # (wire order: name|aes|hmac)
        current = from_bytes(wires[encrypt], "haproxy") if wires else None
        return keys, current

    def _sealing(self, key: Key) -> bytes:
        if key.name not in self.sealing:
            if len(self.sealing) > 64:
                self.sealing.clear()
            self.sealing[key.name] = sessionrecord.sealing_key(key)
        return self.sealing[key.name]

    # -- health ------------------------------------------------------------------------
    def _up(self) -> bool:
        if time.monotonic() < self.down_until:
            self.events["skipped"] += 1
            return False
        return True

    def _failed(self, why: str) -> None:
        now = time.monotonic()
        self.down_until = now + BACKOFF
        self.failing = True
        if now - self.said >= SAY_EVERY:
            self.said = now
            log.error(f"{{core}} session-store {self.name}: {why}; full handshakes until it "
                      "answers")

    def _answered(self) -> None:
        if self.failing:
            self.failing = False
            log.info(f"{{core}} session-store {self.name} answers again")

    # -- lookups -------------------------------------------------------------------------
    def hold(self, sock: socket.socket, server_tls13: bool, then: Callable[[], None]) -> bool:
        """Whether sock waits for the store (then() serves it when the answer is in): its
        ClientHello asks to resume a session ID this machine does not hold."""
        try:
            first = sock.recv(PEEK, socket.MSG_PEEK)
        except OSError:
            return False  # (nothing yet, or gone: the handshake finds out)
        sid = clienthello.resumes_by_id(clienthello.parse(first), server_tls13)
        if sid is None or _sesscache.has(sid) or not self._up():
            return False
        if self.lookups >= MAX_LOOKUPS:
            self.events["skipped"] += 1
            return False
        self.lookups += 1
        self._spawn(self._lookup(sid, then))
        return True

    async def _lookup(self, sid: bytes, then: Callable[[], None]) -> None:
        self.events["lookups"] += 1
        try:
            record = await asyncio.wait_for(self.client.get(sessionrecord.store_key(sid)),
                                            self.timeout)
        except TimeoutError:
            self.events["timeouts"] += 1
            self._failed(f"no answer within {self.timeout * 1000:g} ms")
            record = None
        except self.errors as e:
            self.events["errors"] += 1
            self._failed(str(e) or type(e).__name__)
            record = None
        else:
            self._answered()
        try:
            self.events["hits" if record and self._adopt(sid, record) else "misses"] += 1
        finally:
            self.lookups -= 1
            then()

    def _adopt(self, sid: bytes, record: bytes) -> bool:
        keys, _ = self._keys()
        key = keys.get(sessionrecord.name_of(record))
        der = sessionrecord.open_record(self._sealing(key), sid, record) if key else None
        if der is None:
            self.events["unreadable"] += 1
            return False
        return _sesscache.add(sid, der)

    # -- writes ----------------------------------------------------------------------------
    def _export(self) -> None:
        try:
            os.eventfd_read(self.outbox)
        except BlockingIOError:
            return
        sessions, dropped = _sesscache.exported()
        self.events["dropped"] += dropped
        if not sessions:
            return
        _, key = self._keys()
        if key is None or self.writes >= MAX_WRITES or not self._up():
            self.events["dropped"] += len(sessions)
            return
        sealing = self._sealing(key)
        now = int(time.time())
        batch = [(sessionrecord.store_key(sid), sessionrecord.seal(key, sealing, sid, der),
                  expires - now) for sid, der, expires in sessions if expires > now]
        self.writes += 1
        self._spawn(self._write(batch))

    async def _write(self, batch: list[tuple[bytes, bytes, int]]) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            for key, record, ttl in batch:
                pipe.set(key, record, ex=ttl)
            await asyncio.wait_for(pipe.execute(), WRITE_TIMEOUT)
        except TimeoutError:
            self.events["dropped"] += len(batch)
            self._failed(f"a write took over {WRITE_TIMEOUT:g} s")
        except self.errors as e:
            self.events["dropped"] += len(batch)
            self._failed(str(e) or type(e).__name__)
        else:
            self.events["stored"] += len(batch)
            self._answered()
        finally:
            self.writes -= 1
