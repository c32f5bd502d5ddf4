"""README's first command: stud-demo serves TLS in front of a backend, `curl -k` works."""

from __future__ import annotations

import signal
import socket
import sys

import pytest
from helpers import Proc, free_port, run_tool, wait_for


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_demo_serves_curl(procs, tmp_path, sig):
    port, backend_port = free_port(), free_port()
    # SIGINT as at a terminal: a shell without job control starts background commands with
    # it ignored (and a program keeps that), which would leave Ctrl-C's case untested.
    demo = Proc([sys.executable, "-m", "stud.demo", "--port", str(port),
                 "--backend-port", str(backend_port)], tmp_path / "demo.out",
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    procs.append(demo)
    wait_for(lambda: "online" in demo.output(), 20)
    out = run_tool(["curl", "-sk", "--max-time", "10", f"https://127.0.0.1:{port}/"],
                   capture_output=True, text=True, timeout=20)
    assert out.stdout == "Hello from the backend, through stud.\n", demo.output()
    assert f"curl -k https://127.0.0.1:{port}/" in demo.output()
    assert demo.stop(sig) == 0
    with socket.socket() as probe:  # stud went with it: its port is free again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
