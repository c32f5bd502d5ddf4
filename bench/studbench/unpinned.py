"""Nothing pinned: hs_new with 1 and 2 workers (scaling), and session resumption across 2
workers (resume)."""

from __future__ import annotations

import socket
import ssl

from .clients import run_hs
from .common import ALL_CPUS, CLIENT_CPUS, CLIENT_ERRORS, HOST, RESUME_MODES, SHARED_CACHE, log
from .context import Bench, Instance
from .measure import log_result, measure_events
from .procs import set_affinity
from .proxies import start_proxy, stop_proxies


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
    """Fills insts: (kind, workers) -> instance; stud with its shared session cache as
    (SHARED_CACHE, 2)."""
    pem = b.work / "ecdsa.pem"
    for kind in b.kinds:
        for workers in (1, 2) if "scaling" in b.args.scenarios else (2,):
            insts[kind, workers] = start_proxy(
                b, kind, f"ecdsa-{workers}w-unpinned", pem, workers, ALL_CPUS
            )
    if "resume" in b.args.scenarios and "stud" in b.kinds:
        insts[SHARED_CACHE, 2] = start_proxy(
            b, "stud", "ecdsa-2w-shared-cache", pem, 2, ALL_CPUS, extra=("-C", "20000")
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
    for kind in [*b.kinds, SHARED_CACHE] if "stud" in b.kinds else b.kinds:
        inst = insts[kind, 2]
        if inst.proc:
            got = b.results.resume[kind] = resume_test(inst.port, b.args.resume_reconnects)
            log(
                f"resume {kind:<8} "
                + ", ".join(f"{k} {v['resumed']}/{v['reconnects']}" for k, v in got.items())
            )
            if inst.proc.alive() is False:
                b.problem(kind, "resume: proxy died")


def resume_test(port: int, reconnects: int) -> dict[str, dict]:
    """Fraction of reconnects resumed: TLS 1.3 tickets, TLS 1.2 tickets, TLS 1.2 session IDs.

    Each reconnect offers the session of the previous connection; with 2 workers the
    kernel spreads the connections over both.
    """
    versions = {
        "tls13_ticket": (ssl.TLSVersion.TLSv1_3, False),
        "tls12_ticket": (ssl.TLSVersion.TLSv1_2, False),
        "tls12_session_id": (ssl.TLSVersion.TLSv1_2, True),
    }
    out = {}
    for name in RESUME_MODES:
        version, no_ticket = versions[name]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ctx.maximum_version = version
        if no_ticket:
            ctx.options |= ssl.OP_NO_TICKET
        resumed, errors = _reconnect(ctx, port, reconnects)
        out[name] = {
            "reconnects": reconnects,
            "resumed": resumed,
            "errors": errors,
            "fraction": resumed / reconnects if reconnects else None,
        }
    return out


def _reconnect(ctx: ssl.SSLContext, port: int, reconnects: int) -> tuple[int, int]:
    """(resumed, errors) of one connection and `reconnects` more, each offering the
    previous one's session."""
    session = None
    resumed = errors = 0
    for i in range(reconnects + 1):
        try:
            with socket.create_connection((HOST, port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    while s.recv(4096):
                        pass
                    if i:
                        resumed += int(s.session_reused)
                    session = s.session
        except (OSError, ValueError):
            errors += 1
    return resumed, errors
