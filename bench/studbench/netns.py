"""A network namespace of the bench's own for the scenarios that outgrow the host's loopback:
40,000 proxied connections need more ephemeral ports towards one backend than the host's
range holds (a proxy connects to the backend from one source address). The namespace gets
its own wide port range and queue sizes; the host's settings are never touched. Entering it
moves this process (and everything it starts from then on) until leave()."""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
SYSCTLS = {
    "net.ipv4.ip_local_port_range": "1024 65535",
    "net.core.somaxconn": "65535",
    "net.ipv4.tcp_max_syn_backlog": "65535",
}


class NetnsError(RuntimeError):
    """The namespace cannot be made here (no root, no `ip`)."""


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _run(*argv: str) -> None:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetnsError(f"{' '.join(argv)}: {e}") from None
    if r.returncode:
        raise NetnsError(f"{' '.join(argv)}: {r.stderr.strip() or r.returncode}")


@contextmanager
def inside(name: str) -> Iterator[None]:
    """Makes namespace `name` (lo up, SYSCTLS set), runs the body inside it, then leaves
    and deletes it; NetnsError when it cannot be made."""
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "-n", name, "link", "set", "lo", "up")
        _run("ip", "netns", "exec", name, "sysctl", "-q",
             *(f"{k}={v}" for k, v in SYSCTLS.items()))
        home = os.open("/proc/self/ns/net", os.O_RDONLY)
        try:
            there = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                _setns(there)
            finally:
                os.close(there)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
