"""idle_mem: KiB of proxy RSS per idle established TLS connection, a fresh proxy instance
for each connection count."""

from __future__ import annotations

import json
import subprocess
import time

from .clients import pyload_argv
from .common import PROXY_CPUS, log
from .context import Bench, Instance
from .procs import Started, max_conns, rss_kib
from .proxies import start_proxy, stop_proxy


def idle_phase(b: Bench) -> None:
    if "idle_mem" not in b.args.scenarios:
        return
    cap = max_conns(b.args.nofile)
    for wanted in b.args.idle_counts:
        count = min(wanted, cap)
        if count < wanted:
            b.results.idle_capped[wanted] = count
            log(
                f"idle_mem: {wanted} connections need {2 * wanted + 300} fds in the proxy "
                f"worker, the fd limit is {b.args.nofile} (hard limit; raising it needs "
                f"CAP_SYS_RESOURCE): measuring {count} instead"
            )
        for kind in b.kinds:
            if b.over_budget():
                log("time budget used up: skipping the rest of idle_mem")
                return
            inst = start_proxy(b, kind, f"idle{count}", b.work / "ecdsa.pem", 1, PROXY_CPUS)
            try:
                if inst.proc:
                    res = idle_one(b, inst, count)
                    if res:
                        b.results.idle.setdefault(str(count), {})[kind] = res
            finally:
                stop_proxy(b, inst)


def idle_argv(b: Bench, port: int, count: int) -> list[str]:
    setup = b.args.idle_setup_timeout
    if b.tlsload:
        opts = f"-m idle -p {port} -n {count} -c 64 -w 900 -S {setup}"
        return [str(b.tlsload), *opts.split()]
    return pyload_argv(
        "idle", port, *f"--count {count} --hold 900 --setup-timeout {setup}".split()
    )


def idle_hold(b: Bench, port: int, count: int) -> tuple[Started, dict]:
    """Starts an idle client; returns it and its 'ready' report."""
    client = b.procs.spawn(
        f"idle-client-{count}",
        idle_argv(b, port, count),
        cpus=b.client_cpus,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        log=b.work / "idle-client.log",
    )
    line = client.read_line(b.args.idle_setup_timeout + 60)
    return client, json.loads(line) if line else {}


def idle_release(b: Bench, client: Started) -> dict:
    """Closes the client's stdin, which ends the hold; returns its 'done' report."""
    done: dict = {}
    try:
        assert client.popen.stdin
        client.popen.stdin.close()
        line = client.read_line(30)
        done = json.loads(line) if line else {}
    except (OSError, ValueError):
        pass
    b.procs.stop(client)
    return done


def idle_one(b: Bench, inst: Instance, count: int) -> dict | None:
    warm, _ = idle_hold(b, inst.port, 4)  # touch the code paths once
    idle_release(b, warm)
    time.sleep(1.0)
    rss0 = rss_kib(inst.pids())
    t0 = time.monotonic()
    client, ready = idle_hold(b, inst.port, count)
    setup = time.monotonic() - t0
    try:
        time.sleep(1.0)
        pids = inst.pids()
        rss1 = rss_kib(pids)
        time.sleep(1.0)  # still there a moment later?
        alive = inst.proc is not None and inst.proc.alive()
    finally:
        done = idle_release(b, client)
    est = int(ready.get("established", 0))
    res = {
        "count": count,
        "established": est,
        "errors": ready.get("errors"),
        "unfinished": ready.get("unfinished"),
        "dropped": done.get("dropped"),
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "setup_s": setup,
        "proxy_alive": alive,
        "proxy_pids": len(pids),
        "kib_per_conn": (rss1 - rss0) / est if est else None,
        "tool": "tlsload" if b.tlsload else "pyload",
    }
    res["clean"] = est == count and not ready.get("errors") and not done.get("dropped") and alive
    _report_idle(b, inst.kind, res, ready, done)
    return res


def _report_idle(b: Bench, kind: str, res: dict, ready: dict, done: dict) -> None:
    count, est, alive = res["count"], res["established"], res["proxy_alive"]
    if not res["clean"]:
        b.problem(
            kind,
            f"idle_mem {count}: established {est}/{count}, "
            f"errors {ready.get('errors')} {ready}, dropped {done.get('dropped')}, "
            f"proxy alive {alive}",
        )
    kib = f"{res['kib_per_conn']:.1f}" if res["kib_per_conn"] is not None else "-"
    log(
        f"idle_mem {count:>6} {kind:<8} {kib:>7} KiB/conn  (RSS {res['rss_before_kib']} -> "
        f"{res['rss_after_kib']} KiB, {est} established in {res['setup_s']:.1f}s)"
    )
