"""Logging as stud did it: LOG lines to stdout (silenced by -q), ERR lines to stderr, both to
syslog with -s. Each line is written with one os.write so forked workers never duplicate or
interleave buffered output (the original's fully-buffered stdout repeated master lines per child).
"""

from __future__ import annotations

import os
import syslog
import time

# info: what stud logged (start-up, reloads, workers); conn: also one line per connection;
# debug: also the failed handshakes. A connection line carries ERROR, INFO (a client refused
# on its certificate), CONN or DEBUG.
# silent (hitch's -L 0): nothing at all.
DEBUG, CONN, INFO, ERROR, SILENT = 3, 2, 1, 0, -1
LEVELS = {"silent": SILENT, "error": ERROR, "info": INFO, "conn": CONN, "debug": DEBUG}


class Log:
    def __init__(self) -> None:
        self.level = INFO
        self.use_syslog = False
        self.stdout, self.stderr = 1, 2
        self.path = ""
        self._sec, self._stamp = 0, ""
        self._pid = os.getpid()
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self._pid = os.getpid()

    def configure(self, *, level: str, use_syslog: bool, facility: str, path: str = "") -> None:
        self.level = LEVELS[level]
        if use_syslog and not self.use_syslog:
            fac = getattr(syslog, f"LOG_{'AUTHPRIV' if facility == 'auth' else facility.upper()}")
            syslog.openlog("stud", syslog.LOG_PID | syslog.LOG_NDELAY | syslog.LOG_CONS, fac)
        self.use_syslog = use_syslog
        if path != self.path:
            self.path = path
            if path:
                self.stdout = self.stderr = self.open_file()
            else:
                self.stdout, self.stderr = 1, 2

    def open_file(self) -> int:
        """Open the log file (append); raises OSError. The same fd number is kept on reopen."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        if self.stdout > 2:
            os.dup2(fd, self.stdout)
            os.close(fd)
            return self.stdout
        return fd

    def adopt(self, fd: int) -> None:
        """A worker takes over the log file its master reopened (SIGUSR1, for logrotate)."""
        if self.stdout > 2:
            os.dup2(fd, self.stdout)
        os.close(fd)

    def _emit(self, fd: int, prio: int, msg: str) -> None:
        if fd >= 0:
            t = time.time()
            sec = int(t)
            if sec != self._sec:  # one strftime per second, not per line
                self._sec = sec
                self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            line = f"{self._stamp}.{int(t * 1000) % 1000:03d}Z [{self._pid}] {msg}\n"
            try:
                os.write(fd, line.encode("utf-8", "replace"))
            except OSError:
                pass  # a closed terminal must not take the daemon down
        if self.use_syslog:
            syslog.syslog(prio, msg)

    def error(self, msg: str) -> None:
        if self.level >= ERROR:
            self._emit(self.stderr, syslog.LOG_ERR, msg)

    def info(self, msg: str) -> None:
        if self.level >= INFO:
            self._emit(self.stdout, syslog.LOG_INFO, msg)

    def debug(self, msg: str) -> None:
        if self.level >= DEBUG:
            self._emit(self.stdout, syslog.LOG_DEBUG, msg)

    def line(self, level: int, msg: str) -> None:
        """One key=value line (Voxer's Splunk-friendly format) at level (ERROR, CONN or DEBUG);
        values with spaces or from clients must be passed through quoted()."""
        if self.level >= level:
            self._emit(self.stdout, syslog.LOG_INFO if level <= CONN else syslog.LOG_DEBUG, msg)


log = Log()


def quoted(value: object) -> str:
    """Values come from clients too (the SNI name, PROXY errors): quote them, and escape
    quotes, backslashes and non-printable characters, so that no value can end its field,
    forge another field or start a new log line."""
    s = str(value)
    if s and s.isprintable() and " " not in s and '"' not in s and "\\" not in s:
        return s
    s = s.replace("\\", "\\\\").replace('"', '\\"')
    if not s.isprintable():
        s = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 0x100 else
                    f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}" for c in s)
    return f'"{s}"'
