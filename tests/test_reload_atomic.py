"""A reload is all or nothing: every step that can fail (configuration, certificates, new
listening sockets, a new session cache, replication peers and key) runs before anything
changes; when one fails, what was prepared is released and the running generation keeps
serving as it was, with the cache it uses."""

from __future__ import annotations

import signal
import socket
import ssl
from pathlib import Path

import pytest
from helpers import Stud, client_ctx, echo_works, free_port, scrape, wait_for

from stud import sesscache

pytestmark = pytest.mark.skipif(sesscache._sesscache is None, reason="stud._sesscache not built")


def config(pem: str, backend: int, frontends: list[int], cache: int, updates: int,
           peer: str, metrics: int) -> str:
    lines = [f'frontend = "[127.0.0.1]:{p}"' for p in frontends] + [
        f"backend = 127.0.0.1,{backend}", f'pem-file = "{pem}"', "workers = 2",
        f"shared-cache = {cache}", f"shared-cache-listen = 127.0.0.1,{updates}",
        f'shared-cache-peer = "{peer}"', f"metrics = 127.0.0.1,{metrics}"]
    return "\n".join(lines) + "\n"


# A TLS 1.2 client that can only resume by session ID (no ticket).
TLS12_IDS = client_ctx(maximum_version=ssl.TLSVersion.TLSv1_2)
TLS12_IDS.options |= ssl.OP_NO_TICKET


def tls12_session(port: int, session: ssl.SSLSession | None = None) -> tuple[object, bool]:
    ctx = TLS12_IDS
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with ctx.wrap_socket(raw, session=session) as c:
        c.sendall(b"x")
        assert c.recv(1) == b"x"
        return c.session, c.session_reused


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def serving(procs, backend, pem, tmp_path: Path):
    """stud -n 2 with a shared cache of 100 and a peer, from a config file; a session ID
    stored; then the config file rewritten and SIGHUP: reload(cache, peer, extra_frontend)."""
    ports = {k: free_port() for k in ("front", "extra", "metrics")}
    ports["updates"] = free_port(kind=socket.SOCK_DGRAM)
    bport = backend()
    conf = tmp_path / "stud.conf"
    conf.write_text(config(pem, bport, [ports["front"]], 100, ports["updates"],
                           f"127.0.0.1,{free_port(kind=socket.SOCK_DGRAM)}", ports["metrics"]))
    s = Stud(["--config", str(conf)], tmp_path / "stud.out", ports["front"])
    procs.append(s)
    s.wait_ready(2)
    session, _ = tls12_session(s.port)
    assert tls12_session(s.port, session)[1]

    def reload(cache: int, peer: str, extra: bool) -> str:
        fronts = [ports["front"], ports["extra"]] if extra else [ports["front"]]
        conf.write_text(config(pem, bport, fronts, cache, ports["updates"], peer,
                               ports["metrics"]))
        before = s.output().count("SIGHUP: reloading")
        s.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: s.output().count("SIGHUP: reloading") > before
                 and ("reload failed" in s.output().split("SIGHUP: reloading")[-1]
                      or "serving; generation" in s.output().split("SIGHUP: reloading")[-1]))
        return s.output().split("SIGHUP: reloading")[-1]

    return s, ports, session, reload


def test_a_reload_failing_at_its_last_step_leaves_the_new_port_unbound(serving):
    """The new frontend is bound before the replication peers are checked; the peer's
    address family does not match -U's, so the reload fails there and must unbind it."""
    s, ports, _, reload = serving
    workers = sorted(s.workers())
    tail = reload(100, f"[::1]:{ports['updates']}", extra=True)
    assert "reload failed, still serving the previous configuration: Share host and peers " \
           "inet family differs" in tail
    assert refused(ports["extra"])
    assert echo_works(s.port)
    assert sorted(s.workers()) == workers
    # The same change with a good peer binds it: the failure above was the peer's alone.
    tail = reload(100, f"127.0.0.1,{free_port(kind=socket.SOCK_DGRAM)}", extra=True)
    assert "reload failed" not in tail
    wait_for(lambda: echo_works(ports["extra"]))


def test_a_failed_reload_never_changes_the_cache_in_use(serving):
    """A new size would make a new cache; the reload then fails: the master keeps the
    cache the workers use (its size, its sessions, resumption across the workers)."""
    s, ports, session, reload = serving
    before = scrape(ports["metrics"])
    assert before["stud_session_cache_size"] == 100
    assert before["stud_session_cache_sessions"] >= 1
    reload(200, f"[::1]:{ports['updates']}", extra=False)
    after = scrape(ports["metrics"])
    assert after["stud_reloads_total{result=failed}"] == 1
    assert after["stud_session_cache_size"] == 100
    assert after["stud_session_cache_sessions"] == before["stud_session_cache_sessions"]
    for _ in range(6):  # on either worker
        assert tls12_session(s.port, session)[1]
    # A reload that succeeds makes the new cache (so the one above was really tried).
    reload(200, f"127.0.0.1,{free_port(kind=socket.SOCK_DGRAM)}", extra=False)
    wait_for(lambda: scrape(ports["metrics"])["stud_session_cache_size"] == 200)
