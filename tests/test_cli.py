"""The stud command, black-box: `python -m stud ...` (and the installed `stud`) in subprocesses.

Every run is bounded; a run that outlives its bound is killed with its whole process group.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import ssl
import subprocess
from pathlib import Path

import pytest
from helpers import STUD, echo_works, free_port, wait_for

from stud import __version__
from stud.config import OPTIONS

T = 30.0  # upper bound for one run of the command
OK = "stud configuration looks ok."
# -t announces its certificate check on stderr first, as the original did (§2.13).
PROGRESS = "Trying to initialize SSL contexts with your certificates"


def run(*args: str, exe: list[str] = STUD, timeout: float = T) -> subprocess.CompletedProcess:
    p = subprocess.Popen([*exe, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # the master and any workers it forked
        p.communicate()
        raise
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def error_line(r: subprocess.CompletedProcess) -> str:
    """The one error line of a failed run (warnings and the -t progress line aside)."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = [x for x in r.stderr.splitlines()
             if x.strip() and not x.startswith("stud: warning") and x != PROGRESS]
    assert len(lines) == 1, r.stderr
    assert OK not in r.stdout
    return lines[0]


@pytest.fixture(scope="module")
def files(pki, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Good and broken inputs, by name, for the error table."""
    d = tmp_path_factory.mktemp("cli")
    good = Path(pki.make(name="cli-good")).read_text()
    other = Path(pki.make(name="cli-other")).read_text()
    cut, other_cut = good.index("-----BEGIN PRIVATE KEY"), other.index("-----BEGIN PRIVATE KEY")
    made = {
        "nokey.pem": good[:cut],
        "mismatch.pem": good[:cut] + other[other_cut:],
        "garbage.pem": "this is not PEM\n",
        "curve.conf": "ec-curve = no-such-curve\n",
        "bad.conf": "# fine\nfrontend = 127.0.0.1,0\n",
    }
    out = {"pem": str(pki.make(name="cli-pem")), "missing": str(d / "missing.pem"),
           "dir": str(d / "pemdir")}
    (d / "pemdir").mkdir()
    for name, text in made.items():
        (d / name).write_text(text)
        out[name.split(".")[0]] = str(d / name)
    return out


# --- informational options ------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag):
    """stud's version, Python's, OpenSSL's, and which data path connections take."""
    r = run(flag)
    lines = r.stdout.splitlines()
    assert (r.returncode, r.stderr, lines[0]) == (0, "", f"stud {__version__}")
    assert lines[1] == f"Python {platform.python_version()} (CPython)"
    assert lines[2] == f"{ssl.OPENSSL_VERSION} (the libssl of Python's ssl module)"
    assert lines[3] == "data path: compiled (stud._flow)" or "pure Python" in lines[3]
    assert lines[4].startswith("compiled modules: _flow ")


def test_version_names_the_pure_python_path():
    r = subprocess.run([*STUD, "-V"], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, STUD_PURE_PYTHON="1"))
    assert "data path: pure Python (STUD_PURE_PYTHON is set)" in r.stdout.splitlines()


def test_installed_entry_point_runs():
    exe = shutil.which("stud")
    assert exe, "the `stud` console script is not installed (pip install -e .)"
    r = run("-V", exe=[exe])
    assert r.returncode == 0 and r.stdout.startswith(f"stud {__version__}\n")


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_lists_every_option(flag):
    r = run(flag)
    assert r.returncode == 0 and r.stdout.startswith("Usage: stud")
    for opt in OPTIONS:
        if not opt.cli:
            continue
        line = next((x for x in r.stdout.splitlines() if f"--{opt.name}" in x.split()
                     or f"--{opt.name}={opt.metavar}" in x.split()), None)
        assert line is not None, opt.name
        if opt.short:
            assert line.split()[0] == f"-{opt.short}", line
        for alias in opt.aliases:
            assert f"--{alias}" in line, line


def test_default_config_output_starts_a_working_daemon(stud, backend, pem, tmp_path):
    port, bport = free_port(), backend("echo")
    front = f"127.0.0.1,{port}"
    r = run("-f", front, "-b", f"127.0.0.1,{bport}", "--default-config")
    assert r.returncode == 0 and r.stderr == ""
    assert f'frontend = "[127.0.0.1]:{port}"' in r.stdout.splitlines()
    conf = tmp_path / "stud.conf"
    conf.write_text(r.stdout)
    s = stud(f"--config={conf}", pem, frontend=front)  # the file sets every option
    assert echo_works(port)
    assert s.proc.poll() is None


# --- -t and start-up errors -----------------------------------------------------------------

def test_t_accepts_a_good_configuration(files):
    r = run("-t", files["pem"])
    assert (r.returncode, r.stdout) == (0, OK + "\n")
    r = run("-t", "-qs", "-n4", "--front=127.0.0.1,1", "-f", "[::1]:2", "-b", "localhost,3",
            "-B", "50", "-k", "60", "-O", "-c", "HIGH", "--ciphersuites=TLS_AES_128_GCM_SHA256",
            "--ec-curve=prime256v1", "--tls-protos=TLSv1.2", "--alpn-protos=h2,http/1.1",
            "--sni-nomatch-abort", "--write-proxy-v2", "-C", "10", "-U", "*,9000",
            "-P", "127.0.0.2,9000", "-M", "lo,3", "--ssl-handshake-timeout=5",
            "--backend-connect-timeout=2", "--syslog-facility=local3", files["pem"])
    assert (r.returncode, r.stdout) == (0, OK + "\n"), r.stderr


