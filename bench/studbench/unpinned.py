"""Nothing pinned: hs_new with 1 and 2 workers (scaling), and session resumption across 2
workers (resume)."""

from __future__ import annotations

from .clients import run_hs
from .common import ALL_CPUS, CLIENT_CPUS, CLIENT_ERRORS, NO_SHARED_CACHE, log
from .context import Bench, Instance
from .measure import log_result, measure_events
from .procs import set_affinity
from .proxies import start_proxy, stop_proxies
from .resumption import resume_test


def unpinned_phase(b: Bench) -> None:
    if not {"scaling", "resume"} & set(b.args.scenarios):
        return
    b.client_cpus = ALL_CPUS
    if b.backend:
        set_affinity(b.backend.pids(), ALL_CPUS)
    insts: dict[tuple[str, int], Instance] = {}
    try:
        _start_unpinned(b, insts)
        if "scaling" in b.args.scenarios:
            scaling(b, insts)
        if "resume" in b.args.scenarios:
            resume(b, insts)
    finally:
        stop_proxies(b, list(insts.values()))
        b.client_cpus = CLIENT_CPUS
        if b.backend:
            set_affinity(b.backend.pids(), CLIENT_CPUS)


def _start_unpinned(b: Bench, insts: dict[tuple[str, int], Instance]) -> None:
    """Fills insts: (kind, workers) -> instance; stud without its shared session cache (on by
    default) as (NO_SHARED_CACHE, 2)."""
    pem = b.work / "ecdsa.pem"
    for kind in b.kinds:
        for workers in (1, 2) if "scaling" in b.args.scenarios else (2,):
            insts[kind, workers] = start_proxy(
                b, kind, f"ecdsa-{workers}w-unpinned", pem, workers, ALL_CPUS
            )
    if "resume" in b.args.scenarios and "stud" in b.kinds:
        insts[NO_SHARED_CACHE, 2] = start_proxy(
            b, "stud", "ecdsa-2w-no-shared-cache", pem, 2, ALL_CPUS, extra=("-C", "0")
        )


def scaling(b: Bench, insts: dict[tuple[str, int], Instance]) -> None:
    for inst in insts.values():
        if inst.proc:
            try:
                run_hs(b, inst, 13, dur=min(1.0, b.args.duration))
            except CLIENT_ERRORS:
                pass
    for rep in range(b.args.reps):
        if rep and b.over_budget():
            log("time budget used up: fewer scaling repetitions")
            break
        for kind in b.kinds:
            for workers in (1, 2):
                inst = insts[kind, workers]
                scen = f"hs_new_{workers}w"
                res = measure_events(b, inst, scen, lambda inst=inst: run_hs(b, inst, 13))
                b.results.record(scen, kind, res)
                if res:
                    log_result(rep, scen, kind, res, "hs/s", per_cpu=False)


def resume(b: Bench, insts: dict[tuple[str, int], Instance]) -> None:
    for kind in [*b.kinds, NO_SHARED_CACHE] if "stud" in b.kinds else b.kinds:
        inst = insts[kind, 2]
        if inst.proc:
            got = b.results.resume[kind] = resume_test([inst.port], b.args.resume_reconnects)
            log(
                f"resume {kind:<8} "
                + ", ".join(f"{k} {v['resumed']}/{v['reconnects']}" for k, v in got.items())
            )
            if inst.proc.alive() is False:
                b.problem(kind, "resume: proxy died")
