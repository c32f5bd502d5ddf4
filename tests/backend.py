"""Test backends, run in a subprocess: ``python backend.py MODE PORT [FILE]``.

Modes:
  echo     echo every byte; on EOF, shut down the write side after echoing
  record   append every received byte to FILE (one file per connection: FILE.N), reply
           b"OK\n" when the client half-closes, then close
  greet    send b"220 hello\r\n" at once, then echo
  reply    read until EOF, then send 1 MiB of a pattern and close (half-close delivery)
  slow     read a request line, wait 1.5 s, answer b"slow done\n" and close
  sink     accept and never read
  multi    read one command line, then act on it (one stud, healthy and faulty connections):
             ECHO        echo every byte (what followed the line too); on EOF, shut down writing
             RESET N     send N bytes of the pattern, then close with SO_LINGER 0 (an RST)
             SINK        never read again, never answer (held 60 s)
             HANG        read and discard until EOF, never answer; then write FILE.eof.N
             BIG N       send N bytes of the pattern, then close
             SLOW        wait 1.5 s, answer b"slow done\n" and close
             DRIP        send b"." every 0.3 s, 12 times, then close (never reads)
             STALL S     never read; after S seconds close with SO_LINGER 0 (an RST)
             DIGEST      read until EOF, pausing 5 ms every 256 KiB (slower than a client
                         that sends all it can); then answer b"LENGTH SHA256HEX\n" of what
                         came (what followed the line too) and close
  aecho    echo on one asyncio (uvloop) event loop, listen backlog 4096: thousands of
           concurrent connections without a thread each
It prints "ready PORT" on stdout once listening (PORT 0 picks one). Each connection counts in
FILE.count when FILE is given.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import struct
import sys
import threading
import time

PATTERN = bytes(range(256)) * 4096  # 1 MiB


def pattern(n: int) -> bytes:
    """The first n bytes of PATTERN repeated (pattern(n) == pattern(m)[:n] for n <= m)."""
    return PATTERN * (n // len(PATTERN)) + PATTERN[: n % len(PATTERN)]


def recv_all(conn: socket.socket) -> bytes:
    chunks = []
    while True:
        data = conn.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def serve(mode: str, conn: socket.socket, path: str | None, n: int) -> None:
    with conn:
        if mode == "echo":
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
            time.sleep(0.2)
        elif mode == "record":
            data = recv_all(conn)
            with open(f"{path}.{n}", "wb") as f:
                f.write(data)
            conn.sendall(b"OK\n")
        elif mode == "greet":
            conn.sendall(b"220 hello\r\n")
            while data := conn.recv(65536):
                conn.sendall(data)
        elif mode == "reply":
            recv_all(conn)
            conn.sendall(PATTERN)
        elif mode == "slow":
            conn.recv(65536)
            time.sleep(1.5)
            conn.sendall(b"slow done\n")
        elif mode == "sink":
            time.sleep(60)
        elif mode == "multi":
            multi(conn, path, n)


def send_pattern(conn: socket.socket, n: int) -> None:
    sent = 0
    while sent < n:
        chunk = PATTERN[: min(len(PATTERN), n - sent)]
        conn.sendall(chunk)
        sent += len(chunk)


def multi(conn: socket.socket, path: str | None, n: int) -> None:
    buf = b""
    while b"\n" not in buf and len(buf) < 256:
        data = conn.recv(256)
        if not data:
            return
        buf += data
    line, _, rest = buf.partition(b"\n")
    cmd, _, arg = line.decode(errors="replace").strip().partition(" ")
    if cmd == "ECHO":
        if rest:
            conn.sendall(rest)
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        time.sleep(0.2)
    elif cmd == "RESET":
        send_pattern(conn, int(arg))
        time.sleep(0.2)  # let the bytes leave before the RST
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif cmd == "SINK":
        time.sleep(60)
    elif cmd == "HANG":
        while conn.recv(65536):
            pass
        if path:
            with open(f"{path}.eof.{n}", "w") as f:
                f.write(str(time.monotonic()))
    elif cmd == "BIG":
        send_pattern(conn, int(arg))
    elif cmd == "SLOW":
        time.sleep(1.5)
        conn.sendall(b"slow done\n")
    elif cmd == "STALL":
        time.sleep(float(arg))
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif cmd == "DIGEST":
        h, got = hashlib.sha256(rest), len(rest)
        while data := conn.recv(65536):
            h.update(data)
            if (got + len(data)) >> 18 != got >> 18:
                time.sleep(0.005)
            got += len(data)
        conn.sendall(f"{got} {h.hexdigest()}\n".encode())
    elif cmd == "DRIP":
        for _ in range(12):
            conn.sendall(b".")
            time.sleep(0.3)


async def aecho(lsock: socket.socket) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, sock=lsock, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    path = sys.argv[3] if len(sys.argv) > 3 else None
    family = socket.AF_INET6 if len(sys.argv) > 4 and sys.argv[4] == "6" else socket.AF_INET
    lsock = socket.socket(family, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", port))
    lsock.listen(4096 if mode == "aecho" else 128)
    print(f"ready {lsock.getsockname()[1]}", flush=True)
    if mode == "aecho":
        try:
            import uvloop
            uvloop.run(aecho(lsock))
        except ImportError:
            asyncio.run(aecho(lsock))
        return
    n = 0
    while True:
        conn, _ = lsock.accept()
        n += 1
        if path:
            with open(f"{path}.count", "w") as f:
                f.write(str(n))
        threading.Thread(target=serve, args=(mode, conn, path, n), daemon=True).start()


if __name__ == "__main__":
    main()
