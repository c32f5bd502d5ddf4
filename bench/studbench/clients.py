"""The load generators: tlsload (handshakes, idle connections), wrk (HTTP), and pyload,
which stands in for whichever is missing; each run's output as one result dict."""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .common import BENCH, CLIENT_ERRORS, HOST, RSA_CIPHER
from .context import Bench, Instance

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


def pyload_argv(mode: str, port: int, *extra: str) -> list[str]:
    return [sys.executable, str(BENCH / "pyload.py"), mode, "--port", str(port), *extra]


def run_clients(b: Bench, argv: list[str], timeout: float, copies: int = 1,
                pin_each: bool = False) -> list[str]:
    """Runs `copies` instances of a load generator at once; returns their stdouts. pin_each:
    each copy alone on one client CPU (the scheduler may stack copies that share CPUs)."""
    b.commands.setdefault(f"client, {b.current}", shlex.join(argv))
    cpus = sorted(b.client_cpus)
    sets = [{cpus[i % len(cpus)]} if pin_each and copies > 1 else b.client_cpus
            for i in range(copies)]
    procs = [
        subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda on=on: os.sched_setaffinity(0, on),
        )
        for on in sets
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


def hs_argv(b: Bench, port: int, tls: int, dur: float, conc: int, resume: bool,
            client_pem: Path | None = None) -> list[str]:
    if b.tlsload:
        opts = f"-m hs -p {port} -c {conc} -d {dur} -t {tls} -g X25519"
        argv = [str(b.tlsload), *opts.split()]
        if tls == 12:
            argv += ["-C", RSA_CIPHER]
        argv += ["-E", str(client_pem)] if client_pem else []
        return argv + (["-r"] if resume else [])
    argv = pyload_argv("hs", port, "--conc", str(min(conc, 8)), "--duration", str(dur))
    argv += ["--tls", str(tls)] + (["--ciphers", RSA_CIPHER] if tls == 12 else [])
    argv += ["--cert", str(client_pem)] if client_pem else []
    return argv + (["--resume"] if resume else [])


def run_hs(b: Bench, inst: Instance, tls: int, resume: bool = False, dur: float = 0,
           conc: int = 0, pin_each: bool = False) -> dict:
    """New connections in a loop. tlsload is single-threaded: one copy per client CPU
    (one pinned, two unpinned), the conc slots (default --hs-conc) split between them."""
    dur = dur or b.args.duration
    copies = len(b.client_cpus) if b.tlsload else 1
    argv = hs_argv(b, inst.port, tls, dur, max(1, (conc or b.args.hs_conc) // copies), resume,
                   inst.mtls.client_pem if inst.mtls else None)
    outs = run_clients(b, argv, dur + 60, copies, pin_each)
    rs = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    r = rs[0]
    total = {
        k: sum(x.get(k, 0) for x in rs)
        for k in r
        if k in ("completed", "resumed", "cert_requested") or k.startswith("err")
    }
    duration = max(x["duration"] for x in rs)
    res = {
        "tool": f"tlsload x{copies}" if b.tlsload else "pyload",
        "events": total["completed"],
        "value": total["completed"] / duration,
        "duration": duration,
        "resumed": total["resumed"],
        "cert_requested": total.get("cert_requested"),  # None: pyload cannot tell
        "errors": total["errors"],
        "mean_ms": statistics.mean(x.get("mean_ms") or 0 for x in rs),
        "negotiated": {k: r.get(k) for k in ("proto", "cipher", "kex", "cert")},
    }
    if total["errors"]:
        res["error_detail"] = {k: v for k, v in total.items() if k.startswith("err_") and v}
    return res


def warm_up(b: Bench, inst: Instance, tls: int) -> None:
    """A second of handshakes, not measured (first-use caches, allocator pools)."""
    try:
        run_hs(b, inst, tls, dur=min(1.0, b.args.duration))
    except CLIENT_ERRORS:
        pass


def run_http(b: Bench, inst: Instance, path: str, conc: int, close: bool, latency: bool
             ) -> dict:
    dur = max(1, round(b.args.duration))
    if b.wrk:
        url = f"https://{HOST}:{inst.port}{path}"
        opts = f"-t1 -c{conc} -d{dur}s --timeout 30s"
        argv = [b.wrk, *opts.split(), "-s", str(b.work / "wrk.lua")]
        argv += (["--latency"] if latency else []) + (["-H", "Connection: close"] * close)
        out = run_clients(b, [*argv, url], dur + 60)[0]
        tool = "wrk"
    elif close:  # new connections, resumed: the handshake client with -r
        r = run_hs(b, inst, 13, resume=True, dur=dur)
        return {**r, "tool": r["tool"] + " -r"}
    else:
        opts = f"--conc {min(conc, 16)} --duration {dur} --path {path}"
        out = run_clients(b, pyload_argv("rps", inst.port, *opts.split()), dur + 60)[0]
        tool = "pyload"
    return http_result(out, tool)


def http_result(out: str, tool: str) -> dict:
    """The WRKJSON line (wrk.lua's, or pyload's alike) as a result."""
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


def run_keepalive(b: Bench, inst: Instance) -> dict:
    """rps_keepalive (with p99_ms): 64 keep-alive connections, tiny responses."""
    return run_http(b, inst, "/", 64, False, True)


def run_resumed(b: Bench, inst: Instance) -> dict:
    """conn_resumed: 32 slots of new, resumed connections, one request each."""
    return run_http(b, inst, "/", 32, True, False)
