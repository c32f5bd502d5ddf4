"""The run's record of itself: machine, configuration, placement, tools and versions."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import ssl
import sys
from pathlib import Path
from typing import Any

from .common import ALL_CPUS, CLIENT_CPUS, PROXY_CPUS
from .context import Bench
from .prepare import which
from .procs import run_capture


def run_meta(b: Bench) -> dict[str, Any]:
    """What latest.json keeps under `meta` (report() adds versions, commands and time)."""
    a = b.args
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "smoke": a.smoke,
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine(),
        "config": {
            k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(a).items()
        },
        "placement": {
            "proxy_cpus": sorted(PROXY_CPUS),
            "client_backend_cpus": sorted(CLIENT_CPUS),
            "unpinned_phase": sorted(ALL_CPUS),
        },
        "tools": {
            "handshake_client": "tlsload" if b.tlsload else "pyload",
            "http_client": "wrk" if b.wrk else "pyload",
            "backend": b.backend_kind,
        },
    }


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "loadavg_start": os.getloadavg(),
    }


def versions(b: Bench) -> dict[str, str]:
    v: dict[str, str] = {}
    if b.stud.argv:
        v["stud"] = b.stud.version
    for name, flag in (("hitch", "-V"), ("haproxy", "-v")):
        if exe := which(name):
            v[name] = run_capture([exe, flag]).splitlines()[0]
    if b.wrk:
        v["wrk"] = run_capture([b.wrk, "-v"]).splitlines()[0]
    if exe := which("nginx"):
        v["nginx"] = run_capture([exe, "-v"]).splitlines()[0]
    if "fleet" in b.args.scenarios and (exe := which("redis-server")):
        v["redis"] = run_capture([exe, "--version"]).splitlines()[0]
    v["openssl"] = ssl.OPENSSL_VERSION
    v["python"] = sys.version.split()[0]
    return v
