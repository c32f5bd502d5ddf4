"""Each worker's share of the connections (stud/balance.py): the rule, the counts shared
across fork, and the real stud, where a worker over its share leaves new connections to the
others and still serves them when no other can."""

from __future__ import annotations

import os
import signal
import socket

import pytest
from helpers import client_ctx, wait_for, worker_pids

from stud.balance import AHEAD, SLACK, Shares, is_ahead

T = 15.0


@pytest.mark.parametrize("mine, total, workers, ahead", [
    (0, 0, 4, False),                      # nothing anywhere
    (SLACK, SLACK, 4, False),              # a handful over a mean of a handful: not yet
    (22, 22, 4, False),                    # all of them, within the slack of the share
    (23, 23, 4, True),                     # ... past it
    (500, 2000, 4, False),                 # exactly its share
    (int(500 * AHEAD) + SLACK, 2000, 4, False),
    (int(500 * AHEAD) + SLACK + 1, 2000, 4, True),
    (5000, 10_000, 2, False),
    (6000, 10_000, 2, True),
])
def test_is_ahead(mine, total, workers, ahead):
    assert is_ahead(mine, total, workers) is ahead


def test_counts_are_shared_with_forked_workers():
    shares = Shares(3)
    pid = os.fork()
    if pid == 0:  # a worker: publishes its count
        shares.ahead(1, 40)
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert list(shares.counts) == [0, 40, 0]
    assert shares.ahead(0, 0) is False and shares.ahead(2, 80) is True
    shares.reset(1)
    assert list(shares.counts) == [0, 0, 80]


def held(port: int, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        c = client_ctx().wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=T))
        c.sendall(b"x")
        assert c.recv(1) == b"x"
        out.append(c)
    return out


def sockets_of(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except FileNotFoundError:  # (closed meanwhile)
            pass
    return n


def test_a_worker_over_its_share_leaves_new_connections_to_the_others(stud, backend, pem):
    s = stud(pem, backend_port=backend("echo"), workers=2)
    first, second = worker_pids(s.pid)
    os.kill(second, signal.SIGSTOP)
    try:
        # only the first can accept: far over its share, it still serves every connection
        alone = held(s.port, 60)
        before = {pid: sockets_of(pid) for pid in (first, second)}
    finally:
        os.kill(second, signal.SIGCONT)
    assert before[first] >= 2 * 60
    more = held(s.port, 60)  # the second, behind, takes the most of these
    got = {pid: (sockets_of(pid) - before[pid]) // 2 for pid in (first, second)}
    assert got[second] > got[first], got
    for c in alone + more:
        c.close()
    wait_for(lambda: sockets_of(first) < before[first], T)
