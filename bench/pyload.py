#!/usr/bin/env python3
"""Pure-Python stand-ins for the benchmark's external tools.

The benchmark (bench/studbench) uses these only when the real tool is missing (smoke runs
on a bare machine):

* ``backend``: an HTTP/1.1 keep-alive server (instead of nginx): ``/`` answers a tiny
  body, ``/big`` a file.
* ``hs``: new TLS connections in a loop (instead of tlsload; ``--resume`` offers the last
  session).
* ``rps``: keep-alive requests with latency percentiles (instead of wrk).
* ``bulk``: repeated downloads of a large file over one keep-alive connection.
* ``idle``: opens N connections, one request each, then holds them until stdin closes.

Every client mode prints one JSON object per line, with the same keys as tlsload/wrk
results in studbench/clients.py.  Slow (threads + the GIL), but dependency-free.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

TINY = b"hello world\n"
REQ = "GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n"


# --------------------------------------------------------------------------- backend


async def _serve_conn(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, big: Path
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1] if " " in lines[0] else "/"
            close = any(h.lower().startswith("connection:") and "close" in h.lower() for h in lines)
            conn_hdr = b"Connection: close\r\n" if close else b""
            if path == "/big":
                size = big.stat().st_size
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    + conn_hdr
                    + f"Content-Length: {size}\r\n\r\n".encode()
                )
                with big.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        writer.write(chunk)
                        await writer.drain()
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    + conn_hdr
                    + f"Content-Length: {len(TINY)}\r\n\r\n".encode()
                    + TINY
                )
                await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def _backend(port: int, big: Path) -> None:
    server = await asyncio.start_server(
        lambda r, w: _serve_conn(r, w, big), "127.0.0.1", port, backlog=4096
    )
    async with server:
        await server.serve_forever()


# --------------------------------------------------------------------------- clients


def _ctx(tls: int, ciphers: str | None, resume: bool, no_ticket: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    version = ssl.TLSVersion.TLSv1_2 if tls == 12 else ssl.TLSVersion.TLSv1_3
    ctx.minimum_version = ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(ciphers)
    if not resume or no_ticket:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def read_response(sock: ssl.SSLSocket, until_eof: bool = False) -> tuple[bytes, int]:
    """Reads one HTTP/1.1 response; returns (head, total bytes)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("EOF in response head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    got = len(body)
    while got < length or until_eof:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    if got < length:
        raise ConnectionError("EOF in response body")
    return head, len(head) + 4 + got


def _connect(a: argparse.Namespace, ctx: ssl.SSLContext, session=None) -> ssl.SSLSocket:
    raw = socket.create_connection((a.addr, a.port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ctx.wrap_socket(raw, server_hostname="localhost", session=session)


def run_threads(target: Callable[[], None], n: int, limit: float) -> float:
    """Run target in n threads at once; wait at most limit seconds for each. Elapsed time."""
    t0 = time.monotonic()
    threads = [threading.Thread(target=target, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(limit)
    return time.monotonic() - t0


def run_hs(a: argparse.Namespace) -> dict:
    ctx = _ctx(a.tls, a.ciphers, a.resume)
    if a.cert:
        ctx.load_cert_chain(a.cert)
    stats = {"completed": 0, "resumed": 0, "errors": 0, "lat": 0.0}
    lock = threading.Lock()
    deadline = time.monotonic() + a.duration
    req = REQ.format(path=a.path, extra="Connection: close\r\n").encode()
    params: dict = {}

    def worker() -> None:
        session = None
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                with _connect(a, ctx, session if a.resume else None) as s:
                    s.sendall(req)
                    head, _ = read_response(s, until_eof=True)
                    ok = head.startswith(b"HTTP/1.") and head[8:12] == b" 200"
                    reused = s.session_reused
                    if a.resume:
                        session = s.session
                    if not params:
                        params.update(proto=s.version(), cipher=(s.cipher() or ("",))[0])
            except (OSError, ValueError):
                ok, reused = False, False
            with lock:
                if ok and time.monotonic() < deadline:
                    stats["completed"] += 1
                    stats["resumed"] += int(reused)
                    stats["lat"] += time.monotonic() - t0
                elif not ok:
                    stats["errors"] += 1

    el = run_threads(worker, a.conc, a.duration + 15)
    n = stats["completed"]
    return {
        "mode": "hs",
        "completed": n,
        "resumed": stats["resumed"],
        "duration": el,
        "rate": n / el,
        "mean_ms": 1000 * stats["lat"] / n if n else 0.0,
        "errors": stats["errors"],
        **params,
    }


def run_rps(a: argparse.Namespace) -> dict:
    """Keep-alive requests on a.conc connections; also serves bulk (path=/big, conc=1)."""
    ctx = _ctx(a.tls, None, True)
    lats: list[float] = []
    stats = {"requests": 0, "bytes": 0, "errors": 0}
    lock = threading.Lock()
    req = REQ.format(path=a.path, extra="").encode()
    deadline = time.monotonic() + a.duration

    def worker() -> None:
        mine: list[float] = []
        nreq = nbytes = 0
        while time.monotonic() < deadline:
            try:
                with _connect(a, ctx) as s:
                    while time.monotonic() < deadline:
                        t0 = time.monotonic()
                        s.sendall(req)
                        _, got = read_response(s)
                        mine.append(time.monotonic() - t0)
                        nreq += 1
                        nbytes += got
            except (OSError, ValueError):
                with lock:
                    stats["errors"] += 1
        with lock:
            lats.extend(mine)
            stats["requests"] += nreq
            stats["bytes"] += nbytes

    el = run_threads(worker, a.conc, a.duration + 30)
    lats.sort()

    def pct(p: float) -> float:
        return 1e6 * lats[min(len(lats) - 1, int(p / 100 * len(lats)))] if lats else 0.0

    return {
        "duration_us": int(el * 1e6),
        "requests": stats["requests"],
        "bytes": stats["bytes"],
        "errors": stats["errors"],
        "p50_us": pct(50),
        "p99_us": pct(99),
        "mean_us": 1e6 * sum(lats) / len(lats) if lats else 0.0,
    }


def run_idle(a: argparse.Namespace) -> None:
    ctx = _ctx(a.tls, None, True)
    req = REQ.format(path=a.path, extra="").encode()
    socks: list[ssl.SSLSocket] = []
    errors = 0
    t0 = time.monotonic()
    for _ in range(a.count):
        if time.monotonic() - t0 > a.setup_timeout:
            break
        try:
            s = _connect(a, ctx)
            s.sendall(req)
            read_response(s)
            s.settimeout(None)
            socks.append(s)
        except (OSError, ValueError):
            errors += 1
    setup = time.monotonic() - t0
    ready = {"event": "ready", "requested": a.count, "established": len(socks)}
    ready.update(errors=errors, unfinished=a.count - len(socks) - errors, setup_s=setup)
    print(json.dumps(ready), flush=True)
    select.select([sys.stdin], [], [], a.hold)
    dropped = 0
    for s in socks:
        try:
            probe = socket.socket(fileno=os.dup(s.fileno()))
            try:
                if probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                    dropped += 1
            except BlockingIOError:
                pass
            finally:
                probe.close()
        except OSError:
            dropped += 1
    done = {"event": "done", "established": len(socks) - dropped, "dropped": dropped}
    print(json.dumps(done), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", choices=["backend", "hs", "rps", "idle"])
    p.add_argument("--addr", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--big", type=Path, help="backend: file served at /big")
    p.add_argument("--conc", type=int, default=8)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--tls", type=int, default=13, choices=[12, 13])
    p.add_argument("--ciphers")
    p.add_argument("--path", default="/")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--cert", help="hs: client certificate, its chain and key (one PEM)")
    p.add_argument("--hold", type=float, default=600.0)
    p.add_argument("--setup-timeout", type=float, default=300.0)
    a = p.parse_args()
    if a.mode == "backend":
        if a.big is None:
            p.error("backend needs --big")
        asyncio.run(_backend(a.port, a.big))
    elif a.mode == "hs":
        print(json.dumps(run_hs(a)), flush=True)
    elif a.mode == "rps":
        print("WRKJSON " + json.dumps(run_rps(a)), flush=True)
    else:
        run_idle(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
