"""The package as a user gets it: `python -m build` gives an sdist and a wheel with the
compiled modules and the manual; the wheel installs into a fresh venv where no compiler can
run, and serves on the compiled path; the sdist installs where the compiler is hidden, and
serves on the pure-Python path. (Dependencies come from PyPI, or pip's cache.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tool_env

ROOT = Path(__file__).parent.parent
T = 600
# Packaging is not about memory: a sanitizer run's instrumented tree is not what users install.
pytestmark = pytest.mark.skipif("san" in os.environ.get("LD_PRELOAD", ""),
                                reason="a sanitizer run (tests/sanitize.sh)")


def run(args: list[str | Path], env: dict | None = None, cwd: Path | None = None
        ) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=T,
                       env=env or tool_env(), cwd=cwd)
    assert r.returncode == 0, f"{args}: {r.stdout[-2000:]} {r.stderr[-2000:]}"
    return r


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", out, ROOT], cwd=ROOT)
    return out


def no_compiler_env(tmp: Path) -> dict[str, str]:
    """A PATH where cc, gcc and friends fail, and CC pointing at one that does."""
    bin_ = tmp / "nocc"
    bin_.mkdir(exist_ok=True)
    for cc in ("cc", "gcc", "c++", "g++", "x86_64-linux-gnu-gcc", "clang"):
        (bin_ / cc).write_text("#!/bin/sh\necho 'no compiler here' >&2\nexit 1\n")
        (bin_ / cc).chmod(0o755)
    return dict(tool_env(), PATH=f"{bin_}:{os.environ['PATH']}", CC=str(bin_ / "cc"),
                LDSHARED=f"{bin_ / 'cc'} -shared", PIP_DISABLE_PIP_VERSION_CHECK="1")


def venv(path: Path) -> Path:
    run([sys.executable, "-m", "venv", path])
    return path / "bin"


def test_wheel_holds_the_compiled_modules_and_the_manual(dist):
    import zipfile

    (wheel,) = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for mod in ("_flow", "_sesscache", "_ticketkeys"):
        assert any(n.startswith(f"stud/{mod}.cpython-") for n in names), mod
    assert "stud-0.4.0.data/data/share/man/man8/stud.8" in names
    assert "stud-0.4.0.data/data/share/man/man5/stud.conf.5" in names
    assert "stud/_openssl.h" in names


def test_wheel_installs_without_a_compiler(dist, tmp_path):
    (wheel,) = dist.glob("*.whl")
    env = no_compiler_env(tmp_path)
    bin_ = venv(tmp_path / "venv")
    run([bin_ / "pip", "install", "-q", wheel], env=env)
    version = run([bin_ / "stud", "--version"], env=env).stdout
    assert "data path: compiled (stud._flow)" in version
    assert "compiled modules: _flow yes, _sesscache yes, _ticketkeys yes" in version
    page = tmp_path / "venv" / "share" / "man" / "man8" / "stud.8"
    man = run(["man", "-l", page], env=dict(env, MANWIDTH="80")).stdout
    assert "stud - the Scalable TLS Unwrapping Daemon" in man


def test_sdist_falls_back_to_pure_python_without_a_compiler(dist, tmp_path, pem):
    (sdist,) = dist.glob("*.tar.gz")
    env = no_compiler_env(tmp_path)
    bin_ = venv(tmp_path / "venv")
    run([bin_ / "pip", "install", "-q", sdist], env=env)
    version = run([bin_ / "stud", "--version"], env=env).stdout
    assert "data path: pure Python (stud._flow is not built)" in version
    assert "compiled modules: _flow no, _sesscache no, _ticketkeys no" in version
    check = run([bin_ / "stud", "-t", "-f", "127.0.0.1,8443", pem], env=env)
    assert "stud configuration looks ok" in check.stdout
