"""The manual: stud(8) and stud.conf(5) are what stud.manpage writes from the option table
(so they cannot drift from what stud accepts), groff renders them without a warning, and
every option is in them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import tool_env

from stud import manpage
from stud.config import OPTIONS

MAN = Path(__file__).parent.parent / "man"


@pytest.mark.parametrize("name", sorted(manpage.PAGES))
def test_the_shipped_page_is_current(name):
    assert (MAN / name).read_text() == manpage.PAGES[name](), (
        f"man/{name} is stale: run python -m stud.manpage man")


@pytest.mark.parametrize("name", sorted(manpage.PAGES))
def test_groff_renders_without_warnings(name):
    groff = shutil.which("groff") or pytest.skip("groff is not installed")
    r = subprocess.run([groff, "-man", "-ww", "-z", str(MAN / name)], capture_output=True,
                       text=True, timeout=60, env=tool_env())
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_every_option_is_in_the_pages():
    rendered = {n: manpage.PAGES[n]().replace("\\-", "-") for n in manpage.PAGES}
    for opt in OPTIONS:
        if opt.cli:
            assert f"--{opt.name}" in rendered["stud.8"], opt.name
        if opt.file and opt.kind != "action":
            assert f"\\fB{opt.name}\\fR" in rendered["stud.conf.5"], opt.name


def test_man_reads_it():
    man = shutil.which("man") or pytest.skip("man is not installed")
    r = subprocess.run([man, "-l", str(MAN / "stud.8")], capture_output=True, text=True,
                       timeout=60, env=dict(tool_env(), MANWIDTH="80", MAN_KEEP_FORMATTING=""))
    assert r.returncode == 0 and "stud - the Scalable TLS Unwrapping Daemon" in r.stdout
    assert "--session-store=URL" in r.stdout


def test_roff_escapes():
    assert manpage.roff(".x-y\\z") == "\\&.x\\-y\\ez"
