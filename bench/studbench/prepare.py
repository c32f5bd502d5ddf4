"""What the run needs before any proxy starts: the peers installed, stud copied, tlsload
built, the certificates and the files the backend serves."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .certs import make_pem
from .common import BENCH, BIG_SIZE, MIB, REPO, log
from .procs import run_capture


def which(name: str) -> str | None:
    """shutil.which, also looking where Debian puts daemons (haproxy, nginx)."""
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def ensure_installed(want_install: bool) -> None:
    """Debian packages (hitch haproxy wrk nginx redis-server libssl-dev gcc) and matplotlib."""
    missing = [b for b in ("hitch", "haproxy", "wrk", "nginx", "redis-server", "gcc")
               if not which(b)]
    if not Path("/usr/include/openssl/ssl.h").exists():
        missing.append("libssl-dev")
    if missing and want_install:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            _apt_install(missing)
        else:
            log(f"missing {missing}; not root or no apt-get: skipping what needs them")
    if want_install and importlib.util.find_spec("matplotlib") is None:
        log("installing matplotlib from PyPI (for the chart)")
        _pip_install(["matplotlib"], "pip timed out; no chart")
    if want_install and not shutil.which("stud") and (REPO / "stud" / "cli.py").exists():
        log("installing stud from this repository (pip install -e)")
        _pip_install(["-e", str(REPO)], "pip install -e timed out")


def _apt_install(packages: list[str]) -> None:
    log(f"installing Debian packages: {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=300, check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            env=env,
            timeout=600,
            check=False,
            stdout=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        log("apt-get timed out; going on with what is there")


def _pip_install(what: list[str], on_timeout: str) -> None:
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", *what], timeout=600, check=False
        )
    except subprocess.TimeoutExpired:
        log(on_timeout)


@dataclass(frozen=True)
class StudCommand:
    argv: list[str] | None  # None: no stud to benchmark
    pythonpath: str  # to add to the proxy's PYTHONPATH
    version: str


def stud_command(override: str | None, work: Path) -> StudCommand:
    """The stud to benchmark.

    This repository's stud/ is copied first, so that the whole run measures one version even
    while someone edits the tree; otherwise the `stud` on PATH.
    """
    if override:
        return StudCommand(shlex.split(override), "", "?")
    if (REPO / "stud" / "cli.py").exists():
        src = work / "stud-src"
        shutil.copytree(REPO / "stud", src / "stud", ignore=shutil.ignore_patterns("__pycache__"))
        init = (src / "stud" / "__init__.py").read_text()
        m = re.search(r"__version__\s*=\s*[\"']([^\"']+)", init)
        version = f"{m.group(1) if m else '?'} (this tree, git {git_rev()}, run as python -m stud)"
        return StudCommand([sys.executable, "-m", "stud"], str(src), version)
    exe = shutil.which("stud")
    if exe:
        return StudCommand([exe], "", f"`stud` on PATH: {exe}")
    return StudCommand(None, "", "")


def git_rev() -> str:
    out = run_capture(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = run_capture(["git", "-C", str(REPO), "status", "--porcelain", "--", "stud"])
    return out + (" + uncommitted changes in stud/" if dirty else "")


def build_tlsload(work: Path) -> Path | None:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc or not Path("/usr/include/openssl/ssl.h").exists():
        return None
    out = work / "tlsload"
    cmd = [gcc, "-O2", "-Wall", "-o", str(out), str(BENCH / "tlsload.c"), "-lssl", "-lcrypto"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        log(f"building tlsload failed, using the Python client:\n{p.stderr[-2000:]}")
        return None
    return out


def write_work_files(work: Path, wrk_lua: str) -> None:
    """wrk's script, the certificates and the backend's big file, readable by the proxies
    (hitch drops to nobody)."""
    (work / "wrk.lua").write_text(wrk_lua)
    for kind in ("ecdsa", "rsa"):
        make_pem(work / f"{kind}.pem", kind)
    www = work / "www"
    www.mkdir()
    with (www / "big").open("wb") as f:
        block = os.urandom(MIB)
        for _ in range(BIG_SIZE // MIB):
            f.write(block)
    os.chmod(work, 0o755)
    for p in [www, www / "big", work / "ecdsa.pem", work / "rsa.pem"]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
