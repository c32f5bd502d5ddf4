"""Address strings of stud's options: ``HOST,PORT`` and ``[HOST]:PORT`` (IPv6 included).

The original accepted both forms with several memory-safety and parsing bugs (unchecked port
separator, 5-character port truncation, 150-byte overflow); here every malformed string is a
one-line :class:`AddrError`.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

MAX_HOST = 255  # longest DNS name; anything longer is a typo or an attack on the parser
MAX_UNIX_PATH = 107  # sun_path holds 108 bytes with the NUL


class AddrError(ValueError):
    """An address string that cannot be used; the message is one line."""


@dataclass(frozen=True)
class Addr:
    """A parsed address. ``host`` is None for the wildcard ``*``."""

    host: str | None
    port: int

    def __str__(self) -> str:
        return f"[{'*' if self.host is None else self.host}]:{self.port}"


@dataclass(frozen=True)
class Unix:
    """A UNIX socket's path (a backend: ``-b /run/varnish.sock``, as hitch)."""

    path: str

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True)
class Named:
    """A frontend on the socket systemd passes under this name (its FileDescriptorName=):
    ``systemd:NAME``, as ghostunnel writes it."""

    name: str

    def __str__(self) -> str:
        return f"{SYSTEMD_PREFIX}{self.name}"


SYSTEMD_PREFIX = "systemd:"
MAX_FDNAME = 255  # sd_pid_notify_with_fds(3): FDNAME= takes at most 255 characters


def parse_frontend(text: str) -> Addr | Named:
    """Where a frontend listens: an address (the wildcard ``*`` allowed) or ``systemd:NAME``."""
    s = text.strip()
    if not s.startswith(SYSTEMD_PREFIX):
        return parse(text, wildcard=True)
    name = s[len(SYSTEMD_PREFIX):]
    if not name or len(name) > MAX_FDNAME or ":" in name or not (name.isascii()
                                                                  and name.isprintable()):
        raise AddrError(f"invalid frontend '{text[:60]}': systemd:NAME takes a socket's "
                        f"FileDescriptorName= (1-{MAX_FDNAME} printable ASCII characters, "
                        "no ':')")
    return Named(name)


def parse_backend(text: str) -> Addr | Unix:
    """A backend: an absolute path is a UNIX socket, anything else an address."""
    s = text.strip()
    if s.startswith("/"):
        if "\0" in s or len(s.encode()) > MAX_UNIX_PATH:
            raise AddrError(f"invalid UNIX socket path '{text[:60]}': NUL, or longer than "
                            f"{MAX_UNIX_PATH} bytes")
        return Unix(s)
    return parse(text)


def parse(text: str, *, wildcard: bool = False) -> Addr:
    """Parse ``HOST,PORT``, ``[HOST]:PORT`` or ``HOST:PORT`` (host without colons)."""
    s = text.strip()
    if s.startswith("["):
        close = s.find("]")
        if close < 0:
            raise AddrError(f"invalid address '{text}': missing ']'")
        host, rest = s[1:close], s[close + 1 :]
        if not rest.startswith(":"):
            raise AddrError(f"invalid address '{text}': expected ':PORT' after ']'")
        port = rest[1:]
    elif "," in s:
        host, _, port = s.rpartition(",")
    elif s.count(":") == 1:
        host, _, port = s.partition(":")
    elif ":" in s:
        raise AddrError(f"invalid address '{text}': write IPv6 addresses as [ADDR]:PORT")
    else:
        raise AddrError(f"invalid address '{text}': expected HOST,PORT or [HOST]:PORT")
    host = host.strip()
    if not host:
        raise AddrError(f"invalid address '{text}': empty host")
    if len(host) > MAX_HOST:
        raise AddrError(f"invalid address '{text[:40]}...': host longer than {MAX_HOST} characters")
    if host == "*":
        if not wildcard:
            raise AddrError(f"invalid address '{text}': wildcards are not allowed here")
        return Addr(None, parse_port(port, text))
    if any(c in "[] " or not c.isprintable() for c in host):
        raise AddrError(f"invalid address '{text}': space, bracket or control character in host")
    return Addr(host, parse_port(port, text))


def parse_port(port: str, text: str) -> int:
    p = port.strip()
    if not p.isascii() or not p.isdigit() or len(p) > 5 or not 1 <= int(p) <= 65535:
        raise AddrError(f"invalid port '{port}' in '{text}': must be 1-65535")
    return int(p)


def has_ipv6() -> bool:
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True


def resolve(addr: Addr | Unix, *, passive: bool = False) -> tuple[int, tuple | str]:
    """Resolve once, as stud did: the first getaddrinfo result wins.

    The wildcard binds every address: ``[::]`` dual-stack where IPv6 exists, else ``0.0.0.0``.
    A UNIX socket is (AF_UNIX, its path).
    """
    if isinstance(addr, Unix):
        return socket.AF_UNIX, addr.path
    if addr.host is None:
        if has_ipv6():
            return socket.AF_INET6, ("::", addr.port, 0, 0)
        return socket.AF_INET, ("0.0.0.0", addr.port)
    flags = socket.AI_PASSIVE if passive else 0
    try:
        infos = socket.getaddrinfo(addr.host, addr.port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                                   socket.IPPROTO_TCP, flags)
    except socket.gaierror as e:
        raise AddrError(f"cannot resolve '{addr.host}': {e.strerror}") from None
    except ValueError as e:  # UnicodeError from IDNA: an empty or over-long label ('a..b')
        raise AddrError(f"cannot resolve '{addr.host}': invalid host name ({e})") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr
