"""What the tests share besides fixtures (those are in conftest.py): processes and ports,
certificates, TLS clients, reading and echoing, stud's logs and metrics, external tools."""

from __future__ import annotations

import os
import select
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from stud.selfsigned import make_pem

HERE = Path(__file__).parent
STUD = [sys.executable, "-m", "stud"]

root_only = pytest.mark.skipif(os.getuid() != 0, reason="needs root")


# -- waiting, ports, processes -------------------------------------------------------------
def wait_for(cond: Callable[[], object], timeout: float = 10.0, step: float = 0.05) -> object:
    """Poll cond until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {cond}")


def free_port(family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(family, kind) as s:
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A subprocess whose output goes to a file, stopped by PID at the end of the test."""

    def __init__(self, args: list[str], out: Path, **kw: Any) -> None:
        self.out = out
        self.fh = open(out, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=self.fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, **kw)
        self.pid = self.proc.pid

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.fh.close()
        return self.proc.returncode


def ready_port(backend: Proc, timeout: float = 10.0) -> int:
    """The port a backend.py process listens on, once it has printed "ready PORT"."""
    line = wait_for(lambda: backend.output().strip(), timeout)
    return int(str(line).split()[1])


def worker_pids(master: int) -> list[int]:
    try:
        text = Path(f"/proc/{master}/task/{master}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


class Stud(Proc):
    """The real stud (python -m stud), listening on port."""

    def __init__(self, args: list[str], out: Path, port: int, **kw: Any) -> None:
        super().__init__(STUD + args, out, **kw)
        self.port = port

    def wait_ready(self, workers: int = 1) -> Stud:
        wait_for(lambda: self.output().count("online") >= workers or self.proc.poll() is not None)
        assert self.proc.poll() is None, self.output()
        return self

    def workers(self) -> list[int]:
        return worker_pids(self.pid)


def proc_status(pid: int, key: str) -> list[str]:
    """The values on the `key:` line of /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return line.split()[1:]
    raise AssertionError(f"no {key} line for {pid}")


def uid_of(pid: int) -> int:
    return int(proc_status(pid, "Uid")[0])


# -- sanitizer runs -----------------------------------------------------------------------
SANITIZER = os.environ.get("STUD_SANITIZER", "")  # tests/sanitize.sh: "asan" or "ubsan"


def memory_bound(kib: float) -> float:
    """A test's bound on memory (KiB: a worker's RSS growth, or per connection), 10 times
    as much under AddressSanitizer: freed blocks wait in its quarantine (up to 256 MiB) and
    every block has redzones and shadow. There 50 refused handshakes grew a worker by 20 MiB
    and an idle connection cost 340 KiB: 5 and 3.4 times these tests' bounds. Normal and
    UBSan runs keep the bound as written."""
    return kib * 10 if SANITIZER == "asan" else kib


# -- external tools ------------------------------------------------------------------------
def tool_env() -> dict[str, str]:
    """The environment for external tools (curl, openssl, ss, ip...): the tests' own, but
    without LD_PRELOAD. A sanitizer run preloads its runtime for stud's C extensions; curl,
    ps and pgrep hang with it. stud and Python keep the environment they inherit."""
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


class ToolRun(subprocess.CompletedProcess[Any]):
    @property
    def output(self) -> str:
        """stdout, then stderr: openssl s_client splits its report between the two."""
        return self.stdout + self.stderr


def run_tool(args: list[str], *, timeout: float, **kw: Any) -> ToolRun:
    """subprocess.run for an external tool: tool_env(), and a bound on the wait."""
    r = subprocess.run(args, env=tool_env(), timeout=timeout, **kw)
    return ToolRun(r.args, r.returncode, r.stdout, r.stderr)


def popen_tool(args: list[str], **kw: Any) -> subprocess.Popen:
    """subprocess.Popen for an external tool that the test talks to while it runs."""
    return subprocess.Popen(args, env=tool_env(), **kw)


def in_netns(ns: str, args: list[str], keep_preload: bool = False) -> list[str]:
    """args run by `ip netns exec ns`. ip is an external tool (run it with tool_env()); with
    keep_preload the program it starts (stud, Python) gets LD_PRELOAD back, as if started
    directly."""
    preload = os.environ.get("LD_PRELOAD")
    env = ["env", f"LD_PRELOAD={preload}"] if keep_preload and preload else []
    return ["ip", "netns", "exec", ns, *env, *args]


def s_client_args(port: int, *args: str, host: str = "127.0.0.1") -> list[str]:
    return ["openssl", "s_client", "-connect", f"{host}:{port}", *args]


def s_client(port: int, *args: str, host: str = "127.0.0.1", netns: str | None = None,
             timeout: float = 15.0) -> ToolRun:
    """One `openssl s_client` run to host:port (in network namespace netns if given). Its
    stdin is at EOF: it handshakes, reports and quits."""
    cmd = s_client_args(port, *args, host=host)
    return run_tool(in_netns(netns, cmd) if netns else cmd, stdin=subprocess.DEVNULL,
                    capture_output=True, text=True, errors="replace", timeout=timeout)


# -- certificates --------------------------------------------------------------------------
class PKI:
    """Makes PEM files (certificate + key in one file, as stud wants them)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0

    def make(self, names: list[str] | None = None, cn: str | None = "localhost",
             key: str = "ec", dh: bool = False, name: str | None = None) -> str:
        self.n += 1
        path = self.root / f"{name or f'cert{self.n}'}.pem"
        make_pem(path, names, cn, key, extra=DH_PARAMS if dh else b"")
        return str(path)


