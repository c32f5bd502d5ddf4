"""stud under systemd, without systemd as PID 1: the notifications a NOTIFY_SOCKET receives
across start, reload, failed reload and stop, and the watchdog; socket activation under
Debian's systemd-socket-activate; the unit files checked by systemd-analyze."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers import STUD, Proc, Stud, free_port, s_client, tool_env, wait_for, worker_pids

T = 10.0
HERE = Path(__file__).parent
UNITS = HERE.parent / "contrib" / "systemd"


class NotifySocket:
    """What systemd listens on: a datagram socket; each datagram one notification."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.got: list[dict[str, str]] = []

    def env(self, **extra: str) -> dict[str, str]:
        return dict(os.environ, NOTIFY_SOCKET=str(self.path), **extra)

    def next(self, key: str, timeout: float = T) -> dict[str, str]:
        """The next notification that has ``key`` (STATUS-only updates are kept, skipped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            fields = dict(line.split("=", 1) for line in data.split("\n"))
            self.got.append(fields)
            if key in fields:
                return fields
        raise AssertionError(f"no {key} within {timeout} s; got {self.got}")


@pytest.fixture
def notify(tmp_path):
    n = NotifySocket(tmp_path / "notify")
    yield n
    n.sock.close()


def conf(path: Path, port: int, backend: int, pem: str, workers: int = 2) -> Path:
    path.write_text(f'frontend = "[127.0.0.1]:{port}"\nbackend = "[127.0.0.1]:{backend}"\n'
                    f'workers = {workers}\npem-file = "{pem}"\n')
    return path


def test_notifications_across_start_reload_failed_reload_and_stop(procs, backend, pem,
                                                                   tmp_path, notify):
    port = free_port()
    cfg = conf(tmp_path / "stud.conf", port, backend("echo"), pem)
    s = Stud(["--config", str(cfg)], tmp_path / "stud.out", port, env=notify.env())
    procs.append(s)
    ready = notify.next("READY")
    assert ready["MAINPID"] == str(s.pid)
    assert ready["STATUS"].startswith("started: generation 1, 2 workers")
    assert len(s.workers()) == 2 and s_client(port).returncode == 0  # READY means serving

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    os.kill(s.pid, signal.SIGHUP)
    reloading = notify.next("RELOADING")
    assert before <= int(reloading["MONOTONIC_USEC"]) <= before + 5_000_000
    ready = notify.next("READY")
    assert ready["STATUS"].startswith("reloaded: generation 2")
    assert "RELOADING" not in ready

    cfg.write_text("frontend = \n")  # a reload that fails: the old generation serves on
    os.kill(s.pid, signal.SIGHUP)
    notify.next("RELOADING")
    failed = notify.next("READY")
    assert failed["STATUS"].startswith("reload failed, previous configuration serving:")
    assert s_client(port).returncode == 0

    os.kill(s.pid, signal.SIGTERM)
    stopping = notify.next("STOPPING")
    assert stopping["STATUS"].startswith("draining: generation 2")
    assert s.proc.wait(T) == 0
    statuses = [m["STATUS"] for m in notify.got if set(m) == {"STATUS"}]
    assert all(re.fullmatch(r"generation \d, \d workers, \d+ connections open(; last reload "
                            r"(ok|failed: .*))?", st) for st in statuses), statuses


def test_watchdog_pings_while_the_master_loop_turns(procs, backend, pem, tmp_path, notify):
    port = free_port()
    s = Stud(["-f", f"127.0.0.1,{port}", "-b", f"127.0.0.1,{backend('echo')}", pem],
             tmp_path / "stud.out", port, env=notify.env(WATCHDOG_USEC="400000"))
    procs.append(s)
    notify.next("READY")
    pings = [notify.next("WATCHDOG", 1.0) for _ in range(3)]  # every 0.2 s
    assert all(p == {"WATCHDOG": "1"} for p in pings)
    os.kill(s.pid, signal.SIGSTOP)  # a stalled master: no more pings
    try:
        with pytest.raises(AssertionError, match="no WATCHDOG"):
            notify.next("WATCHDOG", 1.0)
    finally:
        os.kill(s.pid, signal.SIGCONT)
    notify.next("WATCHDOG", 2.0)


def test_the_variables_are_taken_out_of_the_environment(monkeypatch, tmp_path):
    """The notifier and the sockets are the master's: nothing it starts later inherits the
    variables (and a WATCHDOG_PID that is not ours means no watchdog)."""
    from stud import systemd

    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "n"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", "1")
    n = systemd.Notifier.from_environ()
    assert n.address == str(tmp_path / "n") and n.watchdog_every == 0
    assert systemd.listen_sockets() is None  # (LISTEN_PID is not ours)
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                "LISTEN_PID"} & set(os.environ)
    monkeypatch.setenv("NOTIFY_SOCKET", "@abstract")
    assert systemd.Notifier.from_environ().address == "\0abstract"
    assert systemd.Notifier.from_environ() is None


# -- socket activation ---------------------------------------------------------------------
ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"


def activate_args(port: int, *more: str) -> list[str]:
    """systemd-socket-activate gives the program a clean environment: -E passes on what a
    sanitizer run needs (its runtime, preloaded, and its options)."""
    keep = [f"{k}={v}" for k, v in os.environ.items()
            if k == "LD_PRELOAD" or k.startswith(("ASAN_", "UBSAN_", "LSAN_"))]
    return [ACTIVATE, "-l", f"127.0.0.1:{port}", *more, *(a for kv in keep for a in ("-E", kv))]


# setpriv(1): no capability left, none to regain (root's uid is then no privilege)
UNPRIVILEGED = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs"]


def free_low_port() -> int:
    """A port below 1024 free on 127.0.0.1 (binding one takes CAP_NET_BIND_SERVICE)."""
    for port in range(1023, 600, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no port below 1024 free on 127.0.0.1")


def listening_sockets(pids: list[int]) -> set[str]:
    """The socket inodes of the listening TCP sockets the processes hold."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:] + \
            Path("/proc/net/tcp6").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A":  # LISTEN
            inodes.add(fields[9])
    held = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except FileNotFoundError:  # (a child that just exited)
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            m = re.fullmatch(r"socket:\[(\d+)\]", target)
            if m and m.group(1) in inodes:
                held.add(m.group(1))
    return held


