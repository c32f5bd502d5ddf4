"""A fleet: several studs (and HAProxy) that resume each other's sessions because they share
ticket keys (a HAProxy file, nginx files or a seed); keys that rotate, files that change
under a running stud, and `stud ticket-keys` writing them. Real studs, real clients."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from helpers import (
    STUD,
    Proc,
    client_ctx,
    free_port,
    s_client,
    scrape,
    tool_env,
    wait_for,
)

from stud import ticketkeys, tickets

pytestmark = pytest.mark.skipif(not tickets.AVAILABLE, reason="stud._ticketkeys not built")

T = 10.0
V12, V13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


def run_stud(*args: str | Path) -> subprocess.CompletedProcess:
    """The stud command, in the tests' environment (a sanitizer run's runtime included)."""
    return subprocess.run([*STUD, *map(str, args)], timeout=30, capture_output=True, text=True)


def keytool(*args: str | Path) -> subprocess.CompletedProcess:
    return run_stud("ticket-keys", *args)


def resume(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None
           ) -> tuple[ssl.SSLSession, bool]:
    """One connection with an echo round trip (TLS 1.3 tickets come after the handshake):
    the session to use next, and whether this one resumed."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=T)
    with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as c:
        c.sendall(b"ping")
        assert c.recv(4) == b"ping"
        return c.session, c.session_reused


def round_robin(ports: list[int], version: ssl.TLSVersion, rounds: int = 3) -> tuple[int, int]:
    """A client that reconnects to each instance in turn with its last session: (resumed,
    reconnects)."""
    ctx = client_ctx(maximum_version=version, minimum_version=version)
    session, _ = resume(ports[0], ctx, None)
    resumed = tries = 0
    for i in range(rounds * len(ports)):
        session, reused = resume(ports[(i + 1) % len(ports)], ctx, session)
        resumed += reused
        tries += 1
    return resumed, tries


@pytest.fixture
def fleet(stud, backend, pem):
    """fleet(n, *args): n studs of 2 workers each, the same args, one echo backend."""
    port = backend("echo")

    def start(n: int, *args: str) -> list:
        return [stud(*args, pem, backend_port=port, workers=2) for _ in range(n)]
    return start


def haproxy_file(tmp_path: Path, n: int = 3) -> Path:
    path = tmp_path / "tls-ticket-keys"
    path.write_bytes(ticketkeys.format_haproxy([ticketkeys.new_key() for _ in range(n)]))
    return path


@pytest.mark.parametrize("source", ["tls-ticket-keys", "ssl-session-ticket-key",
                                    "ticket-key-seed"])
@pytest.mark.parametrize("version", [V12, V13], ids=["TLS1.2", "TLS1.3"])
def test_three_studs_resume_each_others_tickets(fleet, tmp_path, source, version):
    """The target: every reconnect to another instance resumes (100%)."""
    if source == "tls-ticket-keys":
        args = ["--tls-ticket-keys", str(haproxy_file(tmp_path))]
    elif source == "ssl-session-ticket-key":
        files = [tmp_path / "a.key", tmp_path / "b.key"]
        assert keytool("new", "--format=nginx", *files).returncode == 0
        args = [a for f in files for a in ("--ssl-session-ticket-key", str(f))]
    else:
        assert keytool("seed", tmp_path / "seed").returncode == 0
        args = ["--ticket-key-seed", str(tmp_path / "seed")]
    studs = fleet(3, *args)
    resumed, tries = round_robin([s.port for s in studs], version)
    assert (resumed, tries) == (9, 9)


def test_without_shared_keys_studs_do_not_resume_each_other(fleet):
    """The control: each stud makes its own keys (rotated, never on disk)."""
    studs = fleet(2)
    assert round_robin([s.port for s in studs], V12, rounds=1) == (0, 2)
    names = [re.findall(r"ticket keys \(made here, a new one every 3600 s\): \*([0-9a-f]{32})",
                        s.output()) for s in studs]
    assert all(len(n) == 1 for n in names) and names[0] != names[1]


def test_different_seeds_or_epochs_do_not_resume(fleet, tmp_path):
    for name in ("s1", "s2"):
        assert keytool("seed", tmp_path / name).returncode == 0
    a, b = fleet(1, "--ticket-key-seed", str(tmp_path / "s1"))[0], \
        fleet(1, "--ticket-key-seed", str(tmp_path / "s2"))[0]
    c = fleet(1, "--ticket-key-seed", str(tmp_path / "s1"), "--ticket-key-lifetime", "1800")[0]
    assert round_robin([a.port, b.port], V12, rounds=1) == (0, 2)
    assert round_robin([a.port, c.port], V12, rounds=1) == (0, 2)


