"""One bounded, blocking HTTP/1.1 exchange over plain http://: what the master's fetchers (OCSP
responses in stud.ocsp, CRLs in stud.crl) share.

Bounded in every way a far server could stretch it: a connect timeout, then one deadline for
the whole answer (a server that trickles bytes cannot hold the caller longer), and a size cap
(one that sends without end cannot make us buffer without limit). No redirects, no TLS, no
keep-alive: each caller says why in its own fetch().
"""

from __future__ import annotations

import http.client
import io
import socket
import time
import urllib.parse
from collections.abc import Callable

__all__ = ["exchange"]

_MAX_HEADERS = 16 * 1024  # what the status line and headers may take on top of the body


class _Received:
    """What http.client parses a response from: the bytes already read, as a socket's file."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, *_: object, **__: object) -> io.BytesIO:
        return io.BytesIO(self._data)


def _read_to_eof(sock: socket.socket, deadline: float, limit: int) -> bytes:
    """What the peer sends until it closes, cut off past ``limit`` bytes; TimeoutError at the
    deadline."""
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            return bytes(buf)


def _host_header(parts: urllib.parse.SplitResult) -> str:
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else str(parts.hostname)
    return f"{host}:{parts.port}" if parts.port else host


def _status(resp: http.client.HTTPResponse) -> str:
    why = f"HTTP {resp.status} {resp.reason}".rstrip()
    location = resp.getheader("Location")
    if 300 <= resp.status < 400 and location:
        why += f" to {location} (redirects are not followed: configure that URL)"
    return why


def exchange(url: str, method: str, body: bytes | None, headers: dict[str, str], *,
             connect_timeout: float, response_timeout: float, max_size: int,
             error: Callable[[str], Exception], content_type: str | None = None) -> bytes:
    """The body of a 200 answer to ``method url`` (with ``body``, ``headers``; Host and
    Connection: close are added).

    ``connect_timeout`` for the TCP connection, then ``response_timeout`` for all of the rest,
    at most ``max_size`` bytes of body. The host name is resolved first, which no timeout covers
    (getaddrinfo has none). ``content_type``, if given, is the only one accepted. Raises
    ``error(reason)``, reason one line: not an http:// URL, refused, timed out, not HTTP 200,
    another content type, too big, cut short or empty.
    """
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or 80
    except ValueError:
        raise error("bad port") from None
    if parts.scheme.lower() != "http" or not parts.hostname:
        raise error("not an http:// URL")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = http.client.HTTPConnection(parts.hostname, port, timeout=connect_timeout)
    try:
        try:
            conn.connect()
        except TimeoutError:
            raise error(f"connect timed out after {connect_timeout:g} s") from None
        except OSError as e:
            raise error(f"cannot connect: {e.strerror or e}") from None
        sock = conn.sock
        deadline = time.monotonic() + response_timeout
        sock.settimeout(response_timeout)
        conn.request(method, path, body=body, headers={
            "Host": _host_header(parts), **headers, "Connection": "close"})
        raw = _read_to_eof(sock, deadline, max_size + _MAX_HEADERS)
        if len(raw) > max_size + _MAX_HEADERS:
            raise error(f"response larger than {max_size} bytes")
        resp = http.client.HTTPResponse(_Received(raw))  # type: ignore[arg-type]
        resp.begin()
        if resp.status != 200:
            raise error(_status(resp))
        ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if content_type is not None and ctype != content_type:
            raise error(f"content type {ctype or 'missing'!r}, not {content_type}")
        data = resp.read()
    except TimeoutError:
        raise error(f"no complete response within {response_timeout:g} s") from None
    except http.client.IncompleteRead as e:
        raise error(f"response cut short ({len(e.partial)} bytes)") from None
    except (OSError, http.client.HTTPException) as e:
        raise error(f"{type(e).__name__}: {e}") from None
    finally:
        conn.close()
    if len(data) > max_size:
        raise error(f"response larger than {max_size} bytes")
    if not data:
        raise error("empty response")
    return data
