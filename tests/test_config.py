"""Unit tests of the option surface: stud.addr.parse, stud.config.parse_args and parse_file,
and --default-config. Black-box runs of the command are in test_cli.py."""

from __future__ import annotations

import grp
import io
import itertools
import os
import pwd
import socket
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stud import __version__, addr, config
from stud.addr import Addr, AddrError, Named, Unix
from stud.config import (
    BY_NAME,
    OPTIONS,
    Config,
    ConfigError,
    Exit,
    Frontend,
    Pem,
    parse_args,
    parse_file,
)
from stud.ticketkeys import LAYOUTS

MODERN = "TLSv1.2 TLSv1.3"
ALL_PROTOS = "TLSv1.0 TLSv1.1 TLSv1.2 TLSv1.3"
DEFAULT_FRONTEND = (Frontend(Addr(None, 8443)),)
DEFAULT_BACKEND = Addr("127.0.0.1", 8000)
FILE_OPTIONS = [o for o in OPTIONS if o.file and o.kind != "action"]
LOOPBACK_IF = "lo"
LOOPBACK_INDEX = str(socket.if_nametoindex(LOOPBACK_IF))


@pytest.fixture
def pem(tmp_path: Path) -> str:
    """parse_args only checks that a PEM is a regular file; its content is checked at start-up."""
    path = tmp_path / "server.pem"
    path.write_text("not parsed here\n")
    return str(path)


@pytest.fixture
def write(tmp_path: Path):
    """write(text, name="stud.conf") -> path of a config file in tmp_path (or a subdir)."""
    def make(text: str, name: str = "stud.conf") -> str:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return str(path)
    return make


def load(path: str) -> Config:
    cfg = Config()
    parse_file(cfg, path)
    return cfg


# --- addresses ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, wildcard, expected", [
    ("127.0.0.1,443", False, Addr("127.0.0.1", 443)),
    ("[127.0.0.1]:443", False, Addr("127.0.0.1", 443)),
    ("127.0.0.1:443", False, Addr("127.0.0.1", 443)),
    ("[::1]:443", False, Addr("::1", 443)),
    ("[2001:db8::1]:65535", False, Addr("2001:db8::1", 65535)),
    ("[::]:8443", True, Addr("::", 8443)),
    ("::1,443", False, Addr("::1", 443)),                  # the last comma splits
    ("fe80::1%lo,1", False, Addr("fe80::1%lo", 1)),
    ("localhost,80", False, Addr("localhost", 80)),
    ("example.com:8080", False, Addr("example.com", 8080)),
    ("  backend.internal , 0443 ", False, Addr("backend.internal", 443)),
    ("*,8443", True, Addr(None, 8443)),
    ("[*]:8443", True, Addr(None, 8443)),                  # what --default-config prints
])
def test_addr_parse_accepts(text, wildcard, expected):
    assert addr.parse(text, wildcard=wildcard) == expected


@pytest.mark.parametrize("text, why", [
    ("127.0.0.1,0", "invalid port '0'"),
    ("127.0.0.1,65536", "invalid port '65536'"),           # the original accepted 65536
    ("127.0.0.1,123456", "invalid port"),                  # the original truncated it to 12345
    ("127.0.0.1,abc", "invalid port 'abc'"),
    ("127.0.0.1,-1", "invalid port"),
    ("127.0.0.1,", "invalid port"),
    ("127.0.0.1,\u0664\u0664\u0663", "invalid port"),      # Arabic-Indic digits
    ("[::1:443", "missing ']'"),
    ("[::1]x443", "expected ':PORT' after ']'"),           # the original accepted this
    ("[::1]", "expected ':PORT' after ']'"),
    (",443", "empty host"),
    ("[]:443", "empty host"),
    ("[ ]:443", "empty host"),
    ("localhost", "expected HOST,PORT or [HOST]:PORT"),
    ("", "expected HOST,PORT or [HOST]:PORT"),
    ("::1:443", "write IPv6 addresses as [ADDR]:PORT"),
    ("*,443", "wildcards are not allowed"),
    ("[*]:443", "wildcards are not allowed"),
    ("a b,80", "in host"),
    ("a]b,80", "in host"),
    ("a\tb,80", "in host"),
    ("x" * 256 + ",80", "longer than 255"),
])
def test_addr_parse_rejects(text, why):
    with pytest.raises(AddrError) as e:
        addr.parse(text)
    assert why in str(e.value)
    assert "\n" not in str(e.value)


def test_addr_resolve_invalid_host_name_is_addr_error():
    # IDNA refuses empty and over-long labels with UnicodeError: it must not escape as such.
    for host in ("a..b", "a" * 64 + ".example"):
        with pytest.raises(AddrError, match="cannot resolve"):
            addr.resolve(Addr(host, 80))


HOSTS = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True),
    st.just("*"),
)
ANY_HOST = HOSTS | st.text(max_size=12) | st.text("[]*:, .a1", max_size=6)
ADDR_TEXT = st.one_of(
    st.text(),
    st.builds(lambda h, sep, p: f"{h}{sep}{p}", ANY_HOST, st.sampled_from([",", ":"]),
              st.one_of(st.integers(-5, 70000).map(str), st.text(max_size=7))),
    st.builds(lambda h, tail: f"[{h}]{tail}", ANY_HOST, st.text(max_size=8)),
)


