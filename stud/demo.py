"""``stud-demo``: stud serving TLS on localhost in front of a tiny backend, in one command.

It generates a self-signed ECDSA certificate for localhost, starts a small HTTP backend on
127.0.0.1:8000 (a thread in this process) and runs the real stud in the foreground on
127.0.0.1:8443, so ``curl -k https://127.0.0.1:8443/`` works at once. Ctrl-C or SIGTERM stops both.
"""

from __future__ import annotations

import argparse
import http.server
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from stud.selfsigned import make_pem


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        body = b"Hello from the backend, through stud.\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        pass  # stud logs every connection already


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8443, help="TLS port (default 8443)")
    p.add_argument("--backend-port", type=int, default=8000, help="backend port (default 8000)")
    args, extra = p.parse_known_args(argv)
    try:
        backend = http.server.ThreadingHTTPServer(("127.0.0.1", args.backend_port), Hello)
    except OSError as e:
        print(f"stud-demo: cannot listen on 127.0.0.1:{args.backend_port}: {e.strerror} "
              "(choose another with --backend-port)", file=sys.stderr)
        return 1
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="stud-demo-") as tmp:
        pem = Path(tmp) / "localhost.pem"
        make_pem(pem, ["localhost", "127.0.0.1"])
        cmd = [sys.executable, "-m", "stud", "-f", f"127.0.0.1,{args.port}",
               "-b", f"127.0.0.1,{args.backend_port}", *extra, str(pem)]
        print(f"stud-demo: backend on 127.0.0.1:{args.backend_port}, stud on "
              f"127.0.0.1:{args.port}\nstud-demo: try   curl -k https://127.0.0.1:{args.port}/"
              "\nstud-demo: Ctrl-C stops it.", flush=True)
        proc = subprocess.Popen(cmd)
        # SIGTERM (a service manager, kill) must stop stud too, as Ctrl-C does.
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            return proc.wait(40)
        finally:
            backend.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
