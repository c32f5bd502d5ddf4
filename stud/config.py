"""stud's options: one declarative table drives argv, the config file, --default-config and help.

Semantics follow the original stud 0.3 (short flags, defaults, ``--config`` read at its position
in argv, the last PEM is the default certificate) with hitch's later spellings accepted. Where
the original misparsed or crashed, we raise :class:`ConfigError` with a one-line message that
names the option, or the file and line.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from stud import __version__, addr

TRUE = frozenset({"on", "yes", "y", "true", "t", "1"})
FALSE = frozenset({"off", "no", "n", "false", "f", "0"})
FACILITIES = ("auth", "authpriv", "cron", "daemon", "ftp", "local0", "local1", "local2",
              "local3", "local4", "local5", "local6", "local7", "lpr", "mail", "news", "user",
              "uucp")
PROTOS = ("TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3")
MODERN = "TLSv1.2 TLSv1.3"
LOG_LEVELS = ("error", "info", "conn", "debug")
MAX_PEERS = 15
MAX_KEEPIDLE = 32767   # Linux refuses a longer TCP_KEEPIDLE (every client would be dropped)
MAX_INT = 2**31 - 1    # listen() takes a C int
CLIENT_ADDR_MODES = ("write-ip", "write-proxy", "write-proxy-v2", "proxy-proxy")


class ConfigError(Exception):
    """A configuration error: the message is one line naming the option or file and line."""


class Exit(Exception):  # noqa: N818 - a control-flow signal, not an error
    """--help, --version or --default-config asked to print something and exit 0."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(frozen=True)
class Option:
    name: str                 # long option and config-file key
    kind: str                 # bool, int, float, str, path, dir, addr, action
    default: Any
    help: str
    short: str | None = None
    metavar: str = ""
    section: str = "OTHER OPTIONS"
    aliases: tuple[str, ...] = ()
    cli: bool = True
    file: bool = True
    repeat: bool = False      # values accumulate (pem-file, shared-cache-peer, frontend)
    check: Callable[[Any], str | None] | None = None  # returns a reason when the value is bad
    wildcard: bool = False    # addr: '*' allowed

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "must not be negative"


def _above_zero(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _backlog(v: int) -> str | None:
    return None if -1 <= v <= MAX_INT else f"must be -1 (system maximum) to {MAX_INT}"


def _keepalive(v: int) -> str | None:
    return None if 0 <= v <= MAX_KEEPIDLE else f"must be 0 to {MAX_KEEPIDLE}"


def _log_level(v: str) -> str | None:
    return None if v in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)}"


def _facility(v: str) -> str | None:
    return None if v in FACILITIES else f"invalid facility (one of {', '.join(FACILITIES)})"


def _user(v: str) -> str | None:
    try:
        pwd.getpwnam(v)
    except (KeyError, ValueError):  # ValueError: an embedded NUL
        return "no such user"
    return None


def _group(v: str) -> str | None:
    try:
        grp.getgrnam(v)
    except (KeyError, ValueError):
        return "no such group"
    return None


def _protos(v: str) -> str | None:
    toks = v.replace(",", " ").split()
    if not toks:
        return "empty protocol list"
    for t in toks:
        if t == "SSLv3":
            return "SSLv3 is not supported (it is broken and gone from OpenSSL)"
        if t not in PROTOS:
            return f"unknown protocol '{t}' (use {', '.join(PROTOS)})"
    return None


def _workers(v: str) -> str | None:
    if v == "auto" or (v.isascii() and v.isdigit() and int(v) >= 1):
        return None
    return "must be a positive number or 'auto'"


def _peers(v: list) -> str | None:
    return None if len(v) <= MAX_PEERS else f"at most {MAX_PEERS} shared cache peers"


def _shared_cache_if(v: str) -> str | None:
    """stud's IFACE[,TTL]: '*', an interface name, an IPv4 address or an index; TTL 0-255."""
    iface, comma, ttl = (p.strip() for p in v.partition(","))
    if comma and not (ttl.isascii() and ttl.isdigit() and len(ttl) <= 3 and int(ttl) <= 255):
        return f"invalid TTL '{ttl}' (0-255)"
    if iface == "*":
        return None
    try:
        if iface[:1].isalpha():
            socket.if_nametoindex(iface)
        elif "." in iface:
            ipaddress.IPv4Address(iface)
        else:
            socket.if_indextoname(int(iface))
    except (OSError, ValueError, OverflowError):
        return f"no such interface '{iface}' (IFACE[,TTL]: a name, IPv4 address, index or '*')"
    return None