@settings(max_examples=500)
@given(ADDR_TEXT, st.booleans())
def test_addr_parse_returns_addr_or_raises_addr_error(text, wildcard):
    try:
        a = addr.parse(text, wildcard=wildcard)
    except AddrError:
        return
    assert isinstance(a, Addr) and 1 <= a.port <= 65535
    assert a == addr.parse(str(a), wildcard=wildcard)  # str() round-trips


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses(), st.integers(1, 65535), st.sampled_from(["[{}]:{}", "{},{}"]))
def test_addr_ip_literals_resolve_to_themselves_without_dns(ip, port, form):
    """Any IP literal, in either syntax, parses and resolves to exactly that address (no
    DNS: getaddrinfo answers numeric hosts itself)."""
    import ipaddress

    if ip.version == 6 and not addr.has_ipv6():
        return
    a = addr.parse(form.format(ip, port))
    assert a == addr.Addr(str(ip), port)
    family, sockaddr = addr.resolve(a)
    assert family == (socket.AF_INET6 if ip.version == 6 else socket.AF_INET)
    assert ipaddress.ip_address(sockaddr[0].split("%")[0]) == ip and sockaddr[1] == port


# --- the command line -----------------------------------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["-qs"], {"quiet": True, "syslog": True}),                     # bundled short flags
    (["-qn4"], {"quiet": True, "workers": "4"}),
    (["-n4"], {"workers": "4"}),
    (["-n", "4"], {"workers": "4"}),
    (["--workers=auto"], {"workers": "auto"}),
    (["--workers", "2"], {"workers": "2"}),
    (["--front=127.0.0.1,1"], {"frontend": (Frontend(Addr("127.0.0.1", 1)),)}),  # a prefix
    (["--keep", "60", "--backend", "[::1]:80"], {"keepalive": 60, "backend": Addr("::1", 80)}),
    (["--work=3"], {"workers": "3"}),
    (["-q", "--quiet=off"], {"quiet": False}),
    (["--client=on"], {"client": True}),
    (["-O", "-c", "HIGH", "-e", "auto"],
     {"prefer_server_ciphers": True, "ciphers": "HIGH", "ssl_engine": "auto"}),
    (["-B", "-1", "-k", "0", "-C", "100"], {"backlog": -1, "keepalive": 0, "shared_cache": 100}),
    (["-k", "32767"], {"keepalive": 32767}),
    (["--session-cache=7"], {"shared_cache": 7}),
    (["-C", "1", "-U", "*,9000", "-P", "10.0.0.1,9000", "-P", "[::1]:9001"],
     {"shared_cache_listen": Addr(None, 9000),
      "shared_cache_peer": (Addr("10.0.0.1", 9000), Addr("::1", 9001))}),
    (["-M", "*"], {"shared_cache_if": "*"}),
    (["-M", f"{LOOPBACK_IF},3"], {"shared_cache_if": f"{LOOPBACK_IF},3"}),
    (["-M", LOOPBACK_INDEX], {"shared_cache_if": LOOPBACK_INDEX}),
    (["-M", "127.0.0.1,255"], {"shared_cache_if": "127.0.0.1,255"}),
    (["--tls"], {"tls_protos": MODERN}),
    (["--ssl"], {"tls_protos": ALL_PROTOS}),
    (["--tls-protos=TLSv1.2,TLSv1.3"], {"tls_protos": "TLSv1.2,TLSv1.3"}),
    (["--ciphersuites=TLS_AES_128_GCM_SHA256"], {"ciphersuites": "TLS_AES_128_GCM_SHA256"}),
    (["--ec-curve=prime256v1"], {"ec_curve": "prime256v1"}),
    (["--alpn-protos=h2,http/1.1", "--sni-nomatch-abort"],
     {"alpn_protos": "h2,http/1.1", "sni_nomatch_abort": True}),
    (["--ssl-handshake-timeout=2.5", "--backend-connect-timeout=1"],
     {"ssl_handshake_timeout": 2.5, "backend_connect_timeout": 1.0}),
    (["--write-proxy-v1"], {"write_proxy_v1": True, "client_addr_mode": "write-proxy-v1"}),
    (["--write-proxy-v2"], {"client_addr_mode": "write-proxy-v2"}),
    (["--write-ip"], {"client_addr_mode": "write-ip"}),
    (["--proxy-proxy"], {"client_addr_mode": "proxy-proxy"}),
    (["--write-ip", "--write-ip=off", "--write-proxy"], {"client_addr_mode": "write-proxy-v1"}),
    (["--daemon", "--syslog-facility=local3"], {"daemon": True, "syslog_facility": "local3"}),
    (["-u", pwd.getpwuid(os.getuid()).pw_name, "-g", grp.getgrgid(os.getgid()).gr_name, "-r", "/"],
     {"user": pwd.getpwuid(os.getuid()).pw_name, "chroot": "/"}),
    (["-t"], {"test": True}),
    ([], {"frontend": DEFAULT_FRONTEND, "backend": DEFAULT_BACKEND, "tls_protos": MODERN,
          "workers": "1", "backlog": 100, "keepalive": 3600, "client_addr_mode": None}),
])
def test_parse_args(argv, expected, pem):
    cfg = parse_args([*argv, pem])
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert cfg.pem_file == (Pem(pem),)


def test_positional_pems_after_double_dash_keep_order(tmp_path, pem):
    dashed = tmp_path / "-odd.pem"
    dashed.write_text("x")
    cfg = parse_args([pem, "-q", "--", str(dashed)])
    assert cfg.pem_file == (Pem(pem), Pem(str(dashed))) and cfg.quiet


def test_client_mode_needs_no_pem():
    assert parse_args(["--client"]).pem_file == ()


