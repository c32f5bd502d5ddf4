"""Side by side: stud and hitch at the same time on the proxy CPU, each with its own client
on the other CPU (the paired rows); and hitch against a second hitch, which shows what each
method can resolve on this host (the A/A rows)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .clients import run_hs, run_keepalive, run_resumed, warm_up
from .common import CLIENT_ERRORS, PAIRED, PROXY_CPUS, log
from .context import Bench, Instance
from .measure import measure, measure_events
from .procs import CLK_TCK, cpu_ticks
from .proxies import start_proxy, stop_proxies


def paired_phase(b: Bench) -> None:
    """The ratio of their CPU per event, with the machine's drift (which moves sequential
    runs by several percent here) hitting both alike."""
    on = "paired" in b.args.scenarios
    wanted = [s for s in PAIRED if s in b.args.scenarios] if on else []
    if not wanted or not {"stud", "hitch"} <= set(b.kinds):
        return
    for scenario in wanted:
        rsa = scenario == "hs_new_rsa"
        pem = b.work / ("rsa.pem" if rsa else "ecdsa.pem")
        insts = [start_proxy(b, k, f"{scenario}-paired", pem, 1, PROXY_CPUS)
                 for k in ("stud", "hitch")]
        try:
            if all(i.proc for i in insts):
                for rep in range(b.args.reps):
                    r = side_by_side(b, scenario, insts, 12 if rsa else 13, rep)
                    if r:
                        b.results.paired.setdefault(scenario, []).append(r)
        finally:
            stop_proxies(b, insts)


def aa_phase(b: Bench) -> None:
    """hitch against itself (the true ratio is 1): hs_new_rsa in turn (as the pinned rows)
    and side by side (as the paired rows), and p99_ms in turn (as the pinned rows)."""
    if "aa" not in b.args.scenarios or "hitch" not in b.kinds:
        return
    pem = b.work / "rsa.pem"
    insts = [start_proxy(b, "hitch", f"hitch-{n}", pem, 1, PROXY_CPUS) for n in "AB"]
    try:
        if not all(i.proc for i in insts):
            return
        for inst in insts:
            warm_up(b, inst, 12)
        for rep in range(b.args.reps):
            _aa_in_turn(b, insts, rep)
            if r := side_by_side(b, "hs_new_rsa", insts, 12, rep):
                b.results.aa.setdefault("paired", []).append(r)
    finally:
        stop_proxies(b, insts)


def _aa_in_turn(b: Bench, insts: list[Instance], rep: int) -> None:
    """One repetition of the pinned rows' method, the order alternating between them."""
    per: dict[str, dict[str, float]] = {"sequential": {}, "p99 sequential": {}}
    for inst in insts if rep % 2 == 0 else insts[::-1]:
        res = measure_events(b, inst, "hs_new_rsa (A/A)", lambda i=inst: run_hs(b, i, 12))
        if res and res.get("per_cpu"):
            per["sequential"][inst.label] = res["per_cpu"]
    for inst in insts if rep % 2 else insts[::-1]:
        res = measure(b, inst, "p99_ms (A/A)", lambda i=inst: run_keepalive(b, i))
        if res and res.get("p99_ms"):
            per["p99 sequential"][inst.label] = res["p99_ms"]
    for method, values in per.items():
        if len(values) == 2:
            r = values["hitch-A"] / values["hitch-B"]
            b.results.aa.setdefault(method, []).append(r)
            log(f"rep {rep + 1} A/A {method}: hitch-A/hitch-B {r:.3f}")


def side_by_side(b: Bench, scenario: str, insts: list[Instance], tls: int, rep: int,
                 check: Callable[[Instance, dict], None] | None = None) -> float | None:
    """Both instances loaded at once: the second's CPU per event over the first's (the
    first's speed relative to the second). check(instance, result) sees each client's
    result."""
    results: dict[int, dict] = {}

    def load(i: int) -> None:
        inst = insts[i]
        try:
            results[i] = (run_resumed(b, inst) if scenario == "conn_resumed"
                          else run_hs(b, inst, tls))
        except CLIENT_ERRORS as e:
            b.problem(inst.kind, f"{scenario} (paired): client failed: {e}")

    b.current = f"{scenario} (paired)"
    before = [sum(cpu_ticks(i.pids()).values()) for i in insts]
    threads = [threading.Thread(target=load, args=(i,)) for i in range(len(insts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(b.args.duration + 120)
    cpu = [(sum(cpu_ticks(inst.pids()).values()) - before[i]) / CLK_TCK
           for i, inst in enumerate(insts)]
    for i, res in results.items():
        if check:
            check(insts[i], res)
    if len(results) < 2 or not all(results[i]["events"] and cpu[i] for i in range(2)):
        return None
    per = [cpu[i] / results[i]["events"] * 1e6 for i in range(2)]  # CPU us per event
    same = insts[0].kind == insts[1].kind
    first, second = (inst.label if same else inst.kind for inst in insts)
    log(f"rep {rep + 1} {scenario:<14} paired: {first} {per[0]:.1f} us, {second} {per[1]:.1f} us "
        f"of CPU per event: ratio {per[1] / per[0]:.3f}")
    return per[1] / per[0]
