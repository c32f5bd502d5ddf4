"""cores: full TLS 1.3 handshakes with 1, 2, 4, 8, ... workers, each worker on a core of its
own and the load on other cores, for hosts with more CPUs than this one. How the rate grows
with the workers (scaling) and stud's handshakes per proxy CPU-second against hitch's at each
worker count (the per-core ratio)."""

from __future__ import annotations

import os
from dataclasses import asdict

from .clients import run_hs
from .common import CLIENT_CPUS, CLIENT_ERRORS, CORES_COMMAND, log
from .context import Bench, Instance
from .measure import log_result, measure_events
from .pinned import check_handshakes
from .placement import Plan, not_measurable, plan, smt_siblings
from .procs import set_affinity
from .proxies import start_proxy, stop_proxies

BUSY = 0.9  # a share of its CPUs above which a side counts as saturated


def cores_phase(b: Bench) -> None:
    if "cores" not in b.args.scenarios:
        return
    cpus = sorted(os.sched_getaffinity(0))
    p = plan(cpus)
    if p is None:
        why = not_measurable(len(cpus))
        log(f"cores: not measurable on {len(cpus)} CPUs: {why}; on a bigger host: "
            f"{CORES_COMMAND}")
        b.results.cores = {"measurable": False, "cpus": len(cpus), "reason": why}
        return
    shared = smt_siblings(p.proxy)
    b.results.cores = {"measurable": True, "cpus": len(cpus), "plan": asdict(p),
                       "proxy_smt_siblings": shared, "runs": {}}
    log(f"cores: workers {p.workers} on proxy CPUs {p.proxy}; {_clients(b, p)} and the backend "
        f"on CPUs {p.load}")
    if shared:
        log(f"cores: proxy CPUs {shared} are threads of one core each: the scaling is not "
            "that of separate cores (see bench/README.md)")
    b.client_cpus = set(p.load)
    if b.backend:
        set_affinity(b.backend.pids(), set(p.load))
    insts: dict[tuple[str, int], Instance] = {}
    try:
        _start(b, p, insts)
        _measure_all(b, p, insts)
    finally:
        stop_proxies(b, list(insts.values()))
        b.client_cpus = CLIENT_CPUS
        if b.backend:
            set_affinity(b.backend.pids(), CLIENT_CPUS)


def _clients(b: Bench, p: Plan) -> str:
    return f"{len(p.load)} tlsload, one per CPU," if b.tlsload else "pyload (one process)"


def _start(b: Bench, p: Plan, insts: dict[tuple[str, int], Instance]) -> None:
    """All instances at once, so that each repetition measures every worker count within
    seconds (the scaling ratios compare runs of one repetition)."""
    pem = b.work / "ecdsa.pem"
    for n in p.workers:
        for kind in b.kinds:
            insts[kind, n] = start_proxy(b, kind, f"ecdsa-{n}w-cores", pem, n, set(p.proxy[:n]))
    for (_, n), inst in insts.items():
        if inst.proc:
            try:
                _load(b, inst, n, dur=min(1.0, b.args.duration))
            except CLIENT_ERRORS:
                pass


def _load(b: Bench, inst: Instance, workers: int, dur: float = 0) -> dict:
    """--hs-conc slots per worker, so that each worker sees as many as the 1-worker pinned
    rows' one does; split over one tlsload per load CPU."""
    return run_hs(b, inst, 13, dur=dur, conc=b.args.hs_conc * workers, pin_each=True)


def _measure_all(b: Bench, p: Plan, insts: dict[tuple[str, int], Instance]) -> None:
    runs = b.results.cores["runs"]
    for rep in range(b.args.reps):
        if rep and b.over_budget():
            log(f"time budget ({b.args.budget} min) used up: cores after {rep} repetitions")
            break
        # Back to back, in turn first and last, as the pinned rows (see pinned_phase).
        order = b.kinds if rep % 2 == 0 else b.kinds[::-1]
        for n in p.workers:
            for kind in order:
                res = _measure_one(b, p, insts[kind, n], n, rep)
                if res:
                    runs.setdefault(kind, {}).setdefault(str(n), []).append(res)


def _measure_one(b: Bench, p: Plan, inst: Instance, n: int, rep: int) -> dict | None:
    scenario = f"cores {n}w"
    res = measure_events(b, inst, scenario, lambda: _load(b, inst, n))
    if not res:
        return None
    if res["events"] == 0:
        b.problem(inst.kind, f"{scenario}: no completed events")
        return None
    check_handshakes(b, scenario, inst.kind, res, 13)
    copies = len(p.load) if b.tlsload else 1
    res.update(rep=rep, workers=n, load_bound=load_bound(res, len(p.load), copies))
    log_result(rep, scenario, inst.kind, res, "hs/s", per_cpu=True)
    if res["load_bound"]:
        log(f"cores {n}w {inst.kind}: load side saturated: {res['load_bound']}")
    return res


def load_bound(res: dict, load_cpus: int, copies: int) -> str:
    """Why the load side rather than the proxy may have set the rate ('' if nothing points to
    it): its CPUs, the client processes or the backend (one process) near full."""
    wall = res["wall_s"]
    client, backend = res["client_cpu_s"] / wall, res["backend_cpu_s"] / wall
    if client + backend >= BUSY * load_cpus:
        return f"clients and backend used {client + backend:.1f} of {load_cpus} CPUs"
    if client >= BUSY * copies:
        return f"the {copies} client process(es) used {client:.1f} CPUs"
    if backend >= BUSY:
        return f"the backend (one process) used {backend:.2f} CPU"
    return ""