@pytest.fixture
def activate():
    if not Path(ACTIVATE).exists():
        pytest.skip("systemd-socket-activate is not installed (Debian's systemd)")


def test_socket_activation_serves_systemds_socket_and_binds_nothing(activate, procs, backend,
                                                                    pem, tmp_path, notify):
    port = free_port()
    cfg = conf(tmp_path / "stud.conf", port, backend("echo"), pem)
    # systemd-socket-activate execs stud once a client connects, handing it the socket
    # (it gives the program a clean environment: -E passes the variable on)
    p = Proc([*activate_args(port, "--fdname=https", "-E", f"NOTIFY_SOCKET={notify.path}"),
              *STUD, "--config", str(cfg)], tmp_path / "activate.out")
    procs.append(p)
    wait_for(lambda: "Listening on" in p.output(), T)
    first = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=tool_env())
    assert "New, TLS" in first.communicate(timeout=T)[0]  # the connection that woke it
    notify.next("READY")
    assert f"Listening on [127.0.0.1]:{port} (systemd's https)" in p.output()
    master = p.pid  # (systemd-socket-activate execs stud in its place)
    held = listening_sockets([master, *worker_pids(master)])
    assert len(held) == 1  # systemd's, and none of stud's own
    os.kill(master, signal.SIGHUP)  # a reload keeps it
    notify.next("READY")
    wait_for(lambda: "generation 2 serving" in p.output(), T)
    assert listening_sockets([master, *worker_pids(master)]) == held
    assert s_client(port).returncode == 0


def test_frontends_take_systemds_sockets_by_name(activate, procs, backend, pem, tmp_path):
    """systemd:NAME takes every socket of that name (one .socket unit with two ListenStream=
    gives both its name), an address takes the socket on it; a reload keeps them all."""
    web, web2, alt = free_port(), free_port(), free_port()
    p = Proc([*activate_args(web, "-l", f"127.0.0.1:{web2}", "-l", f"127.0.0.1:{alt}",
                             "--fdname=web:web:alt"),
              *STUD, "-f", "systemd:web", "-f", f"127.0.0.1,{alt}", "-b",
              f"127.0.0.1,{backend('echo')}", pem], tmp_path / "activate.out")
    procs.append(p)
    wait_for(lambda: p.output().count("Listening on") == 3, T)
    assert s_client(alt).returncode == 0  # (wakes it)
    wait_for(lambda: "online" in p.output(), T)
    lines = p.output().splitlines()
    for port, name in ((web, "web"), (web2, "web"), (alt, "alt")):
        assert any(f"Listening on [127.0.0.1]:{port} (systemd's {name})" in ln for ln in lines)
        assert s_client(port).returncode == 0
    held = listening_sockets([p.pid, *worker_pids(p.pid)])
    assert len(held) == 3
    os.kill(p.pid, signal.SIGHUP)
    wait_for(lambda: "generation 2 serving" in p.output(), T)
    assert listening_sockets([p.pid, *worker_pids(p.pid)]) == held
    assert all(s_client(port).returncode == 0 for port in (web, web2, alt))


