"""A child process that makes the master's HTTP requests (OCSP responses, CRLs), one at a
time, so that the master's loop never waits on a server; it runs with --user's rights, and
sends each answer back in a memfd (a CRL can be megabytes).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
from collections.abc import Callable

from stud.config import Config
from stud.daemon import drop_privileges
from stud.log import log

MAX_MESSAGE = 1 << 16  # a request (an OCSP request, a URL) or an answer's key and error


class Fetcher:
    """fetch(url, request) runs in the child; errors: what it raises for a failed fetch."""

    def __init__(self, cfg: Config, what: str, fetch: Callable[[str, bytes | None], bytes],
                 errors: type[Exception] | tuple[type[Exception], ...]) -> None:
        self.cfg, self.what = cfg, what
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:  # (the arbiter's signal handling is not for this process)
            code = 1
            try:
                for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
                signal.set_wakeup_fd(-1)
                self.sock.close()
                drop_privileges(cfg, jail=False)  # (it only speaks HTTP: --user's rights do)
                code = _serve(theirs, fetch, errors)
            finally:
                os._exit(code)
        theirs.close()
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def ask(self, key: str, url: str, request: bytes | None = None) -> None:
        body = None if request is None else base64.b64encode(request).decode()
        try:
            self.sock.send(json.dumps([key, url, body]).encode())
        except OSError as e:
            log.error(f"{{core}} {self.what} fetcher: cannot ask for {key}: {e.strerror}")

    def answers(self) -> list[tuple[str, bytes | None, str]]:
        """(key, the answer or None, the error) for each answer in so far."""
        out = []
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 1)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:
                data, fds = b"", []
            if not data:
                return out
            key, error = json.loads(data)
            body = None
            for fd in fds:
                try:
                    body = os.pread(fd, os.fstat(fd).st_size, 0)
                finally:
                    os.close(fd)
            out.append((key, body, error))

    def alive(self) -> bool:
        try:
            return os.waitpid(self.pid, os.WNOHANG) == (0, 0)
        except ChildProcessError:
            return False

    def close(self) -> None:
        self.sock.close()  # (EOF: it exits)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _serve(sock: socket.socket, fetch: Callable[[str, bytes | None], bytes],
           errors: type[Exception] | tuple[type[Exception], ...]) -> int:
    while data := sock.recv(MAX_MESSAGE):
        key, url, request = json.loads(data)
        try:
            body = fetch(url, None if request is None else base64.b64decode(request))
        except errors as e:
            sock.send(json.dumps([key, str(e)]).encode())
            continue
        fd = os.memfd_create("stud-fetched", os.MFD_CLOEXEC)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view):]
            socket.send_fds(sock, [json.dumps([key, ""]).encode()], [fd])
        finally:
            os.close(fd)
    return 0