@pytest.mark.parametrize("argv, why", [
    (["--bogus"], "unrecognized option '--bogus'"),
    (["--pem-file=x.pem"], "unrecognized option '--pem-file'"),  # a config-file key only
    (["-Z"], "invalid option '-Z'"),
    (["--s"], "ambiguous option '--s'"),
    (["--back=127.0.0.1,1"], "ambiguous option '--back'"),      # backend, backlog, ...
    (["--write-proxy-v"], "ambiguous option '--write-proxy-v'"),
    (["-n"], "option '-n' requires a value"),
    (["--backend"], "option '--backend' requires a value"),
    (["--tls=off"], "option '--tls' doesn't allow an argument"),
    (["--quiet=maybe"], "quiet: 'maybe' is not a boolean"),
    (["-n", "0"], "workers: '0'"),
    (["-n", "-1"], "workers"),
    (["-n", "\u00b2"], "workers"),                       # str.isdigit() is true for '²'
    (["--workers="], "workers: ''"),
    (["-B", "abc"], "backlog: 'abc' is not an integer"),
    (["-B", "-2"], "backlog: '-2'"),
    (["-B", str(2**31)], "backlog"),
    (["-k", "-1"], "keepalive: '-1'"),
    (["-k", "32768"], "keepalive: '32768'"),             # Linux refuses a longer TCP_KEEPIDLE
    (["-C", "-1"], "shared-cache: '-1'"),
    (["--ssl-handshake-timeout=0"], "ssl-handshake-timeout"),
    (["--backend-connect-timeout=soon"], "backend-connect-timeout: 'soon' is not a number"),
    (["--drain-timeout=-1"], "drain-timeout"),
    (["--config", "stud\x00.conf"], "Unable to open configuration file 'stud\\x00.conf': "
     "embedded null byte"),
    (["-b", "127.0.0.1,0"], "backend: invalid port '0'"),
    (["-b", "*,80"], "backend: invalid address '*,80': wildcards are not allowed"),
    (["-f", "127.0.0.1,65536"], "frontend: invalid port '65536'"),
    (["--frontend="], "frontend"),
    (["-f", "127.0.0.1,1", "-f", "[127.0.0.1]:1"], "frontend: [127.0.0.1]:1 is listed twice"),
    (["-f", "systemd:"], "frontend: invalid frontend 'systemd:': systemd:NAME takes a socket's "
     "FileDescriptorName= (1-255 printable ASCII characters, no ':')"),
    (["-f", "systemd:a:b"], "frontend: invalid frontend 'systemd:a:b'"),
    (["-f", "systemd:h\u00e9"], "frontend: invalid frontend"),
    (["-f", "systemd:" + "n" * 256], "frontend: invalid frontend"),
    (["-f", "systemd:https", "-f", "systemd:https"], "frontend: systemd:https is listed twice"),
    (["-C", "0", "-U", "127.0.0.1,9000"], "shared cache is disabled"),
    (["-C", "1", "-P", "127.0.0.1,9000"], "shared-cache-peer needs shared-cache-listen"),
    (["-C", "1", "-U", "*,9000"] + [a for n in range(16) for a in ("-P", f"10.0.0.{n},9000")],
     "shared-cache-peer: '10.0.0.15,9000': at most 15 shared cache peers"),
    (["-M", "no-such-if0"], "shared-cache-if: 'no-such-if0': no such interface"),
    (["-M", f"{LOOPBACK_IF},256"], "invalid TTL '256'"),
    (["-M", f"{LOOPBACK_IF},x"], "invalid TTL 'x'"),
    (["-M", "127.0.0.999"], "shared-cache-if"),
    (["--tls-protos=SSLv3"], "tls-protos: 'SSLv3': SSLv3 is not supported"),
    (["--tls-protos=TLSv1.2,TLSv9"], "unknown protocol 'TLSv9'"),
    (["--tls-protos="], "tls-protos: '': empty protocol list"),
    (["--syslog-facility=bogus"], "syslog-facility: 'bogus': invalid facility"),
    (["--syslog-facility=LOCAL3"], "syslog-facility: 'LOCAL3'"),  # case-sensitive, as stud
    (["--syslog-facility="], "syslog-facility: ''"),
    (["-u", "no-such-user-xyz"], "user: 'no-such-user-xyz': no such user"),
    (["-g", "no-such-group-xyz"], "group: 'no-such-group-xyz': no such group"),
    (["-r", "/no/such/dir"], "chroot: cannot use '/no/such/dir'"),
    (["-r", "/dev/null"], "chroot: '/dev/null' is not a directory"),
    (["--tls", "--ssl"], "Options --tls and --ssl are mutually exclusive."),
    (["--ssl", "--tls"], "Options --tls and --ssl are mutually exclusive."),
    (["--write-proxy-v1", "--write-proxy-v2"], "Options --write-proxy-v1 and --write-proxy-v2"),
    *[([f"--{a}", f"--{b}"], f"Options --{a} and --{b} are mutually exclusive.")
      for a, b in itertools.combinations(config.CLIENT_ADDR_MODES, 2)
      if {a, b} != {"write-proxy-v2", "proxy-proxy"}],  # (together: the header rewritten)
])
def test_parse_args_errors(argv, why, pem):
    with pytest.raises(ConfigError) as e:
        parse_args([pem, *argv])
    assert why in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("argv, why", [
    ([], "No x509 certificate PEM file specified!"),
    (["/no/such.pem"], "pem-file: cannot use '/no/such.pem': No such file or directory"),
    (["/"], "pem-file: '/' is not a regular file"),
])
def test_pem_argument_errors(argv, why):
    with pytest.raises(ConfigError) as e:
        parse_args(argv)
    assert str(e.value) == why


@pytest.mark.parametrize("argv, starts", [
    (["-V"], f"stud {__version__}\n"),
    (["--version"], f"stud {__version__}\n"),
    (["-h"], "Usage: stud [OPTIONS] PEM"),
    (["--default-config"], "#\n# stud(8)"),
])
def test_exit_options(argv, starts):
    with pytest.raises(Exit) as e:
        parse_args(argv)
    assert e.value.text.startswith(starts)