# 2048-bit RFC 7919 ffdhe2048 group: generating DH parameters takes too long for a test.
DH_PARAMS = b"""-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


def peer_cn(sock: ssl.SSLSocket) -> str:
    """The names the peer's certificate is for: its DNS SANs, else its CN."""
    cert = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True))
    san = []
    try:
        san = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return ",".join(san) or (str(cns[0].value) if cns else "")


# -- TLS clients and servers ---------------------------------------------------------------
def client_ctx(**kw: Any) -> ssl.SSLContext:
    """A client context that verifies nothing (stud's certificates are self-signed), with
    the given attributes set."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def server_ctx(certfile: str | Path, keyfile: str | Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


def tls_connect(port: int, sni: str | None = None, ctx: ssl.SSLContext | None = None,
                host: str = "127.0.0.1", timeout: float = 10.0) -> ssl.SSLSocket:
    raw = socket.create_connection((host, port), timeout=timeout)
    return (ctx or client_ctx()).wrap_socket(raw, server_hostname=sni)


def tls_pair(sctx: ssl.SSLContext, cctx: ssl.SSLContext, *, timeout: float = 10.0,
             **client_kw: Any) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    """Connected (server, client) SSLSockets over TCP 127.0.0.1; server handshakes in a thread."""
    with socket.create_server(("127.0.0.1", 0)) as ls:
        ls.settimeout(timeout)
        raw_c = socket.create_connection(ls.getsockname(), timeout=timeout)
        raw_s, _ = ls.accept()
    raw_s.settimeout(timeout)
    box: dict[str, object] = {}

    def handshake() -> None:
        try:
            box["s"] = sctx.wrap_socket(raw_s, server_side=True)
        except Exception as e:  # reported by the main thread
            box["e"] = e
            raw_s.close()

    t = threading.Thread(target=handshake, daemon=True)
    t.start()
    try:
        c = cctx.wrap_socket(raw_c, server_hostname="localhost", **client_kw)
    except BaseException:
        raw_c.close()
        raise
    finally:
        t.join(timeout)
    assert not t.is_alive()
    if "e" in box:
        c.close()
        raise box["e"]  # type: ignore[misc]
    return box["s"], c  # type: ignore[return-value]


def client_hello(sni: str | None = "localhost", ctx: ssl.SSLContext | None = None) -> bytes:
    """The bytes of a real ClientHello (one TLS record or more), from a memory BIO."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = (ctx or client_ctx()).wrap_bio(inc, out, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def handshake_in_pieces(c: socket.socket, cuts: tuple[int, ...] = (3, 40)
                        ) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """A TLS handshake over c whose ClientHello goes out in pieces (cut at `cuts`, 0.2 s
    apart); the TLS object and its incoming and outgoing BIOs, for what follows. Fails the
    test if the peer closes before the handshake ends."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_ctx().wrap_bio(inc, out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = out.read()
    for start, end in zip((0, *cuts), (*cuts, len(hello)), strict=True):
        c.sendall(hello[start:end])
        time.sleep(0.2)
    while True:  # the rest of the handshake, through the memory BIOs
        try:
            tls.do_handshake()
            return tls, inc, out
        except ssl.SSLWantReadError:
            if data := out.read():
                c.sendall(data)
            got = c.recv(65536)
            assert got, "the peer closed a ClientHello sent in pieces"
            inc.write(got)


# -- reading, echoing ----------------------------------------------------------------------
def recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        data = sock.recv(min(65536, n - got))
        if not data:
            raise ConnectionError(f"EOF after {got} of {n} bytes")
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def read_all(sock: socket.socket, limit: int = 64 << 20) -> bytes:
    """What arrives until EOF or close_notify (at most about limit bytes); a reset raises."""
    chunks, n = [], 0
    while n < limit:
        try:
            data = sock.recv(65536)
        except ssl.SSLZeroReturnError:
            break
        if not data:
            break
        chunks.append(data)
        n += len(data)
    return b"".join(chunks)


def read_to_end(sock: socket.socket, limit: int = 256 << 20) -> tuple[bytes, str]:
    """Everything until the peer closes, and how it closed: eof, close_notify or reset."""
    chunks, n = [], 0
    while n < limit:
        try:
            data = sock.recv(65536)
        except ssl.SSLZeroReturnError:
            return b"".join(chunks), "close_notify"
        except (ConnectionResetError, ssl.SSLEOFError):
            return b"".join(chunks), "reset"
        if not data:
            return b"".join(chunks), "eof"
        chunks.append(data)
        n += len(data)
    raise AssertionError("no end")


def close_notify(sock: ssl.SSLSocket) -> None:
    """A TLS half-close from a test client: its close_notify without waiting for the peer's,
    as stud sends one (stud.sslext.shutdown_once). The reply can still be read, up to the
    peer's close_notify (SSLZeroReturnError, which read_all() takes as the end)."""
    from stud import sslext

    sslext.shutdown_once(sslext.ssl_pointer(sock._sslobj))


