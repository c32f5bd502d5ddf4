"""fleet, part 2: the proxy's CPU per resumed TLS 1.2 session ID (no tickets), the session
from the local cache against from Redis. Pinned as the pinned rows: the measured instance has
1 worker on CPU 0, everything else (the client, which runs in this process, the backend,
Redis, stud A) runs on CPU 1. Connections are started at a steady RATE.

Each repetition, for stud (instances A and B share the key file and Redis; only B's CPU is
counted):
  full   n new sessions made on B (full handshakes; B also writes them to Redis),
  local  those n sessions resumed on B, once each: found in B's own cache,
  redis  n new sessions made on A (not measured), then resumed on B, once each: B's cache
         does not hold them, so each resumption waits for a Redis lookup first.
local and redis resume the same number of sessions, each for the first time, on the same
process and configuration; they differ only in where the session is, so redis - local is the
lookup (ClientHello peek, GET, unsealing, adding to the cache). HAProxy and hitch: full and
local on one instance (a session made on another process is not resumed by either)."""

from __future__ import annotations

import os
import re
import resource
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .common import CLIENT_CPUS, HOST, PROXY_CPUS, log
from .context import Bench, Instance
from .measure import measure
from .proxies import free_port, start_proxy, stop_proxies
from .redisproc import Redis, store_args
from .resumption import Paced, client_ctx, paced

RATE = 250.0  # connections per second
SECONDS = 4.0  # per measured series (smoke: 1)
MAX_REPS = 3
CASES = ("full", "local", "redis")


def cpu_per_resumption(b: Bench, keys: Path, redis: Redis | None) -> None:
    n = max(20, round(RATE * (1.0 if b.args.smoke else min(SECONDS, b.args.duration))))
    pem = b.work / "ecdsa.pem"
    insts: dict[str, Instance] = {}
    metrics = free_port(b.ports)
    try:
        for kind in b.kinds:
            if kind == "stud":
                insts["B"] = start_proxy(b, kind, "fleet-B-1w-pinned", pem, 1, PROXY_CPUS,
                                         extra=(*store_args(kind, redis), "--metrics",
                                                f"{HOST},{metrics}"), ticket_keys=keys)
                insts["A"] = start_proxy(b, kind, "fleet-A-1w", pem, 1, CLIENT_CPUS,
                                         extra=store_args(kind, redis), ticket_keys=keys)
            else:
                insts[kind] = start_proxy(b, kind, "fleet-1w-pinned", pem, 1, PROXY_CPUS)
        ctx = client_ctx("tls12_session_id")
        with pinned_self(CLIENT_CPUS):
            for inst in insts.values():
                if inst.proc:  # warm-up: new sessions, each resumed once
                    paced(ctx, inst.port, paced(ctx, inst.port, [None] * 20, None).sessions,
                          None)
            for rep in range(min(MAX_REPS, b.args.reps)):
                if rep and b.over_budget():
                    log(f"time budget used up: fleet CPU after {rep} repetitions")
                    break
                for kind in b.kinds if rep % 2 == 0 else b.kinds[::-1]:
                    _rep(b, kind, insts, redis, ctx, n, rep)
        if redis and insts.get("B") and insts["B"].proc:
            _store_counters(b, metrics)
    finally:
        stop_proxies(b, list(insts.values()))


def _rep(b: Bench, kind: str, insts: dict[str, Instance], redis: Redis | None,
         ctx: ssl.SSLContext, n: int, rep: int) -> None:
    if kind != "stud":
        if insts[kind].proc:
            _full_and_local(b, insts[kind], None, ctx, n, rep)
        return
    a, inst = insts["A"], insts["B"]
    if not (a.proc and inst.proc and redis):
        return
    for case in ("local", "redis") if rep % 2 == 0 else ("redis", "local"):
        if case == "local":
            _full_and_local(b, inst, redis, ctx, n, rep)
        else:
            _from_redis(b, a, inst, redis, ctx, n, rep)


