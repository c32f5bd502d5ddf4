#!/usr/bin/env python3
"""Benchmark stud against hitch and HAProxy (TLS termination, TCP mode) on loopback.

Usage: python3 bench/bench.py [--smoke] [options]   (see bench/README.md)

The proxy under test is pinned to CPU 0 with one worker; the load generator and the nginx
backend run on CPU 1.  Each figure is also reported per proxy CPU-second (events divided
by the utime+stime all proxy processes consumed during the measured phase).  A second
mode runs 1 and 2 workers unpinned (hs_new scaling, session resumption across workers).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import ipaddress
import json
import os
import platform
import random
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
HOST = "127.0.0.1"
KINDS = ("stud", "hitch", "haproxy")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1 << 20
BIG_SIZE = 64 * MIB
NOFILE = 1 << 20
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
}
SHARED_CACHE = "stud -C 20000"  # the resume test also runs stud with its shared session cache
PINNED_SCENARIOS = ("hs_new", "hs_new_rsa", "conn_resumed", "rps_keepalive", "bulk")
ALL_SCENARIOS = (*PINNED_SCENARIOS, "idle_mem", "scaling", "resume", "paired", "aa")
PAIRED = ("hs_new", "hs_new_rsa", "conn_resumed")  # the close calls, measured side by side
# Targets on the stud/hitch ratio per proxy CPU-second.
RATIO_TARGETS = {
    "hs_new": 1.0,
    "hs_new_rsa": 1.0,
    "conn_resumed": 1.0,
    "rps_keepalive": 0.9,
    "bulk": 1.0,
}
IDLE_KIB_TARGET = 18.0
SCALING_TARGET = 1.8
IDLE_BIG = 20_000

WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"errors":%d,"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,' ..
    '"err_timeout":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f}\\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect + e.read + e.write + e.status + e.timeout,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


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


# --------------------------------------------------------------------------- /proc helpers


def proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, utime+stime ticks, starttime) of a process, or None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid=4, utime=14, stime=15, starttime=22
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19])


def process_tree(root: int) -> list[int]:
    """root and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st:
                children.setdefault(st[0], []).append(int(entry))
    if proc_stat(root) is None:
        return []
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def children_cpu() -> float:
    """CPU seconds of all waited-for children (the load generators run with subprocess.run)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        st = proc_stat(pid)
        if st:
            out[pid] = st[1]
    return out


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def set_affinity(pids: list[int], cpus: set[int]) -> None:
    """Like `taskset -a -p -c CPUS PID` for every pid (all threads)."""
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass


def cpus_allowed(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def max_conns(nofile: int) -> int:
    """Proxied connections one process can hold: 2 fds each (client + backend), plus slack."""
    return (nofile - 300) // 2


def free_port(used: set[int]) -> int:
    """A free TCP port below the ephemeral range, not handed out before."""
    for _ in range(2000):
        port = random.randint(20000, 30000)
        if port in used:
            continue
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        used.add(port)
        return port
    raise RuntimeError("no free port")


def tcp_ready(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def tls_ready(port: int) -> bool:
    """One TLS handshake + tiny request through the proxy."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((HOST, port), timeout=2) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                return s.recv(64).startswith(b"HTTP/1.")
    except (OSError, ValueError):
        return False


def run_capture(argv: list[str], timeout: float = 30) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"? ({e})"


# --------------------------------------------------------------------------- processes


@dataclass
class Started:
    name: str
    popen: subprocess.Popen
    log: Path | None
    tree: dict[int, int] = field(default_factory=dict)  # pid -> starttime ever seen

    def pids(self) -> list[int]:
        pids = process_tree(self.popen.pid) if self.popen.poll() is None else []
        for pid in pids:
            st = proc_stat(pid)
            if st:
                self.tree.setdefault(pid, st[2])
        return pids

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 15) -> str:
        """Last lines of its stderr and stdout logs."""
        lines: list[str] = []
        for path in (self.log, self.log.with_suffix(".out")) if self.log else ():
            if path.exists():
                lines += path.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(lines)


class Processes:
    """Every process this script starts; all are stopped by PID (see stop_all)."""

    def __init__(self) -> None:
        self.started: list[Started] = []

    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        cpus: set[int] | None = None,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        stdin: Any = subprocess.DEVNULL,
        stdout: Any = None,
    ) -> Started:
        """stderr goes to `log`, stdout (unless given) to the same name with .out."""
        err = log.open("ab") if log else subprocess.DEVNULL
        out = log.with_suffix(".out").open("ab") if log and stdout is None else subprocess.DEVNULL
        try:
            popen = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=stdout if stdout is not None else out,
                stderr=err,
                env=env,
                start_new_session=True,  # Ctrl-C goes to us; we stop them by PID
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )
        finally:
            for f in (err, out):
                if f != subprocess.DEVNULL:
                    f.close()
        s = Started(name, popen, log)
        self.started.append(s)
        return s

    def stop(self, s: Started, grace: float = 5.0) -> None:
        if s.alive():
            s.pids()  # remember the latest children
            try:
                os.kill(s.popen.pid, signal.SIGTERM)
                s.popen.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(s.popen.pid, signal.SIGKILL)
                s.popen.wait(grace)
            except ProcessLookupError:
                pass
        s.popen.poll()
        # Children (workers) that outlived their parent: same pid *and* start time only.
        deadline = time.monotonic() + grace
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = [p for p, t in s.tree.items() if p != s.popen.pid and _same(p, t)]
            for pid in left:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            while left and time.monotonic() < deadline:
                time.sleep(0.05)
                left = [p for p in left if _same(p, s.tree[p])]
            if not left:
                break
            deadline = time.monotonic() + grace
        if s in self.started:
            self.started.remove(s)

    def stop_all(self) -> None:
        for s in reversed(list(self.started)):
            try:
                self.stop(s)
            except Exception as e:  # keep stopping the others
                log(f"stopping {s.name} (pid {s.popen.pid}): {e}")


def _same(pid: int, starttime: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[2] == starttime and not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


# --------------------------------------------------------------------------- setup


def ensure_installed(want_install: bool) -> None:
    """Debian packages (hitch haproxy wrk nginx libssl-dev gcc) and matplotlib."""
    missing = [b for b in ("hitch", "haproxy", "wrk", "nginx", "gcc") if not _which(b)]
    if not Path("/usr/include/openssl/ssl.h").exists():
        missing.append("libssl-dev")
    if missing and want_install:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            log(f"installing Debian packages: {' '.join(missing)}")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            try:
                subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=300, check=False)
                subprocess.run(
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                    env=env,
                    timeout=600,
                    check=False,
                    stdout=subprocess.DEVNULL,
                )
            except subprocess.TimeoutExpired:
                log("apt-get timed out; going on with what is there")
        else:
            log(f"missing {missing}; not root or no apt-get: skipping what needs them")
    if want_install and importlib.util.find_spec("matplotlib") is None:
        log("installing matplotlib from PyPI (for the chart)")
        try:
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "matplotlib"],
                timeout=600,
                check=False,
            )
        except subprocess.TimeoutExpired:
            log("pip timed out; no chart")
    if want_install and not shutil.which("stud") and (REPO / "stud" / "cli.py").exists():
        log("installing stud from this repository (pip install -e)")
        try:
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "-e", str(REPO)],
                timeout=600,
                check=False,
            )
        except subprocess.TimeoutExpired:
            log("pip install -e timed out")


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def stud_command(override: str | None, work: Path) -> tuple[list[str] | None, str, str]:
    """(command, PYTHONPATH to add, version) of the stud to benchmark.

    This repository's stud/ is copied first, so that the whole run measures one version even
    while someone edits the tree; otherwise the `stud` on PATH.
    """
    if override:
        return shlex.split(override), "", "?"
    if (REPO / "stud" / "cli.py").exists():
        src = work / "stud-src"
        shutil.copytree(REPO / "stud", src / "stud", ignore=shutil.ignore_patterns("__pycache__"))
        init = (src / "stud" / "__init__.py").read_text()
        m = re.search(r"__version__\s*=\s*[\"']([^\"']+)", init)
        version = f"{m.group(1) if m else '?'} (this tree, git {git_rev()}, run as python -m stud)"
        return [sys.executable, "-m", "stud"], str(src), version
    exe = shutil.which("stud")
    if exe:
        return [exe], "", f"`stud` on PATH: {exe}"
    return None, "", ""