def peer_closes_within(sock: socket.socket, timeout: float) -> bool:
    """Wait up to timeout for the peer to close (EOF or RST); discard what it sends."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        r, _, _ = select.select([sock], [], [], left)
        if r:
            try:
                if sock.recv(65536) == b"":
                    return True
            except OSError:
                return True


def echo(c: socket.socket, payload: bytes) -> None:
    c.sendall(payload)
    assert recv_exact(c, len(payload)) == payload


def echo_once_plain(port: int) -> None:
    """One round trip on a new connection to stud in front of an "echo" backend."""
    with tls_connect(port) as c:
        echo(c, b"plain echo")


def echo_works(port: int, data: bytes = b"ping", timeout: float = 10.0, **ctx: Any) -> bool:
    """One round trip on a new connection (client_ctx(**ctx)) to stud in front of an "echo"
    backend; False when it fails in any way, as while nothing listens yet."""
    try:
        with tls_connect(port, ctx=client_ctx(**ctx), timeout=timeout) as c:
            c.sendall(data)
            return recv_exact(c, len(data)) == data
    except OSError:
        return False


def command(port: int, cmd: str, timeout: float = 10.0) -> ssl.SSLSocket:
    """A TLS connection whose backend (mode multi) was told what to do."""
    c = tls_connect(port, timeout=timeout)
    c.sendall(cmd.encode() + b"\n")
    return c


class Load:
    """Threads doing connect, TLS handshake, echo round trip, close; counting failures."""

    def __init__(self, port: int, threads: int = 8) -> None:
        self.port = port
        self.ok = 0
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)

    def _run(self) -> None:
        msg = b"x" * 100
        while not self.stop.is_set():
            try:
                with tls_connect(self.port, timeout=10) as c:
                    echo(c, msg)
                with self.lock:
                    self.ok += 1
            except (OSError, AssertionError) as e:
                with self.lock:
                    self.errors.append(repr(e))


# -- stud's log and metrics ----------------------------------------------------------------
def kv(line: str) -> dict[str, str]:
    """A key=value connection log line (after the timestamp and PID) as a dict."""
    return dict(p.split("=", 1) for p in shlex.split(line.split("] ", 1)[1]))


def conn_lines(text: str) -> list[dict[str, str]]:
    return [kv(x) for x in text.splitlines() if 'op="connection closed"' in x]


def scrape(port: int) -> dict[str, float]:
    """One scrape, parsed by prometheus_client: 'name{k=v,...}' -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out