Op = Option
ENC, SOCK, PERF, TIME, LIMITS, SEC, LOG = (
    "ENCRYPTION METHODS", "SOCKET", "PERFORMANCE", "TIMEOUTS", "LIMITS AND RELOAD", "SECURITY",
    "LOGGING")
OPTIONS: tuple[Option, ...] = (
    Op("config", "action", None, "Load configuration from specified file.", metavar="FILE",
      section="CONFIGURATION", file=False),
    Op("default-config", "action", None, "Prints default configuration to stdout.",
      section="CONFIGURATION", file=False),
    Op("tls", "action", None, "TLSv1.2 and TLSv1.3 (default)", section=ENC),
    Op("ssl", "action", None, "TLSv1.0 to TLSv1.3 (SSLv3 is gone)", section=ENC),
    Op("tls-protos", "str", MODERN, "TLS versions to accept", metavar="LIST", section=ENC,
      check=_protos),
    Op("ciphers", "str", "", "Sets allowed TLS <= 1.2 ciphers", short="c", metavar="SUITE",
      section=ENC),
    Op("ciphersuites", "str", "", "Sets allowed TLS 1.3 cipher suites", metavar="SUITES",
      section=ENC),
    Op("ssl-engine", "str", "", "Sets OpenSSL engine", short="e", metavar="NAME", section=ENC),
    Op("prefer-server-ciphers", "bool", False, "Prefer server list order", short="O",
      section=ENC),
    Op("ec-curve", "str", "", "ECDHE groups, e.g. prime256v1 (Default: X25519:P-256)",
      metavar="NAME", section=ENC, aliases=("ecdh-curve",)),
    Op("alpn-protos", "str", "", "ALPN protocols in server order, e.g. h2,http/1.1",
      metavar="LIST", section=ENC),
    Op("sni-nomatch-abort", "bool", False, "Refuse unknown SNI names (unrecognized_name alert)",
      section=ENC),
    Op("client", "bool", False, "Enable client proxy mode", section=SOCK),
    Op("backend", "addr", addr.Addr("127.0.0.1", 8000), "Backend [connect]", short="b",
      metavar="HOST,PORT", section=SOCK),
    Op("frontend", "addr", (addr.Addr(None, 8443),), "Frontend [bind], repeatable", short="f",
      metavar="HOST,PORT", section=SOCK, repeat=True, wildcard=True),
    Op("shared-cache-listen", "addr", None, "Accept cache updates on UDP", short="U",
      metavar="HOST,PORT", section=SOCK, wildcard=True),
    Op("shared-cache-peer", "addr", (), "Send cache updates to peer (repeatable)", short="P",
      metavar="HOST,PORT", section=SOCK, repeat=True, check=_peers),
    Op("shared-cache-if", "str", "", "Multicast interface for cache updates", short="M",
      metavar="IFACE[,TTL]", section=SOCK, check=_shared_cache_if),
    Op("workers", "str", "1", "Number of worker processes, or auto", short="n", metavar="NUM",
      section=PERF, check=_workers),
    Op("backlog", "int", 100, "Set listen backlog size", short="B", metavar="NUM", section=PERF,
      check=_backlog),
    Op("keepalive", "int", 3600, "TCP keepalive on client socket", short="k", metavar="SECS",
      section=PERF, check=_keepalive),
    Op("shared-cache", "int", 0, "Shared session cache size", short="C", metavar="NUM",
      section=PERF, aliases=("session-cache",), check=_non_negative),
    Op("ssl-handshake-timeout", "float", 30.0, "Close clients that do not finish TLS in time",
      metavar="SECS", section=TIME, check=_above_zero),
    Op("backend-connect-timeout", "float", 10.0, "Give up connecting to the backend",
      metavar="SECS", section=TIME, check=_above_zero),
    Op("drain-timeout", "float", 30.0, "On stop, let open connections finish for at most",
      metavar="SECS", section=TIME, check=_non_negative),
    Op("idle-timeout", "float", 0.0, "Close connections idle both ways this long (0: never)",
      metavar="SECS", section=TIME, check=_non_negative),
    Op("max-connections", "int", 0, "Per worker: stop accepting above this (0: no limit)",
      metavar="NUM", section=LIMITS, check=_non_negative),
    Op("empty-conn-limit", "int", 0, "Per client IP: delay new connections after this many "
       "that sent no data (0: off)", metavar="NUM", section=LIMITS, check=_non_negative),
    Op("empty-conn-window", "float", 120.0, "Window for counting empty connections",
       metavar="SECS", section=LIMITS, check=_above_zero),
    Op("empty-conn-delay", "float", 30.0, "How long to delay a limited client's connection",
       metavar="SECS", section=LIMITS, check=_non_negative),
    Op("reload-on-cert-change", "bool", False, "Reload by itself when a pem-file changes",
       section=LIMITS),
    Op("chroot", "dir", "", "Sets chroot directory", short="r", metavar="DIR", section=SEC),
    Op("user", "str", "", "Set uid/gid after binding the socket", short="u", metavar="USER",
      section=SEC, check=_user),
    Op("group", "str", "", "Set gid after binding the socket", short="g", metavar="GROUP",
      section=SEC, check=_group),
    Op("quiet", "bool", False, "Be quiet; emit only error messages", short="q", section=LOG),
    Op("syslog", "bool", False, "Send log message to syslog in addition to stderr/stdout",
      short="s", section=LOG),
    Op("syslog-facility", "str", "daemon", "Syslog facility to use", metavar="FACILITY",
      section=LOG, check=_facility),
    Op("log-level", "str", "info",
       "error, info, conn (one line per connection) or debug (failed handshakes too)",
       short="L", metavar="LEVEL", section=LOG, check=_log_level),
    Op("log-file", "outfile", "", "Append log lines to FILE (reopened on SIGUSR1)",
       short="l", metavar="FILE", section=LOG),
    Op("metrics", "addr", None, "Serve Prometheus metrics on this address",
       metavar="HOST,PORT", section=LOG, wildcard=True),
    Op("daemon", "bool", False, "Fork into background and become a daemon"),
    Op("pidfile", "outfile", "", "Write the master's PID to FILE", short="p", metavar="FILE"),
    Op("write-ip", "bool", False, "Write 1 octet with the IP family followed by the IP address "
      "in 4 (IPv4) or 16 (IPv6) octets (network order) to backend before the actual data"),
    Op("write-proxy", "bool", False, "Write HAProxy's PROXY v1 line before actual data",
      aliases=("write-proxy-v1",)),
    Op("write-proxy-v2", "bool", False, "Write a binary PROXY v2 header (with ALPN, SNI and "
      "TLS TLVs) before actual data"),
    Op("proxy-proxy", "bool", False, "Pass on a PROXY v1/v2 header sent by the client"),
    Op("test", "action", None, "Test configuration and exit", short="t", file=False),
    Op("version", "action", None, "Print program version and exit", short="V", file=False),
    Op("help", "action", None, "This help message", short="h", file=False),
    Op("pem-file", "path", (), "x509 certificate and key file(s); the last one is the default",
      metavar="PEM", cli=False, repeat=True),
)
BY_NAME: dict[str, Option] = {n: o for o in OPTIONS for n in (o.name, *o.aliases)}
BY_SHORT: dict[str, Option] = {o.short: o for o in OPTIONS if o.short}