def test_rotation_made_here_keeps_old_tickets_for_their_lifetime(stud, backend, pem):
    """A new key every 2 s; tickets live 4 s: a ticket issued before a rotation still
    resumes after it (counted as decrypted with an older key, and renewed)."""
    mport = free_port()
    s = stud("--ticket-key-lifetime", "2", "--session-timeout", "4", "--metrics",
             f"127.0.0.1,{mport}", pem, backend_port=backend("echo"), workers=2)
    ctx = client_ctx(maximum_version=V12)
    first = re.findall(r"made here, a new one every 2 s\): (.*)", s.output())[-1]
    session, _ = resume(s.port, ctx, None)
    wait_for(lambda: len(re.findall(r"a new one every 2 s\)", s.output())) >= 2, T)
    second = re.findall(r"made here, a new one every 2 s\): (.*)", s.output())[-1]
    assert second.split()[1:] == [first.lstrip("*")]  # the old key, now decrypting only
    _, reused = resume(s.port, ctx, session)
    assert reused
    m = scrape(mport)
    old = first.lstrip("*")
    assert m[f"stud_tickets_total{{event=decrypted_older,key={old}}}"] == 1
    assert m[f"stud_tickets_total{{event=renewed,key={old}}}"] == 1
    assert m[f"stud_ticket_key{{key={old},role=decrypt}}"] == 1


def test_a_changed_key_file_is_used_without_restart(fleet, tmp_path):
    """`stud ticket-keys rotate` on the shared file: both studs log the new names (never the
    bytes); the old encrypting key still decrypts, and the new ring resumes across them."""
    path = haproxy_file(tmp_path)
    a, b = fleet(2, "--tls-ticket-keys", str(path))
    ctx = client_ctx(maximum_version=V12)
    before, _ = resume(a.port, ctx, None)
    assert keytool("rotate", path).returncode == 0
    for s in (a, b):
        wait_for(lambda s=s: s.output().count("ticket keys (tls-ticket-keys") == 2, T)
    assert resume(b.port, ctx, before)[1]  # issued under the key now second: still good
    assert round_robin([a.port, b.port], V12, rounds=1) == (2, 2)
    text = a.output()
    for line in path.read_text().split():
        assert line not in text and ticketkeys.from_bytes(
            __import__("base64").b64decode(line), "haproxy").aes.hex() not in text


def test_a_ticket_resumes_within_the_window_and_not_after(stud, backend, pem, tmp_path):
    """HAProxy's rotation: each `rotate` appends a key and keeps 3. A ticket issued under
    the encrypting key still resumes after one rotation (its key is now the oldest) and not
    after the next (its key is gone: counted as an unknown key, a full handshake)."""
    path = haproxy_file(tmp_path)
    mport = free_port()
    s = stud("--tls-ticket-keys", str(path), "--metrics", f"127.0.0.1,{mport}", pem,
             backend_port=backend("echo"), workers=2)
    ctx = client_ctx(maximum_version=V12)
    session, _ = resume(s.port, ctx, None)
    for rotations, resumes in ((1, True), (2, False)):
        assert keytool("rotate", path).returncode == 0
        wait_for(lambda n=rotations: s.output().count("ticket keys (tls-ticket-keys") == n + 1, T)
        assert resume(s.port, ctx, session)[1] is resumes
    assert scrape(mport)["stud_tickets_unknown_key_total"] == 1


def test_a_broken_key_file_keeps_the_keys_in_use(fleet, tmp_path):
    path = haproxy_file(tmp_path)
    (a,) = fleet(1, "--tls-ticket-keys", str(path))
    ctx = client_ctx(maximum_version=V12)
    session, _ = resume(a.port, ctx, None)
    path.write_text("not base64!\n")
    wait_for(lambda: "ticket keys: " in a.output(), T)
    line = [ln for ln in a.output().splitlines() if "ticket keys: " in ln]
    assert line[0].endswith(f"ticket keys: {path}:1: not a base64 key; the keys in use stay")
    assert resume(a.port, ctx, session)[1]


@pytest.mark.parametrize("content, error", [
    ("not base64!\n", "{path}:1: not a base64 key"),
    ("", "{path}: no key"),
])
def test_a_bad_key_file_at_start_is_one_line_naming_it(tmp_path, pem, content, error):
    path = tmp_path / "keys"
    path.write_text(content)
    r = run_stud("-f", f"127.0.0.1,{free_port()}", "-b", "127.0.0.1,1", "--tls-ticket-keys",
                 path, pem)
    assert r.returncode == 1 and r.stderr == f"stud: {error.format(path=path)}\n"


