"""conns_many: tens of thousands of concurrent TLS connections through one proxy with several
workers, each connection alive and answering a checked request at the end: connections held,
errors, RSS per connection, time to establish them, and each worker's share.

It runs in a network namespace of its own (netns.py): the proxy reaches the backend from one
source address, and 40,000 connections to one backend need more ephemeral ports than the
host's range. Clients are several tlsload processes, each from its own source address, and
the backend an nginx with several workers, so that no process nears its descriptor limit
except, by design, the proxy's workers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time

from .backend import nginx_conf
from .common import ALL_CPUS, log
from .context import Bench, Instance
from .netns import NetnsError, inside
from .prepare import which
from .procs import Started, rss_kib
from .proxies import free_port, start_proxy, stop_proxy, tcp_ready

CLIENT_CONNS = 10_000  # per tlsload process: well inside its descriptor limit
BACKEND_WORKERS = 4
FD_SLACK = 1_000  # descriptors a proxy worker uses besides its connections
SHARE_TARGET = 1.25  # the busiest worker's connections over the mean
SMALL_CONNS = 2_000
KINDS = ("stud", "hitch")


def many_phase(b: Bench) -> None:
    if "conns_many" not in b.args.scenarios:
        return
    kinds = [k for k in b.kinds if k in KINDS]
    if not kinds or not b.tlsload or not which("nginx"):
        b.results.many["skipped"] = "needs tlsload, nginx and stud or hitch"
        log(f"conns_many: skipped ({b.results.many['skipped']})")
        return
    saved = b.backend_port
    try:
        with inside(f"studbench-{os.getpid()}"):
            b.backend_port = free_port(b.ports)
            backend = _start_backend(b)
            try:
                _runs(b, kinds)
            finally:
                b.procs.stop(backend)
    except NetnsError as e:
        b.results.many["skipped"] = f"no network namespace ({e})"
        log(f"conns_many: skipped: {b.results.many['skipped']}")
    finally:
        b.backend_port = saved
    b.results.many["share_target"] = SHARE_TARGET


def configurations(b: Bench) -> list[tuple[int, int, int]]:
    """(connections, workers, repetitions): the big run once, and (not in --smoke) a small
    one on 4 workers, repeated: with few connections each, the shares vary most."""
    count = b.args.many_conns
    big = (count, b.args.many_workers or workers_for(count, b.args.nofile), 1)
    return [big] if b.args.smoke else [big, (SMALL_CONNS, 4, b.args.reps)]


def _runs(b: Bench, kinds: list[str]) -> None:
    for count, workers, reps in configurations(b):
        key = f"{count} on {workers} workers"
        for rep in range(reps):
            for kind in kinds if rep % 2 == 0 else kinds[::-1]:
                if b.over_budget():
                    log("time budget used up: skipping the rest of conns_many")
                    return
                res = _one(b, kind, count, workers)
                b.results.many.setdefault(key, {}).setdefault(kind, []).append(res)


def workers_for(count: int, nofile: int) -> int:
    """Enough workers that one holding twice its share of connections (two descriptors each)
    stays under the descriptor limit; at least 4, so that the shares mean something."""
    per_worker = max(1, (nofile - FD_SLACK) // 4)  # twice the share, two fds per connection
    return max(4, math.ceil(count / per_worker))


def _start_backend(b: Bench) -> Started:
    work = b.work / "many"
    work.mkdir(exist_ok=True)
    (work / "www").mkdir(exist_ok=True)
    conf = nginx_conf(work, b.backend_port, b.args.nofile, workers=BACKEND_WORKERS)
    argv = [which("nginx") or "nginx", "-p", str(work), "-c", str(conf)]
    b.commands.setdefault("conns_many backend", " ".join(argv))
    backend = b.procs.spawn("many-backend", argv, cpus=ALL_CPUS, log=work / "backend.log")
    if not tcp_ready(b.backend_port, 15):
        raise RuntimeError(f"conns_many backend did not start:\n{backend.log_tail()}")
    return backend


def _one(b: Bench, kind: str, count: int, workers: int) -> dict:
    inst = start_proxy(b, kind, "many", b.work / "ecdsa.pem", workers, ALL_CPUS)
    try:
        if not inst.proc:
            return {"error": inst.error}
        return _measure(b, inst, count)
    finally:
        stop_proxy(b, inst)


def _measure(b: Bench, inst: Instance, count: int) -> dict:
    time.sleep(0.5)
    pids = inst.pids()
    base = {pid: sockets(pid) for pid in pids}
    rss0 = rss_kib(pids)
    t0 = time.monotonic()
    clients = _spawn_clients(b, inst.port, count)
    readies = [_json(c.read_line(b.args.idle_setup_timeout + 60)) for c in clients]
    setup_s = time.monotonic() - t0
    time.sleep(1.0)
    pids = inst.pids()
    rss1 = rss_kib(pids)
    held = {pid: (sockets(pid) - base.get(pid, 0)) // 2 for pid in pids}
    dones = [_release(b, c) for c in clients]
    est = sum(r.get("established", 0) for r in readies)
    res = {
        "count": count,
        "established": est,
        "errors": sum(r.get("errors", 0) for r in readies),
        "error_detail": _sum_errors(readies),
        "dropped": sum(d.get("dropped", 0) for d in dones),
        "checked": sum(d.get("checked", 0) for d in dones),
        "answered": sum(d.get("answered", 0) for d in dones),
        "setup_s": round(setup_s, 2),
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "kib_per_conn": (rss1 - rss0) / est if est else None,
        "per_worker": worker_shares(held, inst.workers),
        "proxy_alive": bool(inst.proc and inst.proc.alive()),
    }
    shares = res["per_worker"]
    res["busiest_over_mean"] = shares["busiest_over_mean"] if shares else None
    res["clean"] = (est == count and res["answered"] == count and not res["dropped"]
                    and res["proxy_alive"])
    if not res["clean"]:
        b.problem(inst.kind, f"conns_many: {est}/{count} established, {res['answered']} "
                  f"answered at the end, {res['dropped']} dropped, errors "
                  f"{res['error_detail']}, proxy alive {res['proxy_alive']}")
    log(f"conns_many {inst.kind:<6} {est}/{count} up in {setup_s:.1f}s, {res['answered']} "
        f"answered; RSS {rss0} -> {rss1} KiB ({_fmt(res['kib_per_conn'])} KiB/conn); "
        f"workers {shares.get('counts') if shares else '?'}")
    return res


def _spawn_clients(b: Bench, port: int, count: int) -> list[Started]:
    n = math.ceil(count / CLIENT_CONNS)
    sizes = [count // n + (i < count % n) for i in range(n)]
    clients = []
    for i, size in enumerate(sizes):
        # each client its own source address: its own ephemeral ports towards the proxy
        argv = [str(b.tlsload), "-m", "idle", "-p", str(port), "-n", str(size), "-c", "32",
                "-w", "900", "-S", str(b.args.idle_setup_timeout), "-B", f"127.0.1.{i + 1}",
                "-e"]
        b.commands.setdefault(f"conns_many client ({n} of them)", " ".join(argv))
        clients.append(b.procs.spawn(f"many-client-{i}", argv, cpus=ALL_CPUS,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     log=b.work / f"many-client-{i}.log"))
    return clients


def _release(b: Bench, client: Started) -> dict:
    """Closing its stdin makes the client ask once more on every connection and report."""
    done: dict = {}
    try:
        assert client.popen.stdin
        client.popen.stdin.close()
        done = _json(client.read_line(120))
    finally:
        b.procs.stop(client)
    return done


def sockets(pid: int) -> int:
    """How many sockets a process holds."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    n = 0
    for fd in fds:
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


def worker_shares(held: dict[int, int], workers: int) -> dict:
    """The connections of the `workers` processes holding the most, and the busiest one's
    over their mean (a proxied connection is two sockets in one worker)."""
    counts = sorted(held.values(), reverse=True)[:workers]
    if not counts or not sum(counts):
        return {}
    mean = sum(counts) / len(counts)
    return {"counts": counts, "mean": mean, "busiest_over_mean": counts[0] / mean,
            "least_over_mean": counts[-1] / mean}


def _sum_errors(readies: list[dict]) -> dict[str, int]:
    keys = {k for r in readies for k in r if k.startswith("err_")}
    return {k: sum(r.get(k, 0) for r in readies) for k in sorted(keys)
            if sum(r.get(k, 0) for r in readies)}


def _json(line: str) -> dict:
    try:
        return json.loads(line) if line else {}
    except ValueError:
        return {}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"