def build_tlsload(work: Path) -> Path | None:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc or not Path("/usr/include/openssl/ssl.h").exists():
        return None
    out = work / "tlsload"
    cmd = [gcc, "-O2", "-Wall", "-o", str(out), str(BENCH / "tlsload.c"), "-lssl", "-lcrypto"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        log(f"building tlsload failed, using the Python client:\n{p.stderr[-2000:]}")
        return None
    return out


def make_pem(path: Path, kind: str) -> None:
    """Self-signed certificate + key in one PEM file; kind is 'ecdsa' (P-256) or 'rsa'."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.x509.oid import NameOID
    except ImportError:
        key_opt = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        if kind == "rsa":
            key_opt = ["-newkey", "rsa:2048"]
        k, c = path.with_suffix(".key"), path.with_suffix(".crt")
        argv = ["openssl", "req", "-x509", *key_opt, "-nodes", "-keyout", str(k), "-out", str(c)]
        argv += "-subj /CN=localhost -days 30".split()
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
        path.write_bytes(c.read_bytes() + k.read_bytes())
        return
    key: Any = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ecdsa"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def nginx_conf(work: Path, port: int, nofile: int) -> Path:
    www = work / "www"
    conf = work / "nginx.conf"
    conf.write_text(
        f"""
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections {nofile}; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-tmp/body;
    proxy_temp_path {work}/nginx-tmp/proxy;
    fastcgi_temp_path {work}/nginx-tmp/fastcgi;
    uwsgi_temp_path {work}/nginx-tmp/uwsgi;
    scgi_temp_path {work}/nginx-tmp/scgi;
    keepalive_timeout 3600s;
    keepalive_requests 1000000000;
    sendfile on;
    tcp_nopush on;
    server {{
        listen {HOST}:{port} backlog=4096;
        root {www};
        location = / {{ default_type text/plain; return 200 "hello world\\n"; }}
        location = /big {{ default_type application/octet-stream; }}
    }}
}}
"""
    )
    (work / "nginx-tmp").mkdir(exist_ok=True)
    return conf


# --------------------------------------------------------------------------- proxies


@dataclass
class Instance:
    kind: str
    label: str
    port: int
    pem: Path
    workers: int
    cpus: set[int]
    proc: Started | None = None
    argv: list[str] = field(default_factory=list)
    extra: tuple[str, ...] = ()  # more stud options
    error: str = ""

    def pids(self) -> list[int]:
        return self.proc.pids() if self.proc else []


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.a = args
        self.work = work
        self.procs = Processes()
        self.ports: set[int] = set()
        self.t_start = time.monotonic()
        self.runs: dict[str, dict[str, list[dict]]] = {}
        self.idle: dict[str, dict[str, dict]] = {}
        self.resume: dict[str, dict[str, dict]] = {}
        self.paired: dict[str, list[float]] = {}  # scenario -> hitch/stud CPU per event, per rep
        self.aa: dict[str, list[float]] = {}  # method -> hitch-A/hitch-B, per rep
        self.problems: list[str] = []
        self.idle_capped: dict[int, int] = {}  # wanted -> measured connection count
        self.close_reasons: dict[str, int] = {}  # from stud's per-connection log lines
        self.notes: list[str] = []  # warnings stud printed
        self.current = "warm-up"  # scenario being measured (for recording client commands)
        self.commands: dict[str, str] = {}
        self.client_cpus = CLIENT_CPUS
        self.kinds: list[str] = []
        self.tlsload: Path | None = None
        self.wrk = None if args.pure_python else shutil.which("wrk")
        self.stud_cmd, self.stud_path, self.stud_version = stud_command(args.stud_cmd, work)
        self.backend: Started | None = None
        self.backend_port = 0
        self.backend_kind = ""

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        self.tlsload = None if self.a.pure_python else build_tlsload(self.work)
        (self.work / "wrk.lua").write_text(WRK_LUA)
        for kind in ("ecdsa", "rsa"):
            make_pem(self.work / f"{kind}.pem", kind)
        www = self.work / "www"
        www.mkdir()
        with (www / "big").open("wb") as f:
            block = os.urandom(MIB)
            for _ in range(BIG_SIZE // MIB):
                f.write(block)
        os.chmod(self.work, 0o755)
        for p in [www, www / "big", self.work / "ecdsa.pem", self.work / "rsa.pem"]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        self.start_backend()
        available = {
            "stud": self.stud_cmd is not None,
            "hitch": _which("hitch") is not None,
            "haproxy": _which("haproxy") is not None,
        }
        for kind in self.a.proxies:
            if available[kind]:
                self.kinds.append(kind)
            else:
                log(f"{kind}: not installed, skipped")
        log(
            f"proxies: {', '.join(self.kinds) or 'none'}; backend: {self.backend_kind}; "
            f"handshake client: {'tlsload (C)' if self.tlsload else 'pyload (Python)'}; "
            f"HTTP client: {'wrk' if self.wrk else 'pyload (Python)'}"
        )

    def start_backend(self) -> None:
        self.backend_port = free_port(self.ports)
        nginx = None if self.a.pure_python else _which("nginx")
        if nginx:
            conf = nginx_conf(self.work, self.backend_port, self.a.nofile)
            argv = [nginx, "-p", str(self.work), "-c", str(conf)]
            self.backend_kind = "nginx"
        else:
            argv = self.pyload("backend", self.backend_port, "--big", str(self.work / "www/big"))
            self.backend_kind = "pyload backend"
        self.commands["backend"] = shlex.join(argv)
        self.backend = self.procs.spawn(
            "backend", argv, cpus=CLIENT_CPUS, log=self.work / "backend.log"
        )
        if not tcp_ready(self.backend_port, 15):
            raise RuntimeError(f"backend did not start:\n{self.backend.log_tail()}")

    def over_budget(self) -> bool:
        return time.monotonic() - self.t_start > self.a.budget * 60

    # ------------------------------------------------------------------ proxies

    def proxy_argv(self, inst: Instance) -> list[str]:
        front, back = f"[{HOST}]:{inst.port}", f"[{HOST}]:{self.backend_port}"
        if inst.kind == "stud":
            assert self.stud_cmd
            return [*self.stud_cmd, "-f", front, "-b", back, "-n", str(inst.workers), *inst.extra,
                    str(inst.pem)]
        if inst.kind == "hitch":
            ocsp = self.work / "hitch-ocsp"
            ocsp.mkdir(exist_ok=True)
            os.chmod(ocsp, 0o777)
            return [
                _which("hitch") or "hitch",
                f"--frontend={front}",
                f"--backend={back}",
                f"--workers={inst.workers}",
                "--user=nobody",
                f"--ocsp-dir={ocsp}",
                str(inst.pem),
            ]
        conf = self.work / f"haproxy-{inst.label}.cfg"
        conf.write_text(
            f"""global
    nbthread {inst.workers}
    maxconn {max_conns(self.a.nofile)}
defaults
    mode tcp
    timeout connect 5s
    timeout client 3600s
    timeout server 3600s
frontend fe
    bind {HOST}:{inst.port} ssl crt {inst.pem}
    default_backend be
backend be
    server s1 {HOST}:{self.backend_port}
