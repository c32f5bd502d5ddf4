"""mem_creep: whether a proxy's memory comes back. A million connections opened and closed
(rounds of full TLS 1.3 handshakes alternating with resumed ones, so that both paths and the
session cache churn), RSS of all its processes read after each round once the connections
are gone: the last reading against the one after the first 100,000 connections."""

from __future__ import annotations

import time

from .clients import run_hs
from .common import ALL_CPUS, CLIENT_CPUS, CLIENT_ERRORS, log
from .context import Bench, Instance
from .procs import rss_kib
from .proxies import start_proxy, stop_proxy

ROUND_S = 10.0  # one measurement round of new connections
SETTLE_S = 1.0  # after a round: the proxy closes the last connections
GROWTH_TARGET = 0.05  # at most 5% more RSS at the end than after the first mark
KINDS = ("stud", "hitch")


def creep_phase(b: Bench) -> None:
    if "mem_creep" not in b.args.scenarios:
        return
    total, first = b.args.creep_conns, b.args.creep_conns // 10
    b.results.creep.update(total=total, first_mark=first, growth_target=GROWTH_TARGET)
    b.client_cpus = ALL_CPUS  # two client processes: one cannot keep two workers busy
    try:
        for kind in (k for k in b.kinds if k in KINDS):
            inst = start_proxy(b, kind, "creep", b.work / "ecdsa.pem", 2, ALL_CPUS)
            try:
                if inst.proc:
                    b.results.creep.setdefault("runs", {})[kind] = _churn(b, inst, total, first)
            finally:
                stop_proxy(b, inst)
    finally:
        b.client_cpus = CLIENT_CPUS


def _churn(b: Bench, inst: Instance, total: int, first: int) -> dict:
    done, errors, rounds = 0, 0, 0
    series: list[tuple[int, int]] = [(0, rss_kib(inst.pids()))]
    at_first: int | None = None
    deadline = time.monotonic() + b.args.creep_timeout
    while done < total and time.monotonic() < deadline and inst.proc and inst.proc.alive():
        try:
            r = run_hs(b, inst, 13, resume=rounds % 2 == 1,
                       dur=b.args.duration if b.args.smoke else ROUND_S)
        except CLIENT_ERRORS as e:
            b.problem(inst.kind, f"mem_creep: a client failed: {e}")
            break
        done, errors, rounds = done + r["events"], errors + r["errors"], rounds + 1
        time.sleep(SETTLE_S)
        series.append((done, rss_kib(inst.pids())))
        if at_first is None and done >= first:
            at_first = series[-1][1]
    end = series[-1][1]
    growth = (end - at_first) / at_first if at_first else None
    res = {"connections": done, "errors": errors, "rounds": rounds, "series": series,
           "rss_at_first_mark_kib": at_first, "rss_end_kib": end, "growth": growth,
           "complete": done >= total, "proxy_alive": bool(inst.proc and inst.proc.alive())}
    if not res["complete"] or not res["proxy_alive"]:
        b.problem(inst.kind, f"mem_creep: {done}/{total} connections in "
                  f"{b.args.creep_timeout:.0f} s, proxy alive {res['proxy_alive']}")
    shown = "-" if growth is None else f"{100 * growth:+.1f}%"
    log(f"mem_creep {inst.kind:<6} {done} connections ({errors} errors): RSS {at_first} KiB "
        f"after {first}, {end} KiB at the end ({shown})")
    return res
