"""stud's options: one declarative table drives argv, the config file, --default-config and help.

Semantics follow the original stud 0.3 (short flags, defaults, ``--config`` read at its position
in argv, the last PEM is the default certificate) with hitch's later spellings accepted. Where
the original misparsed or crashed, we raise :class:`ConfigError` with a one-line message that
names the option, or the file and line.
"""

from __future__ import annotations

import copy
import grp
import ipaddress
import os
import pwd
import re
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from stud import __version__, addr, hitchconf
from stud.ticketkeys import LAYOUTS, rotation_fits

TRUE = frozenset({"on", "yes", "y", "true", "t", "1"})
FALSE = frozenset({"off", "no", "n", "false", "f", "0"})
FACILITIES = ("auth", "authpriv", "cron", "daemon", "ftp", "local0", "local1", "local2",
              "local3", "local4", "local5", "local6", "local7", "lpr", "mail", "news", "user",
              "uucp")
PROTOS = ("TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3")
MODERN = "TLSv1.2 TLSv1.3"
LOG_LEVELS = ("silent", "error", "info", "conn", "debug")
HITCH_LOG_LEVELS = {"0": "silent", "1": "error", "2": "info"}  # hitch's -L 0|1|2
MAX_PEERS = 15
MAX_KEEPIDLE = 32767   # Linux refuses a longer TCP_KEEPIDLE (every client would be dropped)
MAX_INT = 2**31 - 1    # listen() takes a C int
CLIENT_VERIFY = ("none", "optional", "required")
MAX_DEPTH = 100        # OpenSSL's own default limit
CLIENT_ADDR_MODES = ("write-ip", "write-proxy-v1", "write-proxy-v2", "proxy-proxy")
# --write-proxy is PROXY v1 in stud and v2 in hitch: said once, where a file or argv uses it.
WRITE_PROXY_WARNING = ("write-proxy means PROXY v1 here (as in stud; hitch reads it as v2): "
                       "write write-proxy-v1 or write-proxy-v2 to say which")


class ConfigError(Exception):
    """A configuration error: the message is one line naming the option or file and line."""


class Exit(Exception):  # noqa: N818 - a control-flow signal, not an error
    """--help, --version or --default-config asked to print something and exit 0."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(frozen=True)
class Pem:
    """A certificate to serve: ``pem-file = PATH`` (certificate, chain and key in one file) or
    hitch's block ``pem-file = { cert = ... private-key = ... ocsp-resp-file = ... }``."""

    cert: str
    key: str | None = None             # private-key: a separate key file
    ocsp_resp_file: str | None = None  # a staple kept up to date by someone else
    ocsp_verify: bool | None = None    # None: the global ocsp-verify-staple
    client_verify: str | None = None   # None: the frontend's (else the global) setting
    client_verify_ca: str | None = None
    # The cert path as the configuration wrote it (hitch names its OCSP cache after that text).
    written: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return self.cert


@dataclass(frozen=True)
class Frontend:
    """A listening address and what is served there: ``[HOST]:PORT[+CERT]``, ``HOST,PORT``, or
    hitch's block ``frontend = { host = ... port = ... pem-file = ... }``. None: the global
    setting applies."""

    addr: addr.Addr | addr.Named
    pems: tuple[Pem, ...] = ()            # its own certificates (the last is its default)
    match_global_certs: bool | None = None  # None: hitch's rule, on when it has none of its own
    sni_nomatch_abort: bool | None = None
    tls_protos: str | None = None
    ciphers: str | None = None
    ciphersuites: str | None = None
    prefer_server_ciphers: bool | None = None
    client_verify: str | None = None
    client_verify_ca: str | None = None

    def __str__(self) -> str:
        return f"{self.addr}+{self.pems[0]}" if len(self.pems) == 1 else str(self.addr)

    @property
    def simple(self) -> bool:
        """Whether the one-line form says all of it."""
        return (len(self.pems) <= 1 and all(p == Pem(p.cert) for p in self.pems)
                and self == Frontend(self.addr, self.pems))

    @property
    def global_certs(self) -> bool:
        """Whether the global certificates serve here too (after its own)."""
        return (not self.pems) if self.match_global_certs is None else self.match_global_certs


class VersionAsked(Exit):  # noqa: N818
    """--version: the command adds what it runs on (stud.cli)."""


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
    blank: bool = False       # "" is a value of its own (off), not the default

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "must not be negative"