def _from_redis(b: Bench, a: Instance, inst: Instance, redis: Redis, ctx: ssl.SSLContext,
                n: int, rep: int) -> None:
    """n sessions made on A (not measured), each resumed once on inst (B)."""
    before = redis.dbsize() or 0
    made = paced(ctx, a.port, [None] * n, None)
    _wait_stored(b, redis, before + len(made.sessions))
    res, _ = _measured(b, inst, "fleet redis", lambda: paced(ctx, inst.port, made.sessions, RATE))
    _record(b, "redis", inst, res, rep)


def _full_and_local(b: Bench, inst: Instance, redis: Redis | None, ctx: ssl.SSLContext,
                    n: int, rep: int) -> None:
    before = (redis.dbsize() or 0) if redis else 0
    res, made = _measured(b, inst, "fleet full", lambda: paced(ctx, inst.port, [None] * n, RATE))
    _record(b, "full", inst, res, rep)
    if made is None:
        return
    if redis:  # (B's writes to Redis end before the next window opens)
        _wait_stored(b, redis, before + len(made.sessions))
    res, _ = _measured(b, inst, "fleet local", lambda: paced(ctx, inst.port, made.sessions, RATE))
    _record(b, "local", inst, res, rep)


def _wait_stored(b: Bench, redis: Redis, want: int) -> None:
    got = redis.wait_dbsize(want)
    if got is None or got < want:
        b.problem("stud", f"fleet: Redis holds {got} sessions, {want} expected")
    time.sleep(0.3)


def _measured(b: Bench, inst: Instance, scenario: str, series: Callable[[], Paced]
              ) -> tuple[dict | None, Paced | None]:
    """measure() of a series of connections made by this process (its own CPU time is the
    client's)."""
    got: list[Paced] = []

    def run() -> dict:
        got.append(series())
        return got[-1].result()

    t0 = self_cpu()
    res = measure(b, inst, scenario, run)
    if res:
        res["client_cpu_s"] = self_cpu() - t0
        res["generator_util"] = (res["client_cpu_s"] + res["backend_cpu_s"]) / res["wall_s"]
    return res, got[0] if got else None


def _record(b: Bench, case: str, inst: Instance, res: dict | None, rep: int) -> None:
    if res is None:
        return
    per = res["events"] if case == "full" else res["resumed"]
    res.update(rep=rep, cpu_per_conn_s=res["proxy_cpu_s"] / per if per else None)
    runs = b.results.fleet.setdefault("cpu", {}).setdefault(case, {})
    runs.setdefault(inst.kind, []).append(res)
    per_us = f"{res['cpu_per_conn_s'] * 1e6:.0f}" if per else "-"
    log(f"rep {rep + 1} fleet {case:<5} {inst.kind:<8} {res['value']:6.1f} conn/s, "
        f"{res['resumed']}/{res['events']} resumed, proxy CPU {per_us} us per "
        f"{'connection' if case == 'full' else 'resumption'} ({res['proxy_util']:.0%})")
    if case == "full" and res["resumed"]:
        b.problem(inst.kind, f"fleet full: {res['resumed']} of {res['events']} resumed")
    elif case != "full" and res["resumed"] < res["events"] and inst.kind == "stud":
        b.problem(inst.kind, f"fleet {case}: {res['resumed']} of {res['events']} resumed")


def _store_counters(b: Bench, port: int) -> None:
    """B's session-store counters (the workers send theirs every second): every lookup
    must have been one of the redis case's, and every hit one of its resumptions."""
    time.sleep(1.5)
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError as e:
        b.problem("stud", f"fleet: metrics of B: {e}")
        return
    got = {m[1]: float(m[2]) for m in re.finditer(
        r'^stud_session_store_total\{[^}]*event="(\w+)"[^}]*\} (\S+)$', text, re.M)}
    runs = b.results.fleet.get("cpu", {}).get("redis", {}).get("stud", [])
    want = {"lookups": sum(r["events"] + r["errors"] for r in runs),
            "hits": sum(r["resumed"] for r in runs)}
    b.results.fleet["store"] = {"B": got, "redis case": want}
    log(f"fleet: B's session store {got}; the redis case made {want}")
    if any(got.get(k, 0) != v for k, v in want.items()):
        b.problem("stud", f"fleet: B's session-store counters {got}, expected {want}")


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@contextmanager
def pinned_self(cpus: set[int]) -> Iterator[None]:
    """This process (the client) on `cpus` meanwhile."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)
