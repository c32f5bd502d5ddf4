"""Fixtures for black-box tests: real certificates, real backends, the real stud in a subprocess.
What tests share besides fixtures is in helpers.py."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import HERE, PKI, Proc, Stud, free_port, ready_port, worker_pids


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def pem(pki: PKI) -> str:
    return pki.make(["localhost", "stud.test"], name="default")


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


@pytest.fixture
def backend(procs: list[Proc], tmp_path: Path) -> Callable[..., int]:
    """Start a backend from backend.py; returns its port. Records go to tmp_path/rec."""
    def start(mode: str = "echo", v6: bool = False) -> int:
        out = tmp_path / f"backend-{mode}-{len(procs)}.out"
        args = [sys.executable, str(HERE / "backend.py"), mode, "0", str(tmp_path / "rec")]
        p = Proc(args + (["6"] if v6 else []), out)
        procs.append(p)
        return ready_port(p, 10)
    return start


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