"""
        )
        one_line = "; ".join(ln.strip() for ln in conf.read_text().splitlines())
        self.commands.setdefault(f"haproxy config ({inst.workers} worker)", one_line)
        return [_which("haproxy") or "haproxy", "-db", "-f", str(conf)]

    def start_proxy(
        self, kind: str, label: str, pem: Path, workers: int, cpus: set[int],
        extra: tuple[str, ...] = (),
    ) -> Instance:
        inst = Instance(kind, label, free_port(self.ports), pem, workers, cpus, extra=extra)
        inst.argv = self.proxy_argv(inst)
        self.commands.setdefault(
            f"{kind} ({workers} worker{'s' * (workers > 1)}{', ' * bool(extra)}"
            f"{' '.join(extra)})", shlex.join(inst.argv)
        )
        env = dict(os.environ)
        if kind == "stud" and self.stud_path:
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [self.stud_path, env.get("PYTHONPATH")])
            )
        inst.proc = self.procs.spawn(
            f"{kind}-{label}", inst.argv, cpus=cpus, log=self.work / f"{kind}-{label}.log", env=env
        )
        deadline = time.monotonic() + 30
        ok = False
        while time.monotonic() < deadline and inst.proc.alive():
            if tls_ready(inst.port):
                ok = True
                break
            time.sleep(0.2)
        if not ok:
            inst.error = f"{kind} ({label}) did not come up: " + (
                f"exited with {inst.proc.popen.returncode}" if not inst.proc.alive() else "timeout"
            )
            tail = inst.proc.log_tail()
            self.problem(kind, inst.error + (f"; log tail:\n{tail}" if tail else ""))
            self.procs.stop(inst.proc)
            inst.proc = None
            return inst
        # wait for all workers (bounded), then pin every process and thread
        want = workers + 1 if kind in ("stud", "hitch") else 1
        deadline = time.monotonic() + 10
        while len(inst.pids()) < want and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
        set_affinity(inst.pids(), cpus)
        pinning = {pid: cpus_allowed(pid) for pid in inst.pids()}
        log(f"{kind} ({label}) up on :{inst.port}, processes/CPUs {pinning}")
        return inst

    def stop_proxy(self, inst: Instance) -> None:
        if inst.proc:
            if not inst.proc.alive():
                self.problem(
                    inst.kind, f"{inst.label}: exited early with {inst.proc.popen.returncode}"
                )
            self.procs.stop(inst.proc)
            inst.proc = None

    def problem(self, kind: str, msg: str) -> None:
        text = f"{kind}: {msg}"
        if text not in self.problems:
            self.problems.append(text)
            log(f"PROBLEM {text}")

    # ------------------------------------------------------------------ clients

    def client(self, argv: list[str], timeout: float, copies: int = 1) -> list[str]:
        """Runs `copies` instances of a load generator at once; returns their stdouts."""
        self.commands.setdefault(f"client, {self.current}", shlex.join(argv))
        procs = [
            subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=lambda: os.sched_setaffinity(0, self.client_cpus),
            )
            for _ in range(copies)
        ]
        outs = []
        deadline = time.monotonic() + timeout
        try:
            for p in procs:
                out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
                if p.returncode != 0:
                    raise RuntimeError(f"{shlex.join(argv)} failed ({p.returncode}): {err[-500:]}")
                outs.append(out)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(5)
        return outs

    def pyload(self, mode: str, port: int, *extra: str) -> list[str]:
        return [sys.executable, str(BENCH / "pyload.py"), mode, "--port", str(port), *extra]

    def hs_argv(self, port: int, tls: int, dur: float, conc: int, resume: bool) -> list[str]:
        if self.tlsload:
            opts = f"-m hs -p {port} -c {conc} -d {dur} -t {tls} -g X25519"
            argv = [str(self.tlsload), *opts.split()]
            if tls == 12:
                argv += ["-C", RSA_CIPHER]
            return argv + (["-r"] if resume else [])
        argv = self.pyload("hs", port, "--conc", str(min(conc, 8)), "--duration", str(dur))
        argv += ["--tls", str(tls)] + (["--ciphers", RSA_CIPHER] if tls == 12 else [])
        return argv + (["--resume"] if resume else [])

    def run_hs(self, inst: Instance, tls: int, resume: bool = False, dur: float = 0) -> dict:
        """New connections in a loop. tlsload is single-threaded: one copy per client CPU
        (one pinned, two unpinned), the slots split between them."""
        dur = dur or self.a.duration
        copies = len(self.client_cpus) if self.tlsload else 1
        argv = self.hs_argv(inst.port, tls, dur, max(1, self.a.hs_conc // copies), resume)
        rs = [json.loads(o.strip().splitlines()[-1]) for o in self.client(argv, dur + 60, copies)]
        r = rs[0]
        total = {
            k: sum(x.get(k, 0) for x in rs)
            for k in r
            if k == "completed" or k == "resumed" or k.startswith("err")
        }
        duration = max(x["duration"] for x in rs)
        res = {
            "tool": f"tlsload x{copies}" if self.tlsload else "pyload",
            "events": total["completed"],
            "value": total["completed"] / duration,
            "duration": duration,
            "resumed": total["resumed"],
            "errors": total["errors"],
            "mean_ms": statistics.mean(x.get("mean_ms") or 0 for x in rs),
            "negotiated": {k: r.get(k) for k in ("proto", "cipher", "kex", "cert")},
        }
        if total["errors"]:
            res["error_detail"] = {k: v for k, v in total.items() if k.startswith("err_") and v}
        return res

    def run_http(self, inst: Instance, path: str, conc: int, close: bool, latency: bool) -> dict:
        dur = max(1, round(self.a.duration))
        url = f"https://{HOST}:{inst.port}{path}"
        if self.wrk:
            opts = f"-t1 -c{conc} -d{dur}s --timeout 30s"
            argv = [self.wrk, *opts.split(), "-s", str(self.work / "wrk.lua")]
            argv += (["--latency"] if latency else []) + (["-H", "Connection: close"] * close)
            out = self.client([*argv, url], dur + 60)[0]
            tool = "wrk"
        elif close:  # new connections, resumed: the handshake client with -r
            r = self.run_hs(inst, 13, resume=True, dur=dur)
            return {**r, "tool": r["tool"] + " -r"}
        else:
            opts = f"--conc {min(conc, 16)} --duration {dur} --path {path}"
            argv = self.pyload("rps", inst.port, *opts.split())
            out = self.client(argv, dur + 60)[0]
            tool = "pyload"
        line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
        r = json.loads(line[len("WRKJSON ") :])
        secs = r["duration_us"] / 1e6
        res = {
            "tool": tool,
            "events": r["requests"],
            "value": r["requests"] / secs,
            "duration": secs,
            "bytes": r["bytes"],
            "errors": r["errors"],
            "p50_ms": r["p50_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000,
        }
        if r["errors"]:
            res["error_detail"] = {k: v for k, v in r.items() if k.startswith("err_") and v}
        return res

    # ------------------------------------------------------------------ measuring

    def measure(self, inst: Instance, scenario: str, fn: Callable[[], dict]) -> dict | None:
        if not inst.proc or not inst.proc.alive():
            return None
        pids = inst.pids()
        backend = self.backend.pids() if self.backend else []
        before, backend_before = cpu_ticks(pids), cpu_ticks(backend)
        children_before = children_cpu()
        self.current = scenario
        t0 = time.monotonic()
        try:
            res = fn()
        except CLIENT_ERRORS as e:
            self.problem(inst.kind, f"{scenario} ({inst.label}): client failed: {e}")
            return None
        wall = time.monotonic() - t0
        after_pids = inst.pids()
        after = cpu_ticks(after_pids)
        cpu = sum(t - before.get(pid, 0) for pid, t in after.items()) / CLK_TCK
        backend_cpu = sum(t - backend_before.get(p, 0) for p, t in cpu_ticks(backend).items())
        res["client_cpu_s"] = children_cpu() - children_before
        res["backend_cpu_s"] = backend_cpu / CLK_TCK
        res["generator_util"] = (res["client_cpu_s"] + res["backend_cpu_s"]) / wall
        res.update(
            proxy_cpu_s=cpu,
            wall_s=wall,
            proxy_util=cpu / wall if wall else None,
            proxy_pids=len(after_pids),
        )
        if not inst.proc.alive():
            self.problem(
                inst.kind,
                f"{scenario} ({inst.label}): proxy died during the run, "
                f"exit {inst.proc.popen.returncode}; log tail:\n{inst.proc.log_tail()}",
            )
        elif set(after_pids) != set(pids):
            self.problem(
                inst.kind,
                f"{scenario} ({inst.label}): process set changed "
                f"{sorted(pids)} -> {sorted(after_pids)} (crashed/respawned worker?)",
            )
        if res.get("errors"):
            self.problem(
                inst.kind,
                f"{scenario} ({inst.label}): client saw {res['errors']} "
                f"errors {res.get('error_detail', '')}",
            )
        return res

    def record(self, scenario: str, kind: str, res: dict | None) -> None:
        if res is None:
            return
        self.runs.setdefault(scenario, {}).setdefault(kind, []).append(res)

    def with_per_cpu(self, res: dict | None, amount: float) -> dict | None:
        if res is not None:
            cpu = res["proxy_cpu_s"]
            res["per_cpu"] = amount / cpu if cpu > 0 else None
        return res

    # ------------------------------------------------------------------ scenarios

    def pinned_phase(self) -> None:
        """hs_new, hs_new_rsa, conn_resumed, rps_keepalive (+p99), bulk: 1 worker on CPU 0."""
        wanted = [s for s in PINNED_SCENARIOS if s in self.a.scenarios]
        if not wanted:
            return
        insts: dict[tuple[str, str], Instance] = {}
        try:
            for kind in self.kinds:
                if set(wanted) - {"hs_new_rsa"}:
                    insts[kind, "ecdsa"] = self.start_proxy(
                        kind, "ecdsa-1w-pinned", self.work / "ecdsa.pem", 1, PROXY_CPUS
                    )
                if "hs_new_rsa" in wanted:
                    insts[kind, "rsa"] = self.start_proxy(
                        kind, "rsa-1w-pinned", self.work / "rsa.pem", 1, PROXY_CPUS
                    )
            for inst in insts.values():
                if inst.proc:
                    self.warm_up(inst, 12 if inst.label.startswith("rsa") else 13)
            for rep in range(self.a.reps):
                if rep and self.over_budget():
                    log(f"time budget ({self.a.budget} min) used up after {rep} repetitions")
                    break
                # Back to back, in turn first and last: a drift of the host's speed between
                # stud's run and hitch's cancels out of the median of their per-rep ratios.
                order = self.kinds if rep % 2 == 0 else self.kinds[::-1]
                for scenario in wanted:
                    for kind in order:
                        inst = insts[kind, "rsa" if scenario == "hs_new_rsa" else "ecdsa"]
                        self.pinned_one(scenario, kind, inst, rep)
        finally:
            for inst in insts.values():
                self.stop_proxy(inst)

    def warm_up(self, inst: Instance, tls: int) -> None:
        """A second of handshakes, not measured (first-use caches, allocator pools)."""
        try:
            self.run_hs(inst, tls, dur=min(1.0, self.a.duration))
        except CLIENT_ERRORS:
            pass

    def pinned_one(self, scenario: str, kind: str, inst: Instance, rep: int) -> None:
        if scenario in ("hs_new", "hs_new_rsa"):
            tls = 12 if scenario == "hs_new_rsa" else 13
            res = self.measure(inst, scenario, lambda: self.run_hs(inst, tls))
            res = self.with_per_cpu(res, res["events"] if res else 0)
            if res:
                want_cert = "rsaEncryption-2048" if tls == 12 else "id-ecPublicKey-256"
                neg = res["negotiated"]
                if res["resumed"]:
                    self.problem(kind, f"{scenario}: {res['resumed']} handshakes were resumed")
                if self.tlsload and (neg["kex"] != "X25519" or neg["cert"] != want_cert):
                    self.problem(kind, f"{scenario}: negotiated {neg}")
        elif scenario == "conn_resumed":
            res = self.measure(inst, scenario, lambda: self.run_http(inst, "/", 32, True, False))
            res = self.with_per_cpu(res, res["events"] if res else 0)
        elif scenario == "rps_keepalive":
            res = self.measure(inst, scenario, lambda: self.run_http(inst, "/", 64, False, True))
            res = self.with_per_cpu(res, res["events"] if res else 0)
            if res:
                self.record("p99_ms", kind, {**res, "value": res["p99_ms"], "per_cpu": None,
                                         "rep": rep})
        else:  # bulk
            res = self.measure(inst, scenario, lambda: self.run_http(inst, "/big", 1, False, False))
            if res:
                res["value"] = res["bytes"] / MIB / res["duration"]
                res = self.with_per_cpu(res, res["bytes"] / MIB)
        if res and res["events"] == 0 and not (scenario == "bulk" and res["bytes"]):
            self.problem(kind, f"{scenario}: no completed events")
            res = None
        if res:
            res["rep"] = rep
        self.record(scenario, kind, res)
        if res:
            per = f"{res['per_cpu']:.1f}" if res.get("per_cpu") else "-"
            log(
                f"rep {rep + 1} {scenario:<14} {kind:<8} {res['value']:10.1f} "
                f"{UNITS[scenario][0]:<6} per CPU-s {per:>9}  proxy CPU {res['proxy_util']:.0%}"
                f"  generator+backend CPU {res['generator_util']:.0%}"
            )

    def paired_phase(self) -> None:
        """stud and hitch at the same time on the proxy CPU, each with its own client on the
        other CPU: the ratio of their CPU per event, with the machine's drift (which moves
        sequential runs by several percent here) hitting both alike."""
        on = "paired" in self.a.scenarios
        wanted = [s for s in PAIRED if s in self.a.scenarios] if on else []
        if not wanted or not {"stud", "hitch"} <= set(self.kinds):
            return
        for scenario in wanted:
            rsa = scenario == "hs_new_rsa"
            pem = self.work / ("rsa.pem" if rsa else "ecdsa.pem")
            insts = [self.start_proxy(k, f"{scenario}-paired", pem, 1, PROXY_CPUS)
                     for k in ("stud", "hitch")]
            try:
                if all(i.proc for i in insts):
                    for rep in range(self.a.reps):
                        r = self.paired_one(scenario, insts, 12 if rsa else 13, rep)
                        if r:
                            self.paired.setdefault(scenario, []).append(r)
            finally:
                for inst in insts:
                    self.stop_proxy(inst)

    def paired_one(self, scenario: str, insts: list[Instance], tls: int, rep: int
                   ) -> float | None:
        """Both instances loaded at once: the second's CPU per event over the first's (the
        first's speed relative to the second)."""
        results: dict[int, dict] = {}

        def load(i: int) -> None:
            inst = insts[i]
            try:
                results[i] = (self.run_http(inst, "/", 32, True, False)
                              if scenario == "conn_resumed" else self.run_hs(inst, tls))
            except CLIENT_ERRORS as e:
                self.problem(inst.kind, f"{scenario} (paired): client failed: {e}")

        self.current = f"{scenario} (paired)"
        before = [sum(cpu_ticks(i.pids()).values()) for i in insts]
        threads = [threading.Thread(target=load, args=(i,)) for i in range(len(insts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.a.duration + 120)
        cpu = [(sum(cpu_ticks(inst.pids()).values()) - before[i]) / CLK_TCK
               for i, inst in enumerate(insts)]
        if len(results) < 2 or not all(results[i]["events"] and cpu[i] for i in range(2)):
            return None
        per = [cpu[i] / results[i]["events"] * 1e6 for i in range(2)]  # CPU us per event
        same = insts[0].kind == insts[1].kind
        a, b = (inst.label if same else inst.kind for inst in insts)
        log(f"rep {rep + 1} {scenario:<14} paired: {a} {per[0]:.1f} us, {b} {per[1]:.1f} us "
            f"of CPU per event: ratio {per[1] / per[0]:.3f}")
        return per[1] / per[0]

    def aa_phase(self) -> None:
        """The two methods' precision, hitch against itself (the true ratio is 1): hs_new_rsa
        in turn (as the pinned rows) and side by side (as the paired rows), and p99_ms in turn
        (as the pinned rows)."""
        if "aa" not in self.a.scenarios or "hitch" not in self.kinds:
            return
        pem = self.work / "rsa.pem"
        insts = [self.start_proxy("hitch", f"hitch-{n}", pem, 1, PROXY_CPUS) for n in "AB"]
        try:
            if not all(i.proc for i in insts):
                return
            for inst in insts:
                self.warm_up(inst, 12)
            for rep in range(self.a.reps):
                per: dict[str, dict[str, float]] = {"sequential": {}, "p99 sequential": {}}
                for inst in insts if rep % 2 == 0 else insts[::-1]:
                    res = self.measure(inst, "hs_new_rsa (A/A)", lambda i=inst: self.run_hs(i, 12))
                    res = self.with_per_cpu(res, res["events"] if res else 0)
                    if res and res.get("per_cpu"):
                        per["sequential"][inst.label] = res["per_cpu"]
                for inst in insts if rep % 2 else insts[::-1]:
                    res = self.measure(inst, "p99_ms (A/A)",
                                       lambda i=inst: self.run_http(i, "/", 64, False, True))
                    if res and res.get("p99_ms"):
                        per["p99 sequential"][inst.label] = res["p99_ms"]
                for method, values in per.items():
                    if len(values) == 2:
                        r = values["hitch-A"] / values["hitch-B"]
                        self.aa.setdefault(method, []).append(r)
                        log(f"rep {rep + 1} A/A {method}: hitch-A/hitch-B {r:.3f}")
                if r := self.paired_one("hs_new_rsa", insts, 12, rep):
                    self.aa.setdefault("paired", []).append(r)
        finally:
            for inst in insts:
                self.stop_proxy(inst)

    def idle_phase(self) -> None:
        if "idle_mem" not in self.a.scenarios:
            return
        cap = max_conns(self.a.nofile)
        for wanted in self.a.idle_counts:
            count = min(wanted, cap)
            if count < wanted:
                self.idle_capped[wanted] = count
                log(
                    f"idle_mem: {wanted} connections need {2 * wanted + 300} fds in the proxy "
                    f"worker, the fd limit is {self.a.nofile} (hard limit; raising it needs "
                    f"CAP_SYS_RESOURCE): measuring {count} instead"
                )
            for kind in self.kinds:
                if self.over_budget():
                    log("time budget used up: skipping the rest of idle_mem")
                    return
                inst = self.start_proxy(
                    kind, f"idle{count}", self.work / "ecdsa.pem", 1, PROXY_CPUS
                )
                try:
                    if inst.proc:
                        res = self.idle_one(inst, count)
                        if res:
                            self.idle.setdefault(str(count), {})[kind] = res
                finally:
                    self.stop_proxy(inst)

    def idle_argv(self, port: int, count: int) -> list[str]:
        setup = self.a.idle_setup_timeout
        if self.tlsload:
            opts = f"-m idle -p {port} -n {count} -c 64 -w 900 -S {setup}"
            return [str(self.tlsload), *opts.split()]
        return self.pyload(
            "idle", port, *f"--count {count} --hold 900 --setup-timeout {setup}".split()
        )

    def idle_hold(self, port: int, count: int) -> tuple[Started, dict]:
        """Starts an idle client; returns it and its 'ready' report."""
        client = self.procs.spawn(
            f"idle-client-{count}",
            self.idle_argv(port, count),
            cpus=self.client_cpus,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            log=self.work / "idle-client.log",
        )
        line = read_line(client, self.a.idle_setup_timeout + 60)
        return client, json.loads(line) if line else {}

    def idle_release(self, client: Started) -> dict:
        done: dict = {}
        try:
            assert client.popen.stdin
            client.popen.stdin.close()
            line = read_line(client, 30)
            done = json.loads(line) if line else {}
        except (OSError, ValueError):
            pass
        self.procs.stop(client)
        return done

    def idle_one(self, inst: Instance, count: int) -> dict | None:
        kind = inst.kind
        warm, _ = self.idle_hold(inst.port, 4)  # touch the code paths once
        self.idle_release(warm)
        time.sleep(1.0)
        rss0 = rss_kib(inst.pids())
        t0 = time.monotonic()
        client, ready = self.idle_hold(inst.port, count)
        setup = time.monotonic() - t0
        try:
            time.sleep(1.0)
            pids = inst.pids()
            rss1 = rss_kib(pids)
            time.sleep(1.0)  # still there a moment later?
            alive = inst.proc is not None and inst.proc.alive()
        finally:
            done = self.idle_release(client)
        est = int(ready.get("established", 0))
        res = {
            "count": count,
            "established": est,
            "errors": ready.get("errors"),
            "unfinished": ready.get("unfinished"),
            "dropped": done.get("dropped"),
            "rss_before_kib": rss0,
            "rss_after_kib": rss1,
            "setup_s": setup,
            "proxy_alive": alive,
            "proxy_pids": len(pids),
            "kib_per_conn": (rss1 - rss0) / est if est else None,
            "tool": "tlsload" if self.tlsload else "pyload",
        }
        ok = est == count and not ready.get("errors") and not done.get("dropped") and alive
        res["clean"] = ok
        if not ok:
            self.problem(
                kind,
                f"idle_mem {count}: established {est}/{count}, "
                f"errors {ready.get('errors')} {ready}, dropped {done.get('dropped')}, "
                f"proxy alive {alive}",
            )
        kib = f"{res['kib_per_conn']:.1f}" if res["kib_per_conn"] is not None else "-"
        log(
            f"idle_mem {count:>6} {kind:<8} {kib:>7} KiB/conn  (RSS {rss0} -> {rss1} KiB, "
            f"{est} established in {setup:.1f}s)"
        )
        return res

    def unpinned_phase(self) -> None:
        """hs_new with 1 and 2 workers, nothing pinned; resumption across 2 workers."""
        if not {"scaling", "resume"} & set(self.a.scenarios):
            return
        self.client_cpus = ALL_CPUS
        if self.backend:
            set_affinity(self.backend.pids(), ALL_CPUS)
        insts: dict[tuple[str, int], Instance] = {}
        try:
            for kind in self.kinds:
                for workers in (1, 2) if "scaling" in self.a.scenarios else (2,):
                    insts[kind, workers] = self.start_proxy(
                        kind,
                        f"ecdsa-{workers}w-unpinned",
                        self.work / "ecdsa.pem",
                        workers,
                        ALL_CPUS,
                    )
            if "resume" in self.a.scenarios and "stud" in self.kinds:
                insts[SHARED_CACHE, 2] = self.start_proxy(
                    "stud", "ecdsa-2w-shared-cache", self.work / "ecdsa.pem", 2, ALL_CPUS,
                    extra=("-C", "20000"))
            if "scaling" in self.a.scenarios:
                for inst in insts.values():
                    if inst.proc:
                        try:
                            self.run_hs(inst, 13, dur=min(1.0, self.a.duration))
                        except CLIENT_ERRORS:
                            pass
                for rep in range(self.a.reps):
                    if rep and self.over_budget():
                        log("time budget used up: fewer scaling repetitions")
                        break
                    for kind in self.kinds:
                        for workers in (1, 2):
                            inst = insts[kind, workers]
                            scen = f"hs_new_{workers}w"
                            res = self.measure(inst, scen, lambda inst=inst: self.run_hs(inst, 13))
                            res = self.with_per_cpu(res, res["events"] if res else 0)
                            self.record(scen, kind, res)
                            if res:
                                log(
                                    f"rep {rep + 1} {scen:<14} {kind:<8} {res['value']:10.1f} "
                                    f"hs/s   proxy CPU {res['proxy_util']:.0%}"
                                    f"  generator+backend CPU {res['generator_util']:.0%}"
                                )
            if "resume" in self.a.scenarios:
                for kind in [*self.kinds, SHARED_CACHE] if "stud" in self.kinds else self.kinds:
                    inst = insts[kind, 2]
                    if inst.proc:
                        self.resume[kind] = resume_test(inst.port, self.a.resume_reconnects)
                        log(
                            f"resume {kind:<8} "
                            + ", ".join(
                                f"{k} {v['resumed']}/{v['reconnects']}"
                                for k, v in self.resume[kind].items()
                            )
                        )
                        if inst.proc.alive() is False:
                            self.problem(kind, "resume: proxy died")
        finally:
            for inst in insts.values():
                self.stop_proxy(inst)
            self.client_cpus = CLIENT_CPUS
            if self.backend:
                set_affinity(self.backend.pids(), CLIENT_CPUS)

    def scan_logs(self) -> None:
        """stud's stderr (ERR lines, tracebacks) and the close reasons in its stdout log."""
        for path in sorted(self.work.glob("stud-*.log")):
            lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
            for ln in [ln for ln in lines if "WARNING" in ln]:
                note = re.sub(r"^\S+ \[\d+\] ", "", ln)
                if note not in self.notes:
                    self.notes.append(note)
            lines = [ln for ln in lines if "WARNING" not in ln]
            if lines:
                self.problem(
                    "stud",
                    f"{path.name}: {len(lines)} lines on stderr, e.g.:\n  "
                    + "\n  ".join(lines[:8]),
                )
        for path in sorted(self.work.glob("stud-*.out")):
            with path.open(errors="replace") as f:
                for line in f:
                    m = re.search(r'reason=("[^"]*"|\S+)', line)
                    if m:
                        reason = m.group(1).strip('"')
                        self.close_reasons[reason] = self.close_reasons.get(reason, 0) + 1


def read_line(s: Started, timeout: float) -> str:
    """One line of a child's stdout, waiting at most `timeout` seconds."""
    assert s.popen.stdout
    fd = s.popen.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], min(1.0, max(0.0, deadline - time.monotonic())))
        if r:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
            if b"\n" in buf:
                return buf.split(b"\n", 1)[0].decode()
    return buf.decode()


def resume_test(port: int, reconnects: int) -> dict[str, dict]:
    """Fraction of reconnects resumed: TLS 1.3 tickets, TLS 1.2 tickets, TLS 1.2 session IDs.

    Each reconnect offers the session of the previous connection; with 2 workers the
    kernel spreads the connections over both.
    """
    out = {}
    modes = {
        "tls13_ticket": (ssl.TLSVersion.TLSv1_3, False),
        "tls12_ticket": (ssl.TLSVersion.TLSv1_2, False),
        "tls12_session_id": (ssl.TLSVersion.TLSv1_2, True),
    }
    for name, (version, no_ticket) in modes.items():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ctx.maximum_version = version
        if no_ticket:
            ctx.options |= ssl.OP_NO_TICKET
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
        out[name] = {
            "reconnects": reconnects,
            "resumed": resumed,
            "errors": errors,
            "fraction": resumed / reconnects if reconnects else None,
        }
    return out


# --------------------------------------------------------------------------- summary


def median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def rep_ratios(runs: dict[str, list[dict]], key: str) -> list[float]:
    """stud/hitch of key in each repetition that has both (run back to back)."""
    hitch = {r["rep"]: r.get(key) for r in runs.get("hitch", []) if "rep" in r}
    return [r[key] / hitch[r["rep"]] for r in runs.get("stud", [])
            if r.get(key) and hitch.get(r.get("rep"))]


def summarize(b: Bench) -> dict:
    summary: dict[str, Any] = {}
    for scenario, per_kind in b.runs.items():
        summary[scenario] = {
            kind: {
                "median": median([r["value"] for r in runs]),
                "per_cpu_median": median([r.get("per_cpu") for r in runs]),
                "proxy_util_median": median([r.get("proxy_util") for r in runs]),
                "n": len(runs),
            }
            for kind, runs in per_kind.items()
        }
        for key, name in (("value", "rep_ratios"), ("per_cpu", "rep_ratios_per_cpu")):
            if ratios := rep_ratios(per_kind, key):
                summary[scenario][name] = ratios
    return summary


def fmt(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def targets_and_table(b: Bench, summary: dict) -> tuple[list[dict], list[list[str]]]:
    """The targets (stud vs hitch, same run) and the printed table's rows."""
    targets: list[dict] = []
    rows: list[list[str]] = []
    kinds = b.kinds

    def target(name: str, measured: Any, goal: str, ok: bool | None, basis: str) -> str:
        targets.append(
            dict(name=name, measured=measured, target=goal, verdict=verdict(ok), basis=basis)
        )
        return verdict(ok)

    for scenario in (*PINNED_SCENARIOS[:4], "p99_ms", "bulk"):
        s = summary.get(scenario)
        if not s:
            continue
        cells = []
        for kind in kinds:
            k = s.get(kind)
            if not k:
                cells.append("-")
            elif scenario == "p99_ms":
                cells.append(fmt(k["median"], 2))
            else:
                cells.append(f"{fmt(k['median'])} [{fmt(k['per_cpu_median'])}]")
        stud, hitch = s.get("stud", {}), s.get("hitch", {})
        # The ratio: the median of the repetitions' ratios (see pinned_phase), else (a run
        # without pairs) the ratio of the medians, which the basis also gives.
        raw_of_medians = ratio(stud.get("median"), hitch.get("median"))
        per_of_medians = ratio(stud.get("per_cpu_median"), hitch.get("per_cpu_median"))
        raw = median(s.get("rep_ratios", [])) or raw_of_medians
        per = median(s.get("rep_ratios_per_cpu", [])) or per_of_medians
        pairs = s.get("rep_ratios" if scenario == "p99_ms" else "rep_ratios_per_cpu", [])
        of_reps = f"median of {len(pairs)} back-to-back pairs: " + ", ".join(
            f"{r:.2f}" for r in pairs) if pairs else "ratio of medians"
        side = b.paired.get(scenario)
        if side:  # the handshake figures: side by side, where the host's drift cancels (aa_phase)
            of_reps = (f"side by side, median of {len(side)}: " + ", ".join(
                f"{r:.3f}" for r in side) + f"; in turn: {fmt(per, 2)}, {of_reps}")
            per = statistics.median(side)
        if scenario == "p99_ms":
            goal = "<= hitch's"
            ok = None if raw is None else raw <= 1.0
            basis = (f"stud p99 / hitch p99, {of_reps}; medians {fmt(stud.get('median'), 2)}"
                     f" vs {fmt(hitch.get('median'), 2)} ms")
            v = target(scenario, raw, goal, ok, basis)
        else:
            goal = f">= {RATIO_TARGETS[scenario]:.1f}"
            ok = None if per is None else per >= RATIO_TARGETS[scenario]
            basis = (f"stud/hitch per proxy CPU-second, {of_reps}; ratio of medians "
                     f"{fmt(per_of_medians, 2)}")
            v = target(scenario, per, goal, ok, basis)
        per_s = ("-" if scenario == "p99_ms" else
                 f"{per:.3f} side by side" if side else fmt(per, 2))
        rows.append([scenario, UNITS[scenario][0], *cells, fmt(raw, 2), per_s, goal, v])

    wanted_of = {got: wanted for wanted, got in b.idle_capped.items()}
    for count, per_kind in sorted(b.idle.items(), key=lambda kv: int(kv[0])):
        cells = [fmt(per_kind[k]["kib_per_conn"]) if k in per_kind else "-" for k in kinds]
        stud = per_kind.get("stud", {}).get("kib_per_conn")
        hitch = per_kind.get("hitch", {}).get("kib_per_conn")
        goal = f"stud <= {IDLE_KIB_TARGET:.0f}"
        ok = None if stud is None else stud <= IDLE_KIB_TARGET
        label = f"idle_mem {count}"
        if int(count) in wanted_of:
            label += f" (for {wanted_of[int(count)]}: fd limit)"
        v = target(f"idle_mem_{count}", stud, goal, ok, "stud KiB of RSS per idle connection")
        rows.append([label, "KiB/conn", *cells, fmt(ratio(stud, hitch), 2), "-", goal, v])

    if "stud" in kinds and "idle_mem" in b.a.scenarios and IDLE_BIG in b.a.idle_counts:
        goal = f"{IDLE_BIG} idle, no errors"
        if IDLE_BIG in b.idle_capped:
            got = b.idle_capped[IDLE_BIG]
            run = b.idle.get(str(got), {}).get("stud")
            held = "cleanly" if run and run["clean"] else "with errors"
            note = (
                f"not measurable: fd limit {b.a.nofile} allows {got} proxied connections "
                f"per process; {got} held {held}"
            )
            target("idle_20k_one_worker", note, goal, None, "stud, 1 worker")
        else:
            big = b.idle.get(str(IDLE_BIG), {}).get("stud")
            ok = None if big is None else bool(big["clean"])
            target("idle_20k_one_worker", big and big["established"], goal, ok, "stud, 1 worker")

    s1, s2 = summary.get("hs_new_1w", {}), summary.get("hs_new_2w", {})
    if s1 or s2:
        cells = []
        for kind in kinds:
            one, two = s1.get(kind, {}).get("median"), s2.get(kind, {}).get("median")
            cells.append(f"{fmt(one)} -> {fmt(two)} ({fmt(ratio(two, one), 2)}x)")
        sr = ratio(s2.get("stud", {}).get("median"), s1.get("stud", {}).get("median"))
        hr = ratio(s2.get("hitch", {}).get("median"), s1.get("hitch", {}).get("median"))
        goal = f"stud >= {SCALING_TARGET}x"
        ok = None if sr is None else sr >= SCALING_TARGET
        basis = "stud hs/s, 2 vs 1 worker, unpinned"
        ceiling = scaling_ceiling(b, "stud", s1.get("stud", {}).get("median"))
        if ceiling:
            basis += (
                f"; this box's ceiling ~{ceiling:.2f}x: proxy + generator + backend "
                f"CPU per handshake vs {len(ALL_CPUS)} CPUs"
            )
            if ceiling < SCALING_TARGET and not ok:  # no proxy could meet it here
                ok = None
                basis = "not measurable here: " + basis
        v = target("hs_new_2w_vs_1w", sr, goal, ok, basis)
        rows.append(["hs_new 1w -> 2w", "hs/s", *cells, fmt(ratio(sr, hr), 2), "-", goal, v])

    for scenario, ratios in b.paired.items():
        cells = [f"{statistics.median(ratios):.3f} ({', '.join(f'{r:.3f}' for r in ratios)})"
                 if k == "stud" else "" for k in kinds]
        rows.append([f"{scenario} (paired)", "ratio", *cells, "-",
                     fmt(statistics.median(ratios), 2), "(info)", ""])
    for method, ratios in b.aa.items():  # hitch against itself: each method's spread
        cells = [f"{statistics.median(ratios):.3f} ({min(ratios):.3f} .. {max(ratios):.3f})"
                 if k == "hitch" else "" for k in kinds]
        name = "p99_ms (sequential)" if method.startswith("p99") else f"hs_new_rsa ({method})"
        rows.append([f"A/A {name} hitch/hitch", "ratio", *cells, "-", "-", "(info)", ""])
    for mode in ("tls13_ticket", "tls12_ticket", "tls12_session_id") if b.resume else ():
        cells = []
        for kind in kinds:
            r = b.resume.get(kind, {}).get(mode)
            cells.append(f"{r['resumed']}/{r['reconnects']}" if r else "-")
        rows.append([f"resume {mode} (2w)", "resumed", *cells, "-", "-", "(info)", ""])
        r = b.resume.get(SHARED_CACHE, {}).get(mode)
        if r:
            cells = [f"{r['resumed']}/{r['reconnects']}" if k == "stud" else "" for k in kinds]
            rows.append([f"resume {mode} (2w, {SHARED_CACHE})", "resumed", *cells, "-", "-",
                         "(info)", ""])
    return targets, rows


def scaling_ceiling(b: Bench, kind: str, rate_1w: float | None) -> float | None:
    """Best 2w/1w ratio this machine allows: all CPUs' worth of handshakes, given what one
    handshake costs the proxy, the load generator and the backend together (2w runs)."""
    per_event = [
        (r["proxy_cpu_s"] + r["client_cpu_s"] + r["backend_cpu_s"]) / r["events"]
        for r in b.runs.get("hs_new_2w", {}).get(kind, [])
        if r["events"]
    ]
    cost = median(per_event)
    return ratio(len(ALL_CPUS) / cost, rate_1w) if cost else None


def render_table(kinds: list[str], rows: list[list[str]]) -> str:
    head = table_head(kinds)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table_head(kinds: list[str]) -> list[str]:
    per_kind = [f"{k} median [per CPU-s]" for k in kinds]
    return ["scenario", "unit", *per_kind, "stud/hitch raw", "stud/hitch per CPU-s", "target", ""]


def target_lines(targets: list[dict]) -> list[str]:
    out = []
    for t in targets:
        m = t["measured"]
        shown = fmt(m, 2) if isinstance(m, float) else "-" if m is None else str(m)
        out.append(
            f"{t['verdict']:<4}  {t['name']:<20} {shown:>6}  target {t['target']}  ({t['basis']})"
        )
    return out


def render_md(b: Bench, rows: list[list[str]], targets: list[dict], meta: dict) -> str:
    head = table_head(b.kinds)
    cfg = meta["config"]
    reasons = sorted(b.close_reasons.items(), key=lambda kv: -kv[1])
    out = [
        f"# stud benchmark ({'smoke' if meta['smoke'] else 'full'} run, {meta['date']})",
        "",
        f"Command: `{meta['command']}` ({meta['elapsed_s']:.0f} s)  ",
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['nproc']} CPUs, "
        f"kernel {meta['machine']['kernel']}, fd limit {cfg['nofile']}  ",
        f"Repetitions: {cfg['reps']} x {cfg['duration']} s per figure, interleaved (stud, hitch, "
        "haproxy, stud, ...); medians. Clients: "
        + ", ".join(f"{k} {v}" for k, v in meta["tools"].items())
        + ".  ",
        "Placement: proxy pinned to CPU 0 with 1 worker; load generator and nginx backend on "
        "CPU 1. `per CPU-s` = events (or MiB) per second of proxy CPU time (utime+stime of all "
        "its processes during the measured phase). Scaling and resumption rows: unpinned. "
        "See bench/README.md.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
        "## Targets",
        "",
        "```",
        *target_lines(targets),
        "```",
        "",
        "## Problems seen",
        "",
        *([f"- {p}".replace("\n", "\n  ") for p in b.problems] or ["- none"]),
        "",
        "## Notes",
        "",
        *([f"- stud printed: {n}" for n in b.notes]),
        *(
            [
                "- stud's per-connection close reasons: "
                + ", ".join(f"`{r}` x{n}" for r, n in reasons)
            ]
            if reasons
            else []
        ),
        "",
        "## Versions",
        "",
        *[f"- {k}: `{v}`" for k, v in meta["versions"].items()],
        "",
        "## Commands (ports and paths vary per run)",
        "",
        *[f"- {k}: `{v}`" for k, v in meta["commands"].items()],
        "",
    ]
    return "\n".join(out)


def render_png(path: Path, b: Bench, summary: dict) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no chart")
        return False
    kinds = b.kinds
    colors = {"stud": "#d62728", "hitch": "#1f77b4", "haproxy": "#2ca02c"}
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    width = 0.8 / max(1, len(kinds))

    def bars(ax: Any, labels: list[str], values: dict[str, list[float | None]]) -> None:
        for i, kind in enumerate(kinds):
            xs = [j + (i - (len(kinds) - 1) / 2) * width for j in range(len(labels))]
            ys = [v if v is not None else 0 for v in values[kind]]
            rects = ax.bar(xs, ys, width, label=kind, color=colors.get(kind))
            for rect, v in zip(rects, values[kind], strict=True):
                if v is not None:
                    ax.annotate(
                        fmt(v, 2),
                        (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                    )
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.legend(fontsize=8)

    scen = [s for s in PINNED_SCENARIOS if s in summary]
    for ax, key, pairs, title in (
        (axes[0][0], "per_cpu_median", "rep_ratios_per_cpu",
         "per proxy CPU-second, relative to hitch"),
        (axes[0][1], "median", "rep_ratios", "raw rate, relative to hitch"),
    ):
        vals = {  # (stud: as its target, from the back-to-back pairs)
            k: [
                median(summary[s].get(pairs, [])) if k == "stud" and summary[s].get(pairs)
                else ratio(summary[s].get(k, {}).get(key), summary[s].get("hitch", {}).get(key))
                for s in scen
            ]
            for k in kinds
        }
        bars(ax, scen, vals)
        for j, s in enumerate(scen):
            if key == "per_cpu_median":
                t = RATIO_TARGETS[s]
                ax.plot([j - 0.45, j + 0.45], [t, t], "k--", lw=1)
        ax.set_title(title + (" (dashed: target)" if key == "per_cpu_median" else ""), fontsize=10)
    ax = axes[0][2]
    p99 = summary.get("p99_ms", {})
    bars(ax, ["p99 keep-alive"], {k: [p99.get(k, {}).get("median")] for k in kinds})
    ax.set_title("p99 latency, ms (wrk -c 64)", fontsize=10)
    ax = axes[1][0]
    counts = sorted(b.idle, key=int)
    bars(
        ax,
        [f"{c} conns" for c in counts],
        {k: [b.idle[c].get(k, {}).get("kib_per_conn") for c in counts] for k in kinds},
    )
    ax.axhline(IDLE_KIB_TARGET, color="k", ls="--", lw=1)
    ax.set_title(
        f"idle memory, KiB RSS per connection (dashed: {IDLE_KIB_TARGET:.0f})", fontsize=10
    )
    ax = axes[1][1]
    s1, s2 = summary.get("hs_new_1w", {}), summary.get("hs_new_2w", {})
    bars(
        ax,
        ["1 worker", "2 workers"],
        {k: [s1.get(k, {}).get("median"), s2.get(k, {}).get("median")] for k in kinds},
    )
    ax.set_title("hs_new, handshakes/s, unpinned", fontsize=10)
    ax = axes[1][2]
    modes = ["tls13_ticket", "tls12_ticket", "tls12_session_id"]
    bars(
        ax,
        modes,
        {k: [b.resume.get(k, {}).get(m, {}).get("fraction") for m in modes] for k in kinds},
    )
    ax.set_title("resumed fraction across 2 workers", fontsize=10)
    fig.suptitle(f"stud vs hitch vs HAProxy on loopback ({time.strftime('%Y-%m-%d')})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def versions(b: Bench) -> dict[str, str]:
    v: dict[str, str] = {}
    if b.stud_cmd:
        v["stud"] = b.stud_version
    if _which("hitch"):
        v["hitch"] = run_capture([_which("hitch") or "hitch", "-V"]).splitlines()[0]
    if _which("haproxy"):
        v["haproxy"] = run_capture([_which("haproxy") or "haproxy", "-v"]).splitlines()[0]
    if b.wrk:
        v["wrk"] = run_capture([b.wrk, "-v"]).splitlines()[0]
    if _which("nginx"):
        v["nginx"] = run_capture([_which("nginx") or "nginx", "-v"]).splitlines()[0]
    v["openssl"] = ssl.OPENSSL_VERSION
    v["python"] = sys.version.split()[0]
    return v


def git_rev() -> str:
    out = run_capture(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = run_capture(["git", "-C", str(REPO), "status", "--porcelain", "--", "stud"])
    return out + (" + uncommitted changes in stud/" if dirty else "")


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


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
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
    p.add_argument(
        "--budget",
        type=float,
        help="minutes before remaining reps are skipped (default 22, smoke 2)",
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
    smoke = a.smoke
    a.reps = a.reps or (1 if smoke else 5)
    a.duration = a.duration or (2.0 if smoke else 6.0)
    a.idle_counts = [
        int(x) for x in (a.idle_counts or ("200" if smoke else "2000,20000")).split(",")
    ]
    a.resume_reconnects = a.resume_reconnects or (5 if smoke else 20)
    a.budget = a.budget or (2.0 if smoke else 22.0)
    a.install = (not smoke) if a.install is None else a.install
    a.out = a.out or (
        Path(tempfile.gettempdir()) / "stud-bench-smoke" if smoke else REPO / "docs" / "benchmarks"
    )
    a.proxies = [k for k in a.proxies.split(",") if k]
    a.scenarios = {s for s in a.scenarios.split(",") if s}
    bad = [k for k in a.proxies if k not in KINDS] + [
        s for s in a.scenarios if s not in ALL_SCENARIOS
    ]
    if bad:
        p.error(f"unknown: {bad}")
    return a


def raise_nofile() -> int:
    """Raises the fd limit (inherited by every process started here); returns it.

    Raising the hard limit needs CAP_SYS_RESOURCE; without it the soft limit goes up to the
    hard one.
    """
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    except (ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    a.nofile = raise_nofile()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    if a.install:
        ensure_installed(True)
    a.stud_cmd = a.stud_cmd or None
    work = Path(tempfile.mkdtemp(prefix="stud-bench-"))
    b = Bench(a, work)
    try:
        meta = run_all(b)
        if not meta:
            return 1
        b.scan_logs()
        return report(b, meta)
    finally:
        b.procs.stop_all()
        if a.keep_tmp:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_all(b: Bench) -> dict[str, Any]:
    """All measurements; returns the run's metadata ({} if nothing could run)."""
    a = b.a
    meta: dict[str, Any] = {}
    try:
        log(f"work dir {b.work}; fd limit {a.nofile}")
        b.setup()
        if not b.kinds:
            log("no proxy to benchmark")
            return {}
        meta = {
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
        b.pinned_phase()
        b.paired_phase()
        b.aa_phase()
        b.idle_phase()
        b.unpinned_phase()
    except KeyboardInterrupt:
        log("interrupted: writing what was measured")
    finally:
        b.procs.stop_all()
    return meta


def report(b: Bench, meta: dict[str, Any]) -> int:
    """Prints the table, writes latest.json/.md/.png; the exit status."""
    a = b.a
    meta["versions"] = versions(b)
    meta["commands"] = b.commands
    meta["elapsed_s"] = round(time.monotonic() - b.t_start, 1)
    summary = summarize(b)
    targets, rows = targets_and_table(b, summary)
    print()
    print(render_table(b.kinds, rows))
    print()
    for line in target_lines(targets):
        print("  " + line)
    if b.close_reasons:
        top = sorted(b.close_reasons.items(), key=lambda kv: -kv[1])[:8]
        print(
            "stud close reasons (its per-connection log): " + ", ".join(f"{r} x{n}" for r, n in top)
        )
    print()
    if b.problems:
        print("Problems seen:")
        for prob in b.problems:
            print("  - " + prob.replace("\n", "\n    "))
    a.out.mkdir(parents=True, exist_ok=True)
    result = {
        "meta": meta,
        "summary": summary,
        "targets": targets,
        "idle_mem": b.idle,
        "resume": b.resume,
        "paired": b.paired,
        "aa": b.aa,
        "idle_capped": b.idle_capped,
        "stud_close_reasons": b.close_reasons,
        "stud_warnings": b.notes,
        "runs": b.runs,
        "problems": b.problems,
    }
    (a.out / "latest.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (a.out / "latest.md").write_text(render_md(b, rows, targets, meta))
    png = render_png(a.out / "latest.png", b, summary)
    log(
        f"wrote {a.out}/latest.json, latest.md{', latest.png' if png else ''} "
        f"in {meta['elapsed_s']:.0f}s"
    )
    have_numbers = {k for per in b.runs.values() for k in per} | {
        k for per in b.idle.values() for k in per
    }
    if "stud" in b.kinds:
        return 0 if "stud" in have_numbers else 1
    return 0 if have_numbers else 1


if __name__ == "__main__":
    sys.exit(main())
