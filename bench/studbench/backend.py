"""The backend behind every proxy: nginx on the client CPU (pyload's backend without nginx or
with --pure-python)."""

from __future__ import annotations

import shlex
from pathlib import Path

from .clients import pyload_argv
from .common import CLIENT_CPUS, HOST
from .context import Bench
from .prepare import which
from .proxies import free_port, tcp_ready


def nginx_conf(work: Path, port: int, nofile: int, workers: int = 1) -> Path:
    """One process, or a master and `workers` workers sharing the port (reuseport: each
    its own accept queue, so that none holds most connections)."""
    www = work / "www"
    conf = work / "nginx.conf"
    reuse = " reuseport" if workers > 1 else ""
    conf.write_text(
        f"""
daemon off;
master_process {"on" if workers > 1 else "off"};
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections {nofile}; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-tmp/body;
    proxy_temp_path {work}/nginx-tmp/proxy;
    fastcgi_temp_path {work}/nginx-tmp/fastcgi;
    uwsgi_temp_path {work}/nginx-tmp/uwsgi;
    scgi_temp_path {work}/nginx-tmp/scgi;
    keepalive_timeout 3600s;
    keepalive_requests 1000000000;
    sendfile on;
    tcp_nopush on;
    server {{
        listen {HOST}:{port} backlog=4096{reuse};
        root {www};
        location = / {{ default_type text/plain; return 200 "hello world\\n"; }}
        location = /big {{ default_type application/octet-stream; }}
    }}
}}
"""
    )
    (work / "nginx-tmp").mkdir(exist_ok=True)
    return conf


def start_backend(b: Bench) -> None:
    """nginx on the client CPU (pyload's backend without nginx or with --pure-python)."""
    b.backend_port = free_port(b.ports)
    nginx = None if b.args.pure_python else which("nginx")
    if nginx:
        conf = nginx_conf(b.work, b.backend_port, b.args.nofile)
        argv = [nginx, "-p", str(b.work), "-c", str(conf)]
        b.backend_kind = "nginx"
    else:
        argv = pyload_argv("backend", b.backend_port, "--big", str(b.work / "www/big"))
        b.backend_kind = "pyload backend"
    b.commands["backend"] = shlex.join(argv)
    b.backend = b.procs.spawn("backend", argv, cpus=CLIENT_CPUS, log=b.work / "backend.log")
    if not tcp_ready(b.backend_port, 15):
        raise RuntimeError(f"backend did not start:\n{b.backend.log_tail()}")
