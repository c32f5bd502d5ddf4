"""The ``stud`` command: parse options, then check (-t) or run the daemon."""

from __future__ import annotations

import sys

from stud import config, master


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        cfg = config.parse_args(args)
    except config.Exit as e:
        sys.stdout.write(e.text)
        return 0
    except config.ConfigError as e:
        print(f"stud: {one_line(e)}", file=sys.stderr)
        return 1
    try:
        master.configure_log(cfg)
        if cfg.test:
            master.prepare(cfg)  # everything start-up checks, short of binding
            print("stud configuration looks ok.")
            return 0
        return master.run(args, cfg)
    except config.ConfigError as e:  # start-up errors: before any daemonizing
        print(f"stud: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def one_line(e: Exception) -> str:
    """Errors are one line even when they quote an argument with a line break in it."""
    return str(e).replace("\r", "\\r").replace("\n", "\\n")
