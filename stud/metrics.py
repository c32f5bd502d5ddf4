"""Metrics: counted in each worker, summed by the master, served in Prometheus text format.

Workers count in plain Python ints and dicts (a few increments per connection) and send a
snapshot to the master over their control channel every second and when they exit. The master
keeps the last snapshot of each live worker plus the totals of workers that are gone, so
counters never go backwards across respawns and reloads, and renders them with the standard
``prometheus_client`` exposition writer.
"""

from __future__ import annotations

import bisect
import json
import socket
from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from stud import sesscache, tickets

HS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONNECT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0)

# name -> (help, label name or None); plain counters kept by every worker
COUNTERS = {
    "accepted": ("Client connections accepted", None),
    "handshakes": ("TLS handshakes completed", None),
    "handshakes_failed": ("TLS handshakes failed, by reason", "reason"),
    "resumed": ("TLS handshakes that resumed a session", None),
    "tls_version": ("Handshakes by negotiated TLS version", "version"),
    "cipher": ("Handshakes by negotiated cipher", "cipher"),
    "bytes_up": ("Bytes relayed from clients to the backend", None),
    "bytes_down": ("Bytes relayed from the backend to clients", None),
    "backend_connect_failed": ("Backend connections that failed", None),
    "timeouts": ("Connections closed by a timeout, by kind", "kind"),
    "rate_limited": ("Connections delayed by the empty-connection limit", None),
    "handshakes_limited": ("New full handshakes the handshake limiter delayed or refused",
                           "action"),
    "accept_errors": ("accept() failures (file descriptors exhausted)", None),
    "client_certificates": ("Handshakes by client certificate verification: ok, none (optional) "
                            "or why it was refused", "result"),
    "client_identities": ("Verified client certificates by identity (SAN URI, else subject)",
                          "identity"),
    "session_store": ("--session-store events: lookups, hits, misses, timeouts, errors, "
                      "skipped (left alone after a failure), unreadable, stored, dropped",
                      "event"),
}


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def add(self, counts: list[int], total: float) -> None:
        """Add another histogram's bucket counts and sum (same bounds)."""
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
        self.sum += total


class Stats:
    """One worker's counters. Plain attributes: the hot path pays an increment, no more."""

    def __init__(self) -> None:
        for name, (_, label) in COUNTERS.items():
            setattr(self, name, Counter() if label else 0)
        self.handshake_seconds = Histogram(HS_BUCKETS)
        self.connect_seconds = Histogram(CONNECT_BUCKETS)
        self.open = 0

    def add_conn_stats(self, handshakes: int, resumed: int, versions: dict[str, int],
                       ciphers: dict[str, int], handshake_seconds: tuple[list[int], float],
                       connect_seconds: tuple[list[int], float],
                       counts: tuple[int, int, int]) -> None:
        """Add what stud._flow.Poller.take_stats() counted (the Conns'); counts: accepted,
        and bytes up and down of the Conns closed in C."""
        self.accepted += counts[0]
        self.bytes_up += counts[1]
        self.bytes_down += counts[2]
        self.handshakes += handshakes
        self.resumed += resumed
        self.tls_version.update(versions)
        self.cipher.update(ciphers)
        self.handshake_seconds.add(*handshake_seconds)
        self.connect_seconds.add(*connect_seconds)

    def snapshot(self) -> bytes:
        data = {name: getattr(self, name) for name in COUNTERS}
        data["open"] = self.open
        for h in ("handshake_seconds", "connect_seconds"):
            hist = getattr(self, h)
            data[h] = [hist.counts, hist.sum]
        return b"S" + json.dumps(data, separators=(",", ":")).encode()


def merge(total: dict, snap: dict) -> None:
    """Add one snapshot (decoded JSON) into a running total of the same shape."""
    for key, value in snap.items():
        if key == "open":
            continue
        if isinstance(value, dict):
            bucket = total.setdefault(key, {})
            for k, v in value.items():
                bucket[k] = bucket.get(k, 0) + v
        elif isinstance(value, list):
            counts, s = total.get(key, [[0] * len(value[0]), 0.0])
            total[key] = [[a + b for a, b in zip(counts, value[0], strict=True)], s + value[1]]
        else:
            total[key] = total.get(key, 0) + value


