"""The handshake limiter (--handshake-rate), sans I/O: a token bucket per client prefix that
only full TLS handshakes drain, the expensive part of serving TLS. Resumed handshakes and
established connections are free.

A connection whose ClientHello offers no resumption takes a token when it is accepted; when
the prefix has none, it waits for the next one (delayed), or, when that is further away than
the longest delay, it is refused. One that offers resumption goes through, and takes its
token when it closes if it turned out to be a full handshake (a made-up ticket buys nothing).
"""

from __future__ import annotations

import ipaddress

MAX_TRACKED = 100_000  # prefixes remembered at most (then the idle ones are forgotten)


class HandshakeLimiter:
    def __init__(self, rate: float, burst: float, v4_bits: int, v6_bits: int,
                 max_delay: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.bits = {4: v4_bits, 6: v6_bits}
        self.max_delay = max_delay
        self.buckets: dict[str, list[float]] = {}  # prefix -> [tokens, when counted]
        # (ipaddress takes longer than the rest of a connection's judgement; a flood comes
        # from few addresses)
        self.prefixes: dict[str, str] = {}

    def prefix(self, ip: str) -> str:
        """The client's prefix (an IPv4-mapped address counts as IPv4)."""
        known = self.prefixes.get(ip)
        if known is not None:
            return known
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        net = str(ipaddress.ip_network(f"{addr}/{self.bits[addr.version]}", strict=False))
        if len(self.prefixes) >= MAX_TRACKED:
            self.prefixes.clear()
        self.prefixes[ip] = net
        return net

    def _bucket(self, prefix: str, now: float) -> list[float]:
        b = self.buckets.get(prefix)
        if b is None:
            if len(self.buckets) >= MAX_TRACKED:
                self.prune(now)
            b = self.buckets[prefix] = [self.burst, now]
        else:
            b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
            b[1] = now
        return b

    def admit(self, ip: str, now: float, full: bool) -> float | None:
        """Whether a new connection may start its handshake: 0 now, a delay in seconds (its
        token is taken), or None: refuse it. ``full``: its hello offers no resumption."""
        if not full:
            return 0.0
        b = self._bucket(self.prefix(ip), now)
        wait = 0.0 if b[0] >= 1 else (1 - b[0]) / self.rate
        if wait > self.max_delay:
            return None
        b[0] -= 1
        return wait

    def charge(self, ip: str, now: float) -> None:
        """A connection admitted free turned out to be a full handshake."""
        b = self._bucket(self.prefix(ip), now)
        b[0] = max(b[0] - 1, -self.max_delay * self.rate)

    def prune(self, now: float) -> None:
        """Forget the prefixes whose bucket has refilled (they are as new ones)."""
        self.buckets = {p: b for p, b in self.buckets.items()
                        if b[0] + (now - b[1]) * self.rate < self.burst}
