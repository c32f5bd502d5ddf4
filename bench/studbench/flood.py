"""flood: legitimate clients while one source prefix attacks. Legitimate clients (from
127.0.0.1) make keep-alive requests and new resumed connections (wrk, each with its p99); the
attacker (from 127.0.9.1, another /24) opens full handshakes as fast as it can, or holds
connections whose handshake never finishes (a whole ClientHello, then silence; or only the
start of one), or sends garbage. Each proxy is measured without attack and
under each attack: the legitimate figures, failed requests, the proxy's RSS and whether it
survived. stud runs twice, with its handshake limiter off (the default) and on.

Placement as the pinned rows: the proxy, 1 worker, on CPU 0; clients, attacker and backend
on CPU 1, the attacker at a lower priority (nice) so that its own CPU use does not slow the
legitimate clients' side: what the attack costs them is what it costs the proxy."""

from __future__ import annotations

import json
import os
import subprocess
import time

from .clients import WRK_LUA, http_result
from .common import CLIENT_CPUS, HOST, PROXY_CPUS, log
from .context import Bench, Instance
from .procs import rss_kib
from .proxies import start_proxy, stop_proxy

ATTACKER = "127.0.9.1"
ATTACKS = ("none", "full", "hello", "partial", "garbage")
SMOKE_ATTACKS = ("none", "partial")
ATTACK_SLOTS = {"full": 64, "hello": 4_000, "partial": 4_000, "garbage": 64}
RAMP_S = 1.0  # the attack runs this long before the legitimate clients start
LIMITER = ("--handshake-rate=50", "--handshake-burst=20")
LIMITED = "stud (limiter)"
P99_TARGET = 2.0  # legitimate p99 under attack over without, with the limiter on
LEGIT = {"keepalive": ("16", []), "resumed": ("8", ["-H", "Connection: close"])}


def flood_phase(b: Bench) -> None:
    if "flood" not in b.args.scenarios or not b.wrk or not b.tlsload:
        if "flood" in b.args.scenarios:
            b.results.flood["skipped"] = "needs wrk and tlsload"
        return
    setups = [(k, k, ()) for k in b.kinds if k in ("stud", "hitch")]
    if "stud" in b.kinds:
        setups.insert(1, (LIMITED, "stud", LIMITER))
    b.results.flood.update(attacker=ATTACKER, slots=ATTACK_SLOTS, limiter=" ".join(LIMITER),
                           p99_target=P99_TARGET)
    for name, kind, extra in setups:
        if b.over_budget():
            log("time budget used up: skipping the rest of flood")
            return
        inst = start_proxy(b, kind, f"flood-{len(extra)}", b.work / "ecdsa.pem", 1, PROXY_CPUS,
                           extra=extra)
        try:
            if inst.proc:
                b.results.flood.setdefault("runs", {})[name] = _attacks(b, inst, name)
        finally:
            stop_proxy(b, inst)


def _attacks(b: Bench, inst: Instance, name: str) -> dict:
    out = {}
    attacks = b.args.flood_attacks or (SMOKE_ATTACKS if b.args.smoke else ATTACKS)
    for rep in range(b.args.reps):
        for attack in attacks if rep % 2 == 0 else attacks[::-1]:
            res = _under(b, inst, attack)
            out.setdefault(attack, []).append(res)
            legit = res["legit"]
            log(f"flood {name:<15} {attack:<8} keep-alive {legit['keepalive'].get('value', 0):.0f}"
                f" req/s p99 {legit['keepalive'].get('p99_ms', 0):.1f} ms; resumed "
                f"{legit['resumed'].get('value', 0):.0f} conn/s p99 "
                f"{legit['resumed'].get('p99_ms', 0):.1f} ms; failed {res['legit_failed']}; "
                f"RSS {res['rss_max_kib']} KiB; attacker {res.get('attacker', {})}")
            if not res["proxy_alive"]:
                b.problem(inst.kind, f"flood ({name}, {attack}): the proxy died")
                return out
    return out


def _under(b: Bench, inst: Instance, attack: str) -> dict:
    """The legitimate clients' figures while `attack` runs (none: alone)."""
    dur = max(1, round(b.args.duration))
    attacker = None
    if attack != "none":
        argv = ["nice", "-n", "10", str(b.tlsload), "-m", "hs" if attack == "full" else attack,
                "-p", str(inst.port), "-c", str(ATTACK_SLOTS[attack]), "-d",
                str(dur + 2 * RAMP_S), "-B", ATTACKER]
        b.commands.setdefault(f"flood attacker ({attack})", " ".join(argv))
        attacker = b.procs.spawn(f"attacker-{attack}", argv, cpus=CLIENT_CPUS,
                                 stdout=subprocess.PIPE, log=b.work / "attacker.log")
        time.sleep(RAMP_S)
    rss = [rss_kib(inst.pids())]
    legit = _legit(b, inst, dur, rss)
    res: dict = {"legit": legit, "rss_max_kib": max(rss)}
    if attacker:
        line = attacker.read_line(dur + 30)
        b.procs.stop(attacker)
        res["attacker"] = _summary(json.loads(line) if line else {})
    res["legit_failed"] = sum(r.get("errors", 0) for r in legit.values())
    res["proxy_alive"] = bool(inst.proc and inst.proc.alive())
    return res


def _legit(b: Bench, inst: Instance, dur: int, rss: list[int]) -> dict[str, dict]:
    """Both kinds of legitimate clients at once; RSS sampled meanwhile."""
    lua = b.work / "wrk.lua"
    if not lua.exists():
        lua.write_text(WRK_LUA)
    procs = {}
    for kind, (conns, extra) in LEGIT.items():
        argv = [str(b.wrk), "-t1", f"-c{conns}", f"-d{dur}s", "--timeout", "10s", "--latency",
                "-s", str(lua), *extra, f"https://{HOST}:{inst.port}/"]
        b.commands.setdefault(f"flood legitimate client ({kind})", " ".join(argv))
        procs[kind] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       text=True, preexec_fn=_on_client_cpus)
    deadline = time.monotonic() + dur + 30
    while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
        rss.append(rss_kib(inst.pids()))
    out = {}
    for kind, p in procs.items():
        try:
            text = p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
        except subprocess.TimeoutExpired:
            p.kill()
            text = p.communicate()[0]
        out[kind] = _wrk(text)
    return out


def _on_client_cpus() -> None:
    os.sched_setaffinity(0, CLIENT_CPUS)


def _wrk(text: str) -> dict:
    try:
        return http_result(text, "wrk")
    except (StopIteration, ValueError):
        return {"value": 0, "errors": 1, "error_detail": "no result from wrk"}


def _summary(r: dict) -> dict:
    """What the attacker achieved: full handshakes completed, or connections opened/held."""
    if r.get("mode") == "hs":
        return {"handshakes": r.get("completed", 0), "rate": round(r.get("rate", 0)),
                "errors": r.get("errors", 0)}
    return {k: r[k] for k in ("opened", "held", "closed") if k in r}