def test_default_config_and_help_show_values_parsed_so_far():
    with pytest.raises(Exit) as e:
        parse_args(["-c", "HIGH", "--default-config", "-c", "LOW"])
    assert 'ciphers = "HIGH"' in e.value.text.splitlines()
    with pytest.raises(Exit) as e:
        parse_args(["-b", "[::1]:81", "-h"])
    assert '(Default: "[::1]:81")' in e.value.text


# --- the config file ------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("# comment\nciphers = HIGH\n", {"ciphers": "HIGH"}),
    ("   # indented comment = x\n\t# tab\n  ciphers = HIGH\n", {"ciphers": "HIGH"}),
    ("\n\n  \nciphers=HIGH\n", {"ciphers": "HIGH"}),
    ('ciphers = "HIGH:!aNULL MEDIUM"\n', {"ciphers": "HIGH:!aNULL MEDIUM"}),
    ("ciphers = 'HIGH:!aNULL MEDIUM'\n", {"ciphers": "HIGH:!aNULL MEDIUM"}),
    ('ciphers = "  padded  "\n', {"ciphers": "  padded  "}),
    ("ciphers = HIGH # trailing comment\n", {"ciphers": "HIGH"}),
    ("ciphers = HIGH\t# after a tab\n", {"ciphers": "HIGH"}),
    ('ciphers = "HIGH" # trailing comment\n', {"ciphers": "HIGH"}),
    ('ciphers = "HIGH # not a comment"\n', {"ciphers": "HIGH # not a comment"}),
    ("ciphers = HIGH#not-a-comment\n", {"ciphers": "HIGH#not-a-comment"}),
    ('ssl-engine = "{braced}"\n', {"ssl_engine": "{braced}"}),   # quoted: not a block
    ("ciphers = HIGH\nciphers = LOW\n", {"ciphers": "LOW"}),      # last wins
    ('ciphers = HIGH\nciphers = ""\n', {"ciphers": ""}),          # "" resets to the default
    ('workers = 4\nworkers = ""\n', {"workers": "1"}),
    ('tls-protos = TLSv1.3\ntls-protos = ""\n', {"tls_protos": MODERN}),
    ('backend = [::1]:80\nbackend = ""\n', {"backend": DEFAULT_BACKEND}),
    ('shared-cache-listen = ""\n', {"shared_cache_listen": None}),
    ('pem-file = ""\nshared-cache-peer = ""\n', {"pem_file": (), "shared_cache_peer": ()}),
    ("quiet = on\r\nciphers = HIGH\r\n", {"quiet": True, "ciphers": "HIGH"}),
    ("\ufeffquiet = on\n", {"quiet": True}),                      # a BOM before the first key
    ("backend = [::1]:443\n", {"backend": Addr("::1", 443)}),
    ("backend = ::1,443\n", {"backend": Addr("::1", 443)}),
    ("frontend = *,443\n", {"frontend": (Frontend(Addr(None, 443)),)}),
    ("frontend = systemd:https\n", {"frontend": (Frontend(Named("https")),)}),
    ('frontend = { host = "systemd:stud.socket" }\n',
     {"frontend": (Frontend(Named("stud.socket")),)}),
    ("frontend = [::1]:1\nfrontend = 127.0.0.1,1\n",
     {"frontend": (Frontend(Addr("::1", 1)), Frontend(Addr("127.0.0.1", 1)))}),
    ("shared-cache-peer = 10.0.0.1,1\nshared-cache-peer = 10.0.0.2,1\n",
     {"shared_cache_peer": (Addr("10.0.0.1", 1), Addr("10.0.0.2", 1))}),
    ("backlog = -1\nkeepalive = 60\nsession-cache = 9\n",
     {"backlog": -1, "keepalive": 60, "shared_cache": 9}),
    ("ssl-handshake-timeout = 0.5\ndrain-timeout = 0\n",
     {"ssl_handshake_timeout": 0.5, "drain_timeout": 0.0}),
    ("ec-curve = secp384r1\n", {"ec_curve": "secp384r1"}),       # Voxer's key
    ("ecdh-curve = X25519\n", {"ec_curve": "X25519"}),
    ("write-proxy-v1 = yes\n", {"write_proxy_v1": True}),
    ("ssl = on\n", {"tls_protos": ALL_PROTOS}),
    ("ssl = on\ntls = on\n", {"tls_protos": MODERN}),              # the last one wins
    ("ssl = off\n", {"tls_protos": MODERN}),                       # off means off here
    ("chroot = .\n", {"chroot": "<dir>"}),                         # relative to the file
    ("pidfile = run/stud.pid\n", {"pidfile": "<dir>/run/stud.pid"}),
])
def test_parse_file(text, expected, write, tmp_path):
    cfg = load(write(text))
    want = {k: v.replace("<dir>", str(tmp_path)) if isinstance(v, str) else v
            for k, v in expected.items()}
    assert {k: getattr(cfg, k) for k in expected} == want


ON = ["on", "ON", "On", "yes", "Yes", "y", "Y", "true", "TRUE", "t", "1"]
OFF = ["off", "OFF", "Off", "no", "No", "n", "N", "false", "False", "f", "0"]


@pytest.mark.parametrize("word, value", [(w, True) for w in ON] + [(w, False) for w in OFF])
def test_booleans_in_every_spelling(word, value, write, pem):
    # Start from the opposite value: unlike the original, a flag can be turned off again.
    start = "off" if value else "on"
    assert load(write(f"write-ip = {start}\nwrite-ip = {word}\n")).write_ip is value
    assert load(write(f'quiet = "{start}"\nquiet = "{word}"  # quoted\n')).quiet is value
    assert parse_args([f"--syslog={start}", f"--syslog={word}", pem]).syslog is value


