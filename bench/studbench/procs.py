"""Process control: starting and stopping processes by PID, pinning them to CPUs, and what
/proc says about them (CPU time, RSS, children)."""

from __future__ import annotations

import os
import resource
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import log

CLK_TCK = os.sysconf("SC_CLK_TCK")
NOFILE = 1 << 20
# tests/sanitize.sh (which sets STUD_SANITIZER) preloads a sanitizer runtime for stud's C
# extensions. The tools started here (gcc, tlsload, wrk, nginx, hitch...) are not built for it
# and some hang with it: it leaves the environment they inherit, and stud alone gets it back.
# (The smoke test starts the bench itself without it, matplotlib's C++ aborts under ASan, and
# names it in STUD_SANITIZER_PRELOAD.)
STUD_PRELOAD = (os.environ.pop("LD_PRELOAD", "") or os.environ.get("STUD_SANITIZER_PRELOAD", "")
                if os.environ.get("STUD_SANITIZER") else "")


def proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, utime+stime ticks, starttime) of a process, or None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid=4, utime=14, stime=15, starttime=22
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19])


def process_tree(root: int) -> list[int]:
    """root and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st:
                children.setdefault(st[0], []).append(int(entry))
    if proc_stat(root) is None:
        return []
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def children_cpu() -> float:
    """CPU seconds of all waited-for children (the load generators run with subprocess.run)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        st = proc_stat(pid)
        if st:
            out[pid] = st[1]
    return out


def _status_field(pid: int, name: str) -> str | None:
    """A field of /proc/PID/status, or None if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def rss_kib(pids: list[int]) -> int:
    rss = (_status_field(pid, "VmRSS") for pid in pids)
    return sum(int(v.split()[0]) for v in rss if v)


def cpus_allowed(pid: int) -> str:
    return _status_field(pid, "Cpus_allowed_list") or "?"


def set_affinity(pids: list[int], cpus: set[int]) -> None:
    """Like `taskset -a -p -c CPUS PID` for every pid (all threads)."""
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass


def raise_nofile() -> int:
    """Raises the fd limit (inherited by every process started here); returns it.

    Raising the hard limit needs CAP_SYS_RESOURCE; without it the soft limit goes up to the
    hard one.
    """
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    except (ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def max_conns(nofile: int) -> int:
    """Proxied connections one process can hold: 2 fds each (client + backend), plus slack."""
    return (nofile - 300) // 2


def run_capture(argv: list[str], timeout: float = 30) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"? ({e})"


@dataclass
class Started:
    name: str
    popen: subprocess.Popen
    log: Path | None
    tree: dict[int, int] = field(default_factory=dict)  # pid -> starttime ever seen

    def pids(self) -> list[int]:
        pids = process_tree(self.popen.pid) if self.popen.poll() is None else []
        for pid in pids:
            st = proc_stat(pid)
            if st:
                self.tree.setdefault(pid, st[2])
        return pids

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 15) -> str:
        """Last lines of its stderr and stdout logs."""
        lines: list[str] = []
        for path in (self.log, self.log.with_suffix(".out")) if self.log else ():
            if path.exists():
                lines += path.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(lines)

    def read_line(self, timeout: float) -> str:
        """One line of its stdout, waiting at most `timeout` seconds."""
        assert self.popen.stdout
        fd = self.popen.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            wait = min(1.0, max(0.0, deadline - time.monotonic()))
            r, _, _ = select.select([fd], [], [], wait)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                buf += chunk
                if b"\n" in buf:
                    return buf.split(b"\n", 1)[0].decode()
        return buf.decode()


class Processes:
    """Every process this script starts; all are stopped by PID (see stop_all)."""

    def __init__(self) -> None:
        self.started: list[Started] = []

    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        cpus: set[int] | None = None,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        stdin: Any = subprocess.DEVNULL,
        stdout: Any = None,
    ) -> Started:
        """stderr goes to `log`, stdout (unless given) to the same name with .out."""
        err = log.open("ab") if log else subprocess.DEVNULL
        out = log.with_suffix(".out").open("ab") if log and stdout is None else subprocess.DEVNULL
        try:
            popen = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=stdout if stdout is not None else out,
                stderr=err,
                env=env,
                start_new_session=True,  # Ctrl-C goes to us; we stop them by PID
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )
        finally:
            for f in (err, out):
                if f != subprocess.DEVNULL:
                    f.close()
        s = Started(name, popen, log)
        self.started.append(s)
        return s

    def stop(self, s: Started, grace: float = 5.0) -> None:
        if s.alive():
            s.pids()  # remember the latest children
            try:
                os.kill(s.popen.pid, signal.SIGTERM)
                s.popen.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(s.popen.pid, signal.SIGKILL)
                s.popen.wait(grace)
            except ProcessLookupError:
                pass
        s.popen.poll()
        _stop_leftovers(s, grace)
        if s in self.started:
            self.started.remove(s)

    def stop_all(self) -> None:
        for s in reversed(list(self.started)):
            try:
                self.stop(s)
            except Exception as e:  # keep stopping the others
                log(f"stopping {s.name} (pid {s.popen.pid}): {e}")


def _stop_leftovers(s: Started, grace: float) -> None:
    """Children (workers) that outlived their parent: same pid *and* start time only, so
    that a recycled PID is never signalled."""
    deadline = time.monotonic() + grace
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = [p for p, t in s.tree.items() if p != s.popen.pid and _same(p, t)]
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [p for p in left if _same(p, s.tree[p])]
        if not left:
            break
        deadline = time.monotonic() + grace


def _same(pid: int, starttime: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[2] == starttime and not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
