"""Test backends, run in a subprocess: ``python backend.py MODE PORT [FILE]``.

Modes:
  echo     echo every byte; on EOF, shut down the write side after echoing
  record   append every received byte to FILE (one file per connection: FILE.N), reply
           b"OK\n" when the client half-closes, then close
  greet    send b"220 hello\r\n" at once, then echo
  reply    read until EOF, then send 1 MiB of a pattern and close (half-close delivery)
  slow     read a request line, wait 1.5 s, answer b"slow done\n" and close
  sink     accept and never read
It prints "ready PORT" on stdout once listening (PORT 0 picks one). Each connection counts in
FILE.count when FILE is given.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

PATTERN = bytes(range(256)) * 4096  # 1 MiB


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


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    path = sys.argv[3] if len(sys.argv) > 3 else None
    family = socket.AF_INET6 if len(sys.argv) > 4 and sys.argv[4] == "6" else socket.AF_INET
    lsock = socket.socket(family, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", port))
    lsock.listen(128)
    print(f"ready {lsock.getsockname()[1]}", flush=True)
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