def _above_zero(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _at_least_one(v: int) -> str | None:
    return None if v >= 1 else "must be at least 1"


def _bits(top: int) -> Callable[[int], str | None]:
    def check(v: int) -> str | None:
        return None if 0 <= v <= top else f"must be 0 to {top}"
    return check


def _ticket_key_layout(v: str) -> str | None:
    return None if v in ("", *LAYOUTS) else "must be " + ", ".join(LAYOUTS)


def _session_id_context(v: str) -> str | None:
    return None if len(v.encode()) <= 32 else "at most 32 bytes"  # SSL_MAX_SID_CTX_LENGTH


def _session_store(v: str) -> str | None:
    parts = urlsplit(v)
    if not v:
        return None
    if parts.scheme not in ("redis", "rediss", "unix"):
        return "a redis://, rediss:// or unix:// URL"
    if parts.scheme != "unix" and not parts.hostname:
        return "no host in the URL"
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        return "bad port in the URL"
    return None


def _backlog(v: int) -> str | None:
    return None if -1 <= v <= MAX_INT else f"must be -1 (system maximum) to {MAX_INT}"


def _bufsize(v: int) -> str | None:
    return None if v == -1 or 1 <= v <= MAX_INT else f"must be -1 (the system's) or 1 to {MAX_INT}"


def _keepalive(v: int) -> str | None:
    return None if 0 <= v <= MAX_KEEPIDLE else f"must be 0 to {MAX_KEEPIDLE}"


def _log_level(v: str) -> str | None:
    return None if v in LOG_LEVELS else (f"must be one of {', '.join(LOG_LEVELS)} "
                                         "(or hitch's 0, 1, 2)")


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


def _client_verify(v: str) -> str | None:
    return None if v in CLIENT_VERIFY else f"must be one of {', '.join(CLIENT_VERIFY)}"


def _crl_check(v: str) -> str | None:
    return None if v in ("chain", "leaf") else "must be chain or leaf"


def _depth(v: int) -> str | None:
    return None if 0 <= v <= MAX_DEPTH else f"must be 0 to {MAX_DEPTH}"


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
ENC, MTLS, RESUME, SOCK, PERF, TIME, LIMITS, SEC, LOG = (
    "ENCRYPTION METHODS", "CLIENT CERTIFICATES", "SESSION RESUMPTION", "SOCKET", "PERFORMANCE",
    "TIMEOUTS", "LIMITS AND RELOAD", "SECURITY", "LOGGING")
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
    Op("match-global-certs", "bool", False, "In a frontend block (hitch's syntax): the global "
       "certificates serve there too (default: only when it has none of its own)",
       cli=False, file=False),
    Op("client-verify", "str", "none", "Ask clients for a certificate: none, optional (one "
       "that does not verify is refused) or required", metavar="MODE", section=MTLS,
       check=_client_verify),
    Op("client-verify-ca", "path", "", "The CA certificates client certificates must chain "
       "to (PEM); the certificate request names them", metavar="FILE", section=MTLS),
    Op("client-verify-depth", "int", 9, "At most this many CA certificates between a client "
       "certificate and a trusted one", metavar="NUM", section=MTLS, check=_depth),
    Op("client-verify-crl", "path", (), "CRLs to check client certificates against (PEM or "
       "DER, several per file; repeatable); read again when a file changes",
       metavar="FILE", section=MTLS, repeat=True),
    Op("client-verify-crl-check", "str", "chain", "Check CRLs for every certificate of the "
       "chain, or the client's only (leaf); a CRL past its nextUpdate refuses the clients it "
       "covers", metavar="chain|leaf", section=MTLS, check=_crl_check),
    Op("crl-fetch", "bool", False, "Download the CRLs that the client-verify-ca certificates' "
       "distribution points name (http), and again before their nextUpdate; a failure keeps "
       "the last good one", section=MTLS),
    Op("crl-fetch-url", "str", (), "With crl-fetch, also download this CRL (repeatable): the "
       "client CA's own, when only the client certificates name it", metavar="URL",
       section=MTLS, repeat=True),
    Op("crl-refresh-interval", "float", 1800.0, "Download a CRL again at least this often "
       "(else halfway to its nextUpdate)", metavar="SECS", section=MTLS, check=_above_zero),
    Op("tls-ticket-keys", "path", "", "HAProxy's ticket-key file: base64 keys, one per line; "
       "the last 3 decrypt, the one before the last encrypts (read again when it changes)",
       metavar="FILE", section=RESUME),
    Op("ssl-session-ticket-key", "path", (), "nginx's ticket-key file: 48 or 80 raw bytes "
       "(repeatable; the first encrypts, all decrypt; read again when one changes)",
       metavar="FILE", section=RESUME, repeat=True),
    Op("ticket-key-layout", "str", "", "Byte order of the keys in those files: haproxy, nginx "
       "or apache (default: each option's owner)", metavar="FORMAT", section=RESUME,
       check=_ticket_key_layout),
    Op("ticket-key-seed", "path", "", "Derive each epoch's ticket key from this shared seed "
       "(64 hex digits) and the clock: a fleet rotates in step without a control plane",
       metavar="FILE", section=RESUME),
    Op("ticket-key-lifetime", "int", 3600, "A new ticket key encrypts this often (without a "
       "key file; with ticket-key-seed: the epoch)", metavar="SECS", section=RESUME,
       check=_at_least_one),
    Op("session-timeout", "int", 7200, "How long a session (ID or ticket) resumes",
       metavar="SECS", section=RESUME, check=_at_least_one),
    Op("session-id-context", "str", "", "OpenSSL's session ID context: sessions resume only "
       "where it matches (HAProxy's is 'haproxy'; default: stud's own)", metavar="TEXT",
       section=RESUME, check=_session_id_context),
    Op("session-store", "str", "", "Share TLS 1.2 session IDs across machines in Redis or "
       "Valkey: redis://[user:pass@]host:port/db, rediss:// (TLS) or unix://", metavar="URL",
       section=RESUME, check=_session_store),
    Op("session-store-timeout", "float", 0.02, "How long a resuming handshake waits for the "
       "session store before going on without it", metavar="SECS", section=RESUME,
       check=_above_zero),
    Op("client", "bool", False, "Enable client proxy mode", section=SOCK),
    Op("backend", "backend", addr.Addr("127.0.0.1", 8000),
      "Backend [connect]: an address, or the path of a UNIX socket", short="b",
      metavar="HOST,PORT", section=SOCK),
    Op("frontend", "frontend", (Frontend(addr.Addr(None, 8443)),),
      "Frontend [bind], repeatable; +CERT serves that certificate there; systemd:NAME is "
      "the socket systemd passes under that name", short="f",
      metavar="[HOST]:PORT[+CERT]", section=SOCK, repeat=True, wildcard=True),
    Op("backend-refresh", "float", 0.0, "Resolve the backend's name again this often (0: once)",
      short="R", metavar="SECS", section=SOCK, check=_non_negative),
    Op("recv-bufsize", "int", -1, "SO_RCVBUF of client sockets (-1: the system's)",
      metavar="SIZE", section=SOCK, check=_bufsize),
    Op("send-bufsize", "int", -1, "SO_SNDBUF of client sockets (-1: the system's)",
      metavar="SIZE", section=SOCK, check=_bufsize),
    Op("enable-tcp-fastopen", "bool", False, "TCP Fast Open on the listening sockets",
      section=SOCK, aliases=("tcp-fastopen",)),
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
    Op("shared-cache", "int", 20000, "Sessions cached for all workers (0: each worker its own)",
      short="C", metavar="NUM", section=PERF, aliases=("session-cache",), check=_non_negative),
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
    Op("handshake-rate", "float", 0.0, "Per client prefix: full TLS handshakes a second "
       "(resumed ones are free); over it new ones wait, then are refused (0: off)",
       metavar="NUM", section=LIMITS, check=_non_negative),
    Op("handshake-burst", "float", 20.0, "Per client prefix: full handshakes at once before "
       "handshake-rate applies", metavar="NUM", section=LIMITS, check=_at_least_one),
    Op("handshake-delay", "float", 1.0, "The longest a full handshake waits for the limit; "
       "one that would wait longer is refused", metavar="SECS", section=LIMITS,
       check=_non_negative),
    Op("handshake-prefix-v4", "int", 24, "The IPv4 prefix length one bucket covers",
       metavar="BITS", section=LIMITS, check=_bits(32)),
    Op("handshake-prefix-v6", "int", 56, "The IPv6 prefix length one bucket covers",
       metavar="BITS", section=LIMITS, check=_bits(128)),
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
    Op("log-level", "loglevel", "info",
       "silent, error, info, conn (one line per connection) or debug (failed handshakes "
       "too); hitch's 0, 1, 2 are silent, error, info", short="L", metavar="LEVEL", section=LOG,
       check=_log_level),
    Op("log-file", "outfile", "", "Append log lines to FILE (reopened on SIGUSR1)",
       short="l", metavar="FILE", section=LOG, aliases=("log-filename",)),
    Op("metrics", "addr", None, "Serve Prometheus metrics on this address",
       metavar="HOST,PORT", section=LOG, wildcard=True),
    Op("daemon", "bool", False, "Fork into background and become a daemon"),
    Op("pidfile", "outfile", "", "Write the master's PID to FILE", short="p", metavar="FILE"),
    Op("write-ip", "bool", False, "Write 1 octet with the IP family followed by the IP address "
      "in 4 (IPv4) or 16 (IPv6) octets (network order) to backend before the actual data"),
    Op("write-proxy-v1", "bool", False, "Write HAProxy's PROXY v1 line before actual data "
      "(--write-proxy too; hitch reads that as v2)", aliases=("write-proxy",)),
    Op("write-proxy-v2", "bool", False, "Write a binary PROXY v2 header (with ALPN, SNI and "
      "TLS TLVs) before actual data"),
    Op("proxy-tlv", "bool", True, "PROXY v2: send the TLS TLV (version, cipher)"),
    Op("proxy-authority", "bool", True, "PROXY v2: send the SNI name (AUTHORITY TLV)"),
    Op("proxy-proxy", "bool", False, "Pass on a PROXY v1/v2 header sent by the client (with "
       "write-proxy-v2: as v2, with its addresses and TLVs, and stud's TLS TLVs added)"),
    Op("proxy-client-cert", "bool", False, "PROXY v2: send the client certificate as PEM in "
       "TLV 0xE0 (hitch's) instead of DER in the SSL TLV (0x28)"),
    Op("proxy-client-der", "bool", True, "PROXY v2: the client certificate's DER in the SSL "
       "TLV (0x28); off for backends that refuse a TLV over 1024 bytes (HAProxy 2.9+)"),
    Op("proxy-identity-tlvs", "bool", False, "PROXY v2: also send the client certificate's "
       "SAN URIs, SHA-256 fingerprint, serial and notAfter in TLVs of their own (0xE1-0xE4)"),
    Op("test", "action", None, "Test configuration and exit", short="t", file=False),
    Op("version", "action", None, "Print program version and exit", short="V", file=False),
    Op("help", "action", None, "This help message", short="h", file=False),
    Op("pem-file", "pem", (), "x509 certificate and key file(s); the last one is the default",
      metavar="PEM", cli=False, repeat=True),
    Op("pem-dir", "dir", "", "Also serve every certificate file in DIR (lexicographic order; "
       "one that does not load is skipped and logged)", metavar="DIR", section=ENC),
    Op("pem-dir-glob", "str", "", "Only the files of pem-dir matching this pattern",
       metavar="GLOB", section=ENC),
    Op("ocsp-dir", "str", "/var/lib/stud/", "Fetch OCSP staples from the responder each "
       "certificate names, cached in DIR with hitch's file names (\"\": no fetching)",
       metavar="DIR", section=ENC, blank=True),
    Op("ocsp-connect-tmo", "float", 4.0, "OCSP responder connect timeout", metavar="SECS",
       section=ENC, check=_above_zero),
    Op("ocsp-resp-tmo", "float", 10.0, "OCSP responder response timeout", metavar="SECS",
       section=ENC, check=_above_zero),
    Op("ocsp-refresh-interval", "float", 1800.0, "Refresh staples without a nextUpdate this "
       "often", metavar="SECS", section=ENC, check=_above_zero),
    Op("ocsp-verify-staple", "bool", False, "hitch's switch, accepted: stud verifies every "
       "staple against its certificate's issuer, set or not", section=ENC),
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
        self.hitch_files: list[str] = []  # config files read in hitch's syntax

    def for_frontend(self, f: Frontend) -> Config:
        """These settings as frontend f has them (its own where it sets them)."""
        out = copy.copy(self)
        for name in FRONTEND_SETTINGS:
            if (value := getattr(f, name)) is not None:
                setattr(out, name, value)
        return out

    def tls_settings(self) -> tuple:
        """What a server context is made of, besides its certificate (frontends may differ)."""
        return tuple(getattr(self, n) for n in FRONTEND_SETTINGS if n != "sni_nomatch_abort")

    @property
    def client_addr_mode(self) -> str | None:
        """Which of write-ip / write-proxy / write-proxy-v2 / proxy-proxy is on, if any
        (proxy-proxy also when write-proxy-v2 rewrites the header it reads)."""
        if self.proxy_proxy:
            return "proxy-proxy"
        on = [m for m in CLIENT_ADDR_MODES if getattr(self, m.replace("-", "_"))]
        return on[0] if on else None

    @property
    def verifies_clients(self) -> bool:
        """Whether any frontend or certificate asks clients for a certificate."""
        settings = [self.client_verify, *(f.client_verify for f in self.frontend),
                    *(p.client_verify for f in self.frontend for p in f.pems),
                    *(p.client_verify for p in self.pem_file)]
        return any(v not in (None, "none") for v in settings)

    @property
    def worker_count(self) -> int:
        if self.workers == "auto":
            return os.cpu_count() or 1
        return int(self.workers)

    def set(self, opt: Option, raw: str | None, source: object, base: str) -> None:
        """Set ``opt`` from ``raw`` (None: a bare flag); ``base`` anchors relative paths."""
        self.set_value(opt, convert(opt, raw, base), source, raw)

    def set_value(self, opt: Option, value: Any, source: object, raw: object = None) -> None:
        """Set ``opt`` to a converted value (a repeated option's value is added)."""
        if opt.repeat:
            old = getattr(self, opt.dest)
            # Within one source (argv or one file) values accumulate; a later source replaces an
            # earlier one, so `-f` on the command line overrides the file as in stud.
            last = self._repeat_source.get(opt.name)
            if last is not source and opt.name == "frontend" and last not in self.hitch_files:
                old = ()  # (hitch adds the command line's frontends to its file's)
            self._repeat_source[opt.name] = source
            value = (*old, value) if value is not None else old
        # Defaults are valid as they are (user "" means none); anything else is checked, so
        # `--workers=` or `--tls-protos=` cannot slip through as an empty string.
        if opt.check and value is not None and value != opt.default:
            reason = opt.check(value)
            if reason:
                raise ConfigError(f"{opt.name}: '{raw if raw is not None else value}': {reason}")
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
    if opt.kind == "loglevel":
        return HITCH_LOG_LEVELS.get(raw.strip(), raw.strip())
    if opt.kind in ("addr", "backend", "frontend"):
        if opt.repeat and raw == "":
            return None
        try:
            if opt.kind == "frontend":
                return parse_frontend(raw, base)
            if opt.kind == "backend":
                return addr.parse_backend(raw)
            return addr.parse(raw, wildcard=opt.wildcard)
        except addr.AddrError as e:
            raise ConfigError(f"{opt.name}: {e}") from None
    if opt.kind == "pem":
        path = convert(replace(opt, kind="path"), raw, base)
        return None if path is None else Pem(path, written=raw)
    if opt.kind in ("path", "dir", "outfile"):
        if raw == "":
            return None if opt.repeat else ""
        path = os.path.normpath(os.path.join(base, raw))
        _check_path(opt, path, raw)
        return path
    return raw


def parse_frontend(text: str, base: str) -> Frontend:
    """``[HOST]:PORT+CERT`` (hitch: the certificate served there only), or an address."""
    close = text.find("]") if text.lstrip().startswith("[") else 0
    plus = text.find("+", max(close, 0))
    if plus < 0:
        return Frontend(addr.parse_frontend(text))
    cert = convert(BY_NAME["pem-file"], text[plus + 1:], base)
    if cert is None:
        raise addr.AddrError(f"invalid frontend '{text}': no certificate after '+'")
    return Frontend(addr.parse_frontend(text[:plus]), (cert,))


def file_stamp(path: str) -> tuple | None:
    """What a file is now (identity, size, mtime): a change means it was written or replaced;
    None when it cannot be seen."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


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
    if any(a.partition("=")[0] == "--write-proxy" for a in argv):
        warn(WRITE_PROXY_WARNING)
    items = list(_argv_items(argv))
    # A file in hitch's syntax is read as hitch reads it: before the command line, whatever
    # its place there (its frontends then add to those of the command line).
    hitch_files = [v for opt, v in items if opt and opt.name == "config" and _is_hitch(v)]
    for path in hitch_files:
        parse_file(cfg, path)
    for opt, value in items:
        if opt is None:
            pems.append(value)
        elif opt.kind != "action":
            cfg.set(opt, value, argv, cwd)
        elif opt.name == "config":
            # As in stud: the file is read at its position, so later options override it.
            if value not in hitch_files:
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
            raise VersionAsked(f"stud {__version__}\n")
        elif opt.name == "default-config":
            raise Exit(default_config(cfg))
    for p in pems:
        cfg.set(BY_NAME["pem-file"], p, argv, cwd)
    if cfg.cli_protocol:
        _set_protocol(cfg, cfg.cli_protocol)
    validate(cfg)
    return cfg


def warn(message: str) -> None:
    """A configuration that works, but perhaps not as meant (every time it is read)."""
    print(f"stud: warning: {message}", file=sys.stderr)


def _is_hitch(path: str | None) -> bool:
    """Whether --config's file is in hitch's syntax (unreadable: no; parse_file() says why)."""
    if not path or path == "-":
        return False
    try:
        with open(path, encoding="utf-8-sig") as f:
            return hitchconf.looks_like_hitch(f.read(), path)
    except (OSError, ValueError):
        return False


def _set_protocol(cfg: Config, which: str) -> None:
    if which == "ssl":
        warn("--ssl: SSLv3 is gone; accepting TLSv1.0 to TLSv1.3 where OpenSSL allows")
        cfg.tls_protos = " ".join(PROTOS)
    else:
        cfg.tls_protos = MODERN


def validate(cfg: Config) -> None:
    """Cross-option checks, made once after all sources are read."""
    modes = [m for m in CLIENT_ADDR_MODES if getattr(cfg, m.replace("-", "_"))]
    if len(modes) > 1 and set(modes) != {"write-proxy-v2", "proxy-proxy"}:
        raise ConfigError(f"Options --{modes[0]} and --{modes[1]} are mutually exclusive.")
    if not cfg.frontend:
        raise ConfigError("frontend: no address to listen on")
    if cfg.shared_cache_listen and not cfg.shared_cache:
        raise ConfigError("Shared cache update listener is defined, but shared cache is disabled.")
    if cfg.shared_cache_peer and not cfg.shared_cache_listen:
        raise ConfigError("shared-cache-peer needs shared-cache-listen to send updates from")
    _validate_tickets(cfg)
    seen = set()
    for f in cfg.frontend:
        if f.addr in seen:
            raise ConfigError(f"frontend: {f.addr} is listed twice")
        seen.add(f.addr)
        if cfg.client:
            continue
        if not f.pems and not f.global_certs:
            raise ConfigError(f"No certificate configured for frontend '{f.addr}'")
        if not f.pems and not (cfg.pem_file or cfg.pem_dir):
            raise ConfigError("No x509 certificate PEM file specified!")


def _validate_tickets(cfg: Config) -> None:
    sources = [name for name in ("tls-ticket-keys", "ssl-session-ticket-key", "ticket-key-seed")
               if getattr(cfg, name.replace("-", "_"))]
    if len(sources) > 1:
        raise ConfigError(f"--{sources[0]} and --{sources[1]}: one source of ticket keys")
    if sources and cfg.shared_cache_listen:
        raise ConfigError(f"--{sources[0]} and shared-cache-listen: stud's UDP session updates "
                          "turn session tickets off")
    if cfg.session_store and not sources:
        raise ConfigError("session-store: its records are sealed with the fleet's ticket keys: "
                          "give tls-ticket-keys, ssl-session-ticket-key or ticket-key-seed")
    if cfg.session_store and not cfg.shared_cache:
        raise ConfigError("session-store: needs the shared session cache (-C above 0)")
    if not sources or sources == ["ticket-key-seed"]:
        if reason := rotation_fits(cfg.ticket_key_lifetime, cfg.session_timeout):
            raise ConfigError(f"ticket-key-lifetime: {reason}")


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
    """Read a config file into cfg, in stud's syntax (``key = value`` lines) or hitch's
    (hitch.conf(5): blocks, free form; see hitchconf.looks_like_hitch()); '-' reads standard
    input."""
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
    source = FileSource(cfg, path, base, shown)
    if hitchconf.looks_like_hitch(text, path):
        cfg.hitch_files.append(path)
        source.read_hitch(text)
    else:
        source.read_stud(text)


@dataclass
class FileSource:
    """One configuration file being read into cfg."""

    cfg: Config
    path: str
    base: str   # relative paths are relative to the file
    shown: str  # the file's name in messages

    def where(self, line: int) -> str:
        return f"{self.shown} line {line}"

    def read_stud(self, text: str) -> None:
        for lineno, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            where = self.where(lineno)
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
                raise ConfigError(f"{where}: {key}: a block: write the file in hitch's syntax "
                                  "(see hitch.conf(5))")
            if key == "write-proxy":
                warn(f"{where}: {WRITE_PROXY_WARNING}")
            self.set(key, value, where)

    def read_hitch(self, text: str) -> None:
        try:
            items = hitchconf.parse(text)
        except hitchconf.HitchConfError as e:
            raise ConfigError(f"{self.shown} {e}") from None
        for item in items:
            where = self.where(item.line)
            key = "write-proxy-v2" if item.key == "write-proxy" else item.key  # hitch's meaning
            if item.block is None:
                self.set(key, _joined(item), where)
                continue
            try:
                if key == "frontend":
                    value = self.frontend(item)
                elif key == "pem-file":
                    value = self.pem(item)
                else:
                    raise ConfigError(f"{key}: a block is not allowed here")
                self.cfg.set_value(BY_NAME[key], value, self.path)
            except ConfigError as e:
                raise self.located(e, where) from None

    def set(self, key: str, value: str, where: str) -> None:
        """One ``key = value`` ("" sets the default)."""
        opt = BY_NAME.get(key)
        if opt is None or not opt.file:
            warn(f"ignoring unknown configuration key '{key}' in {where}")
            return
        cfg = self.cfg
        try:
            if opt.name in ("tls", "ssl"):
                if convert(replace(opt, kind="bool"), value, self.base):  # errors name tls/ssl
                    _set_protocol(cfg, opt.name)
            elif value or opt.blank:
                cfg.set(opt, value, self.path, self.base)
            elif opt.kind in ("str", "path", "dir", "outfile", "addr", "backend", "frontend",
                              "pem", "loglevel"):
                if not opt.repeat:
                    setattr(cfg, opt.dest, opt.default)
            else:
                raise ConfigError(f"{key}: missing value")
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    def frontend(self, item: hitchconf.Item) -> Frontend:
        """hitch's ``frontend = { host = ... port = ... <frontend options> }``."""
        host, port, pems, fields = "*", None, [], {}
        for it in item.block:
            where = self.where(it.line)
            try:
                if it.key == "pem-file":
                    pems.append(self.pem(it) if it.block is not None else
                                self.checked("pem-file", _joined(it)))
                    continue
                if it.block is not None:
                    raise ConfigError(f"{it.key}: a block is not allowed here")
                value = _joined(it)
                if it.key == "host":
                    host = value or "*"
                elif it.key == "port":
                    port = value
                elif it.key in FRONTEND_KEYS:
                    fields[it.key.replace("-", "_")] = self.checked(it.key, value)
                else:
                    raise ConfigError(f"{it.key}: not allowed in a frontend block")
            except ConfigError as e:
                raise self.located(e, where) from None
        named = host.startswith(addr.SYSTEMD_PREFIX)
        if (port is None) != named:
            raise ConfigError("frontend: a block needs a port" if port is None else
                              f"frontend: host {host} is a socket systemd passes: no port")
        try:
            where = (addr.parse_frontend(host) if named else
                     addr.parse(f"[{host}]:{port}", wildcard=True))
        except addr.AddrError as e:
            raise ConfigError(f"frontend: {e}") from None
        return Frontend(where, tuple(pems), **fields)

    def pem(self, item: hitchconf.Item) -> Pem:
        """hitch's ``pem-file = { cert = ... private-key = ... ocsp-resp-file = ... }``."""
        fields: dict[str, Any] = {}
        for it in item.block:
            where = self.where(it.line)
            try:
                if it.block is not None or it.key not in PEM_KEYS:
                    raise ConfigError(f"{it.key}: not allowed in a pem-file block")
                value = _joined(it)
                if it.key == "ocsp-verify-staple":
                    fields["ocsp_verify"] = self.checked(it.key, value)
                elif it.key.startswith("client-verify"):
                    fields[PEM_KEYS[it.key]] = self.checked(it.key, value) if value else None
                elif value:
                    fields[PEM_KEYS[it.key]] = self.checked("pem-file", value).cert
                    if it.key == "cert":
                        fields["written"] = value
            except ConfigError as e:
                raise self.located(e, where) from None
        if "cert" not in fields:
            raise ConfigError("pem-file: a block needs a cert")
        return Pem(**fields)

    def located(self, e: ConfigError, where: str) -> ConfigError:
        """e with where it happened, unless it already names its line (a block's inner one)."""
        return e if str(e).startswith(f"{self.shown} line ") else ConfigError(f"{where}: {e}")

    def checked(self, key: str, raw: str) -> Any:
        """raw as option key's value, converted and checked."""
        opt = BY_NAME[key]
        value = convert(opt, raw, self.base)
        reason = opt.check(value) if opt.check and value is not None else None
        if reason:
            raise ConfigError(f"{key}: '{raw}': {reason}")
        return value


# What a frontend may set for itself (None: the global setting), as attributes.
FRONTEND_SETTINGS = ("tls_protos", "ciphers", "ciphersuites", "prefer_server_ciphers",
                     "client_verify", "client_verify_ca", "sni_nomatch_abort")
# What a hitch frontend block may set for itself, and a pem-file block.
FRONTEND_KEYS = frozenset({"match-global-certs", "sni-nomatch-abort", "tls-protos", "ciphers",
                           "ciphersuites", "prefer-server-ciphers", "client-verify",
                           "client-verify-ca"})
PEM_KEYS = {"cert": "cert", "private-key": "key", "ocsp-resp-file": "ocsp_resp_file",
            "ocsp-verify-staple": "ocsp_verify", "client-verify": "client_verify",
            "client-verify-ca": "client_verify_ca"}


def _joined(item: hitchconf.Item) -> str:
    """An item's value as one string (tls-protos' tokens joined by spaces)."""
    return " ".join(item.value) if isinstance(item.value, tuple) else item.value


def _show(opt: Option, value: Any) -> list[str]:
    """Config-file lines for one option's current value (round-trips through parse_file)."""
    if opt.kind == "bool":
        return [f"{opt.name} = {'on' if value else 'off'}"]
    if opt.kind in ("int", "float"):
        return [f"{opt.name} = {value!r}"]  # repr: the shortest text that reads back exactly
    if opt.repeat:
        if not value:
            return [f'{opt.name} = ""']
        return [line for v in value for line in _show_one(opt.name, v)]
    return [f'{opt.name} = "{"" if value is None else value}"']


def _show_one(name: str, v: Any) -> list[str]:
    """One value of a repeated option: hitch's block form where the one-line form says less."""
    if isinstance(v, Frontend) and not v.simple:
        if isinstance(v.addr, addr.Named):
            inner = [f'host = "{v.addr}"']
        else:
            host = "*" if v.addr.host is None else v.addr.host
            inner = [f'host = "{host}"', f'port = "{v.addr.port}"']
        inner += [line for p in v.pems for line in _show_one("pem-file", p)]
        for key in sorted(FRONTEND_KEYS):
            field = getattr(v, key.replace("-", "_"))
            if field is not None:
                inner += _show(BY_NAME[key], field)
    elif isinstance(v, Pem) and v != Pem(v.cert):
        inner = [f'cert = "{v.cert}"']
        inner += [f'{k} = "{getattr(v, f)}"' for k, f in PEM_KEYS.items()
                  if k not in ("cert", "ocsp-verify-staple") and getattr(v, f) is not None]
        if v.ocsp_verify is not None:
            inner += [f"ocsp-verify-staple = {'on' if v.ocsp_verify else 'off'}"]
    else:
        return [f'{name} = "{v}"']
    return [f"{name} = {{", *(f"    {line}" for line in inner), "}"]


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
        kind = {"float": "number", "int": "integer", "bool": "boolean"}.get(opt.kind, "string")
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
    quoted = opt.kind not in ("int", "float", "dir")
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
        out.append(f"  {short}  --{opt.name}{arg}".ljust(39) + " " + opt.help + also
                   + _default_text(opt, value))
    out += ["", "Boolean options also take =on or =off. Every option can be set in the config",
            "file as 'name = value'; the last PEM listed is the default certificate."]
    return "\n".join(out) + "\n"
