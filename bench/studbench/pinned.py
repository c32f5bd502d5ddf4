"""The pinned phase: hs_new, hs_new_rsa, conn_resumed, rps_keepalive (with p99_ms) and bulk,
each proxy alone on the proxy CPU with 1 worker, in turn."""

from __future__ import annotations

from .clients import run_hs, run_http, run_keepalive, run_resumed, warm_up
from .common import MIB, PINNED_SCENARIOS, PROXY_CPUS, UNITS, log
from .context import Bench, Instance
from .measure import log_result, measure, measure_events, with_per_cpu
from .proxies import start_proxy, stop_proxies


def pinned_phase(b: Bench) -> None:
    wanted = [s for s in PINNED_SCENARIOS if s in b.args.scenarios]
    if not wanted:
        return
    insts: dict[tuple[str, str], Instance] = {}
    try:
        for kind in b.kinds:
            if set(wanted) - {"hs_new_rsa"}:
                insts[kind, "ecdsa"] = start_proxy(
                    b, kind, "ecdsa-1w-pinned", b.work / "ecdsa.pem", 1, PROXY_CPUS
                )
            if "hs_new_rsa" in wanted:
                insts[kind, "rsa"] = start_proxy(
                    b, kind, "rsa-1w-pinned", b.work / "rsa.pem", 1, PROXY_CPUS
                )
        for inst in insts.values():
            if inst.proc:
                warm_up(b, inst, 12 if inst.label.startswith("rsa") else 13)
        for rep in range(b.args.reps):
            if rep and b.over_budget():
                log(f"time budget ({b.args.budget} min) used up after {rep} repetitions")
                break
            # Back to back, in turn first and last: a drift of the host's speed between
            # stud's run and hitch's cancels out of the median of their per-rep ratios.
            order = b.kinds if rep % 2 == 0 else b.kinds[::-1]
            for scenario in wanted:
                for kind in order:
                    inst = insts[kind, "rsa" if scenario == "hs_new_rsa" else "ecdsa"]
                    pinned_one(b, scenario, kind, inst, rep)
    finally:
        stop_proxies(b, list(insts.values()))


def pinned_one(b: Bench, scenario: str, kind: str, inst: Instance, rep: int) -> None:
    res = _measure_scenario(b, scenario, kind, inst, rep)
    if res and res["events"] == 0 and not (scenario == "bulk" and res["bytes"]):
        b.problem(kind, f"{scenario}: no completed events")
        res = None
    if res:
        res["rep"] = rep
    b.results.record(scenario, kind, res)
    if res:
        log_result(rep, scenario, kind, res, UNITS[scenario][0], per_cpu=True)


def _measure_scenario(b: Bench, scenario: str, kind: str, inst: Instance, rep: int
                      ) -> dict | None:
    if scenario in ("hs_new", "hs_new_rsa", "hs_mtls"):
        tls = 12 if scenario == "hs_new_rsa" else 13
        res = measure_events(b, inst, scenario, lambda: run_hs(b, inst, tls))
        if res:
            check_handshakes(b, scenario, kind, res, tls, mtls=inst.mtls is not None)
        return res
    if scenario == "conn_resumed":
        return measure_events(b, inst, scenario, lambda: run_resumed(b, inst))
    if scenario == "rps_keepalive":
        res = measure_events(b, inst, scenario, lambda: run_keepalive(b, inst))
        if res:
            p99 = {**res, "value": res["p99_ms"], "per_cpu": None, "rep": rep}
            b.results.record("p99_ms", kind, p99)
        return res
    res = measure(b, inst, scenario, lambda: run_http(b, inst, "/big", 1, False, False))
    if res:  # bulk: MiB, not requests
        res["value"] = res["bytes"] / MIB / res["duration"]
        res = with_per_cpu(res, res["bytes"] / MIB)
    return res


def check_handshakes(b: Bench, scenario: str, kind: str, res: dict, tls: int,
                     mtls: bool = False) -> None:
    """Full handshakes only, with the key exchange and certificate meant, and a client
    certificate asked for on each (mtls) or on none."""
    want_cert = "rsaEncryption-2048" if tls == 12 else "id-ecPublicKey-256"
    neg = res["negotiated"]
    if res["resumed"]:
        b.problem(kind, f"{scenario}: {res['resumed']} handshakes were resumed")
    asked = res.get("cert_requested")
    if asked is not None and asked != (res["events"] if mtls else 0):
        b.problem(kind, f"{scenario}: the proxy asked for a client certificate on {asked} "
                  f"of {res['events']} handshakes")
    if b.tlsload and (neg["kex"] != "X25519" or neg["cert"] != want_cert):
        b.problem(kind, f"{scenario}: negotiated {neg}")
