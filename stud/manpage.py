"""stud(8) and stud.conf(5), written from the option table (stud.config.OPTIONS), so the
manual cannot drift from what stud accepts. ``python -m stud.manpage DIR`` writes both;
the package ships them (pyproject.toml's data files) and a test checks they are current.
"""

from __future__ import annotations

import sys
from pathlib import Path

from stud import __version__
from stud.config import OPTIONS, Option

DATE = "2026-12"


def roff(text: str) -> str:
    """Text as roff reads it literally: backslashes, hyphens, a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def _default(opt: Option) -> str:
    value = opt.default
    if opt.kind in ("bool", "action") or value in (None, "", ()):
        return ""
    if opt.repeat:
        value = " ".join(map(str, value))
    return f" Default: {value}."


def _options(cli: bool) -> list[str]:
    """Each option of the command line (cli) or of the file, by section."""
    out, section = [], None
    for opt in OPTIONS:
        if not (opt.cli if cli else opt.file and opt.kind != "action"):
            continue
        if opt.section != section:
            section = opt.section
            out += [".SS " + roff(section.capitalize())]
        if cli:
            arg = f"=\\fI{roff(opt.metavar)}\\fR" if opt.metavar else ""
            names = ([f"\\fB\\-{opt.short}\\fR"] if opt.short else []) + \
                [f"\\fB\\-\\-{roff(n)}\\fR{arg}" for n in (opt.name, *opt.aliases)]
            out += [".TP", ", ".join(names)]
        else:
            value = f" = \\fI{roff(opt.metavar)}\\fR" if opt.metavar else " = on|off"
            out += [".TP", f"\\fB{roff(opt.name)}\\fR{value}"]
        text = roff(opt.help.rstrip(".") + ".")
        if opt.repeat:
            text += " Repeatable."
        out.append(text + roff(_default(opt)))
    return out


def _page(title: str, section: int, name: str, parts: list[tuple[str, list[str]]]) -> str:
    out = [f'.TH {title} {section} "{DATE}" "stud {__version__}" "stud"', ".SH NAME", name]
    for heading, lines in parts:
        out += [f".SH {heading}", *lines]
    return "\n".join(out) + "\n"


def paragraphs(*texts: str) -> list[str]:
    out: list[str] = []
    for t in texts:
        out += [".PP", roff(" ".join(t.split()))]
    return out


def stud_8() -> str:
    return _page("STUD", 8, "stud \\- the Scalable TLS Unwrapping Daemon", [
        ("SYNOPSIS", [".B stud", "[\\fIOPTIONS\\fR] [\\fIPEM\\fR ...]", ".br",
                      ".B stud ticket\\-keys", "new|rotate|seed [\\fIOPTIONS\\fR] \\fIFILE\\fR"]),
        ("DESCRIPTION", paragraphs(
            "stud accepts TLS connections on its frontend addresses, terminates TLS and "
            "forwards the cleartext bytes over TCP to one backend, one backend connection per "
            "client connection. A master process binds the sockets, loads the certificates, "
            "and supervises worker processes, each running one event loop over thousands of "
            "connections. The backend learns the client's address from a header stud writes "
            "first (--write-ip, --write-proxy-v1, --write-proxy-v2) or passes on "
            "(--proxy-proxy).",
            "Each PEM file holds a certificate, its key and chain (and optionally DH "
            "parameters); the last one is the default certificate, the others are chosen by "
            "SNI. stud reads stud 0.3's and hitch's command lines and configuration files "
            "(see stud.conf(5)).")),
        ("OPTIONS", _options(cli=True) + paragraphs(
            "Boolean options also take =on or =off. Every option but --config, "
            "--default-config, --test, --version and --help can be set in the configuration "
            "file.")),
        ("SIGNALS", [".TP", "\\fBSIGHUP\\fR", roff(
            "Reload: the configuration and certificates are read again and a new generation "
            "of workers starts; once it accepts, the old one stops accepting and drains. A "
            "reload that fails changes nothing and is logged."),
            ".TP", "\\fBSIGTERM\\fR, \\fBSIGINT\\fR", roff(
            "Stop accepting, let open connections finish for at most --drain-timeout, then "
            "exit."),
            ".TP", "\\fBSIGUSR1\\fR", roff("Reopen --log-file (logrotate).")]),
        ("SYSTEMD", paragraphs(
            "Started with NOTIFY_SOCKET set (Type=notify), stud sends READY=1 once every "
            "worker accepts, RELOADING=1 and READY=1 around a reload, STOPPING=1 when it "
            "drains, STATUS lines, and watchdog pings while its loop turns (WatchdogSec=). "
            "Given sockets by systemd (LISTEN_FDS, a .socket unit), it serves those and binds "
            "nothing itself, so it needs no privilege from the start. A frontend "
            "systemd:NAME takes every socket named NAME (FileDescriptorName=, by default the "
            "socket unit's name); a frontend given by address takes the socket on that "
            "address. A socket no frontend takes, or a frontend without its socket, is an "
            "error. Unit files are in contrib/systemd/ of the source.")),
        ("LOGGING AND METRICS", paragraphs(
            "Messages go to stdout and stderr (or --log-file, or syslog), one line each with "
            "UTC time and PID; --log-level=conn adds one key=value line per connection. "
            "--metrics serves Prometheus metrics from the master, summed over all workers.")),
        ("FILES", [".TP", "\\fI/etc/stud/stud.conf\\fR",
                   roff("The usual configuration file (read with --config)."),
                   ".TP", "\\fI/var/lib/stud/\\fR",
                   roff("OCSP staples (--ocsp-dir), under hitch's file names.")]),
        ("EXIT STATUS", paragraphs(
            "0 after a stop on a signal, or when --test found the configuration good; 1 when "
            "the configuration, a certificate or an address is wrong (one line on stderr "
            "names it).")),
        ("EXAMPLES", [".nf",
                      roff("stud -f '*,443' -b 127.0.0.1,8080 -n 4 --user=nobody "
                           "--write-proxy-v2 site.pem"),
                      roff("stud --config=/etc/stud/stud.conf"),
                      roff("stud --default-config > stud.conf"),
                      roff("stud -t --config=stud.conf"),
                      roff("stud ticket-keys seed /etc/stud/ticket.seed"), ".fi"]),
        ("DIFFERENCES FROM STUD AND HITCH", paragraphs(
            "Where stud 0.3 or hitch had undefined behaviour, a crash or a silent "
            "misconfiguration, this stud gives a clear error or the safe behaviour: for "
            "example a bad cipher string stops start-up, a half-closed client still gets its "
            "reply, and a pem-dir file that does not load is skipped with a log line. The "
            "README lists every difference.")),
        ("SEE ALSO", [roff("stud.conf(5), hitch(8), haproxy(1), openssl(1), systemd.service(5)")]),
    ])


def stud_conf_5() -> str:
    return _page("STUD.CONF", 5, "stud.conf \\- stud's configuration file", [
        ("SYNOPSIS", [roff("/etc/stud/stud.conf")]),
        ("DESCRIPTION", paragraphs(
            "One setting per line: name = value. Lines starting with # are comments, and so "
            "is a # after an unquoted value and a space. Values may be quoted with \" or '; "
            "\"\" is an explicit empty value. Booleans take on/off, yes/no, true/false or 1/0. "
            "Relative paths are read against the file's directory. A setting given several "
            "times replaces the earlier one, except the repeatable ones (pem-file, frontend, "
            "...), which accumulate. Options on the command line after --config override the "
            "file; stud --default-config prints a complete file.",
            "A file in hitch's syntax (with frontend = { ... } and pem-file = { ... } blocks) "
            "is read as hitch reads it.")),
        ("SETTINGS", _options(cli=False)),
        ("EXAMPLE", [".nf", roff('frontend = "[*]:443"'), roff('backend = "[127.0.0.1]:8080"'),
                     roff("workers = 4"), roff('user = "stud"'), roff("write-proxy-v2 = on"),
                     roff('pem-file = "/etc/stud/site.pem"'), ".fi"]),
        ("SEE ALSO", [roff("stud(8)")]),
    ])


PAGES = {"stud.8": stud_8, "stud.conf.5": stud_conf_5}


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "man")
    out.mkdir(parents=True, exist_ok=True)
    for name, page in PAGES.items():
        (out / name).write_text(page(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
