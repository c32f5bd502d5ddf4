"""Processes and signals: workers, respawn and its back-off, drain, privileges (root
warning, dropping them, keys only root can read), daemon mode."""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import (
    STUD,
    echo_once_plain,
    echo_works,
    free_port,
    read_all,
    root_only,
    tls_connect,
    uid_of,
    wait_for,
    worker_pids,
)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_workers_killed_are_replaced(stud, backend, pem):
    s = stud(pem, backend_port=backend("echo"), workers=2)
    first = wait_for(lambda: len(s.workers()) == 2 and s.workers())
    os.kill(first[0], signal.SIGKILL)
    replaced = wait_for(lambda: first[0] not in s.workers() and len(s.workers()) == 2
                        and s.workers())
    assert first[1] in replaced
    wait_for(lambda: s.output().count("online") >= 3)
    assert "was terminated by signal 9. Replacing" in s.output()
    for _ in range(4):
        assert echo_works(s.port)


def test_crash_looping_worker_backs_off_exponentially(stud, backend, pem):
    """A worker that keeps dying young is replaced ever later ("Replacing in X s", X
    growing) and each exit is logged with its status; one that lived 5 s starts over."""
    s = stud(pem, backend_port=backend("echo"))
    pid = wait_for(s.workers)[0]
    waits = []
    for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL, signal.SIGKILL):
        t0 = time.monotonic()
        os.kill(pid, sig)
        # (one read of the children: a dying worker may vanish between two)
        new = wait_for(lambda old=pid: [w for w in s.workers() if w != old], 10)[0]
        wait_for(lambda new=new: f"Process {new} online" in s.output())
        waits.append(time.monotonic() - t0)
        pid = new
    lines = [x.split("} ", 1)[1] for x in s.output().splitlines() if "Replacing" in x]
    print("\n".join(lines), f"\nreplaced after {', '.join(f'{w:.2f}' for w in waits)} s")
    assert "exited with status 0. Replacing..." in lines[0]
    assert all("was terminated by signal 9. Replacing in" in x for x in lines[1:])
    delays = [float(re.search(r"Replacing in ([\d.]+) s", x).group(1)) for x in lines[1:]]
    assert len(delays) == 3 and delays[0] < delays[1] < delays[2], delays
    assert all(w >= d * 0.9 for w, d in zip(waits[1:], delays, strict=True)), (waits, delays)
    time.sleep(5.2)  # a worker that lived STABLE_AFTER seconds is healthy again
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: s.output().count("Replacing") == 5)
    last = [x for x in s.output().splitlines() if "Replacing" in x][-1]
    assert last.endswith("Replacing..."), last
    wait_for(lambda: s.workers() and s.workers()[0] != pid)
    echo_once_plain(s.port)


def test_sigterm_idle_exits_at_once_and_frees_the_port(stud, backend, pem):
    s = stud(pem, backend_port=backend("echo"), workers=2)
    t0 = time.monotonic()
    assert s.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 3
    assert port_free(s.port)


def test_sigterm_drains_in_flight_requests(stud, backend, pem):
    s = stud(pem, backend_port=backend("slow"))
    with tls_connect(s.port) as c:
        c.sendall(b"GET\n")
        time.sleep(0.3)  # the request is at the backend, which answers after 1.5 s
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(OSError):  # no longer accepting
            tls_connect(s.port, timeout=2)
        assert read_all(c) == b"slow done\n"
    assert s.proc.wait(10) == 0
    assert port_free(s.port)


def test_sigterm_drain_timeout_bounds_the_wait(stud, backend, pem):
    s = stud(pem, "--drain-timeout=1", backend_port=backend("sink"))
    with tls_connect(s.port) as c:
        c.sendall(b"x")
        time.sleep(0.3)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(10) == 0
        assert 0.8 < time.monotonic() - t0 < 5
        assert read_all(c) == b""
    assert "drain timeout" in s.output()


def test_workers_exit_when_master_dies(stud, backend, pem):
    s = stud(pem, backend_port=backend("echo"))
    workers = wait_for(s.workers)
    os.kill(s.pid, signal.SIGKILL)
    s.proc.wait(5)
    wait_for(lambda: not any(Path(f"/proc/{w}").exists() and
                             "zombie" not in Path(f"/proc/{w}/status").read_text()
                             for w in workers), 10)


@root_only
def test_privilege_drop_with_root_only_key(stud, backend, pki, tmp_path):
    key = pki.make(["localhost"], name="rootonly")
    os.chmod(key, 0o600)
    os.chown(key, 0, 0)
    s = stud("--user=nobody", "-g", "nogroup", key, backend_port=backend("echo"), workers=2)
    nobody = pwd.getpwnam("nobody").pw_uid
    workers = wait_for(lambda: len(s.workers()) == 2 and s.workers())
    assert all(uid_of(w) == nobody for w in workers)
    status = Path(f"/proc/{workers[0]}/status").read_text()
    groups = [ln for ln in status.splitlines() if ln.startswith("Groups:")][0].split()[1:]
    assert groups == [str(grp.getgrnam("nogroup").gr_gid)]  # root's groups are gone
    assert f"\t{grp.getgrnam('nogroup').gr_gid}\t" in [ln for ln in status.splitlines()
                                                      if ln.startswith("Gid:")][0] + "\t"
    assert echo_works(s.port)


