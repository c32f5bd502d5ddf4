"""The proxies: their command lines and configs, starting them pinned and ready, stopping
them, and what stud wrote to its logs."""

from __future__ import annotations

import os
import random
import re
import shlex
import socket
import ssl
import time
from pathlib import Path

from .certs import ClientAuth
from .common import HOST, log
from .context import Bench, Instance
from .prepare import which
from .procs import STUD_PRELOAD, cpus_allowed, max_conns, set_affinity


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


def tls_ready(port: int, client_pem: Path | None = None) -> bool:
    """One TLS handshake + tiny request through the proxy, presenting client_pem if given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if client_pem:
        ctx.load_cert_chain(client_pem)
    try:
        with socket.create_connection((HOST, port), timeout=2) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                return s.recv(64).startswith(b"HTTP/1.")
    except (OSError, ValueError):
        return False


def proxy_argv(b: Bench, inst: Instance) -> list[str]:
    front, back = f"[{HOST}]:{inst.port}", f"[{HOST}]:{b.backend_port}"
    if inst.kind == "stud":
        assert b.stud.argv
        verify = (f"--client-verify=required --client-verify-ca={inst.mtls.ca_bundle}".split()
                  if inst.mtls else [])
        keys = ["--tls-ticket-keys", str(inst.ticket_keys)] if inst.ticket_keys else []
        return [*b.stud.argv, "-f", front, "-b", back, "-n", str(inst.workers), *keys,
                *inst.extra, *verify, str(inst.pem)]
    if inst.kind == "hitch":
        ocsp = b.work / "hitch-ocsp"
        ocsp.mkdir(exist_ok=True)
        os.chmod(ocsp, 0o777)  # hitch runs as nobody
        return [
            which("hitch") or "hitch",
            f"--frontend={front}",
            f"--backend={back}",
            f"--workers={inst.workers}",
            "--user=nobody",
            f"--ocsp-dir={ocsp}",
            *_hitch_verify(b, inst),
            str(inst.pem),
        ]
    conf = b.work / f"haproxy-{inst.label}.cfg"
    conf.write_text(haproxy_conf(inst, b.backend_port, b.args.nofile))
    one_line = "; ".join(ln.strip() for ln in conf.read_text().splitlines())
    mtls = ", mTLS" if inst.mtls else ""
    keys = ", tls-ticket-keys" if inst.ticket_keys else ""
    b.commands.setdefault(f"haproxy config ({inst.workers} worker{mtls}{keys})", one_line)
    return [which("haproxy") or "haproxy", "-db", "-f", str(conf)]


def _hitch_verify(b: Bench, inst: Instance) -> list[str]:
    """hitch 1.8 has client-verify in its config file only, not on its command line."""
    if not inst.mtls:
        return []
    conf = b.work / f"hitch-{inst.label}.conf"
    conf.write_text(f'client-verify = required\nclient-verify-ca = "{inst.mtls.ca_bundle}"\n')
    conf.chmod(0o644)
    return [f"--config={conf}"]


def haproxy_conf(inst: Instance, backend_port: int, nofile: int) -> str:
    verify = f" ca-file {inst.mtls.ca_bundle} verify required" if inst.mtls else ""
    verify += f" tls-ticket-keys {inst.ticket_keys}" if inst.ticket_keys else ""
    return f"""global
    nbthread {inst.workers}
    maxconn {max_conns(nofile)}
defaults
    mode tcp
    timeout connect 5s
    timeout client 3600s
    timeout server 3600s
frontend fe
    bind {HOST}:{inst.port} ssl crt {inst.pem}{verify}
    default_backend be
backend be
    server s1 {HOST}:{backend_port}
