"""Fixtures for black-box tests: real certificates, real backends, the real stud in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from stud.selfsigned import make_pem

HERE = Path(__file__).parent
STUD = [sys.executable, "-m", "stud"]


def wait_for(cond: Callable[[], object], timeout: float = 10.0, step: float = 0.05) -> object:
    """Poll cond until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {cond}")


def free_port(family: int = socket.AF_INET) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return s.getsockname()[1]


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


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def pem(pki: PKI) -> str:
    return pki.make(["localhost", "stud.test"], name="default")


class Proc:
    """A subprocess whose output goes to a file, stopped by PID at the end of the test."""

    def __init__(self, args: list[str], out: Path, **kw: object) -> None:
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


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop(signal.SIGKILL if p.proc.poll() is None and "backend" in p.out.name else
               signal.SIGTERM)
        for child in worker_pids(p.pid):  # in case the master died first
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass


def worker_pids(master: int) -> list[int]:
    try:
        text = Path(f"/proc/{master}/task/{master}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


@pytest.fixture
def backend(procs: list[Proc], tmp_path: Path) -> Callable[..., int]:
    """Start a backend from backend.py; returns its port. Records go to tmp_path/rec."""
    def start(mode: str = "echo", v6: bool = False) -> int:
        out = tmp_path / f"backend-{mode}-{len(procs)}.out"
        args = [sys.executable, str(HERE / "backend.py"), mode, "0", str(tmp_path / "rec")]
        p = Proc(args + (["6"] if v6 else []), out)
        procs.append(p)
        line = wait_for(lambda: p.output().strip(), 10)
        return int(str(line).split()[1])
    return start


class Stud(Proc):
    def __init__(self, args: list[str], out: Path, port: int, **kw: object) -> None:
        super().__init__(STUD + args, out, **kw)
        self.port = port

    def wait_ready(self, workers: int = 1) -> Stud:
        wait_for(lambda: self.output().count("online") >= workers or self.proc.poll() is not None)
        assert self.proc.poll() is None, self.output()
        return self

    def workers(self) -> list[int]:
        return worker_pids(self.pid)


@pytest.fixture
def stud(procs: list[Proc], tmp_path: Path) -> Callable[..., Stud]:
    """Start the real stud: stud(args..., backend_port=N) listening on a fresh port."""
    def start(*args: str, backend_port: int | None = None, workers: int = 1,
              frontend: str | None = None, wait: bool = True, **kw: object) -> Stud:
        port = free_port()
        pre = ["-f", frontend or f"127.0.0.1,{port}", "-n", str(workers)]
        # Tests read the connection lines: -L conn, unless the test sets the level itself.
        if not any(a in ("-q", "--quiet") or a.startswith(("-L", "--log-level")) for a in args):
            pre += ["-L", "conn"]
        if backend_port is not None:
            pre += ["-b", f"127.0.0.1,{backend_port}"]
        s = Stud(pre + list(args), tmp_path / f"stud-{len(procs)}.out", port, **kw)
        procs.append(s)
        return s.wait_ready(workers) if wait else s
    return start


def client_ctx(**kw: object) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def tls_connect(port: int, sni: str | None = None, ctx: ssl.SSLContext | None = None,
                host: str = "127.0.0.1", timeout: float = 10.0) -> ssl.SSLSocket:
    raw = socket.create_connection((host, port), timeout=timeout)
    return (ctx or client_ctx()).wrap_socket(raw, server_hostname=sni)


def read_all(sock: socket.socket, limit: int = 64 << 20) -> bytes:
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


def peer_cn(sock: ssl.SSLSocket) -> str:
    cert = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True))
    san = []
    try:
        san = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return ",".join(san) or (str(cns[0].value) if cns else "")
