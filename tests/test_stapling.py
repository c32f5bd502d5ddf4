"""OCSP stapling in the running daemon, black-box: the real `python -m stud` (and hitch with the
same command line or configuration file, where it has the feature: the oracle) in front of an
echo backend, the loopback responder of ocsp_pki.py (`openssl ocsp` reading its index.txt per
request), and `openssl s_client -status` reading what the daemon stapled. Every wait is
bounded; only loopback is used."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    STUD,
    Proc,
    Stud,
    echo_works,
    free_port,
    run_tool,
    s_client,
    wait_for,
    worker_pids,
)
from ocsp_pki import PKI, Responder, response, utcnow

from stud import ocsp

HITCH = "/usr/sbin/hitch"
T = 15.0  # the bound on a staple coming or going (a fetch is a few tens of ms on loopback)
QUIET = 3.0  # how long "nothing happens" is watched (the positive cases take well under 1 s)

HAS_HITCH = pytest.mark.skipif(not os.access(HITCH, os.X_OK), reason="hitch is not installed")
BOTH = pytest.mark.parametrize("kind", ["stud", pytest.param("hitch", marks=HAS_HITCH)])
AS_ROOT = os.getuid() == 0


class Hitch(Stud):
    """hitch, given the arguments stud is given."""

    def __init__(self, args: list[str], out: Path, port: int, **kw: Any) -> None:
        Proc.__init__(self, [HITCH, *args], out, **kw)
        self.port = port


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture
def responder(tmp_path: Path) -> Iterator[Responder]:
    """A responder for a fresh PKI (responder.pki) whose leaves name it in their AIA."""
    r = Responder()
    r.pki = PKI(tmp_path, f"http://127.0.0.1:{r.port}/ocsp")
    yield r
    r.close()


@pytest.fixture
def pki(responder: Responder) -> PKI:
    assert responder.pki is not None
    return responder.pki


@pytest.fixture
def cache() -> Iterator[Path]:
    """An ocsp-dir, the configured user's alone as hitch wants it. Not under pytest's
    tmp_path, which is root's alone (0700): hitch's OCSP process and workers run as nobody."""
    d = Path(tempfile.mkdtemp(prefix="stud-ocsp-"))
    if AS_ROOT:
        nobody = pwd.getpwnam("nobody")
        os.chown(d, nobody.pw_uid, nobody.pw_gid)
    yield d
    shutil.rmtree(d, ignore_errors=True)


Start = Callable[..., Stud]


@pytest.fixture
def start(procs: list[Proc], backend: Callable[..., int], tmp_path: Path) -> Start:
    """start(kind, *args, conf=None, cwd=None): stud or hitch in front of an echo backend, on a
    fresh port. With conf (hitch's syntax, which stud reads too) the addresses go in a
    configuration file with it, else on the command line before args."""
    def run(kind: str, *args: str, conf: str | None = None, cwd: Path | None = None) -> Stud:
        port, bport = free_port(), backend("echo")
        user = ["nobody"] if AS_ROOT else []  # (hitch refuses to run as root)
        if conf is None:
            argv = [f"--frontend=[127.0.0.1]:{port}", f"--backend=[127.0.0.1]:{bport}",
                    *(f"--user={u}" for u in user), *args]
        else:
            path = tmp_path / f"{kind}-{len(procs)}.conf"
            path.write_text(f'frontend = "[127.0.0.1]:{port}"\nbackend = "[127.0.0.1]:{bport}"\n'
                            + "".join(f'user = "{u}"\n' for u in user) + conf)
            argv = [f"--config={path}", *args]
        cls = Stud if kind == "stud" else Hitch
        d = cls(argv, tmp_path / f"{kind}-{len(procs)}.out", port, cwd=cwd)
        d.argv = argv  # (for -t)
        procs.append(d)
        return d.wait_ready()
    return run


# -- what a client sees ----------------------------------------------------------------------
def status(port: int) -> str:
    """What `openssl s_client -status` says of the daemon's staple (and of the rest)."""
    r = s_client(port, "-status", "-servername", "localhost")
    assert "CONNECTED" in r.output and "Cipher is" in r.output, r.output  # a handshake
    return r.output


def unstapled(out: str) -> bool:
    return "OCSP response: no response sent" in out


def good(out: str) -> bool:
    return "OCSP Response Status: successful (0x0)" in out and "Cert Status: good" in out


def wait_stapled(port: int, timeout: float = T) -> str:
    return str(wait_for(lambda: (out := status(port)) and good(out) and out, timeout, 0.1))


def never_stapled(port: int, seconds: float = QUIET) -> None:
    """No staple in any handshake for that long (the daemon keeps serving meanwhile)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out = status(port)
        assert unstapled(out), out
        time.sleep(0.2)


def this_update(out: str) -> str:
    return re.search(r"This Update: (.*)", out).group(1)  # type: ignore[union-attr]


def asn1(t: datetime) -> str:
    """A time as OpenSSL prints it (ASN1_TIME_print)."""
    return f"{t:%b} {t.day:2d} {t:%H:%M:%S %Y} GMT"


def lines(d: Stud, text: str) -> list[str]:
    return [x for x in d.output().splitlines() if text in x]


def check_config(kind: str, args: list[str]) -> str:
    """`-t` with these arguments: its output; it must say the configuration is fine."""
    cmd = [*STUD, *args, "-t"] if kind == "stud" else [HITCH, *args, "-t"]
    run = subprocess.run if kind == "stud" else run_tool  # (stud keeps the tests' environment)
    r = run(cmd, timeout=T, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and f"{kind} configuration looks ok" in r.stdout + r.stderr, \
        r.stdout + r.stderr
    return r.stdout + r.stderr


def conf(ocsp_dir: Path | str, pem: Path, resp_file: Path | None = None,
         refresh: float | None = None) -> str:
    """A configuration in hitch's syntax (ocsp-refresh-interval is a setting of hitch's file
    only, not an option)."""
    cert = (f'{{\n  cert = "{pem}"\n  ocsp-resp-file = "{resp_file}"\n}}' if resp_file
            else f'"{pem}"')
    every = f"ocsp-refresh-interval = {refresh:g}\n" if refresh else ""
    return f'ocsp-dir = "{ocsp_dir}"\n{every}pem-file = {cert}\n'


def stop_leaves_nothing(d: Stud) -> None:
    """SIGTERM: the master exits and so does every child it had (workers, OCSP fetcher)."""
    children = worker_pids(d.pid)
    assert children
    assert d.stop() == 0, d.output()
    wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in children), T)


# -- fetched from the certificate's responder -------------------------------------------------
@BOTH
def test_staple_fetched_from_the_responder_and_cached_under_hitchs_name(
        kind, start, responder, pki, cache):
    d = start(kind, f"--ocsp-dir={cache}", str(pki.leaf_pem))
    out = wait_stapled(d.port)
    assert re.search(rf"Serial Number: 0?{pki.leaf.serial_number:X}\n", out)  # ours
    cached = Path(ocsp.staple_path(str(cache), str(pki.leaf_pem)))
    wait_for(cached.exists, T)
    assert os.listdir(cache) == [cached.name]
    assert ocsp.check(cached.read_bytes(), pki.leaf, pki.ca, utcnow()).status == "good"
    assert len(responder.seen) == 1 and echo_works(d.port)
    assert len(d.workers()) == 2  # the worker and the process that asks the responder
    if kind == "stud":
        said = lines(d, f"OCSP staple for {pki.leaf_pem} loaded (good until ")
        assert len(said) == 1, d.output()
    stop_leaves_nothing(d)


@BOTH
def test_the_cache_name_hashes_the_pem_path_as_written(kind, request, start, pki, cache):
    """hitch hashes the bytes of its configuration: a relative path is not the absolute one."""
    d = start(kind, f"--ocsp-dir={cache}", "leaf.pem", cwd=pki.root)
    wait_stapled(d.port)
    wait_for(lambda: os.listdir(cache), T)
    assert os.listdir(cache) == [os.path.basename(ocsp.staple_path(str(cache), "leaf.pem"))]


@BOTH
def test_a_revoked_certificate_is_never_stapled(kind, start, responder, pki, cache):
    d = start(kind, conf=conf(cache, pki.revoked_pem, refresh=1))
    wait_for(lambda: responder.seen, T)
    never_stapled(d.port)
    assert os.listdir(cache) == []  # nothing cached either
    if kind == "stud":
        # asked again (each second, then backing off), said once
        assert len(responder.seen) >= 2
        said = lines(d, f"OCSP for {pki.revoked_pem}: certificate revoked at ")
        assert len(said) == 1 and "reason key_compromise; not stapled" in said[0], d.output()


@pytest.mark.parametrize(("kind", "down"), [
    ("stud", "refused"),
    pytest.param("hitch", "refused", marks=HAS_HITCH),
    ("stud", "http-503"),  # (not hitch: it retries after 300 s, no second attempt to count)
])
def test_responder_down_no_staple_still_serving_failure_logged_once(
        kind, down, start, responder, pki, cache):
    if down == "refused":
        responder.close()  # (its port stays free: connections are refused)
        why = "cannot connect: Connection refused"
    else:  # (up but failing: the attempts can be counted)
        responder.answer = lambda req: (503, "text/plain", b"try later")
        why = "HTTP 503 Service Unavailable"
    d = start(kind, conf=conf(cache, pki.leaf_pem, refresh=1))
    assert echo_works(d.port)
    never_stapled(d.port, QUIET + 1)  # stud tries at 0, 1 and 3 s meanwhile
    assert echo_works(d.port) and os.listdir(cache) == []
    if kind == "stud":
        if down == "http-503":
            wait_for(lambda: len(responder.seen) >= 3, T)
        said = lines(d, f"OCSP for {pki.leaf_pem}: OCSP responder {pki.url}: ")
        assert len(said) == 1 and why in said[0], d.output()
        assert said[0].endswith("; not stapled, next attempt in 1 s")


def test_a_refresh_reaches_the_running_workers(start, responder, pki, cache):
    """Responses without nextUpdate, refreshed each second: a revocation withdraws the staple
    from the running worker, and the good response after un-revoking is stapled again, without
    a reload. (Not hitch: it refreshes at most once a minute, and on a revoked answer keeps
    the last good staple until that one's nextUpdate.)"""
    responder.nmin = None
    d = start("stud", conf=conf(cache, pki.leaf_pem, refresh=1))
    before = wait_stapled(d.port)
    assert "Next Update" not in before
    children = d.workers()  # the worker and the fetcher
    assert len(children) == 2

    pki.index({pki.leaf.serial_number})
    wait_for(lambda: unstapled(status(d.port)), T)
    assert lines(d, f"OCSP for {pki.leaf_pem}: certificate revoked at ")
    pki.index(set())
    after = wait_stapled(d.port)
    assert this_update(after) != this_update(before)  # a new response, not the old one back
    assert d.workers() == children and d.output().count("online") == 1  # no reload, no respawn


@BOTH
def test_ocsp_dir_empty_turns_fetching_off(kind, start, responder, pki):
    d = start(kind, conf=conf("", pki.leaf_pem))
    never_stapled(d.port)
    assert responder.seen == []
    assert len(d.workers()) == 1  # no OCSP process at all


# -- staples from files -----------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "how"), [
    ("stud", "ocsp-resp-file"),
    pytest.param("hitch", "ocsp-resp-file", marks=HAS_HITCH),
    ("stud", "haproxy"),
])
def test_a_staple_file_is_stapled_and_read_again_when_replaced(
        kind, how, start, responder, pki, cache, tmp_path):
    """hitch's ocsp-resp-file (in its configuration syntax) and HAProxy's <pem>.ocsp beside
    the PEM. The responder is down: the file is the only source."""
    responder.close()
    now = utcnow()
    first = response(pki, pki.leaf, this=now - timedelta(minutes=2))
    if how == "haproxy":
        staple = Path(ocsp.haproxy_staple_path(str(pki.leaf_pem)))
        args, text = [f"--ocsp-dir={cache}", str(pki.leaf_pem)], None
    else:
        staple = tmp_path / "leaf.ocsp.der"
        args, text = [], conf(cache, pki.leaf_pem, staple)
    staple.write_bytes(first)
    d = start(kind, *args, conf=text)
    check_config(kind, d.argv)
    assert this_update(wait_stapled(d.port)) == asn1(now - timedelta(minutes=2))
    if kind == "hitch":
        return  # hitch reads ocsp-resp-file at start and reload only

    children = d.workers()
    second = staple.with_suffix(".new")
    second.write_bytes(response(pki, pki.leaf, this=now - timedelta(minutes=1)))
    os.replace(second, staple)
    wait_for(lambda: this_update(status(d.port)) == asn1(now - timedelta(minutes=1)), T)
    assert d.workers() == children  # no reload
    assert os.listdir(cache) == []  # a staple file is not fetched for, so nothing cached

    # An expired response in its place is not stapled: the last good one stays, until its own
    # nextUpdate.
    staple.write_bytes(response(pki, pki.leaf, this=now - timedelta(hours=2),
                                nxt=now - timedelta(hours=1)))
    said = wait_for(lambda: lines(d, "response expired: nextUpdate"), T)
    assert f"OCSP staple file for {pki.leaf_pem} not used:" in said[0]
    assert this_update(status(d.port)) == asn1(now - timedelta(minutes=1))


@BOTH
def test_an_expired_staple_file_is_not_stapled(kind, start, responder, pki, tmp_path):
    """hitch loads it (it checks the signature and status, not the times) but its stapling
    callback sends nothing once nextUpdate has passed: the same for a client."""
    responder.close()
    staple = tmp_path / "expired.der"
    now = utcnow()
    staple.write_bytes(response(pki, pki.leaf, this=now - timedelta(hours=2),
                                nxt=now - timedelta(hours=1)))
    d = start(kind, conf=conf("", pki.leaf_pem, staple))
    never_stapled(d.port)
    assert echo_works(d.port)
    if kind == "stud":
        said = lines(d, f"OCSP staple file for {pki.leaf_pem} not used: response expired")
        assert len(said) == 1, d.output()


# -- the cache, -t, reload, stop ---------------------------------------------------------------
@BOTH
def test_a_cached_staple_is_stapled_at_start_with_the_responder_down(
        kind, start, responder, pki, cache):
    responder.close()
    cached = Path(ocsp.staple_path(str(cache), str(pki.leaf_pem)))
    now = utcnow()
    cached.write_bytes(response(pki, pki.leaf, this=now - timedelta(minutes=3)))
    d = start(kind, f"--ocsp-dir={cache}", str(pki.leaf_pem))
    out = status(d.port)  # at once: no fetch to wait for
    assert good(out) and this_update(out) == asn1(now - timedelta(minutes=3)), out
    assert echo_works(d.port)
    check_config(kind, d.argv)


@BOTH
def test_reload_keeps_stapling(kind, start, responder, pki, cache):
    """stud keeps the staple of an unchanged certificate across a reload: stapled from the
    first handshake of the new workers, not asked for again. (hitch's master never holds the
    staple its OCSP process fetched, and a reload restarts that process: it asks again, and
    its new workers staple once the answer is in the cache.)"""
    d = start(kind, f"--ocsp-dir={cache}", str(pki.leaf_pem))
    before = wait_stapled(d.port)
    asked = len(responder.seen)
    old = set(d.workers())
    os.kill(d.pid, signal.SIGHUP)
    wait_for(lambda: d.output().count("online") >= 2, T)
    wait_for(lambda: (new := set(d.workers())) - old and old - new, T)  # a worker replaced
    after = status(d.port) if kind == "stud" else wait_stapled(d.port)
    assert good(after), after
    if kind == "stud":
        assert this_update(after) == this_update(before), after
        assert len(responder.seen) == asked
    else:  # hitch asked again: its answer may be a second younger
        asn1_format = "%b %d %H:%M:%S %Y GMT"
        first, second = (datetime.strptime(this_update(o), asn1_format) for o in (before, after))
        assert second >= first, after
    stop_leaves_nothing(d)
