"""The command line: options, the order of the phases, and the clean-up."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import __doc__ as DESCRIPTION
from .backend import start_backend
from .clients import WRK_LUA
from .common import ALL_SCENARIOS, KINDS, REPO, log
from .context import Bench
from .cores import cores_phase
from .creep import creep_phase
from .fleet import fleet_phase
from .flood import ATTACKS, flood_phase
from .idle import idle_phase
from .many import many_phase
from .meta import run_meta
from .mtls import mtls_phase
from .paired import aa_phase, paired_phase
from .pinned import pinned_phase
from .prepare import build_tlsload, ensure_installed, stud_command, which, write_work_files
from .procs import raise_nofile
from .proxies import scan_stud_logs
from .report import report
from .unpinned import unpinned_phase


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=DESCRIPTION,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--smoke",
        action="store_true",
        default=os.environ.get("BENCH_SMOKE") == "1",
        help="a few seconds per scenario, 1 repetition, small counts (also BENCH_SMOKE=1)",
    )
    p.add_argument("--reps", type=int, help="repetitions (default 5, smoke 1)")
    p.add_argument("--duration", type=float, help="seconds per measurement (default 6, smoke 2)")
    p.add_argument("--idle-counts", help="comma-separated (default 2000,20000, smoke 200)")
    p.add_argument("--proxies", default=",".join(KINDS), help="subset of stud,hitch,haproxy")
    p.add_argument(
        "--scenarios", default=",".join(ALL_SCENARIOS), help=f"subset of {','.join(ALL_SCENARIOS)}"
    )
    p.add_argument("--hs-conc", type=int, default=32, help="concurrent handshake slots")
    p.add_argument("--resume-reconnects", type=int, help="per resumption mode (default 20)")
    p.add_argument("--idle-setup-timeout", type=float, default=240.0)
    p.add_argument("--many-conns", type=int,
                   help="conns_many: concurrent connections (default 40000, smoke 2000)")
    p.add_argument("--many-workers", type=int,
                   help="conns_many: proxy workers (default: enough for the fd limit, >= 4)")
    p.add_argument("--creep-conns", type=int,
                   help="mem_creep: connections opened and closed (default 1000000, smoke 5000)")
    p.add_argument("--creep-timeout", type=float, default=900.0,
                   help="mem_creep: seconds per proxy at most")
    p.add_argument("--flood-attacks",
                   help="flood: comma-separated subset of none,full,hello,partial,garbage "
                        "(default all, smoke none,partial)")
    p.add_argument(
        "--budget",
        type=float,
        help="minutes before remaining reps are skipped (default 28, smoke 2)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="results dir (default docs/benchmarks; smoke: $TMPDIR/stud-bench-smoke)",
    )
    inst = p.add_mutually_exclusive_group()
    inst.add_argument(
        "--install",
        dest="install",
        action="store_true",
        default=None,
        help="apt-get/pip install what is missing (default unless --smoke)",
    )
    inst.add_argument("--no-install", dest="install", action="store_false")
    p.add_argument(
        "--stud-cmd",
        help="how to run stud (default: a copy of this tree's stud/ as python -m stud, "
        "else `stud` on PATH)",
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the work dir (logs, configs)")
    p.add_argument(
        "--pure-python",
        action="store_true",
        help="use bench/pyload.py instead of tlsload, wrk and nginx (what happens without them)",
    )
    a = p.parse_args(argv)
    _apply_defaults(a)
    bad = [k for k in a.proxies if k not in KINDS] + [
        s for s in a.scenarios if s not in ALL_SCENARIOS
    ] + [x for x in a.flood_attacks if x not in ATTACKS]
    if bad:
        p.error(f"unknown: {bad}")
    return a


def _apply_defaults(a: argparse.Namespace) -> None:
    """The defaults that depend on --smoke; the lists as lists and sets."""
    smoke = a.smoke
    a.reps = a.reps or (1 if smoke else 5)
    a.duration = a.duration or (2.0 if smoke else 6.0)
    a.idle_counts = [
        int(x) for x in (a.idle_counts or ("200" if smoke else "2000,20000")).split(",")
    ]
    a.resume_reconnects = a.resume_reconnects or (5 if smoke else 20)
    a.many_conns = a.many_conns or (2000 if smoke else 40_000)
    a.creep_conns = a.creep_conns or (5_000 if smoke else 1_000_000)
    a.budget = a.budget or (2.0 if smoke else 28.0)
    a.flood_attacks = [x for x in (a.flood_attacks or "").split(",") if x]
    a.install = (not smoke) if a.install is None else a.install
    a.out = a.out or (
        Path(tempfile.gettempdir()) / "stud-bench-smoke" if smoke else REPO / "docs" / "benchmarks"
    )
    a.proxies = [k for k in a.proxies.split(",") if k]
    a.scenarios = {s for s in a.scenarios.split(",") if s}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    a.nofile = raise_nofile()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    if a.install:
        ensure_installed(True)
    a.stud_cmd = a.stud_cmd or None
    work = Path(tempfile.mkdtemp(prefix="stud-bench-"))
    t_start = time.monotonic()
    wrk = None if a.pure_python else shutil.which("wrk")
    b = Bench(a, work, stud=stud_command(a.stud_cmd, work), wrk=wrk, t_start=t_start)
    try:
        meta = run_all(b)
        if not meta:
            return 1
        scan_stud_logs(b)
        return report(b, meta)
    finally:
        b.procs.stop_all()
        if a.keep_tmp:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_all(b: Bench) -> dict[str, Any]:
    """All measurements; returns the run's metadata ({} if nothing could run)."""
    meta: dict[str, Any] = {}
    try:
        log(f"work dir {b.work}; fd limit {b.args.nofile}")
        setup(b)
        if not b.kinds:
            log("no proxy to benchmark")
            return {}
        meta = run_meta(b)
        # hs_mtls and fleet last: the phases before them run as they did before they existed.
        phases = (pinned_phase, paired_phase, aa_phase, idle_phase, unpinned_phase, cores_phase,
                  mtls_phase, fleet_phase, many_phase, creep_phase, flood_phase)
        for phase in phases:
            phase(b)
    except KeyboardInterrupt:
        log("interrupted: writing what was measured")
    finally:
        b.procs.stop_all()
    return meta


def setup(b: Bench) -> None:
    """Tools, files and the backend; b.kinds: the proxies asked for that are there."""
    b.tlsload = None if b.args.pure_python else build_tlsload(b.work)
    write_work_files(b.work, WRK_LUA)
    start_backend(b)
    available = {
        "stud": b.stud.argv is not None,
        "hitch": which("hitch") is not None,
        "haproxy": which("haproxy") is not None,
    }
    for kind in b.args.proxies:
        if available[kind]:
            b.kinds.append(kind)
        else:
            log(f"{kind}: not installed, skipped")
    log(
        f"proxies: {', '.join(b.kinds) or 'none'}; backend: {b.backend_kind}; "
        f"handshake client: {'tlsload (C)' if b.tlsload else 'pyload (Python)'}; "
        f"HTTP client: {'wrk' if b.wrk else 'pyload (Python)'}"
    )