class Board:
    """The master's view: live snapshots per worker, plus what exited workers counted."""

    def __init__(self) -> None:
        self.live: dict[int, dict] = {}
        self.gone: dict = {}
        self.gauges = {"workers": 0, "generation": 1, "certificates_skipped": 0}
        self.master_counters = {"worker_restarts": 0, "reloads_ok": 0, "reloads_failed": 0}
        self.crls: dict[str, tuple[int, float, float]] = {}  # trust.Trusts.crl_gauges()
        self.crl_sources: list[tuple[str, bool | None, object]] = []  # crlfetch.gauges()

    def update(self, pid: int, message: bytes) -> None:
        try:
            self.live[pid] = json.loads(message[1:])
        except ValueError:
            pass  # a truncated message from a dying worker: the previous one stands

    def exited(self, pid: int) -> None:
        snap = self.live.pop(pid, None)
        if snap:
            merge(self.gone, snap)

    def totals(self) -> tuple[dict, int]:
        total: dict = {}
        merge(total, self.gone)
        for snap in self.live.values():
            merge(total, snap)
        return total, sum(s.get("open", 0) for s in self.live.values())

    def collect(self) -> Iterator:
        total, open_conns = self.totals()
        yield GaugeMetricFamily("stud_connections_open", "Client connections open now",
                                value=open_conns)
        yield GaugeMetricFamily("stud_workers", "Worker processes alive",
                                value=self.gauges["workers"])
        yield GaugeMetricFamily("stud_generation", "Configuration generation (1 + reloads)",
                                value=self.gauges["generation"])
        yield GaugeMetricFamily("stud_certificates_skipped",
                                "pem-dir files that did not load (this generation)",
                                value=self.gauges["certificates_skipped"])
        yield CounterMetricFamily("stud_worker_restarts", "Workers replaced after dying",
                                  value=self.master_counters["worker_restarts"])
        reloads = CounterMetricFamily("stud_reloads", "Reloads (SIGHUP), by result",
                                      labels=["result"])
        reloads.add_metric(["ok"], self.master_counters["reloads_ok"])
        reloads.add_metric(["failed"], self.master_counters["reloads_failed"])
        yield reloads
        yield from session_cache_metrics()
        yield from ticket_metrics()
        yield from self.crl_metrics()
        for name, (text, label) in COUNTERS.items():
            value = total.get(name, {} if label else 0)
            if label:
                fam = CounterMetricFamily(f"stud_{name}", text, labels=[label])
                for k, v in sorted(value.items()):
                    fam.add_metric([k], v)
            else:
                fam = CounterMetricFamily(f"stud_{name}", text, value=value)
            yield fam
        for name, bounds, text in (
                ("handshake_seconds", HS_BUCKETS, "Time from accept to a completed handshake"),
                ("connect_seconds", CONNECT_BUCKETS, "Time to connect to the backend")):
            counts, s = total.get(name, [[0] * (len(bounds) + 1), 0.0])
            cumulative, acc = [], 0
            for bound, n in zip((*map(str, bounds), "+Inf"), counts, strict=True):
                acc += n
                cumulative.append((bound, acc))
            yield HistogramMetricFamily(f"stud_{name}", text, buckets=cumulative, sum_value=s)

    def crl_metrics(self) -> Iterator:
        """The CRLs client certificates are checked against, and --crl-fetch's downloads."""
        families = [GaugeMetricFamily(f"stud_crl_{name}", text, labels=["issuer"])
                    for name, text in (
                        ("entries", "Certificates a CRL in use revokes"),
                        ("age_seconds", "Seconds since a CRL in use was issued (thisUpdate)"),
                        ("next_update_seconds", "Seconds until a CRL in use expires (negative: "
                                                "expired, its clients are refused)"))]
        for issuer, values in sorted(self.crls.items()):
            for fam, value in zip(families, values, strict=True):
                fam.add_metric([issuer], value)
        yield from families
        fetched = GaugeMetricFamily("stud_crl_fetch_ok", "--crl-fetch: whether the last "
                                    "download from a distribution point gave a good CRL",
                                    labels=["url"])
        for url, ok, _ in self.crl_sources:
            if ok is not None:
                fetched.add_metric([url], int(ok))
        yield fetched

    def render(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return generate_latest(registry)


def session_cache_metrics() -> Iterator:
    """The shared session cache (-C), as the master sees it (its memory is shared)."""
    st = sesscache.stats()
    if st is None:
        return
    yield GaugeMetricFamily("stud_session_cache_sessions", "Sessions in the shared cache",
                            value=st["sessions"])
    yield GaugeMetricFamily("stud_session_cache_size", "Slots of the shared cache (-C)",
                            value=st["size"])
    fam = CounterMetricFamily("stud_session_cache_events", "Shared session cache events",
                              labels=["event"])
    for event in ("stored", "hits", "misses", "evicted", "too_big", "resets", "received",
                  "rejected"):
        fam.add_metric([event], st[event])
    yield fam


def ticket_metrics() -> Iterator:
    """Per ticket key (its name in hex): tickets issued and opened, and the keys in use (the
    ring is shared memory: the master's view is every worker's)."""
    st = tickets.stats()
    if st is None:
        return
    events = CounterMetricFamily("stud_tickets", "Session tickets by key and event: issued, "
                                 "decrypted with the current key, an older or a newer one, "
                                 "renewed (issued again under the current key)",
                                 labels=["key", "event"])
    for name, counts in sorted(st["keys"].items()):
        for event, n in counts.items():
            events.add_metric([name.hex(), event], n)
    yield events
    yield CounterMetricFamily("stud_tickets_unknown_key", "Tickets under a key not in use here "
                              "(expired, or a node with other keys)", value=st["unknown"])
    ring = GaugeMetricFamily("stud_ticket_key", "Ticket keys in use (1) by role", labels=["key",
                             "role"])
    for i, name in enumerate(st["ring"]):
        ring.add_metric([name.hex(), "encrypt" if i == st["encrypt"] else "decrypt"], 1)
    yield ring


def serve_one(listener: socket.socket, board: Board) -> None:
    """Answer one scrape on the master's metrics socket (non-blocking, short timeouts)."""
    try:
        conn, _ = listener.accept()
    except OSError:
        return
    with conn:
        conn.settimeout(1.0)
        try:
            request = conn.recv(4096)
            if not request.startswith(b"GET "):
                conn.sendall(b"HTTP/1.0 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            body = board.render()
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: " + CONTENT_TYPE_LATEST.encode()
                         + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
                         + body)
        except OSError:
            pass