@pytest.mark.parametrize("text, line, why", [
    ("quiet = maybe\n", 1, "quiet: 'maybe' is not a boolean"),
    ("ssl = maybe\n", 1, "ssl: 'maybe' is not a boolean"),
    ("# ok\nquiet\n", 2, "expected 'key = value', got 'quiet'"),
    ("ciphers = HIGH\nciphers =\n", 2, 'ciphers: missing value (write "" for an empty one)'),
    ("ciphers =    # nothing\n", 1, "ciphers: missing value"),
    ('quiet = ""\n', 1, "quiet: missing value"),                   # "" has no boolean meaning
    ('backlog = ""\n', 1, "backlog: missing value"),
    ('ciphers = "HIGH\n', 1, "ciphers: unbalanced quote"),
    ('ciphers = "HIGH" LOW\n', 1, "ciphers: unbalanced quote"),
    ("frontend = {\n", 1, "a block is not closed with '}'"),  # (hitch's syntax)
    ("frontend = a{\n", 1, "frontend: invalid address 'a{'"),
    ('frontend = { host = "systemd:https" port = "443" }\n', 1,
     "frontend: host systemd:https is a socket systemd passes: no port"),
    ('frontend = { host = "systemd:" }\n', 1, "frontend: invalid frontend 'systemd:'"),
    ("backlog = many\n", 1, "backlog: 'many' is not an integer"),
    ("keepalive = 1.5\n", 1, "keepalive: '1.5' is not an integer"),
    ("workers = 0\n", 1, "workers: '0'"),
    ("backend = *,80\n", 1, "backend: invalid address"),
    ("\n\nfrontend = 127.0.0.1,0\n", 3, "frontend: invalid port '0'"),
    ("frontend = [::1]x443\n", 1, "frontend: invalid address '[::1]x443'"),
    ("pem-file = missing.pem\n", 1, "pem-file: cannot use 'missing.pem'"),
    ("pem-file = .\n", 1, "pem-file: '.' is not a regular file"),
    ("chroot = stud.conf\n", 1, "chroot: 'stud.conf' is not a directory"),
    ("tls-protos = SSLv3\n", 1, "tls-protos: 'SSLv3'"),
    ("syslog-facility = bogus\n", 1, "syslog-facility: 'bogus'"),
    ("user = no-such-user-xyz\n", 1, "user: 'no-such-user-xyz': no such user"),
    ("shared-cache-if = no-such-if0\n", 1, "shared-cache-if: 'no-such-if0'"),
    ("pem-file = a\x00b\n", 1, "pem-file: cannot use"),          # NUL: ValueError from stat
])
def test_parse_file_errors(text, line, why, write):
    path = write(text)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert str(e.value).startswith(f"{path} line {line}: ")
    assert why in str(e.value)


def test_parse_file_errors_on_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="Unable to open configuration file '.*nope.conf'"):
        load(str(tmp_path / "nope.conf"))
    binary = tmp_path / "binary.conf"
    binary.write_bytes(b"ciphers = \xff\xfe\n")
    with pytest.raises(ConfigError, match="binary.conf' is not UTF-8 text"):
        load(str(binary))


def test_unknown_keys_warn_and_continue(write, capsys):
    path = write("nonsense = 1\nconfig = other.conf\nciphers = HIGH\n")
    assert load(path).ciphers == "HIGH"
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"stud: warning: ignoring unknown configuration key 'nonsense' in {path} line 1",
        f"stud: warning: ignoring unknown configuration key 'config' in {path} line 2",
    ]


def test_relative_paths_resolve_against_the_files_directory(tmp_path, write, monkeypatch):
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("a.pem", "b.pem"):
        (certs / name).write_text("x")
    path = write("pem-file = ../certs/a.pem\npem-file = ../certs/b.pem\nchroot = ..\n",
                 "etc/stud.conf")
    monkeypatch.chdir("/")
    cfg = load(path)
    assert cfg.pem_file == (Pem(str(certs / "a.pem")), Pem(str(certs / "b.pem")))  # accumulate
    assert cfg.chroot == str(tmp_path)


def test_config_file_pems_come_before_positional_ones(write, pem, tmp_path):
    other = tmp_path / "other.pem"
    other.write_text("x")
    cfg = parse_args([pem, f"--config={write(f'pem-file = {other}')}"])
    assert cfg.pem_file == (Pem(str(other)), Pem(pem))  # positionals last: the default


# --- --config at its position in argv -------------------------------------------------------

def test_config_is_read_at_its_position(write, pem):
    conf = write("ciphers = FROM-FILE\nbacklog = 7\n")
    assert parse_args(["-c", "CLI", "--config", conf, pem]).ciphers == "FROM-FILE"
    assert parse_args([f"--config={conf}", "-c", "CLI", pem]).ciphers == "CLI"
    cfg = parse_args(["-B", "1", f"--config={conf}", "-B", "2", "-c", "CLI", pem])
    assert (cfg.backlog, cfg.ciphers) == (2, "CLI")
    assert cfg.config_file == conf


def test_tls_and_ssl_on_the_command_line_win_over_the_file(write, pem, capsys):
    conf = write("ssl = on\n")
    assert parse_args(["--tls", f"--config={conf}", pem]).tls_protos == MODERN
    conf = write("tls = on\n")
    assert parse_args([f"--config={conf}", "--ssl", pem]).tls_protos == ALL_PROTOS
    assert "stud: warning: --ssl" in capsys.readouterr().err


def test_config_from_standard_input(monkeypatch, pem):
    for spelling in (["--config=-"], ["--config="], ["--config", "-"]):
        monkeypatch.setattr("sys.stdin", io.StringIO("ciphers = STDIN\nbacklog = x\n"))
        with pytest.raises(ConfigError, match=r"^<stdin> line 2: backlog: 'x'"):
            parse_args([*spelling, pem])


