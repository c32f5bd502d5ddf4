"""systemd's two interfaces to a service: notifications (sd_notify(3): READY, RELOADING,
STOPPING, STATUS, MAINPID and the watchdog, datagrams to $NOTIFY_SOCKET) and socket activation
(sd_listen_fds(3): listening sockets passed from fd 3 on, $LISTEN_FDS of them). Without those
variables (not started by systemd) neither is used.
"""

from __future__ import annotations

import os
import socket
import time

from stud.config import ConfigError
from stud.log import log

LISTEN_FDS_START = 3


class Notifier:
    """The master's channel to systemd (the workers never write to it)."""

    def __init__(self, path: str, watchdog_usec: int) -> None:
        self.address = "\0" + path[1:] if path.startswith("@") else path  # abstract namespace
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.watchdog_every = watchdog_usec / 2e6 if watchdog_usec else 0.0
        self.watchdog_at = 0.0
        self.failed = False

    @classmethod
    def from_environ(cls) -> Notifier | None:
        """The notifier systemd asked for, taking its variables out of the environment (so
        that no child process writes to the socket, or pings the watchdog, in our name)."""
        path = os.environ.pop("NOTIFY_SOCKET", "")
        usec = os.environ.pop("WATCHDOG_USEC", "")
        pid = os.environ.pop("WATCHDOG_PID", "")
        if not path:
            return None
        watchdog = int(usec) if usec.isdigit() and (not pid or pid == str(os.getpid())) else 0
        return cls(path, watchdog)

    def send(self, *fields: str) -> None:
        """One notification: its fields ("READY=1", "STATUS=...") in one datagram."""
        try:
            self.sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as e:  # systemd gone or busy: stud serves on, said once
            if not self.failed:
                log.error(f"{{core}} NOTIFY_SOCKET: {e.strerror}; notifications to systemd "
                          "may be lost")
            self.failed = True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self, now: float) -> None:
        """Called from the master's loop: a ping every half period while the loop turns."""
        if self.watchdog_every and now >= self.watchdog_at:
            self.watchdog_at = now + self.watchdog_every
            self.send("WATCHDOG=1")


def listen_sockets() -> dict[tuple[int, tuple], tuple[str, socket.socket]] | None:
    """The listening sockets systemd passed to this process, by (family, address), each with
    its name (FileDescriptorName=); None when it passed none. The variables are taken out of
    the environment (children must not take the sockets for theirs)."""
    pid = os.environ.pop("LISTEN_PID", "")
    count = os.environ.pop("LISTEN_FDS", "")
    names = os.environ.pop("LISTEN_FDNAMES", "").split(":")
    if not count or pid != str(os.getpid()):
        return None
    if not count.isdigit():
        raise ConfigError(f"LISTEN_FDS: not a number: {count!r}")
    out = {}
    for i, fd in enumerate(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count))):
        name = names[i] if i < len(names) and names[i] else f"fd {fd}"
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            raise ConfigError(f"LISTEN_FDS: {name}: {e.strerror}") from None
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET,
                                                                  socket.AF_INET6):
            raise ConfigError(f"LISTEN_FDS: {name} is not a TCP socket (ListenStream=)")
        sock.set_inheritable(False)
        sock.setblocking(False)
        out[(int(sock.family), sock.getsockname())] = (name, sock)
    return out