def test_socket_activated_stud_needs_no_privilege(activate, procs, backend, pem, tmp_path):
    """Handed a port below 1024, stud serves it with no capability at all; the same stud
    binding that port itself is refused, which shows the privilege is really gone."""
    port = free_low_port()
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is not installed")
    front = ["-b", f"127.0.0.1,{backend('echo')}", pem]
    alone = subprocess.run([*UNPRIVILEGED, *STUD, "-f", f"127.0.0.1,{port}", *front],
                           capture_output=True, text=True, timeout=30)
    assert alone.returncode == 1
    assert f"frontend [127.0.0.1]:{port}: cannot bind: Permission denied" in alone.stderr
    p = Proc([*activate_args(port, "--fdname=https"), *UNPRIVILEGED, *STUD, "-f",
              "systemd:https", *front], tmp_path / "activate.out")
    procs.append(p)
    wait_for(lambda: "Listening on" in p.output(), T)
    assert s_client(port).returncode == 0  # (wakes it)
    wait_for(lambda: "online" in p.output(), T)
    assert s_client(port).returncode == 0
    for pid in (p.pid, *worker_pids(p.pid)):
        caps = dict(line.split(":\t") for line in Path(f"/proc/{pid}/status").read_text()
                    .splitlines() if line.startswith("Cap"))
        assert int(caps["CapEff"], 16) == int(caps["CapBnd"], 16) == 0, (pid, caps)


def test_a_named_frontend_without_socket_activation_is_one_line(pem):
    r = subprocess.run([*STUD, "-f", "systemd:https", "-b", "127.0.0.1,1", pem],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert ("stud: frontend systemd:https: systemd passed no sockets (no LISTEN_FDS: start "
            "stud from a .socket unit)") in r.stderr.splitlines()


@pytest.mark.parametrize("frontend, error", [
    ("[127.0.0.1]:{other}", "frontend [127.0.0.1]:{other}: none of the sockets systemd passed "
                            "is for it (https [127.0.0.1]:{port}); socket-activated, stud "
                            "binds nothing itself"),
    ("systemd:http", "frontend systemd:http: systemd passed no socket of that name "
                     "(https [127.0.0.1]:{port})"),
    ("systemd:https -f [127.0.0.1]:{port}", "frontend [127.0.0.1]:{port}: the same socket as "
                                            "frontend systemd:https"),
])
def test_socket_activation_mismatch_is_one_line(activate, procs, backend, pem, tmp_path,
                                                frontend, error):
    port, other = free_port(), free_port()
    p = Proc([*activate_args(port, "--fdname=https"), *STUD, "-f",
              *frontend.format(other=other, port=port).split(), "-b", "127.0.0.1,1", pem],
             tmp_path / "activate.out")
    procs.append(p)
    wait_for(lambda: "Listening on" in p.output(), T)
    s_client(port)  # wakes it
    assert p.proc.wait(T) == 1
    assert f"stud: {error.format(other=other, port=port)}" in p.output().splitlines()


def test_a_socket_for_no_frontend_is_refused(activate, procs, pem, tmp_path):
    port, extra = free_port(), free_port()
    p = Proc([*activate_args(port, "-l", f"127.0.0.1:{extra}"), *STUD, "-f",
              f"127.0.0.1,{port}", "-b", "127.0.0.1,1", pem], tmp_path / "activate.out")
    procs.append(p)
    wait_for(lambda: p.output().count("Listening on") == 2, T)
    s_client(port)
    assert p.proc.wait(T) == 1
    assert (f"stud: LISTEN_FDS: systemd's socket fd 4 [127.0.0.1]:{extra} is for no frontend"
            in p.output().splitlines())


# -- the unit files ------------------------------------------------------------------------
def test_units_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed")
    stud = shutil.which("stud") or pytest.skip("no stud command installed")
    for unit in ("stud.service", "stud.socket", "stud@.service"):
        text = (UNITS / unit).read_text().replace("/usr/local/bin/stud", stud)
        (tmp_path / unit).write_text(text)
    shutil.copy(tmp_path / "stud@.service", tmp_path / "stud@site.service")
    for page, section in (("stud.8", "man8"), ("stud.conf.5", "man5")):  # (Documentation=)
        (tmp_path / "man" / section).mkdir(parents=True, exist_ok=True)
        shutil.copy(HERE.parent / "man" / page, tmp_path / "man" / section / page)
    env = dict(tool_env(), MANPATH=str(tmp_path / "man"), SYSTEMD_LOG_LEVEL="notice")
    r = subprocess.run([analyze, "verify", *(str(tmp_path / u) for u in
                                             ("stud.service", "stud.socket", "stud@site.service"))],
                       timeout=60, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "" and r.stdout == "", r.stderr
