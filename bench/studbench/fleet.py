"""fleet: several instances of a proxy that resume each other's sessions, as behind an L4 load
balancer. stud: one HAProxy-format ticket-key file (`--tls-ticket-keys`) and one Redis
(`--session-store`) for TLS 1.2 session IDs; HAProxy: processes with the same
`tls-ticket-keys` file; hitch cannot share ticket keys and is measured as it is.

1. Resumption across three instances (2 workers each, unpinned): a client that reconnects
   to each instance in turn offering its last session, for TLS 1.3 tickets, TLS 1.2 tickets
   and TLS 1.2 session IDs.
2. CPU per resumed connection, session from the local cache against from Redis: fleetcpu.py.

b.results.fleet: "resumption" (kind -> mode -> counts), "cpu" (case -> kind -> runs),
"store" (stud's session-store counters), "notes".
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

from .common import ALL_CPUS, log
from .context import Bench, Instance
from .fleetcpu import cpu_per_resumption
from .proxies import start_proxy, stop_proxies, stud_env
from .redisproc import Redis, start_redis, store_args
from .resumption import resume_test

INSTANCES = 3
SHARES_KEYS = ("stud", "haproxy")  # hitch has no ticket-key file


def fleet_phase(b: Bench) -> None:
    if "fleet" not in b.args.scenarios:
        return
    fleet = b.results.fleet
    fleet["notes"] = []
    redis = start_redis(b) if "stud" in b.kinds else None
    if "stud" in b.kinds and redis is None:
        log("fleet: redis-server is not installed (or did not start): skipped")
        fleet["notes"].append("skipped: no redis-server for stud's --session-store")
        return
    keys = ticket_key_file(b)
    if "hitch" in b.kinds:
        fleet["notes"].append("hitch has no ticket-key file: each instance makes its own keys "
                              "(measured as it is)")
    try:
        across_instances(b, keys, redis)
        cpu_per_resumption(b, keys, redis)
    finally:
        if redis:
            b.procs.stop(redis.proc)


def ticket_key_file(b: Bench) -> Path:
    """Three keys in HAProxy's format, from `stud ticket-keys new` (else written here: one
    base64 line of 80 random bytes per key, as HAProxy reads them)."""
    path = b.work / "tls-ticket-keys"
    if b.stud.argv:
        cmd = [*b.stud.argv, "ticket-keys", "new", str(path)]
        try:
            p = subprocess.run(cmd, env=stud_env(b), capture_output=True, text=True, timeout=30)
            b.commands.setdefault("ticket keys", " ".join(cmd))
            if p.returncode == 0 and path.exists():
                return path
            log(f"fleet: {' '.join(cmd)} failed: {p.stderr.strip()[-300:]}")
        except subprocess.TimeoutExpired:
            log("fleet: stud ticket-keys timed out")
    lines = [base64.b64encode(os.urandom(80)).decode() for _ in range(3)]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def across_instances(b: Bench, keys: Path, redis: Redis | None) -> None:
    """Each proxy as three instances, a client reconnecting to each in turn."""
    pem = b.work / "ecdsa.pem"
    for kind in b.kinds:
        insts: list[Instance] = []
        try:
            for i in range(INSTANCES):
                insts.append(start_proxy(
                    b, kind, f"fleet-{i}", pem, 2, ALL_CPUS, extra=store_args(kind, redis),
                    ticket_keys=keys if kind in SHARES_KEYS else None))
            if not all(inst.proc for inst in insts):
                continue
            got = resume_test([inst.port for inst in insts], b.args.resume_reconnects)
            b.results.fleet.setdefault("resumption", {})[kind] = got
            log(f"fleet {kind:<8} across {INSTANCES} instances: "
                + ", ".join(f"{k} {v['resumed']}/{v['reconnects']}" for k, v in got.items()))
            for mode, r in got.items():
                if kind == "stud" and (r["resumed"] < r["reconnects"] or r["errors"]):
                    b.problem(kind, f"fleet: {mode} resumed {r['resumed']} of {r['reconnects']}"
                              f" across {INSTANCES} instances ({r['errors']} errors)")
        finally:
            stop_proxies(b, insts)