@pytest.mark.parametrize("argv, expected", [
    (["-f", "127.0.0.1,1", "-f", "127.0.0.1,2"], [1, 2]),              # repeated -f accumulate
    (["--config={conf}", "-f", "127.0.0.1,1"], [1]),                   # CLI after: replaces
    (["--config={conf}", "-f", "127.0.0.1,1", "-f", "127.0.0.1,2"], [1, 2]),
    (["-f", "127.0.0.1,1", "--config={conf}"], [10, 11]),              # file after: replaces
    (["-f", "127.0.0.1,1", "--config={empty}"], [1]),                  # no frontend: kept
    (["--config={conf}"], [10, 11]),
])
def test_frontend_repeat_semantics(argv, expected, write, pem):
    files = {"conf": write("frontend = 127.0.0.1,10\nfrontend = 127.0.0.1,11\n", "f.conf"),
             "empty": write("ciphers = HIGH\n", "e.conf")}
    cfg = parse_args([a.format(**files) for a in argv] + [pem])
    assert cfg.frontend == tuple(Frontend(Addr("127.0.0.1", p)) for p in expected)


def test_shared_cache_peers_accumulate_across_file_and_command_line(write, pem):
    conf = write("shared-cache = 1\nshared-cache-listen = *,9000\n"
                 + "".join(f"shared-cache-peer = 10.0.0.{n},9000\n" for n in range(14)))
    cfg = parse_args([f"--config={conf}", "-P", "10.0.1.1,9000", pem])
    assert len(cfg.shared_cache_peer) == 15
    with pytest.raises(ConfigError, match="at most 15"):
        parse_args([f"--config={conf}", "-P", "10.0.1.1,9000", "-P", "10.0.1.2,9000", pem])


def test_exclusive_modes_across_file_and_command_line(write, pem):
    conf = write("write-ip = on\n")
    with pytest.raises(ConfigError, match="Options --write-ip and --proxy-proxy"):
        parse_args([f"--config={conf}", "--proxy-proxy", pem])
    cfg = parse_args([f"--config={conf}", "--write-ip=off", "--proxy-proxy", pem])
    assert cfg.client_addr_mode == "proxy-proxy"


# --- --default-config round trip ------------------------------------------------------------

def test_default_config_round_trips_the_defaults(tmp_path):
    with pytest.raises(Exit) as e:
        parse_args(["--default-config"])
    path = tmp_path / "default.conf"
    path.write_text(e.value.text)
    back, fresh = load(str(path)), Config()
    for opt in FILE_OPTIONS:
        assert getattr(back, opt.dest) == getattr(fresh, opt.dest), opt.name
    # Every option that a file can set is in the template (and no action is).
    keys = {line.split(" = ")[0] for line in e.value.text.splitlines() if " = " in line
            and not line.startswith("#")}
    assert keys == {o.name for o in FILE_OPTIONS}


@pytest.fixture(scope="module")
def rt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("roundtrip")
    for n in range(3):
        (d / f"c{n}.pem").write_text("x")
    return d


LINE_SAFE = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"))  # no line breaks
ADDRS = st.builds(Addr, HOSTS.filter(lambda h: h != "*"), st.integers(1, 65535))
WILD_ADDRS = st.builds(Addr, HOSTS.map(lambda h: None if h == "*" else h), st.integers(1, 65535))
FDNAMES = st.text(st.sampled_from("abcXYZ019._-@/"), min_size=1, max_size=20)
LISTEN_ADDRS = WILD_ADDRS | st.builds(Named, FDNAMES)  # systemd:NAME