class Config:
    """Parsed settings; one attribute per option (dashes become underscores)."""

    def __init__(self) -> None:
        for o in OPTIONS:
            if o.kind != "action":
                setattr(self, o.dest, o.default)
        self.test = False
        self.config_file: str | None = None
        self.cli_protocol: str | None = None   # --tls/--ssl on the command line win over files
        self._repeat_source: dict[str, object] = {}

    @property
    def client_addr_mode(self) -> str | None:
        """Which of write-ip / write-proxy / write-proxy-v2 / proxy-proxy is on, if any."""
        on = [m for m in CLIENT_ADDR_MODES if getattr(self, m.replace("-", "_"))]
        return on[0] if on else None

    @property
    def worker_count(self) -> int:
        if self.workers == "auto":
            return os.cpu_count() or 1
        return int(self.workers)

    def set(self, opt: Option, raw: str | None, source: object, base: str) -> None:
        """Set ``opt`` from ``raw`` (None: a bare flag); ``base`` anchors relative paths."""
        value = convert(opt, raw, base)
        if opt.repeat:
            old = getattr(self, opt.dest)
            # Within one source (argv or one file) values accumulate; a later source replaces an
            # earlier one, so `-f` on the command line overrides the file as in stud.
            if self._repeat_source.get(opt.name) is not source and opt.name == "frontend":
                old = ()
            self._repeat_source[opt.name] = source
            value = (*old, value) if value is not None else old
        # Defaults are valid as they are (user "" means none); anything else is checked, so
        # `--workers=` or `--tls-protos=` cannot slip through as an empty string.
        if opt.check and value is not None and value != opt.default:
            reason = opt.check(value)
            if reason:
                raise ConfigError(f"{opt.name}: '{raw}': {reason}")
        setattr(self, opt.dest, value)