ERRORS = [  # (id, arguments, what the error line must name); {name} is a path from `files`
    ("missing-pem", ["{missing}"], ["pem-file", "{missing}"]),
    ("pem-without-key", ["{nokey}"], ["{nokey}", "no private key"]),
    ("key-mismatch", ["{mismatch}"], ["{mismatch}", "does not match"]),
    ("pem-is-dir", ["{dir}"], ["pem-file", "{dir}"]),
    ("garbage-pem", ["{garbage}"], ["{garbage}"]),
    ("no-pem", [], ["PEM"]),
    ("bad-cipher", ["-c", "NOPE", "{pem}"], ["ciphers", "NOPE"]),
    ("bad-ciphersuites", ["--ciphersuites=NOPE", "{pem}"], ["ciphersuites", "NOPE"]),
    ("bad-ec-curve", ["--config={curve}", "{pem}"], ["ec-curve", "no-such-curve"]),
    ("bad-tls-proto", ["--tls-protos=TLSv1.2,TLSv9", "{pem}"], ["tls-protos", "TLSv9"]),
    ("sslv3", ["--tls-protos=SSLv3", "{pem}"], ["tls-protos", "SSLv3"]),
    ("tls-and-ssl", ["--tls", "--ssl", "{pem}"], ["--tls", "--ssl"]),
    ("port-0", ["-f", "127.0.0.1,0", "{pem}"], ["frontend", "127.0.0.1,0"]),
    ("port-65536", ["-b", "127.0.0.1,65536", "{pem}"], ["backend", "65536"]),
    ("port-abc", ["--backend=[::1]:abc", "{pem}"], ["backend", "abc"]),
    ("bad-address", ["-b", "[::1]x443", "{pem}"], ["backend", "[::1]x443"]),
    ("address-newline", ["-b", "a\nb,80", "{pem}"], ["backend"]),
    ("unresolvable-backend", ["-b", "no-such-host.invalid,80", "{pem}"],
     ["backend", "no-such-host.invalid"]),
    ("invalid-host-name", ["-b", "a..b,80", "{pem}"], ["backend", "a..b"]),
    ("unknown-option", ["--bogus", "{pem}"], ["--bogus"]),
    ("config-file-line", ["--config={bad}", "{pem}"], ["{bad}", "line 2", "frontend"]),
    ("missing-config-file", ["--config={missing}.conf", "{pem}"], ["{missing}.conf"]),
    ("exclusive-modes", ["--write-ip", "--proxy-proxy", "{pem}"], ["--write-ip", "--proxy-proxy"]),
    ("exclusive-v1-v2", ["--write-proxy-v1", "--write-proxy-v2", "{pem}"], ["--write-proxy-v2"]),
    ("ssl-engine", ["--ssl-engine=nonexistent", "{pem}"], ["ssl-engine", "nonexistent"]),
    ("unknown-user", ["-u", "no-such-user-xyz", "{pem}"], ["user", "no-such-user-xyz"]),
    ("unknown-group", ["-g", "no-such-group-xyz", "{pem}"], ["group", "no-such-group-xyz"]),
    ("chroot-not-dir", ["-r", "{pem}", "{pem}"], ["chroot", "{pem}"]),
    ("bad-facility", ["--syslog-facility=bogus", "{pem}"], ["syslog-facility", "bogus"]),
    ("bad-workers", ["-n", "0", "{pem}"], ["workers"]),
    ("shared-cache-if", ["-M", "no-such-if0", "{pem}"], ["shared-cache-if", "no-such-if0"]),
    ("too-many-peers", ["-C", "1", "-U", "*,9000"]
     + [a for n in range(16) for a in ("-P", f"10.0.0.{n},9000")] + ["{pem}"],
     ["shared-cache-peer", "15"]),
]


@pytest.mark.parametrize("mode", ["-t", "start"])
@pytest.mark.parametrize("args, names", [pytest.param(a, n, id=i) for i, a, n in ERRORS])
def test_errors_exit_1_with_one_line_naming_the_culprit(mode, args, names, files):
    # "start" runs the daemon itself on a free port: it must fail the same way before binding.
    pre = ["-t"] if mode == "-t" else ["-f", f"127.0.0.1,{free_port()}"]
    line = error_line(run(*pre, *(a.format(**files) for a in args)))
    for name in names:
        assert name.format(**files) in line, line


# --- running daemons ------------------------------------------------------------------------

def test_ssl_warns_but_serves_old_and_new_tls(stud, backend, pem):
    s = stud("--ssl", pem, backend_port=backend("echo"))
    assert echo_works(s.port)
    assert echo_works(s.port, maximum_version=ssl.TLSVersion.TLSv1_2)
    warnings = [x for x in s.output().splitlines() if x.startswith("stud: warning: --ssl")]
    assert len(warnings) == 1


def test_quiet_suppresses_info_lines(stud, backend, pem):
    bport = backend("echo")
    quiet = stud("-q", "--drain-timeout=5", pem, backend_port=bport, wait=False)
    wait_for(lambda: echo_works(quiet.port) or quiet.proc.poll() is not None)
    loud = stud(pem, backend_port=bport)
    assert echo_works(loud.port)
    wait_for(lambda: "connection closed" in loud.output())
    assert quiet.stop() == 0  # a drained stop: the closed connection was logged, if ever
    out = quiet.output()
    assert "connection closed" not in out and "online" not in out and "Listening" not in out


@pytest.mark.parametrize("args", [["-s"], ["--syslog"], ["-s", "--syslog-facility=local3"],
                                  ["--syslog-facility=local3"]])
def test_syslog_options_start_and_serve(args, stud, backend, pem):
    # syslogd may not run here: only check that stud serves and keeps running.
    s = stud(*args, pem, backend_port=backend("echo"))
    assert echo_works(s.port)
    assert echo_works(s.port)
    assert s.proc.poll() is None, s.output()
