"""hs_mtls: full TLS 1.3 handshakes with a client certificate that the proxy verifies
(client-verify required, against the root + intermediate bundle). Each proxy that can verify
runs twice on the proxy CPU, with and without mTLS; in each repetition the mTLS instances are
measured in turn (as the pinned rows), then pairs run side by side (as the paired rows): stud
against each other proxy, with and without mTLS, and each proxy with mTLS against itself
without, whose ratio is what verification costs it."""

from __future__ import annotations

import re

from .certs import make_client_pki
from .clients import warm_up
from .common import PROXY_CPUS, log
from .context import Bench, Instance
from .paired import side_by_side
from .pinned import check_handshakes, pinned_one
from .prepare import which
from .procs import run_capture
from .proxies import start_proxy, stop_proxies, tls_ready


def mtls_phase(b: Bench) -> None:
    if "hs_mtls" not in b.args.scenarios:
        return
    auth = make_client_pki(b.work)
    if auth is None:
        log("hs_mtls: needs the cryptography package for its certificates: skipped")
        return
    kinds = [k for k in b.kinds if _verifies(b, k)]
    insts: dict[tuple[str, bool], Instance] = {}
    pem = b.work / "ecdsa.pem"
    try:
        for kind in kinds:
            insts[kind, True] = start_proxy(b, kind, "ecdsa-mtls", pem, 1, PROXY_CPUS,
                                            mtls=auth)
            insts[kind, False] = start_proxy(b, kind, "ecdsa-no-mtls", pem, 1, PROXY_CPUS)
        for inst in insts.values():
            if inst.proc:
                warm_up(b, inst, 13)
        for kind in kinds:
            _refuses_anonymous(b, insts[kind, True])
        for rep in range(b.args.reps):
            if rep and b.over_budget():
                log(f"time budget ({b.args.budget} min) used up: hs_mtls after {rep} repetitions")
                break
            for kind in kinds if rep % 2 == 0 else kinds[::-1]:
                if insts[kind, True].proc:
                    pinned_one(b, "hs_mtls", kind, insts[kind, True], rep)
            for name, (first, second) in pairs(kinds).items():
                _side_by_side(b, name, [insts[first], insts[second]], rep)
    finally:
        stop_proxies(b, list(insts.values()))


def pairs(kinds: list[str]) -> dict[str, tuple[tuple[str, bool], tuple[str, bool]]]:
    """Name -> the two instances (kind, mTLS on) run side by side; the ratio is the first's
    handshakes per CPU-second over the second's."""
    out = {}
    for other in [k for k in kinds if k != "stud"] if "stud" in kinds else []:
        out[f"hs_mtls stud/{other}"] = (("stud", True), (other, True))
        out[f"hs_new stud/{other}"] = (("stud", False), (other, False))
    for kind in kinds:
        out[f"{kind} hs_mtls/hs_new"] = ((kind, True), (kind, False))
    return out


def _side_by_side(b: Bench, name: str, insts: list[Instance], rep: int) -> None:
    if not all(i.proc for i in insts):
        return

    def check(inst: Instance, res: dict) -> None:
        check_handshakes(b, f"{name} (paired)", inst.kind, res, 13, mtls=inst.mtls is not None)
        if res.get("errors"):
            b.problem(inst.kind, f"{name} (paired, {inst.label}): client saw {res['errors']} "
                      f"errors {res.get('error_detail', '')}")

    if r := side_by_side(b, name, insts, 13, rep, check=check):
        b.results.mtls.setdefault(name, []).append(r)


def _verifies(b: Bench, kind: str) -> bool:
    """Whether this proxy can require client certificates (hitch: from 1.8 on)."""
    if kind != "hitch":
        return True
    version = run_capture([which("hitch") or "hitch", "-V"])
    m = re.search(r"(\d+)\.(\d+)", version)
    if m and (int(m.group(1)), int(m.group(2))) >= (1, 8):
        return True
    why = f"{version.strip() or 'hitch'} has no client-verify (hitch 1.8 added it)"
    b.results.mtls_na[kind] = why
    log(f"hs_mtls: {why}: n/a")
    return False


def _refuses_anonymous(b: Bench, inst: Instance) -> None:
    """The mTLS instance must turn away a client without a certificate: else it verifies
    nothing and its figures mean nothing."""
    if inst.proc and tls_ready(inst.port):
        b.problem(inst.kind, f"hs_mtls ({inst.label}): accepted a client without a certificate")
