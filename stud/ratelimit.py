"""Voxer's abuse protection, sans I/O: clients that keep opening TLS connections and closing
them without sending a byte get their next connections delayed.

Per client IP (IPv4 and IPv6 alike; Voxer's fork lumped every IPv6 client into one bucket),
count connections that completed a handshake and closed without data, and those that sent
data, over a window. An IP with at least ``limit`` empty connections, and fewer than one data
connection per eight empty ones, is limited until its window ends.
"""

from __future__ import annotations

MAX_TRACKED = 100_000  # IPs remembered at most: a flood of sources cannot grow memory unbounded


class EmptyConnLimiter:
    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.seen: dict[str, list] = {}  # ip -> [window start, empty, data]

    def record(self, ip: str, empty: bool, now: float) -> None:
        entry = self.seen.get(ip)
        if entry is None or now - entry[0] >= self.window:
            if entry is None and len(self.seen) >= MAX_TRACKED:
                self.prune(now)
                if len(self.seen) >= MAX_TRACKED:
                    return
            entry = self.seen[ip] = [now, 0, 0]
        entry[1 if empty else 2] += 1

    def limited(self, ip: str, now: float) -> bool:
        entry = self.seen.get(ip)
        if entry is None or now - entry[0] >= self.window:
            return False
        return entry[1] >= self.limit and entry[2] * 8 <= entry[1]

    def prune(self, now: float) -> None:
        """Forget IPs whose window has ended."""
        self.seen = {ip: e for ip, e in self.seen.items() if now - e[0] < self.window}