"""


def start_proxy(
    b: Bench, kind: str, label: str, pem: Path, workers: int, cpus: set[int],
    extra: tuple[str, ...] = (), mtls: ClientAuth | None = None,
    ticket_keys: Path | None = None,
) -> Instance:
    """Starts a proxy and waits until it answers through TLS; its `proc` is None if not.
    With mtls it requires client certificates (and is asked with one); ticket_keys: the
    file of session-ticket keys it shares with others (stud, HAProxy)."""
    inst = Instance(kind, label, free_port(b.ports), pem, workers, cpus, extra=extra, mtls=mtls,
                    ticket_keys=ticket_keys)
    inst.argv = proxy_argv(b, inst)
    b.commands.setdefault(
        f"{kind} ({workers} worker{'s' * (workers > 1)}{', ' * bool(extra)}"
        f"{' '.join(extra)}{', mTLS' * bool(mtls)}{', ticket keys' * bool(ticket_keys)})",
        shlex.join(inst.argv)
    )
    env = stud_env(b) if kind == "stud" else dict(os.environ)
    inst.proc = b.procs.spawn(
        f"{kind}-{label}", inst.argv, cpus=cpus, log=b.work / f"{kind}-{label}.log", env=env
    )
    if not _wait_ready(inst):
        inst.error = f"{kind} ({label}) did not come up: " + (
            f"exited with {inst.proc.popen.returncode}" if not inst.proc.alive() else "timeout"
        )
        tail = inst.proc.log_tail()
        b.problem(kind, inst.error + (f"; log tail:\n{tail}" if tail else ""))
        b.procs.stop(inst.proc)
        inst.proc = None
        return inst
    _pin(inst)
    return inst


def stud_env(b: Bench) -> dict[str, str]:
    """The environment stud runs in: the copy of stud/ on its path, a sanitizer's runtime."""
    env = dict(os.environ)
    if b.stud.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [b.stud.pythonpath, env.get("PYTHONPATH")])
        )
    if STUD_PRELOAD:
        env["LD_PRELOAD"] = STUD_PRELOAD
    return env


def _wait_ready(inst: Instance) -> bool:
    assert inst.proc
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and inst.proc.alive():
        if tls_ready(inst.port, inst.mtls.client_pem if inst.mtls else None):
            return True
        time.sleep(0.2)
    return False


def _pin(inst: Instance) -> None:
    """Waits for all workers (bounded), then pins every process and thread: hitch pins its
    workers itself, to CPUs of its own choosing."""
    want = inst.workers + 1 if inst.kind in ("stud", "hitch") else 1
    deadline = time.monotonic() + 10
    while len(inst.pids()) < want and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    set_affinity(inst.pids(), inst.cpus)
    pinning = {pid: cpus_allowed(pid) for pid in inst.pids()}
    log(f"{inst.kind} ({inst.label}) up on :{inst.port}, processes/CPUs {pinning}")


def stop_proxy(b: Bench, inst: Instance) -> None:
    if inst.proc:
        if not inst.proc.alive():
            b.problem(inst.kind, f"{inst.label}: exited early with {inst.proc.popen.returncode}")
        b.procs.stop(inst.proc)
        inst.proc = None


def stop_proxies(b: Bench, insts: list[Instance]) -> None:
    for inst in insts:
        stop_proxy(b, inst)


def scan_stud_logs(b: Bench) -> None:
    """stud's stderr (ERR lines, tracebacks) and the close reasons in its stdout log."""
    for path in sorted(b.work.glob("stud-*.log")):
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        for ln in [ln for ln in lines if "WARNING" in ln]:
            note = re.sub(r"^\S+ \[\d+\] ", "", ln)
            if note not in b.results.notes:
                b.results.notes.append(note)
        lines = [ln for ln in lines if "WARNING" not in ln]
        if lines:
            b.problem(
                "stud",
                f"{path.name}: {len(lines)} lines on stderr, e.g.:\n  " + "\n  ".join(lines[:8]),
            )
    reasons = b.results.close_reasons
    for path in sorted(b.work.glob("stud-*.out")):
        with path.open(errors="replace") as f:
            for line in f:
                m = re.search(r'reason=("[^"]*"|\S+)', line)
                if m:
                    reason = m.group(1).strip('"')
                    reasons[reason] = reasons.get(reason, 0) + 1
