"""Private keys stay secret: a corrupted key fails -t, start-up and reload with a message
that quotes none of it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from helpers import STUD, echo_once_plain, free_port, wait_for


def key_lines(pem_text: str) -> list[str]:
    m = re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----\n(.*?)-----END", pem_text, re.S)
    return [x for x in m.group(1).splitlines() if x] if m else []


def leaks(output: str, lines: list[str]) -> list[str]:
    """Key material in output: any key line, or any 12-character piece of one."""
    found = [x for x in lines if x in output]
    for x in lines:
        for i in range(0, max(1, len(x) - 12), 4):
            if len(x[i:i + 12]) == 12 and x[i:i + 12] in output:
                found.append(x[i:i + 12])
    return found


def corrupt_variants(good: str, other: str) -> dict[str, str]:
    lines = key_lines(good)
    body = "\n".join(lines)
    swap = str.maketrans("ABCDEFGHabcdefgh0123", "BCDEFGHAbcdefgha1230")
    flipped = "\n".join(x[:10] + x[10:30].translate(swap) + x[30:] for x in lines)
    return {
        "flipped": good.replace(body, flipped),
        "truncated": good.replace(body, "\n".join(lines[: len(lines) // 2])),
        "bad base64": good.replace(body, "\n".join(x[:20] + "!*%" + x[23:] for x in lines)),
        "mismatched": good.replace(body, "\n".join(key_lines(other))),
        "no end line": good.split("-----END", 1)[0] if "PRIVATE KEY" in good.split(
            "-----END CERTIFICATE-----", 1)[1] else good,
    }


def test_private_key_never_appears_in_error_messages(stud, backend, pki, tmp_path):
    """PEMs whose key is corrupted (flipped characters, truncated, bad base64, another
    key, no END line) fail -t, start-up and reload with a message naming the file that
    quotes no line of the key's base64 (nor any 12-character piece of one)."""
    good = Path(pki.make(["localhost"], name="secretkey")).read_text()
    other = Path(pki.make(["localhost"], name="otherkey")).read_text()
    secret = key_lines(good) + key_lines(other)
    assert len(key_lines(good)) >= 3
    bport = backend("echo")
    pem = tmp_path / "broken.pem"
    pem.write_text(good)
    s = stud(str(pem), backend_port=bport)
    for name, text in corrupt_variants(good, other).items():
        assert text != good, name
        secret_here = secret + key_lines(text)
        pem.write_text(text)
        for mode in (["-t"], ["-f", f"127.0.0.1,{free_port()}", "-b", f"127.0.0.1,{bport}"]):
            out = subprocess.run(STUD + mode + [str(pem)], capture_output=True, text=True,
                                 timeout=30)
            assert out.returncode == 1, (name, mode, out.stdout, out.stderr)
            msg = out.stderr.strip()
            assert str(pem) in msg and "\n" not in msg, (name, msg)
            assert not leaks(out.stdout + out.stderr, secret_here), (name, msg)
            print(f"{name:12} {mode[0]}: {msg}")
        n = s.output().count("reload failed")
        os.kill(s.pid, signal.SIGHUP)
        wait_for(lambda n=n: s.output().count("reload failed") == n + 1)
    assert not leaks(s.output(), secret)
    echo_once_plain(s.port)  # still serving the good key