def test_ticket_keys_tool_writes_0600_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "k"
    assert keytool("new", path).returncode == 0
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(ticketkeys.parse_haproxy(path.read_bytes(), "k").keys) == 3
    r = keytool("new", path)
    assert r.returncode == 1 and "exists" in r.stderr
    nginx = [tmp_path / "n0", tmp_path / "n1"]
    assert keytool("new", "--format=nginx", "--size=48", *nginx).returncode == 0
    old0 = nginx[0].read_bytes()
    assert keytool("rotate", "--format=nginx", *nginx).returncode == 0
    assert nginx[1].read_bytes() == old0 and len(nginx[0].read_bytes()) == 48
    assert keytool("seed", tmp_path / "s").returncode == 0
    assert re.fullmatch(r"[0-9a-f]{64}\n", (tmp_path / "s").read_text())


# -- HAProxy, the format's owner ---------------------------------------------------------------
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


@pytest.fixture
def haproxy(procs, tmp_path, pem, backend):
    """haproxy(keys file): HAProxy terminating TLS 1.2 with that tls-ticket-keys file."""
    if not Path(HAPROXY).exists():
        pytest.skip("haproxy is not installed")

    def start(keys: Path) -> int:
        port = free_port()
        cfg = tmp_path / f"haproxy-{port}.cfg"
        cfg.write_text(f"""global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend f
    bind 127.0.0.1:{port} ssl crt {pem} tls-ticket-keys {keys} ssl-max-ver TLSv1.2
    default_backend b
backend b
    server s 127.0.0.1:{backend("echo")}
""")
        procs.append(Proc([HAPROXY, "-db", "-f", str(cfg)], tmp_path / f"haproxy-{port}.out",
                          env=tool_env()))
        wait_for(lambda: s_client(port, "-tls1_2").returncode == 0, T)
        return port
    return start


def resumes(sess: Path, from_port: int, to_port: int) -> bool:
    """s_client: a session from one server, offered to the other (TLS 1.2 tickets)."""
    first = s_client(from_port, "-tls1_2", "-sess_out", str(sess))
    assert first.returncode == 0 and "New, TLSv1.2" in first.stdout, first.stdout
    again = s_client(to_port, "-tls1_2", "-sess_in", str(sess))
    return "Reused, TLSv1.2" in again.stdout


def test_haproxy_and_stud_resume_each_others_tickets_from_one_file(haproxy, stud, backend,
                                                                   pem, tmp_path):
    """One tls-ticket-keys file for both; OpenSSL resumes only within one session ID
    context, and HAProxy's is "haproxy": with --session-id-context haproxy each resumes the
    other's TLS 1.2 tickets, without it neither does."""
    keys = haproxy_file(tmp_path)
    hport = haproxy(keys)
    port = backend("echo")
    matched = stud("--tls-ticket-keys", str(keys), "--session-id-context", "haproxy", pem,
                   backend_port=port)
    other = stud("--tls-ticket-keys", str(keys), pem, backend_port=port)
    sess = tmp_path / "sess"
    assert resumes(sess, hport, matched.port) and resumes(sess, matched.port, hport)
    assert not resumes(sess, hport, other.port) and not resumes(sess, other.port, hport)


def test_nginx_layout_of_haproxys_key_opens_its_tickets(haproxy, stud, backend, pem, tmp_path):
    """The layouts: HAProxy's encrypting key (the one before the last line), written in
    nginx's byte order, is the same key to stud reading it as nginx's file."""
    keys = haproxy_file(tmp_path)
    hport = haproxy(keys)
    encrypting = ticketkeys.parse_haproxy(keys.read_bytes(), "k").encrypting
    nginx = tmp_path / "nginx.key"
    nginx.write_bytes(ticketkeys.to_bytes(encrypting, "nginx"))
    raw_as_haproxy = tmp_path / "wrong.key"
    raw_as_haproxy.write_bytes(ticketkeys.to_bytes(encrypting, "haproxy"))
    port = backend("echo")
    right = stud("--ssl-session-ticket-key", str(nginx), "--session-id-context", "haproxy", pem,
                 backend_port=port)
    wrong = stud("--ssl-session-ticket-key", str(raw_as_haproxy), "--session-id-context",
                 "haproxy", pem, backend_port=port)
    layout = stud("--ssl-session-ticket-key", str(raw_as_haproxy), "--ticket-key-layout",
                  "haproxy", "--session-id-context", "haproxy", pem, backend_port=port)
    sess = tmp_path / "sess"
    assert resumes(sess, hport, right.port)
    assert not resumes(sess, hport, wrong.port)  # the same 80 bytes, another key to nginx
    assert resumes(sess, hport, layout.port)


# -- the session store: TLS 1.2 session IDs through Redis --------------------------------------
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
NO_TICKET = {"maximum_version": V12}


def id_ctx(**kw: object) -> ssl.SSLContext:
    ctx = client_ctx(maximum_version=V12, **kw)
    ctx.options |= ssl.OP_NO_TICKET  # session IDs only
    return ctx