@root_only
def test_root_warning_only_without_user(stud, backend, pem):
    s = stud(pem, backend_port=backend("echo"))
    line = [x for x in s.output().splitlines() if "WARNING" in x]
    assert line and "workers will run as root; use --user to drop privileges." in line[0]
    assert all(uid_of(w) == 0 for w in s.workers())


@root_only
def test_root_only_key_is_read_before_dropping_privileges_and_on_reload(stud, backend, pki):
    """--user=nobody with a 0600 root key: the master reads it, workers run as nobody and
    cannot read it, and a reload (read again by the master) works too; no root warning."""
    key = pki.make(["localhost"], name="rootonly2")
    os.chmod(key, 0o600)
    os.chown(key, 0, 0)
    nobody = pwd.getpwnam("nobody").pw_uid
    s = stud("--user=nobody", key, backend_port=backend("echo"), workers=2)
    assert "WARNING" not in s.output()
    first = wait_for(lambda: len(s.workers()) == 2 and s.workers())
    assert all(uid_of(w) == nobody for w in first)
    echo_once_plain(s.port)
    os.kill(s.pid, signal.SIGHUP)
    wait_for(lambda: "serving; generation 1 draining" in s.output())
    second = wait_for(lambda: len(s.workers()) == 2 and not set(first) & set(s.workers())
                      and s.workers())
    assert all(uid_of(w) == nobody for w in second)
    echo_once_plain(s.port)
    assert "reload failed" not in s.output()


@root_only
def test_daemon_with_chroot_and_pidfile(backend, pem, tmp_path):
    jail = tmp_path / "jail"
    jail.mkdir()
    pidfile = tmp_path / "stud.pid"
    port = free_port()
    bport = backend("echo")
    out = subprocess.run(STUD + ["--daemon", f"--chroot={jail}", "--user=nobody",
                                 f"--pidfile={pidfile}", "-f", f"127.0.0.1,{port}",
                                 "-b", f"127.0.0.1,{bport}", pem],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert "Daemonized as pid" in out.stdout
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip()))
    try:
        worker = wait_for(lambda: worker_pids(pid), 10)[0]
        wait_for(lambda: os.readlink(f"/proc/{worker}/root") == str(jail))
        assert wait_for(lambda: echo_works(port))
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10)
    assert not pidfile.exists()


def test_stud_command_is_installed():
    exe = shutil.which("stud")
    if exe is None:
        pytest.skip("the stud entry point is not on PATH (not pip-installed)")
    out = subprocess.run([exe, "-V"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and out.stdout.startswith("stud ")
    out = subprocess.run([sys.executable, "-m", "stud", "--version"], capture_output=True,
                         text=True, timeout=20)
    assert out.stdout.startswith("stud ")


def test_repeated_frontends_and_wildcard(stud, backend, pem):
    """Two -f options listen on both; '*' takes IPv4 and IPv6 clients alike."""
    p4, p6, pw = free_port(), free_port(socket.AF_INET6), free_port()
    s = stud(pem, "-f", f"[::1]:{p6}", "-f", f"*,{pw}", "-B", "5",
             backend_port=backend("echo"), frontend=f"127.0.0.1,{p4}")
    for host, port in (("127.0.0.1", p4), ("::1", p6), ("127.0.0.1", pw), ("::1", pw)):
        with tls_connect(port, host=host) as c:
            c.sendall(host.encode())
            assert c.recv(20) == host.encode()
    assert s.output().count("Listening on") == 3


@root_only
def test_unix_socket_backend_inside_chroot(stud, pem, tmp_path):
    """-b /JAIL/run/echo.sock with --chroot=/JAIL: the workers, chrooted and unprivileged,
    connect to /run/echo.sock (hitch 1.8's rule); a socket outside the jail is an error."""
    jail = tmp_path / "jail"
    (jail / "run").mkdir(parents=True)
    path = jail / "run" / "echo.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o777)  # (the workers run as nobody)
    server.listen(8)

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    try:
        s = stud(f"--chroot={jail}", "--user=nobody", "-b", str(path), pem)
        worker = wait_for(s.workers)[0]
        assert os.readlink(f"/proc/{worker}/root") == str(jail)
        assert echo_works(s.port)
    finally:
        server.close()
    r = subprocess.run(STUD + [f"--chroot={jail}", "-t", "-b", "/run/elsewhere.sock", pem],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 1
    assert "backend: the UNIX socket '/run/elsewhere.sock' is outside chroot" in r.stderr