def value_strategies(d: Path, blocks: bool = False) -> dict[str, st.SearchStrategy]:
    """A valid value for every option a config file can set. With blocks, frontends and
    certificates that only hitch's block syntax can write, and text hitch's syntax can hold (no
    double quote: it has no escapes)."""
    text = st.text(LINE_SAFE.filter(lambda c: c != '"') if blocks else LINE_SAFE, max_size=30)
    flag = st.booleans()
    modes = st.sampled_from(config.CLIENT_VERIFY)
    pems = st.sampled_from(sorted(str(p) for p in d.glob("*.pem")))
    pem = st.builds(Pem, pems)
    if blocks:
        pem = st.builds(Pem, pems, st.none() | pems, st.none() | pems, st.none() | flag,
                        st.none() | modes, st.none() | pems)
    frontend = st.builds(Frontend, LISTEN_ADDRS, st.lists(pem, max_size=1).map(tuple))
    if blocks:
        frontend = st.builds(
            Frontend, LISTEN_ADDRS, st.lists(pem, max_size=3).map(tuple), st.none() | flag,
            st.none() | flag, st.none() | st.sampled_from(["TLSv1.2", "TLSv1.2 TLSv1.3"]),
            st.none() | st.sampled_from(["HIGH", "ECDHE+AESGCM:!aNULL"]),
            st.none() | st.just("TLS_AES_128_GCM_SHA256"), st.none() | flag,
            st.none() | modes, st.none() | pems)
    timeout = st.floats(0, 1e6, exclude_min=True)
    return {
        "backend-refresh": st.floats(0, 1e6),
        "recv-bufsize": st.just(-1) | st.integers(1, config.MAX_INT),
        "send-bufsize": st.just(-1) | st.integers(1, config.MAX_INT),
        "enable-tcp-fastopen": flag, "proxy-tlv": flag, "proxy-authority": flag,
        "pem-dir": st.sampled_from(["", str(d)]), "pem-dir-glob": st.sampled_from(["", "*.pem"]),
        "ocsp-dir": st.sampled_from(["", str(d)]), "ocsp-connect-tmo": timeout,
        "ocsp-resp-tmo": timeout, "ocsp-refresh-interval": timeout, "ocsp-verify-staple": flag,
        "tls-protos": st.lists(st.sampled_from(config.PROTOS), min_size=1, unique=True)
                        .map(" ".join),
        "ciphers": text, "ciphersuites": text, "ssl-engine": text, "ec-curve": text,
        "alpn-protos": text,
        "prefer-server-ciphers": flag, "sni-nomatch-abort": flag, "client": flag, "quiet": flag,
        "syslog": flag, "daemon": flag, "write-ip": flag, "write-proxy-v1": flag,
        "write-proxy-v2": flag, "proxy-proxy": flag, "proxy-client-cert": flag,
        "proxy-identity-tlvs": flag, "proxy-client-der": flag, "client-verify": modes,
        "client-verify-ca": st.just("") | pems, "client-verify-depth": st.integers(0, 100),
        "client-verify-crl": st.lists(pems, max_size=3).map(tuple),
        "client-verify-crl-check": st.sampled_from(["chain", "leaf"]), "crl-fetch": flag,
        "crl-fetch-url": st.lists(st.sampled_from(["http://127.0.0.1:1/a.crl", "http://ca/b"]),
                                  max_size=2).map(tuple),
        "crl-refresh-interval": timeout,
        "tls-ticket-keys": st.just("") | pems,
        "ssl-session-ticket-key": st.lists(pems, max_size=3).map(tuple),
        "ticket-key-layout": st.sampled_from(["", *LAYOUTS]), "ticket-key-seed": st.just("") | pems,
        "ticket-key-lifetime": st.integers(1, 10**9), "session-timeout": st.integers(1, 10**9),
        "session-id-context": text.filter(lambda s: len(s.encode()) <= 32),
        "session-store": st.sampled_from(["", "redis://127.0.0.1:6379/0", "rediss://u:p@h:1/2",
                                          "unix:///run/redis.sock"]),
        "session-store-timeout": timeout,
        "handshake-rate": st.floats(0, 1e6), "handshake-burst": st.floats(1, 1e6),
        "handshake-delay": st.floats(0, 1e6), "handshake-prefix-v4": st.integers(0, 32),
        "handshake-prefix-v6": st.integers(0, 128),
        "backend": ADDRS | st.sampled_from(["/run/varnish.sock", "/tmp/b.sock"]).map(Unix),
        "frontend": st.lists(frontend, min_size=1, max_size=4,
                             unique_by=lambda f: f.addr).map(tuple),
        "shared-cache-listen": st.none() | WILD_ADDRS,
        "shared-cache-peer": st.lists(ADDRS, max_size=config.MAX_PEERS).map(tuple),
        "shared-cache-if": st.sampled_from(["", "*", LOOPBACK_IF, f"{LOOPBACK_IF},3",
                                            "127.0.0.1,255", LOOPBACK_INDEX]),
        "workers": st.just("auto") | st.integers(1, 10**6).map(str),
        "backlog": st.integers(-1, config.MAX_INT),
        "keepalive": st.integers(0, config.MAX_KEEPIDLE),
        "shared-cache": st.integers(0, 10**12),
        "ssl-handshake-timeout": st.floats(0, 1e9, exclude_min=True),
        "backend-connect-timeout": st.floats(0, 1e9, exclude_min=True),
        "drain-timeout": st.floats(0, 1e9),
        "idle-timeout": st.floats(0, 1e9),
        "max-connections": st.integers(0, 10**6),
        "empty-conn-limit": st.integers(0, 1000),
        "empty-conn-window": st.floats(0, 1e6, exclude_min=True),
        "empty-conn-delay": st.floats(0, 1e6),
        "reload-on-cert-change": flag,
        "log-level": st.sampled_from(config.LOG_LEVELS),
        "log-file": st.just("") | st.text(string.ascii_letters + "._-", min_size=1, max_size=10)
                      .filter(lambda s: s not in (".", "..")).map(lambda s: str(d / "log" / s)),
        "metrics": st.none() | WILD_ADDRS,
        "chroot": st.sampled_from(["", str(d), "/"]),
        "user": st.sampled_from(["", pwd.getpwuid(os.getuid()).pw_name]),
        "group": st.sampled_from(["", grp.getgrgid(os.getgid()).gr_name]),
        "syslog-facility": st.sampled_from(config.FACILITIES),
        "pidfile": st.just("") | st.text(string.ascii_letters + "._-", min_size=1, max_size=10)
                     .filter(lambda s: s not in (".", "..")).map(lambda s: str(d / "run" / s)),
        "pem-file": st.lists(pem, max_size=4).map(tuple),
    }


def test_value_strategies_cover_every_file_option(rt_dir):
    assert set(value_strategies(rt_dir)) == {o.name for o in FILE_OPTIONS}


@settings(max_examples=150, deadline=None)
@given(data=st.data())
@pytest.mark.parametrize("blocks", [False, True], ids=["stud-syntax", "hitch-blocks"])
def test_default_config_round_trips_every_option(data, rt_dir, blocks):
    values = data.draw(st.fixed_dictionaries(value_strategies(rt_dir, blocks)))
    cfg = Config()
    for name, value in values.items():
        setattr(cfg, BY_NAME[name].dest, value)
    path = rt_dir / "rt.conf"
    path.write_text(config.default_config(cfg), encoding="utf-8")
    back = load(str(path))
    assert {n: getattr(back, BY_NAME[n].dest) for n in values} == values


# --- robustness: only ConfigError may escape ------------------------------------------------

KEYS = st.sampled_from([*BY_NAME, "config", "bogus", "", "#"])
VALUES = st.one_of(st.text(max_size=20), st.sampled_from(
    ['""', "''", '"', "on", "off", "0", "-1", "65536", "*,1", "[::1]:1", "[::1]x1", ".", "/",
     "auto", "{", "a # b", '"a" # b', "SSLv3", "lo,999", "\x00"]))
