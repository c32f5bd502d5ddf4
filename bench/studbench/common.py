"""What every module shares: where things are, the CPU placement, the scenarios with their
units and targets, and the log."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
HOST = "127.0.0.1"
KINDS = ("stud", "hitch", "haproxy")
MIB = 1 << 20
BIG_SIZE = 64 * MIB
PROXY_CPUS = {0}
CLIENT_CPUS = {1}
ALL_CPUS = {0, 1}
RSA_CIPHER = "ECDHE-RSA-AES128-GCM-SHA256"

# Scenario -> (unit, higher is better)
UNITS: dict[str, tuple[str, bool]] = {
    "hs_new": ("hs/s", True),
    "hs_new_rsa": ("hs/s", True),
    "conn_resumed": ("conn/s", True),
    "rps_keepalive": ("req/s", True),
    "p99_ms": ("ms", False),
    "bulk": ("MiB/s", True),
    "hs_mtls": ("hs/s", True),
}
NO_SHARED_CACHE = "stud -C 0"  # the resume test also runs stud without its shared session cache
PINNED_SCENARIOS = ("hs_new", "hs_new_rsa", "conn_resumed", "rps_keepalive", "bulk")
ALL_SCENARIOS = (*PINNED_SCENARIOS, "idle_mem", "scaling", "resume", "paired", "aa", "hs_mtls",
                 "fleet", "cores", "conns_many", "mem_creep", "flood")
PAIRED = ("hs_new", "hs_new_rsa", "conn_resumed")  # the close calls, measured side by side
RESUME_MODES = ("tls13_ticket", "tls12_ticket", "tls12_session_id")
# Targets on the stud/hitch ratio per proxy CPU-second.
RATIO_TARGETS = {
    "hs_new": 1.0,
    "hs_new_rsa": 1.0,
    "conn_resumed": 1.0,
    "rps_keepalive": 0.9,
    "bulk": 1.0,
}
# On stud/other of verified handshakes (hs_mtls), side by side: hitch 1.7 cannot verify
# clients, so the other is HAProxy, whose OpenSSL does the same verification work.
MTLS_TARGET = 0.9
IDLE_KIB_TARGET = 18.0
SCALING_TARGET = 1.8
# cores: N workers on N cores of a bigger host give >= this x N the handshakes of 1 (up to
# CORES_TARGET_MAX workers), and stud/hitch per proxy CPU-second >= CORES_RATIO_TARGET at each N.
CORES_SCALING_TARGET = 0.9
CORES_TARGET_MAX = 8
CORES_RATIO_TARGET = 1.0
CORES_COMMAND = "bash bench/run.sh --scenarios cores --proxies stud,hitch"
IDLE_BIG = 20_000

# A failed load generator costs one figure, not the run.
CLIENT_ERRORS = (
    RuntimeError,
    subprocess.TimeoutExpired,
    ValueError,
    StopIteration,
    IndexError,
    KeyError,
)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)
