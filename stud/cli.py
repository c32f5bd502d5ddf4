"""The ``stud`` command: parse options, then check (-t) or run the daemon; ``stud
ticket-keys ...`` writes ticket-key files (stud.keytool)."""

from __future__ import annotations

import os
import sys

from stud import config, daemon, keytool, startup, tls
from stud.arbiter import Arbiter
from stud.config import Config
from stud.log import log


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["ticket-keys"]:
        return keytool.main(args[1:])
    try:
        cfg = config.parse_args(args)
    except config.VersionAsked as e:
        sys.stdout.write(e.text + version_details())
        return 0
    except config.Exit as e:
        sys.stdout.write(e.text)
        return 0
    except config.ConfigError as e:
        print(f"stud: {one_line(e)}", file=sys.stderr)
        return 1
    try:
        daemon.configure_log(cfg)
        if tls.SSLEXT_MISSING:
            log.error(f"{{core}} {tls.SSLEXT_MISSING}; connections run on the pure-Python path "
                      "(see README: Differences)")
        if cfg.ssl_engine:
            tls.load_engine(cfg.ssl_engine)
        if cfg.test:
            setup = startup.prepare(cfg)  # everything start-up checks, short of binding
            skipped = setup.served.skipped if setup.served else []
            for why in skipped:
                print(f"stud: skipped: {one_line(why)}", file=sys.stderr)
            print("stud configuration looks ok" + (f"; {len(skipped)} certificate file(s) of "
                                                   "pem-dir will be skipped." if skipped else "."))
            return 0
        return run(args, cfg)
    except config.ConfigError as e:  # start-up errors: before any daemonizing
        print(f"stud: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def run(argv: list[str], cfg: Config) -> int:
    """Start the daemon; returns the exit status. argv is kept for reloads."""
    daemon.raise_fd_limit()
    arbiter = Arbiter(argv, cfg)
    if os.getuid() == 0 and not cfg.user:
        log.error("{core} WARNING: workers will run as root; use --user to drop privileges.")
    pidfile = daemon.Pidfile(cfg.pidfile)
    if cfg.daemon:
        daemon.daemonize()
    pidfile.write()
    try:
        return arbiter.run()
    finally:
        pidfile.remove()


def version_details() -> str:
    """What --version adds: Python, OpenSSL, the data path and the compiled modules."""
    import importlib
    import platform
    import ssl

    from stud import relay

    built = []
    for name in ("_flow", "_sesscache", "_ticketkeys"):
        try:
            importlib.import_module(f"stud.{name}")
            built.append(f"{name} yes")
        except ImportError:
            built.append(f"{name} no")
    return (f"Python {platform.python_version()} ({platform.python_implementation()})\n"
            f"{ssl.OPENSSL_VERSION} (the libssl of Python's ssl module)\n"
            f"data path: {relay.data_path()}\n"
            f"compiled modules: {', '.join(built)}\n")


def one_line(e: Exception) -> str:
    """Errors are one line even when they quote an argument with a line break in it."""
    return str(e).replace("\r", "\\r").replace("\n", "\\n")