LINES = st.builds(lambda k, sep, v: f"{k}{sep}{v}", KEYS,
                  st.sampled_from([" = ", "=", " ", "", " =", "= "]), VALUES)
NO_SURROGATES = st.characters(blacklist_categories=("Cs",))


@settings(max_examples=300, deadline=None)
@given(content=st.one_of(st.text(NO_SURROGATES), st.lists(LINES, max_size=8).map("\n".join),
                         st.binary()))
def test_parse_file_raises_only_config_error(content, rt_dir):
    path = rt_dir / "fuzz.conf"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    try:
        load(str(path))
    except ConfigError as e:
        assert "\n" not in str(e).strip()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.sampled_from([f"-{o.short}" for o in OPTIONS if o.short] + [f"--{n}" for n in BY_NAME]),
    VALUES, st.text(NO_SURROGATES, max_size=10)), max_size=6))
def test_parse_args_raises_only_config_error(argv):
    try:
        parse_args(argv)
    except (ConfigError, Exit):
        pass


# --- hitch's syntax -------------------------------------------------------------------------

def test_hitch_blocks_make_frontends_and_certificates(write, pem, tmp_path):
    key = tmp_path / "server.key"
    key.write_text("k")
    cfg = load(write(f'''
        pem-file = "{pem}"
        frontend = {{ host = "127.0.0.1" port = "443"
            pem-file = {{ cert = "server.pem" private-key = "server.key"
                         ocsp-resp-file = "server.pem" ocsp-verify-staple = on }}
            match-global-certs = on  sni-nomatch-abort = off
            tls-protos = TLSv1.2 TLSv1.3 ciphers = "HIGH" prefer-server-ciphers = on }}
        frontend = "[*]:8443+server.pem"
        frontend = {{ port = "80" }}
        write-proxy = on
    '''))
    own = Pem(pem, str(key), pem, True)
    assert cfg.frontend == (
        Frontend(Addr("127.0.0.1", 443), (own,), True, False, "TLSv1.2 TLSv1.3", "HIGH", None,
                 True),
        Frontend(Addr(None, 8443), (Pem(pem),)),
        Frontend(Addr(None, 80)))
    assert cfg.pem_file == (Pem(pem),)
    assert cfg.write_proxy_v2 and not cfg.write_proxy_v1  # hitch's meaning in hitch's syntax
    assert [f.global_certs for f in cfg.frontend] == [True, False, True]


def test_write_proxy_in_studs_syntax_is_v1_with_a_warning(write, capsys):
    cfg = load(write("write-proxy = on\n"))
    assert cfg.write_proxy_v1 and not cfg.write_proxy_v2
    assert "write-proxy means PROXY v1 here" in capsys.readouterr().err


@pytest.mark.parametrize("text, line, why", [
    ('frontend = { host = "*" }', 1, "frontend: a block needs a port"),
    ('frontend = {\n port = "443"\n ecdh-curve = "P-256" }', 3,
     "ecdh-curve: not allowed in a frontend block"),
    ('frontend = { port = "443" pem-file = { private-key = "server.pem" } }', 1,
     "pem-file: a block needs a cert"),
    ('frontend = { port = "443"\n pem-file = { cert = "missing.pem" } }', 2,
     "pem-file: cannot use 'missing.pem'"),
    ('frontend = { port = "99999" }', 1, "frontend: invalid port '99999'"),
    ('frontend = { port = "1" tls-protos = SSLv3 }', 1, "tls-protos: 'SSLv3'"),
    ('backend = { port = "1" }', 1, "backend: a block is not allowed here"),
    ('frontend = { port = "1"\n\n client-verify = sometimes }', 3,
     "client-verify: 'sometimes': must be one of none, optional, required"),
    ('frontend = { port = "1" pem-file = {\n cert = "server.pem"\n client-verify-ca = "no.pem"'
     " } }", 3, "client-verify-ca: cannot use 'no.pem'"),
    ("frontend = { port = 1 } }", 1, "'}' without a block to close"),
])
def test_hitch_syntax_errors_name_the_line(text, line, why, write, pem):
    path = write(text + "\n")
    with pytest.raises(ConfigError) as e:
        load(path)
    assert str(e.value).startswith(f"{path} line {line}: "), str(e.value)
    assert why in str(e.value)


def test_two_frontends_on_one_address_are_refused(write, pem):
    twice = write("frontend = { port = 443 }\nfrontend = { port = 443 }\n")
    with pytest.raises(ConfigError, match=r"frontend: \[\*\]:443 is listed twice"):
        parse_args([f"--config={twice}", pem])
    none = write("frontend = { port = 443 match-global-certs = off }\n")
    with pytest.raises(ConfigError, match="No certificate configured for frontend"):
        parse_args([f"--config={none}", pem])


def test_a_file_in_hitchs_syntax_is_read_first_and_adds_frontends(write, pem):
    """hitch's rule for its files: read before the command line (which overrides them and adds
    its frontends), wherever --config stands; stud's files keep stud's rule (above)."""
    hitch = write('workers = 2\nfrontend = "[127.0.0.1]:2"\n', "hitch.conf")
    cfg = parse_args(["-n", "1", "-f", "127.0.0.1,1", f"--config={hitch}", pem])
    assert cfg.workers == "1"
    assert [f.addr.port for f in cfg.frontend] == [2, 1]
    stud = write('workers = 2\nfrontend = "[127.0.0.1]:2"\n', "stud.conf")
    cfg = parse_args(["-n", "1", "-f", "127.0.0.1,1", f"--config={stud}", pem])
    assert cfg.workers == "2"
    assert [f.addr.port for f in cfg.frontend] == [2]