def convert(opt: Option, raw: str | None, base: str) -> Any:
    """Turn option text into its typed value, raising ConfigError naming the option."""
    if opt.kind == "bool":
        if raw is None:
            return True
        low = raw.strip().lower()
        if low in TRUE:
            return True
        if low in FALSE:
            return False
        raise ConfigError(f"{opt.name}: '{raw}' is not a boolean (use on or off)")
    if raw is None:
        raise ConfigError(f"option --{opt.name} requires a value")
    if opt.kind == "int":
        try:
            return int(raw.strip(), 10)
        except ValueError:
            raise ConfigError(f"{opt.name}: '{raw}' is not an integer") from None
    if opt.kind == "float":
        try:
            return float(raw.strip())
        except ValueError:
            raise ConfigError(f"{opt.name}: '{raw}' is not a number") from None
    if opt.kind == "addr":
        if opt.repeat and raw == "":
            return None
        try:
            return addr.parse(raw, wildcard=opt.wildcard)
        except addr.AddrError as e:
            raise ConfigError(f"{opt.name}: {e}") from None
    if opt.kind in ("path", "dir", "outfile"):
        if raw == "":
            return None if opt.repeat else ""
        path = os.path.normpath(os.path.join(base, raw))
        _check_path(opt, path, raw)
        return path
    return raw


def _check_path(opt: Option, path: str, raw: str) -> None:
    if opt.kind == "outfile":
        return
    try:
        st = os.stat(path)
    except (OSError, ValueError) as e:  # ValueError: an embedded NUL
        raise ConfigError(f"{opt.name}: cannot use '{raw}': {getattr(e, 'strerror', e)}") from None
    if opt.kind == "dir" and not os.path.isdir(path):
        raise ConfigError(f"{opt.name}: '{raw}' is not a directory")
    if opt.kind == "path" and not os.path.isfile(path):
        raise ConfigError(f"{opt.name}: '{raw}' is not a regular file")
    del st


def _split_long(arg: str) -> tuple[Option, str | None]:
    name, eq, value = arg[2:].partition("=")
    opt = BY_NAME.get(name)
    if opt is None:
        # getopt_long accepts unambiguous prefixes (--front=, --back=); so do we.
        hits = {o for n, o in BY_NAME.items() if n.startswith(name)} if name else set()
        if len(hits) != 1:
            why = "ambiguous" if hits else "unrecognized"
            raise ConfigError(f"{why} option '--{name}' (see --help)")
        opt = hits.pop()
    if not opt.cli:
        raise ConfigError(f"unrecognized option '--{name}' (see --help)")
    return opt, value if eq else None


