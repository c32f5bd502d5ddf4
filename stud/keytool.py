"""``stud ticket-keys``: write session-ticket key files and seeds.

  stud ticket-keys new --format=haproxy|nginx [--size=48|80] FILE
  stud ticket-keys rotate --format=haproxy FILE
  stud ticket-keys rotate --format=nginx FILE [OLDER_FILE ...]
  stud ticket-keys seed FILE

Files are written whole or not at all (a temporary file renamed over the old one), mode 0600.
``rotate`` follows each format's owner: HAProxy's file gets a new last line (the one before it,
the previous newest, now encrypts, so every node has the new key before any uses it); nginx's
keys move down the files given (FILE's to OLDER_FILE, ...; the last is dropped) and FILE gets a
new one, which encrypts. Every stud that reads the files picks the change up by itself.
"""

from __future__ import annotations

import argparse
import os
import sys

from stud import ticketkeys
from stud.ticketkeys import HAPROXY_RING, KeyFileError
from stud.tickets import read_key_file

USAGE = __doc__.split("\n\n")[1].strip()


def write_atomically(path: str, data: bytes) -> None:
    """path holds data, mode 0600, or is left as it was."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _refuse_existing(path: str, force: bool) -> None:
    if os.path.exists(path) and not force:
        raise KeyFileError(f"{path}: exists (--force replaces it; every node that uses it must "
                           "then get the new one)")


def new(fmt: str, size: int, files: list[str], force: bool) -> None:
    for path in files:
        _refuse_existing(path, force)
    if fmt == "haproxy":
        keys = [ticketkeys.new_key(size) for _ in range(HAPROXY_RING)]
        write_atomically(files[0], ticketkeys.format_haproxy(keys))
    else:
        for path in files:
            write_atomically(path, ticketkeys.to_bytes(ticketkeys.new_key(size), "nginx"))


def rotate(fmt: str, files: list[str]) -> None:
    if fmt == "haproxy":
        ring = ticketkeys.parse_haproxy(read_key_file(files[0]), files[0])
        oldest_first = list(reversed(ring.keys))
        fresh = ticketkeys.new_key(oldest_first[-1].size)
        write_atomically(files[0], ticketkeys.format_haproxy([*oldest_first, fresh]
                                                             [-HAPROXY_RING:]))
        return
    contents = [read_key_file(p) for p in files]
    ticketkeys.parse_raw(list(zip(files, contents, strict=True)))  # all valid before any moves
    for path, data in reversed(list(zip(files[1:], contents[:-1], strict=True))):
        write_atomically(path, data)
    write_atomically(files[0], ticketkeys.to_bytes(ticketkeys.new_key(len(contents[0])), "nginx"))


def seed(path: str, force: bool) -> None:
    _refuse_existing(path, force)
    write_atomically(path, ticketkeys.format_seed(os.urandom(ticketkeys.SEED_LEN)))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="stud ticket-keys", usage=USAGE)
    p.add_argument("action", choices=("new", "rotate", "seed"))
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--format", choices=("haproxy", "nginx"), default="haproxy")
    p.add_argument("--size", type=int, choices=ticketkeys.SIZES, default=80)
    p.add_argument("--force", action="store_true", help="replace an existing file (new, seed)")
    a = p.parse_args(argv)
    if (a.action == "seed" or a.format == "haproxy") and len(a.files) != 1:
        p.error(f"{a.action} --format={a.format} takes one FILE" if a.action != "seed" else
                "seed takes one FILE")
    try:
        if a.action == "new":
            new(a.format, a.size, a.files, a.force)
        elif a.action == "rotate":
            rotate(a.format, a.files)
        else:
            seed(a.files[0], a.force)
    except (KeyFileError, OSError) as e:
        print(f"stud ticket-keys: {e}", file=sys.stderr)
        return 1
    return 0