class Redis(Proc):
    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        super().__init__([REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", str(tmp_path)],
                         tmp_path / f"redis-{self.port}.out", env=tool_env())
        wait_for(lambda: self.command("PING") == b"+PONG\r\n", T)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args: str) -> bytes:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=T) as s:
                s.sendall(" ".join(args).encode() + b"\r\n")
                return s.recv(1 << 20)
        except OSError:
            return b""


@pytest.fixture
def redis(procs, tmp_path):
    if not Path(REDIS).exists():
        pytest.skip("redis-server is not installed")
    r = Redis(tmp_path)
    procs.append(r)
    return r


def test_three_studs_resume_session_ids_through_redis(fleet, redis, tmp_path):
    """TLS 1.2 without tickets: every reconnect to another instance resumes (9 of 9). Redis
    holds the sessions sealed: no master secret appears in what it stores."""
    keylog = tmp_path / "keylog"
    studs = fleet(3, "--tls-ticket-keys", str(haproxy_file(tmp_path)),
                  "--session-store", redis.url)
    ctx = id_ctx(keylog_filename=str(keylog))
    session, _ = resume(studs[0].port, ctx, None)
    resumed = 0
    for i in range(9):
        session, reused = resume(studs[(i + 1) % 3].port, ctx, session)
        resumed += reused
    assert resumed == 9
    secrets = [bytes.fromhex(line.split()[2]) for line in keylog.read_text().splitlines()
               if line.startswith("CLIENT_RANDOM")]
    stored = [k for k in redis.command("KEYS", "stud:session:*").split(b"\r\n")[2::2] if k]
    assert secrets and len(stored) == 1, stored
    value = redis.command("GET", stored[0].decode())
    assert all(s not in value for s in secrets) and session.id.hex().encode() in stored[0]


def test_redis_killed_mid_run_every_connection_succeeds(fleet, redis, tmp_path):
    a, b = fleet(2, "--tls-ticket-keys", str(haproxy_file(tmp_path)),
                 "--session-store", redis.url)
    ctx = id_ctx()
    session, _ = resume(a.port, ctx, None)
    assert resume(b.port, ctx, session)[1]
    redis.stop(__import__("signal").SIGKILL)
    outcomes = [resume(s.port, ctx, None)[1] is False and resume(s.port, ctx, session)
                for s in (a, b, a, b)]
    assert all(outcomes)  # every connection succeeded, with or without resumption
    for s in (a, b):
        said = [ln for ln in s.output().splitlines() if "session-store" in ln]
        assert 1 <= len(said) <= 2 and "full handshakes until it answers" in said[0]


def test_a_hung_redis_delays_only_the_resuming_handshake(fleet, redis, tmp_path):
    """Redis stopped (SIGSTOP), a 2 s wait for it: the connection that asks to resume a
    session made elsewhere waits, then makes a full handshake; meanwhile the worker serves a
    new connection and an established one."""
    import os
    import signal
    import threading
    import time

    a, b = fleet(2, "--tls-ticket-keys", str(haproxy_file(tmp_path)), "--session-store",
                 redis.url, "--session-store-timeout", "2")
    ctx = id_ctx()
    session, _ = resume(b.port, ctx, None)  # (a holds no copy: it must ask Redis)
    established = ctx.wrap_socket(socket.create_connection(("127.0.0.1", a.port), timeout=T),
                                  server_hostname="localhost")
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        done: list[str] = []
        waiting = threading.Thread(target=lambda: done.append(
            f"resumed={resume(a.port, ctx, session)[1]}"))
        started = time.monotonic()
        waiting.start()
        time.sleep(0.3)  # (the resuming connection is waiting for Redis by now)
        resume(a.port, id_ctx(), None)
        done.append("new")
        established.sendall(b"ping")
        assert established.recv(4) == b"ping"
        done.append("established")
        waiting.join(T)
        assert done == ["new", "established", "resumed=False"]
        assert time.monotonic() - started >= 2.0
    finally:
        os.kill(redis.pid, signal.SIGCONT)
        established.close()


@pytest.mark.parametrize("args, error", [
    (["--session-store", "redis://127.0.0.1:6379/0"], "session-store: its records are sealed"),
    (["--session-store", "http://x"], "a redis://, rediss:// or unix:// URL"),
    (["--session-store", "redis://127.0.0.1:6379/0", "--ticket-key-seed", "{seed}", "-C", "0"],
     "session-store: needs the shared session cache"),
])
def test_session_store_configuration_errors(tmp_path, pem, args, error):
    (tmp_path / "seed").write_text("00" * 32)
    r = run_stud("-f", f"127.0.0.1,{free_port()}", "-b", "127.0.0.1,1",
                 *[a.format(seed=tmp_path / "seed") for a in args], pem)
    assert r.returncode == 1 and error in r.stderr and r.stderr.count("\n") == 1