def _argv_items(argv: list[str]) -> Iterator[tuple[Option | None, str | None]]:
    """Yield (option, value) pairs, and (None, path) for positional PEM files, GNU style."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            yield from ((None, a) for a in argv[i:])
            return
        if arg.startswith("--"):
            opt, value = _split_long(arg)
            needs_value = opt.kind not in ("bool", "action") or opt.name == "config"
            if opt.kind == "action" and not needs_value and value is not None:
                raise ConfigError(f"option '--{opt.name}' doesn't allow an argument")
            if needs_value and value is None:
                if i >= len(argv):
                    raise ConfigError(f"option '--{opt.name}' requires a value")
                value, i = argv[i], i + 1
            yield opt, value
        elif arg.startswith("-") and len(arg) > 1:
            j = 1
            while j < len(arg):
                opt = BY_SHORT.get(arg[j])
                if opt is None:
                    raise ConfigError(f"invalid option '-{arg[j]}' (see --help)")
                j += 1
                if opt.kind in ("bool", "action"):
                    yield opt, None
                    continue
                if j < len(arg):
                    value = arg[j:]
                elif i < len(argv):
                    value, i = argv[i], i + 1
                else:
                    raise ConfigError(f"option '-{opt.short}' requires a value")
                yield opt, value
                break
        else:
            yield None, arg


def parse_args(argv: list[str]) -> Config:
    """Parse argv (without the program name) into a validated Config."""
    cfg = Config()
    cwd = os.getcwd()
    pems: list[str | None] = []
    for opt, value in _argv_items(argv):
        if opt is None:
            pems.append(value)
        elif opt.kind != "action":
            cfg.set(opt, value, argv, cwd)
        elif opt.name == "config":
            # As in stud: the file is read at its position, so later options override it.
            parse_file(cfg, value or "-")
        elif opt.name in ("tls", "ssl"):
            if cfg.cli_protocol and cfg.cli_protocol != opt.name:
                raise ConfigError("Options --tls and --ssl are mutually exclusive.")
            cfg.cli_protocol = opt.name
        elif opt.name == "test":
            cfg.test = True
        elif opt.name == "help":
            raise Exit(help_text(cfg))
        elif opt.name == "version":
            raise Exit(f"stud {__version__}\n")
        elif opt.name == "default-config":
            raise Exit(default_config(cfg))
    for p in pems:
        cfg.set(BY_NAME["pem-file"], p, argv, cwd)
    if cfg.cli_protocol:
        _set_protocol(cfg, cfg.cli_protocol)
    validate(cfg)
    return cfg


def _set_protocol(cfg: Config, which: str) -> None:
    if which == "ssl":
        print("stud: warning: --ssl: SSLv3 is gone; accepting TLSv1.0 to TLSv1.3 where OpenSSL "
              "allows", file=sys.stderr)
        cfg.tls_protos = " ".join(PROTOS)
    else:
        cfg.tls_protos = MODERN


def validate(cfg: Config) -> None:
    """Cross-option checks, made once after all sources are read."""
    modes = [m for m in CLIENT_ADDR_MODES if getattr(cfg, m.replace("-", "_"))]
    if len(modes) > 1:
        raise ConfigError(f"Options --{modes[0]} and --{modes[1]} are mutually exclusive.")
    if not cfg.frontend:
        raise ConfigError("frontend: no address to listen on")
    if not cfg.pem_file and not cfg.client:
        raise ConfigError("No x509 certificate PEM file specified!")
    if cfg.shared_cache_listen and not cfg.shared_cache:
        raise ConfigError("Shared cache update listener is defined, but shared cache is disabled.")
    if cfg.shared_cache_peer and not cfg.shared_cache_listen:
        raise ConfigError("shared-cache-peer needs shared-cache-listen to send updates from")
    seen = set()
    for f in cfg.frontend:
        if f in seen:
            raise ConfigError(f"frontend: {f} is listed twice")
        seen.add(f)


def _unquote(raw: str) -> tuple[str, bool]:
    """Strip one pair of matching quotes, or an unquoted value's trailing ' # comment'."""
    v = raw.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
        return v[1:-1], True
    if v[:1] in ("\"", "'"):
        close = v.find(v[0], 1)
        if close > 0 and v[close + 1 :].lstrip().startswith("#"):
            return v[1:close], True
        raise ConfigError("unbalanced quote")
    comment = re.search(r"(^|\s)#", v)  # `key = # note` has no value; `a#b` is a value
    if comment:
        v = v[: comment.start()].rstrip()
    return v, False


