"""stud._flow.Poller, on real sockets: the epoll set the worker's connections live in."""

from __future__ import annotations

import os
import select
import socket

import pytest

_flow = pytest.importorskip("stud._flow")


@pytest.fixture
def errors() -> list[BaseException]:
    return []


@pytest.fixture
def poller(errors):
    p = _flow.Poller(errors.append)
    yield p
    p.close()


def test_reader_writer_swap_and_removal(poller):
    a, b = socket.socketpair()
    calls = []
    poller.set_reader(a.fileno(), lambda: calls.append("r1"))
    poller.dispatch()
    assert calls == []  # nothing to read yet
    b.send(b"x")
    poller.dispatch()
    assert calls == ["r1"]
    poller.set_reader(a.fileno(), lambda: calls.append("r2"))  # same interest: swapped in place
    poller.set_writer(a.fileno(), lambda: calls.append("w"))
    poller.dispatch()
    assert calls == ["r1", "r2", "w"]
    poller.set_reader(a.fileno(), None)
    poller.set_writer(a.fileno(), None)
    poller.dispatch()
    assert calls == ["r1", "r2", "w"]
    a.close()
    b.close()


def test_an_event_for_a_closed_fd_never_reaches_the_socket_that_reuses_its_number(poller):
    """Both fds are ready in one batch; the first callback closes the second fd and opens a
    socket that gets the same number. The stale event must not be delivered to it."""
    a, a_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    a_peer.send(b"x")
    b_peer.send(b"x")
    calls, made = [], []
    first, second = sorted((a, b), key=socket.socket.fileno)

    def close_second_and_reuse() -> None:
        calls.append("first")
        poller.forget(second.fileno())
        number = second.fileno()
        second.close()
        new = socket.socket()  # takes the lowest free number: the one just closed
        assert new.fileno() == number
        made.append(new)
        poller.set_reader(new.fileno(), lambda: calls.append("new socket"))

    poller.set_reader(first.fileno(), close_second_and_reuse)
    poller.set_reader(second.fileno(), lambda: calls.append("second"))
    poller.dispatch()
    assert calls == ["first"]
    for s in (first, a_peer, b_peer, *made):
        s.close()


def test_a_raising_callback_is_reported_and_the_batch_goes_on(poller, errors):
    a, a_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    a_peer.send(b"x")
    b_peer.send(b"x")
    calls = []

    def boom() -> None:
        raise ValueError("boom")

    poller.set_reader(a.fileno(), boom)
    poller.set_reader(b.fileno(), lambda: calls.append("b"))
    poller.dispatch()
    assert calls == ["b"]
    assert [str(e) for e in errors] == ["boom"]
    assert errors[0].__traceback__ is not None
    for s in (a, a_peer, b, b_peer):
        s.close()


def test_hangup_reaches_the_reader_and_epoll_fd_is_pollable(poller):
    a, b = socket.socketpair()
    seen = []
    poller.set_reader(a.fileno(), lambda: seen.append(a.recv(10)))
    b.close()
    r, _, _ = select.select([poller.fileno()], [], [], 5)
    assert r == [poller.fileno()]  # what the event loop watches
    poller.dispatch()
    assert seen == [b""]
    poller.forget(a.fileno())
    a.close()


def test_bad_fds_are_errors_not_crashes(poller):
    with pytest.raises(ValueError):
        poller.set_reader(-1, print)
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError):
        poller.set_reader(r, print)  # closed fd: EBADF from epoll_ctl
    poller.forget(10**6)  # never registered: nothing to do