def parse_file(cfg: Config, path: str) -> None:
    """Read a stud config file (``key = value`` lines) into cfg; '-' reads standard input."""
    try:
        if path == "-":
            text, base, shown = sys.stdin.read(), os.getcwd(), "<stdin>"
        else:
            with open(path, encoding="utf-8-sig") as f:  # a BOM must not hide the first key
                text = f.read()
            shown = path
            base = os.path.dirname(os.path.abspath(path))
            cfg.config_file = os.path.abspath(path)
    except OSError as e:
        raise ConfigError(f"Unable to open configuration file '{path}': {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"configuration file '{path}' is not UTF-8 text") from None
    except ValueError as e:  # a NUL in the path
        raise ConfigError(f"Unable to open configuration file {path!r}: {e}") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{shown} line {lineno}"
        key, eq, raw = stripped.partition("=")
        key = key.strip()
        if not eq:
            raise ConfigError(f"{where}: expected 'key = value', got '{stripped[:60]}'")
        try:
            value, quoted = _unquote(raw)
        except ConfigError as e:
            raise ConfigError(f"{where}: {key}: {e}") from None
        if not value and not quoted:
            raise ConfigError(f"{where}: {key}: missing value (write \"\" for an empty one)")
        if value.startswith("{") and not quoted:
            raise ConfigError(f"{where}: {key}: block values are not supported")
        opt = BY_NAME.get(key)
        if opt is None or not opt.file:
            print(f"stud: warning: ignoring unknown configuration key '{key}' in {where}",
                  file=sys.stderr)
            continue
        try:
            if opt.name in ("tls", "ssl"):
                if convert(replace(opt, kind="bool"), value, base):  # errors name tls/ssl
                    _set_protocol(cfg, opt.name)
            elif value:
                cfg.set(opt, value, path, base)
            elif opt.kind in ("str", "path", "dir", "outfile", "addr"):  # "" means the default
                if not opt.repeat:
                    setattr(cfg, opt.dest, opt.default)
            else:
                raise ConfigError(f"{key}: missing value")
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def _show(opt: Option, value: Any) -> list[str]:
    """Config-file lines for one option's current value (round-trips through parse_file)."""
    if opt.kind == "bool":
        return [f"{opt.name} = {'on' if value else 'off'}"]
    if opt.kind in ("int", "float"):
        return [f"{opt.name} = {value!r}"]  # repr: the shortest text that reads back exactly
    if opt.repeat:
        if not value:
            return [f'{opt.name} = ""']
        return [f'{opt.name} = "{v}"' for v in value]
    return [f'{opt.name} = "{"" if value is None else value}"']


def default_config(cfg: Config) -> str:
    """The config template, filled with the values parsed so far (stud's --default-config)."""
    out = ["#", "# stud(8), The Scalable TLS Unwrapping Daemon's configuration", "#", "",
           "# NOTE: all config file parameters can be overriden", "#       from command line!",
           ""]
    for opt in OPTIONS:
        if not opt.file or opt.kind == "action":
            continue
        out.append(f"# {opt.help}.")
        out.append("#")
        kind = {"addr": "string", "path": "string", "dir": "string", "str": "string",
                "outfile": "string",
                "float": "number", "int": "integer", "bool": "boolean"}[opt.kind]
        out.append(f"# type: {kind}" + (f"; syntax: {opt.metavar}" if opt.metavar else ""))
        if opt.repeat:
            out.append("# (may be given several times)")
        out.extend(_show(opt, getattr(cfg, opt.dest)))
        out.append("")
    out.append("# EOF")
    return "\n".join(out) + "\n"


def _default_text(opt: Option, value: Any) -> str:
    if opt.kind == "bool" or value in (None, "", ()):
        return ""
    if opt.repeat:
        return f" (Default: {' '.join(str(v) for v in value)})"
    quoted = opt.kind in ("str", "addr", "path", "outfile")
    return f' (Default: "{value}")' if quoted else f" (Default: {value})"


def help_text(cfg: Config) -> str:
    """stud's usage text, showing the values parsed so far as defaults."""
    out = ["Usage: stud [OPTIONS] PEM [PEM ...]", "",
           "This is stud, The Scalable TLS Unwrapping Daemon.", ""]
    section = None
    for opt in OPTIONS:
        if not opt.cli:
            continue
        if opt.section != section:
            section = opt.section
            out += ["", f"{section}:", ""]
        short = f"-{opt.short}" if opt.short else "  "
        arg = f"={opt.metavar}" if opt.metavar else ""
        value = getattr(cfg, opt.dest, None) if opt.kind != "action" else None
        also = "".join(f" (also --{a})" for a in opt.aliases)
        out.append(f"  {short}  --{opt.name}{arg}".ljust(40) + opt.help + also
                   + _default_text(opt, value))
    out += ["", "Boolean options also take =on or =off. Every option can be set in the config",
            "file as 'name = value'; the last PEM listed is the default certificate."]
    return "\n".join(out) + "\n"
